"""Tensor augmentation: shapes, dtypes, determinism under a generator, and what each op does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from xformer.data.configs import AugmentConfig
from xformer.data.image.augment import (
    Augmenter,
    mixup_cutmix,
    normalize,
    rand_augment,
    random_crop,
    random_hflip,
    random_resized_crop,
    soft_targets,
    trivial_augment,
)
from xformer.data.image.ops import OPS, apply_op

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def images(batch: int = 16, size: int = 12, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


RANDOM_OPS = {
    "random_crop": lambda x, g: random_crop(x, 4, g),
    "random_hflip": random_hflip,
    "trivial_augment": trivial_augment,
    "rand_augment": lambda x, g: rand_augment(x, g, num_ops=2, magnitude=9),
}


@pytest.mark.parametrize("name", sorted(RANDOM_OPS))
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_random_ops_keep_shape_dtype_and_follow_the_generator(name, dtype):
    x = images(size=16)
    x = x if dtype == torch.uint8 else x.float() / 255
    op = RANDOM_OPS[name]
    out = op(x, gen(0))
    assert out.shape == x.shape and out.dtype == dtype
    assert torch.equal(out, op(x, gen(0)))
    assert not torch.equal(out, op(x, gen(1)))


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_policy_op_keeps_shape_and_dtype(name):
    x = images()
    m = torch.full((len(x),), 4.0 if name == "posterize" else 0.5)
    for inp in (x, x.float() / 255):
        out = apply_op(inp, name, m)
        assert out.shape == inp.shape and out.dtype == inp.dtype
        if inp.dtype.is_floating_point:
            assert out.min() >= 0 and out.max() <= 1


def test_hflip_twice_is_identity_and_crop_without_padding_is_identity():
    x = images()
    assert torch.equal(random_hflip(random_hflip(x, gen(3)), gen(3)), x)
    assert torch.equal(random_crop(x, 0, gen(0)), x)


def test_crop_is_a_shifted_window_of_the_zero_padded_image():
    x = images(batch=64, size=8)
    out = random_crop(x, 2, gen(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        assert any(torch.equal(out[i], padded[i, :, r : r + 8, c : c + 8]) for r in range(5) for c in range(5))


def test_geometric_ops_move_pixels_as_named():
    x = images(batch=2, size=8)
    assert torch.equal(apply_op(x, "translate_x", torch.tensor([2.0, 2.0]))[..., 2:], x[..., :-2])
    assert torch.equal(apply_op(x, "translate_y", torch.tensor([1.0, 1.0]))[..., 1:, :], x[..., :-1, :])
    quarter = apply_op(x, "rotate", torch.tensor([90.0, 90.0]))
    assert torch.equal(quarter, x.rot90(1, (2, 3))) or torch.equal(quarter, x.rot90(-1, (2, 3)))


@pytest.mark.parametrize(
    "name, magnitude, pil",
    [
        ("posterize", 3.0, lambda im: ImageOps.posterize(im, 3)),
        ("solarize", 128 / 255, lambda im: ImageOps.solarize(im, 128)),
        ("autocontrast", 0.0, ImageOps.autocontrast),
        ("equalize", 0.0, ImageOps.equalize),
        ("brightness", 0.3, lambda im: ImageEnhance.Brightness(im).enhance(1.3)),
        ("color", -0.5, lambda im: ImageEnhance.Color(im).enhance(0.5)),
        ("contrast", 0.6, lambda im: ImageEnhance.Contrast(im).enhance(1.6)),
        ("sharpness", 0.9, lambda im: ImageEnhance.Sharpness(im).enhance(1.9)),
    ],
)
def test_pixel_ops_match_pil(name, magnitude, pil):
    x = (images(batch=3, size=16).float() * 0.6 + 40).to(torch.uint8)  # a narrow range, so the ops do something
    out = apply_op(x, name, torch.full((3,), magnitude))
    for i in range(3):
        im = Image.fromarray(x[i].permute(1, 2, 0).numpy())
        expected = torch.from_numpy(np.array(pil(im))).permute(2, 0, 1)
        assert (out[i].int() - expected.int()).abs().max() <= 1, name


def test_soft_targets_with_label_smoothing():
    labels = torch.tensor([0, 3, 9])
    t = soft_targets(labels, 10, 0.1)
    assert t.shape == (3, 10)
    assert torch.allclose(t[torch.arange(3), labels], torch.full((3,), 0.9 + 0.1 / 10))
    assert torch.allclose(t.sum(1), torch.ones(3))


@pytest.mark.parametrize("mixup, cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixup_cutmix_targets_are_distributions_and_deterministic(mixup, cutmix):
    x = images().float()
    targets = soft_targets(torch.arange(16) % 10, 10, 0.1)
    mixed, mixed_targets = mixup_cutmix(x, targets, gen(0), mixup, cutmix)
    assert mixed.shape == x.shape and mixed_targets.shape == targets.shape
    assert torch.allclose(mixed_targets.sum(1), torch.ones(16))
    again = mixup_cutmix(x, targets, gen(0), mixup, cutmix)
    assert torch.equal(mixed, again[0]) and torch.equal(mixed_targets, again[1])
    lams = {round(float(mixup_cutmix(x, targets, gen(s), mixup, cutmix)[1][0, 0]), 6) for s in range(5)}
    assert len(lams) > 1


def test_cutmix_lambda_is_the_area_kept():
    x = torch.zeros(2, 1, 10, 10)
    x[1] = 1
    targets = torch.eye(2)
    mixed, t = mixup_cutmix(x, targets, gen(0), 0.0, 1.0)
    pasted = mixed[0].mean().item()  # the fraction of sample 0 taken from sample 1
    assert t[0, 1].item() == pytest.approx(pasted) and t[0, 0].item() == pytest.approx(1 - pasted)


def test_mixing_off_or_never_drawn_leaves_the_batch():
    x, targets = images().float(), torch.eye(16)
    assert mixup_cutmix(x, targets, gen(0), 0.0, 0.0)[0] is x
    assert mixup_cutmix(x, targets, gen(0), 0.8, 1.0, prob=0.0)[1] is targets


ROW_OPS = {  # each with rows=(offset, total): this batch's place in a micro-batch
    "random_crop": lambda x, g, rows: random_crop(x, 4, g, rows),
    "random_hflip": random_hflip,
    "random_resized_crop": lambda x, g, rows: random_resized_crop(x.float() / 255, 12, (0.3, 1.0), g, rows=rows),
    "trivial_augment": lambda x, g, rows: trivial_augment(x, g, rows=rows),
    "rand_augment": lambda x, g, rows: rand_augment(x, g, num_ops=2, magnitude=9, rows=rows),
}


@pytest.mark.parametrize("name", sorted(ROW_OPS))
def test_a_block_of_rows_is_augmented_as_in_the_whole_micro_batch(name):
    x, op = images(size=16), ROW_OPS[name]
    whole = op(x, gen(0), None)
    for offset in (0, 8):
        assert torch.equal(op(x[offset:offset + 8], gen(0), (offset, 16)), whole[offset:offset + 8])


@pytest.mark.parametrize("mixup, cutmix", [(0.8, 0.0), (0.0, 1.0)])
def test_mixing_pairs_neighbours_so_even_blocks_of_rows_mix_as_the_whole_micro_batch(mixup, cutmix):
    x, targets = images().float(), torch.eye(16)
    whole, whole_targets = mixup_cutmix(x, targets, gen(0), mixup, cutmix)
    lam = float(whole_targets[0, 0])
    assert 0 < lam < 1 and whole_targets[0, 1] == pytest.approx(1 - lam)  # row 0 took from row 1
    assert whole_targets[1, 0] == pytest.approx(1 - lam) and whole_targets[1, 1] == pytest.approx(lam)
    for offset, n in ((0, 8), (8, 8), (6, 4)):
        rows = slice(offset, offset + n)
        part, part_targets = mixup_cutmix(x[rows], targets[rows], gen(0), mixup, cutmix, rows=(offset, 16))
        assert torch.equal(part, whole[rows]) and torch.equal(part_targets, whole_targets[rows])
    # an odd block: row 3's neighbour (row 2) is on another process, so row 3 stays as it is
    part, part_targets = mixup_cutmix(x[3:8], targets[3:8], gen(0), mixup, cutmix, rows=(3, 16))
    assert torch.equal(part[0], x[3]) and torch.allclose(part_targets[0], targets[3])
    assert torch.equal(part[1:], whole[4:8]) and torch.equal(part_targets[1:], whole_targets[4:8])


@pytest.mark.parametrize("policy", ["trivial", "randaugment"])
def test_augmenter_on_a_block_of_rows_matches_the_whole_micro_batch(policy):
    cfg = AugmentConfig(policy=policy, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    aug = Augmenter(cfg, MEAN, STD, num_classes=5, image_size=24)
    x, labels = images(batch=16, size=16), torch.arange(16) % 5
    for seed in range(3):  # mixup and cutmix both drawn
        pixels, targets = aug.train(x, labels, gen(seed))
        for offset in (0, 8):
            part = aug.train(x[offset:offset + 8], labels[offset:offset + 8], gen(seed), rows=(offset, 16))
            assert torch.equal(part[0], pixels[offset:offset + 8]) and torch.equal(part[1], targets[offset:offset + 8])


def test_normalize_matches_manual_computation():
    x = images()
    expected = (x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    out = normalize(x, MEAN, STD)
    assert out.dtype == torch.float32 and torch.allclose(out, expected)


@pytest.mark.parametrize("policy", ["none", "trivial", "randaugment"])
def test_augmenter_train_and_eval(policy):
    cfg = AugmentConfig(policy=policy, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    x, labels = images(batch=8, size=16), torch.arange(8) % 5
    for size, expected in ((None, 16), (16, 16), (24, 24)):
        aug = Augmenter(cfg, MEAN, STD, num_classes=5, image_size=size)
        pixels, targets = aug.train(x, labels, gen(0))
        assert pixels.shape == (8, 3, expected, expected) and pixels.dtype == torch.float32
        assert targets.shape == (8, 5) and torch.allclose(targets.sum(1), torch.ones(8))
        again = aug.train(x, labels, gen(0))
        assert torch.equal(pixels, again[0]) and torch.equal(targets, again[1])
        evaluated = aug.eval(x)
        assert evaluated.shape == (8, 3, expected, expected)
        assert torch.equal(evaluated, aug.eval(x))
    assert torch.allclose(Augmenter(cfg, MEAN, STD, 5, None).eval(x), normalize(x, MEAN, STD))


def test_augmenter_without_randomness_only_normalises():
    cfg = AugmentConfig(crop_padding=0, hflip=False, policy="none", label_smoothing=0.0)
    x, labels = images(batch=4), torch.tensor([0, 1, 2, 1])
    pixels, targets = Augmenter(cfg, MEAN, STD, 3, None).train(x, labels, gen(0))
    assert torch.allclose(pixels, normalize(x, MEAN, STD))
    assert torch.equal(targets, torch.nn.functional.one_hot(labels, 3).float())
