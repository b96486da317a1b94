import errno
import json

import pytest
import torch

from xformer.train import checkpoint
from xformer.train.checkpoint import (
    atomic_write_text,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from xformer.config import EncoderConfig
from xformer.errors import XformerError

CFG = EncoderConfig(dim=4, depth=1, num_heads=1)


def save(run, step, keep_last=5, fill=None):
    torch.manual_seed(step)
    model = torch.nn.Linear(4, 3)
    if fill is not None:
        with torch.no_grad():
            model.weight.fill_(fill)
    return save_checkpoint(run, step, model, CFG, {"step": step, "note": torch.arange(3)}, keep_last), model


def test_round_trip_writes_a_manifest(tmp_path):
    ckpt, model = save(tmp_path, 10)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert set(manifest) == {"model.safetensors", "config.yaml", "train_state.pt"}
    assert manifest["train_state.pt"]["size"] == (ckpt / "train_state.pt").stat().st_size
    assert verify_checkpoint(ckpt) is None and latest_checkpoint(tmp_path) == ckpt
    fresh = torch.nn.Linear(4, 3)
    state = load_checkpoint(ckpt, fresh)
    assert state["step"] == 10
    torch.testing.assert_close(fresh.weight, model.weight)


def test_tied_weights_round_trip(tmp_path):
    model = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 5, bias=False))
    model[1].weight = model[0].weight
    ckpt = save_checkpoint(tmp_path, 1, model, CFG, {"step": 1}, keep_last=1)
    fresh = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 5, bias=False))
    fresh[1].weight = fresh[0].weight
    load_checkpoint(ckpt, fresh)
    torch.testing.assert_close(fresh[1].weight, model[0].weight)


def test_truncated_weights_fall_back_to_previous(tmp_path, capsys):
    older, _ = save(tmp_path, 10)
    newer, _ = save(tmp_path, 20)
    weights = newer / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    assert latest_checkpoint(tmp_path) == older
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(newer) in err[0] and "model.safetensors" in err[0] and "truncated" in err[0]
    with pytest.raises(XformerError, match="step_0000020 is damaged: model.safetensors has"):
        load_checkpoint(newer, torch.nn.Linear(4, 3))


def test_corrupted_bytes_of_same_size_are_caught(tmp_path, capsys):
    older, _ = save(tmp_path, 10)
    newer, _ = save(tmp_path, 20)
    data = bytearray((newer / "train_state.pt").read_bytes())
    data[-30] ^= 0xFF
    (newer / "train_state.pt").write_bytes(bytes(data))
    assert latest_checkpoint(tmp_path) == older
    assert "train_state.pt does not match its sha256" in capsys.readouterr().err


@pytest.mark.parametrize("damage, reason", [
    (lambda c: (c / "train_state.pt").unlink(), "train_state.pt is missing"),
    (lambda c: (c / "manifest.json").write_text("{not json"), "manifest.json is unreadable"),
    (lambda c: (c / "manifest.json").write_text("[1, 2]"), "manifest.json is unreadable"),
])
def test_damaged_latest_is_skipped(tmp_path, capsys, damage, reason):
    older, _ = save(tmp_path, 10)
    newer, _ = save(tmp_path, 20)
    damage(newer)
    assert verify_checkpoint(newer).startswith(reason)
    assert latest_checkpoint(tmp_path) == older
    assert reason in capsys.readouterr().err


def test_empty_step_dir_and_missing_manifest_with_missing_files(tmp_path, capsys):
    older, _ = save(tmp_path, 10)
    (tmp_path / "checkpoints" / "step_0000030").mkdir()
    partial = tmp_path / "checkpoints" / "step_0000020"
    partial.mkdir()
    (partial / "config.yaml").write_text("a: 1\n")
    assert latest_checkpoint(tmp_path) == older
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert "step_0000030" in err[0] and "empty" in err[0]
    assert "step_0000020" in err[1] and "model.safetensors is missing" in err[1]
    assert latest_checkpoint(tmp_path) == older
    assert capsys.readouterr().err == ""  # each damaged checkpoint is reported once


