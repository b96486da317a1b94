import pytest
import torch

from xformer.distributed import pick_device
from xformer.errors import XformerError


@pytest.fixture
def two_gpus(monkeypatch):
    """Pretend this machine has two CUDA GPUs (device objects only; nothing runs on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "CUDA", "", "cuda:-1", "meta", "xla"])
def test_unknown_device_strings_are_errors(name):
    with pytest.raises(XformerError, match=f"train.device={name}: not a device; use one of auto, cpu, cuda, cuda:N, mps"):
        pick_device(name)


def test_cpu_and_auto_without_gpu(no_gpu):
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_gpu_is_an_error(no_gpu, name):
    with pytest.raises(XformerError, match=f"train.device={name}: no CUDA GPU is visible here; use train.device=cpu or auto"):
        pick_device(name)


def test_mps_without_apple_gpu_is_an_error(no_gpu):
    with pytest.raises(XformerError, match="train.device=mps: no Apple GPU"):
        pick_device("mps")


def test_cuda_forms_with_gpus(two_gpus, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert pick_device("auto") == torch.device("cuda", 0)
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert pick_device("cuda") == torch.device("cuda", 1)


def test_cuda_index_beyond_device_count(two_gpus, monkeypatch):
    with pytest.raises(XformerError, match=r"train.device=cuda:2: only 2 CUDA GPU\(s\) are visible here \(cuda:0 to cuda:1\)"):
        pick_device("cuda:2")
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(XformerError, match="train.device=cuda: LOCAL_RANK=3 but only 2 CUDA GPU"):
        pick_device("cuda")
