"""ViT: parity with HF transformers, position interpolation, export round trip, and every image arch trains."""

from __future__ import annotations

import pytest
import torch
import transformers

from tests.helpers import randomize
from xformer.models.cnn import CNNConfig
from xformer.models.hf_image import HFImageConfig
from xformer.models.vit import ViTConfig
from xformer.errors import XformerError
from xformer.interop.hf_vit import (
    config_from_hf,
    config_to_hf,
    export_vit,
    load_hf_vit,
    state_dict_from_hf,
    state_dict_to_hf,
)
from xformer.layers.embeddings import interpolate_pos_embed
from xformer.models import ViTForImageClassification, ViTModel, build_model

pytestmark = pytest.mark.usefixtures("offline")


def hf_vit(num_labels: int = 10, **kwargs) -> transformers.ViTForImageClassification:
    config = transformers.ViTConfig(
        image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, num_labels=num_labels, attn_implementation="eager", **kwargs,
    )
    torch.manual_seed(0)
    return randomize(transformers.ViTForImageClassification(config))


def ours_from_hf(hf: transformers.PreTrainedModel, backend: str = "math") -> ViTForImageClassification:
    cfg = config_from_hf(hf.config)
    cfg.attn_backend = backend
    model = ViTForImageClassification(cfg)
    model.load_state_dict(state_dict_from_hf(hf.state_dict(), cfg))
    return model.eval()


def images(size: int = 32, batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def tiny_resnet_dir(tmp_path, num_labels: int = 7):
    config = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=num_labels,
    )
    path = tmp_path / "resnet"
    transformers.ResNetForImageClassification(config).save_pretrained(path)
    return path


# ----------------------------------------------------------------------------- HF parity


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_logits_match_hf(backend):
    hf = hf_vit()
    ours = ours_from_hf(hf, backend)
    x = images()
    with torch.no_grad():
        expected = hf(pixel_values=x).logits
        got = ours(x).logits
    assert got.shape == (3, 10)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_other_image_size_matches_hf_interpolation():
    hf = hf_vit()
    ours = ours_from_hf(hf)
    x = images(48)
    with torch.no_grad():
        expected = hf(pixel_values=x, interpolate_pos_encoding=True).logits
        got = ours(x).logits  # interpolated automatically
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="patch grid"):
        ours(x, interpolate_pos_encoding=False)


