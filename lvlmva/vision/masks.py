"""Correction masks from per-colour verdicts (pipeline stage 6).

The mask A(x) is the union of the pixels of every cluster judged "no" (spurious or irrelevant).
In soft mode a pixel of the segmented foreground gets the summed posterior responsibility of the
"no" clusters instead (clipped to [0, 1]); background pixels stay 0 in both modes.

The rule is written once, in numpy (`mask_array`), so that the run store and the review server
apply it without loading torch; `mask_from_verdicts` is its thin torch wrapper for the pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["mask_array", "mask_from_verdicts", "rejected_cluster_ids"]


def rejected_cluster_ids(
    colors: Sequence[str], cluster_ids: Sequence[int], verdicts: Mapping[str, bool]
) -> list[int]:
    """The cluster ids whose colour got the verdict False ("no").

    Verdicts must name exactly the colours given; anything else is a programming error
    (the engine validates answers first) and raises ValueError.
    """
    if len(colors) != len(cluster_ids):
        raise ValueError(f"{len(colors)} colours for {len(cluster_ids)} cluster ids")
    if len(set(colors)) != len(colors):
        raise ValueError(f"colours repeat: {list(colors)}")
    unknown = sorted(set(verdicts) - set(colors))
    missing = [c for c in colors if c not in verdicts]
    if unknown or missing:
        raise ValueError(
            f"verdicts must name exactly the colours {list(colors)}; "
            f"unknown: {unknown}, missing: {missing}"
        )
    return [int(k) for c, k in zip(colors, cluster_ids, strict=True) if not verdicts[c]]


def mask_array(
    labels: np.ndarray,
    colors: Sequence[str],
    cluster_ids: Sequence[int],
    verdicts: Mapping[str, bool],
    *,
    responsibilities: np.ndarray | None = None,
    soft: bool = False,
) -> np.ndarray:
    """The correction mask [H, W] float32 of one image (numpy in, numpy out).

    `labels` [H, W] holds cluster ids (-1 = background); `colors[i]` names cluster
    `cluster_ids[i]`; `verdicts` maps every colour to True ("yes", relevant) or False ("no").
    Hard mode: 1 on the pixels of the "no" clusters. Soft mode (needs `responsibilities`
    [J, H, W]): on foreground pixels the sum of the "no" clusters' responsibilities, added in
    the order of `cluster_ids` and clipped to [0, 1].
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be [H, W], got shape {tuple(labels.shape)}")
    rejected = rejected_cluster_ids(colors, cluster_ids, verdicts)
    if not soft:
        return np.isin(labels, np.asarray(rejected, dtype=np.int64)).astype(np.float32)
    if responsibilities is None:
        raise ValueError("soft masks need the responsibilities [J, H, W] of the segmentation")
    resp = np.asarray(responsibilities)
    if resp.ndim != 3 or resp.shape[1:] != labels.shape:
        raise ValueError(
            f"responsibilities {tuple(resp.shape)} do not match labels "
            f"{tuple(labels.shape)} as [J, H, W]"
        )
    bad = [k for k in rejected if not 0 <= k < resp.shape[0]]
    if bad:
        raise ValueError(f"cluster ids {bad} are outside the {resp.shape[0]} clusters")
    total = np.zeros(labels.shape, dtype=np.float32)
    for k in rejected:  # one fixed order of additions: the same float32 sum everywhere
        total += resp[k].astype(np.float32, copy=False)
    np.clip(total, 0.0, 1.0, out=total)
    total *= labels >= 0
    return total


def mask_from_verdicts(
    labels: Tensor,
    colors: Sequence[str],
    cluster_ids: Sequence[int],
    verdicts: Mapping[str, bool],
    *,
    responsibilities: Tensor | None = None,
    soft: bool = False,
) -> Tensor:
    """`mask_array` on torch tensors: the mask [H, W] float32 on `labels`' device."""
    import torch

    if labels.ndim != 2:
        raise ValueError(f"labels must be [H, W], got shape {tuple(labels.shape)}")
    resp = None if responsibilities is None else responsibilities.detach().cpu().numpy()
    mask = mask_array(
        labels.detach().cpu().numpy(), colors, cluster_ids, verdicts,
        responsibilities=resp, soft=soft,
    )  # fmt: skip
    return torch.from_numpy(mask).to(labels.device)
