"""Per-sample image ops, vectorised: the op set of torchvision's TrivialAugmentWide and RandAugment (the
same ops and magnitude ranges). Each op maps float images (b, C, H, W) in [0, 1] and per-sample magnitudes
(b,) to images; :func:`apply_per_sample` runs each op once, on the samples that drew it. The random draws
(which op, which magnitude) are the policies' in :mod:`xformer.data.image.augment`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def to_float(x: Tensor) -> Tensor:
    """uint8 images (0..255) -> float in [0, 1]; float images as they are."""
    return x.float() / 255 if x.dtype == torch.uint8 else x


def like(y: Tensor, x: Tensor) -> Tensor:
    """Float ``y`` in [0, 1] back to the dtype of ``x``."""
    return (y * 255).round_().clamp_(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else y


# ----------------------------------------------------------------------------- the ops


def _grayscale(x: Tensor) -> Tensor:
    """(b, C, H, W) -> (b, 1, H, W), ITU-R 601 luma for RGB."""
    if x.shape[1] != 3:
        return x.mean(1, keepdim=True)
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """``factor * x + (1 - factor) * other``, clamped; ``factor`` (b,)."""
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp(0, 1)


def identity(x: Tensor, m: Tensor) -> Tensor:
    return x


def brightness(x: Tensor, m: Tensor) -> Tensor:
    """Scale intensities by 1 + m."""
    return _blend(x, torch.zeros_like(x), 1 + m)


def color(x: Tensor, m: Tensor) -> Tensor:
    """Saturation: blend with the grey image by 1 + m."""
    return _blend(x, _grayscale(x).expand_as(x), 1 + m)


def contrast(x: Tensor, m: Tensor) -> Tensor:
    """Blend with the mean grey level by 1 + m."""
    return _blend(x, _grayscale(x).mean((1, 2, 3), keepdim=True).expand_as(x), 1 + m)


def sharpness(x: Tensor, m: Tensor) -> Tensor:
    """Blend with a smoothed image (PIL's 3x3 SMOOTH filter, borders kept) by 1 + m."""
    C = x.shape[1]
    kernel = torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]], device=x.device) / 13
    smooth = x.clone()
    smooth[:, :, 1:-1, 1:-1] = F.conv2d(x, kernel.expand(C, 1, 3, 3), groups=C)  # (b, C, H-2, W-2)
    return _blend(x, smooth, 1 + m)


def posterize(x: Tensor, m: Tensor) -> Tensor:
    """Keep the top ``m`` bits (1..8) of each 8-bit value."""
    step = (2 ** (8 - m.round())).view(-1, 1, 1, 1)
    return torch.div((x * 255).round(), step, rounding_mode="floor") * step / 255


def solarize(x: Tensor, m: Tensor) -> Tensor:
    """Invert the values at or above the threshold ``m`` (in [0, 1])."""
    return torch.where(x >= m.view(-1, 1, 1, 1), 1 - x, x)


def autocontrast(x: Tensor, m: Tensor) -> Tensor:
    """Stretch each channel to the full range (channels of one value are left as they are)."""
    lo = x.amin((2, 3), keepdim=True)  # (b, C, 1, 1)
    hi = x.amax((2, 3), keepdim=True)
    flat = hi <= lo
    scale = torch.where(flat, torch.ones_like(hi), 1 / (hi - lo).clamp_min(1e-6))
    return torch.where(flat, x, (x - lo) * scale).clamp(0, 1)


