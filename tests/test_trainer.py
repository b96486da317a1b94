"""Training end to end on a synthetic corpus: loss falls, exact resume, DDP equivalence."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from xformer.train.checkpoint import list_checkpoints
from xformer.config import TrainConfig
from xformer.tasks import run as pretrain
from xformer.train.loop import Trainer
from xformer.train.schedule import lr_lambda


def train_losses(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if r["split"] == "train"}


def test_loss_falls_and_run_dir_is_complete(tiny_config, tmp_path):
    cfg = tiny_config("train.max_steps=60", "train.eval_every=30", "train.save_every=30", "train.keep_last=1")
    result = pretrain(cfg)
    run = tmp_path / "run"
    losses = train_losses(run)
    first, last = sum(losses[s] for s in range(1, 6)) / 5, sum(losses[s] for s in range(56, 61)) / 5
    assert last < first - 0.5, (first, last)
    assert result["val"]["mlm_acc"] > 0.05 and result["step"] == 60
    assert [p.name for p in list_checkpoints(run)] == ["step_0000060"]  # keep_last=1 pruned step 30
    ckpt = run / "checkpoints" / "step_0000060"
    assert {"model.safetensors", "config.yaml", "train_state.pt"} <= {p.name for p in ckpt.iterdir()}
    state = torch.load(ckpt / "train_state.pt", weights_only=True)
    assert state["step"] == 60
    assert (run / "config.yaml").is_file() and (run / "tokenizer" / "tokenizer.json").is_file()
    vals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in vals if r["split"] == "val"] == [30, 60]


def test_resume_reproduces_straight_run(tiny_config, tmp_path, monkeypatch):
    pretrain(tiny_config("train.max_steps=40", f"out_dir={tmp_path / 'a'}"))
    interrupted = tiny_config("train.max_steps=40", "train.save_every=20", f"out_dir={tmp_path / 'b'}")
    real_step = Trainer.train_step

    def crash_at_21(self, step):
        if step == 20:
            raise KeyboardInterrupt
        return real_step(self, step)

    monkeypatch.setattr(Trainer, "train_step", crash_at_21)
    with pytest.raises(KeyboardInterrupt):
        pretrain(interrupted)
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step_0000020"]
    pretrain(tiny_config("train.max_steps=40", "train.save_every=20", f"out_dir={tmp_path / 'b'}"), resume=True)
    a, b = train_losses(tmp_path / "a"), train_losses(tmp_path / "b")
    assert sorted(b) == list(range(1, 41))
    assert [a[s] for s in range(1, 41)] == [b[s] for s in range(1, 41)]


def test_refuses_to_overwrite_a_run(tiny_config):
    from xformer.errors import XformerError

    pretrain(tiny_config("train.max_steps=2"))
    with pytest.raises(XformerError, match="--resume"):
        pretrain(tiny_config("train.max_steps=2"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_worker(rank, world, port, cfg):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    pretrain(cfg)


def test_ddp_two_processes_match_one_with_double_batch(tiny_config, tmp_path):
    # Dropout off: each process draws its own dropout masks, which is not what this test is about.
    common = ["train.max_steps=6", "model.dropout=0", "model.attn_dropout=0"]
    single = tiny_config(*common, "train.batch_size=8", f"out_dir={tmp_path / 'one'}")
    double = tiny_config(*common, "train.batch_size=4", f"out_dir={tmp_path / 'two'}")
    pretrain(single)
    mp.start_processes(ddp_worker, args=(2, free_port(), double), nprocs=2, join=True, start_method="spawn")
    one, two = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 7))
    for s in one:
        assert abs(one[s] - two[s]) < 1e-5, (s, one[s], two[s])


def test_schedule_warmup_then_decay():
    f = lr_lambda(TrainConfig(warmup_steps=10, schedule="linear"), 100)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)
    g = lr_lambda(TrainConfig(warmup_steps=0, schedule="cosine", min_lr_ratio=0.1), 100)
    assert g(0) == pytest.approx(1.0) and g(50) == pytest.approx(0.55) and g(100) == pytest.approx(0.1)


def test_pretraining_continues_from_an_exported_hf_checkpoint(tiny_config, tmp_path):
    from xformer.interop.hf_bert import export_bert
    from xformer.trained.loading import load, load_tokenizer

    pretrain(tiny_config("train.max_steps=40"))
    export_bert(load(tmp_path / "run"), tmp_path / "hf", tokenizer=load_tokenizer(tmp_path / "run"))
    fresh = tiny_config("train.max_steps=1", f"out_dir={tmp_path / 'fresh'}")
    pretrain(fresh)
    warm = tiny_config("train.max_steps=1", f"model.init=hf:{tmp_path / 'hf'}", f"out_dir={tmp_path / 'warm'}")
    pretrain(warm)
    # the checkpoint's own vocabulary, and the caller's config left as it was
    assert load_tokenizer(tmp_path / "warm").get_vocab() == load_tokenizer(tmp_path / "hf").get_vocab()
    assert warm.data.tokenizer.path is None and warm.model.dim == 32
    assert train_losses(tmp_path / "warm")[1] < train_losses(tmp_path / "fresh")[1] - 0.2


def counting_worker(rank, world, port, cfg, log_dir):
    """A DDP worker that records how many rows each training read asks for."""
    from xformer.data.text.sentence_pairs import PretrainingDataset

    read = PretrainingDataset.batch

    def batch(self, indices, seq_len=None):
        if seq_len is not None:  # training reads; evaluation reads whole validation batches
            with open(f"{log_dir}/rank{rank}.txt", "a") as f:
                f.write(f"{len(indices)}\n")
        return read(self, indices, seq_len)

    PretrainingDataset.batch = batch
    ddp_worker(rank, world, port, cfg)


def test_ddp_processes_read_only_their_own_rows(tiny_config, tmp_path):
    cfg = tiny_config("train.max_steps=3", "train.batch_size=4", f"out_dir={tmp_path / 'run'}")
    mp.start_processes(counting_worker, args=(2, free_port(), cfg, tmp_path), nprocs=2, join=True,
                       start_method="spawn")
    for rank in (0, 1):
        reads = (tmp_path / f"rank{rank}.txt").read_text().split()
        # 3 steps (and the prefetch of a 4th), each reading this process's 4 rows of the 8-row micro-batch
        assert set(reads) == {"4"} and len(reads) in (3, 4), reads


def test_activation_checkpointing_trains_alike_and_the_gradient_norm_is_logged(tiny_config, tmp_path):
    pretrain(tiny_config("train.max_steps=5", f"out_dir={tmp_path / 'plain'}"))
    pretrain(tiny_config("train.max_steps=5", "train.activation_checkpointing=true", f"out_dir={tmp_path / 'ckpt'}"))
    plain, ckpt = train_losses(tmp_path / "plain"), train_losses(tmp_path / "ckpt")
    for step in plain:
        assert abs(plain[step] - ckpt[step]) < 1e-5, (step, plain[step], ckpt[step])
    records = [json.loads(line) for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    norms = [r["grad_norm"] for r in records if r["split"] == "train"]
    assert len(norms) == 5 and all(n > 0 for n in norms)


def test_background_prefetch_changes_nothing(tiny_config, tmp_path):
    pretrain(tiny_config("train.max_steps=6", "train.prefetch=false", f"out_dir={tmp_path / 'plain'}"))
    pretrain(tiny_config("train.max_steps=6", "train.prefetch=true", f"out_dir={tmp_path / 'ahead'}"))
    assert train_losses(tmp_path / "plain") == train_losses(tmp_path / "ahead")


def test_model_flops_utilisation_is_logged_against_the_given_peak(tiny_config, tmp_path):
    from xformer.train.metrics import matmul_parameters

    pretrain(tiny_config("train.max_steps=2", "train.peak_tflops=0.001"))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    from xformer.trained.loading import load

    flops = 6 * matmul_parameters(load(tmp_path / "run"))
    for r in train:  # tokens/s x FLOPs per token over the peak
        assert r["mfu"] == pytest.approx(flops * r["tokens_per_s"] / 1e9, rel=1e-9)