@pytest.mark.parametrize("size", [(48, 48), (24, 40)])
def test_interpolate_pos_embed_matches_hf(size):
    hf = hf_vit()
    emb = hf.vit.embeddings
    tokens = torch.zeros(1, 1 + (size[0] // 4) * (size[1] // 4), 32)
    with torch.no_grad():
        expected = emb.interpolate_pos_encoding(tokens, *size)
        got = interpolate_pos_embed(emb.position_embeddings, (size[0] // 4, size[1] // 4))
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_state_dict_from_hub_naming_and_headless_model():
    hf = hf_vit()
    cfg = config_from_hf(hf.config)
    ours = state_dict_from_hf(hf.state_dict(), cfg)  # transformers 5 in-memory naming
    hub = state_dict_to_hf(ours, cfg)  # hub naming, read back
    assert "vit.encoder.layer.0.attention.attention.query.weight" in hub
    back = state_dict_from_hf(hub, cfg)
    assert back.keys() == ours.keys() and all(torch.equal(back[k], ours[k]) for k in ours)
    headless = {k.removeprefix("vit."): v for k, v in hub.items() if not k.startswith("classifier.")}
    assert set(state_dict_from_hf(headless, cfg)) == set(ours) - {"head.weight", "head.bias"}
    del headless["layernorm.weight"]
    with pytest.raises(XformerError, match="lacks vit.layernorm.weight"):
        state_dict_from_hf(headless, cfg)


# ----------------------------------------------------------------------------- load and export


def test_export_round_trip(tmp_path):
    ours = ours_from_hf(hf_vit(num_labels=3))
    names = ["cat", "dog", "ship"]
    out = export_vit(ours, tmp_path / "export", class_names=names)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    hf = transformers.ViTForImageClassification.from_pretrained(out).eval()
    assert [hf.config.id2label[i] for i in range(3)] == names
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x).logits, ours(x).logits, atol=1e-4, rtol=0)
    back = load_hf_vit(str(out), attn_backend="math")
    assert back.config == ours.config
    theirs, mine = back.state_dict(), ours.state_dict()
    assert theirs.keys() == mine.keys() and all(torch.equal(theirs[k], mine[k]) for k in mine)
    with pytest.raises(XformerError, match="not empty"):
        export_vit(ours, out)


def test_export_refuses_what_hf_cannot_express(tmp_path):
    cfg = ViTConfig(image_size=32, patch_size=4, dim=32, depth=1, num_heads=4, num_classes=3, pool="mean")
    with pytest.raises(XformerError, match="pool"):
        export_vit(ViTForImageClassification(cfg), tmp_path / "x")
    with pytest.raises(XformerError, match="class names"):
        config_to_hf(cfg.model_copy(update={"pool": "cls"}), class_names=["a"])


def test_load_gives_a_fresh_head_when_classes_differ_or_head_is_missing(tmp_path):
    hf = hf_vit(num_labels=10)
    hf.save_pretrained(tmp_path / "cls")
    same = load_hf_vit(str(tmp_path / "cls"), num_classes=10, attn_backend="math")
    assert torch.equal(same.head.weight, hf.classifier.weight)
    other = load_hf_vit(str(tmp_path / "cls"), num_classes=4, attn_backend="math")
    assert other.head.out_features == 4
    assert torch.equal(other.vit.encoder.norm.weight, hf.vit.layernorm.weight)
    base = transformers.ViTModel(hf.config, add_pooling_layer=True)
    base.save_pretrained(tmp_path / "base")
    assert load_hf_vit(str(tmp_path / "base"), num_classes=5).head.out_features == 5
    backbone = load_hf_vit(str(tmp_path / "base"))  # no classifier, none asked for: the backbone alone
    assert isinstance(backbone, ViTModel)
    assert torch.equal(backbone.embeddings.proj.weight, base.embeddings.patch_embeddings.projection.weight)


def test_hub_id_offline_asks_for_a_local_dir():
    with pytest.raises(XformerError, match="local directory"):
        load_hf_vit("google/vit-base-patch16-224")
    with pytest.raises(XformerError, match="local directory"):
        build_model(HFImageConfig(init="hf:microsoft/resnet-18", num_classes=10))


# ----------------------------------------------------------------------------- our models


def test_mean_pooling_and_layer_names():
    cfg = ViTConfig(image_size=32, patch_size=8, dim=32, depth=2, num_heads=4, num_classes=5, pool="mean")
    model = ViTForImageClassification(cfg).eval()
    x = images()
    out = model(x)
    assert out.logits.shape == (3, 5) and out.last_hidden_state.shape == (3, 1 + 16, 32)
    pooled = out.last_hidden_state[:, 1:].mean(dim=1)
    torch.testing.assert_close(out.logits, model.head(pooled))

    def layer_id(name: str) -> int:  # the trainer's rule for layer-wise LR decay and freezing
        if name.startswith("vit.embeddings."):
            return 0
        if name.startswith("vit.encoder.blocks."):
            return int(name.split(".")[3]) + 1
        return cfg.depth + 1

    ids = {name: layer_id(name) for name, _ in model.named_parameters()}
    assert set(ids.values()) == {0, 1, 2, 3}
    assert {n for n, i in ids.items() if i == 3} == {"vit.encoder.norm.weight", "vit.encoder.norm.bias",
                                                     "head.weight", "head.bias"}
    assert len(model.backbone_stages()) == 2


def test_hf_image_classifier_parts(tmp_path):
    model = build_model(HFImageConfig(init=f"hf:{tiny_resnet_dir(tmp_path)}", num_classes=3))
    assert model.training
    assert [n for n, _ in model.head.named_parameters()] == ["1.weight", "1.bias"]
    assert model.backbone_stages() == list(model.hf.resnet.encoder.stages)
    assert model(images(32, batch=2)).logits.shape == (2, 3)


@pytest.mark.parametrize("arch", ["vit", "cnn", "hf_image"])
def test_forward_backward_every_image_arch(arch, tmp_path):
    cfg = {
        "vit": lambda: ViTConfig(image_size=32, patch_size=4, dim=32, depth=2, num_heads=4, num_classes=10,
                                 attn_backend="sdpa"),
        "cnn": lambda: CNNConfig(channels=(8, 16, 16), hidden=32, num_classes=10),
        "hf_image": lambda: HFImageConfig(init=f"hf:{tiny_resnet_dir(tmp_path)}", num_classes=10),
    }[arch]()
    model = build_model(cfg).train()
    x, y = images(32, batch=4), torch.tensor([0, 3, 5, 9])
    logits = model(x).logits
    assert logits.shape == (4, 10)
    torch.nn.functional.cross_entropy(logits, y).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
