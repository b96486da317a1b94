"""CLIP: parity with HF transformers' CLIPModel, export round trip, and one-line errors."""

from __future__ import annotations

import math

import pytest
import torch
import transformers

import xformer
from tests.helpers import randomize
from xformer.models.clip import ClipConfig, ClipVisionConfig, TextConfig
from xformer.errors import XformerError
from xformer.interop.hf_clip import (
    config_from_hf,
    config_to_hf,
    export_clip,
    load_hf_clip,
)
from xformer.models import CLIPModel

VOCAB = 99
PAD = 1


pytestmark = pytest.mark.usefixtures("offline")


def hf_config(eos_token_id: int = 98, **text) -> transformers.CLIPConfig:
    return transformers.CLIPConfig(
        text_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37,
                     "vocab_size": VOCAB, "max_position_embeddings": 16, "hidden_act": "quick_gelu",
                     "pad_token_id": PAD, "bos_token_id": None, "eos_token_id": eos_token_id, **text},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "intermediate_size": 64, "hidden_act": "quick_gelu"},
        projection_dim=24,
    )


def batch(eos: int, lengths=(5, 9, 12, 3), total: int = 14, seed: int = 0) -> dict[str, torch.Tensor]:
    """Sequences of different lengths ending in ``eos``, padded after it; 2 images fewer than texts."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), total), PAD)
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, : n - 1] = torch.randint(4, VOCAB - 1, (n - 1,), generator=gen)  # no eos id (2, 3, 98) early
        ids[row, n - 1] = eos
        mask[row, :n] = 1
    pixels = torch.randn(len(lengths) - 2, 3, 32, 32, generator=gen)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


def assert_same_outputs(ours: CLIPModel, hf: transformers.CLIPModel, inputs: dict) -> None:
    with torch.no_grad():
        ref, got = hf(**inputs), ours(**inputs)
    torch.testing.assert_close(got.image_embeds, ref.image_embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.text_embeds, ref.text_embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.logits_per_image, ref.logits_per_image, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.logits_per_text, ref.logits_per_text, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- HF parity


@pytest.mark.parametrize("backend", ["math", "sdpa"])
@pytest.mark.parametrize("eos", [98, 2], ids=["eos_id", "legacy_argmax"])
def test_logits_match_hf(tmp_path, backend, eos):
    """eos_token_id 98: HF pools at that token; 2 (legacy): at the largest id, which the batch puts last."""
    hf = randomize(transformers.CLIPModel(hf_config(eos_token_id=eos)))
    with torch.no_grad():
        hf.logit_scale.fill_(math.log(100) + 0.2)  # above our clamp: HF applies it unclamped
    hf.save_pretrained(tmp_path / "hf")
    ours = load_hf_clip(str(tmp_path / "hf"), attn_backend=backend)
    assert ours.config.vision.attn_backend == ours.config.text.attn_backend == backend
    assert ours.config.text.mlp_dim == 37 and ours.config.vision.mlp_dim == 64
    assert ours.config.vision.act == ours.config.text.act == "quick_gelu"
    assert hf.logit_scale.shape == () and ours.logit_scale.shape == (1,)  # ours (1,), for FSDP
    assert_same_outputs(ours, hf, batch(eos=VOCAB - 1))


def test_config_from_hf_maps_fields():
    cfg = config_from_hf(hf_config(layer_norm_eps=1e-6))
    assert (cfg.embed_dim, cfg.logit_scale_init) == (24, pytest.approx(2.6592))
    assert (cfg.vision.image_size, cfg.vision.patch_size, cfg.vision.dim, cfg.vision.depth) == (32, 8, 32, 2)
    assert cfg.vision.pre_norm and not cfg.vision.patch_bias and cfg.vision.pool == "cls"
    assert (cfg.text.vocab_size, cfg.text.max_position, cfg.text.pad_token_id, cfg.text.norm_eps) == (99, 16, 1, 1e-6)
    assert cfg.text.causal and cfg.text.pool == "eot" and cfg.text.type_vocab_size == 0


# ----------------------------------------------------------------------------- export


def ours_tiny(**text) -> CLIPModel:
    cfg = ClipConfig(
        vision=ClipVisionConfig(image_size=32, patch_size=8, dim=32, depth=2, num_heads=4, mlp_ratio=2.0, pre_norm=True,
                         patch_bias=False, norm_eps=1e-5, act="gelu", attn_backend="math"),
        text=TextConfig(dim=32, depth=2, num_heads=4, mlp_ratio=1.5, vocab_size=VOCAB, max_position=16,
                        pad_token_id=PAD, act="gelu_tanh", attn_backend="math", **text),
        embed_dim=24,
    )
    return randomize(CLIPModel(cfg), seed=1)


def test_export_round_trip(tmp_path):
    ours = ours_tiny()
    out = export_clip(ours, tmp_path / "export", eos_token_id=VOCAB - 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temp dir left behind

    hf = transformers.CLIPModel.from_pretrained(out).eval()
    assert hf.config.text_config.hidden_act == "gelu_pytorch_tanh" and hf.config.vision_config.hidden_act == "gelu"
    assert_same_outputs(ours, hf, batch(eos=VOCAB - 1))

    back = load_hf_clip(str(out), attn_backend="math")
    mine, theirs = ours.state_dict(), back.state_dict()
    assert theirs.keys() == mine.keys()
    for key, tensor in mine.items():
        assert torch.equal(theirs[key], tensor), key
    assert isinstance(xformer.load(out), CLIPModel) and isinstance(xformer.load(f"hf:{out}"), CLIPModel)

    with pytest.raises(XformerError, match="not empty"):
        export_clip(ours, out, eos_token_id=VOCAB - 1)


def test_export_clamps_logit_scale_and_saves_tokenizer(tmp_path):
    ours = ours_tiny()
    with torch.no_grad():
        ours.logit_scale.fill_(math.log(100) + 0.5)  # ours clamps; HF would not
    folder = tmp_path / "vocab"
    folder.mkdir()
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\nb\n")
    tok = transformers.BertTokenizerFast(str(folder / "vocab.txt"))
    out = export_clip(ours, tmp_path / "export", tokenizer=tok)

    hf = transformers.CLIPModel.from_pretrained(out).eval()
    assert hf.config.text_config.eos_token_id == tok.sep_token_id == 3
    assert hf.logit_scale.shape == () and hf.logit_scale.item() == pytest.approx(math.log(100))
    assert_same_outputs(ours, hf, batch(eos=3))
    assert transformers.AutoTokenizer.from_pretrained(out)("a b")["input_ids"] == [2, 5, 6, 3]


# ----------------------------------------------------------------------------- errors


def test_config_from_hf_rejects_unsupported():
    with pytest.raises(XformerError, match="CLIP text hidden_act='relu' is not supported"):
        config_from_hf(hf_config(hidden_act="relu"))
    with pytest.raises(XformerError, match="model_type 'clip'"):
        config_from_hf(transformers.BertConfig())


@pytest.mark.parametrize("change, message", [
    ({"text": {"causal": False}}, "not causal"),
    ({"text": {"type_vocab_size": 2}}, "segment embeddings"),
    ({"vision": {"pool": "mean"}}, "vision.pool='mean'"),
    ({"vision": {"patch_bias": True}}, "patch_bias"),
])
def test_config_to_hf_rejects_unsupported(change, message):
    cfg = ours_tiny().config
    cfg = cfg.model_copy(update={tower: getattr(cfg, tower).model_copy(update=c) for tower, c in change.items()})
    with pytest.raises(XformerError, match=message):
        config_to_hf(cfg, eos_token_id=VOCAB - 1)


def test_export_and_load_errors(tmp_path):
    ours = ours_tiny()
    with pytest.raises(XformerError, match="end-of-text token id"):
        export_clip(ours, tmp_path / "a")
    with pytest.raises(XformerError, match="legacy argmax"):
        export_clip(ours, tmp_path / "b", eos_token_id=2)
    with pytest.raises(XformerError, match="below 99"):
        export_clip(ours, tmp_path / "c", eos_token_id=VOCAB)

    transformers.BertConfig(vocab_size=VOCAB).save_pretrained(tmp_path / "bert")
    with pytest.raises(XformerError, match="expected an HF CLIP config"):
        load_hf_clip(str(tmp_path / "bert"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(XformerError, match="no config.json"):
        load_hf_clip(str(tmp_path / "empty"))
    with pytest.raises(XformerError, match="hub is unreachable"):
        load_hf_clip("some-org/some-clip")

    hf = transformers.CLIPModel(hf_config())
    state = {k: v for k, v in hf.state_dict().items() if "layers.1.self_attn.q_proj" not in k}
    hf.save_pretrained(tmp_path / "partial", state_dict=state)
    with pytest.raises(XformerError, match="lacks .*layers.1.self_attn.q_proj"):
        load_hf_clip(str(tmp_path / "partial"))
