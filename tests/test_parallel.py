"""The parallel component: the functions that make a model ready to train (attention backend, activation
checkpointing, compilation, DDP, FSDP), on one process."""


import pytest
import torch
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from xformer.config import EncoderConfig, TrainConfig
from xformer.distributed import DistInfo
from xformer.errors import XformerError
from xformer.layers import Encoder
from xformer.train.parallel import (
    autocast_for,
    clip_gradients,
    gradient_sync,
    parallelize,
    replicate,
    shard_model,
    uses_bf16,
)

CPU = torch.device("cpu")
ONE = DistInfo(rank=0, world_size=1, device=CPU)


def encoder(**kw) -> torch.nn.Module:
    return Encoder(EncoderConfig(dim=8, depth=2, num_heads=2, dropout=0.0, attn_dropout=0.0, **kw))



def test_precision_decides_the_autocast():
    assert uses_bf16(TrainConfig(precision="bf16"), CPU) and not uses_bf16(TrainConfig(precision="auto"), CPU)
    assert uses_bf16(TrainConfig(precision="auto"), torch.device("cuda"))
    with autocast_for(TrainConfig(precision="bf16"), CPU)():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with autocast_for(TrainConfig(precision="fp32"), CPU)():
        assert not torch.is_autocast_enabled("cpu")


def test_one_process_trains_the_model_itself_configured():
    model = encoder(attn_backend="sdpa")
    assert parallelize(model, TrainConfig(activation_checkpointing=True), ONE) is model
    assert model.backend == "sdpa" and model.checkpointing
    with pytest.raises(XformerError, match="flash"):  # an impossible backend is refused up front
        parallelize(encoder(attn_backend="flash"), TrainConfig(), ONE)


def test_compilation_is_regional_where_there_are_blocks():
    model = encoder()
    assert parallelize(model, TrainConfig(compile=True), ONE) is model
    assert all(block._compiled_call_impl is not None for block in model.blocks)
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    whole = parallelize(cnn, TrainConfig(compile=True), ONE)
    assert whole is not cnn and whole._orig_mod is cnn


def test_ddp_skips_the_gradient_reduction_until_the_last_micro_step(one_process_group):
    model = torch.nn.Linear(3, 2)
    wrapped = replicate(model, ONE)
    assert isinstance(wrapped, DistributedDataParallel) and wrapped.module is model
    with gradient_sync(model, wrapped, sync=False, sharded=False):
        assert not wrapped.require_backward_grad_sync
    with gradient_sync(model, wrapped, sync=True, sharded=False):
        assert wrapped.require_backward_grad_sync
    with gradient_sync(model, model, sync=False, sharded=False):  # one process: nothing to skip
        pass


def test_fsdp_shards_every_block_and_the_norm_covers_all_shards(one_process_group):
    model = encoder()
    x = torch.randn(2, 5, 8)
    reference = encoder()
    reference.load_state_dict(model.state_dict())
    shard_model(model, list(model.blocks), ONE, bf16=False, reshard_after_forward=True)
    assert all(isinstance(p, DTensor) for p in model.parameters())
    with gradient_sync(model, model, sync=True, sharded=True):
        model(x).square().sum().backward()
    reference(x).square().sum().backward()
    norm, expected = clip_gradients(model, 0.5), clip_gradients(reference, 0.5)
    assert not isinstance(norm, DTensor)
    torch.testing.assert_close(norm, expected)
    clipped = torch.linalg.vector_norm(torch.stack([p.grad.full_tensor().norm() for p in model.parameters()]))
    torch.testing.assert_close(clipped, torch.tensor(0.5), rtol=1e-4, atol=1e-4)
