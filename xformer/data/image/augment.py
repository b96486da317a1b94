"""Training-time image augmentation on batches of tensors, on the batch's device.

Every random draw comes from the ``torch.Generator`` passed in, so the same generator state
gives the same batch. Draws are made on the generator's device and moved to the batch's, so a
CPU generator works for a batch on any device.

The random ops take ``rows=(offset, total)`` when the batch is rows ``offset:offset+B`` of a micro-batch
of ``total`` rows split over processes: every draw is made for all ``total`` rows and sliced, so a row
comes out as it would in the whole micro-batch, whatever the number of processes. Mixup/CutMix pairs
each row with its neighbour (rows 2k and 2k+1), a pair that a split into even blocks never separates.

Images are (B, C, H, W), either uint8 (0..255) or float in [0, 1]; the per-sample ops come back
in the dtype they were given. The policies, TrivialAugmentWide and RandAugment, draw each sample's ops and
magnitudes here and apply them with :mod:`xformer.data.image.ops`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from xformer.data.configs import AugmentConfig
from xformer.data.image.ops import OPS, apply_per_sample, like, to_float

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


# ----------------------------------------------------------------------------- policies


def trivial_augment(
    x: Tensor, generator: torch.Generator | None, magnitude_bins: int = 31, rows: Rows = None
) -> Tensor:
    """TrivialAugmentWide: one op per sample, at a magnitude bin drawn uniformly from ``magnitude_bins``."""
    B = len(x)
    ops = _randint(generator, len(OPS), B, x.device, rows)
    levels = _randint(generator, magnitude_bins, B, x.device, rows).float() / max(magnitude_bins - 1, 1)
    signs = _rand(generator, B, x.device, rows) < 0.5
    return like(apply_per_sample(to_float(x), ops, levels, signs, wide=True), x)


def rand_augment(
    x: Tensor, generator: torch.Generator | None, num_ops: int, magnitude: int, magnitude_bins: int = 31,
    rows: Rows = None,
) -> Tensor:
    """RandAugment: ``num_ops`` ops in a row per sample, each drawn uniformly, all at bin ``magnitude``."""
    B = len(x)
    y = to_float(x)
    levels = torch.full((B,), magnitude / max(magnitude_bins - 1, 1), device=x.device)
    for _ in range(num_ops):
        ops = _randint(generator, len(OPS), B, x.device, rows)
        signs = _rand(generator, B, x.device, rows) < 0.5
        y = apply_per_sample(y, ops, levels, signs, wide=False)
    return like(y, x)


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
    return (to_float(x) - mean_t) / std_t


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
        x = to_float(x)  # (B, C, H, W) in [0, 1]
        if cfg.policy == "trivial":
            x = trivial_augment(x, generator, rows=rows)
        elif cfg.policy == "randaugment":
            x = rand_augment(x, generator, cfg.randaugment_ops, cfg.magnitude, rows=rows)
        x = normalize(resize(x, self.image_size), self.mean, self.std)  # (B, C, S, S)
        targets = soft_targets(labels.to(x.device), self.num_classes, cfg.label_smoothing)  # (B, K)
        return mixup_cutmix(x, targets, generator, cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mix_prob, rows)

    def eval(self, pixel_values: Tensor) -> Tensor:
        """uint8 (B, C, H, W) -> normalised float (B, C, S, S); nothing random."""
        return normalize(resize(to_float(pixel_values), self.image_size), self.mean, self.std)
