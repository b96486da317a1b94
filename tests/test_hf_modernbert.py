"""HF ModernBERT interop: import and export parity (math and sdpa, local and global blocks), exact state
dict round trips, xformer.load of ModernBERT directories, and the one-line refusals of what cannot be
expressed (here, and by the classic BERT, ViT and CLIP exports)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import save_model

import xformer
from tests.helpers import randomize
from xformer.config import save_config
from xformer.data.configs import DataConfig
from xformer.models.bert import BertConfig
from xformer.models.clip import ClipConfig, ClipVisionConfig, TextConfig
from xformer.models.vit import ViTConfig
from xformer.errors import XformerError
from xformer.interop import hf_clip, hf_vit
from xformer.interop.hf_modernbert import (
    config_from_hf,
    config_to_hf,
    export_modernbert,
    load_hf_modernbert,
    state_dict_from_hf,
    state_dict_to_hf,
)
from xformer.models import BertForPreTraining, BertModel
from xformer.tasks import bert_pretraining
from xformer.tasks.bert_pretraining import BertPretrainingConfig

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]  # 100 tokens
T = 24  # longer than the local window (8: 4 positions either side), so local blocks differ from global ones

pytestmark = pytest.mark.usefixtures("offline")


def hf_config(attn: str = "eager", **changes) -> transformers.ModernBertConfig:
    """4 layers: global, local, local, global (global_attn_every_n_layers 3)."""
    return transformers.ModernBertConfig(
        vocab_size=len(VOCAB), hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=96,
        local_attention=8, max_position_embeddings=64, pad_token_id=0, cls_token_id=2, sep_token_id=3,
        bos_token_id=2, eos_token_id=3, attn_implementation=attn, **changes,
    )


def our_config(**changes) -> BertConfig:
    """The ModernBERT equivalent of :func:`hf_config` in our options."""
    values = dict(
        vocab_size=len(VOCAB), dim=64, depth=4, num_heads=4, mlp_ratio=1.5, max_position=64, dropout=0.0,
        attn_dropout=0.0, norm_eps=1e-5, norm_first=True, embed_norm=True, first_block_norm=False, final_norm=True,
        position="rotary", glu=True, bias=False, type_vocab_size=0, nsp=False, act="gelu", rope_theta=160000.0,
        local_rope_theta=10000.0, local_window=8, global_every=3, attn_backend="math",
    )
    return BertConfig(**{**values, **changes})


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """3 sequences of T positions with random amounts of right padding (one row unpadded)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.cat([torch.tensor([T]), torch.randint(3, T, (2,), generator=gen)])
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    return {"input_ids": torch.randint(5, len(VOCAB), (3, T), generator=gen) * mask, "attention_mask": mask}


def ours_from_hf(hf: transformers.PreTrainedModel, backend: str = "math") -> BertForPreTraining:
    cfg = config_from_hf(hf.config)
    cfg.attn_backend = backend
    model = BertForPreTraining(cfg)
    model.load_state_dict(state_dict_from_hf(hf.state_dict(), cfg))
    return model.eval()


