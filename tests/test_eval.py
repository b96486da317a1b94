"""``xformer eval RUN --data SOURCE`` for every task: tiny runs trained a few steps, then evaluated from the
CLI: the metrics printed as ``name value`` lines, the same numbers in ``RUN/eval_<data>.json``, the same
numbers again on a second evaluation (fixed masks), and one-line errors for data of the wrong kind."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from xformer.commands.cli import main
from xformer.commands.recipe import load_recipe
from xformer.errors import XformerError
from xformer.tasks import run as train
from xformer.tasks.trained_run import load_run
from xformer.trained.evaluate import LABELLED_IMAGES, LABELLED_TEXTS, TEXTS, data_kind, eval_name

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 220), "grey": (150, 150, 150)}
WORDS = {"pos": ["good", "great", "fine", "nice"], "neg": ["bad", "awful", "poor", "dull"]}
FAST = ["train.lr=3e-3", "train.warmup_steps=1", "train.log_every=1", "train.eval_every=1000",
        "train.save_every=1000", "train.progress=false", "train.device=cpu"]


def png(colour, seed: int, size: int = 16) -> dict:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.asarray(colour)[None, None] + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def write_labelled_images(path, n: int, classes=tuple(COLOURS)):
    names = [classes[i % len(classes)] for i in range(n)]
    pq.write_table(pa.table({"img": [png(COLOURS[c], i) for i, c in enumerate(names)], "label": names}), path)
    return path


def write_pairs(path, n: int):
    names = [list(COLOURS)[i % 4] for i in range(n)]
    captions = [[f"a {c} square", f"the colour {c}"] for c in names]
    pq.write_table(pa.table({"image": [png(COLOURS[c], 100 + i) for i, c in enumerate(names)],
                             "captions": captions}), path)
    return path


def write_texts(path, n: int, seed: int = 0, labels=("pos", "neg")):
    rng = random.Random(seed)
    rows = [labels[i % len(labels)] for i in range(n)]
    texts = [" ".join(rng.choice(WORDS[y if y in WORDS else "pos"]) for _ in range(6)) + "." for y in rows]
    pq.write_table(pa.table({"sentence": texts, "label": rows}), path)
    return path


def evaluate(run, data, *more, capsys) -> tuple[dict, dict]:
    """``xformer eval`` from the CLI: (metrics printed, the JSON written)."""
    assert main(["eval", str(run), "--data", str(data), *more]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("wrote ")
    printed = {name: float(value) for name, value in (line.split() for line in lines[:-1])}
    return printed, json.loads(open(lines[-1].removeprefix("wrote ")).read())


def refused(run, data, expect: str, capsys, *more) -> None:
    """The eval fails with exit 2 and one ``error:`` line holding ``expect``."""
    assert main(["eval", str(run), "--data", str(data), *more]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expect in err, err


def same_numbers(printed: dict, saved: dict) -> None:
    for name, value in printed.items():
        assert saved[name] == pytest.approx(value, abs=6e-5), name


# ----------------------------------------------------------------------------- the pieces


def test_eval_names_and_data_kinds(tmp_path, corpus_path):
    assert eval_name("sst2-sentences:validation") == "sst2-sentences_validation"
    assert eval_name("sst2", "test") == "sst2_test"
    assert eval_name("owner/name") == "owner_name_train"
    assert eval_name(str(corpus_path)) == "docs"
    assert eval_name(str(corpus_path.parent / "*.parquet")) == corpus_path.parent.name
    assert data_kind(str(corpus_path)).kind == TEXTS
    assert data_kind(str(write_texts(tmp_path / "t.parquet", 4))).kind == LABELLED_TEXTS
    assert data_kind(str(write_labelled_images(tmp_path / "i.parquet", 4))).kind == LABELLED_IMAGES


# ----------------------------------------------------------------------------- every task


@pytest.mark.parametrize("objective", ["mlm_nsp", "mlm"])
def test_bert_masked_lm_metrics_are_fixed(tiny_config, corpus_path, tmp_path, capsys, objective):
    cfg = tiny_config(f"data.objective={objective}", "train.max_steps=3", "data.max_documents=120")
    train(cfg)
    run = tmp_path / "run"
    capsys.readouterr()
    printed, saved = evaluate(run, corpus_path, "--max-documents", "40", capsys=capsys)
    assert {"mlm_acc", "mlm_loss", "examples", "tokens", "masked"} <= set(printed)
    assert ("nsp_acc" in printed) == (objective == "mlm_nsp")
    assert 0 <= printed["mlm_acc"] <= 1 and printed["masked"] > 0
    same_numbers(printed, saved)
    assert saved["data"] == str(corpus_path) and (run / "eval_docs.json").is_file()
    again, _ = evaluate(run, corpus_path, "--max-documents", "40", capsys=capsys)
    assert again == printed  # the same masks
    if objective == "mlm":
        # labelled texts are text too: the run's text column is not there, the usual one (sentence) is read
        texts, _ = evaluate(run, write_texts(tmp_path / "sst.parquet", 200), capsys=capsys)
        assert texts["masked"] > 0 and (run / "eval_sst.json").is_file()
        images = write_labelled_images(tmp_path / "colours.parquet", 4)
        refused(run, images, "a bert_pretraining run evaluates on text, and --data", capsys)


def test_text_classifier_accuracy_and_unknown_labels(tmp_path, capsys):
    cfg = load_recipe(None, [
        "task=text_classification", f"data.source={write_texts(tmp_path / 'train.parquet', 96)}",
        "data.val_size=16", "data.max_seq_len=16", f"data.cache_dir={tmp_path / 'cache'}",
        "data.tokenizer.vocab_size=80", f"out_dir={tmp_path / 'run'}", "train.batch_size=16", "train.max_steps=40",
        "model.dim=32", "model.depth=1", "model.num_heads=2", "model.max_position=16", *FAST,
    ])
    train(cfg)
    run = tmp_path / "run"
    capsys.readouterr()
    printed, saved = evaluate(run, write_texts(tmp_path / "dev.parquet", 40, seed=1), capsys=capsys)
    assert {"acc", "loss", "examples"} <= set(printed) and printed["examples"] == 40
    assert printed["acc"] > 0.8  # one word list per class
    same_numbers(printed, saved)
    assert evaluate(run, tmp_path / "dev.parquet", capsys=capsys)[0] == printed
    opened = load_run(run)
    assert opened.class_names == ["neg", "pos"] and opened.tokenizer_dir == str(run / "tokenizer")
    assert opened.cfg.task == "text_classification" and len(opened.tokenizer) <= 80
    odd = write_texts(tmp_path / "odd.parquet", 6, labels=("pos", "meh"))
    refused(run, odd, "'meh'", capsys)
    plain = tmp_path / "plain.txt"
    plain.write_text("Some text.\n\nMore text.\n")
    refused(run, plain, "a text_classification run evaluates on labelled texts, and --data", capsys)


def test_image_classifier_report(tmp_path, capsys):
    cfg = load_recipe(None, [
        "task=image_classification", f"data.source={write_labelled_images(tmp_path / 'train.parquet', 64)}",
        "data.val_size=8", f"data.cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path / 'run'}",
        "model.arch=cnn", "model.channels=[4,8,8]", "model.hidden=16", "model.image_size=16",
        "train.batch_size=16", "train.max_steps=4", *FAST,
    ])
    train(cfg)
    run = tmp_path / "run"
    capsys.readouterr()
    # two of the four classes: mapped onto the run's class indices
    test = write_labelled_images(tmp_path / "test.parquet", 12, classes=("red", "blue"))
    printed, saved = evaluate(run, test, capsys=capsys)
    assert {"acc", "loss", "images"} <= set(printed) and printed["images"] == 12
    same_numbers(printed, saved)
    assert saved["class_names"] == sorted(COLOURS) and len(saved["confusion"]) == 4
    refused(run, write_texts(tmp_path / "t.parquet", 4), "evaluates on labelled images, and --data", capsys)
    # a checkpoint opens with its run's files; another task's run is refused in one line
    step = load_run(next((run / "checkpoints").iterdir()), "image_classification", device="cpu")
    assert step.root == run and step.class_names == sorted(COLOURS) and step.tokenizer is None
    assert not step.model.training and step.device.type == "cpu"
    with pytest.raises(XformerError, match="a image_classification run .*, not a contrastive run"):
        load_run(run, "contrastive")


def test_clip_zero_shot_or_retrieval_as_the_data_holds(tmp_path, capsys):
    pairs = write_pairs(tmp_path / "pairs.parquet", 32)
    cfg = load_recipe("recipes/clip_small.yaml", [
        f"data.source={pairs}", "data.val_source=null", "data.val_size=0", "data.image_size=16",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.tokenizer.vocab_size=60", "data.max_text_len=8", f"out_dir={tmp_path / 'run'}",
        "model.vision={image_size: 16, patch_size: 8, dim: 16, depth: 1, num_heads: 2, pre_norm: true}",
        "model.text={dim: 16, depth: 1, num_heads: 2, max_position: 8}", "model.embed_dim=8",
        "eval.source=null", "eval.retrieval=false", "eval.templates=['a {c} square']",
        "train.batch_size=16", "train.epochs=null", "train.max_steps=3", *FAST,
    ])
    train(cfg)
    run = tmp_path / "run"
    capsys.readouterr()
    labelled = write_labelled_images(tmp_path / "colours.parquet", 8)
    printed, saved = evaluate(run, labelled, capsys=capsys)
    assert {"zs_top1", "zs_mean_per_class_recall", "images"} <= set(printed) and printed["images"] == 8
    same_numbers(printed, saved)
    printed, saved = evaluate(run, pairs, "--max-documents", "12", capsys=capsys)
    assert {"i2t_R@1", "t2i_R@10"} <= set(printed) and printed["images"] == 12
    same_numbers(printed, saved)
    refused(run, write_texts(tmp_path / "t.parquet", 4), "a contrastive run evaluates on labelled images", capsys)
    refused(run, pairs, "--max-documents 0", capsys, "--max-documents", "0")
