"""Static HTML reports for sharing: an alignment run (`write_align_report`) and a baseline
(`write_baseline_report`).

Up to `EMBED_LIMIT` samples the report is one self-contained file (images embedded); with more,
the sample images go to a folder beside it (`report_files/`, loaded lazily by the browser), so
`--report-samples 1000` stays a small HTML file.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lvlmva import report_figures as fig
from lvlmva.vision.datasets.base import DatasetSplits

if TYPE_CHECKING:
    from lvlmva.pipeline.records import AlignResult, SampleRecord
    from lvlmva.prompts import TaskSpec

EMBED_LIMIT = 24

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1250px;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:2em}
table{border-collapse:collapse} caption{text-align:left;font-size:.85em;color:#555}
td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right}
th.desc{text-align:left}
th:first-child,td:first-child{text-align:left}
tr.headline td{font-weight:600} td.desc{text-align:left;max-width:60em}
.banner{padding:.6em 1em;background:#fff3cd;border:1px solid #e0c060;border-radius:4px}
.sample{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start;
border-top:1px solid #ccc;padding:12px 0}
.sample figure{margin:0;text-align:center;font-size:.78em;width:132px}
.sample img{width:132px;height:132px;image-rendering:pixelated;border:1px solid #999}
.bar{height:8px;border:1px solid #999;margin-top:2px}
.ticks{display:flex;justify-content:space-between;font-size:.9em;color:#444}
.notes{flex:1;min-width:280px;font-size:.9em}
.verdicts{display:flex;flex-wrap:wrap;gap:4px;margin:6px 0}
.chip{padding:1px 6px;border-radius:10px;border:1px solid #bbb;white-space:nowrap}
.chip.no{border-style:dashed} .chip.wrong{border:2px solid #b3261e;background:#fdecea}
.swatch{display:inline-block;width:.8em;height:.8em;margin-right:4px;border:1px solid #555;
vertical-align:-1px}
.critique{font-size:.85em;white-space:pre-wrap;max-height:190px;overflow:auto;
background:#f7f7f7;padding:4px 6px}
.yes{color:#176d2c;font-weight:600} .no{color:#b3261e;font-weight:600}
img{max-width:100%}
"""

STATUS_TEXT = {
    "ok": "critiqued: the Judge's verdicts passed validation and made the mask",
    "failed": "critique failed: no verdicts, so no mask (never a guessed one)",
    "not_run": "not critiqued: the budget was reached or the run was stopped first",
    "ground-truth": "no LVLM: the dataset's true spurious mask is the correction mask",
}


class _Images:
    """Embeds images (data URLs) or, past `EMBED_LIMIT` samples, writes them beside the report."""

    def __init__(self, report: Path, embed: bool) -> None:
        self.embed = embed
        self.folder = report.with_name(f"{report.stem}_files")
        self.count = 0

    def tag(self, data: bytes, alt: str, width: int | None = None) -> str:
        size = f" style='width:{width}px'" if width else ""
        if self.embed:
            src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
            return f"<img alt='{html.escape(alt)}' src='{src}'{size}>"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.count += 1
        name = f"{self.count:06d}.png"
        (self.folder / name).write_bytes(data)
        return (f"<img alt='{html.escape(alt)}' loading='lazy' "
                f"src='{self.folder.name}/{name}'{size}>")

    def figure(self, data: bytes, caption: str, extra: str = "") -> str:
        return (f"<figure>{self.tag(data, caption)}{extra}"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def write_align_report(
    path: str | Path,
    result: AlignResult,
    splits: DatasetSplits,
    *,
    original_model: nn.Module,
    n_samples: int = 12,
    device: str | torch.device = "cpu",
    spec: TaskSpec | None = None,
) -> Path:
    """Write `path` (HTML) for an `AlignResult`; returns the path."""
    path = Path(path)
    shown = [s for s in result.samples if s.images][:n_samples] or result.samples[:n_samples]
    images = _Images(path, embed=len(shown) <= EMBED_LIMIT)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>lvlm-va alignment report</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>lvlm-va alignment report: {html.escape(splits.info.name)}</h1>",
        _critic_banner(result),
        _metrics_table(result.before.to_dict(), result.after.to_dict(), ("before", "after")),
        f"<p>{html.escape('; '.join(_facts(result)))}</p>",
        _selection_html(result),
        "<h2>Accuracy before and after alignment</h2>",
        images.tag(fig.accuracy_plot(_plot_rows(result.before.to_dict(), result.after.to_dict()),
                                     ("before", "after")), "accuracy before and after"),
    ]
    curves = fig.training_curves(result.history)
    if curves is not None:
        parts += ["<h2>Alignment training</h2>", images.tag(curves, "training curves")]
    if spec is not None:
        parts.append(_class_table(spec))
    if shown:
        parts.append(f"<h2>Alignment samples ({len(shown)} of {len(result.samples)})</h2>")
        parts.append(_legend())
        parts += _samples_html(shown, result, splits, original_model, device, images)
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
    unreliable = result.robust.get("warning")
    extra = f"<p class='banner'>WARNING: {html.escape(unreliable)}</p>" if unreliable else ""
    return f"<p class='banner'>{text}</p>{extra}"


