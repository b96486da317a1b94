"""The masked autoencoder against HF ViTMAEForPreTraining (the oracle): masking, loss, reconstruction,
conversion both ways, and its config's one-line errors."""

from __future__ import annotations

import pytest
import torch
import transformers

from xformer.errors import XformerError
from xformer.interop.hf_vit_mae import config_from_hf, export_vit_mae, load_hf_vit_mae, state_dict_from_hf
from xformer.models.registry import build_model, hf_format, model_config
from xformer.models.vit import ViTModel
from xformer.models.vit_mae import ViTMAEConfig, ViTMAEForPreTraining

BACKENDS = ("math", "sdpa")


def _hf_config(**overrides) -> transformers.ViTMAEConfig:
    fields = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  decoder_hidden_size=16, decoder_num_hidden_layers=2, decoder_num_attention_heads=2,
                  decoder_intermediate_size=48, image_size=16, patch_size=4, mask_ratio=0.75, layer_norm_eps=1e-6)
    return transformers.ViTMAEConfig(**{**fields, **overrides})


def _hf_model(**overrides) -> transformers.ViTMAEForPreTraining:
    """An HF MAE with every weight randomised (norms, biases, the position tables too), in eval mode."""
    torch.manual_seed(0)
    config = _hf_config(**overrides)
    config._attn_implementation = "eager"  # the plain softmax(QK^T)V as the reference
    hf = transformers.ViTMAEForPreTraining(config).eval()
    with torch.no_grad():
        for p in hf.parameters():  # a bare HF __init__ leaves the fixed position tables zero
            p.add_(torch.randn_like(p) * 0.1)
    return hf


def _inputs(cfg, batch: int = 3):
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(batch, cfg.num_channels, cfg.image_size, cfg.image_size, generator=g)  # (B, C, H, W)
    noise = torch.rand(batch, (cfg.image_size // cfg.patch_size) ** 2, generator=g)  # (B, N)
    return pixels, noise


def _ours(hf, backend: str) -> ViTMAEForPreTraining:
    cfg = config_from_hf(hf.config)
    cfg.attn_backend = backend
    model = ViTMAEForPreTraining(cfg)
    model.load_state_dict(state_dict_from_hf(hf.state_dict(), cfg))
    return model.eval()


def _assert_same(ours, theirs):
    torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-5, rtol=1e-5)
    assert torch.equal(ours.mask, theirs.mask)
    assert torch.equal(ours.ids_restore, theirs.ids_restore)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_matches_hf_vit_mae(backend, norm_pix_loss):
    hf = _hf_model(norm_pix_loss=norm_pix_loss)
    pixels, noise = _inputs(hf.config)
    with torch.no_grad():
        theirs = hf(pixel_values=pixels, noise=noise)
        ours = _ours(hf, backend)(pixels, noise)
    _assert_same(ours, theirs)
    assert ours.last_hidden_state.shape == (3, 1 + 4, 32)  # [CLS] + the kept quarter of 16 patches
    assert ours.mask.sum().item() == 3 * 12


def test_fresh_positions_are_hf_sincos():
    """The fixed 2-D sin-cos tables (encoder and decoder) are HF's, to the bit, and are not trained."""
    torch.manual_seed(0)
    hf = transformers.ViTMAEForPreTraining(_hf_config())
    hf.vit.embeddings.patch_embeddings.projection._is_hf_initialized = False  # fill the encoder's table again
    hf.vit.embeddings.initialize_weights()
    hf.decoder.initialize_weights(num_patches=16)  # (a bare HF __init__ leaves both tables zero)
    ours = ViTMAEForPreTraining(config_from_hf(hf.config))
    assert torch.equal(ours.vit.embeddings.position, hf.vit.embeddings.position_embeddings)
    assert torch.equal(ours.decoder.position, hf.decoder.decoder_pos_embed)
    assert not ours.vit.embeddings.position.requires_grad and not ours.decoder.position.requires_grad


def test_export_loads_in_hf_and_back(tmp_path):
    hf = _hf_model(norm_pix_loss=True)
    ours = _ours(hf, "math")
    pixels, noise = _inputs(hf.config)
    out = export_vit_mae(ours, tmp_path / "mae")
    reloaded = transformers.ViTMAEForPreTraining.from_pretrained(out, attn_implementation="eager").eval()
    with torch.no_grad():
        _assert_same(ours(pixels, noise), reloaded(pixel_values=pixels, noise=noise))
        back = load_hf_vit_mae(str(out), attn_backend="sdpa")
        _assert_same(back(pixels, noise), hf(pixel_values=pixels, noise=noise))
    assert back.config == ours.config.model_copy(update={"attn_backend": "sdpa"})


def test_import_hf_directory(tmp_path):
    hf = _hf_model()
    hf.save_pretrained(tmp_path / "hf")
    pixels, noise = _inputs(hf.config)
    ours = load_hf_vit_mae(str(tmp_path / "hf"), attn_backend="math")
    with torch.no_grad():
        _assert_same(ours(pixels, noise), hf(pixel_values=pixels, noise=noise))
    assert hf_format("vit_mae").load == "load_hf_vit_mae"


def test_encoder_is_a_vit_backbone():
    """What a ViT classifier will start from: the ``vit.`` keys load strictly into our ViTModel."""
    model = ViTMAEForPreTraining(ViTMAEConfig(dim=32, depth=1, num_heads=2, image_size=8, patch_size=4,
                                              decoder_dim=16, decoder_depth=1, decoder_num_heads=2, mask_ratio=0.5))
    backbone = ViTModel(model.config.encoder_config())
    prefix = model.backbone_prefix
    backbone.load_state_dict({k[len(prefix):]: v for k, v in model.state_dict().items() if k.startswith(prefix)})
    out = model(torch.randn(2, 3, 8, 8))
    assert out.last_hidden_state.shape == (2, 1 + 2, 32) and out.logits.shape == (2, 4, 48)
    out.loss.backward()
    assert model.decoder.mask_token.grad is not None


def test_built_from_the_registry():
    cfg = model_config({"arch": "vit_mae", "dim": 32, "depth": 1, "num_heads": 2, "image_size": 8, "patch_size": 4,
                        "decoder_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2}, "recipe.yaml")
    assert isinstance(build_model(cfg), ViTMAEForPreTraining)


@pytest.mark.parametrize("bad, words", [
    ({"mask_ratio": 0}, "mask_ratio"),
    ({"mask_ratio": 1.0}, "mask_ratio"),
    ({"image_size": 10}, "not divisible by model.patch_size"),
    ({"decoder_dim": 64}, "wider than the encoder"),
    ({"decoder_num_heads": 3}, "decoder_num_heads"),
    ({"mask_ratio": 0.99}, "hides all"),
])
def test_bad_config_is_one_line(bad, words):
    tree = {"arch": "vit_mae", "dim": 32, "depth": 1, "num_heads": 2, "image_size": 8, "patch_size": 4,
            "decoder_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2, **bad}
    with pytest.raises(XformerError, match=words) as err:
        model_config(tree, "recipe.yaml")
    assert "\n" not in str(err.value)
