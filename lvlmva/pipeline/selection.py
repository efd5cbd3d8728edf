"""Do no harm: which of the trained models (one per lambda) `align` returns, or the original.

Every candidate and the original are scored on the validation split by one criterion:

- ``wga``, the worst-group accuracy, when the split has groups that reveal a shortcut: some
  class with at least two groups of at least `MIN_GROUP` samples each (only such groups are
  scored). `MIN_GROUP = 30` bounds the standard error of a group's accuracy by
  0.5 / sqrt(30) = 0.09. Groups that follow the class one to one (decoy-digits' validation
  split: every square's shade matches the label) measure nothing but class accuracy, which the
  shortcut itself earns, so they do not count.
- ``counterfactual`` otherwise: accuracy on critiqued validation images whose flagged regions
  and those of a donor (another validation image of another class) come from the donor:
  ``x' = x (1 - M) + donor M`` with ``M = max(m, m_donor)`` (their robust masks). A model that
  reads the flagged feature loses what it read and reads the donor's, of the wrong class; one
  that reads its absence (the class without the patch) sees the donor's feature appear; a
  model that reads the rest keeps its accuracy. With the image's own mask alone, a shortcut
  carried by absence went unseen (bench/make_patch_task.py: 98% of one class have a patch,
  the other none; with the true masks that check kept the original, test WGA 0.871, where
  the member this one chooses reaches 0.959). It needs no group label; it costs the
  validation images' Critic & Judge calls, counted with the run's.
- ``none`` when neither is possible (no validation images): the middle of the grid, unchecked.

The best score wins; ties go to the original, then to the smaller lambda. When no aligned
model beats the original, or (``counterfactual``) none is above chance on the counterfactual
images (`chance_floor`: the critic flagged the class evidence itself, so the criterion would
reward ignoring the object), or no alignment mask marks a pixel (the members were retrained
without a penalty: nothing was aligned), and `keep_original` is set, the original is returned
and the result says so (`Selection.warning`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lvlmva.pipeline.masking import CritiquedSample, RobustMasks
from lvlmva.pipeline.options import CritiqueOptions
from lvlmva.vision.datasets.base import DatasetSplits, ShortcutDataset
from lvlmva.vision.metrics import MIN_GROUP, predict_labels, usable_groups, worst_of_groups

__all__ = [
    "MIN_GROUP",
    "MIN_VAL_SAMPLES",
    "Candidate",
    "ModelCheck",
    "Selection",
    "accuracy_note",
    "chance_floor",
    "choose_criterion",
    "counterfactual_split",
    "given_validation_check",
    "plan_check",
    "select_model",
    "validation_count",
    "validation_indices",
]

MIN_VAL_SAMPLES = 100
CriterionName = Literal["wga", "counterfactual", "none"]


def scored_groups(val: ShortcutDataset) -> list[int]:
    """Group ids that count for the WGA criterion ([] when the split's groups reveal nothing):
    `lvlmva.vision.metrics.usable_groups` with `MIN_GROUP`."""
    return usable_groups(val, MIN_GROUP)


def choose_criterion(
    val: ShortcutDataset, *, can_critique: bool, flagged: str = "critic-flagged regions"
) -> tuple[CriterionName, str]:
    """The criterion for `val` and the reason, in words (`flagged`: what the counterfactual
    swaps, for the reason)."""
    if len(val) == 0:
        return "none", "the dataset has no validation split"
    groups = scored_groups(val)
    if groups:
        return "wga", (
            f"validation worst-group accuracy over {len(groups)} groups of at least "
            f"{MIN_GROUP} samples (some class has two or more)"
        )
    if not can_critique:
        return "none", "no usable validation groups, and no critic to flag validation images"
    why = "no groups" if val.groups is None else "no class with two groups of"
    detail = "" if val.groups is None else f" at least {MIN_GROUP} samples"
    return "counterfactual", (
        f"validation accuracy with the {flagged} swapped with an image of another "
        f"class ({why}{detail} in the validation split, so group accuracy would reward the "
        "shortcut)"
    )


def validation_count(n_align: int, wanted: int | None) -> int:
    """How many validation images the counterfactual check critiques: `wanted`, or
    max(MIN_VAL_SAMPLES, n_align // 4) (before the split's size caps it)."""
    return max(MIN_VAL_SAMPLES, n_align // 4) if wanted is None else wanted


def validation_indices(n_val: int, n_align: int, wanted: int | None, seed: int) -> Tensor:
    """The validation images to critique (`validation_count`, at most the split), chosen with
    the seed."""
    count = validation_count(n_align, wanted)
    generator = torch.Generator().manual_seed(seed + 104729)
    return torch.randperm(n_val, generator=generator)[: min(count, n_val)]


def counterfactual_split(
    val: ShortcutDataset, indices: Sequence[int], masks: Sequence[Tensor], seed: int
) -> ShortcutDataset:
    """The critiqued validation images with the flagged regions of each and of its donor
    (another critiqued image, of another class where there is one; seeded) taken from the
    donor: the image loses its own flagged feature and gets the donor's, so a model that reads
    a feature's presence or its absence is caught either way."""
    index = torch.as_tensor(list(indices), dtype=torch.long)
    images, labels = val.images[index], val.labels[index]
    order = torch.randperm(len(index), generator=torch.Generator().manual_seed(seed + 7))
    donors = torch.empty(len(index), dtype=torch.long)
    for i in range(len(index)):
        start = int((order == i).nonzero()) + 1
        ring = torch.roll(order, -start)
        other = ring[labels[ring] != labels[i]]
        donors[i] = other[0] if len(other) else ring[0]
    own = torch.stack(list(masks)).unsqueeze(1).to(images.dtype)
    m = torch.maximum(own, own[donors])
    mixed = images * (1 - m) + images[donors] * m
    groups = None if val.groups is None else val.groups[index]
    return ShortcutDataset(mixed, labels, groups, None)


def criterion_score(
    model: nn.Module,
    split: ShortcutDataset,
    name: CriterionName,
    groups: Sequence[int],
    device: torch.device,
) -> tuple[float, float]:
    """The criterion's score of `model` on `split` (accuracy, or WGA over `groups`) and its
    plain accuracy there."""
    correct = predict_labels(model, split.images, device=device).eq(split.labels.cpu())
    accuracy = float(correct.float().mean())
    if name != "wga":
        return accuracy, accuracy
    assert split.groups is not None
    return worst_of_groups(correct, split.groups, groups), accuracy


@dataclass(frozen=True)
class Candidate:
    """One model that could be returned, its validation score and its validation accuracy
    (the score itself for the counterfactual criterion)."""

    name: str  # "original" or "lambda=<value>"
    lam: float | None
    scale: float | None
    score: float
    accuracy: float = math.nan


@dataclass(frozen=True)
class Selection:
    """What `align` chose and why (`describe()` says it in one paragraph)."""

    criterion: CriterionName
    reason: str
    candidates: tuple[Candidate, ...]
    chosen: str
    lam: float | None
    lambda0: float | None = None
    n_val: int = 0
    warning: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    note: str | None = None  # what the choice costs elsewhere (`accuracy_note`)

    @property
    def kept_original(self) -> bool:
        return self.chosen == "original"

    def describe(self) -> str:
        scores = ", ".join(f"{c.name} {c.score:.4f}" for c in self.candidates)
        text = f"Model choice by {self.reason}: {scores}; chose {self.chosen}."
        if self.lambda0 is not None:
            text += f" (Grid in units of lambda0 = {self.lambda0:.4g}.)"
        text += f" NOTE: {self.note}" if self.note else ""
        return text + (f" WARNING: {self.warning}" if self.warning else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "criterion": self.criterion,
            "reason": self.reason,
            "chosen": self.chosen,
            "lambda": self.lam,
            "lambda0": self.lambda0,
            "validation_samples": self.n_val,
            "kept_original": self.kept_original,
            "warning": self.warning,
            "scores": {c.name: round(c.score, 4) for c in self.candidates},
            "accuracy": {
                c.name: round(c.accuracy, 4) for c in self.candidates if not math.isnan(c.accuracy)
            },
            "note": self.note,
            **self.extra,
        }


def select_model(
    original: nn.Module,
    members: Sequence[Any],
    split: ShortcutDataset | None,
    criterion: tuple[CriterionName, str],
    *,
    keep_original: bool,
    lambda0: float | None,
    device: torch.device,
    n_val: int = 0,
) -> tuple[nn.Module, Selection]:
    """The model to return (a member's, or the original) and the `Selection` record.
    `members` have `.lam`, `.scale` and `.model` (`lvlmva.vision.rrr_grid.GridMember`)."""
    name, reason = criterion
    if name == "none" or split is None or len(split) == 0:
        member = members[(len(members) - 1) // 2]
        warning = None if len(members) == 1 else (
            f"lambda {member.lam:.4g} (the middle of the grid) was not checked on validation"
        )
        candidates = tuple(Candidate(_label(m), m.lam, m.scale, math.nan) for m in members)
        return member.model, Selection(
            name, reason, candidates, _label(member), member.lam, lambda0, n_val, warning
        )
    groups = scored_groups(split) if name == "wga" else []
    def scores(model: nn.Module) -> tuple[float, float]:
        return criterion_score(model, split, name, groups, device)

    scored = [Candidate("original", None, None, *scores(original))]
    scored += [Candidate(_label(m), m.lam, m.scale, *scores(m.model)) for m in members]
    best_member = max(range(len(members)), key=lambda i: (scored[i + 1].score, -members[i].lam))
    best = scored[best_member + 1]
    warning = _rejection(name, best, scored[0], split)
    if warning is not None:
        if keep_original:
            warning += "; the ORIGINAL model is returned unchanged"
            return original, Selection(
                name, reason, tuple(scored), "original", None, lambda0, n_val, warning
            )
        warning += "; the aligned model is returned anyway (keep_original=False)"
    chosen = members[best_member]
    note = accuracy_note(best, scored[0], len(split)) if name == "wga" else None
    return chosen.model, Selection(
        name, reason, tuple(scored), best.name, chosen.lam, lambda0, n_val, warning, note=note
    )


def accuracy_note(chosen: Candidate, original: Candidate, n: int) -> str | None:
    """A note when the model chosen for its worst-group accuracy is less accurate on
    validation than the original by more than two standard errors of the original's accuracy
    on `n` images (the user decides whether that trade is wanted), else None."""
    p = original.accuracy
    if not chosen.accuracy < p - 2.0 * math.sqrt(p * (1.0 - p) / max(n, 1)):
        return None
    return (
        f"{chosen.name} gains worst-group accuracy but loses average accuracy on validation: "
        f"{chosen.accuracy:.4f} against the original's {p:.4f}. Where the shortcut holds on "
        "validation, part of that is the shortcut's help given up; if average accuracy "
        "matters as much, compare the candidates' accuracy (metrics.json, "
        "selection.accuracy) and pass --lambda"
    )


def chance_floor(split: ShortcutDataset) -> float:
    """The counterfactual accuracy an aligned model must exceed to be trusted: the share of
    the split's most frequent class (what a constant guess scores) plus two standard errors."""
    share = float(torch.bincount(split.labels).max()) / len(split)
    return share + 2.0 * math.sqrt(share * (1.0 - share) / len(split))


def _rejection(
    name: CriterionName, best: Candidate, original: Candidate, split: ShortcutDataset
) -> str | None:
    """Why the best aligned model must not be returned, or None. Besides not beating the
    original: on the counterfactual images, no better than chance. A model that reads what
    the spec says keeps its accuracy there; when none of them does, the flagged regions hold
    the class evidence itself (the critic flagged the object), and the check cannot tell a
    better model from a worse one."""
    if best.score <= original.score:
        return (
            f"no aligned model beats the original on validation (best {best.name}: "
            f"{best.score:.4f} vs {original.score:.4f})"
        )
    floor = chance_floor(split) if name == "counterfactual" else -math.inf
    if best.score <= floor:
        return (
            f"no aligned model is above chance on the counterfactual validation images (best "
            f"{best.name}: {best.score:.4f}, chance + 2 SE {floor:.4f}): the flagged regions "
            "carry the class itself, so the critic's masks likely cover the object, and the "
            "check cannot vouch for any aligned model"
        )
    return None


def _label(member: Any) -> str:
    return f"lambda={member.lam:.4g}"


@dataclass(frozen=True)
class ModelCheck:
    """The plan of a run's model check: its criterion, the validation images to critique for
    it (none unless it is ``counterfactual``) and, once training is over, `select`."""

    criterion: tuple[CriterionName, str]
    indices: Tensor
    val: ShortcutDataset
    seed: int

    def select(
        self,
        original: nn.Module,
        members: Sequence[Any],
        masks: RobustMasks,
        val_entries: Sequence[CritiquedSample],
        *,
        keep_original: bool,
        lambda0: float | None,
        device: torch.device,
    ) -> tuple[nn.Module, Selection]:
        """Score `members` and `original` (see `select_model`); the critiqued validation
        samples get their robust masks with the alignment samples as neighbours first."""
        split, n_val = None, 0
        if self.criterion[0] == "wga":
            split, n_val = self.val, len(self.val)
        elif self.criterion[0] == "counterfactual":
            flagged = masks.masks_for(val_entries)
            pairs = zip(val_entries, flagged, strict=True)
            kept = [(e.record.index, m) for e, m in pairs if m is not None]
            n_val = len(kept)
            if kept:
                index, chosen = zip(*kept, strict=True)
                split = counterfactual_split(self.val, index, chosen, self.seed)
        chosen, selection = select_model(
            original, members, split, self.criterion, keep_original=keep_original,
            lambda0=lambda0, device=device, n_val=n_val,
        )  # fmt: skip
        if masks.flags_anything() or selection.kept_original or not keep_original:
            return chosen, selection
        warning = (
            "the critic flagged nothing in any alignment sample (every mask is empty), so the "
            "members were only retrained, not aligned; the ORIGINAL model is returned unchanged"
        )
        return original, dataclasses.replace(
            selection, chosen="original", lam=None, warning=warning, note=None
        )


def plan_check(
    dataset: DatasetSplits,
    options: CritiqueOptions,
    backend: Any,
    seed: int,
    *,
    critiques: bool = True,
    transfer: bool = False,
) -> ModelCheck:
    """The model check of a run on `dataset` with critic `backend` (a `CriticBackend`);
    `critiques=False` when no validation image may be critiqued (verdicts made already), and
    then `transfer`: the validation images get the masks their clusters' nearest critiqued
    clusters vote for (`RobustMasks.masks_for`), so the counterfactual check still runs."""
    val = dataset.val
    if not critiques:
        can_critique = transfer
    elif backend.uses_llm and not backend.answers_from_ground_truth:
        can_critique = True
    else:  # the simulation and the ground truth need the validation split's true masks
        can_critique = val.spurious_masks is not None
    flagged = "critic-flagged regions" if critiques else (
        "regions that the nearest critiqued clusters flag (no validation image was critiqued)")
    criterion = choose_criterion(val, can_critique=can_critique, flagged=flagged)
    indices = torch.zeros(0, dtype=torch.long)
    if criterion[0] == "counterfactual":
        indices = validation_indices(len(val), options.n_align, options.val_samples, seed)
        if len(indices) == 0:
            criterion = ("none", "no validation images are critiqued (val_samples = 0)")
    return ModelCheck(criterion, indices, val, seed)


def given_validation_check(
    dataset: DatasetSplits, val_records: Sequence[CritiquedSample], seed: int
) -> ModelCheck:
    """The model check with validation samples critiqued already (a critique run of the
    validation split, `lvlmva.pipeline.from_run`): validation WGA where the split has usable
    groups, else the counterfactual check on exactly those samples."""
    criterion = choose_criterion(dataset.val, can_critique=bool(val_records),
                                 flagged="regions flagged in the validation critique run")
    if criterion[0] != "counterfactual":
        return ModelCheck(criterion, torch.zeros(0, dtype=torch.long), dataset.val, seed)
    indices = torch.tensor([e.record.index for e in val_records], dtype=torch.long)
    return ModelCheck(criterion, indices, dataset.val, seed)
