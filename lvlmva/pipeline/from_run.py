"""Aligning from a critique run: the reviewed (effective) verdicts of a `lvlmva.runs.CritiqueRun`
become the alignment records, with no LVLM call, pooled with similar clusters as a critique's
are (`lvlmva.pipeline.masking`), the reviewer's overrides kept as given.

The records follow the run's sample order (the seeded permutation `align` draws its alignment
samples from), so a run critiqued with the same seed and critic, left unreviewed, trains exactly
as `align --no-streaming` does with those verdicts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lvlmva.errors import ConfigError, DataError
from lvlmva.pipeline.align import align
from lvlmva.pipeline.critique_run import manifest_critic, sample_order
from lvlmva.pipeline.masking import CritiquedSample
from lvlmva.pipeline.options import TrainOptions
from lvlmva.pipeline.records import AlignResult, SampleRecord
from lvlmva.runs import CritiqueRun, ReviewedSample, RunQuery
from lvlmva.runs.overrides import effective_mask
from lvlmva.vision.consensus import cluster_descriptors
from lvlmva.vision.datasets.base import DatasetSplits

__all__ = ["align_from_run", "check_run_fits", "reviewed_entries", "reviewed_records"]


def check_run_fits(
    run: CritiqueRun,
    dataset: DatasetSplits,
    checkpoint_sha256: str | None = None,
    *,
    split: str = "train",
) -> None:
    """ConfigError unless `run` critiqued `split` of this dataset (same classes and options)
    with the checkpoint of `checkpoint_sha256` (when both are known)."""
    m, info = run.manifest, dataset.info
    where = f"critique run {run.root}"
    if m.split != split:
        why = ("RRR trains on the training split" if split == "train"
               else "the model check uses the validation split")  # fmt: skip
        raise ConfigError(
            f"{where} covers the {m.split} split; {why}, so critique --split {split} for it"
        )
    if m.dataset != info.name or tuple(m.class_names) != tuple(info.class_names):
        raise ConfigError(
            f"{where} was made on {m.dataset} ({len(m.class_names)} classes), not on "
            f"{info.name} ({info.num_classes} classes); give the run's --dataset"
        )
    if dict(m.dataset_options) != dict(info.options):
        raise ConfigError(
            f"{where} was made on {m.dataset} with options {dict(m.dataset_options)}, this "
            f"dataset has {dict(info.options)}: its sample indices would not match"
        )
    if checkpoint_sha256 and m.checkpoint_sha256 and checkpoint_sha256 != m.checkpoint_sha256:
        raise ConfigError(
            f"{where} explains the checkpoint {m.checkpoint_sha256[:12]}, not the given --model "
            f"({checkpoint_sha256[:12]}); align the model the run was made with"
        )


def reviewed_records(
    run: CritiqueRun, dataset: DatasetSplits, *, soft: bool | None = None
) -> list[SampleRecord]:
    """One record per "ok" sample of `run`: its effective verdicts and mask (the critic's with
    the reviewer's overrides, by the run's mask rule or `soft`), in the run's sample order."""
    return [entry.record for entry in reviewed_entries(run, dataset, soft=soft)]


def reviewed_entries(
    run: CritiqueRun, dataset: DatasetSplits, *, soft: bool | None = None
) -> list[CritiquedSample]:
    """`reviewed_records` as the neighbour consensus takes them: each with its clusters'
    descriptors, its effective verdicts as "no" shares and the reviewer's overrides pinned (an
    expert's verdict is never outvoted; it counts as a neighbour of similar clusters)."""
    split = getattr(dataset, run.manifest.split)
    seed = int(run.manifest.extra.get("seed", 0))
    order = sample_order(len(split), None, seed)
    position = torch.empty(len(order), dtype=torch.long)
    position[order] = torch.arange(len(order))
    entries = []
    for sample in run.iter_samples(RunQuery(statuses=("ok",))):
        index = sample.record.index
        if not 0 <= index < len(split):
            raise DataError(f"sample {index} of {run.root} is not in the {run.manifest.split} "
                            "split")  # fmt: skip
        entries.append(_entry(run, split.images[index], sample, soft))
    entries.sort(key=lambda e: int(position[e.record.index]))
    if not entries:
        raise DataError(
            f"critique run {run.root} has no critiqued sample (status ok) to align with; "
            "resume it with `lvlmva critique`"
        )
    return entries