def equalize(x: Tensor, m: Tensor) -> Tensor:
    """Histogram equalisation of each channel, as PIL's ImageOps.equalize."""
    b, C, H, W = x.shape
    values = (x * 255).round().long().reshape(b * C, H * W)  # (bC, HW)
    hist = torch.zeros(b * C, 256, dtype=torch.long, device=x.device).scatter_add_(1, values, torch.ones_like(values))
    top_count = hist.gather(1, values.amax(1, keepdim=True))  # (bC, 1) pixels at the highest value
    step = (H * W - top_count) // 255  # (bC, 1)
    lut = (hist.cumsum(1) - hist + step // 2) // step.clamp_min(1)  # (bC, 256)
    out = torch.where(step > 0, lut.clamp(0, 255).gather(1, values), values)
    return out.reshape(b, C, H, W).float() / 255


def _affine(x: Tensor, linear: Tensor, shift: Tensor) -> Tensor:
    """Resample with per-sample maps from output to input pixels about the centre: ``linear`` (b, 2, 2)
    acting on (x, y), then ``shift`` (b, 2) pixels. Nearest neighbour, zeros outside."""
    b, _, H, W = x.shape
    theta = torch.zeros(b, 2, 3, device=x.device)  # the same maps in [-1, 1] coordinates
    theta[:, 0, 0] = linear[:, 0, 0]
    theta[:, 0, 1] = linear[:, 0, 1] * H / W
    theta[:, 1, 0] = linear[:, 1, 0] * W / H
    theta[:, 1, 1] = linear[:, 1, 1]
    theta[:, :, 2] = shift * torch.tensor([2 / W, 2 / H], device=x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (b, H, W, 2)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _linear(a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> Tensor:
    return torch.stack([torch.stack([a, b], -1), torch.stack([c, d], -1)], -2)  # (b, 2, 2)


def rotate(x: Tensor, m: Tensor) -> Tensor:
    """Rotate by ``m`` degrees about the centre."""
    rad = m * (math.pi / 180)
    cos, sin = rad.cos(), rad.sin()
    return _affine(x, _linear(cos, -sin, sin, cos), torch.zeros(len(x), 2, device=x.device))


def shear_x(x: Tensor, m: Tensor) -> Tensor:
    one, zero = torch.ones_like(m), torch.zeros_like(m)
    return _affine(x, _linear(one, m, zero, one), torch.zeros(len(x), 2, device=x.device))


def shear_y(x: Tensor, m: Tensor) -> Tensor:
    one, zero = torch.ones_like(m), torch.zeros_like(m)
    return _affine(x, _linear(one, zero, m, one), torch.zeros(len(x), 2, device=x.device))


def translate_x(x: Tensor, m: Tensor) -> Tensor:
    """Shift right by ``m`` pixels."""
    eye = torch.eye(2, device=x.device).expand(len(x), 2, 2)
    return _affine(x, eye, torch.stack([-m, torch.zeros_like(m)], -1))


def translate_y(x: Tensor, m: Tensor) -> Tensor:
    """Shift down by ``m`` pixels."""
    eye = torch.eye(2, device=x.device).expand(len(x), 2, 2)
    return _affine(x, eye, torch.stack([torch.zeros_like(m), -m], -1))


OPS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    f.__name__: f
    for f in (identity, brightness, color, contrast, sharpness, posterize, solarize, autocontrast, equalize,
              rotate, shear_x, shear_y, translate_x, translate_y)
}
SIGNED = {"brightness", "color", "contrast", "sharpness", "rotate", "shear_x", "shear_y", "translate_x", "translate_y"}


def apply_op(x: Tensor, name: str, magnitude: Tensor) -> Tensor:
    """Op ``name`` of :data:`OPS` on uint8 or float images with per-sample ``magnitude`` (B,)."""
    return like(OPS[name](to_float(x), magnitude.to(x.device, torch.float32)), x)


def _magnitude(name: str, level: Tensor, wide: bool, width: int) -> Tensor:
    """Magnitudes in an op's own units for ``level`` (b,) in [0, 1]: TrivialAugmentWide's ranges
    (``wide``) or RandAugment's, as torchvision."""
    if name == "posterize":
        return 8 - (level * (6 if wide else 4)).round()  # bits kept
    if name == "solarize":
        return 1 - level  # threshold
    if name in ("translate_x", "translate_y"):
        return level * (32.0 if wide else 150 / 331 * width)  # pixels
    strongest = {"rotate": 135.0 if wide else 30.0, "shear_x": 0.99 if wide else 0.3, "shear_y": 0.99 if wide else 0.3}
    return level * strongest.get(name, 0.99 if wide else 0.9)


def apply_per_sample(x: Tensor, ops: Tensor, levels: Tensor, signs: Tensor, wide: bool) -> Tensor:
    """Sample i gets op ``ops[i]`` at ``levels[i]`` in [0, 1] (negated where ``signs[i]`` for signed ops)."""
    out = x.clone()
    for k, name in enumerate(OPS):
        if name == "identity":
            continue
        chosen = (ops == k).nonzero().squeeze(1)  # (b,)
        if len(chosen) == 0:
            continue
        m = _magnitude(name, levels[chosen], wide, x.shape[-1])
        if name in SIGNED:
            m = torch.where(signs[chosen], -m, m)
        out[chosen] = OPS[name](x[chosen], m)
    return out
