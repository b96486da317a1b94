"""The model registry: every architecture's config, builder and Hugging Face formats, in one place.

A new architecture is one model file (its config, with an ``arch`` tag, and its model) plus one
:class:`Architecture` entry in :data:`ARCHITECTURES`. From the registry come the ``model`` section of
each task's run config (:func:`model_section`, by ``kind``), the model of a config (:func:`build_model`),
the config of a saved model section (:func:`model_config`) and the HF conversion for an HF
``model_type`` (:func:`hf_format`).

Each model declares how an ``init`` finds its backbone in a checkpoint (``backbone_prefix``, e.g.
``"bert."``; a model without one is its own backbone) and which of its parameters may start fresh
(``head_prefixes``); each config declares which architecture's checkpoints its ``init`` may name
(``starts_from``). HF conversions live in :mod:`xformer.interop`, a layer above the models: they are
named here by module and function, and :func:`xformer.interop.hf_function` imports them on use, so
that transformers is imported only for HF work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Discriminator, Tag
from torch import nn

from xformer.config import Section, validate
from xformer.errors import XformerError, did_you_mean
from xformer.models.bert import BertClassifierConfig, BertConfig, BertForPreTraining, BertForSequenceClassification
from xformer.models.clip import ClipConfig, CLIPModel
from xformer.models.cnn import CNN, CNNConfig
from xformer.models.hf_image import HFImageClassifier, HFImageConfig
from xformer.models.vit import ViTConfig, ViTForImageClassification
from xformer.models.vit_mae import ViTMAEConfig, ViTMAEForPreTraining


@dataclass(frozen=True)
class HFFormat:
    """One HF ``model_type`` an architecture converts from and to.

    Args:
        model_type: the ``model_type`` of the HF ``config.json``.
        module: the :mod:`xformer.interop` module that converts it; its ``config_from_hf(hf_config)``
            gives our config for an HF config.
        load: the module's ``(path_or_id, attn_backend=...) -> model`` loader.
        export: the module's ``(model, out_dir, ...) -> Path`` exporter.
        exports: the module's ``(cfg) -> bool``, whether it is the format that exports ``cfg`` (None: any
            config of the architecture); the first format of an architecture that claims a config exports it.
    """

    model_type: str
    module: str
    load: str
    export: str
    exports: str | None = None


@dataclass(frozen=True)
class Architecture:
    """A registered architecture: ``model.arch`` ``name`` (the ``arch`` tag of ``config``).

    Args:
        config: its model config class.
        build: ``config -> nn.Module``, the model trained for it.
        kind: what the model does; a task's ``model`` section accepts every architecture of its kind.
        title: how messages name its checkpoints ("BERT").
        hf: the HF formats it converts from and to, in the order tried for export.
    """

    config: type[Section]
    build: Callable[[Any], nn.Module]
    kind: str
    title: str
    hf: tuple[HFFormat, ...] = ()


# BERT and its classifier convert through the same modules: an HF directory's ``architectures`` (e.g.
# BertForSequenceClassification) says which of our models it loads as; rotary models export as ModernBERT.
_BERT_FORMATS = (
    HFFormat("modernbert", "xformer.interop.hf_modernbert", "load_hf_modernbert", "export_modernbert",
             exports="is_modernbert"),
    HFFormat("bert", "xformer.interop.hf_bert", "load_hf_bert", "export_bert"),
)

ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(BertConfig, BertForPreTraining, "masked_lm", "BERT", hf=_BERT_FORMATS),
    "bert_classifier": Architecture(BertClassifierConfig, BertForSequenceClassification, "text_classifier", "BERT",
                                    hf=_BERT_FORMATS),
    "vit": Architecture(ViTConfig, ViTForImageClassification, "image_classifier", "ViT", hf=(
        HFFormat("vit", "xformer.interop.hf_vit", "load_hf_vit", "export_vit"),
    )),
    "vit_mae": Architecture(ViTMAEConfig, ViTMAEForPreTraining, "masked_image", "MAE", hf=(
        HFFormat("vit_mae", "xformer.interop.hf_vit_mae", "load_hf_vit_mae", "export_vit_mae"),
    )),
    "cnn": Architecture(CNNConfig, CNN, "image_classifier", "CNN"),
    "hf_image": Architecture(HFImageConfig, HFImageClassifier, "image_classifier", "HF image classifier"),
    "clip": Architecture(ClipConfig, CLIPModel, "dual_encoder", "CLIP", hf=(
        HFFormat("clip", "xformer.interop.hf_clip", "load_hf_clip", "export_clip"),
    )),
}
# What an HF directory of an unknown or missing model_type is read as (sentence-transformers BERTs).
DEFAULT_HF_MODEL_TYPE = "bert"


def architecture(name: Any, origin: str = "model.arch") -> Architecture:
    """The architecture ``name``; XformerError naming the closest valid ones otherwise."""
    if not isinstance(name, str) or name not in ARCHITECTURES:
        hint = did_you_mean(name, ARCHITECTURES)
        raise XformerError(f"{origin}: model.arch {name!r} is not one of {', '.join(ARCHITECTURES)}{hint}")
    return ARCHITECTURES[name]


def build_model(cfg: Section) -> nn.Module:
    """The model for a model config, by its ``arch``."""
    return architecture(getattr(cfg, "arch", None), f"{type(cfg).__name__}").build(cfg)


def model_config(tree: Any, origin: str) -> Section:
    """A saved model section (the ``model`` mapping of a run's config.yaml), validated by its ``arch``
    (``bert`` when it has none: configs written before there were other architectures)."""
    arch = tree.get("arch", "bert") if isinstance(tree, dict) else None
    return validate(architecture(arch, origin).config, tree, origin, "model")


def _arch_tag(default: str) -> Callable[[Any], str]:
    def tag(value: Any) -> str:
        return value.get("arch", default) if isinstance(value, dict) else getattr(value, "arch", default)
    return tag


def model_section(kind: str, default: str) -> Any:
    """The type of a task's ``model`` section: the config of every architecture of ``kind``, told apart by
    ``arch`` (``default`` when a recipe gives none); the config class itself when the kind has one."""
    members = [(name, arch.config) for name, arch in ARCHITECTURES.items() if arch.kind == kind]
    if len(members) == 1:
        return members[0][1]
    union = Annotated[members[0][1], Tag(members[0][0])]
    for name, config in members[1:]:
        union = union | Annotated[config, Tag(name)]
    return Annotated[union, Discriminator(_arch_tag(default))]


def hf_format(model_type: str | None) -> HFFormat:
    """The HF format of ``model_type`` (an unknown or missing one is read as :data:`DEFAULT_HF_MODEL_TYPE`,
    whose conversion names what it expected)."""
    formats = {f.model_type: f for arch in ARCHITECTURES.values() for f in arch.hf}
    return formats.get(model_type, formats[DEFAULT_HF_MODEL_TYPE])