def _entry(
    run: CritiqueRun, image: torch.Tensor, sample: ReviewedSample, soft: bool | None
) -> CritiquedSample:
    """The `CritiquedSample` of one reviewed "ok" sample of `run` (its image [C, H, W])."""
    record, stored = sample.record, run.arrays(sample.record.index)
    labels = torch.from_numpy(stored.labels.astype("int64"))
    verdicts = dict(sample.effective_verdicts or {})
    features = cluster_descriptors(image, labels, record.cluster_ids, _run_clusters(run))
    responsibilities = None
    if stored.responsibilities is not None:
        responsibilities = torch.from_numpy(stored.responsibilities).to(torch.float16)
    return CritiquedSample(
        SampleRecord(
            index=record.index, label=record.label, class_name=record.class_name,
            cluster_labels=labels, colors=record.colors, cluster_ids=record.cluster_ids,
            status="ok", mask=torch.from_numpy(effective_mask(run, sample, soft, stored=stored)),
            verdicts=verdicts, critique=record.critique,
        ),
        responsibilities,
        features,
        torch.tensor([_no_share(sample, c) for c in record.colors]),
        pinned=torch.tensor([c in sample.overrides for c in record.colors], dtype=torch.bool),
    )


def _no_share(sample: ReviewedSample, color: str) -> float:
    """The "no" share of one cluster: the reviewer's verdict where overridden, else the
    critic's, graded by its stored agreement where it has one (votes, log-probabilities)."""
    verdict = (sample.effective_verdicts or {})[color]
    agreement = sample.record.agreement
    if color in sample.overrides or agreement is None:
        return 0.0 if verdict else 1.0
    return 1.0 - agreement[color] if verdict else agreement[color]


async def align_from_run(
    model: nn.Module,
    dataset: DatasetSplits,
    run: CritiqueRun,
    *,
    training: TrainOptions | None = None,
    soft: bool | None = None,
    checkpoint_sha256: str | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    val_run: CritiqueRun | None = None,
    **options: Any,
) -> AlignResult:
    """`align` with the reviewed verdicts of `run` (see `reviewed_entries`), pooled with
    similar clusters like a critique's (`neighbours`; the reviewer's overrides are kept as
    given), masks by the run's rule or `soft`: no LVLM call. `val_run`: a critique run of the
    validation split, made the same way, whose reviewed verdicts the model check uses where
    it needs flagged validation images (else they come from the nearest clusters of `run`)."""
    check_run_fits(run, dataset, checkpoint_sha256)
    entries = reviewed_entries(run, dataset, soft=soft)
    val_entries = None
    if val_run is not None:
        check_run_fits(val_run, dataset, checkpoint_sha256, split="val")
        val_entries = reviewed_entries(val_run, dataset, soft=soft)
    soft_masks = run.manifest.masks == "soft" if soft is None else soft
    return await align(
        model, dataset, critic=manifest_critic(run.manifest), training=training, seed=seed,
        device=device, progress=progress, records=entries, val_records=val_entries,
        **{"soft_masks": soft_masks, **_run_options(run), **options},
    )  # fmt: skip


def _run_clusters(run: CritiqueRun) -> int:
    """The clusters per image the run segmented into (7 for runs that did not record it)."""
    return int(run.manifest.extra.get("n_clusters", 7))


def _run_options(run: CritiqueRun) -> dict[str, Any]:
    """The run's explain and segment settings, for the validation images the check renders."""
    extra = run.manifest.extra
    options: dict[str, Any] = {"n_clusters": _run_clusters(run)}
    if extra.get("attribution"):
        options["attribution"] = str(extra["attribution"])
    return options
