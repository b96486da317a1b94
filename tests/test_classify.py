"""Image classification end to end on a small synthetic image set: training, fine-tuning, eval, export."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from xformer.train.checkpoint import latest_checkpoint
from xformer.train.finetune import finetune_param_groups
from xformer.tasks import read_run_config
from xformer.tasks import run as train_classifier
from xformer.train.finetune import FinetuneConfig
from xformer.commands.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["red", "green", "blue", "grey"]


def png(array: np.ndarray) -> dict:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def make_images(n: int, size: int = 16, seed: int = 0):
    """Noisy images whose class is the colour of a square at a random place: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        label = i % len(CLASSES)
        img = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
        y, x = rng.integers(0, size - 6, 2)
        color = [(230, 30, 30), (30, 230, 30), (30, 30, 230), (160, 160, 160)][label]
        img[y:y + 6, x:x + 6] = color
        images.append(png(img))
        labels.append(CLASSES[label])  # string labels: class names are their sorted values
    return images, labels


@pytest.fixture(scope="module")
def image_parquet(tmp_path_factory) -> Path:
    images, labels = make_images(480)
    path = tmp_path_factory.mktemp("images") / "train.parquet"
    pq.write_table(pa.table({"img": images, "label": labels}), path)
    return path


def image_config(image_parquet, tmp_path, *overrides):
    base = [
        "task=image_classification", f"data.source={image_parquet}", f"data.cache_dir={tmp_path / 'cache'}",
        "data.val_size=80", f"out_dir={tmp_path / 'run'}", "model.image_size=16",
        "train.batch_size=32", "train.max_steps=40", "train.lr=2e-3", "train.warmup_steps=2", "train.log_every=1",
        "train.eval_every=20", "train.save_every=20", "train.eval_batches=null", "train.progress=false",
        "train.device=cpu", "augment.crop_padding=2",
    ]
    return load_recipe(None, base + list(overrides))


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


VIT = ["model.arch=vit", "model.patch_size=4", "model.dim=32", "model.depth=2", "model.num_heads=2"]
CNN = ["model.arch=cnn", "model.channels=[8,16,16]", "model.hidden=32"]


@pytest.mark.parametrize("arch", [VIT, CNN], ids=["vit", "cnn"])
def test_training_lowers_loss_and_writes_reports(image_parquet, tmp_path, arch):
    result = train_classifier(image_config(image_parquet, tmp_path, *arch))
    trace = losses(tmp_path / "run")
    assert np.mean(trace[-5:]) < np.mean(trace[:5]) - 0.2, trace
    report = json.loads((tmp_path / "run" / "eval_val.json").read_text())
    assert report["images"] == 80 and set(report["per_class_acc"]) == set(CLASSES)
    assert sum(map(sum, report["confusion"])) == 80
    assert result["val"]["acc"] == pytest.approx(report["acc"])


def test_freeze_backbone_and_all_but_last(image_parquet, tmp_path):
    train_classifier(image_config(image_parquet, tmp_path, *VIT, "train.max_steps=5"))
    start = load_file(latest_checkpoint(tmp_path / "run") / "model.safetensors")
    for freeze, trainable in (("backbone", ("head.",)), ("all_but_last", ("head.", "vit.encoder.blocks.1.", "vit.encoder.norm."))):
        out = tmp_path / f"ft_{freeze}"
        cfg = image_config(image_parquet, tmp_path, *VIT, "train.max_steps=5", f"model.init={tmp_path / 'run'}",
                           f"finetune.freeze={freeze}", "finetune.unfreeze_last=1", f"out_dir={out}")
        train_classifier(cfg)
        end = load_file(latest_checkpoint(out) / "model.safetensors")
        for name, before in start.items():
            changed = not torch.equal(before, end[name])
            assert changed == name.startswith(trainable), (freeze, name)


def test_layer_decay_scales():
    from xformer.models.vit import ViTConfig
    from xformer.models import build_model

    model = build_model(ViTConfig(image_size=16, patch_size=4, dim=32, depth=3, num_heads=2, num_classes=4))
    groups = finetune_param_groups(model, FinetuneConfig(layer_decay=0.5), weight_decay=0.1)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert scale_of[id(model.vit.embeddings.proj.weight if hasattr(model.vit.embeddings, "proj")
                       else next(model.vit.embeddings.parameters()))] == pytest.approx(0.5 ** 4)
    assert scale_of[id(model.vit.encoder.blocks[0].attn.qkv.weight)] == pytest.approx(0.5 ** 3)
    assert scale_of[id(model.vit.encoder.blocks[2].mlp.fc1.weight)] == pytest.approx(0.5)
    assert scale_of[id(model.head.weight)] == pytest.approx(1.0)
    assert all(g["weight_decay"] == 0.0 for g in groups if any(p.ndim < 2 for p in g["params"]))


