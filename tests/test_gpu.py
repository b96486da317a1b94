"""GPU-only: every attention backend in bf16 against the math reference, and BERT, ViT and CLIP in bf16
against HF transformers. Skipped without CUDA; ``pytest -m gpu`` (or ``bash bench/gpu_suite.sh``) runs them.

bf16 comparisons use the relative error of a whole tensor, ||got - ref|| / ||ref||, against an fp32
reference: bf16 keeps 8 bits of mantissa (a relative step of 2^-8 = 0.4%), and the error of a few
layers stays near 1%; 2e-2 on outputs and 5e-2 on gradients leave room for that and catch a wrong
mask, a missing scale or a transposed head (errors of order 1).
"""

from __future__ import annotations

import pytest
import torch
import transformers

from tests.helpers import randomize
from xformer.models.bert import BertConfig
from xformer.layers import configure_attention
from xformer.layers.attention import flash_unavailable_reason
from xformer.models import BertModel

try:  # the torch varlen_attn backend (issue 14); absent from older trees
    from xformer.layers.attention import varlen_unavailable_reason
except ImportError:
    def varlen_unavailable_reason(device=None, dtype=None, attn_dropout=0.0):
        return "this xformer has no 'varlen' attention backend"

CUDA = torch.cuda.is_available()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU"),
    pytest.mark.usefixtures("offline"),
]
OUT_TOL, GRAD_TOL = 2e-2, 5e-2


def unavailable(backend: str) -> str | None:
    """Why ``backend`` cannot run here in bf16 (None: it can); math and sdpa always run."""
    if backend == "flash":
        return flash_unavailable_reason("cuda", torch.bfloat16)
    if backend == "varlen":
        return varlen_unavailable_reason("cuda", torch.bfloat16)
    return None


def skip_unless_runs(backend: str) -> None:
    if (reason := unavailable(backend)) is not None:
        pytest.skip(f"{backend}: {reason}")


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().float(), ref.detach().float()
    return float((got - ref).norm() / ref.norm().clamp_min(1e-12))


def assert_rel(got: torch.Tensor, ref: torch.Tensor, tol: float, what: str) -> None:
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    err = rel_err(got, ref)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol}"


def lengths_mask(lengths: list[int], total: int) -> torch.Tensor:
    return (torch.arange(total)[None] < torch.tensor(lengths)[:, None]).long().cuda()  # (B, T)


# ----------------------------------------------------------------------------- backends vs math


def bert(backend: str) -> BertModel:
    cfg = BertConfig(vocab_size=120, dim=64, depth=2, num_heads=4, dropout=0.0, attn_dropout=0.0,
                     attn_backend=backend, max_position=64)
    torch.manual_seed(0)
    return BertModel(cfg).cuda().train()


def forward_backward(model: BertModel, ids: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, bf16: bool):
    """Hidden states of the real tokens and every parameter's gradient of a fixed projection of them."""
    configure_attention(model, torch.device("cuda"), torch.bfloat16 if bf16 else torch.float32)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        hidden = model(ids, mask).last_hidden_state  # (B, T, D)
    real = hidden[mask.bool()].float()  # (N, D): padding positions differ by design between layouts
    (real * weight[: real.size(0)]).sum().backward()
    return real.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
@pytest.mark.parametrize("backend", ["sdpa", "flash", "varlen"])
def test_backend_matches_math_in_bf16_forward_and_backward(backend, padded):
    skip_unless_runs(backend)
    gen = torch.Generator().manual_seed(1)
    B, T = 6, 40
    lengths = torch.randint(1, T + 1, (B,), generator=gen).tolist() if padded else [T] * B
    lengths[0] = T  # the longest row is full, as in a real batch
    mask = lengths_mask(lengths, T)
    ids = (torch.randint(5, 120, (B, T), generator=gen).cuda() * mask)
    weight = torch.randn(B * T, 64, generator=gen).cuda()

    ref_out, ref_grads = forward_backward(bert("math"), ids, mask, weight, bf16=False)  # fp32 reference
    half_out, half_grads = forward_backward(bert("math"), ids, mask, weight, bf16=True)  # bf16 noise floor
    out, grads = forward_backward(bert(backend), ids, mask, weight, bf16=True)

    assert_rel(out, ref_out, OUT_TOL, f"{backend} hidden states")
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        # within the tolerance, or no worse than twice what bf16 costs the math path itself
        tol = max(GRAD_TOL, 2 * rel_err(half_grads[name], ref_grads[name]))
        assert_rel(g, ref_grads[name], tol, f"{backend} grad {name}")


