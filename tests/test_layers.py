import pytest
import torch

from xformer.config import EncoderConfig
from xformer.errors import XformerError
from xformer.layers import Encoder
from xformer.layers.attention import flash_unavailable_reason, resolve_backend
from xformer.layers.padding import pad, unpad


def encoder(backend, **kw):
    torch.manual_seed(0)
    cfg = EncoderConfig(dim=32, depth=2, num_heads=4, dropout=0.0, attn_dropout=0.0, attn_backend=backend, **kw)
    return Encoder(cfg).eval()


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_matches_math_reference(norm_first, causal):
    ref, fast = encoder("math", norm_first=norm_first), encoder("sdpa", norm_first=norm_first)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(3, 10, 32)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    a, b = ref(x, mask, causal=causal), fast(x, mask, causal=causal)
    real = mask.bool()
    torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5)


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


def test_backend_resolution_explains_failures():
    assert resolve_backend("math") == "math"
    assert resolve_backend("auto") in ("sdpa", "flash")
    reason = flash_unavailable_reason()
    if reason is not None:
        with pytest.raises(XformerError, match="'flash' cannot run: " + reason.split(" (")[0]):
            resolve_backend("flash")


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
