"""Pipeline stages 4-6: rendered samples become Critic & Judge jobs, the engine's verdicts
become correction masks. Also the ground-truth stand-in for the whole stage (the upper bound)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

import torch
from torch import Tensor

from lvlmva.critics.base import CriticBackend
from lvlmva.critics.session import CriticSession
from lvlmva.engine.types import CritiqueJob, ImagePart, JobResult
from lvlmva.errors import DataError
from lvlmva.pipeline.records import RenderedSample, SampleRecord
from lvlmva.pipeline.votes import VoteCollector, variant_jobs
from lvlmva.prompts import TaskSpec
from lvlmva.vision.datasets.base import DatasetSplits, ShortcutDataset
from lvlmva.vision.masks import mask_from_verdicts

__all__ = [
    "critique_samples",
    "critique_stream",
    "ground_truth_records",
    "job_for",
    "record_for",
    "require_true_masks",
]

IMAGE_NAMES = ("original", "clusters", "overlay")


def require_true_masks(
    backend: CriticBackend, dataset: DatasetSplits, splits: tuple[str, ...] = ("train",)
) -> None:
    """A critic that answers from the ground truth (the simulation, the true masks) needs the
    spurious masks of every split it critiques: a DataError naming the dataset otherwise."""
    missing = [s for s in splits if getattr(dataset, s).spurious_masks is None]
    if backend.answers_from_ground_truth and missing:
        raise DataError(
            f"the {backend.name} critic answers from ground-truth spurious masks, and dataset "
            f"{dataset.info.name!r} has none ({', '.join(missing)} split); give the image-folder "
            "CSV a mask_path column, or use a real LVLM (--critic openai or litellm)"
        )


def job_for(sample: RenderedSample, job_id: str, spec: TaskSpec, class_name: str) -> CritiqueJob:
    """The engine job of one rendered sample: its three images, colours and class variables."""
    pngs = sample.pngs()
    return CritiqueJob(
        job_id=job_id,
        images=tuple(ImagePart(name, pngs[name]) for name in IMAGE_NAMES),
        colors=sample.colors,
        variables=dict(spec.variables(class_name)),
    )


def record_for(
    sample: RenderedSample, result: JobResult, class_name: str, *, soft: bool
) -> SampleRecord:
    """The sample's record; a mask only from validated verdicts, never a guess."""
    mask = None
    if result.ok and result.verdicts is not None:
        mask = mask_from_verdicts(
            sample.cluster_labels,
            sample.colors,
            sample.cluster_ids,
            result.verdicts,
            responsibilities=sample.responsibilities,
            soft=soft,
        )
    return SampleRecord(
        index=sample.index,
        label=sample.label,
        class_name=class_name,
        cluster_labels=sample.cluster_labels,
        colors=sample.colors,
        cluster_ids=sample.cluster_ids,
        status=result.status.value,
        mask=mask,
        verdicts=dict(result.verdicts) if result.verdicts else None,
        critique=result.critique,
        error=result.error,
        images=sample.pngs(),
        tally=result.tally,
    )


async def critique_samples(
    samples: AsyncIterable[RenderedSample],
    session: CriticSession,
    spec: TaskSpec,
    dataset: DatasetSplits,
    *,
    soft_masks: bool,
    total: int | None = None,
    split_name: str = "train",
    votes: int = 1,
    seed: int = 0,
) -> AsyncIterator[SampleRecord]:
    """Critique `samples` (of the split `split_name` of `dataset`) through the session's engine
    (`votes` Critic samples each) and yield their records in completion order. A simulated
    critic is told each sample's ground-truth mask before its job is sent."""
    tagged = _tagged(samples, split_name)
    async for _, _, record in critique_stream(
        tagged, session, spec, dataset, soft_masks=soft_masks, votes=votes, seed=seed,
        total=total, splits=(split_name,),
    ):  # fmt: skip
        yield record


async def _tagged(
    samples: AsyncIterable[RenderedSample], split: str
) -> AsyncIterator[tuple[str, RenderedSample]]:
    async for sample in samples:
        yield split, sample


async def critique_stream(
    samples: AsyncIterable[tuple[str, RenderedSample]],
    session: CriticSession,
    spec: TaskSpec,
    dataset: DatasetSplits,
    *,
    soft_masks: bool,
    votes: int = 1,
    seed: int = 0,
    total: int | None = None,
    splits: tuple[str, ...] = ("train",),
) -> AsyncIterator[tuple[str, RenderedSample, SampleRecord]]:
    """Critique `(split name, sample)` pairs of `dataset` (`votes` Critic samples each,
    `lvlmva.pipeline.votes`) and yield `(split name, sample, record)` in completion order; a
    record's `votes` holds the share of "no" per colour when there were several samples or
    the answers' tokens graded the verdicts.
    `splits` names the splits the samples may come from (checked for ground truth up front)."""
    info = dataset.info
    if session.needs_truth:
        require_true_masks(session.backend, dataset, splits)
    pending: dict[str, tuple[str, RenderedSample]] = {}
    collector = VoteCollector(votes)

    async def jobs() -> AsyncIterator[CritiqueJob]:
        async for split_name, sample in samples:
            job_id = f"{info.name}/{split_name}/{sample.index}"
            pending[job_id] = split_name, sample
            if session.needs_truth:
                truth = getattr(dataset, split_name).spurious_masks[sample.index]
                session.register_truth(sample.images.original, truth.numpy())
            job = job_for(sample, job_id, spec, info.class_names[sample.label])
            for variant in variant_jobs(job, votes, seed):
                yield variant

    async for result in session.engine.run(jobs(), total=None if total is None else total * votes):
        voted = collector.add(result)
        if voted is None:
            continue
        split_name, sample = pending.pop(voted.result.job_id)
        record = record_for(sample, voted.result, info.class_names[sample.label], soft=soft_masks)
        if (votes > 1 or voted.graded) and voted.no_share is not None:
            record.votes = dict(voted.no_share)
        yield split_name, sample, record


def ground_truth_records(
    dataset: DatasetSplits, indices: Tensor, split_name: str = "train"
) -> list[SampleRecord]:
    """Records whose masks are the true spurious masks (no clusters, no LVLM) of samples
    `indices` of the split `split_name`."""
    split: ShortcutDataset = getattr(dataset, split_name)
    if split.spurious_masks is None:
        raise DataError(
            f"dataset {dataset.info.name!r} has no ground-truth spurious masks, so "
            "--critic ground-truth cannot be used; choose an LVLM critic"
        )
    chosen = split.spurious_masks[indices].float()
    records = []
    for i, mask in zip(indices.tolist(), chosen, strict=True):
        label = int(split.labels[i])
        records.append(
            SampleRecord(
                index=i,
                label=label,
                class_name=dataset.info.class_names[label],
                cluster_labels=torch.full(mask.shape, -1, dtype=torch.long),
                colors=(),
                cluster_ids=(),
                status="ground-truth",
                mask=mask,
            )
        )
    return records
