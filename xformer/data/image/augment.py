"""Training-time image augmentation on batches of tensors, on the batch's device.

Every random draw comes from the ``torch.Generator`` passed in, so the same generator state
gives the same batch. Draws are made on the generator's device and moved to the batch's, so a
CPU generator works for a batch on any device.

The random ops take ``rows=(offset, total)`` when the batch is rows ``offset:offset+B`` of a micro-batch
of ``total`` rows split over processes: every draw is made for all ``total`` rows and sliced, so a row
comes out as it would in the whole micro-batch, whatever the number of processes. Mixup/CutMix pairs
each row with its neighbour (rows 2k and 2k+1), a pair that a split into even blocks never separates.

Images are (B, C, H, W), either uint8 (0..255) or float in [0, 1]; the per-sample ops come back
in the dtype they were given. Policies follow torchvision's TrivialAugmentWide and RandAugment
(op set, magnitude ranges), vectorised: each op runs once on the samples that drew it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from xformer.data.configs import AugmentConfig

Tensor = torch.Tensor


# ----------------------------------------------------------------------------- random draws


Rows = tuple[int, int] | None  # (offset, total): a batch's place in its micro-batch; None: the whole of it


def _rand(generator: torch.Generator | None, n: int, device: torch.device, rows: Rows = None) -> Tensor:
    """(n,) uniform in [0, 1), drawn from ``generator`` for the ``total`` rows of ``rows`` (default n), sliced
    to this batch's n, and moved to ``device``."""
    offset, total = rows or (0, n)
    source = generator.device if generator is not None else "cpu"
    return torch.rand(total, generator=generator, device=source)[offset:offset + n].to(device)


def _randint(generator: torch.Generator | None, high: int, n: int, device: torch.device, rows: Rows = None) -> Tensor:
    """(n,) int64 uniform in [0, high), drawn and sliced as :func:`_rand`."""
    offset, total = rows or (0, n)
    source = generator.device if generator is not None else "cpu"
    return torch.randint(high, (total,), generator=generator, device=source)[offset:offset + n].to(device)


def _numpy_rng(generator: torch.Generator | None) -> np.random.Generator:
    """A numpy generator seeded from ``generator``: for the few scalar draws torch cannot seed (Beta)."""
    source = generator.device if generator is not None else "cpu"
    return np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator, device=source).item()))


def _as_float(x: Tensor) -> Tensor:
    return x.float() / 255 if x.dtype == torch.uint8 else x


