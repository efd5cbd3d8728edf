"""A synthetic critique run, for tests, the review benchmark and the screenshots.

Nothing here is a model's output: the "attribution" is the image plus its ground-truth spurious
region plus noise, its clusters come from a few rounds of weighted k-means on pixel positions,
and the "verdicts" are the ground truth with a share of flips. The manifest says
`critic.kind = "synthetic"`, and every critique text starts with "Synthetic critique".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lvlmva.runs import CritiqueRun, RunManifest, RunRecord, SampleArrays
from lvlmva.vision.render import PALETTE, render_critic_images

_COLOURS = tuple(PALETTE)


def _blob_images(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Grey images [N, 1, S, S] with a bright stroke and a 4x4 corner square, and masks."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = np.zeros((n, 1, size, size), np.float32)
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        cy, cx, r = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0.15, 0.25)
        ring = np.abs(np.hypot(yy - cy, xx - cx) - r) < 0.05
        images[i, 0][ring] = rng.uniform(0.6, 1.0)
        r0, c0 = rng.choice([1, size - 5]), rng.choice([1, size - 5])
        masks[i, r0 : r0 + 4, c0 : c0 + 4] = True
        images[i, 0][masks[i]] = rng.uniform(0.3, 1.0)
    return images, masks


def synthetic_segmentation(
    rng: np.random.Generator, image: np.ndarray, spurious: np.ndarray, n_clusters: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(attribution [H, W], labels [H, W], responsibilities [J, H, W]) for one image."""
    h, w = spurious.shape
    attribution = image.sum(0) * rng.uniform(0.5, 1.5) + spurious * rng.uniform(0.5, 2.0)
    attribution = attribution + rng.normal(0, 0.05, (h, w))
    keep = attribution > 0.2
    pts = np.argwhere(keep).astype(np.float64)
    labels = np.full((h, w), -1, np.int64)
    resp = np.zeros((n_clusters, h, w), np.float32)
    if len(pts) < n_clusters:
        return attribution.astype(np.float32), labels, resp
    weights = attribution[keep]
    centres = pts[rng.choice(len(pts), n_clusters, replace=False)]
    for _ in range(5):
        d2 = ((pts[:, None, :] - centres[None]) ** 2).sum(-1)
        nearest = d2.argmin(1)
        for k in range(n_clusters):
            if (nearest == k).any():
                centres[k] = np.average(pts[nearest == k], axis=0, weights=weights[nearest == k])
    d2 = ((pts[:, None, :] - centres[None]) ** 2).sum(-1)
    logits = -d2 / 8.0
    post = np.exp(logits - logits.max(1, keepdims=True))
    post /= post.sum(1, keepdims=True)
    order = np.argsort(-post.sum(0))  # ids by weight, as PPEPS-WGM orders them
    post = post[:, order]
    rows, cols = pts[:, 0].astype(int), pts[:, 1].astype(int)
    labels[rows, cols] = post.argmax(1)
    resp[:, rows, cols] = post.T
    return attribution.astype(np.float32), labels, resp


def _record(rng, index, label, class_names, rendered, labels, spurious, flip) -> RunRecord:
    colours = rendered.colors
    truth = tuple(
        c for c, k in zip(colours, rendered.cluster_ids, strict=True)
        if spurious[labels == k].mean() > 0.5
    )
    status = rng.choice(["ok", "failed", "not_run"], p=[0.94, 0.04, 0.02])
    verdicts = {c: (c not in truth) != (rng.random() < flip) for c in colours}
    agreement = {c: 2 / 3 if rng.random() < 0.06 else 1.0 for c in colours}
    prediction = label if rng.random() < 0.8 else int(rng.integers(len(class_names)))
    sentences = []
    for c in colours:
        where = "sits on the corner square" if c in truth else "covers part of the stroke"
        sentences.append(f"The {c} cluster {where}: "
                         f"{'relevant' if verdicts[c] else 'not relevant'}.")
    critique = "Synthetic critique (no model wrote this). " + " ".join(sentences)
    ok = status == "ok"
    return RunRecord(
        index=index, split="train", label=int(label), class_name=class_names[label],
        status=str(status), colors=colours, cluster_ids=rendered.cluster_ids,
        prediction=int(prediction), confidence=float(rng.beta(5, 1.5)),
        critique=critique if ok else None, verdicts=verdicts if ok else None,
        agreement=agreement if ok else None, provider_calls=int(ok) * 2,
        cost_usd=0.0, error=None if ok else f"synthetic {status}", spurious_colors=truth,
    )


def build_synthetic_run(
    path: str | Path,
    n: int,
    *,
    images: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    spurious_masks: np.ndarray | None = None,
    class_names: tuple[str, ...] = tuple(str(d) for d in range(10)),
    n_clusters: int = 7,
    flip: float = 0.15,
    size: int = 336,
    masks: str = "soft",
    seed: int = 0,
    sync: bool = False,
) -> CritiqueRun:
    """Create and fill a synthetic run of `n` samples at `path` (see the module docstring).

    Without `images` ([N, C, H, W] in [0, 1]) it draws 28-px ring-and-square images; sample i
    uses image `i % N`. `size` is the rendered PNGs' side (336 as in a real run)."""
    rng = np.random.default_rng(seed)
    if images is None:
        images, spurious_masks = _blob_images(rng, min(n, 500), 28)
        labels = rng.integers(len(class_names), size=len(images))
    assert labels is not None and spurious_masks is not None
    manifest = RunManifest(
        dataset="synthetic", split="train", class_names=class_names, masks=masks,
        critic={"kind": "synthetic", "flip": flip}, dataset_options={"seed": seed},
        spec_version="synthetic", prompt_version="synthetic",
    )
    run = CritiqueRun.create(path, manifest, sync=sync)
    for i in range(n):
        j = i % len(images)
        attribution, cluster_labels, resp = synthetic_segmentation(
            rng, images[j], spurious_masks[j], n_clusters
        )
        rendered = render_critic_images(images[j], cluster_labels, size=size)
        record = _record(rng, i, int(labels[j]), class_names, rendered, cluster_labels,
                         spurious_masks[j], flip)
        arrays = SampleArrays(
            images={"original": rendered.original, "clusters": rendered.clusters,
                    "overlay": rendered.overlay},
            labels=cluster_labels, responsibilities=resp, attribution=attribution,
        )
        run.add(record, arrays)
    return run
