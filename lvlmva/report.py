"""A self-contained HTML report of an alignment run: every image is embedded, so the file
can be mailed or opened anywhere."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import Tensor, nn

from lvlmva.vision.datasets.base import DatasetSplits
from lvlmva.vision.metrics import Metrics

if TYPE_CHECKING:
    from lvlmva.pipeline.records import AlignResult, SampleRecord

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:2em}
table{border-collapse:collapse}
td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}
.banner{padding:.6em 1em;background:#fff3cd;border:1px solid #e0c060;border-radius:4px}
.sample{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start;
border-top:1px solid #ccc;padding:12px 0}
.sample figure{margin:0;text-align:center;font-size:.8em}
.sample img{width:132px;height:132px;image-rendering:pixelated;border:1px solid #999}
.notes{flex:1;min-width:260px;font-size:.9em}
.verdicts{display:flex;flex-wrap:wrap;gap:4px;margin:6px 0}
.chip{padding:1px 6px;border-radius:10px;border:1px solid #bbb;white-space:nowrap}
.swatch{display:inline-block;width:.8em;height:.8em;margin-right:4px;border:1px solid #555;
vertical-align:-1px}
.critique{font-size:.85em;white-space:pre-wrap;max-height:190px;overflow:auto;
background:#f7f7f7;padding:4px 6px}
.yes{color:#176d2c;font-weight:600} .no{color:#b3261e;font-weight:600}
img{max-width:100%}
"""


def write_align_report(
    path: str | Path,
    result: AlignResult,
    splits: DatasetSplits,
    *,
    original_model: nn.Module,
    n_samples: int = 12,
    device: str | torch.device = "cpu",
) -> Path:
    """Write `path` (HTML) for an `AlignResult`; returns the path."""
    from lvlmva.vision.attribution import explain

    path = Path(path)
    shown = [s for s in result.samples if s.images][:n_samples] or result.samples[:n_samples]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>lvlm-va alignment report</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>lvlm-va alignment report: {html.escape(splits.info.name)}</h1>",
        _critic_banner(result),
        _metrics_table(result),
        _selection_html(result),
        "<h2>Accuracy before and after alignment</h2>",
        _img(_accuracy_plot(result.before, result.after), "accuracy before and after", width=520),
    ]
    curves = _training_curves(result.history)
    if curves is not None:
        parts += ["<h2>Alignment training</h2>", _img(curves, "training curves")]
    if shown:
        idx = torch.tensor([s.index for s in shown])
        images = splits.train.images[idx]
        labels = splits.train.labels[idx]
        kwargs = {"baselines": splits.train.images, "device": device, "seed": 0}
        before = explain(original_model, images, labels, **kwargs)
        after = explain(result.model, images, labels, **kwargs)
        parts.append(f"<h2>Alignment samples ({len(shown)} of {len(result.samples)})</h2>")
        for j, sample in enumerate(shown):
            parts.append(_sample_html(sample, images[j], before[j], after[j]))
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _critic_banner(result: AlignResult) -> str:
    critic = result.critic
    if critic.kind == "simulated":
        text = (
            "Critic: <b>simulated LVLM</b>, an offline simulation that answers from the "
            f"dataset's ground-truth spurious masks with verdict accuracy "
            f"{critic.simulation.verdict_accuracy:.2f}. It is not a real model."
        )
    elif critic.kind == "ground-truth":
        text = "No LVLM: the ground-truth spurious masks were used as correction masks."
    else:
        text = (
            f"Critic: {html.escape(critic.critic_model)}; Judge: "
            f"{html.escape(critic.judge_model)} ({html.escape(critic.kind)})."
        )
    return f"<p class='banner'>{text}</p>"


_HEADLINE = (("test accuracy", "test_accuracy"), ("AGA", "aga"), ("WGA", "wga"))


def _metrics_table(result: AlignResult) -> str:
    before, after = result.before, result.after
    body = "".join(
        f"<tr><td>{label}</td><td>{getattr(before, name):.4f}</td>"
        f"<td>{getattr(after, name):.4f}</td></tr>"
        for label, name in _HEADLINE
        if getattr(before, name) is not None
    )
    facts = [
        "original model kept" if result.lam is None else f"lambda {result.lam:g}",
        f"{result.n_masks} masks from {len(result.samples)} alignment samples",
        f"LVLM calls {result.provider_calls}",
        f"cache hits {result.cache_hits}",
        f"cost ${result.cost_usd:.4f}",
    ]
    verdict = result.verdict_accuracy
    if verdict is not None and verdict.accuracy == verdict.accuracy:  # not NaN
        facts.append(f"verdict accuracy {verdict.accuracy:.3f}")
    return (
        "<table><tr><th>metric</th><th>before</th><th>after</th></tr>"
        f"{body}</table><p>{html.escape('; '.join(facts))}</p>"
    )


