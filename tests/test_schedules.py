"""Budget schedules: the triangle LR, schedules over wall time (a fake clock), the batch-size ramp."""

import json
import os
import time

import pytest
import torch
import torch.multiprocessing as mp
from test_trainer import free_port, train_losses

from xformer.config import TrainConfig
from xformer.errors import XformerError
from xformer.commands.recipe import load_recipe
from xformer.tasks import run as pretrain
from xformer.train.batches import Batches
from xformer.train.loop import Trainer
from xformer.train.schedule import Clock, lr_at, lr_lambda, micro_batches

TIME_BUDGET = ["train.budget=time", "train.max_minutes=1", "train.warmup_steps=0", "train.schedule=triangle"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One data cache for the module's runs (the corpus and settings are the same)."""
    return f"data.cache_dir={tmp_path_factory.mktemp('cache')}"


def train_records(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in lines if r["split"] == "train"}


def fake_clock(monkeypatch, seconds_per_step, lrs):
    """Time advances by ``seconds_per_step`` per training step and stands still otherwise; the LR each
    step trains with goes to ``lrs``."""
    now = [1000.0]
    real_step = Trainer.train_step

    def step(self, i):
        lrs.append(self.lr)
        counts = real_step(self, i)
        now[0] += seconds_per_step
        return counts

    monkeypatch.setattr(Clock, "now", staticmethod(lambda: now[0]))
    monkeypatch.setattr(Trainer, "train_step", step)


def test_triangle_rises_to_the_peak_then_falls_to_the_floor():
    f = lr_lambda(TrainConfig(schedule="triangle"), 100)  # no warmup given: the peak mid-budget
    assert f(0) == pytest.approx(1 / 50) and f(24) == pytest.approx(0.5) and f(49) == pytest.approx(1.0)
    assert f(75) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)
    g = lr_lambda(TrainConfig(schedule="triangle", warmup_ratio=0.2, min_lr_ratio=0.1), 100)
    assert g(9) == pytest.approx(0.5) and g(19) == pytest.approx(1.0)
    assert g(60) == pytest.approx(0.55) and g(100) == pytest.approx(0.1)
    # warmup_ratio is a share of the steps, as warmup_steps counts them
    h, k = lr_lambda(TrainConfig(warmup_ratio=0.1), 100), lr_lambda(TrainConfig(warmup_steps=10), 100)
    assert [h(s) for s in range(101)] == [k(s) for s in range(101)]
    # over time: progress is the share of the time spent
    t = TrainConfig(schedule="triangle", budget="time", max_minutes=10, min_lr_ratio=0.1)
    assert [lr_at(t, p) for p in (0.0, 0.25, 0.5, 0.75, 1.0)] == pytest.approx([0.0, 0.5, 1.0, 0.55, 0.1])
    c = TrainConfig(schedule="cosine", budget="time", max_minutes=10, warmup_ratio=0.0)
    assert lr_at(c, 0.5) == pytest.approx(0.5) and lr_at(c, 1.0) == pytest.approx(0.0)


def test_batch_ramp_and_budget_keys_are_checked():
    cfg = TrainConfig(grad_accum=4, batch_ramp=0.5)
    assert [micro_batches(cfg, p) for p in (0.0, 0.1, 0.2, 0.4, 0.5, 0.9)] == [1, 1, 2, 3, 4, 4]
    assert micro_batches(TrainConfig(grad_accum=4), 0.0) == 4  # no ramp
    with pytest.raises(XformerError, match="needs train.max_minutes"):
        load_recipe(None, ["task=bert_pretraining", "train.budget=time"])
    with pytest.raises(XformerError, match="set train.warmup_ratio"):
        load_recipe(None, ["task=bert_pretraining", "train.budget=time", "train.max_minutes=5", "train.warmup_steps=5"])
    with pytest.raises(XformerError, match="both set"):
        load_recipe(None, ["task=bert_pretraining", "train.warmup_ratio=0.1", "train.warmup_steps=5"])


def test_time_budget_sets_the_lr_from_the_clock_stops_and_resumes(tiny_config, cache, tmp_path, monkeypatch):
    lrs = []
    fake_clock(monkeypatch, 12.0, lrs)
    # max_steps caps a time budget too (issue 21; tests/test_first_hour.py): here the time runs out first
    result = pretrain(tiny_config(*TIME_BUDGET, cache, "train.max_steps=30"))
    run = tmp_path / "run"
    records = train_records(run)
    # 12 s a step of a 60 s budget: 5 steps; the LR logged at step n is the next step's, at n / 5 of the time
    triangle = [0.0, 0.4, 0.8, 0.8, 0.4, 0.0]  # up to the peak at 30 s, down to 0 at 60 s
    assert result["step"] == 5 and sorted(records) == list(range(1, 6))
    assert [records[n]["lr"] for n in range(1, 6)] == pytest.approx([1e-3 * f for f in triangle[1:]], abs=1e-12)
    assert [records[n]["elapsed_s"] for n in range(1, 6)] == pytest.approx([12.0 * n for n in range(1, 6)])
    assert lrs == pytest.approx([1e-3 * f for f in triangle[:5]], abs=1e-12)
    state = torch.load(run / "checkpoints" / "step_0000005" / "train_state.pt", weights_only=True)
    assert state["elapsed"] == pytest.approx(60.0) and state["micro_batches"] == 5
    # a longer budget continues from the saved time: 30 s more, the LR on the new budget's triangle
    lrs.clear()
    result = pretrain(tiny_config(*TIME_BUDGET, cache, "train.max_minutes=1.5"), resume=True)
    assert result["step"] == 8 and sorted(train_records(run)) == list(range(1, 9))
    assert lrs == pytest.approx([1e-3 * lr_at(TrainConfig(schedule="triangle"), (60 + 12 * n) / 90)
                                 for n in range(3)], abs=1e-12)