@pytest.mark.parametrize("backend", ["sdpa", "flash", "varlen"])
def test_causal_padded_encoder_matches_math_in_bf16(backend):
    """The causal path (the CLIP text tower) with padding, on the encoder alone."""
    from xformer.layers import Encoder

    skip_unless_runs(backend)
    cfg = dict(dim=64, depth=2, num_heads=4, dropout=0.0, attn_dropout=0.0, vocab_size=10, norm_first=True)
    torch.manual_seed(0)
    ref = Encoder(BertConfig(attn_backend="math", **cfg)).cuda()
    fast = Encoder(BertConfig(attn_backend=backend, **cfg)).cuda()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(4, 33, 64, generator=torch.Generator().manual_seed(2)).cuda()
    mask = lengths_mask([33, 20, 7, 1], 33)
    want = ref(x, mask, causal=True)  # fp32
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = fast(x, mask, causal=True)
    real = mask.bool()
    assert_rel(got[real], want[real], OUT_TOL, f"{backend} causal")


def test_auto_picks_an_unpadded_kernel_in_bf16_when_one_runs():
    from xformer.layers.attention import resolve_backend

    expected = "flash" if unavailable("flash") is None else "varlen" if unavailable("varlen") is None else "sdpa"
    assert resolve_backend("auto", "cuda", torch.bfloat16) == expected
    assert resolve_backend("auto", "cuda", torch.float32) == "sdpa"


# ----------------------------------------------------------------------------- HF parity in bf16


def run_bf16(model: torch.nn.Module, backend: str | None, *args, **kwargs):
    model = model.cuda().eval()
    if backend is not None:
        configure_attention(model, torch.device("cuda"), torch.bfloat16)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        return model(*args, **kwargs)


@pytest.mark.parametrize("backend", ["sdpa", "flash", "varlen", "auto"])
def test_bert_matches_hf_in_bf16(backend):
    from tests.test_hf_bert import batch, hf_config, ours_from_hf

    skip_unless_runs(backend)
    config = hf_config(attn="sdpa")
    config.attention_probs_dropout_prob = 0.0  # varlen has no attention dropout (none runs in eval mode anyway)
    hf = randomize(transformers.BertForPreTraining(config)).cuda()
    inputs = {k: v.cuda() for k, v in batch().items()}
    with torch.no_grad():
        ref = hf(**inputs)  # fp32 reference
    out = run_bf16(ours_from_hf(hf, backend), backend, **inputs)
    real = inputs["attention_mask"].bool()
    assert_rel(out.mlm_logits[real], ref.prediction_logits[real], OUT_TOL, "MLM logits")
    assert_rel(out.nsp_logits, ref.seq_relationship_logits, OUT_TOL, "NSP logits")


@pytest.mark.parametrize("backend", ["sdpa", "varlen"])
def test_vit_matches_hf_in_bf16(backend):
    from tests.test_vit import hf_vit, images, ours_from_hf

    skip_unless_runs(backend)
    hf = hf_vit()
    ours = ours_from_hf(hf, backend)
    x = images(batch=8).cuda()
    with torch.no_grad():
        ref = hf.cuda()(pixel_values=x).logits  # fp32 reference
    assert_rel(run_bf16(ours, backend, x).logits, ref, OUT_TOL, "ViT logits")


@pytest.mark.parametrize("backend", ["sdpa", "varlen"])
def test_clip_matches_hf_in_bf16(tmp_path, backend):
    """Both towers: the text tower causal and padded, pooled at the end-of-text token."""
    from tests.test_hf_clip import VOCAB, batch, hf_config
    from xformer.interop.hf_clip import load_hf_clip

    skip_unless_runs(backend)
    hf = randomize(transformers.CLIPModel(hf_config(eos_token_id=98)))
    hf.save_pretrained(tmp_path / "hf")
    ours = load_hf_clip(str(tmp_path / "hf"), attn_backend=backend)
    inputs = {k: v.cuda() for k, v in batch(eos=VOCAB - 1).items()}
    with torch.no_grad():
        ref = hf.cuda()(**inputs)  # fp32 reference
    got = run_bf16(ours, backend, **inputs)
    assert_rel(got.image_embeds, ref.image_embeds, OUT_TOL, "image embeddings")
    assert_rel(got.text_embeds, ref.text_embeds, OUT_TOL, "text embeddings")
    assert_rel(got.logits_per_image, ref.logits_per_image, OUT_TOL, "logits per image")
