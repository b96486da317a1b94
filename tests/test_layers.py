import pytest
import torch

from xformer.config import EncoderConfig
from xformer.errors import XformerError
from xformer.layers import Encoder, configure_attention
from xformer.layers.attention import flash_unavailable_reason, resolve_backend
from xformer.layers.padding import pad, unpad


def encoder(backend, **kw):
    torch.manual_seed(0)
    cfg = EncoderConfig(dim=32, depth=2, num_heads=4, dropout=0.0, attn_dropout=0.0, attn_backend=backend, **kw)
    return Encoder(cfg).eval()


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("causal, padded", [(False, True), (True, True), (True, False)])
def test_sdpa_matches_math_reference(norm_first, causal, padded):
    ref, fast = encoder("math", norm_first=norm_first), encoder("sdpa", norm_first=norm_first)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(3, 10, 32)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    if not padded:
        mask = None
    a, b = ref(x, mask, causal=causal), fast(x, mask, causal=causal)
    real = torch.ones(3, 10, dtype=torch.bool) if mask is None else mask.bool()
    torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5)
    assert (ref.backend, fast.backend) == ("math", "sdpa")


def test_causal_attention_ignores_later_tokens():
    enc = encoder("sdpa")
    x = torch.randn(1, 8, 32)
    changed = x.clone()
    changed[:, 5:] = torch.randn(1, 3, 32)
    torch.testing.assert_close(enc(x, causal=True)[:, :5], enc(changed, causal=True)[:, :5], atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_real_tokens():
    enc = encoder("sdpa")
    x = torch.randn(1, 6, 32)
    alone = enc(x)
    padded = enc(torch.cat([x, torch.randn(1, 4, 32)], dim=1), torch.tensor([[1] * 6 + [0] * 4]))
    torch.testing.assert_close(alone, padded[:, :6], atol=1e-5, rtol=1e-5)


def test_unpad_pad_round_trip():
    x = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    tokens, indices, cu, max_len = unpad(x, mask)
    assert tokens.shape == (8, 3) and cu.tolist() == [0, 3, 8] and max_len == 5
    back = pad(tokens, indices, 2, 5)
    torch.testing.assert_close(back[mask.bool()], x[mask.bool()])
    assert back[0, 3:].abs().sum() == 0


def test_backend_resolution_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_backend("math", cpu, torch.float32) == "math"
    assert resolve_backend("sdpa", cpu, torch.bfloat16) == "sdpa"
    assert resolve_backend("auto", cpu, torch.float32) == "sdpa"
    assert resolve_backend("auto", cpu, torch.bfloat16) == "sdpa"
    with pytest.raises(XformerError, match="'flash' cannot run: .*(not installed|needs a CUDA GPU)"):
        resolve_backend("flash", cpu, torch.bfloat16)
    with pytest.raises(XformerError, match="unknown attention backend.*'xla'.*auto, math, sdpa, flash"):
        resolve_backend("xla", cpu, torch.float32)


def test_flash_reason_names_device_and_dtype(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "flash_attn" else find_spec(name))
    assert "needs a CUDA GPU" in flash_unavailable_reason(torch.device("cpu"), torch.bfloat16)
    if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8:
        with pytest.raises(XformerError, match="fp16/bf16 activations: set train.precision=bf16"):
            resolve_backend("flash", torch.device("cuda"), torch.float32)
    else:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        assert flash_unavailable_reason(torch.device("cuda"), torch.bfloat16) == "no CUDA GPU is visible here"


def test_unknown_backend_fails_at_construction():
    fields = EncoderConfig(dim=32, depth=1, num_heads=4).model_dump()
    cfg = EncoderConfig.model_construct(**{**fields, "attn_backend": "fast"})  # unvalidated, as code may build it
    with pytest.raises(XformerError, match="model.attn_backend='fast'"):
        Encoder(cfg)


def test_explicit_flash_builds_on_cpu_and_fails_only_when_resolved():
    enc = encoder("flash")  # construction no longer needs a GPU
    assert enc.backend is None
    if flash_unavailable_reason(torch.device("cpu"), torch.float32) is not None:
        with pytest.raises(XformerError, match="'flash' cannot run"):
            enc(torch.randn(1, 4, 32))


def test_configure_attention_sets_every_encoder():
    model = torch.nn.ModuleDict({"vision": encoder("auto"), "text": encoder("math")})
    configure_attention(model, torch.device("cpu"), torch.float32)
    assert (model["vision"].backend, model["text"].backend) == ("sdpa", "math")


def test_unconfigured_encoder_resolves_on_first_forward_once(monkeypatch):
    import xformer.layers.block as block

    calls = []
    monkeypatch.setattr(block, "resolve_backend", lambda *a: calls.append(a) or resolve_backend(*a))
    enc = encoder("auto")
    assert enc.backend is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        enc(torch.randn(2, 4, 32))
    enc(torch.randn(2, 4, 32))
    assert enc.backend == "sdpa"
    assert calls == [("auto", torch.device("cpu"), torch.bfloat16, 0.0)]


@pytest.mark.skipif(flash_unavailable_reason() is not None, reason=str(flash_unavailable_reason()))
def test_flash_matches_math_reference_on_gpu():
    ref, fast = encoder("math").cuda(), encoder("flash").cuda()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(3, 10, 32, device="cuda")
    mask = torch.ones(3, 10, dtype=torch.long, device="cuda")
    mask[1, 4:] = 0
    with torch.autocast("cuda", dtype=torch.bfloat16):
        a, b = ref(x, mask), fast(x, mask)
    real = mask.bool()
    torch.testing.assert_close(a[real].float(), b[real].float(), atol=2e-2, rtol=2e-2)


def test_activation_checkpointing_gives_the_same_gradients():
    from xformer.models.bert import BertConfig
    from xformer.layers import set_activation_checkpointing
    from xformer.models import BertForPreTraining

    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(vocab_size=50, dim=32, depth=3, num_heads=4, dropout=0.1,
                                          attn_dropout=0.1, attn_backend="math")).train()
    ids = torch.randint(5, 50, (4, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[0, 8:] = 0

    def grads(checkpointing: bool) -> dict:
        set_activation_checkpointing(model, checkpointing)
        model.zero_grad()
        torch.manual_seed(2)  # the same dropout masks in both runs
        out = model(ids, mask)
        (out.mlm_logits.square().mean() + out.nsp_logits.square().mean()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, recomputed = grads(False), grads(True)
    for name, g in plain.items():
        torch.testing.assert_close(recomputed[name], g, atol=1e-6, rtol=1e-5, msg=name)
