"""Comparing the clusters of a decoded cluster map with a ground-truth spurious mask.

This is the simulation's judgement of what it sees. Its "eyesight" is the vision side's
`lvlmva.vision.render.decode_cluster_map` (nearest palette colour, black = background), which
owns the rendering conventions; the mask is resized to the map with the same nearest-neighbour
rule as the Critic images' upscaling (`lvlmva.vision.render.resize_nearest`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import maximum_filter

from lvlmva.vision.render import ClusterMap, resize_nearest

__all__ = ["ClusterFinding", "find_spurious"]


@dataclass(frozen=True)
class ClusterFinding:
    """What the simulation knows about one cluster."""

    color: str
    pixels: int
    overlap: int  # pixels on the ground-truth spurious region
    near: int  # pixels off the region but within the `band` around it (0 without a band)
    spurious: bool  # the truth, under the overlap rule
    row: float  # centroid, normalised to [0, 1]
    col: float
    share: float  # share of all highlighted pixels


def find_spurious(
    cluster_map: ClusterMap,
    mask: np.ndarray | None,
    *,
    min_overlap: float = 0.0,
    band: float = 0.0,
) -> list[ClusterFinding]:
    """One finding per cluster present. A cluster is truly spurious when at least
    `max(1, ceil(min_overlap * its pixels))` of its pixels lie on the spurious region, at the
    cluster map's resolution. The default (0.0) means a single pixel; no mask (an image the
    oracle does not know) means no cluster is spurious. `band` (a share of the map's shorter
    side) counts each cluster's pixels `near` the region: off it, but within that many pixels
    of it along both axes (a square neighbourhood)."""
    labels = cluster_map.labels + 1  # 0 = background, k = the k-th palette colour
    h, w = labels.shape
    k = len(cluster_map.names) + 1
    flat = labels.ravel()
    pixels = np.bincount(flat, minlength=k)
    overlap = near = np.zeros(k, dtype=np.int64)
    if mask is not None:
        region = resize_nearest(np.asarray(mask, dtype=bool), (h, w))
        overlap = np.bincount(flat[region.ravel()], minlength=k)
        radius = round(band * min(h, w))
        if radius > 0 and region.any():
            around = maximum_filter(region, size=2 * radius + 1, mode="constant") & ~region
            near = np.bincount(flat[around.ravel()], minlength=k)
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
                near=int(near[index]),
                spurious=int(overlap[index]) >= needed,
                row=float(row_mean[index]),
                col=float(col_mean[index]),
                share=n / highlighted,
            )
        )
    return findings