def _like(y: Tensor, x: Tensor) -> Tensor:
    """Float ``y`` in [0, 1] back to the dtype of ``x``."""
    return (y * 255).round_().clamp_(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else y


# ----------------------------------------------------------------------------- crop and flip


def random_crop(x: Tensor, padding: int, generator: torch.Generator | None, rows: Rows = None) -> Tensor:
    """Zero-pad by ``padding`` on every side, then crop each sample back to (H, W) at a random offset."""
    if padding == 0:
        return x
    B, C, H, W = x.shape
    padded = F.pad(x, (padding,) * 4)  # (B, C, H+2p, W+2p)
    top = _randint(generator, 2 * padding + 1, B, x.device, rows)
    left = _randint(generator, 2 * padding + 1, B, x.device, rows)
    rows = top[:, None, None] + torch.arange(H, device=x.device)[:, None]  # (B, H, 1)
    cols = left[:, None, None] + torch.arange(W, device=x.device)  # (B, 1, W)
    index = (rows * padded.shape[-1] + cols).view(B, 1, H * W).expand(B, C, H * W)  # into the flat padded image
    return padded.flatten(2).gather(2, index).view(B, C, H, W)


def random_hflip(x: Tensor, generator: torch.Generator | None, rows: Rows = None) -> Tensor:
    """Mirror each sample left-right with probability 1/2."""
    flip = _rand(generator, len(x), x.device, rows) < 0.5  # (B,)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_resized_crop(
    x: Tensor, size: int, scale: tuple[float, float], generator: torch.Generator | None,
    ratio: tuple[float, float] = (3 / 4, 4 / 3), rows: Rows = None,
) -> Tensor:
    """Crop each sample to a random box (area fraction in ``scale``, aspect ratio log-uniform in ``ratio``,
    at a random position inside the image) and resize it to (size, size), bilinearly.
    Float (B, C, H, W) in [0, 1] -> (B, C, size, size)."""
    B, device = x.size(0), x.device
    area = scale[0] + (scale[1] - scale[0]) * _rand(generator, B, device, rows)  # (B,)
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * _rand(generator, B, device, rows)
    w = (area * log_r.exp()).sqrt().clamp(max=1.0)  # box width and height as fractions of the image
    h = (area / log_r.exp()).sqrt().clamp(max=1.0)
    cx = (1 - w) * (2 * _rand(generator, B, device, rows) - 1)  # box centre in [-1, 1] coordinates
    cy = (1 - h) * (2 * _rand(generator, B, device, rows) - 1)
    theta = torch.zeros(B, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, cx, h, cy
    grid = F.affine_grid(theta, [B, x.size(1), size, size], align_corners=False)  # (B, size, size, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ----------------------------------------------------------------------------- per-sample ops
# Each op maps float images (b, C, H, W) in [0, 1] and per-sample magnitudes (b,) to images.


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
    return _like(OPS[name](_as_float(x), magnitude.to(x.device, torch.float32)), x)


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


def _apply_per_sample(x: Tensor, ops: Tensor, levels: Tensor, signs: Tensor, wide: bool) -> Tensor:
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


def trivial_augment(
    x: Tensor, generator: torch.Generator | None, magnitude_bins: int = 31, rows: Rows = None
) -> Tensor:
    """TrivialAugmentWide: one op per sample, at a magnitude bin drawn uniformly from ``magnitude_bins``."""
    B = len(x)
    ops = _randint(generator, len(OPS), B, x.device, rows)
    levels = _randint(generator, magnitude_bins, B, x.device, rows).float() / max(magnitude_bins - 1, 1)
    signs = _rand(generator, B, x.device, rows) < 0.5
    return _like(_apply_per_sample(_as_float(x), ops, levels, signs, wide=True), x)


def rand_augment(
    x: Tensor, generator: torch.Generator | None, num_ops: int, magnitude: int, magnitude_bins: int = 31,
    rows: Rows = None,
) -> Tensor:
    """RandAugment: ``num_ops`` ops in a row per sample, each drawn uniformly, all at bin ``magnitude``."""
    B = len(x)
    y = _as_float(x)
    levels = torch.full((B,), magnitude / max(magnitude_bins - 1, 1), device=x.device)
    for _ in range(num_ops):
        ops = _randint(generator, len(OPS), B, x.device, rows)
        signs = _rand(generator, B, x.device, rows) < 0.5
        y = _apply_per_sample(y, ops, levels, signs, wide=False)
    return _like(y, x)


# ----------------------------------------------------------------------------- mixing and normalising


def _partners(B: int, device: torch.device, rows: Rows) -> Tensor:
    """(B,) the index in this batch of each row's mixing partner: its neighbour in the micro-batch's pairs
    (0, 1), (2, 3), ...; a row whose neighbour is not in this batch (an odd count) is its own partner."""
    offset, _ = rows or (0, B)
    local = torch.arange(B, device=device)
    partner = ((local + offset) ^ 1) - offset  # the neighbour's global index, made local
    return torch.where((partner >= 0) & (partner < B), partner, local)


def mixup_cutmix(
    x: Tensor, targets: Tensor, generator: torch.Generator | None,
    mixup_alpha: float, cutmix_alpha: float, prob: float = 1.0, rows: Rows = None,
) -> tuple[Tensor, Tensor]:
    """Mix float images (B, C, H, W) and soft targets (B, K) in pairs of neighbouring rows, with probability ``prob``.

    Mixup blends whole images by lambda ~ Beta(alpha, alpha); CutMix pastes a box of area about
    (1 - lambda) of the image (one box for the micro-batch) and sets lambda to the area actually kept.
    With both alphas > 0, one of the two is chosen per micro-batch with equal odds (as timm).

    Rows 2k and 2k+1 of the micro-batch mix with each other (timm mixes row i with row B-1-i: the same
    kind of random pairing, the rows being in random order). With ``rows`` the pairs stay inside each
    process's block when its offset and size are even, so N processes mix exactly as one with the whole
    micro-batch; with odd blocks a row whose neighbour is on another process is left unmixed.
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return x, targets
    rng = _numpy_rng(generator)
    if rng.random() >= prob:
        return x, targets
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < 0.5)
    lam = float(rng.beta(cutmix_alpha, cutmix_alpha) if use_cutmix else rng.beta(mixup_alpha, mixup_alpha))
    partner = _partners(len(x), x.device, rows)  # (B,)
    other = x[partner]
    if use_cutmix:
        H, W = x.shape[-2:]
        cut_h, cut_w = int(H * math.sqrt(1 - lam)), int(W * math.sqrt(1 - lam))
        cy, cx = int(rng.integers(H)), int(rng.integers(W))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, H)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, W)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = other[:, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)
    else:
        x = lam * x + (1 - lam) * other
    return x, lam * targets + (1 - lam) * targets[partner]


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (or float in [0, 1]) images (B, C, H, W) -> float ``(x / 255 - mean) / std`` per channel."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (_as_float(x) - mean_t) / std_t


def soft_targets(labels: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """Class indices (B,) -> (B, K) float: 1 - smoothing + smoothing / K on the class, smoothing / K elsewhere."""
    return F.one_hot(labels.long(), num_classes).float() * (1 - smoothing) + smoothing / num_classes


def resize(x: Tensor, size: int | None) -> Tensor:
    """Images (B, C, H, W) float resized (bilinear, antialiased) to (B, C, size, size); as they are for None."""
    if size is None or x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


class Augmenter:
    """The training and evaluation transforms of an :class:`AugmentConfig`, for one dataset."""

    def __init__(
        self, cfg: AugmentConfig, mean: Sequence[float], std: Sequence[float], num_classes: int, image_size: int | None
    ):
        self.cfg = cfg
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.num_classes = num_classes
        self.image_size = image_size

    def train(
        self, pixel_values: Tensor, labels: Tensor, generator: torch.Generator | None, rows: Rows = None
    ) -> tuple[Tensor, Tensor]:
        """uint8 (B, C, H, W) and labels (B,) -> normalised float (B, C, S, S) and soft targets (B, K).

        Random crop, flip, the policy, resize to ``image_size``, normalise, label smoothing, mixup/cutmix.
        With ``rows=(offset, total)`` the batch is those rows of a micro-batch (see the module doc).
        """
        cfg = self.cfg
        x = random_crop(pixel_values, cfg.crop_padding, generator, rows)
        if cfg.hflip:
            x = random_hflip(x, generator, rows)
        x = _as_float(x)  # (B, C, H, W) in [0, 1]
        if cfg.policy == "trivial":
            x = trivial_augment(x, generator, rows=rows)
        elif cfg.policy == "randaugment":
            x = rand_augment(x, generator, cfg.randaugment_ops, cfg.magnitude, rows=rows)
        x = normalize(resize(x, self.image_size), self.mean, self.std)  # (B, C, S, S)
        targets = soft_targets(labels.to(x.device), self.num_classes, cfg.label_smoothing)  # (B, K)
        return mixup_cutmix(x, targets, generator, cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mix_prob, rows)

    def eval(self, pixel_values: Tensor) -> Tensor:
        """uint8 (B, C, H, W) -> normalised float (B, C, S, S); nothing random."""
        return normalize(resize(_as_float(pixel_values), self.image_size), self.mean, self.std)
