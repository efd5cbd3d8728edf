"""Evaluation: accuracy, per-group accuracy, AGA / WGA, verdict accuracy against ground-truth
spurious masks, and the statistics used across seeds (mean +- std, Wilcoxon signed-rank)."""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from lvlmva.errors import DataError
from lvlmva.vision.datasets.base import DatasetInfo, ShortcutDataset
from lvlmva.vision.modes import eval_mode, on_device

MIN_GROUP = 30  # a group's accuracy has a standard error of at most 0.5 / sqrt(30) = 0.09


@dataclass(frozen=True)
class Metrics:
    """Accuracy on a dataset; with groups also the accuracy of every group that has samples,
    their mean (AGA, average group accuracy) and minimum (WGA, worst group accuracy)."""

    test_accuracy: float
    group_accuracy: dict[str, float] | None
    aga: float | None
    wga: float | None
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def predict_labels(
    model: nn.Module, images: Tensor, *, batch_size: int = 256, device: str | torch.device = "cpu"
) -> Tensor:
    """Predicted classes [N] (on the CPU); the model runs on `device` in eval mode (its previous
    device and mode are restored)."""
    device = torch.device(device)
    with on_device(model, device), eval_mode(model):
        out = [
            model(images[i : i + batch_size].to(device)).argmax(dim=1).cpu()
            for i in range(0, len(images), batch_size)
        ]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def evaluate(
    model: nn.Module,
    dataset: ShortcutDataset,
    info: DatasetInfo | None = None,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> Metrics:
    """Metrics of `model` on `dataset`. Group names come from `info.group_names` (else
    "group <id>"); groups with no samples are left out of AGA and WGA."""
    if len(dataset) == 0:
        raise DataError("cannot evaluate on an empty dataset")
    correct = predict_labels(model, dataset.images, batch_size=batch_size, device=device).eq(
        dataset.labels.cpu()
    )
    accuracy = float(correct.float().mean())
    if dataset.groups is None:
        return Metrics(accuracy, None, None, None, len(dataset))
    groups = dataset.groups.cpu().long()
    names = info.group_names if info is not None else None
    per_group: dict[str, float] = {}
    for g in torch.unique(groups).tolist():
        if names is not None and not 0 <= g < len(names):
            raise DataError(f"group id {g} has no name: the dataset info names {len(names)} groups")
        name = names[g] if names is not None else f"group {g}"
        per_group[name] = float(correct[groups == g].float().mean())
    values = list(per_group.values())
    return Metrics(accuracy, per_group, sum(values) / len(values), min(values), len(dataset))


def worst_of_groups(correct: Tensor, groups: Tensor, ids: Sequence[int]) -> float:
    """The lowest accuracy over the groups `ids`, from per-sample `correct` flags."""
    if not ids:
        raise ValueError("no groups to score")
    groups = groups.cpu()
    return min(float(correct[groups == g].float().mean()) for g in ids)


def usable_groups(dataset: ShortcutDataset, min_group: int = MIN_GROUP) -> list[int]:
    """Group ids whose worst-group accuracy can reveal a shortcut: the groups of at least
    `min_group` samples, when some class has two or more of them; else [] (also without
    groups). Groups that follow the class one to one (decoy-digits' validation split) measure
    only class accuracy, which the shortcut itself earns."""
    if dataset.groups is None or len(dataset) == 0:
        return []
    groups, labels = dataset.groups.cpu(), dataset.labels.cpu()
    ids, counts = torch.unique(groups, return_counts=True)
    big = [int(g) for g, n in zip(ids.tolist(), counts.tolist(), strict=True) if n >= min_group]
    per_class: dict[int, list[int]] = {}
    for g in big:
        label = int(torch.mode(labels[groups == g]).values)
        per_class.setdefault(label, []).append(g)
    return big if any(len(found) >= 2 for found in per_class.values()) else []


@dataclass(frozen=True)
class VerdictAccuracy:
    """How well verdicts agree with ground-truth spurious regions.

    `accuracy`: of the clusters that overlap a spurious region, the share marked "no" (NaN when
    no cluster overlaps one). `non_spurious_yes`: of the other clusters, the share marked
    "yes" (NaN when there are none).
    """

    accuracy: float
    n_spurious_clusters: int
    n_spurious_no: int
    non_spurious_yes: float
    n_other_clusters: int
    n_other_yes: int
    n_images: int

    def to_dict(self) -> dict:
        """Fields as a dict; NaN becomes None so that the result is valid JSON."""
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(self).items()
        }


