"""The modern encoder options of the shared layers: rotary positions, gated MLPs, no biases, local
attention and per-document attention, on every backend (the unpadded path through a per-sequence
reference kernel, since the unpadded kernels need a GPU)."""

import pytest
import torch

import xformer.layers.attention as attention
from xformer.config import EncoderConfig
from xformer.models.bert import BertConfig
from xformer.models.vit import ViTConfig
from xformer.errors import XformerError
from xformer.layers import Encoder
from xformer.layers.attention import AttnContext, math_attention, resolve_backend, varlen_unavailable_reason
from xformer.layers.mlp import MLP
from xformer.layers.rotary import apply_rotary, rotary_tables
from xformer.models.bert import BertForPreTraining

MODERN = dict(position="rotary", glu=True, bias=False, local_window=4, global_every=2, local_rope_theta=100.0,
              norm_first=True, rope_theta=1000.0)


def encoder(backend, **kw):
    torch.manual_seed(0)
    cfg = EncoderConfig(dim=32, depth=4, num_heads=4, dropout=0.0, attn_dropout=0.0, attn_backend=backend, **kw)
    return Encoder(cfg).eval()


def reference_unpadded(q, k, v, ctx, dropout_p):
    """The math kernel run on each sequence of the unpadded layout alone, with its window and causality."""
    out = torch.empty_like(q)
    cu = ctx.cu_seqlens.tolist()
    for a, b in zip(cu[:-1], cu[1:]):
        i = torch.arange(b - a)
        mask = torch.ones(b - a, b - a, dtype=torch.bool)
        if ctx.causal:
            mask &= i[:, None] >= i[None, :]
        if ctx.window is not None:
            mask &= (i[:, None] - i[None, :]).abs() <= ctx.window
        out[a:b] = math_attention(q[a:b][None], k[a:b][None], v[a:b][None], AttnContext(ctx.kernel, mask=mask), 0.0)[0]
    return out


@pytest.fixture
def unpadded(monkeypatch):
    """An encoder factory whose models run the unpadded path (with the reference kernel)."""
    monkeypatch.setitem(attention.KERNELS, "varlen", reference_unpadded)

    def make(**kw):
        enc = encoder("math", **kw)
        enc.backend = "varlen"
        return enc
    return make


def batch():
    torch.manual_seed(1)
    x = torch.randn(3, 12, 32)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    return x, mask


@pytest.mark.parametrize("causal", [False, True])
def test_modern_options_agree_across_math_sdpa_and_unpadded(causal, unpadded):
    x, mask = batch()
    ref, fast, unpad = encoder("math", **MODERN), encoder("sdpa", **MODERN), unpadded(**MODERN)
    real = mask.bool()
    a = ref(x, mask, causal=causal)
    for other in (fast, unpad):
        torch.testing.assert_close(a[real], other(x, mask, causal=causal)[real], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, encoder("math", **{**MODERN, "local_window": None})(x, mask, causal=causal))


@pytest.mark.parametrize("backend", ["math", "sdpa", "unpadded"])
def test_documents_packed_in_a_row_do_not_see_each_other(backend, unpadded):
    enc = unpadded(**MODERN) if backend == "unpadded" else encoder(backend, **MODERN)
    torch.manual_seed(2)
    doc_a, doc_b = torch.randn(1, 5, 32), torch.randn(1, 7, 32)
    row = torch.cat([doc_a, doc_b], dim=1)  # (1, 12, D)
    segments = torch.tensor([[0] * 5 + [1] * 7])
    packed = enc(row, segments=segments)
    torch.testing.assert_close(packed[:, :5], enc(doc_a), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[:, 5:], enc(doc_b), atol=1e-5, rtol=1e-5)  # positions restart at 0
    assert not torch.allclose(enc(row)[:, 5:], packed[:, 5:], atol=1e-3)


def test_local_blocks_see_only_their_window():
    enc = encoder("sdpa", **MODERN)
    enc.is_global = [False] * 4  # four local blocks: a token sees 4 * (local_window // 2) = 8 positions away
    x = torch.randn(1, 12, 32)
    far, near = x.clone(), x.clone()
    far[:, 9:] += torch.randn(1, 3, 32)  # not a constant shift, which every LayerNorm would remove
    near[:, 8] += torch.randn(1, 32)
    torch.testing.assert_close(enc(far)[:, 0], enc(x)[:, 0])
    assert not torch.allclose(enc(near)[:, 0], enc(x)[:, 0])


def test_rotary_scores_depend_on_relative_positions_only():
    torch.manual_seed(3)
    q, k = torch.randn(1, 1, 2, 16), torch.randn(1, 1, 2, 16)  # (B, T=1, H, hd)

    def score(m, n):
        qm, _ = apply_rotary(q, q, *rotary_tables(torch.tensor([m]), 16, 10000.0))
        _, kn = apply_rotary(k, k, *rotary_tables(torch.tensor([n]), 16, 10000.0))
        return (qm * kn).sum(-1)

    torch.testing.assert_close(score(3, 1), score(10, 8))
    assert not torch.allclose(score(3, 1), score(3, 2))