_HEADLINE = (("test accuracy", "test_accuracy"), ("AGA", "aga"), ("WGA (worst group)", "wga"))


def _metrics_table(before: dict, after: dict, names: tuple[str, str]) -> str:
    """Headline rows, then one row per group (the groups' accuracies behind AGA and WGA)."""
    rows = [
        f"<tr class='headline'><td>{label}</td><td>{before[key]:.4f}</td>"
        f"<td>{after[key]:.4f}</td><td>{after[key] - before[key]:+.4f}</td></tr>"
        for label, key in _HEADLINE
        if before.get(key) is not None
    ]
    groups_before, groups_after = before.get("group_accuracy") or {}, after.get(
        "group_accuracy") or {}
    worst = min(groups_after, key=groups_after.get) if groups_after else None
    for group, value in groups_before.items():
        mark = " (worst after)" if group == worst else ""
        later = groups_after.get(group, float("nan"))
        rows.append(f"<tr><td>group: {html.escape(str(group))}{mark}</td><td>{value:.4f}</td>"
                    f"<td>{later:.4f}</td><td>{later - value:+.4f}</td></tr>")
    return (
        f"<table><caption>test split, {before.get('n', '?')} images</caption><tr><th>metric</th>"
        f"<th>{names[0]}</th><th>{names[1]}</th><th>change</th></tr>{''.join(rows)}</table>"
    )


def _plot_rows(before: dict, after: dict) -> list[tuple[str, float, float]]:
    rows = [(label.split(" (")[0], before[key], after[key]) for label, key in _HEADLINE
            if before.get(key) is not None]
    groups = before.get("group_accuracy") or {}
    if len(groups) <= 8:
        rows += [(str(g), v, (after.get("group_accuracy") or {}).get(g, 0.0))
                 for g, v in groups.items()]
    return rows


def _facts(result: AlignResult) -> list[str]:
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
    return facts


def _class_table(spec: TaskSpec) -> str:
    rows = "".join(f"<tr><td>{html.escape(c.name)}</td><td class='desc'>"
                   f"{html.escape(c.description)}</td></tr>" for c in spec.classes)
    notes = f"<p><b>Task notes</b> (known spurious features): {html.escape(spec.notes)}</p>" \
        if spec.notes else ""
    return (f"<h2>What each class should look like (task spec {html.escape(spec.task)})</h2>"
            "<table><tr><th>class</th><th class='desc'>description the Critic was given</th>"
            f"</tr>{rows}</table>{notes}")


def _legend() -> str:
    items = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
                    for k, v in STATUS_TEXT.items())
    return (
        "<p>Per sample: the Critic's original image; the clusters outlined on it in their "
        "colours; the overlay the Critic saw; the attribution for the true class before and "
        "after alignment (scaled to +-max|a| of each map); the correction mask. A verdict chip "
        "with a red border disagrees with the dataset's ground truth (where it has one).</p>"
        f"<ul>{items}</ul>"
    )


def _kernel_words(robust: dict) -> str:
    """How the neighbours were weighted, where it is not the plain (uniform) vote."""
    kernel = robust.get("neighbour_kernel", "uniform")
    return "" if kernel == "uniform" else f" weighted by likeness ({kernel} kernel)"


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
            f"{robust['neighbours']} neighbours{_kernel_words(robust)}; the neighbours overturned "
            f"{robust['overturned_no_to_yes']} 'no' and {robust['overturned_yes_to_no']} 'yes' "
            f"of {robust['clusters']} verdicts (marked below)."
        )
    text = html.escape(selection.describe() + overturned)
    style = " class='banner'" if selection.warning else ""
    return f"<h2>Model choice</h2><p{style}>{text}</p>"


@torch.no_grad()
def _predictions(model: nn.Module, images: Tensor, device) -> tuple[Tensor, Tensor]:
    model.eval()
    probs = model(images.to(device)).softmax(dim=-1).cpu()
    return probs.max(dim=-1)


def _samples_html(shown, result, splits, original_model, device, images: _Images) -> list[str]:
    from lvlmva.vision.attribution import explain

    idx = torch.tensor([s.index for s in shown])
    pictures, labels = splits.train.images[idx], splits.train.labels[idx]
    kwargs = {"baselines": splits.train.images, "device": device, "seed": 0}
    before = explain(original_model, pictures, labels, **kwargs)
    after = explain(result.model, pictures, labels, **kwargs)
    predicted = (_predictions(original_model, pictures, device),
                 _predictions(result.model, pictures, device))
    names = splits.info.class_names
    truth = splits.train.spurious_masks
    out = []
    for j, sample in enumerate(shown):
        said = [(names[int(p[1][j])], float(p[0][j])) for p in predicted]
        region = None if truth is None else truth[sample.index].bool()
        out.append(_sample_html(sample, pictures[j], before[j], after[j], said, region, images))
    return out


