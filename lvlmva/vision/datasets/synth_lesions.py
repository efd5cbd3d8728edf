"""`synth-lesions`: synthetic dermoscopy-like images with a bandage shortcut.

Each 3-channel image shows textured skin with one lesion. Benign lesions are small, round,
symmetric and evenly coloured; malignant ones are larger, with an irregular border and several
colours. How strongly an image shows these traits follows a latent "malignancy" score drawn per
class from overlapping distributions, so the class is learnable but not trivially separable.

A coloured adhesive bandage (rounded rectangle, lighter pad, perforation dots), placed at random
where it does not cover the lesion, appears in training with `bandage_rate[c]` of class `c`
(default 90% of benign, 10% of malignant) and in validation / test with 50% of each class.
Groups are class x bandage; the spurious mask is the bandage's pixels.

Generation is vectorised in torch (chunks of images at once) and seeded: the same arguments give
the same tensors. Default size: 2,000 train / 600 val / 600 test images of 64 x 64 px
(about 1 s per 1,000 images on one CPU core).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lvlmva.vision.datasets.base import DatasetSplits
from lvlmva.vision.datasets.synthetic import (
    SyntheticTask,
    build_synthetic_splits,
    pixel_grid,
    smooth_noise,
)

CLASS_NAMES = ("benign", "malignant")
GROUP_NAMES = (
    "benign/no bandage",
    "benign/bandage",
    "malignant/no bandage",
    "malignant/bandage",
)
TASK = "skin-lesions"

_SKIN_LIGHT = (0.96, 0.80, 0.69)
_SKIN_DARK = (0.66, 0.45, 0.33)
_LESION_BASE = (0.45, 0.28, 0.18)
_LESION_EXTRA = ((0.16, 0.10, 0.08), (0.34, 0.33, 0.40), (0.56, 0.30, 0.22))
_BANDAGE_COLOURS = (
    (0.86, 0.68, 0.52),
    (0.93, 0.62, 0.70),
    (0.42, 0.62, 0.92),
    (0.52, 0.80, 0.52),
    (0.96, 0.84, 0.36),
)


def load_synth_lesions(
    *,
    seed: int = 0,
    image_size: int = 64,
    n_train: int = 2000,
    n_val: int = 600,
    n_test: int = 600,
    bandage_rate: Sequence[float] = (0.9, 0.1),
    data_dir: str | None = None,
) -> DatasetSplits:
    """Build the seeded train / val / test splits (`data_dir` is accepted and ignored)."""
    del data_dir
    return build_synthetic_splits(
        LESIONS, seed=seed, image_size=image_size, sizes=(n_train, n_val, n_test), rate=bandage_rate
    )


def _draw_chunk(
    labels: Tensor, bandage: Tensor, size: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    n = len(labels)
    yy, xx = pixel_grid(size)
    scale = size / 64.0
    image = _skin(n, size, generator)

    # Lesion: a latent malignancy score drives size, border irregularity and colour variety.
    score = (0.32 + 0.36 * labels.float() + 0.15 * _randn(n, generator)).clamp(0.0, 1.0)
    centre = size / 2 + (torch.rand(n, 2, generator=generator) - 0.5) * 0.16 * size
    radius = scale * (6.6 + 3.6 * score + 0.8 * _randn(n, generator))
    k = torch.arange(1, 8, dtype=torch.float32)
    amplitude = (0.015 + 0.10 * score)[:, None] * torch.rand(n, 7, generator=generator) / k.sqrt()
    amplitude[:, 0] *= 0.5  # the first harmonic only shifts the blob
    phase = torch.rand(n, 7, generator=generator) * 2 * math.pi
    dy = yy[None] - centre[:, 0, None, None]
    dx = xx[None] - centre[:, 1, None, None]
    rho = torch.sqrt(dy**2 + dx**2)
    theta = torch.atan2(dy, dx)
    harmonics = torch.cos(k[:, None, None] * theta[:, None] + phase[..., None, None])
    wobble = (amplitude[:, :, None, None] * harmonics).sum(1)
    border = radius[:, None, None] * (1 + wobble)
    alpha = torch.sigmoid((border - rho) / (0.6 * scale))

    base = torch.tensor(_LESION_BASE)[None] * (0.8 + 0.35 * torch.rand(n, 1, generator=generator))
    colour = base[:, :, None, None].expand(n, 3, size, size).clone()
    variety = ((score - 0.35) * 1.2).clamp(0.0, 0.8)
    for extra in _LESION_EXTRA:
        field = smooth_noise(n, size, 5, generator)
        weight = (variety[:, None, None] * (field - 0.35) * 2.2).clamp(0.0, 1.0)
        colour = colour + weight[:, None] * (torch.tensor(extra)[None, :, None, None] - colour)
    shade = 1 + 0.05 * (smooth_noise(n, size, 8, generator) - 0.5)
    image = image + alpha[:, None] * (colour * shade[:, None] - image)

    # Bandage: rotated rounded rectangle away from the lesion, with a pad and perforations.
    mask = torch.zeros(n, size, size, dtype=torch.bool)
    idx = torch.nonzero(bandage).flatten()
    if len(idx):
        patch, cover = _bandage(idx, centre, radius, size, generator)
        image[idx] = image[idx] + cover[:, None] * (patch - image[idx])
        mask[idx] = cover > 0.5
    image = image + 0.012 * torch.randn(image.shape, generator=generator)
    return image.clamp(0.0, 1.0), mask


def _skin(n: int, size: int, generator: torch.Generator) -> Tensor:
    tone = torch.rand(n, 1, generator=generator)
    light, dark = torch.tensor(_SKIN_LIGHT)[None], torch.tensor(_SKIN_DARK)[None]
    base = light + tone * (dark - light)
    texture = 0.07 * (smooth_noise(n, size, 4, generator) - 0.5) + 0.04 * (
        smooth_noise(n, size, 16, generator) - 0.5
    )
    return base[:, :, None, None] * (1 + texture[:, None])


def _bandage(
    idx: Tensor, centre: Tensor, radius: Tensor, size: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """RGB [M, 3, S, S] of the bandages of images `idx` and their coverage [M, S, S] in [0, 1]."""
    m = len(idx)
    scale = size / 64.0
    length = scale * (22 + 5 * torch.rand(m, generator=generator))
    width = scale * (9 + 2.5 * torch.rand(m, generator=generator))
    angle = torch.rand(m, generator=generator) * math.pi
    where = _place(centre[idx], radius[idx] * 1.5, length, width, size, generator)

    yy, xx = pixel_grid(size)
    dy = yy[None] - where[:, 0, None, None]
    dx = xx[None] - where[:, 1, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    u = dx * cos + dy * sin  # along the bandage
    v = -dx * sin + dy * cos
    half_l, half_w = length[:, None, None] / 2, width[:, None, None] / 2
    outer = rounded_box_sdf(u, v, half_l, half_w, half_w * 0.9)
    pad = rounded_box_sdf(u, v, half_l * 0.32, half_w * 0.68, half_w * 0.25)
    cover = torch.sigmoid(-outer / (0.45 * scale))

    choice = torch.randint(len(_BANDAGE_COLOURS), (m,), generator=generator)
    tape = torch.tensor(_BANDAGE_COLOURS)[choice] * (
        0.92 + 0.1 * torch.rand(m, 1, generator=generator)
    )
    pad_colour = tape + 0.55 * (1 - tape)
    spacing = 3.2 * scale
    du = torch.remainder(u, spacing) - spacing / 2
    dv = torch.remainder(v, spacing) - spacing / 2
    dots = ((du**2 + dv**2) < (0.75 * scale) ** 2) & (pad > 1.0 * scale) & (outer < -1.2 * scale)
    patch = tape[:, :, None, None].expand(m, 3, size, size).clone()
    in_pad = torch.sigmoid(-pad / (0.4 * scale))[:, None]
    patch = patch + in_pad * (pad_colour[:, :, None, None] - patch)
    patch = torch.where(dots[:, None], patch * 0.72, patch)
    return patch, cover


def _place(
    lesion: Tensor,
    keep_out: Tensor,
    length: Tensor,
    width: Tensor,
    size: int,
    generator: torch.Generator,
    tries: int = 64,
) -> Tensor:
    """Bandage centres [M, 2] inside the image whose bounding circle avoids the lesion."""
    m = len(lesion)
    reach = torch.sqrt((length / 2) ** 2 + (width / 2) ** 2)
    margin = (width / 2 + 1)[:, None]
    low, high = margin, size - 1 - margin
    candidates = (
        low[..., None] + torch.rand(m, 2, tries, generator=generator) * (high - low)[..., None]
    )
    gap = torch.linalg.vector_norm(candidates - lesion[..., None], dim=1)
    ok = gap > (keep_out + reach + 1)[:, None]
    # First valid candidate; where none is valid, the one farthest from the lesion.
    score = torch.where(ok, -torch.arange(tries, dtype=torch.float32)[None], gap - 1e6)
    best = score.argmax(dim=1)
    return candidates[torch.arange(m), :, best]


def rounded_box_sdf(u: Tensor, v: Tensor, half_u: Tensor, half_v: Tensor, r: Tensor) -> Tensor:
    """Signed distance to a rounded rectangle centred at the origin (negative inside)."""
    qu = u.abs() - half_u + r
    qv = v.abs() - half_v + r
    outside = torch.sqrt(qu.clamp(min=0) ** 2 + qv.clamp(min=0) ** 2)
    inside = torch.maximum(qu, qv).clamp(max=0)
    return outside + inside - r


def _randn(n: int, generator: torch.Generator) -> Tensor:
    return torch.randn(n, generator=generator)


LESIONS = SyntheticTask(
    name="synth-lesions",
    task=TASK,
    class_names=CLASS_NAMES,
    group_names=GROUP_NAMES,
    channels=3,
    rate_option="bandage_rate",
    draw=_draw_chunk,
)
