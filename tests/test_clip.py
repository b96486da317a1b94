"""CLIP: the contrastive loss (by hand, symmetric, across processes), zero-shot and retrieval scoring,
caption data, tower initialisation, and a tiny end-to-end run through the CLI."""

from __future__ import annotations

import io
import json
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from PIL import Image

from tests.test_trainer import free_port
from xformer.commands.cli import main
from xformer.distributed import teardown
from xformer.models.clip import ClipConfig
from xformer.commands.recipe import load_recipe
from xformer.data.image.augment import random_resized_crop
from xformer.losses import contrastive_loss
from xformer.models import CLIPModel
from xformer.trained.zeroshot import (
    CIFAR10_CLASSES,
    CIFAR10_TEMPLATES,
    classification_scores,
    retrieval_scores,
    zeroshot_classifier,
)

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}


def tiny_clip(vocab_size: int = 50, **updates) -> CLIPModel:
    cfg = ClipConfig(
        vision={"image_size": 16, "patch_size": 8, "dim": 32, "depth": 1, "num_heads": 2, "pre_norm": True},
        text={"dim": 32, "depth": 1, "num_heads": 2, "vocab_size": vocab_size, "max_position": 12},
        embed_dim=16, **updates,
    )
    return CLIPModel(cfg)


# ----------------------------------------------------------------------------- loss


def test_loss_matches_a_hand_computation_and_is_symmetric():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    txt = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    scale = torch.tensor(3.0)
    total = 0.0
    for i in range(5):
        row = [scale.item() * float(img[i] @ txt[j]) for j in range(5)]  # image i against every text
        col = [scale.item() * float(txt[i] @ img[j]) for j in range(5)]  # text i against every image
        total += -(row[i] - math.log(sum(math.exp(v) for v in row)))
        total += -(col[i] - math.log(sum(math.exp(v) for v in col)))
    loss, counts = contrastive_loss(img, txt, scale)
    assert loss.item() == pytest.approx(total / 10, rel=1e-5)
    assert contrastive_loss(txt, img, scale)[0].item() == pytest.approx(loss.item(), rel=1e-6)
    assert counts["n"] == 5
    perfect, _ = contrastive_loss(img, img, torch.tensor(100.0))
    assert perfect.item() < 1e-3 < loss.item()


