"""`decoy-digits`: scikit-learn's 8x8 digits laid out like MNIST, with Ross et al.'s decoys.

The default dataset: it needs no download. Built in four seeded steps (all randomness comes from
one generator seeded by `seed`, so a seed always gives the same splits):

1. **Split.** The 1,797 source digits are split 60% / 20% / 20% into train / validation / test
   (1,078 / 359 / 360), so no source digit appears in two splits.
2. **Lay out like MNIST.** Each 8x8 image (16 grey levels, scaled to [0, 1]) is upscaled
   bilinearly to a 20x20 box and centred in a 28x28 image with a 4 px margin, as MNIST centres
   its digits in a 20x20 box.
3. **Augment.** Every image gets a random rotation (up to +-15 degrees) and shift (up to +-3 px
   on each axis), bilinear, zeros outside. The training split holds `TRAIN_COPIES` (5)
   independently augmented copies of each of its source digits (5,390 images), validation
   one (359 images), test `TEST_COPIES` (2; 720 images), all drawn from the same distribution.
   Two test copies halve the chance that a class x decoy group is empty (a test image's random
   shade matches its label one time in ten) and make the test figures less noisy.
4. **Decoys.** The construction of `decoy.py`, unchanged: every image (every training copy on its
   own) gets a 4x4 square in a random corner, of shade ``255 - 25 * label`` in train and
   validation and of the shade of a random digit in test; the square is the spurious mask.

Why not just upscale the 8x8 digits to fill the 28x28 frame: those digits are so easy (crisp,
always in the same place, covering most of the image) that the reference MLP learns them about
as fast as the square and reaches ~0.95 test accuracy even with random test decoys, so there is
no shortcut to correct. Steps 2-3 make the digit features vary in position and orientation
while the square stays crisp, fixed and shaded by the label, so the square becomes the easier
feature, as in DecoyMNIST; the extra training copies give the model the ~5,000 samples (and
steps) it needs to learn the digits when the square carries no information. Measured with the
reference MLP (5 epochs, Adam lr 1e-3, batch 64; mean over seeds 0, 1, 2): test accuracy 0.53
with the decoys (DecoyMNIST: ~0.5), 0.91 on the same images without decoys; RRR with the true
masks of every training image reaches 0.90 from scratch (lambda 1e-2) and 0.84 fine-tuning the
decoyed model (lambda 1e-4; lambdas of 1 and more make that fine-tuning diverge).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor

from lvlmva.vision.datasets.base import DatasetSplits
from lvlmva.vision.datasets.decoy import build_decoy_splits

IMAGE_SIZE = 28
DIGIT_SIZE = 20  # the box the digit is upscaled to, centred in IMAGE_SIZE (MNIST's layout)
FRACTIONS = (0.6, 0.2, 0.2)  # train, val, test (of the source digits)
TRAIN_COPIES = 5  # augmented copies of each training digit
TEST_COPIES = 2  # augmented copies of each test digit (each with its own random shade)
MAX_ROTATION_DEG = 15.0
MAX_SHIFT_PX = 3.0


def layout(small: Tensor, digit_size: int = DIGIT_SIZE, image_size: int = IMAGE_SIZE) -> Tensor:
    """[N, 1, h, w] images in [0, 1] upscaled (bilinear) to `digit_size` and centred in a
    zero `image_size` frame."""
    box = F.interpolate(small, size=(digit_size, digit_size), mode="bilinear").clamp_(0.0, 1.0)
    before = (image_size - digit_size) // 2
    after = image_size - digit_size - before
    return F.pad(box, (before, after, before, after))


def augment(
    images: Tensor,
    generator: torch.Generator,
    *,
    max_rotation_deg: float = MAX_ROTATION_DEG,
    max_shift_px: float = MAX_SHIFT_PX,
) -> Tensor:
    """A random rotation (uniform in +-`max_rotation_deg`) about the centre and shift (uniform
    in +-`max_shift_px` on each axis) of each square image [N, C, S, S]; bilinear, zeros
    outside, clipped to [0, 1]."""
    n, _, size, _ = images.shape
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(max_rotation_deg)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (2 * max_shift_px / size)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        (torch.stack((cos, -sin, shift[:, 0]), dim=1), torch.stack((sin, cos, shift[:, 1]), dim=1)),
        dim=1,
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.clamp_(0.0, 1.0)


def load_decoy_digits(*, data_dir: str | os.PathLike | None = None, seed: int = 0) -> DatasetSplits:
    """The decoy construction on `sklearn.datasets.load_digits` (`data_dir` is not used)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = layout(small)
    labels = torch.as_tensor(digits.target, dtype=torch.long)

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    n_train = round(len(order) * FRACTIONS[0])
    n_val = round(len(order) * FRACTIONS[1])
    parts = order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
    splits = []
    for copies, idx in zip((TRAIN_COPIES, 1, TEST_COPIES), parts, strict=True):
        idx = idx.repeat(copies)
        splits.append((augment(images[idx], generator), labels[idx]))
    return build_decoy_splits("decoy-digits", *splits, generator=generator, options={"seed": seed})
