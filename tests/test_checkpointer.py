"""The checkpointer component: full and sharded checkpoints behind one interface, and old checkpoints'
shims."""

import random

import numpy as np
import torch

from xformer.config import RunConfig, TrainConfig
from xformer.distributed import DistInfo
from xformer.train.checkpoint import rng_state, save_checkpoint
from xformer.train.checkpointer import Checkpointer, match_state_shapes, upgrade_state

ONE = DistInfo(rank=0, world_size=1, device=torch.device("cpu"))
CFG = RunConfig(task="bert_pretraining", train=TrainConfig(grad_accum=3, keep_last=2))


def trained(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A small model and its AdamW after one step, both different for each seed."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(5, 4)).square().sum().backward()
    optimizer.step()
    return model, optimizer


def assert_same(a: tuple, b: tuple) -> None:
    (model_a, opt_a), (model_b, opt_b) = a, b
    for x, y in zip(model_a.state_dict().values(), model_b.state_dict().values()):
        torch.testing.assert_close(x, y)
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(opt_a.state[pa][key], opt_b.state[pb][key])



def round_trip(run_dir, sharded: bool) -> None:
    saved = trained(0)
    writer = Checkpointer(run_dir, CFG, *saved, ONE, sharded=sharded)
    assert writer.load() is None  # nothing to resume yet
    torch.manual_seed(123)
    rng = rng_state()
    writer.save(7, {"micro_batches": 19, "elapsed": 4.5})
    torch.rand(3), np.random.rand(), random.random()  # the RNGs move on after the save
    fresh = trained(1)
    state = Checkpointer(run_dir, CFG, *fresh, ONE, sharded=False).load()
    assert state == {"step": 7, "elapsed": 4.5, "micro_batches": 19, "path": run_dir / "checkpoints" / "step_0000007"}
    assert (state["path"] / "dcp").is_dir() == sharded
    assert_same(saved, fresh)
    torch.testing.assert_close(torch.get_rng_state(), rng["torch"])


def test_a_full_checkpoint_round_trips(tmp_path):
    round_trip(tmp_path, sharded=False)


def test_a_sharded_checkpoint_round_trips(tmp_path, one_process_group):
    round_trip(tmp_path, sharded=True)


def test_a_checkpoint_from_before_the_batch_ramp_resumes(tmp_path):
    """No micro-batch count (grad_accum per step) and a LambdaLR's state under "scheduler"."""
    model, optimizer = trained(0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0).state_dict()
    old = {"step": 4, "optimizer": optimizer.state_dict(), "scheduler": scheduler, "rng": rng_state(), "elapsed": 2.0}
    save_checkpoint(tmp_path, 4, model, CFG, old, keep_last=1)
    fresh = trained(1)
    state = Checkpointer(tmp_path, CFG, *fresh, ONE, sharded=False).load()
    assert state["micro_batches"] == 12 and "scheduler" not in state
    assert_same((model, optimizer), fresh)
    assert upgrade_state({"step": 2, "elapsed": 0.0, "micro_batches": 5}, 3)["micro_batches"] == 5


def test_optimizer_moments_saved_for_a_0d_parameter_resume_into_its_1_element_shape():
    """A CLIP run saved while logit_scale was 0-d resumes now that it is a (1,) parameter."""
    old = torch.nn.Parameter(torch.tensor(2.0))
    saved = torch.optim.AdamW([old], lr=0.1)
    old.grad = torch.tensor(1.0)
    saved.step()
    new = torch.nn.Parameter(old.detach().reshape(1).clone())  # the weights load into the new shape
    optimizer = torch.optim.AdamW([new], lr=0.1)
    optimizer.load_state_dict(saved.state_dict())
    match_state_shapes(optimizer)
    assert optimizer.state[new]["exp_avg"].shape == (1,) and optimizer.state[new]["step"].shape == ()
    new.grad = torch.tensor([1.0])
    optimizer.step()  # fails with a 0-d moment: "output with shape [] doesn't match the broadcast shape [1]"
    old.grad = torch.tensor(1.0)
    saved.step()
    torch.testing.assert_close(new.detach(), old.detach().reshape(1))
