"""The model registry: every registered architecture builds, runs forward and backward, and round-trips
through each of its HF formats; task model sections and saved configs come from it."""

from __future__ import annotations

import pytest
import torch

import xformer
from tests.helpers import randomize
from xformer.errors import XformerError
from xformer.interop import export_format, hf_function
from xformer.models.bert import BertClassifierConfig, BertConfig
from xformer.models.clip import ClipConfig
from xformer.models.cnn import CNNConfig
from xformer.models.hf_image import HFImageConfig
from xformer.models.registry import ARCHITECTURES, build_model, model_config
from xformer.models.vit import ViTConfig
from xformer.models.vit_mae import ViTMAEConfig
from xformer.tasks import parse_config

ENCODER = {"dim": 32, "depth": 2, "num_heads": 2, "dropout": 0.0, "attn_dropout": 0.0, "attn_backend": "math"}
MODERN = {"position": "rotary", "glu": True, "bias": False, "norm_first": True, "first_block_norm": False,
          "type_vocab_size": 0, "nsp": False, "embed_norm": True, "local_window": 4, "global_every": 2}


def tiny_configs(tmp_path) -> dict[str, list]:
    """Small configs of every architecture (several where its options pick another HF format)."""
    from tests.test_vit import tiny_resnet_dir

    return {
        "bert": [BertConfig(**ENCODER, vocab_size=50, max_position=16),
                 BertConfig(**ENCODER, **MODERN, vocab_size=50, max_position=16)],
        "bert_classifier": [BertClassifierConfig(**ENCODER, vocab_size=50, max_position=16, num_classes=3),
                            BertClassifierConfig(**ENCODER, **{**MODERN, "nsp": True}, vocab_size=50, max_position=16,
                                                 num_classes=1, classifier_pooling="mean")],
        "vit": [ViTConfig(**ENCODER, image_size=16, patch_size=8, num_classes=3)],
        "vit_mae": [ViTMAEConfig(**ENCODER, image_size=16, patch_size=8, decoder_dim=16, decoder_depth=1,
                                 decoder_num_heads=2, norm_pix_loss=True)],
        "cnn": [CNNConfig(channels=(4, 8, 8), hidden=16, image_size=16, num_classes=3)],
        "hf_image": [HFImageConfig(init=f"hf:{tiny_resnet_dir(tmp_path)}", image_size=16, num_classes=3)],
        "clip": [ClipConfig(vision={**ENCODER, "image_size": 16, "patch_size": 8},
                            text={**ENCODER, "vocab_size": 50, "max_position": 8}, embed_dim=16)],
    }


def inputs(cfg) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (2, 8), generator=gen)
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    pixels = torch.randn(2, 3, 16, 16, generator=gen)
    if isinstance(cfg, ClipConfig):
        return {"pixel_values": pixels, "input_ids": ids, "attention_mask": mask}
    if isinstance(cfg, BertConfig):
        return {"input_ids": ids, "attention_mask": mask}
    if isinstance(cfg, ViTMAEConfig):  # the same masking on every call
        return {"pixel_values": pixels, "noise": torch.rand(2, 4, generator=gen)}
    return {"pixel_values": pixels}


def scalar(out) -> torch.Tensor:
    """One number from every tensor a model returned (so that every head gets a gradient)."""
    tensors = [v for v in vars(out).values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    return sum(t.float().sum() for t in tensors)


def test_every_architecture_has_a_tiny_config(tmp_path):
    assert set(tiny_configs(tmp_path)) == set(ARCHITECTURES)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_builds_and_runs_forward_and_backward(arch, tmp_path):
    for cfg in tiny_configs(tmp_path)[arch]:
        model = build_model(cfg).train()
        assert model.config is cfg
        scalar(model(**inputs(cfg))).backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), arch


EXPORT_ARGS = {"clip": {"eos_token_id": 7}}


@pytest.mark.parametrize("arch", [name for name, a in ARCHITECTURES.items() if a.hf])
def test_round_trips_through_its_hf_formats(arch, tmp_path):
    exported = set()
    for i, cfg in enumerate(tiny_configs(tmp_path)[arch]):
        model = randomize(build_model(cfg))
        fmt = export_format(cfg)
        exported.add(fmt.model_type)
        out = hf_function(fmt, fmt.export)(model, tmp_path / f"hf{i}", **EXPORT_ARGS.get(arch, {}))
        back = xformer.load(out, attn_backend="math")
        assert type(back) is type(model)
        x = inputs(cfg)
        with torch.no_grad():
            for name, want in vars(model(**x)).items():
                if isinstance(want, torch.Tensor):
                    torch.testing.assert_close(getattr(back(**x), name), want, atol=1e-5, rtol=1e-5, msg=name)
    assert exported == {f.model_type for f in ARCHITECTURES[arch].hf}


def test_export_format_names_an_architecture_without_one():
    with pytest.raises(XformerError, match="'cnn' has no Hugging Face format"):
        export_format(CNNConfig(num_classes=2))


def test_model_sections_come_from_the_registry():
    image = parse_config({"task": "image_classification", "model": {"arch": "cnn", "hidden": 8}}, "recipe")
    assert isinstance(image.model, CNNConfig) and image.model.hidden == 8
    assert isinstance(parse_config({"task": "image_classification"}, "recipe").model, ViTConfig)
    with pytest.raises(XformerError, match=r"unknown key 'model.hiden'; did you mean model.hidden\?"):
        parse_config({"task": "image_classification", "model": {"arch": "cnn", "hiden": 8}}, "recipe")


def test_saved_model_sections_are_read_by_arch():
    assert type(model_config({"dim": 64}, "config.yaml")) is BertConfig  # written before there was arch
    assert type(model_config({"arch": "clip"}, "config.yaml")) is ClipConfig
    with pytest.raises(XformerError, match="config.yaml: model.arch 'vti' is not one of .*; did you mean vit"):
        model_config({"arch": "vti"}, "config.yaml")