@pytest.mark.parametrize("act", ["gelu", "silu"])
def test_gated_mlp_shapes_and_formula(act):
    cfg = EncoderConfig(dim=16, mlp_ratio=1.5, glu=True, act=act, bias=False)
    mlp = MLP(cfg)
    assert mlp.fc1.weight.shape == (48, 16) and mlp.fc2.weight.shape == (16, 24)
    assert mlp.fc1.bias is None and mlp.fc2.bias is None
    x = torch.randn(2, 5, 16)
    h, gate = (x @ mlp.fc1.weight.T).chunk(2, dim=-1)
    expected = (torch.nn.functional.gelu(h) if act == "gelu" else torch.nn.functional.silu(h)) * gate @ mlp.fc2.weight.T
    torch.testing.assert_close(mlp(x), expected)
    assert mlp(x).shape == (2, 5, 16)


def test_modern_bert_has_no_position_table_biases_or_pooler():
    cfg = BertConfig(vocab_size=50, dim=32, depth=2, num_heads=4, max_position=16, type_vocab_size=0, nsp=False,
                     embed_norm=True, first_block_norm=False, **{**MODERN, "local_window": None})
    model = BertForPreTraining(cfg)
    names = dict(model.named_parameters())
    assert model.bert.embeddings.position is None and model.bert.pooler is None and model.nsp is None
    assert [n for n in names if n.endswith(".bias")] == ["mlm.decoder.bias"]
    assert isinstance(model.bert.encoder.blocks[0].norm1, torch.nn.Identity)
    assert isinstance(model.bert.encoder.blocks[1].norm1, torch.nn.LayerNorm)
    out = model(torch.randint(1, 50, (2, 16)))
    assert out.mlm_logits.shape == (2, 16, 50) and out.nsp_logits is None
    with pytest.raises(ValueError, match="exceeds max_position 16"):
        model(torch.randint(1, 50, (2, 17)))


def test_varlen_is_refused_on_cpu_with_a_reason_and_auto_falls_back():
    reason = varlen_unavailable_reason(torch.device("cpu"), torch.bfloat16)
    assert "needs a CUDA GPU" in reason and "\n" not in reason
    assert "attention dropout" in varlen_unavailable_reason(torch.device("cpu"), torch.bfloat16, attn_dropout=0.1)
    with pytest.raises(XformerError, match="attention backend 'varlen' cannot run: .*CUDA"):
        resolve_backend("varlen", torch.device("cpu"), torch.bfloat16)
    assert resolve_backend("auto", torch.device("cpu"), torch.bfloat16) == "sdpa"


def test_options_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="first_block_norm=false applies to pre-LN"):
        EncoderConfig(first_block_norm=False, norm_first=False)
    with pytest.raises(ValueError, match="a ViT keeps learned patch positions"):
        ViTConfig(position="rotary")


MODERN_RECIPE = ["model.position=rotary", "model.glu=true", "model.bias=false", "model.norm_first=true",
                 "model.embed_norm=true", "model.first_block_norm=false", "model.type_vocab_size=0",
                 "model.dropout=0", "model.attn_dropout=0", "model.local_window=16", "model.depth=3",
                 "data.objective=mlm", "data.document_mask=true", "data.mlm_prob=0.3", "data.num_workers=1"]


def test_packed_mlm_only_training_of_a_modern_encoder_learns(tiny_config):
    from xformer.train.metrics import read_metrics
    from xformer.tasks import run

    cfg = tiny_config(*MODERN_RECIPE, "train.max_steps=40", "train.lr=3e-3")
    run(cfg)
    losses = [r["loss"] for r in read_metrics(f"{cfg.out_dir}/metrics.jsonl") if r.get("split") == "train"]
    assert len(losses) == 40 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5


def test_document_numbers_follow_the_separators_of_packed_rows():
    from xformer.tasks.bert_pretraining import BertPretrainingTask

    ids = torch.tensor([[2, 7, 8, 3, 9, 3, 5, 6]])  # [CLS]=2 a b [SEP]=3 c [SEP] d e
    task = BertPretrainingTask(None, None, lambda ids, mask, gen, rows: (ids, torch.full_like(ids, -100)), sep_id=3)
    out = task.prepare({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, torch.Generator(), train=True)
    assert out["segments"].tolist() == [[0, 0, 0, 0, 1, 1, 2, 2]]


def test_document_mask_needs_packed_rows(tiny_config):
    with pytest.raises(XformerError, match="data.document_mask applies to packed rows"):
        tiny_config("data.document_mask=true")


def test_a_text_tower_takes_a_modern_bert_whole_or_refuses_what_it_would_drop():
    from xformer.models.clip import TextConfig
    from xformer.trained.init import load_weights, merge_config
    from xformer.models.clip import TextTransformer

    arch = dict(vocab_size=50, dim=32, depth=2, num_heads=4, max_position=16, type_vocab_size=0,
                **{**MODERN, "local_window": None})
    bert = BertForPreTraining(BertConfig(nsp=False, embed_norm=True, first_block_norm=False, **arch)).eval()
    tower_cfg = merge_config(TextConfig(causal=False, pool="cls"), bert.config)
    assert tower_cfg.embed_norm and tower_cfg.position == "rotary" and not tower_cfg.first_block_norm
    tower = TextTransformer(tower_cfg).eval()
    load_weights(tower, bert, "model.text.init")
    ids = torch.randint(1, 50, (2, 16))
    torch.testing.assert_close(tower(ids), bert.bert(ids).last_hidden_state[:, 0])
    without_norm = TextTransformer(tower_cfg.model_copy(update={"embed_norm": False}))
    with pytest.raises(XformerError, match="has no place for embeddings.norm.weight"):
        load_weights(without_norm, bert, "model.text.init")