def _ddp_loss_worker(rank, world, port, path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    result = _ddp_loss(rank, world)  # the DDP wrapper is gone when it returns: see distributed.teardown
    if rank == 0:
        torch.save(result, path)
    teardown()


def _ddp_loss(rank, world):
    model, batch = _ddp_case()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    B = len(batch[0]) // world
    local = [t[rank * B:(rank + 1) * B] for t in batch]
    out = ddp(*local)
    loss, _ = contrastive_loss(out.image_embeds, out.text_embeds, out.logit_scale, normalizer=len(batch[0]))
    (loss * world).backward()  # as the trainer does: DDP averages, each loss is a share of the global batch
    total = loss.detach().clone()
    torch.distributed.all_reduce(total)
    return {"loss": total, "grads": {n: p.grad.clone() for n, p in model.named_parameters()}}


def _ddp_case():
    torch.manual_seed(0)
    model = tiny_clip()
    g = torch.Generator().manual_seed(1)
    pixels, ids = torch.randn(8, 3, 16, 16, generator=g), torch.randint(5, 50, (8, 10), generator=g)
    mask = (torch.arange(10) < torch.randint(3, 11, (8, 1), generator=g)).long()
    return model, (pixels, ids, mask)


def test_two_processes_match_one_with_the_whole_batch(tmp_path):
    model, batch = _ddp_case()
    out = model(*batch)
    loss, _ = contrastive_loss(out.image_embeds, out.text_embeds, out.logit_scale)
    loss.backward()
    path = tmp_path / "ddp.pt"
    mp.start_processes(_ddp_loss_worker, args=(2, free_port(), path), nprocs=2, join=True, start_method="spawn")
    ddp = torch.load(path)
    assert ddp["loss"].item() == pytest.approx(loss.item(), abs=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(ddp["grads"][name], p.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_a_zero_dim_logit_scale_of_an_older_checkpoint_loads():
    model = tiny_clip()
    state = model.state_dict()
    assert state["logit_scale"].shape == (1,)  # FSDP shards along a dimension
    state["logit_scale"] = torch.tensor(2.5)
    fresh = tiny_clip()
    fresh.load_state_dict(state)
    assert fresh.logit_scale.shape == (1,) and fresh.logit_scale.item() == 2.5


def test_a_block_of_rows_is_prepared_as_in_the_whole_micro_batch():
    from xformer.tasks.contrastive import ContrastiveTask

    cfg = load_recipe(None, ["task=contrastive", "model.vision.image_size=12", "augment.hflip=true"])
    task = ContrastiveTask(cfg, None, None, None)
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(1, 4, (16,), generator=g)  # (B,) captions per image, of K=3
    lengths = torch.where(torch.arange(3) < counts[:, None], torch.randint(2, 7, (16, 3), generator=g), 0)
    batch = {"pixel_values": torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8, generator=g),
             "input_ids": torch.randint(5, 50, (16, 3, 8), generator=g), "lengths": lengths, "counts": counts}
    whole = task.prepare(batch, torch.Generator().manual_seed(1), train=True)
    for offset in (0, 8):
        part = task.prepare({n: t[offset:offset + 8] for n, t in batch.items()}, torch.Generator().manual_seed(1),
                            train=True, rows=(offset, 16))
        for name in whole:
            assert torch.equal(part[name], whole[name][offset:offset + 8]), name


# ----------------------------------------------------------------------------- zero-shot and retrieval


def test_templates_and_class_names_are_the_protocols():
    assert len(CIFAR10_TEMPLATES) == 18 and len(set(CIFAR10_TEMPLATES)) == 18
    assert CIFAR10_TEMPLATES[0] == "a photo of a {c}." and CIFAR10_TEMPLATES[-1] == "a photo of the big {c}."
    assert CIFAR10_CLASSES == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                               "truck"]


class ClassIdTowers(torch.nn.Module):
    """Both towers embed a class id as the same one-hot vector: images carry it as their pixel value,
    texts as the token of the class word."""

    def __init__(self, classes):
        super().__init__()
        self.classes = classes
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def encode_image(self, pixel_values):
        return F.one_hot(pixel_values[:, 0, 0, 0].round().long(), len(self.classes)).float()

    def encode_text(self, input_ids, attention_mask):
        return F.one_hot(input_ids[:, 0], len(self.classes)).float()


def test_zeroshot_is_perfect_when_the_towers_agree():
    classes = ["cat", "dog", "emu", "owl"]

    def tokenize(texts):  # the id of the class word in each prompt
        ids = torch.tensor([[next(i for i, c in enumerate(classes) if c in t.split(" ")[-1] or f" {c}" in t)]
                            for t in texts])
        return ids, torch.ones_like(ids)

    model = ClassIdTowers(classes)
    classifier = zeroshot_classifier(model, classes, CIFAR10_TEMPLATES, tokenize, torch.device("cpu"))
    labels = torch.arange(40) % 4
    images = labels.float()[:, None, None, None].expand(40, 3, 2, 2)
    scores = classification_scores(model.encode_image(images) @ classifier.t(), labels)
    assert scores["top1"] == 1.0 and scores["mean_per_class_recall"] == 1.0
    shuffled = classification_scores(model.encode_image(images) @ classifier.roll(1, 0).t(), labels)
    assert shuffled["top1"] == 0.0 and shuffled["top4"] == 1.0


def test_retrieval_recall_on_a_known_case():
    images = torch.eye(4)  # four images, two captions each; image 3's captions point at image 0
    owners = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    texts = torch.eye(4)[torch.tensor([0, 0, 1, 1, 2, 2, 0, 0])]
    s = retrieval_scores(images, texts, owners)
    assert s["t2i_R@1"] == pytest.approx(6 / 8) and s["t2i_R@5"] == 1.0
    # image 3 scores 0 with every caption: its own rank below the 6 captions that score 0 as well is not
    # counted (only strictly better ones), so it is found at R@1; images 0-2 find theirs at rank 0.
    assert s["i2t_R@1"] == 1.0
    texts[6:] = torch.eye(4)[torch.tensor([1, 1])] * 0.5 - torch.eye(4)[3]
    assert retrieval_scores(images, texts, owners)["i2t_R@1"] == pytest.approx(3 / 4)


def test_random_resized_crop_shapes_determinism_and_identity():
    x = torch.rand(6, 3, 20, 20)
    a = random_resized_crop(x, 16, (0.3, 1.0), torch.Generator().manual_seed(3))
    b = random_resized_crop(x, 16, (0.3, 1.0), torch.Generator().manual_seed(3))
    assert a.shape == (6, 3, 16, 16) and a.dtype == torch.float32 and torch.equal(a, b)
    whole = random_resized_crop(x, 20, (1.0, 1.0), torch.Generator().manual_seed(0), ratio=(1.0, 1.0))
    torch.testing.assert_close(whole, x, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- data, runs, CLI


def png(colour, size=16, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.asarray(colour)[None, None] + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def write_pairs(path, n: int, seed: int = 0):
    names = list(COLOURS)
    rows = [names[i % len(names)] for i in range(n)]
    captions = [[f"a {c} square", f"something {c}", f"the colour {c}"] for c in rows]
    images = [{"bytes": png(COLOURS[c], seed=seed * 1000 + i), "path": None} for i, c in enumerate(rows)]
    pq.write_table(pa.table({"image": images, "captions": captions}), path)
    return path


def write_labelled(path, n: int):
    names = list(COLOURS)
    images = [{"bytes": png(COLOURS[names[i % 4]], seed=500 + i), "path": None} for i in range(n)]
    pq.write_table(pa.table({"img": images, "label": [names[i % 4] for i in range(n)]}), path)
    return path


@pytest.fixture
def clip_args(tmp_path):
    train = write_pairs(tmp_path / "pairs.parquet", 64)
    val = write_pairs(tmp_path / "dev.parquet", 16, seed=1)
    labelled = write_labelled(tmp_path / "colours.parquet", 24)
    return [
        f"data.source={train}", f"data.val_source={val}", f"data.cache_dir={tmp_path / 'cache'}",
        "data.tokenizer.vocab_size=200", "data.max_text_len=12",
        "model.vision={image_size: 16, patch_size: 8, dim: 32, depth: 1, num_heads: 2, pre_norm: true}",
        "model.text={dim: 32, depth: 1, num_heads: 2, max_position: 12}", "model.embed_dim=16",
        f"eval.source={labelled}", "eval.templates=['a {c} square']",
        "train.batch_size=16", "train.epochs=null", "train.max_steps=80", "train.lr=2e-3", "train.warmup_steps=2",
        "train.log_every=5", "train.eval_every=80", "train.save_every=80", "train.progress=false", "train.device=cpu",
    ], tmp_path


def test_tiny_clip_trains_then_evaluates_from_the_cli(clip_args, capsys):
    args, tmp_path = clip_args
    run = tmp_path / "run"
    sets = [a for s in args for a in ("--set", s)]
    assert main(["train", "recipes/clip_small.yaml", "--out", str(run), *sets]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in records if r["split"] == "train"]
    assert train[-1] < train[0] - 0.3, train
    final = json.loads((run / "eval_final.json").read_text())
    assert {"zs_top1", "zs_top4", "i2t_R@1", "t2i_R@10"} <= set(final)
    assert final["zs_top1"] > 0.5  # four colours, told apart by the prompt "a {colour} square"
    assert main(["zeroshot", str(run), "--data", str(tmp_path / "colours.parquet"), "--template", "a {c} square"]) == 0
    assert json.loads((run / "zeroshot_colours.json").read_text())["top1"] == pytest.approx(final["zs_top1"])
    assert main(["retrieval", str(run), "--data", str(tmp_path / "dev.parquet")]) == 0
    scores = json.loads((run / "retrieval_dev.json").read_text())
    assert scores["t2i_R@1"] == pytest.approx(final["t2i_R@1"]) and scores["images"] == 16

    import transformers

    from xformer.trained.loading import load, load_tokenizer

    assert main(["export", str(run), str(tmp_path / "hf")]) == 0
    hf = transformers.CLIPModel.from_pretrained(tmp_path / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.vocab == load_tokenizer(run).vocab
    texts = tok(["a red square", "the colour blue"], padding=True, return_tensors="pt")
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ours = load(run)(pixels, texts["input_ids"], texts["attention_mask"]).logits_per_image
        theirs = hf(input_ids=texts["input_ids"], attention_mask=texts["attention_mask"], pixel_values=pixels)
    torch.testing.assert_close(theirs.logits_per_image, ours, atol=1e-4, rtol=1e-4)


def test_lock_image_keeps_the_image_tower(clip_args):
    from xformer.trained.loading import load
    from xformer.tasks import run
    from xformer.tasks.contrastive import clip_model

    args, tmp_path = clip_args
    cfg = load_recipe("recipes/clip_small.yaml", [*args, "model.lock_image=true", "train.max_steps=3",
                                                   "train.eval_every=100", f"out_dir={tmp_path / 'lit'}"])
    run(cfg)
    trained = load(tmp_path / "lit")
    # the same seed rebuilds the model the run started from
    cfg2 = load_recipe("recipes/clip_small.yaml", [*args, f"out_dir={tmp_path / 'fresh'}"])
    torch.manual_seed(cfg2.train.seed)
    fresh, _ = clip_model(cfg2.model, trained.config.text.vocab_size)
    for name, p in fresh.vision.state_dict().items():
        torch.testing.assert_close(trained.vision.state_dict()[name], p, msg=name)
    assert not torch.equal(trained.text.encoder.blocks[0].attn.qkv.weight, fresh.text.encoder.blocks[0].attn.qkv.weight)


def test_text_tower_starts_from_a_bert(clip_args, tmp_path):
    from xformer.data.configs import TokenizerConfig
    from xformer.models.bert import BertConfig
    from xformer.tasks.contrastive import clip_model
    from xformer.data.text.tokenizer import train_wordpiece
    from xformer.interop.hf_bert import export_bert
    from xformer.models import BertForPreTraining

    args, _ = clip_args
    tokenizer = train_wordpiece(["a red square", "something blue", "the colour green yellow"] * 20,
                                TokenizerConfig(vocab_size=60))
    bert = BertForPreTraining(BertConfig(vocab_size=len(tokenizer), dim=24, depth=2, num_heads=2, max_position=16))
    export_bert(bert, tmp_path / "bert", tokenizer=tokenizer)
    cfg = load_recipe("recipes/clip_small.yaml", [*args, f"model.text.init=hf:{tmp_path / 'bert'}",
                                                   "model.text.causal=false", "model.text.pool=cls"])
    model, resolved = clip_model(cfg.model, len(tokenizer))
    assert resolved.text.dim == 24 and resolved.text.norm_first is False and resolved.text.type_vocab_size == 2
    assert not resolved.text.causal
    assert cfg.model.text.dim != 24  # the recipe's config is not changed
    for name, p in bert.bert.encoder.state_dict().items():
        torch.testing.assert_close(model.text.encoder.state_dict()[name], p, msg=name)
    torch.testing.assert_close(model.text.embeddings.word.weight, bert.bert.embeddings.word.weight)


def test_bad_inputs_give_one_line_errors(clip_args, capsys, tmp_path):
    args, _ = clip_args
    no_captions = tmp_path / "labelled.parquet"
    write_labelled(no_captions, 4)
    sets = [a for s in args for a in ("--set", s)]
    code = main(["train", "recipes/clip_small.yaml", "--out", str(tmp_path / "x"), *sets,
                 "--set", f"data.source={no_captions}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no caption column found" in err and "\n" not in err
    code = main(["train", "recipes/clip_small.yaml", *sets, "--set", "eval.retreival=false"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "eval.retreival" in err and "eval.retrieval" in err
    code = main(["zeroshot", str(tmp_path / "nothing-here")])
    assert code == 2 and "no such file" in capsys.readouterr().err


def test_resume_and_whole_clip_init_keep_the_recipe(clip_args):
    """A CLIP run resumes although model.text.vocab_size was filled in at run time; a whole-CLIP init
    takes the architecture from the run and dropout / attention backend from the recipe."""
    from xformer.trained.loading import load
    from xformer.tasks import run
    from xformer.tasks.contrastive import clip_model

    args, tmp_path = clip_args
    first = load_recipe("recipes/clip_small.yaml", [*args, "train.max_steps=4", "train.save_every=2",
                                                     "train.eval_every=100", f"out_dir={tmp_path / 'r'}"])
    run(first)
    longer = load_recipe("recipes/clip_small.yaml", [*args, "train.max_steps=6", "train.save_every=2",
                                                      "train.eval_every=100", f"out_dir={tmp_path / 'r'}"])
    assert run(longer, resume=True)["step"] == 6
    cfg = load_recipe("recipes/clip_small.yaml", [*args, f"model.init={tmp_path / 'r'}", "model.text.dropout=0.3",
                                                   "model.vision.attn_backend=math", "model.text.dim=64"])
    model, resolved = clip_model(cfg.model, 10)
    assert resolved.text.dropout == 0.3 and resolved.vision.attn_backend == "math"
    assert resolved.text.dim == 32 and cfg.model.text.dim == 64  # architecture from the run; recipe untouched
    trained = load(tmp_path / "r")
    for name, p in trained.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], p, msg=name)