def close(ours: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> None:
    """Equal within 1e-4 at the real (non-padded) positions."""
    torch.testing.assert_close(ours[mask.bool()], ref[mask.bool()], atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- import parity


@torch.no_grad()
@pytest.mark.parametrize("hf_attn", ["eager", "sdpa"])
@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_import_parity_with_hf(backend, hf_attn):
    hf = randomize(transformers.ModernBertForMaskedLM(hf_config(attn=hf_attn)))
    assert hf.config._attn_implementation == hf_attn
    assert hf.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    ours = ours_from_hf(hf, backend)
    assert ours.config.model_dump(exclude={"attn_backend"}) == our_config().model_dump(exclude={"attn_backend"})
    inputs = batch()
    out = ours(**inputs)
    close(out.mlm_logits, hf(**inputs).logits, inputs["attention_mask"])
    close(out.last_hidden_state, hf.model(**inputs).last_hidden_state, inputs["attention_mask"])

    # the window matters at this length: the same weights with every block global give other outputs
    everywhere = BertForPreTraining(ours.config.model_copy(update={"local_window": None})).eval()
    everywhere.load_state_dict(ours.state_dict())
    assert (everywhere(**inputs).mlm_logits - out.mlm_logits).abs().max() > 1e-2


@torch.no_grad()
def test_import_parity_with_biases_and_silu():
    flags = {f: True for f in ("attention_bias", "mlp_bias", "norm_bias", "classifier_bias")}
    hf = randomize(transformers.ModernBertForMaskedLM(
        hf_config(hidden_activation="silu", classifier_activation="silu", **flags)))
    ours = ours_from_hf(hf)
    assert ours.config.bias and ours.config.act == "silu"
    inputs = batch(1)
    close(ours(**inputs).mlm_logits, hf(**inputs).logits, inputs["attention_mask"])


@torch.no_grad()
def test_decoder_without_bias_imports_as_zero_bias():
    hf = randomize(transformers.ModernBertForMaskedLM(hf_config(decoder_bias=False)))
    ours = ours_from_hf(hf)
    assert not ours.mlm.decoder.bias.any()
    inputs = batch()
    close(ours(**inputs).mlm_logits, hf(**inputs).logits, inputs["attention_mask"])


@pytest.mark.parametrize("change, message", [
    ({"attention_bias": True}, "attention_bias=True, mlp_bias=False"),
    ({"classifier_activation": "silu"}, "classifier_activation"),
    ({"hidden_activation": "relu", "classifier_activation": "relu"}, "hidden_activation"),
    ({"layer_types": ["full_attention", "sliding_attention", "full_attention", "full_attention"]}, "layer_types"),
    ({"rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
                          "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}, "rope_type"),
])
def test_config_from_hf_refuses_what_we_cannot_express(change, message):
    with pytest.raises(XformerError, match=message) as err:
        config_from_hf(hf_config(**change))
    assert "\n" not in str(err.value)


def test_config_from_hf_reads_layer_patterns():
    assert config_from_hf(hf_config(layer_types=["full_attention"] * 4)).local_window is None
    cfg = config_from_hf(hf_config(global_attn_every_n_layers=2))
    assert (cfg.local_window, cfg.global_every) == (8, 2)
    with pytest.raises(XformerError, match="model_type 'modernbert'"):
        config_from_hf(transformers.BertConfig())


# ----------------------------------------------------------------------------- state dicts and export


def test_state_dict_round_trip_is_exact():
    cfg = our_config(bias=True)
    ours = randomize(BertForPreTraining(cfg))
    hf_state = state_dict_to_hf(ours.state_dict(), cfg)
    hf = transformers.ModernBertForMaskedLM(config_to_hf(cfg))
    hf.load_state_dict(hf_state)  # strict
    back, mine = state_dict_from_hf(hf_state, cfg), ours.state_dict()
    assert back.keys() == mine.keys()
    for key, tensor in mine.items():
        assert torch.equal(back[key], tensor), key


def make_tokenizer(folder: Path) -> transformers.PreTrainedTokenizerBase:
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return transformers.BertTokenizerFast(str(folder / "vocab.txt"))


@torch.no_grad()
@pytest.mark.parametrize("backend", ["math", "sdpa"])
@pytest.mark.parametrize("changes", [{}, {"bias": True, "act": "gelu_tanh", "global_every": 2}])
def test_export_round_trip(tmp_path, changes, backend):
    tok = make_tokenizer(tmp_path / "vocab")
    cfg = our_config(attn_backend=backend, **changes)
    ours = randomize(BertForPreTraining(cfg))

    out = export_modernbert(ours, tmp_path / "export", tokenizer=tok)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "vocab"]  # no temp dir left behind
    for attn in ("eager", "sdpa"):
        hf = transformers.ModernBertForMaskedLM.from_pretrained(out, attn_implementation=attn).eval()
        assert hf.decoder.weight.data_ptr() == hf.model.embeddings.tok_embeddings.weight.data_ptr()  # tied
        assert (hf.config.cls_token_id, hf.config.sep_token_id) == (2, 3)
        inputs = batch(2)
        got = ours(**inputs)
        close(got.mlm_logits, hf(**inputs).logits, inputs["attention_mask"])
        close(got.last_hidden_state, hf.model(**inputs).last_hidden_state, inputs["attention_mask"])

    back_cfg = config_from_hf(hf.config)
    assert back_cfg.model_dump(exclude={"attn_backend"}) == cfg.model_dump(exclude={"attn_backend"})
    back, mine = state_dict_from_hf(hf.state_dict(), back_cfg), ours.state_dict()
    assert back.keys() == mine.keys()
    for key, tensor in mine.items():
        assert torch.equal(back[key], tensor), key
    assert transformers.AutoTokenizer.from_pretrained(out)("w1 w2")["input_ids"] == [2, 6, 7, 3]

    with pytest.raises(XformerError, match="not empty"):
        export_modernbert(ours, out)


@pytest.mark.parametrize("change, key", [
    ({"position": "absolute"}, "model.position"),
    ({"norm_first": False, "first_block_norm": True, "final_norm": None, "embed_norm": None}, "model.norm_first"),
    ({"first_block_norm": True}, "model.first_block_norm"),
    ({"glu": False}, "model.glu"),
    ({"final_norm": False}, "model.final_norm"),
    ({"embed_norm": False}, "model.embed_norm"),
    ({"type_vocab_size": 2}, "model.type_vocab_size"),
    ({"nsp": True}, "model.nsp"),
    ({"bias": True, "qkv_bias": False}, "model.qkv_bias"),
])
def test_config_to_hf_refuses_what_modernbert_cannot_express(change, key):
    with pytest.raises(XformerError, match=key) as err:
        config_to_hf(our_config(**change))
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- loading


@torch.no_grad()
def test_load_model_and_masked_lm_dirs(tmp_path, caplog):
    base = randomize(transformers.ModernBertModel(hf_config()))
    base.save_pretrained(tmp_path / "base")
    for source in (tmp_path / "base", f"hf:{tmp_path / 'base'}"):
        model = xformer.load(source)
        assert type(model) is BertModel and not model.training and model.config.position == "rotary"
        inputs = batch()
        close(model(**inputs).last_hidden_state, base(**inputs).last_hidden_state, inputs["attention_mask"])
    with caplog.at_level(logging.WARNING):
        with_head = load_hf_modernbert(str(tmp_path / "base"), heads=True)
    assert type(with_head) is BertForPreTraining and "mlm.dense" in caplog.text  # a fresh head, logged

    mlm = randomize(transformers.ModernBertForMaskedLM(hf_config()))
    mlm.save_pretrained(tmp_path / "mlm")
    model = xformer.load(f"hf:{tmp_path / 'mlm'}", attn_backend="math")
    assert type(model) is BertForPreTraining
    inputs = batch(3)
    close(model(**inputs).mlm_logits, mlm(**inputs).logits, inputs["attention_mask"])
    assert type(load_hf_modernbert(str(tmp_path / "mlm"), heads=False)) is BertModel
    assert xformer.trained.loading.load_config(f"hf:{tmp_path / 'mlm'}").local_window == 8


@torch.no_grad()
def test_pretraining_export_chooses_modernbert_for_rotary_runs(tmp_path):
    cfg = BertPretrainingConfig(model=our_config(), data=DataConfig(max_seq_len=32, objective="mlm"))
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "step_0000010"
    ckpt.mkdir(parents=True)
    ours = randomize(BertForPreTraining(cfg.model))
    save_model(ours, str(ckpt / "model.safetensors"))
    save_config(cfg, ckpt / "config.yaml")
    save_config(cfg, run / "config.yaml")
    make_tokenizer(tmp_path / "vocab").save_pretrained(run / "tokenizer")

    assert bert_pretraining.export(run, tmp_path / "export") == "transformers.ModernBertForMaskedLM"
    hf = transformers.ModernBertForMaskedLM.from_pretrained(tmp_path / "export").eval()
    inputs = batch()
    close(ours.eval()(**inputs).mlm_logits, hf(**inputs).logits, inputs["attention_mask"])


# ----------------------------------------------------------------------------- classic families refuse modern options


@pytest.mark.parametrize("change, key", [
    ({"glu": True}, "model.glu"),
    ({"bias": False}, "model.bias"),
    ({"local_window": 8}, "model.local_window"),
    ({"final_norm": False}, "model.final_norm"),
    ({"first_block_norm": False}, "model.first_block_norm"),
])
def test_vit_export_refuses_modern_options(change, key):
    with pytest.raises(XformerError, match=key) as err:
        hf_vit.config_to_hf(ViTConfig(num_classes=3, **change))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("tower, change", [
    ("text", {"position": "rotary"}),
    ("text", {"glu": True, "act": "silu"}),
    ("vision", {"bias": False}),
])
def test_clip_export_refuses_modern_options(tower, change):
    towers = {"vision": ClipVisionConfig(), "text": TextConfig(dim=256, depth=4, num_heads=4, vocab_size=100)}
    cfg = ClipConfig(**{**towers, tower: towers[tower].model_copy(update=change)})
    with pytest.raises(XformerError, match=f"model.{tower}.{next(iter(change))}") as err:
        hf_clip.config_to_hf(cfg, eos_token_id=3)
    assert "\n" not in str(err.value)
