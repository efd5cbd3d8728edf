"""Correction masks from per-colour verdicts (pipeline stage 6).

The mask A(x) is the union of the pixels of every cluster judged "no" (spurious or irrelevant).
In soft mode a pixel of the segmented foreground gets the summed posterior responsibility of the
"no" clusters instead (clipped to [0, 1]); background pixels stay 0 in both modes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


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


def mask_from_verdicts(
    labels: Tensor,
    colors: Sequence[str],
    cluster_ids: Sequence[int],
    verdicts: Mapping[str, bool],
    *,
    responsibilities: Tensor | None = None,
    soft: bool = False,
) -> Tensor:
    """The correction mask [H, W] (float32, on `labels`' device) of one image.

    `labels` [H, W] holds cluster ids (-1 = background); `colors[i]` names cluster
    `cluster_ids[i]`; `verdicts` maps every colour to True ("yes", relevant) or False ("no").
    Hard mode: 1 on the pixels of the "no" clusters. Soft mode (needs `responsibilities`
    [J, H, W]): on foreground pixels the sum of the "no" clusters' responsibilities.
    """
    if labels.ndim != 2:
        raise ValueError(f"labels must be [H, W], got shape {tuple(labels.shape)}")
    rejected = rejected_cluster_ids(colors, cluster_ids, verdicts)
    if not soft:
        ids = torch.as_tensor(rejected, dtype=labels.dtype, device=labels.device)
        return torch.isin(labels, ids).to(torch.float32)
    if responsibilities is None:
        raise ValueError("soft masks need the responsibilities [J, H, W] of the segmentation")
    if responsibilities.ndim != 3 or responsibilities.shape[1:] != labels.shape:
        raise ValueError(
            f"responsibilities {tuple(responsibilities.shape)} do not match labels "
            f"{tuple(labels.shape)} as [J, H, W]"
        )
    bad = [k for k in rejected if not 0 <= k < responsibilities.shape[0]]
    if bad:
        raise ValueError(f"cluster ids {bad} are outside the {responsibilities.shape[0]} clusters")
    resp = responsibilities.to(device=labels.device, dtype=torch.float32)
    total = resp[rejected].sum(dim=0) if rejected else torch.zeros_like(resp[0])
    return total.clamp(0.0, 1.0) * (labels >= 0).to(torch.float32)