def test_batch_ramp_grows_the_micro_batches_and_resumes_mid_ramp(tiny_config, cache, tmp_path, monkeypatch):
    ramp = [cache, "train.max_steps=4", "train.grad_accum=3", "train.batch_ramp=0.75", "train.batch_size=4"]
    reads = []  # per step, the micro-batches it read
    real_micro, real_step = Batches.micro_batch, Trainer.train_step

    def micro_batch(self, k):
        reads[-1].append(k)
        return real_micro(self, k)

    def counted_step(self, step):
        reads.append([])
        return real_step(self, step)

    monkeypatch.setattr(Batches, "micro_batch", micro_batch)
    monkeypatch.setattr(Trainer, "train_step", counted_step)
    pretrain(tiny_config(*ramp, f"out_dir={tmp_path / 'a'}"))
    # step s of 4 reads 1 + int(2 * (s / 4) / 0.75) micro-batches: 1, 1, 2, then 3 from 3/4 of the steps
    assert [len(r) for r in reads] == [1, 1, 2, 3]
    assert [k for r in reads for k in r] == list(range(7))  # every micro-batch once, in order
    monkeypatch.setattr(Batches, "micro_batch", real_micro)

    def crash_at_3(self, step):  # step 3 of 6 would read 2 micro-batches: mid-ramp
        if step == 2:
            raise KeyboardInterrupt
        return real_step(self, step)

    monkeypatch.setattr(Trainer, "train_step", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_config(*ramp, "train.save_every=2", f"out_dir={tmp_path / 'b'}"))
    monkeypatch.setattr(Trainer, "train_step", real_step)
    pretrain(tiny_config(*ramp, "train.save_every=2", f"out_dir={tmp_path / 'b'}"), resume=True)
    a, b = train_losses(tmp_path / "a"), train_losses(tmp_path / "b")
    assert sorted(a) == sorted(b) == list(range(1, 5)) and [a[s] for s in a] == [b[s] for s in a]


def budget_worker(rank, world, port, cfg, out_dir):
    """A DDP worker on a fake clock that runs twice as fast on rank 1: only rank 0's time may count."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    lrs = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        fake_clock(monkeypatch, 12.0 * (1 + rank), lrs)
        result = pretrain(cfg)
    (out_dir / f"rank{rank}.json").write_text(json.dumps({"lrs": lrs, "step": result["step"]}))


def test_processes_share_rank_0s_clock(tiny_config, cache, tmp_path):
    cfg = tiny_config(*TIME_BUDGET, cache, "train.batch_size=4", "train.log_every=2", f"out_dir={tmp_path / 'run'}")
    ctx = mp.start_processes(budget_worker, args=(2, free_port(), cfg, tmp_path), nprocs=2, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + 120  # ranks that disagree would wait on each other forever
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the processes did not finish together")
    one, two = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    # rank 0's 12 s a step, broadcast every step until the first log (every 2 steps), then carried forward at
    # 12 s a step from each log; the log after step 6 finds the time spent
    assert one["step"] == two["step"] == 6
    assert one["lrs"] == two["lrs"] == pytest.approx([0.0, 0.0, 8e-4, 8e-4, 4e-4, 0.0], abs=1e-12)


def test_a_checkpoint_from_before_budgets_resumes(tiny_config, cache, tmp_path, monkeypatch):
    """Checkpoints written with a LambdaLR have its state under "scheduler" and no micro-batch count."""
    import xformer.train.checkpointer

    steps = [cache, "train.max_steps=4", "train.grad_accum=2", "train.save_every=2"]
    pretrain(tiny_config(*steps, f"out_dir={tmp_path / 'a'}"))
    real_save, real_step = xformer.train.checkpointer.save_checkpoint, Trainer.train_step
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    old_state = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0).state_dict()

    def save_old(run_dir, step, model, cfg, state, keep_last):
        state = {**{k: v for k, v in state.items() if k != "micro_batches"}, "scheduler": old_state}
        return real_save(run_dir, step, model, cfg, state, keep_last)

    def crash_at_3(self, step):
        if step == 2:
            raise KeyboardInterrupt
        return real_step(self, step)

    monkeypatch.setattr(xformer.train.checkpointer, "save_checkpoint", save_old)
    monkeypatch.setattr(Trainer, "train_step", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_config(*steps, f"out_dir={tmp_path / 'b'}"))
    state = torch.load(tmp_path / "b" / "checkpoints" / "step_0000002" / "train_state.pt", weights_only=True)
    assert "scheduler" in state and "micro_batches" not in state
    monkeypatch.setattr(Trainer, "train_step", real_step)
    pretrain(tiny_config(*steps, f"out_dir={tmp_path / 'b'}"), resume=True)
    a, b = train_losses(tmp_path / "a"), train_losses(tmp_path / "b")
    assert sorted(b) == list(range(1, 5)) and [a[s] for s in a] == [b[s] for s in a]
