"""`synth-knee`: synthetic knee radiographs with an "R"/"L" marker shortcut.

Each 1-channel (grey) image shows a knee joint from the front: the femur coming down with two
condyles, the tibial plateau below, the joint gap between them, soft tissue, bone texture and
noise. "osteoarthritis" narrows the gap, hardens the bone under it (sclerosis) and may grow small
osteophytes at the joint margins; all of it follows a latent severity drawn per class from
overlapping distributions, so the class is learnable but not trivially separable.

A bright marker letter, "R" or "L" (a 5 x 7 pixel font, scaled), sits in a random corner. In
training "R" marks `marker_rate[c]` of class `c`; in validation / test half of each class.
The default, 2% of healthy and 98% of osteoarthritis images, is a strong correlation because
the joint itself is easy to read: a ResNet-18 (40 px, 600 training images, 5 epochs, seeds
0-1) reaches a test worst-group accuracy of 0.59-0.61 at 10% / 90% but 0.11-0.22 at 2% / 98%,
nearer the 0.03 the method's authors report for a real knee model (docs/method.md). Groups are
class x letter; the spurious mask is the letter's pixels dilated by one pixel.

One channel, because radiographs are grey (models built for the dataset take 1 input channel).
Seeded and vectorised in torch (about 1.5 s per 1,000 images on one CPU core). Default size:
2,000 train / 600 val / 600 test images of 64 x 64 px.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from lvlmva.vision.datasets.base import DatasetSplits
from lvlmva.vision.datasets.synthetic import (
    SyntheticTask,
    build_synthetic_splits,
    pixel_grid,
    smooth_noise,
)

CLASS_NAMES = ("healthy", "osteoarthritis")
GROUP_NAMES = ("healthy/L", "healthy/R", "osteoarthritis/L", "osteoarthritis/R")
TASK = "knee-radiographs"

_FONT = {
    "L": ("10000", "10000", "10000", "10000", "10000", "10000", "11111"),
    "R": ("11110", "10001", "10001", "11110", "10100", "10010", "10001"),
}


def load_synth_knee(
    *,
    seed: int = 0,
    image_size: int = 64,
    n_train: int = 2000,
    n_val: int = 600,
    n_test: int = 600,
    marker_rate: Sequence[float] = (0.02, 0.98),
    data_dir: str | None = None,
) -> DatasetSplits:
    """Build the seeded train / val / test splits (`data_dir` is accepted and ignored).

    `marker_rate[c]` is the share of training images of class c that carry "R" (the rest "L").
    """
    del data_dir
    return build_synthetic_splits(
        KNEES, seed=seed, image_size=image_size, sizes=(n_train, n_val, n_test), rate=marker_rate
    )


def _draw_chunk(
    labels: Tensor, right: Tensor, size: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    n = len(labels)
    s = size / 64.0
    yy, xx = (t[None] for t in pixel_grid(size))

    def col(values: Tensor) -> Tensor:
        return values[:, None, None]

    def rand(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    severity = (0.3 + 0.4 * labels.float() + 0.16 * torch.randn(n, generator=generator)).clamp(
        0.0, 1.0
    )
    cx = col(size / 2 + rand(-3, 3) * s)
    jy = col(size / 2 + rand(-4, 4) * s)
    tilt = col(rand(-0.06, 0.06))
    gap = col(s * (8.5 - 6.5 * severity + 0.6 * torch.randn(n, generator=generator)).clamp(1.2))
    rel = xx - cx

    # Soft tissue: a broad bright band around the leg on a dark background.
    leg = torch.exp(-((rel / (col(rand(17, 21)) * s)) ** 4))
    image = 0.06 + 0.22 * leg * (1 + 0.15 * (smooth_noise(n, size, 3, generator) - 0.5))

    # Femur: shaft flaring into two condyles whose lowest points bound the gap from above.
    centre_y = jy + tilt * rel
    cond_half = col(rand(15, 18)) * s
    spread = 0.55 * cond_half
    bumps = torch.exp(-(((rel - spread) / (0.42 * cond_half)) ** 2)) + torch.exp(
        -(((rel + spread) / (0.42 * cond_half)) ** 2)
    )
    femur_edge = centre_y - gap / 2 - 3.2 * s * (1 - bumps.clamp(max=1))
    femur_half = 10.5 * s + (cond_half - 10.5 * s) * torch.sigmoid((yy - (jy - 11 * s)) / (3 * s))
    femur_inside = torch.sigmoid((femur_edge - yy) / (0.6 * s)) * torch.sigmoid(
        (femur_half - rel.abs()) / (0.6 * s)
    )

    # Tibia: a plateau with the central spines, narrowing into the shaft below.
    tib_half_top = cond_half * col(rand(0.95, 1.05))
    spines = 1.6 * s * torch.exp(-((rel / (2.2 * s)) ** 2))
    tibia_edge = centre_y + gap / 2 + 0.8 * s * (rel / cond_half) ** 2 - spines
    tibia_half = 10 * s + (tib_half_top - 10 * s) * torch.sigmoid(((jy + 12 * s) - yy) / (3 * s))
    tibia_inside = torch.sigmoid((yy - tibia_edge) / (0.6 * s)) * torch.sigmoid(
        (tibia_half - rel.abs()) / (0.6 * s)
    )

    # Bone density: bright cortex at the sides, trabecular texture, subchondral sclerosis.
    texture = smooth_noise(n, size, 14, generator) - 0.5
    bone_level = col(rand(0.5, 0.6))
    sclerosis = col(0.05 + 0.25 * severity * rand(0.6, 1.4))
    femur_rim = torch.exp(-(femur_half - rel.abs()).clamp(min=0) / (1.5 * s))
    tibia_rim = torch.exp(-(tibia_half - rel.abs()).clamp(min=0) / (1.5 * s))
    femur_plate = torch.exp(-(femur_edge - yy).clamp(min=0) / (2.0 * s))
    tibia_plate = torch.exp(-(yy - tibia_edge).clamp(min=0) / (2.0 * s))
    femur = bone_level + 0.12 * texture + 0.15 * femur_rim + sclerosis * femur_plate
    tibia = bone_level + 0.12 * texture + 0.15 * tibia_rim + sclerosis * tibia_plate
    image = image + femur_inside * (femur - image)
    image = image + tibia_inside * (tibia - image)

    # Osteophytes: small bony spurs at the joint margins, more likely with higher severity.
    spur_p = ((severity - 0.45) * 2).clamp(0.0, 0.9)
    for side in (-1.0, 1.0):
        for sign in (-1.0, 1.0):  # above (femur) and below (tibia) the gap
            present = torch.rand(n, generator=generator) < spur_p
            radius = col(rand(1.0, 2.2) * present.float()) * s
            sy = (centre_y + sign * (gap / 2 + 1.0 * s)).mean(dim=2, keepdim=True)
            sx = cx + side * (cond_half + 0.5 * s)
            spur = torch.sigmoid((radius - torch.sqrt((yy - sy) ** 2 + (xx - sx) ** 2)) / (0.5 * s))
            image = image + (spur * present.float()[:, None, None]) * (bone_level + 0.1 - image)

    image = image + 0.03 * torch.randn(image.shape, generator=generator)
    letters, mask = _markers(right, size, generator)
    image = torch.where(letters > 0, letters, image)
    return image.clamp(0.0, 1.0)[:, None], mask


def _markers(right: Tensor, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Marker letters [N, S, S] (brightness where drawn, else 0) and their dilated masks."""
    n = len(right)
    scale = max(1, round(size / 32))
    glyphs = {k: _glyph(v, scale) for k, v in _FONT.items()}
    h, w = glyphs["R"].shape
    margin = max(1, round(2 * size / 64))
    corner = torch.randint(4, (n,), generator=generator)
    jitter = torch.randint(0, max(1, round(3 * size / 64)), (n, 2), generator=generator)
    brightness = 0.85 + 0.15 * torch.rand(n, generator=generator)
    letters = torch.zeros(n, size, size)
    for i in range(n):
        glyph = glyphs["R" if right[i] else "L"]
        top = margin + int(jitter[i, 0]) if corner[i] < 2 else size - h - margin - int(jitter[i, 0])
        left = (
            margin + int(jitter[i, 1])
            if corner[i] % 2 == 0
            else size - w - margin - int(jitter[i, 1])
        )
        letters[i, top : top + h, left : left + w] = glyph * brightness[i]
    drawn = (letters > 0).float()[:, None]
    mask = F.max_pool2d(drawn, kernel_size=3, stride=1, padding=1)[:, 0] > 0
    return letters, mask


def _glyph(rows: Sequence[str], scale: int) -> Tensor:
    bitmap = torch.tensor([[float(c == "1") for c in row] for row in rows])
    return bitmap.repeat_interleave(scale, 0).repeat_interleave(scale, 1)


KNEES = SyntheticTask(
    name="synth-knee",
    task=TASK,
    class_names=CLASS_NAMES,
    group_names=GROUP_NAMES,
    channels=1,
    rate_option="marker_rate",
    draw=_draw_chunk,
    seed_offset=1,  # the knee generators start one seed after the lesions' ones
)