def _sample_html(
    sample: SampleRecord, image: Tensor, before: Tensor, after: Tensor,
    said: list[tuple[str, float]], region: Tensor | None, images: _Images,
) -> str:
    from lvlmva.review.panels import attribution_panel, mask_panel

    figures = []
    if "original" in sample.images:
        figures.append(images.figure(sample.images["original"], "original"))
    if sample.colors:
        outline = fig.outlined_clusters(image.numpy(), sample.cluster_labels.cpu().numpy(),
                                        sample.colors, sample.cluster_ids)
        figures.append(images.figure(outline, "clusters outlined"))
    if "overlay" in sample.images:
        figures.append(images.figure(sample.images["overlay"], "overlay (Critic)"))
    for name, values in (("attribution before", before), ("attribution after", after)):
        panel = attribution_panel(values.sum(0).numpy())
        figures.append(images.figure(panel.png, name,
                                     fig.colour_bar("attribution", panel.low, panel.high)))
    if sample.mask is not None:
        panel = mask_panel(sample.mask.cpu().numpy())
        figures.append(images.figure(panel.png, "mask", fig.colour_bar("mask", 0.0, 1.0)))
    wrong = _wrong_colors(sample, region)
    consensus = sample.consensus or {}
    chips = "".join(
        _verdict_chip(c, ok, c in wrong, overturned=c in consensus and (consensus[c] > 0.5) == ok)
        for c, ok in (sample.verdicts or {}).items()
    )
    status = STATUS_TEXT.get(sample.status, sample.status)
    text = sample.critique or sample.error or ""
    (first, p_first), (second, p_second) = said
    return (
        f"<div class='sample'>{''.join(figures)}<div class='notes'><b>#{sample.index}, class "
        f"{html.escape(sample.class_name)}</b>; predicted {html.escape(first)} (p={p_first:.2f}) "
        f"before, {html.escape(second)} (p={p_second:.2f}) after<br>"
        f"<i>{html.escape(status)}</i>"
        f"<div class='verdicts'>{chips}</div>"
        f"<div class='critique'>{html.escape(text)}</div></div></div>"
    )


def _wrong_colors(sample: SampleRecord, region: Tensor | None) -> set[str]:
    """Colours whose verdict differs from the ground truth: a cluster touching the spurious
    region should be "no", any other "yes"."""
    if region is None or not sample.verdicts:
        return set()
    labels = sample.cluster_labels.cpu()
    wrong = set()
    for color, k in zip(sample.colors, sample.cluster_ids, strict=True):
        spurious = bool(((labels == k) & region).any())
        if sample.verdicts.get(color) == spurious:  # True = "yes"
            wrong.add(color)
    return wrong


def _verdict_chip(
    color: str, relevant: bool, wrong: bool = False, *, overturned: bool = False
) -> str:
    """`colour: yes|no` with a swatch of the cluster's colour; flagged when it is wrong;
    `overturned`: similar clusters of other images disagreed, and their verdict was used."""
    from lvlmva.vision.palette import PALETTE

    rgb = PALETTE.get(color)
    swatch = f"<span class='swatch' style='background:rgb{rgb}'></span>" if rgb else ""
    word = "yes" if relevant else "no"
    flag = f" (ground truth: {'no' if relevant else 'yes'})" if wrong else ""
    classes = "chip" + ("" if relevant else " no") + (" wrong" if wrong else "")
    label = f"{swatch}{html.escape(color)}: <span class='{word}'>{word}</span>{flag}"
    if overturned:
        label += " (overturned by similar clusters)"
    return f"<span class='{classes}'>{label}</span>"


def write_baseline_report(path: str | Path, metrics: dict[str, Any]) -> Path:
    """Write `path` (HTML) for a baseline's metrics.json content; returns the path."""
    path = Path(path)
    images = _Images(path, embed=True)
    method = str(metrics["method"]).upper()
    before, after = metrics["before"], metrics["after"]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>lvlm-va {method} report"
        f"</title><style>{_STYLE}</style></head><body>",
        f"<h1>lvlm-va baseline report: {method} on {html.escape(str(metrics['dataset']))} "
        f"({html.escape(str(metrics['arch']))})</h1>",
        _metrics_table(before, after, ("original", method)),
        images.tag(fig.accuracy_plot(_plot_rows(before, after), ("original", method)),
                   "accuracy of the original model and the baseline"),
        "<h2>Chosen setting</h2><p>" + html.escape(", ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in metrics["params"].items())) + "</p>",
    ]
    if metrics.get("val_wga"):
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>"
                       for k, v in metrics["val_wga"].items())
        parts.append("<table><caption>validation worst-group accuracy of every setting tried"
                     f"</caption><tr><th>setting</th><th>val WGA</th></tr>{rows}</table>")
    fits = metrics.get("convergence")
    if fits:
        parts.append(f"<p>{fits['not_converged']} of {fits['fits']} logistic regressions "
                     f"stopped at max_iter={fits['max_iter']} before converging (counted, not "
                     "warned one by one; their heads are still used).</p>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
