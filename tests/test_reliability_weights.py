"""Issue 20, classes 4 and 5: weights are read only when intact and finite (load, export, init, resume), and
training that explodes, or settings and data that make a run meaningless, are stopped or warned about with
the measured fact."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

import xformer
from xformer import distributed
from xformer.commands.cli import main
from xformer.config import TrainConfig, save_config
from xformer.errors import XformerError
from xformer.losses import bert_pretraining_metrics, classification_metrics, contrastive_metrics, regression_metrics
from xformer.models import BertForPreTraining
from xformer.models.bert import BertConfig
from xformer.train.checkpoint import _sha256, list_checkpoints, save_checkpoint, verify_checkpoint
from xformer.train.checkpointer import Checkpointer
from xformer.train.loop import Trainer
from xformer.train.metrics import ExplosionWatch, validation_warning
from xformer.train.schedule import ramp_warning, warmup_warning
from xformer.trained.init import init_from
from xformer.trained.loading import load_config
from xformer.tasks import get_task, run
from xformer.tasks.bert_pretraining import check_masking

TINY = BertConfig(vocab_size=50, dim=16, depth=1, num_heads=2)


def _run_with_checkpoints(tmp_path, steps=(1,)):
    """A bert_pretraining run directory holding a checkpoint at each of ``steps`` (keep_last large)."""
    torch.manual_seed(0)
    model = BertForPreTraining(TINY)
    cfg = get_task("bert_pretraining").config(model=model.config)
    for step in steps:
        save_checkpoint(tmp_path / "run", step, model, cfg, {"step": step, "elapsed": 0.0}, keep_last=10)
    save_config(cfg, tmp_path / "run" / "config.yaml")
    return tmp_path / "run", model, cfg


def _flip_a_bit(path, offset=-20):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _poison(ckpt, reseal: bool = True):
    """NaN in the first floating weight of ``ckpt``; with ``reseal`` the manifest is rewritten to vouch for it
    (as a copy tool that re-checksums would), so only the finiteness check can catch it."""
    weights = ckpt / "model.safetensors"
    tensors = load_file(weights)
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, weights)
    if reseal:
        manifest = json.loads((ckpt / "manifest.json").read_text())
        manifest["model.safetensors"] = {"size": weights.stat().st_size, "sha256": _sha256(weights)}
        (ckpt / "manifest.json").write_text(json.dumps(manifest))
    return name


# ----------------------------------------------------------------------------- class 4: integrity on load


def test_a_flipped_bit_is_refused_by_load_even_after_a_good_load_in_the_same_process(tmp_path):
    run_dir, _, _ = _run_with_checkpoints(tmp_path)
    ckpt = list_checkpoints(run_dir)[-1]
    xformer.load(ckpt)  # intact: loads, and its hashes are remembered
    _flip_a_bit(ckpt / "model.safetensors")
    for path in (ckpt, run_dir):
        with pytest.raises(XformerError) as err:
            xformer.load(path)
        message = str(err.value)
        assert "\n" not in message and str(ckpt) in message
        assert "model.safetensors does not match its sha256" in message


def test_a_damaged_newest_checkpoint_is_not_replaced_by_an_older_one_on_load(tmp_path):
    run_dir, _, _ = _run_with_checkpoints(tmp_path, steps=(1, 2))
    older, newer = list_checkpoints(run_dir)
    _flip_a_bit(newer / "config.yaml", offset=5)
    with pytest.raises(XformerError, match=r"step_0000002 is damaged: config.yaml does not match"):
        xformer.load(run_dir)
    with pytest.raises(XformerError, match="step_0000002 is damaged"):
        load_config(run_dir)  # what init's sequence check reads: the same checkpoint
    assert isinstance(xformer.load(older), BertForPreTraining)  # the older one, asked for by its path


def test_init_refuses_a_corrupted_checkpoint(tmp_path):
    run_dir, _, _ = _run_with_checkpoints(tmp_path)
    _flip_a_bit(list_checkpoints(run_dir)[-1] / "model.safetensors")
    with pytest.raises(XformerError, match="model.safetensors does not match its sha256"):
        init_from(BertConfig(init=str(run_dir), dim=16, depth=1, num_heads=2))


def test_non_finite_weights_are_refused_by_load_and_init_and_never_exported(tmp_path, capsys):
    run_dir, _, _ = _run_with_checkpoints(tmp_path)
    ckpt = list_checkpoints(run_dir)[-1]
    name = _poison(ckpt)
    assert verify_checkpoint(ckpt) is None  # the manifest vouches for it: only finiteness catches it
    with pytest.raises(XformerError, match=rf"model.safetensors: the weights are not finite \(first: {name}\)"):
        xformer.load(run_dir)
    with pytest.raises(XformerError, match="not finite"):
        init_from(BertConfig(init=str(ckpt), dim=16, depth=1, num_heads=2))
    capsys.readouterr()
    assert main(["export", str(run_dir), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the "exporting ..." progress line
    assert err.startswith("error: ") and "not finite" in err
    assert not (tmp_path / "hf").exists()


def test_export_refuses_a_corrupted_checkpoint(tmp_path, capsys):
    run_dir, _, _ = _run_with_checkpoints(tmp_path)
    _flip_a_bit(list_checkpoints(run_dir)[-1] / "model.safetensors")
    assert main(["export", str(run_dir), str(tmp_path / "hf")]) == 2
    assert "model.safetensors does not match its sha256" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


def _checkpointer(run_dir, cfg, model):
    optimizer = torch.optim.AdamW(model.parameters())
    return Checkpointer(run_dir, cfg, model, optimizer, distributed.DistInfo(0, 1, torch.device("cpu")), False)


def test_resume_verifies_and_refuses_non_finite_weights(tmp_path):
    torch.manual_seed(0)
    model = BertForPreTraining(TINY)
    cfg = get_task("bert_pretraining").config(model=model.config)
    saver = _checkpointer(tmp_path / "run", cfg, model)
    saver.save(1, {"micro_batches": 1, "elapsed": 0.0})
    assert _checkpointer(tmp_path / "run", cfg, BertForPreTraining(TINY)).load()["step"] == 1
    ckpt = list_checkpoints(tmp_path / "run")[-1]
    _poison(ckpt)
    with pytest.raises(XformerError, match=r"--resume: the weights of .*step_0000001 are not finite"):
        _checkpointer(tmp_path / "run", cfg, BertForPreTraining(TINY)).load()


def test_a_rewritten_file_is_hashed_again(tmp_path):
    run_dir, _, _ = _run_with_checkpoints(tmp_path)
    ckpt = list_checkpoints(run_dir)[-1]
    assert verify_checkpoint(ckpt) is None
    _flip_a_bit(ckpt / "train_state.pt")
    assert "train_state.pt does not match its sha256" in verify_checkpoint(ckpt)


# ----------------------------------------------------------------------------- class 5: meaningless runs


def test_a_finite_explosion_stops_training_with_its_step(tiny_config, tmp_path):
    cfg = tiny_config("train.lr=30", "train.max_steps=12", "train.save_every=1", "train.log_every=3",
                      "train.warmup_steps=0")
    with pytest.raises(XformerError, match=r"^step \d+: the training loss exploded to .* times its start") as err:
        run(cfg)
    bad = int(str(err.value).split()[1].rstrip(":"))
    assert "\n" not in str(err.value)
    log = tmp_path / "run" / "metrics.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    assert all(math.isfinite(r["loss"]) for r in records)  # finite: not a NaN divergence
    saved = [int(p.name.split("_")[1]) for p in list_checkpoints(tmp_path / "run")]
    assert all(step < bad for step in saved)


def test_the_explosion_watch_compares_with_the_first_step():
    watch = ExplosionWatch()
    watch.add(1, {"loss_sum": torch.tensor(2.0), "n": torch.tensor(1.0), "grad_norm": torch.tensor(1.0)})
    watch.add(2, {"loss_sum": torch.tensor(9e9), "n": torch.tensor(1.0)})  # only the first step is the start
    assert watch.check(5, 300.0, regression_metrics) is None  # 150 times: bad, but not an explosion
    assert watch.check(6, float("nan"), regression_metrics) is None  # non-finite: DivergenceWatch's case
    message = watch.check(7, 5000.0, regression_metrics)
    assert message.startswith("step 7: the training loss exploded to 5e+03, 2.5e+03 times its start (2 at step 1)")
    assert ExplosionWatch().check(3, 1e9, regression_metrics) is None  # no step seen yet


def test_metrics_over_no_targets_are_not_measured_not_zero():
    assert all(math.isnan(v) for v in bert_pretraining_metrics(
        {"mlm_loss_sum": 0.0, "mlm_correct": 0.0, "mlm_n": 0.0}).values())
    assert math.isnan(classification_metrics({"loss_sum": 0.0, "correct": 0.0, "n": 0})["acc"])
    assert math.isnan(regression_metrics({"loss_sum": 0.0, "n": 0})["loss"])
    assert math.isnan(contrastive_metrics({"loss_sum": 0.0, "i2t_correct": 0, "t2i_correct": 0, "n": 0})["loss"])
    assert bert_pretraining_metrics({"mlm_loss_sum": 6.0, "mlm_correct": 1.0, "mlm_n": 3.0})["mlm_loss"] == 2.0


def test_validation_warnings_name_the_step():
    label = "val (all 4 examples)"
    no_targets = validation_warning(7, {"mlm_n": 0.0, "tokens": 50.0}, {"loss": math.nan}, label)
    assert no_targets.startswith("warning: step 7:") and "no targets (mlm_n = 0)" in no_targets
    nan = validation_warning(9, {"n": 4.0}, {"loss": math.inf}, label)
    assert nan.startswith("warning: step 9: the validation loss is inf")
    assert validation_warning(9, {"n": 4.0}, {"loss": 0.5}, label) is None


class _Rows:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def batch(self, idx):
        return {"x": self.x[idx], "y": self.y[idx]}


class _MaskedRegression:
    """A regression whose targets are the rows with y != -100 (as masked LM's are the masked tokens)."""

    def __init__(self, train, val):
        self.train_data, self.val_data = train, val

    def prepare(self, batch, generator, train):
        return batch

    def normalizers(self, batch):
        return {"n": (batch["y"] != -100).sum().clamp(min=1)}

    def loss(self, model, local, norms):
        keep = local["y"] != -100
        err = (model(local["x"]).squeeze(-1) - local["y"]) ** 2 * keep
        return err.sum() / norms["n"], {"loss_sum": err.sum().detach(), "n": keep.sum()}

    def metrics(self, counts):
        return regression_metrics(counts)


def test_a_validation_loss_from_no_targets_is_reported_as_no_targets(tmp_path, capsys):
    torch.manual_seed(0)
    x = torch.randn(16, 3)
    task = _MaskedRegression(_Rows(x, x.sum(1)), _Rows(x[:4], torch.full((4,), -100.0)))
    cfg = get_task("text_classification").config(train=TrainConfig(
        max_steps=2, batch_size=4, log_every=1, eval_every=2, save_every=100, progress=False, device="cpu"))
    (tmp_path / "run").mkdir()
    trainer = Trainer(cfg, torch.nn.Linear(3, 1), task, tmp_path / "run", distributed.DistInfo(0, 1, torch.device("cpu")))
    result = trainer.fit()
    assert math.isnan(result["val"]["loss"])  # not 0: nothing was measured
    out, err = capsys.readouterr()
    assert "loss no targets" in out and "warning: step 2:" in err and "no targets (n = 0)" in err
    val = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    assert val["split"] == "val" and val["loss"] is None


def test_a_zero_width_mlp_is_refused():
    from xformer.commands.recipe import load_recipe

    with pytest.raises(XformerError, match=r"model.mlp_ratio=0.01 with model.dim=16 makes MLPs of 0 units"):
        load_recipe(None, ["model.dim=16", "model.num_heads=2", "model.mlp_ratio=0.01"])


class _Masker:
    is_special = torch.tensor([True, True, False, False, False])  # ids 0 and 1 are special (pad, cls)


class _TokenRows:
    def __init__(self, n_rows, length):
        ids = torch.full((n_rows, length), 2)
        ids[:, 0] = 1  # [CLS]: never masked
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def batch(self, idx):
        return {"input_ids": self.ids[idx], "attention_mask": torch.ones_like(self.ids[idx])}


def test_masking_that_leaves_no_targets_is_refused_and_almost_none_warned(capsys):
    short = _TokenRows(40, 3)  # 2 maskable tokens a row
    with pytest.raises(XformerError, match=r"data.mlm_prob=0.01 of the 2.0 maskable tokens a row .* masks 0.02 tokens "
                                           r"a row, 0.16 a batch of train.batch_size=8"):
        check_masking(short, _Masker(), 0.01, 8)
    check_masking(short, _Masker(), 0.15, 8)  # 0.3 a row, 2.4 a batch: warned
    assert "warning: data.mlm_prob=0.15 of the 2.0 maskable tokens a row" in capsys.readouterr().err
    check_masking(_TokenRows(40, 64), _Masker(), 0.15, 8)
    assert capsys.readouterr().err == ""


def test_warmup_and_batch_ramps_that_cannot_happen_are_warned():
    assert "longer than the run's 10 steps" in warmup_warning(TrainConfig(warmup_steps=50), 10)
    assert "nothing to ramp" in ramp_warning(TrainConfig(batch_ramp=0.2), 100)
    one_step = ramp_warning(TrainConfig(batch_ramp=0.05, grad_accum=4), 10)
    assert "train.batch_ramp=0.05 of the run's 10 steps lasts 1 step" in one_step
    assert ramp_warning(TrainConfig(batch_ramp=0.2, grad_accum=4), 100) is None
    assert ramp_warning(TrainConfig(), 100) is None


def test_a_run_whose_every_checkpoint_is_damaged_is_not_started_over(tiny_config, tmp_path, capsys):
    run(tiny_config("train.max_steps=2"))
    (only,) = list_checkpoints(tmp_path / "run")
    _flip_a_bit(only / "model.safetensors")
    for resume in (True, False):
        with pytest.raises(XformerError, match=r"every checkpoint is damaged \(1, the newest step_0000002"):
            run(tiny_config("train.max_steps=4"), resume=resume)
    assert list_checkpoints(tmp_path / "run") == [only]  # kept for a restore, not pruned by a fresh start
    assert "model.safetensors does not match its sha256" in capsys.readouterr().err
