"""The pictures of the static reports: bar and curve plots (matplotlib, labelled axes), clusters
outlined over the original, and the colour-scaled attribution and mask panels with their
colour bars (the review app's scales, `lvlmva.review.panels`)."""

from __future__ import annotations

import html
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
from PIL import Image

from lvlmva.review.panels import ATTRIBUTION_SCALE, MASK_SCALE, scale_stops
from lvlmva.vision.palette import PALETTE

__all__ = ["accuracy_plot", "colour_bar", "outlined_clusters", "png", "training_curves"]


def png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def accuracy_plot(rows: list[tuple[str, float, float]], names: tuple[str, str]) -> bytes:
    """Grouped bars of (label, before, after); y axis "accuracy" on [0, 1]."""
    fig, ax = plt.subplots(figsize=(max(5.2, 0.75 * len(rows) + 2), 3.0), dpi=100)
    xs = np.arange(len(rows))
    ax.bar(xs - 0.2, [r[1] for r in rows], 0.4, label=names[0])
    ax.bar(xs + 0.2, [r[2] for r in rows], 0.4, label=names[1])
    ax.set_xticks(list(xs), [r[0] for r in rows], fontsize=8, rotation=20 if len(rows) > 4 else 0)
    for container in ax.containers:
        ax.bar_label(container, fmt="%.2f", fontsize=7, padding=1)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("accuracy (test split)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return png(fig)


_UNITS = {"loss": "loss (CE + lambda * penalty)", "ce": "cross-entropy", "penalty": "RRR penalty",
          "step_time_s": "seconds per step", "pool_size": "masks in the pool",
          "val_accuracy": "validation accuracy", "val_wga": "validation WGA"}


def training_curves(history: Any) -> bytes | None:
    """Per-epoch curves of the trainer's history, each with its own labelled y axis."""
    if history is None:
        return None
    series = {
        name: values
        for name, values in vars(history).items()
        if isinstance(values, list) and values and all(isinstance(v, int | float) for v in values)
    }
    if not series:
        return None
    cols = min(3, len(series))
    rows = -(-len(series) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.7 * rows), dpi=100, squeeze=False)
    flat = list(axes.flat)
    for ax, (name, values) in zip(flat, series.items(), strict=False):
        ax.plot(range(1, len(values) + 1), values, marker="o")
        ax.set_title(name.replace("_", " "), fontsize=10)
        ax.set_xlabel("epoch", fontsize=9)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel(_UNITS.get(name, name.replace("_", " ")), fontsize=8)
        ax.grid(alpha=0.3)
    for ax in flat[len(series) :]:
        ax.axis("off")
    fig.tight_layout()
    return png(fig)


def outlined_clusters(
    image: np.ndarray, labels: np.ndarray, colors: tuple[str, ...], cluster_ids: tuple[int, ...],
    *, scale: int = 6,
) -> bytes:
    """The original (greyscale or RGB [C, H, W] in [0, 1]) upscaled, with each cluster's border
    drawn in its colour: the image stays visible inside the clusters, so a coloured cluster
    never hides a feature of the same colour."""
    pixels = np.rint(np.clip(np.asarray(image, dtype=np.float64), 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(pixels, 3, axis=0) if pixels.shape[0] == 1 else pixels
    rgb = rgb.transpose(1, 2, 0).repeat(scale, 0).repeat(scale, 1).copy()
    big = np.asarray(labels).repeat(scale, 0).repeat(scale, 1)
    edge = np.zeros(big.shape, dtype=bool)
    edge[:-1] |= big[:-1] != big[1:]
    edge[1:] |= big[1:] != big[:-1]
    edge[:, :-1] |= big[:, :-1] != big[:, 1:]
    edge[:, 1:] |= big[:, 1:] != big[:, :-1]
    for color, k in zip(colors, cluster_ids, strict=True):
        rgb[edge & (big == k)] = PALETTE[color]
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def colour_bar(kind: str, low: float, high: float) -> str:
    """An HTML colour bar (CSS gradient of the panel's scale) with its end values and middle."""
    stops = scale_stops(ATTRIBUTION_SCALE if kind == "attribution" else MASK_SCALE)
    middle = "0" if kind == "attribution" else "0.5"
    what = "attribution (blue against, red for the class)" if kind == "attribution" else (
        "mask (1 = spurious, penalised)")
    return (
        f"<div class='bar' title='{html.escape(what)}' style='background:linear-gradient(to "
        f"right,{','.join(stops)})'></div><div class='ticks'><span>{low:.2g}</span>"
        f"<span>{middle}</span><span>{high:.2g}</span></div>"
    )