def _selection_html(result: AlignResult) -> str:
    """Which model was returned and why; a warning banner when the original was kept."""
    selection = result.selection
    if selection is None:
        return ""
    robust = result.robust
    overturned = ""
    if robust.get("clusters"):
        overturned = (
            f" Robust verdicts: {robust['votes']} Critic sample(s) per image, "
            f"{robust['neighbours']} neighbours; the neighbours overturned "
            f"{robust['overturned_no_to_yes']} 'no' and {robust['overturned_yes_to_no']} 'yes' "
            f"of {robust['clusters']} verdicts (marked below)."
        )
    text = html.escape(selection.describe() + overturned)
    style = " class='banner'" if selection.warning else ""
    return f"<h2>Model choice</h2><p{style}>{text}</p>"


def _accuracy_plot(before: Metrics, after: Metrics) -> bytes:
    names = [(label, name) for label, name in _HEADLINE if getattr(before, name) is not None]
    fig, ax = plt.subplots(figsize=(5.2, 2.8), dpi=100)
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [getattr(before, n) for _, n in names], 0.4, label="before")
    ax.bar([x + 0.2 for x in xs], [getattr(after, n) for _, n in names], 0.4, label="after")
    ax.set_xticks(list(xs), [label for label, _ in names])
    for container in ax.containers:
        ax.bar_label(container, fmt="%.2f", fontsize=7, padding=1)
    ax.set_ylim(0, 1.12)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _training_curves(history: Any) -> bytes | None:
    """Per-epoch curves from the trainer's history (whatever series it recorded)."""
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
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), dpi=100, squeeze=False)
    flat = list(axes.flat)
    for ax, (name, values) in zip(flat, series.items(), strict=False):
        ax.plot(range(1, len(values) + 1), values, marker="o")
        ax.set_title(name.replace("_", " "), fontsize=10)
        ax.set_xlabel("epoch", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in flat[len(series) :]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def _sample_html(sample: SampleRecord, image: Tensor, before: Tensor, after: Tensor) -> str:
    figures = [
        _figure(sample.images[name], name)
        for name in ("original", "clusters", "overlay")
        if name in sample.images
    ]
    figures.append(_figure(_heatmap(image, before), "attribution before"))
    figures.append(_figure(_heatmap(image, after), "attribution after"))
    if sample.mask is not None:
        figures.append(_figure(_heatmap(image, sample.mask.unsqueeze(0), cmap="Reds"), "mask"))
    consensus = sample.consensus or {}
    verdicts = "".join(
        _verdict_chip(c, ok, overturned=c in consensus and (consensus[c] > 0.5) == ok)
        for c, ok in (sample.verdicts or {}).items()
    )
    text = sample.critique or sample.error or sample.status
    return (
        f"<div class='sample'>{''.join(figures)}<div class='notes'><b>#{sample.index}, class "
        f"{html.escape(sample.class_name)}</b> ({html.escape(sample.status)})"
        f"<div class='verdicts'>{verdicts}</div>"
        f"<div class='critique'>{html.escape(text or '')}</div></div></div>"
    )


def _verdict_chip(color: str, relevant: bool, *, overturned: bool = False) -> str:
    """`colour: yes|no` with a swatch of the cluster's colour as drawn in the cluster map;
    `overturned`: similar clusters of other images disagreed, and their verdict was used."""
    from lvlmva.vision.render import PALETTE

    rgb = PALETTE.get(color)
    swatch = f"<span class='swatch' style='background:rgb{rgb}'></span>" if rgb else ""
    word = "yes" if relevant else "no"
    label = f"{swatch}{html.escape(color)}: <span class='{word}'>{word}</span>"
    if overturned:
        label += " (overturned by similar clusters)"
    return f"<span class='chip'>{label}</span>"


def _heatmap(image: Tensor, values: Tensor, cmap: str = "bwr") -> bytes:
    """Attribution (or mask) over the greyscale image."""
    grey = image.float().mean(0).cpu().numpy()
    heat = values.float().sum(0).cpu().numpy()
    fig, ax = plt.subplots(figsize=(1.68, 1.68), dpi=100)
    ax.imshow(grey, cmap="gray", interpolation="nearest")
    if cmap == "bwr":
        bound = float(abs(heat).max()) or 1.0
        ax.imshow(heat, cmap=cmap, vmin=-bound, vmax=bound, alpha=0.6, interpolation="nearest")
    else:
        ax.imshow(heat, cmap=cmap, vmin=0, vmax=1, alpha=0.5, interpolation="nearest")
    ax.axis("off")
    fig.subplots_adjust(0, 0, 1, 1)
    return _png(fig)


def _figure(png: bytes, caption: str) -> str:
    return f"<figure>{_img(png, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _img(png: bytes, alt: str, width: int | None = None) -> str:
    data = base64.b64encode(png).decode("ascii")
    size = f" style='width:{width}px'" if width else ""
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'{size}>"


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
