"""Which verdicts the neighbour consensus overturns, per kind of cluster, with uniform and with
Gaussian neighbour weights (`lvlmva.vision.consensus`).

    python bench/consensus_diagnosis.py --tasks synth-lesions patch stamp decoy-digits \\
        --seeds 0 --data-dir ../shared/data --json docs/data/robust/consensus_diagnosis.json

Each row runs `align` (one epoch: training does not change the verdicts) on a task of the
robust study with the **simulated LVLM** (an offline simulation answering from the ground-truth
masks; never a real model) at verdict accuracy 0.87, then pools the alignment samples' own
verdicts again with `neighbour_consensus` under both kernels (the uniform pooling reproduces
the run's own consensus; the script checks it). Clusters are sorted by their overlap with the
true spurious region: ``other`` (none), ``mixed`` (some, at most half of the cluster) and
``pure`` (more than half). Per kernel:

- ``spurious_pixels_flagged``: the share of the spurious pixels inside clusters that lie in
  flagged clusters (0/1 flags; what the consensus can reach of the foreground's share);
- ``other_flagged``, ``mixed_flagged``, ``pure_flagged``: the share of each kind flagged.

And per kind, ``neighbour_distance``: the mean distance to its k neighbours from other images,
in units of the median over all clusters (how alike its neighbours are); ``gaussian_weight``:
the mean sum of its k neighbours' Gaussian weights (k under uniform weights).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mask_quality  # a sibling script: its one-epoch run and command line

KINDS = ("other", "mixed", "pure")


def clusters_of(records, split) -> dict[str, Any]:
    """Descriptors, own "no" shares, owners, kinds, spurious pixel counts and the run's own
    consensus of every cluster of the critiqued samples."""
    from lvlmva.pipeline.options import CritiqueOptions
    from lvlmva.vision.consensus import cluster_descriptors

    n_clusters = CritiqueOptions().n_clusters  # aligned_once runs align's default J
    feats, own, owner, kind, pixels, run = [], [], [], [], [], []
    for position, r in enumerate(records):
        if r.verdicts is None or r.consensus is None:
            continue
        truth = split.spurious_masks[r.index].bool()
        image = split.images[r.index]
        descriptors = cluster_descriptors(image, r.cluster_labels, r.cluster_ids, n_clusters)
        for j, (color, cid) in enumerate(zip(r.colors, r.cluster_ids, strict=True)):
            member = r.cluster_labels == cid
            size, overlap = int(member.sum()), int((member & truth).sum())
            feats.append(descriptors[j])
            own.append(0.0 if r.verdicts[color] else 1.0)
            owner.append(position)
            kind.append("other" if overlap == 0 else "pure" if overlap > size / 2 else "mixed")
            pixels.append(overlap)
            run.append(float(r.consensus[color]))
    return {
        "features": torch.stack(feats), "own": torch.tensor(own), "owner": torch.tensor(owner),
        "kind": np.array(kind), "pixels": np.array(pixels), "run": torch.tensor(run),
    }  # fmt: skip


def summarise(c: dict[str, Any], k: int) -> dict[str, Any]:
    """The row's figures (module docstring)."""
    from lvlmva.vision.consensus import (
        neighbour_consensus,
        neighbour_weights,
        other_image_neighbours,
    )

    out: dict[str, Any] = {"clusters": {kind: int((c["kind"] == kind).sum()) for kind in KINDS}}
    for kernel in ("own", "uniform", "gaussian"):
        if kernel == "own":
            flags = c["own"].numpy() > 0.5
        else:
            pooled, _ = neighbour_consensus(c["features"], c["own"], c["owner"], k=k, kernel=kernel)
            flags = pooled.numpy() > 0.5
            if kernel == "uniform" and not torch.allclose(pooled, c["run"], atol=1e-3):
                raise SystemExit("the uniform pooling does not reproduce the run's consensus")
        covered = float(c["pixels"][flags].sum() / c["pixels"].sum())
        row = {"spurious_pixels_flagged": round(covered, 3)}
        for kind in KINDS:
            row[f"{kind}_flagged"] = round(float(flags[c["kind"] == kind].mean()), 4)
        out[kernel] = row
    dist, _, chosen = other_image_neighbours(c["features"], c["owner"], k)
    mean = (dist * chosen).sum(1) / k
    median = float(np.median(mean))
    out["neighbour_distance"] = {
        kind: round(float(mean[c["kind"] == kind].mean() / median), 2) for kind in KINDS
    }
    weight = (chosen * neighbour_weights(dist, chosen, k, "gaussian")).sum(1)
    out["gaussian_weight"] = {
        kind: round(float(weight[c["kind"] == kind].mean()), 2) for kind in KINDS
    }
    return out


def run(task_name: str, seed: int, data_dir: str | None, k: int) -> list[dict[str, Any]]:
    rows, setup = [], mask_quality.prepared(task_name, seed, data_dir)
    _, splits, _ = setup
    for error_model in ("independent", "ambiguity"):
        result = mask_quality.aligned_once(setup, seed, error_model, k)
        row = {"task": task_name, "seed": seed, "error_model": error_model, "neighbours": k}
        row.update(summarise(clusters_of(result.samples, splits.train), k))
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    mask_quality.main(argv, run=run, script="bench/consensus_diagnosis.py", doc=__doc__)


if __name__ == "__main__":
    main()
