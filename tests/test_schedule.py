"""The schedule component: LR and micro-batches over a step budget and over a time budget, and the clock
(a fake one) that a time budget reads."""

import pytest
import torch

from xformer.config import TrainConfig
from xformer.distributed import DistInfo
from xformer.train.schedule import Clock, Schedule, budget_steps, lr_lambda, micro_batches


def optimizer_with_two_groups(lr: float = 1e-3) -> torch.optim.Optimizer:
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    return torch.optim.SGD([{"params": [a], "lr": lr}, {"params": [b], "lr": lr / 10}], lr=lr)


def test_over_a_step_budget_every_group_follows_the_step():
    cfg = TrainConfig(lr=1e-3, warmup_steps=2, grad_accum=4, batch_ramp=0.5)
    optimizer = optimizer_with_two_groups()
    schedule = Schedule(cfg, 10, optimizer)
    factor = lr_lambda(cfg, 10)
    for step in range(11):
        schedule.set(step, elapsed=1e9)  # the time is not read under a step budget
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3 * factor(step), 1e-4 * factor(step)])
        assert schedule.accum == micro_batches(cfg, step / 10) and schedule.lr == optimizer.param_groups[0]["lr"]
    assert [micro_batches(cfg, s / 10) for s in range(0, 10, 2)] == [1, 2, 3, 4, 4]
    assert not schedule.time_budget and not schedule.spent(9, 1e9) and schedule.spent(10, 0.0)


def test_over_a_time_budget_the_lr_follows_the_seconds():
    cfg = TrainConfig(lr=1e-3, budget="time", max_minutes=1, schedule="triangle", grad_accum=3, batch_ramp=0.5)
    optimizer = optimizer_with_two_groups()
    schedule = Schedule(cfg, None, optimizer)
    expected = {0: 0.0, 15: 0.5, 30: 1.0, 45: 0.5, 60: 0.0, 90: 0.0}  # up to the peak at 30 s, down by 60 s
    for seconds, factor in expected.items():
        schedule.set(step=7, elapsed=seconds)  # the step is not read under a time budget
        assert schedule.lr == pytest.approx(1e-3 * factor, abs=1e-15)
    schedule.set(0, elapsed=12)
    assert schedule.accum == 1 + int(2 * 0.2 / 0.5)
    assert schedule.time_budget and not schedule.spent(10**6, 59.9) and schedule.spent(0, 60.0)


def test_max_minutes_stops_a_step_budget_early():
    schedule = Schedule(TrainConfig(max_steps=100, max_minutes=0.5), 100, optimizer_with_two_groups())
    assert not schedule.out_of_time(29.0) and schedule.out_of_time(30.0)
    assert not Schedule(TrainConfig(), 100, optimizer_with_two_groups()).out_of_time(1e9)


def test_the_budget_in_steps():
    assert budget_steps(TrainConfig(max_steps=7, grad_accum=2), 10) == (7, 5)
    assert budget_steps(TrainConfig(epochs=1.5, grad_accum=2), 10) == (8, 5)  # round(1.5 x 5)
    assert budget_steps(TrainConfig(budget="time", max_minutes=1), 3) == (None, 3)
    assert budget_steps(TrainConfig(grad_accum=4), 2) == (1000, 1)  # at least one step an epoch


@pytest.fixture
def fake_now(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(Clock, "now", staticmethod(lambda: now[0]))
    return now


def test_one_process_reads_its_own_clock_from_the_saved_seconds(fake_now):
    clock = Clock(DistInfo(rank=0, world_size=1, device=torch.device("cpu")), step=5, elapsed_before=30.0)
    fake_now[0] += 12.0
    assert clock.local() == clock.at(6) == 42.0
    assert clock.sync(6) == 42.0 and clock.synced == (6, 42.0, 12.0)


def test_several_processes_carry_the_synced_time_forward_at_its_pace(fake_now):
    # no process group: the broadcast returns this process's value, as rank 0's
    clock = Clock(DistInfo(rank=0, world_size=2, device=torch.device("cpu")), step=0, elapsed_before=0.0)
    fake_now[0] += 10.0
    assert clock.at(1) == 10.0  # before the first sync: broadcast at every step
    fake_now[0] += 30.0
    assert clock.sync(4) == 40.0  # 10 s a step over 4 steps
    fake_now[0] += 1000.0  # between syncs the clock is not read
    assert clock.at(5) == 50.0 and clock.at(8) == 80.0
    assert clock.sync(8) == 1040.0 and clock.at(9) == pytest.approx(1040.0 + 250.0)
