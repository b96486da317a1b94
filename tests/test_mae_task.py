"""The ``mae`` task end to end on tiny images (16x16, patch 4): the loss falls from the CLI, 2 processes
train as 1, resume = uninterrupted, images without labels load from every kind of source, the
reconstruction picture shows what it says, and bad input is one ``error:`` line with exit code 2."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from safetensors.torch import load_file

from test_trainer import free_port, train_losses
from xformer.commands.cli import main
from xformer.commands.recipe import load_recipe
from xformer.config import load_yaml
from xformer.data.configs import ImagesDataConfig
from xformer.data.image.images import load_images
from xformer.tasks import run
from xformer.tasks.mae import FixedNoiseImages, MAETask, picture_size, reconstruction_picture
from xformer.train.checkpoint import list_checkpoints
from xformer.train.loop import Trainer

TINY = ["model.image_size=16", "model.patch_size=4", "model.dim=32", "model.depth=2", "model.num_heads=2",
        "model.mlp_ratio=2", "model.decoder_dim=16", "model.decoder_depth=1", "model.decoder_num_heads=2",
        "model.norm_pix_loss=true", "data.val_size=16", "train.batch_size=16", "train.lr=5e-3",
        "train.warmup_steps=2", "train.epochs=null", "train.clip_grad=1.0", "train.eval_batches=null",
        "train.log_every=1", "train.progress=false", "train.device=cpu", "eval.pictures=4"]


def ramp(seed: int, size: int = 16) -> np.ndarray:
    """(size, size, 3) uint8: a colour fading along a random axis, with a little noise (smooth, so the
    hidden patches can be inferred from the seen ones better than by their own mean)."""
    rng = np.random.default_rng(seed)
    colour = rng.uniform(40, 255, 3)
    fade = np.linspace(0.2, 1.0, size)[:, None] if rng.random() < 0.5 else np.linspace(0.2, 1.0, size)[None, :]
    pixels = colour[None, None] * fade[..., None] + rng.normal(0, 3, (size, size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def encoded(pixels: np.ndarray) -> dict:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def image_parquet(path, n: int = 160, sizes=(16,), **columns) -> str:
    images = [encoded(ramp(i, sizes[i % len(sizes)])) for i in range(n)]
    pq.write_table(pa.table({"image": images, **columns}), path)
    return str(path)


def overrides(tmp_path, source: str, out: str = "run", *more: str) -> list[str]:
    return [f"data.source={source}", f"data.cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path / out}", *TINY,
            *more]


def records(run_dir, split: str) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


def test_loss_falls_from_the_cli_pictures_are_written_and_eval_scores_the_run(tmp_path, offline, capsys):
    source = image_parquet(tmp_path / "images.parquet")
    sets = [f"--set={o}" for o in overrides(tmp_path, source, "run", "train.max_steps=60", "train.eval_every=30")]
    assert main(["pretrain", "recipes/mae_cifar.yaml", *sets]) == 0
    run_dir = tmp_path / "run"
    losses = [r["loss"] for r in records(run_dir, "train")]
    assert len(losses) == 60 and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    val = records(run_dir, "val")
    assert [r["step"] for r in val] == [30, 60]
    # norm_pix_loss: each patch's own mean scores just under 1 ((n-1)/n of its n = 48 values); the model beats it
    assert val[0]["baseline_loss"] == val[1]["baseline_loss"] == pytest.approx(47 / 48, abs=1e-3)  # fixed masks
    assert val[1]["loss"] < min(val[0]["loss"], 0.9 * val[1]["baseline_loss"]), val
    for step in (30, 60):
        with Image.open(run_dir / "recon" / f"step_{step:06d}.png") as picture:
            assert picture.size == picture_size(4, 16) == (4 * 64 + 5 * 2, 3 * 64 + 4 * 2)
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--data", source, "--max-documents", "32"]) == 0
    scores = json.loads((run_dir / "eval_images.json").read_text())
    assert scores["images"] == 32 and 0 < scores["loss"] < scores["baseline_loss"]
    assert (run_dir / "recon" / "eval_images.png").is_file()
    assert "baseline_loss" in capsys.readouterr().out


def test_two_processes_train_as_one(tmp_path, offline):
    source = image_parquet(tmp_path / "images.parquet")
    common = ["train.max_steps=4", "train.eval_every=4", "train.save_every=4", "eval.pictures=0"]
    run(load_recipe(None, ["task=mae", *overrides(tmp_path, source, "one", *common)]))
    two = load_recipe(None, ["task=mae", *overrides(tmp_path, source, "two", *common, "train.batch_size=8")])
    mp.start_processes(worker, args=(2, free_port(), two), nprocs=2, join=True, start_method="spawn")
    one, two = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    for s in one:
        assert abs(one[s] - two[s]) < 1e-5, (s, one[s], two[s])
    assert records(tmp_path / "one", "val")[0]["loss"] == pytest.approx(records(tmp_path / "two", "val")[0]["loss"],
                                                                        abs=1e-5)
    a, b = (load_file(list_checkpoints(tmp_path / r)[-1] / "model.safetensors") for r in ("one", "two"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)


def worker(rank, world, port, cfg):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    run(cfg)


def test_resume_is_the_uninterrupted_run(tmp_path, offline, monkeypatch):
    source = image_parquet(tmp_path / "images.parquet")

    def cfg(out: str):
        return load_recipe(None, ["task=mae", *overrides(tmp_path, source, out, "train.max_steps=8",
                                                         "train.save_every=4", "train.eval_every=4")])

    run(cfg("a"))
    real_step = Trainer.train_step

    def crash_at_5(self, step):
        if step == 4:
            raise KeyboardInterrupt
        return real_step(self, step)

    monkeypatch.setattr(Trainer, "train_step", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        run(cfg("b"))
    monkeypatch.setattr(Trainer, "train_step", real_step)
    run(cfg("b"), resume=True)
    a, b = train_losses(tmp_path / "a"), train_losses(tmp_path / "b")
    assert sorted(b) == list(range(1, 9)) and a == b
    assert records(tmp_path / "a", "val") == records(tmp_path / "b", "val")
    wa, wb = (load_file(tmp_path / r / "checkpoints" / "step_0000008" / "model.safetensors") for r in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_pictures_run_in_the_training_precision(tmp_path, offline, monkeypatch):
    """Under ``train.precision=bf16`` the reconstruction picture's forward runs in bf16 autocast, as the
    evaluation does: varlen and flash, chosen for bf16, refuse fp32 inputs (found on an H100)."""
    seen = []
    forward = MAETask.snapshot

    def spy(self, model, step, out_dir):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return forward(self, model, step, out_dir)

    monkeypatch.setattr(MAETask, "snapshot", spy)
    source = image_parquet(tmp_path / "images.parquet", n=48)
    cfg = load_recipe("recipes/mae_cifar.yaml", overrides(tmp_path, source, "run", "train.max_steps=2",
                                                          "train.eval_every=1", "train.precision=bf16"))
    run(cfg)
    assert seen == [True, True]
    assert (tmp_path / "run" / "recon" / "step_000002.png").is_file()


def test_images_without_labels_load_from_parquet_and_folders(tmp_path):
    def loaded(source):
        return load_images(ImagesDataConfig(source=str(source), val_size=2, cache_dir=str(tmp_path / "cache")))

    alone = loaded(image_parquet(tmp_path / "alone.parquet", n=10))
    # a label column is never read: these labels (floats, one missing) would be refused as class labels
    labelled = loaded(image_parquet(tmp_path / "labelled.parquet", n=10, label=[0.5] * 9 + [None]))
    flat, classes = tmp_path / "flat", tmp_path / "classes"
    for i in range(6):
        (flat / "sub" if i == 5 else flat).mkdir(parents=True, exist_ok=True)
        Image.fromarray(ramp(i)).save(flat / ("sub" if i == 5 else ".") / f"{i}.png")
        (classes / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(ramp(i)).save(classes / f"class{i % 2}" / f"{i}.jpg", quality=95)
    for data, n in ((alone, 10), (labelled, 10), (loaded(flat), 6), (loaded(classes), 6)):
        assert (len(data.train), len(data.val)) == (n - 2, 2)
        assert data.train.labels is None and data.class_names == []
        assert set(data.train.batch(np.arange(2))) == {"pixel_values"}
        assert data.train.images.shape[1:] == (3, 16, 16)
    assert torch.equal(torch.cat([alone.train.images, alone.val.images]).sum(0),
                       torch.cat([labelled.train.images, labelled.val.images]).sum(0))


def test_the_picture_shows_originals_visible_patches_and_reconstructions(tmp_path):
    cfg = load_recipe(None, ["task=mae", *TINY, "data.source=unused"])
    from xformer.models import build_model

    model = build_model(cfg.model)
    images = torch.from_numpy(np.stack([ramp(i) for i in range(3)])).permute(0, 3, 1, 2)  # (3, 3, 16, 16)
    val = FixedNoiseImages(images, cfg.model.num_patches, seed=0)
    assert torch.equal(val.noise, FixedNoiseImages(images, cfg.model.num_patches, seed=0).noise)
    rows = reconstruction_picture(model, MAETask(cfg, cfg.model, None, val), val.batch(np.arange(3)))
    assert rows.shape == (3, 3, 3, 16, 16) and rows.dtype == torch.uint8
    assert (rows[0].int() - images.int()).abs().max() <= 1  # normalised and back
    hidden = (rows[1] == 128).all(1)  # (B, 16, 16) grey pixels: the hidden patches
    assert hidden.float().mean() == 0.75  # mask_ratio 0.75: 12 of 16 patches
    assert torch.equal(rows[2][~hidden.unsqueeze(1).expand_as(rows[2])], rows[0][~hidden.unsqueeze(1).expand_as(rows[0])])
    assert not torch.equal(rows[2], rows[0])  # hidden patches are the model's


@pytest.mark.parametrize("bad, message", [
    ("mixed", "image is 20x20 but"),
    ("model.image_size=18", "model.image_size=18 is not divisible by model.patch_size=4"),
    ("model.mask_ratio=0", "model.mask_ratio"),
    ("model.mask_ratio=1.5", "model.mask_ratio"),
    ("model.decoder_dim=64", "model.decoder_dim=64 is wider than the encoder (model.dim=32)"),
])
def test_bad_input_is_one_error_line(tmp_path, offline, capsys, bad, message):
    sizes = (16, 20) if bad == "mixed" else (16,)
    source = image_parquet(tmp_path / "images.parquet", n=40, sizes=sizes)
    sets = [f"--set={o}" for o in overrides(tmp_path, source, "run", "train.max_steps=2", "eval.pictures=0")]
    extra = [] if bad == "mixed" else [f"--set={bad}"]
    assert main(["train", "recipes/mae_cifar.yaml", *sets, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert not (tmp_path / "run").exists()


def test_recipe_encoder_is_the_cpu_vit_recipes(tmp_path):
    """A classifier started from recipes/mae_cifar.yaml's encoder has recipes/vit_cifar_cpu.yaml's shape."""
    mae, vit = load_yaml("recipes/mae_cifar.yaml", "recipe")["model"], load_yaml("recipes/vit_cifar_cpu.yaml", "r")["model"]
    assert {k: mae[k] for k in ("image_size", "patch_size", "dim", "depth", "num_heads", "mlp_ratio")} == \
           {k: vit[k] for k in ("image_size", "patch_size", "dim", "depth", "num_heads", "mlp_ratio")}


def test_the_step_bench_times_both_models_on_one_encoder(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_mae_step", "bench/mae_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tiny = [f"--set={o}" for o in TINY if o.startswith("model.")]
    result = bench.main([*tiny, "--batch", "4", "--steps", "2", "--warmup", "0", "--json", str(tmp_path / "b.json")])
    assert result["encoder"] == {"dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}
    assert (result["patches_seen"], result["patches"]) == (4, 16)
    assert result["ratio_mae_to_vit"] == result["step_s"]["mae"] / result["step_s"]["vit"] > 0
    assert json.loads((tmp_path / "b.json").read_text())["batch"] == 4
