"""The CNN baseline: shapes, parameter count, BatchNorm and dropout toggles."""

from __future__ import annotations

import torch
from torch import nn

from xformer.models.cnn import CNNConfig
from xformer.models import CNN, build_model


def expected_parameters(cfg: CNNConfig) -> int:
    """Conv3x3 weights + biases, BatchNorm scale + shift, then the two linear layers."""
    total, c_in = 0, cfg.in_channels
    for c in cfg.channels:
        for i in range(cfg.convs_per_block):
            total += (c_in if i == 0 else c) * c * 9 + c + (2 * c if cfg.batch_norm else 0)
        c_in = c
    flat = cfg.channels[-1] * (cfg.image_size // 8) ** 2
    return total + flat * cfg.hidden + cfg.hidden + cfg.hidden * cfg.num_classes + cfg.num_classes


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_default_shapes_and_parameter_count():
    cfg = CNNConfig(num_classes=10)
    model = build_model(cfg)
    assert isinstance(model, CNN)
    assert count(model) == expected_parameters(cfg) == 551_466
    out = model(torch.randn(5, 3, 32, 32))
    assert out.logits.shape == (5, 10) and out.last_hidden_state is None
    assert model.head is model.classifier.head and model.head.out_features == 10
    assert len(model.backbone_stages()) == 3


def test_other_sizes_and_channels():
    cfg = CNNConfig(channels=(4, 8, 16), convs_per_block=1, image_size=28, in_channels=1, hidden=16, num_classes=3)
    model = CNN(cfg)
    assert count(model) == expected_parameters(cfg)
    assert model(torch.randn(2, 1, 28, 28)).logits.shape == (2, 3)


def test_batch_norm_toggle():
    with_bn = CNN(CNNConfig(num_classes=10))
    without = CNN(CNNConfig(num_classes=10, batch_norm=False))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules()) == 6
    assert not any(isinstance(m, nn.BatchNorm2d) for m in without.modules())
    assert count(without) == expected_parameters(CNNConfig(num_classes=10, batch_norm=False))


def test_dropout_toggle():
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(0)
    model = CNN(CNNConfig(num_classes=10, dropout=0.0, fc_dropout=0.0)).train()
    torch.testing.assert_close(model(x).logits, model(x).logits)  # no dropout: deterministic (BN batch stats)
    model = CNN(CNNConfig(num_classes=10, dropout=0.3, fc_dropout=0.5)).train()
    rates = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert rates == [0.3, 0.3, 0.3, 0.5]
    assert not torch.allclose(model(x).logits, model(x).logits)
    model.eval()
    torch.testing.assert_close(model(x).logits, model(x).logits)
