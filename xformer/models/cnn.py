"""The small CNN baseline (its config and model): three conv blocks, then two fully connected layers."""

from __future__ import annotations

from collections import OrderedDict
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from xformer.config import Section
from xformer.models.vit import ImageClassifierOutput


class CNNConfig(Section):
    """The small CNN baseline: 3 blocks of (conv, ReLU, BatchNorm) x convs_per_block, max-pool, dropout;
    then 2 fully connected layers."""

    arch: Literal["cnn"] = "cnn"
    channels: tuple[int, int, int] = (32, 64, 128)
    convs_per_block: int = Field(2, gt=0)
    batch_norm: bool = True
    dropout: float = Field(0.2, ge=0, lt=1)
    hidden: int = Field(128, gt=0)
    fc_dropout: float = Field(0.5, ge=0, lt=1)
    image_size: int = Field(32, gt=0)
    in_channels: int = Field(3, gt=0)
    num_classes: int | None = Field(None, gt=0, description="None: taken from the data")
    init: str | None = Field(None, description="a run dir or a checkpoint of a CNN")

    runtime_keys: ClassVar[frozenset[str]] = frozenset({"init", "num_classes", "dropout", "fc_dropout"})
    starts_from: ClassVar[str] = "cnn"  # the architecture whose checkpoints ``init`` may name


def conv_block(in_channels: int, out_channels: int, convs: int, batch_norm: bool, dropout: float) -> nn.Sequential:
    """``convs`` x (Conv3x3 -> ReLU -> BatchNorm), then MaxPool 2 and dropout; halves H and W."""
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, kernel_size=3, padding=1),
                   nn.ReLU(inplace=True)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
    layers += [nn.MaxPool2d(2), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class CNN(nn.Module):
    """Three conv blocks (:func:`conv_block`, channels ``cfg.channels``), then flatten -> Linear ->
    ReLU -> Dropout -> Linear head.

    ``features`` holds the blocks, ``classifier`` the fully connected layers; its last Linear is
    ``classifier.head``, also reachable as ``model.head``. Layers keep PyTorch's default initialisation.
    """

    head_prefixes = ("classifier.head.",)

    def __init__(self, cfg: CNNConfig):
        super().__init__()
        if cfg.num_classes is None:
            raise ValueError("CNNConfig.num_classes must be set (it is taken from the data)")
        self.config = cfg
        widths = (cfg.in_channels, *cfg.channels)
        self.features = nn.Sequential(*(
            conv_block(widths[i], widths[i + 1], cfg.convs_per_block, cfg.batch_norm, cfg.dropout)
            for i in range(len(cfg.channels))
        ))
        side = cfg.image_size // 2 ** len(cfg.channels)  # each block halves the (floored) side
        if side < 1:
            raise ValueError(f"image_size={cfg.image_size} is too small for {len(cfg.channels)} pooling blocks")
        self.classifier = nn.Sequential(OrderedDict(
            flatten=nn.Flatten(),
            fc=nn.Linear(cfg.channels[-1] * side * side, cfg.hidden),
            act=nn.ReLU(inplace=True),
            dropout=nn.Dropout(cfg.fc_dropout),
            head=nn.Linear(cfg.hidden, cfg.num_classes),
        ))

    @property
    def head(self) -> nn.Linear:
        return self.classifier.head

    def backbone_stages(self) -> list[nn.Module]:
        """The conv blocks, first to last (for freezing all but the last N)."""
        return list(self.features)

    def forward(self, pixel_values: torch.Tensor) -> ImageClassifierOutput:
        """pixel_values: (B, C, image_size, image_size) -> logits (B, K)."""
        return ImageClassifierOutput(logits=self.classifier(self.features(pixel_values)))
