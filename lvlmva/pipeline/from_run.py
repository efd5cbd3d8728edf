"""Aligning from a critique run: the reviewed (effective) verdicts and masks of a
`lvlmva.runs.CritiqueRun` become the alignment records, with no LVLM call.

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
from lvlmva.pipeline.options import TrainOptions
from lvlmva.pipeline.records import AlignResult, SampleRecord
from lvlmva.runs import CritiqueRun, RunQuery
from lvlmva.vision.datasets.base import DatasetSplits

__all__ = ["align_from_run", "check_run_fits", "reviewed_records"]


def check_run_fits(
    run: CritiqueRun, dataset: DatasetSplits, checkpoint_sha256: str | None = None
) -> None:
    """ConfigError unless `run` critiqued the training split of this dataset (same classes and
    options) with the checkpoint of `checkpoint_sha256` (when both are known)."""
    m, info = run.manifest, dataset.info
    where = f"critique run {run.root}"
    if m.split != "train":
        raise ConfigError(
            f"{where} covers the {m.split} split; RRR trains on the training split, so critique "
            "--split train to align from a run"
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
    seed = int(run.manifest.extra.get("seed", 0))
    order = sample_order(len(dataset.train), None, seed)
    position = torch.empty(len(order), dtype=torch.long)
    position[order] = torch.arange(len(order))
    records = []
    for sample in run.iter_samples(RunQuery(statuses=("ok",))):
        record, index = sample.record, sample.record.index
        if not 0 <= index < len(dataset.train):
            raise DataError(f"sample {index} of {run.root} is not in the training split")
        stored = run.arrays(index)
        mask = run.effective_mask(index, soft=soft)
        records.append(
            SampleRecord(
                index=index,
                label=record.label,
                class_name=record.class_name,
                cluster_labels=torch.from_numpy(stored.labels.astype("int64")),
                colors=record.colors,
                cluster_ids=record.cluster_ids,
                status="ok",
                mask=torch.from_numpy(mask),
                verdicts=dict(sample.effective_verdicts or {}),
                critique=record.critique,
            )
        )
    records.sort(key=lambda r: int(position[r.index]))
    if not records:
        raise DataError(
            f"critique run {run.root} has no critiqued sample (status ok) to align with; "
            "resume it with `lvlmva critique`"
        )
    return records


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
    **options: Any,
) -> AlignResult:
    """`align` with the reviewed masks of `run` (see `reviewed_records`): no LVLM call."""
    check_run_fits(run, dataset, checkpoint_sha256)
    records = reviewed_records(run, dataset, soft=soft)
    return await align(
        model, dataset, critic=manifest_critic(run.manifest), training=training, seed=seed,
        device=device, progress=progress, records=records, **options,
    )  # fmt: skip