def test_all_damaged_gives_none(tmp_path, capsys):
    only, _ = save(tmp_path, 10)
    (only / "model.safetensors").write_bytes(b"")
    assert latest_checkpoint(tmp_path) is None
    assert str(only) in capsys.readouterr().err


def test_legacy_checkpoint_without_manifest_loads(tmp_path):
    ckpt, model = save(tmp_path, 10)
    (ckpt / "manifest.json").unlink()
    assert verify_checkpoint(ckpt) is None and latest_checkpoint(tmp_path) == ckpt
    fresh = torch.nn.Linear(4, 3)
    assert load_checkpoint(ckpt, fresh)["step"] == 10
    torch.testing.assert_close(fresh.weight, model.weight)
    (ckpt / "train_state.pt").write_bytes(b"")
    assert verify_checkpoint(ckpt) == "train_state.pt is empty"


def test_legacy_weights_only_checkpoint_is_intact_but_cannot_resume(tmp_path):
    ckpt, _ = save(tmp_path, 10)
    (ckpt / "manifest.json").unlink()
    (ckpt / "train_state.pt").unlink()
    assert verify_checkpoint(ckpt) is None and latest_checkpoint(tmp_path) == ckpt
    with pytest.raises(XformerError, match="train_state.pt is missing: .* holds weights only"):
        load_checkpoint(ckpt, torch.nn.Linear(4, 3))


def test_unreadable_legacy_files_raise_naming_the_file(tmp_path):
    ckpt, _ = save(tmp_path, 10)
    (ckpt / "manifest.json").unlink()
    (ckpt / "train_state.pt").write_bytes(b"garbage")
    with pytest.raises(XformerError, match="train_state.pt cannot be read as a training state"):
        load_checkpoint(ckpt, torch.nn.Linear(4, 3))
    (ckpt / "model.safetensors").write_bytes(b"garbage!!")
    with pytest.raises(XformerError, match="model.safetensors cannot be read"):
        load_checkpoint(ckpt, torch.nn.Linear(4, 3))


def test_weights_that_do_not_fit_the_model_raise(tmp_path):
    ckpt, _ = save(tmp_path, 10)
    with pytest.raises(XformerError, match="model.safetensors does not fit the model"):
        load_checkpoint(ckpt, torch.nn.Linear(4, 2))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, value):
    with pytest.raises(XformerError, match=r"refusing to save .*step_0000010: weights are not finite \(first: weight\)"):
        save(tmp_path, 10, fill=value)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("target", ["_write_bytes", "save_config"])
def test_disk_full_leaves_no_temp_dir_and_keeps_older(tmp_path, monkeypatch, target):
    older, _ = save(tmp_path, 10)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, target, full)
    with pytest.raises(XformerError, match="could not write checkpoint .*step_0000020: No space left on device"):
        save(tmp_path, 20)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_0000010"]
    monkeypatch.undo()
    assert verify_checkpoint(older) is None and latest_checkpoint(tmp_path) == older


def test_pruning_keeps_intact_and_drops_damaged(tmp_path, capsys):
    save(tmp_path, 10, keep_last=2)
    save(tmp_path, 20, keep_last=2)
    damaged = tmp_path / "checkpoints" / "step_0000020" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:10])
    save(tmp_path, 30, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000010", "step_0000030"]
    assert "step_0000020" in capsys.readouterr().err
    save(tmp_path, 40, keep_last=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000040"]


def test_atomic_write_text_failure_keeps_original(tmp_path, monkeypatch):
    target = tmp_path / "metrics.jsonl"
    atomic_write_text(target, "old\n")

    def full(path, data):
        path.write_bytes(bytes(data)[:2])  # a partial temp file, as a full disk leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write_bytes", full)
    with pytest.raises(XformerError, match="could not write .*metrics.jsonl: No space left on device"):
        atomic_write_text(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