def test_finetune_from_hf_vit_with_new_head(image_parquet, tmp_path):
    from transformers import ViTConfig as HFViTConfig
    from transformers import ViTForImageClassification as HFViT

    hf_dir = tmp_path / "hf_vit"
    HFViT(HFViTConfig(image_size=24, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, num_labels=7)).save_pretrained(hf_dir)
    cfg = image_config(image_parquet, tmp_path, "model.arch=vit", f"model.init=hf:{hf_dir}", "train.max_steps=30",
                       "finetune.layer_decay=0.8")
    result = train_classifier(cfg)
    saved = read_run_config(tmp_path / "run").model
    assert saved.image_size == 24 and saved.num_classes == 4  # checkpoint resolution, our classes
    trace = losses(tmp_path / "run")
    assert np.mean(trace[-5:]) < np.mean(trace[:5]), trace
    assert result["val"]["acc"] > 0.25


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "xformer", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_cli_eval_export_and_bad_inputs(image_parquet, tmp_path):
    run = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: image_classification\n")
    common = ["--set", f"data.source={image_parquet}", "--set", f"data.cache_dir={tmp_path / 'cache'}",
              "--set", "data.val_size=80", "--set", "model.image_size=16", "--set", "train.progress=false"]
    vit = [a for kv in VIT for a in ("--set", kv)]
    proc = run_cli("train", str(recipe), "--out", str(run), *common, *vit, "--set", "train.max_steps=10",
                   "--set", "train.batch_size=32")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_cli("eval", str(run), "--data", str(image_parquet))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((run / "eval_train.json").read_text())["images"] == 480
    proc = run_cli("export", str(run), str(tmp_path / "hf"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    from transformers import ViTForImageClassification

    hf = ViTForImageClassification.from_pretrained(tmp_path / "hf")
    assert [hf.config.id2label[i] for i in range(4)] == sorted(CLASSES)

    def bad(*args, expect):
        p = run_cli("train", str(recipe), "--out", str(tmp_path / "bad"), *common, *args)
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
        line = [x for x in p.stderr.splitlines() if x.startswith("error: ")]
        assert len(line) == 1 and expect in line[0], p.stderr

    bad("--set", "data.image_column=photo", expect="photo")
    bad("--set", f"data.source={tmp_path / 'missing.parquet'}", expect="missing.parquet")
    mixed = tmp_path / "mixed.parquet"
    imgs, labels = make_images(8)
    imgs[3] = png(np.zeros((20, 20, 3), dtype=np.uint8))
    pq.write_table(pa.table({"img": imgs, "label": labels}), mixed)
    bad("--set", f"data.source={mixed}", "--set", "data.val_size=2", expect="image_size")
    bad("--set", "augment.policy=autoaugment", expect="augment.policy")


def test_hf_resnet_transfer_with_last_stage_unfrozen(image_parquet, tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification

    hf_dir = tmp_path / "resnet"
    ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                              num_labels=3)).save_pretrained(hf_dir)
    cfg = image_config(image_parquet, tmp_path, "model.arch=hf_image", f"model.init=hf:{hf_dir}",
                       "train.max_steps=3", "finetune.freeze=all_but_last", "finetune.unfreeze_last=1")
    train_classifier(cfg)
    end = load_file(latest_checkpoint(tmp_path / "run") / "model.safetensors")
    start = ResNetForImageClassification.from_pretrained(hf_dir).state_dict()
    stages = "hf.resnet.encoder.stages."
    for name, after in end.items():
        hf_name = name[len("hf."):]
        if hf_name not in start or start[hf_name].shape != after.shape or "running_" in name or "num_batches" in name:
            continue  # the new 4-class head; BatchNorm statistics move in train mode even when frozen
        trainable = name.startswith(stages + "1.")
        assert (not torch.equal(start[hf_name], after)) == trainable, name
