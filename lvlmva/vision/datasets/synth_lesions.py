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
from torch.nn import functional as F

from lvlmva.errors import ConfigError
from lvlmva.vision.datasets.base import DatasetInfo, DatasetSplits, ShortcutDataset

CLASS_NAMES = ("benign", "malignant")
GROUP_NAMES = (
    "benign/no bandage",
    "benign/bandage",
    "malignant/no bandage",
    "malignant/bandage",
)
TASK = "skin-lesions"
CHUNK = 512

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
    rate = check_options(image_size, (n_train, n_val, n_test), bandage_rate, "bandage_rate")
    splits = []
    for k, (n, split_rate) in enumerate(
        ((n_train, rate), (n_val, (0.5, 0.5)), (n_test, (0.5, 0.5)))
    ):
        generator = torch.Generator().manual_seed(split_seed(seed, k))
        splits.append(generate_lesions(n, image_size, split_rate, generator))
    train = splits[0]
    mean, std = channel_stats(train.images)
    info = DatasetInfo(
        name="synth-lesions",
        class_names=CLASS_NAMES,
        channels=3,
        image_size=image_size,
        task=TASK,
        mean=mean,
        std=std,
        group_names=GROUP_NAMES,
        options={
            "seed": seed,
            "image_size": image_size,
            "n_train": n_train,
            "n_val": n_val,
            "n_test": n_test,
            "bandage_rate": list(rate),
        },
    )
    return DatasetSplits(info, *splits)


def generate_lesions(
    n: int, size: int, bandage_rate: Sequence[float], generator: torch.Generator
) -> ShortcutDataset:
    """`n` images of `size` px; class-balanced labels, bandages at `bandage_rate` per class."""
    labels = balanced_labels(n, generator)
    bandage = attribute_by_class(labels, bandage_rate, generator)
    images = torch.empty(n, 3, size, size)
    masks = torch.empty(n, size, size, dtype=torch.bool)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        images[start:stop], masks[start:stop] = _draw_chunk(
            labels[start:stop], bandage[start:stop], size, generator
        )
    return ShortcutDataset(images, labels, labels * 2 + bandage.long(), masks)


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


def smooth_noise(n: int, size: int, cells: int, generator: torch.Generator) -> Tensor:
    """Smooth random fields [n, size, size] in [0, 1]: a `cells` x `cells` grid, upsampled."""
    grid = torch.rand(n, 1, cells + 1, cells + 1, generator=generator)
    field = F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=True)
    return field[:, 0].clamp(0.0, 1.0)


def pixel_grid(size: int) -> tuple[Tensor, Tensor]:
    """Row and column coordinates [size, size] of the pixel centres."""
    axis = torch.arange(size, dtype=torch.float32)
    return torch.meshgrid(axis, axis, indexing="ij")


def balanced_labels(n: int, generator: torch.Generator, num_classes: int = 2) -> Tensor:
    """Labels 0 .. num_classes-1 in equal shares (up to rounding), in random order."""
    return (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]


def attribute_by_class(labels: Tensor, rate: Sequence[float], generator: torch.Generator) -> Tensor:
    """A bool attribute that holds for round(rate[c] * n_c) random samples of each class c."""
    out = torch.zeros(len(labels), dtype=torch.bool)
    for c, share in enumerate(rate):
        members = torch.nonzero(labels == c).flatten()
        chosen = members[torch.randperm(len(members), generator=generator)]
        out[chosen[: round(share * len(members))]] = True
    return out


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of [N, C, H, W] images, rounded to 4 decimals."""
    mean = images.mean(dim=(0, 2, 3))
    std = images.std(dim=(0, 2, 3)).clamp(min=1e-3)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def split_seed(seed: int, split: int) -> int:
    """Independent generator seeds for the train (0), val (1) and test (2) splits."""
    return (seed * 1_000_003 + 7919 * (split + 1)) % (2**63)


def check_options(
    image_size: int, sizes: Sequence[int], rate: Sequence[float], rate_name: str
) -> tuple[float, float]:
    """Validate the shared options of the synthetic datasets; return the rate as a pair."""
    if not 32 <= int(image_size) <= 512:
        raise ConfigError(f"image_size must be between 32 and 512 px, got {image_size}")
    for name, n in zip(("n_train", "n_val", "n_test"), sizes, strict=True):
        if int(n) < 2:
            raise ConfigError(f"{name} must be at least 2 (one image per class), got {n}")
    pair = tuple(float(r) for r in rate)
    if len(pair) != 2 or not all(0.0 <= r <= 1.0 for r in pair):
        raise ConfigError(
            f"{rate_name} must be two shares in [0, 1] (one per class), got {list(rate)}"
        )
    return pair


def _randn(n: int, generator: torch.Generator) -> Tensor:
    return torch.randn(n, generator=generator)
