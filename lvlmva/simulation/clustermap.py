"""Reading a cluster-map image back into clusters, and comparing them with a spurious mask.

This is the simulation's "eyesight". It uses PIL and numpy only (no vision code): every pixel
takes the nearest of black (background) and the palette colours, by RGB distance.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["ClusterFinding", "ClusterMap", "decode_cluster_map", "find_spurious", "resize_mask"]

STRAY_TOLERANCE = 60.0  # RGB distance beyond which a pixel matches no palette colour
MAX_STRAY_FRACTION = 0.05  # more stray pixels than this: the image is not a cluster map


@dataclass(frozen=True)
class ClusterMap:
    """`labels` [H, W]: 0 for background, k >= 1 for the k-th palette colour (`colors[k - 1]`
    of the palette's order); `present` lists the colours found, in palette order."""

    labels: np.ndarray
    names: tuple[str, ...]  # the whole palette, in order
    present: tuple[str, ...]
    counts: Mapping[str, int]


@dataclass(frozen=True)
class ClusterFinding:
    """What the simulation knows about one cluster."""

    color: str
    pixels: int
    overlap: int  # pixels on the ground-truth spurious region
    spurious: bool  # the truth, under the overlap rule
    row: float  # centroid, normalised to [0, 1]
    col: float
    share: float  # share of all highlighted pixels


def _palette_image(refs: tuple[tuple[int, int, int], ...]) -> Image.Image:
    flat = [v for rgb in refs for v in rgb]
    flat += [0, 0, 0] * (256 - len(refs))  # unused entries are black (background)
    image = Image.new("P", (1, 1))
    image.putpalette(flat)
    return image


def decode_cluster_map(png: bytes, palette: Mapping[str, tuple[int, int, int]]) -> ClusterMap:
    """Decode a cluster map. Raises ValueError when the bytes are not an image, when it has
    more than 4096 distinct colours, or when more than 5% of its pixels are farther than 60
    (RGB distance) from black and every palette colour: it is then not a cluster map drawn in
    this palette. Nearest-colour assignment runs in PIL (`quantize` with a fixed palette)."""
    if not palette or len(palette) > 255:
        raise ValueError(f"the palette must have 1 to 255 colours, got {len(palette)}")
    try:
        with Image.open(io.BytesIO(png)) as img:
            img.load()
            rgb = img if img.mode == "RGB" else img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"the cluster map is not a readable image ({exc})") from None
    w, h = rgb.size
    names = tuple(palette)
    refs = ((0, 0, 0), *(tuple(int(v) for v in palette[n]) for n in names))
    found = rgb.getcolors(4096)
    if found is None:
        raise ValueError(
            "the second image has more than 4096 distinct colours: it is not a cluster map"
        )
    counts = np.array([c for c, _ in found], dtype=np.int64)
    colours = np.array([rgb_ for _, rgb_ in found], dtype=np.float64)
    distance = np.linalg.norm(colours[:, None, :] - np.array(refs, np.float64)[None], axis=-1)
    stray = int(counts[distance.min(axis=1) > STRAY_TOLERANCE].sum())
    if stray > MAX_STRAY_FRACTION * h * w:
        raise ValueError(
            f"{stray / (h * w):.0%} of the pixels match neither black nor a palette colour: "
            "the second image does not look like a cluster map"
        )
    quantized = rgb.quantize(palette=_palette_image(refs), dither=Image.Dither.NONE)
    labels = np.asarray(quantized, dtype=np.uint8).copy()
    labels[labels >= len(refs)] = 0
    per_label = np.bincount(labels.ravel(), minlength=len(refs))
    present = tuple(n for k, n in enumerate(names, start=1) if per_label[k] > 0)
    return ClusterMap(
        labels=labels,
        names=names,
        present=present,
        counts={n: int(per_label[k]) for k, n in enumerate(names, start=1) if per_label[k] > 0},
    )


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask [h, w] to `shape` (exact for integer factors,
    the same index rule as the Critic images' upscaling)."""
    h, w = mask.shape
    if (h, w) == tuple(shape):
        return mask
    rows = (np.arange(shape[0]) * h) // shape[0]
    cols = (np.arange(shape[1]) * w) // shape[1]
    return mask[rows][:, cols]


def find_spurious(
    cluster_map: ClusterMap, mask: np.ndarray | None, *, min_overlap: float = 0.0
) -> list[ClusterFinding]:
    """One finding per cluster present. A cluster is truly spurious when at least
    `max(1, ceil(min_overlap * its pixels))` of its pixels lie on the spurious region, at the
    cluster map's resolution. The default (0.0) means a single pixel; no mask (an image the
    oracle does not know) means no cluster is spurious."""
    labels = cluster_map.labels
    h, w = labels.shape
    k = len(cluster_map.names) + 1
    flat = labels.ravel()
    pixels = np.bincount(flat, minlength=k)
    if mask is None:
        overlap = np.zeros(k, dtype=np.int64)
    else:
        on = resize_mask(np.asarray(mask, dtype=bool), (h, w)).ravel()
        overlap = np.bincount(flat[on], minlength=k)
    step = max(1, min(h, w) // 64)  # centroids (only used for wording) on a coarser grid
    coarse = labels[step // 2 :: step, step // 2 :: step]
    ch, cw = coarse.shape
    cflat = coarse.ravel()
    coarse_n = np.bincount(cflat, minlength=k)
    row_mean = np.bincount(cflat, weights=np.repeat(np.arange(ch) + 0.5, cw), minlength=k)
    col_mean = np.bincount(cflat, weights=np.tile(np.arange(cw) + 0.5, ch), minlength=k)
    row_mean = row_mean / np.maximum(coarse_n, 1) / ch
    col_mean = col_mean / np.maximum(coarse_n, 1) / cw
    for index in np.flatnonzero((coarse_n == 0) & (pixels > 0)):  # too small for the grid
        where = np.argwhere(labels == index) + 0.5
        row_mean[index], col_mean[index] = where.mean(axis=0) / (h, w)
    highlighted = max(1, int(pixels[1:].sum()))
    findings = []
    for index, name in enumerate(cluster_map.names, start=1):
        n = int(pixels[index])
        if n == 0:
            continue
        needed = max(1, math.ceil(min_overlap * n))
        findings.append(
            ClusterFinding(
                color=name,
                pixels=n,
                overlap=int(overlap[index]),
                spurious=int(overlap[index]) >= needed,
                row=float(row_mean[index]),
                col=float(col_mean[index]),
                share=n / highlighted,
            )
        )
    return findings