def verdict_accuracy(
    labels: Tensor | Sequence[Tensor],
    colors: Sequence[Sequence[str]],
    cluster_ids: Sequence[Sequence[int]],
    verdicts: Sequence[Mapping[str, bool | str]],
    spurious_masks: Tensor | Sequence[Tensor],
    *,
    min_overlap: float = 0.0,
) -> VerdictAccuracy:
    """Score per-colour verdicts against ground-truth spurious masks.

    Per image i: `labels[i]` [H, W] cluster ids (-1 = background), `colors[i][j]` names cluster
    `cluster_ids[i][j]`, `verdicts[i]` maps colours to True/"yes" (relevant) or False/"no",
    `spurious_masks[i]` [H, W] is True on the spurious region. A cluster overlaps the region
    when more than `min_overlap` of its pixels lie in it (default: any pixel). Clusters with no
    pixels in the image are skipped.
    """
    n = len(labels)
    if not (len(colors) == len(cluster_ids) == len(verdicts) == len(spurious_masks) == n):
        raise DataError(
            f"verdict_accuracy needs one entry per image: {n} label maps, {len(colors)} colour "
            f"lists, {len(cluster_ids)} id lists, {len(verdicts)} verdict maps, "
            f"{len(spurious_masks)} masks"
        )
    spur_total = spur_no = other_total = other_yes = 0
    for i in range(n):
        label_map = torch.as_tensor(labels[i])
        region = torch.as_tensor(spurious_masks[i]).bool().to(label_map.device)
        if label_map.shape != region.shape:
            raise DataError(
                f"image {i}: cluster map {tuple(label_map.shape)} and spurious mask "
                f"{tuple(region.shape)} differ in shape"
            )
        for color, cid in zip(colors[i], cluster_ids[i], strict=True):
            if color not in verdicts[i]:
                raise DataError(f"image {i}: no verdict for colour {color!r}")
            pixels = label_map == int(cid)
            size = int(pixels.sum())
            if size == 0:
                continue
            keep = _as_bool_verdict(verdicts[i][color])
            if int((pixels & region).sum()) / size > min_overlap:
                spur_total += 1
                spur_no += not keep
            else:
                other_total += 1
                other_yes += keep
    return VerdictAccuracy(
        accuracy=spur_no / spur_total if spur_total else math.nan,
        n_spurious_clusters=spur_total,
        n_spurious_no=spur_no,
        non_spurious_yes=other_yes / other_total if other_total else math.nan,
        n_other_clusters=other_total,
        n_other_yes=other_yes,
        n_images=n,
    )


def _as_bool_verdict(value: bool | str) -> bool:
    if isinstance(value, str):
        text = value.strip().lower()
        if text not in ("yes", "no"):
            raise DataError(f"a verdict must be 'yes' or 'no', got {value!r}")
        return text == "yes"
    return bool(value)


def wilcoxon(aligned: Sequence[float], original: Sequence[float]) -> float:
    """One-sided Wilcoxon signed-rank p-value for "aligned > original" over paired runs.

    Pairs with equal values carry no evidence: with no non-zero difference the p-value is 1.0.
    """
    from scipy.stats import wilcoxon as _wilcoxon

    if len(aligned) != len(original):
        raise DataError(
            f"wilcoxon needs paired results: {len(aligned)} aligned vs {len(original)} original"
        )
    diffs = [float(a) - float(b) for a, b in zip(aligned, original, strict=True)]
    if not any(diffs):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about small samples; the test stays exact
        return float(_wilcoxon(diffs, alternative="greater").pvalue)


class MeanStd(NamedTuple):
    mean: float
    std: float

    def format(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def mean_std(values: Sequence[float]) -> MeanStd:
    """Mean and sample standard deviation (ddof = 1; 0.0 for a single value)."""
    if len(values) == 0:
        raise DataError("mean_std needs at least one value")
    vals = [float(v) for v in values]
    return MeanStd(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
