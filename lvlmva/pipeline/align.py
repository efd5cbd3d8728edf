"""`align()`: explain, critique, mask, retrain and evaluate, as the pipeline's stages.

Streaming (the default): attributions and PPEPS-WGM run in batches in a worker thread,
rendered jobs go to the engine as they are ready, verdicts become robust masks
(`pipeline.masking`), and the RRR trainer (another thread, one model per lambda of the grid)
starts once the first quarter of the alignment order is in and takes in the rest on a fixed
schedule (the result does not depend on the order answers arrive in). Validation images are
critiqued after the alignment samples when the model check needs them (`pipeline.check`),
and the check picks the lambda, or keeps the original.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lvlmva.critics import CriticBackend, CriticSettings, get_critic, open_session
from lvlmva.engine.errors import RunStopped
from lvlmva.engine.types import Provider
from lvlmva.errors import ConfigError, DataError
from lvlmva.pipeline.critique import critique_stream, ground_truth_records, require_true_masks
from lvlmva.pipeline.explain import rendered_samples
from lvlmva.pipeline.masking import (
    CritiquedSample,
    RobustMasks,
    critiqued,
    fixed_mask,
    robust_summary,
    uncritiqued,
)
from lvlmva.pipeline.options import CritiqueOptions, TrainOptions, split_options
from lvlmva.pipeline.records import (
    AlignResult,
    CritiqueCounts,
    RenderedSample,
    SampleRecord,
    critique_metrics,
)
from lvlmva.pipeline.selection import ModelCheck, given_validation_check, plan_check
from lvlmva.pipeline.training import AlignmentTraining
from lvlmva.prompts import TaskSpec
from lvlmva.vision.datasets.base import DatasetSplits

__all__ = ["align", "align_sync", "choose_alignment_indices", "resolve_spec"]


def resolve_spec(spec: TaskSpec | str | None, splits: DatasetSplits) -> TaskSpec:
    """A `TaskSpec`, a path to a spec file, a built-in spec name, or None (the dataset's task),
    checked against the dataset's classes."""
    from lvlmva.prompts import load_spec

    if spec is None:
        spec = splits.info.task
    if not isinstance(spec, TaskSpec):
        spec = load_spec(spec)
    spec.check_classes(splits.info.class_names)
    return spec


def choose_alignment_indices(n_train: int, n_align: int, seed: int) -> Tensor:
    """A seeded random choice of `n_align` training samples to explain and critique."""
    if n_align <= 0:
        raise ConfigError(f"--n-align must be positive, got {n_align}")
    generator = torch.Generator().manual_seed(seed + 7919)
    return torch.randperm(n_train, generator=generator)[: min(n_align, n_train)]


async def align(
    model: nn.Module,
    dataset: DatasetSplits,
    spec: TaskSpec | str | None = None,
    *,
    critic: CriticSettings | None = None,
    critique: CritiqueOptions | None = None,
    training: TrainOptions | None = None,
    critic_provider: Provider | None = None,
    judge_provider: Provider | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    on_sample: Callable[[SampleRecord], None] | None = None,
    records: Sequence[SampleRecord | CritiquedSample] | None = None,
    val_records: Sequence[CritiquedSample] | None = None,
    **options: Any,
) -> AlignResult:
    """Explain, critique, mask and retrain `model` on `dataset` with the class-level `spec`.

    `critic`: which LVLM (default: the offline simulation); `critique` / `training`: what to
    critique and how to train (their fields may also be keywords, e.g. `n_align=200`);
    `critic_provider` / `judge_provider`: ready `Provider`s instead of the critic's own.
    Explanations come from the original `model`, left unchanged. Unless `lam` is given, one
    model per lambda of the grid is trained and the best on validation returned, or the
    original when none beats it (`AlignResult.selection`). `records` (and `val_records` for
    the check): verdicts or masks made already (a reviewed critique run, `from_run`), no LVLM
    call: a `CritiquedSample` is pooled with its neighbours, a `SampleRecord` taken as it is.
    An endpoint that refuses the run raises `RunStopped` (status, message, the result trained
    on the masks received); a `DataError` when every critique failed."""
    critic = critic or CriticSettings()
    what, how = split_options(critique, training, options)
    backend = _checked_backend(critic.kind, dataset, records)
    device, started, timings = torch.device(device), time.perf_counter(), {}
    how, spec = await _prepare(backend, critic, spec, dataset, how, records, critic_provider)
    before = await asyncio.to_thread(_evaluate, model, dataset)
    indices = _alignment_indices(dataset, what.n_align, seed, records)
    check, transfer = _plan_check(dataset, what, backend, seed, records, val_records)
    masks = RobustMasks(dataset.train, what, len(indices))
    run = AlignmentTraining(
        _start_model(model, how, seed), dataset.train, how, masks,
        n_samples=len(indices), seed=seed, device=device, progress=progress,
    )  # fmt: skip
    run.start()
    try:
        if records is None and backend.uses_llm:
            records, val_entries, counts = await _critique(
                model, dataset, spec, indices, check.indices[: 0 if transfer else None], critic,
                what, run, providers=(critic_provider, judge_provider), seed=seed,
                device=device, progress=progress, on_sample=on_sample, timings=timings,
            )  # fmt: skip
            _check_some_masks(records, counts, len(indices), critic)
        else:  # masks made already, or the true ones
            records, val_entries = _given_masks(dataset, indices, check, records, run, val_records)
            counts = CritiqueCounts()
        if transfer and len(check.indices):  # nothing critiqued in the validation split
            val_entries = await _uncritiqued_validation(
                model, dataset, check.indices, what, seed, device, timings)  # fmt: skip
        timings["critique_s"] = time.perf_counter() - started
        members = await run.finish()
    except BaseException:
        await run.abort()
        raise
    chosen, selection = await asyncio.to_thread(  # the model check
        check.select, model, members, masks, val_entries, keep_original=how.keep_original,
        lambda0=run.trainer.lambda0_, device=device)  # fmt: skip
    timings["total_s"] = time.perf_counter() - started
    after = await asyncio.to_thread(_evaluate, chosen, dataset)
    member = next((m for m in members if m.model is chosen), None)
    result = AlignResult(
        model=chosen if member is not None else copy.deepcopy(chosen), before=before,
        after=after, samples=records, lam=selection.lam, critic=critic,
        history=None if member is None else member.history,
        verdict_accuracy=_score_verdicts(records, dataset) if backend.uses_llm else None,
        counts=counts, timings=timings, selection=selection, robust=robust_summary(what, records),
    )  # fmt: skip
    if counts.stopped is not None:  # trained on the masks received before the stop
        raise RunStopped(_stop_line(counts, len(records), len(indices)), result=result,
                         metrics=result.metrics_dict())  # fmt: skip
    return result


def _checked_backend(
    kind: str, dataset: DatasetSplits, records: Sequence[SampleRecord] | None
) -> CriticBackend:
    """The critic's backend. One that answers from the ground truth needs the dataset's
    spurious masks, checked before anything is trained, unless the masks are given."""
    backend = get_critic(kind)
    if records is None:
        require_true_masks(backend, dataset)
    return backend


def _given_masks(
    dataset: DatasetSplits,
    indices: Tensor,
    check: ModelCheck,
    records: Sequence[SampleRecord | CritiquedSample] | None,
    run: AlignmentTraining,
    val_records: Sequence[CritiquedSample] | None = None,
) -> tuple[list[SampleRecord], list[CritiquedSample]]:
    """Records whose verdicts or masks are given (`records`, or the true masks when None) fed
    to `run` in order, and the validation samples of the model check (true masks; for
    `records`, the `val_records` its check uses, else none)."""
    val_entries: list[CritiquedSample] = []
    if records is None:
        val = ground_truth_records(dataset, check.indices, "val")
        records, val_entries = ground_truth_records(dataset, indices), [fixed_mask(r) for r in val]
    elif val_records is not None and check.criterion[0] == "counterfactual":
        val_entries = list(val_records)
    entries = [r if isinstance(r, CritiquedSample) else fixed_mask(r) for r in records]
    for position, entry in enumerate(entries):
        run.add(position, entry)
    return [e.record for e in entries], val_entries


async def _prepare(
    backend: CriticBackend,
    critic: CriticSettings,
    spec: TaskSpec | str | None,
    dataset: DatasetSplits,
    how: TrainOptions,
    records: Sequence[SampleRecord | CritiquedSample] | None,
    critic_provider: Provider | None,
) -> tuple[TrainOptions, TaskSpec | str | None]:
    """Given records train in order (not streamed); a critique needs the spec resolved and the
    endpoint checked (`preflight`) before anything is trained or paid for."""
    if records is not None:
        return dataclasses.replace(how, streaming=False), spec
    if backend.uses_llm:
        spec = resolve_spec(spec, dataset)
        if critic_provider is None:
            await backend.preflight(critic)
    return how, spec


def _plan_check(
    dataset: DatasetSplits,
    options: CritiqueOptions,
    backend: CriticBackend,
    seed: int,
    records: Sequence[SampleRecord | CritiquedSample] | None,
    val_records: Sequence[CritiquedSample] | None = None,
) -> tuple[ModelCheck, bool]:
    """The model check, and whether its validation masks come from the nearest critiqued
    clusters (`RobustMasks.masks_for`) instead of the critic: for a critique run's verdicts
    without `val_records` (a run covers one split), and with `val_masks="neighbours"`."""
    if val_records is not None:
        return given_validation_check(dataset, val_records, seed), False
    transfer = _has_verdicts(records) or (
        records is None and backend.uses_llm and options.val_masks == "neighbours"
    )
    critiques = records is None and not transfer
    return plan_check(dataset, options, backend, seed, critiques=critiques,
                      transfer=transfer), transfer  # fmt: skip


def _has_verdicts(records: Sequence[SampleRecord | CritiquedSample] | None) -> bool:
    """Whether given records carry verdicts to pool (a critique run's), not only masks."""
    return records is not None and any(
        isinstance(r, CritiquedSample) and r.voted for r in records
    )


async def _uncritiqued_validation(
    model: nn.Module,
    dataset: DatasetSplits,
    indices: Tensor,
    options: CritiqueOptions,
    seed: int,
    device: torch.device,
    timings: dict[str, float],
) -> list[CritiquedSample]:
    """The validation samples of the check explained, segmented and rendered (no critique)."""
    explained = copy.deepcopy(model).eval()
    out = []
    async for sample in rendered_samples(
        explained, dataset.val, indices, options, seed=seed, device=device, timings=timings
    ):
        name = dataset.info.class_names[sample.label]
        record = SampleRecord(
            index=sample.index, label=sample.label, class_name=name,
            cluster_labels=sample.cluster_labels, colors=sample.colors,
            cluster_ids=sample.cluster_ids, status="not_run",
        )  # fmt: skip
        out.append(uncritiqued(sample, record, dataset.val.images[sample.index],
                               options.n_clusters))  # fmt: skip
    return out


def _check_some_masks(
    records: list[SampleRecord], counts: CritiqueCounts, n: int, critic: CriticSettings
) -> None:
    """Without a single mask there is nothing to train: a stopped run is `RunStopped` (with
    the critique's figures), any other a `DataError` carrying the first distinct reasons."""
    if any(r.mask is not None for r in records):
        return
    if counts.stopped is not None:
        tally = counts.tally
        metrics = {
            "critic": critic.kind, "critic_model": critic.critic_model,
            "judge_model": critic.judge_model, "n_align": len(records), "n_masks": 0,
            "provider_calls": tally.provider_calls, "cost_usd": round(tally.cost_usd, 6),
            "failed_jobs": counts.failed, "not_run_jobs": counts.not_run,
            **critique_metrics(records, counts),
        }  # fmt: skip
        raise RunStopped(_stop_line(counts, len(records), n), metrics=metrics)
    reasons = list(dict.fromkeys(r.error or r.status for r in records))[:3]
    listed = "; ".join(f"({k + 1}) {reason}" for k, reason in enumerate(reasons))
    raise DataError(
        f"no correction masks: all {len(records)} critiques failed or were not run; the first "
        f"distinct reasons: {listed or 'none given'}"
    )


def _stop_line(counts: CritiqueCounts, critiqued: int, n: int) -> str:
    return (
        f"the LVLM endpoint stopped the run: {counts.stopped}; {critiqued} of {n} samples were "
        "sent, and the answers received are cached: fix the cause and rerun the same command"
    )


def _alignment_indices(
    dataset: DatasetSplits,
    n_align: int,
    seed: int,
    records: Sequence[SampleRecord | CritiquedSample] | None,
) -> Tensor:
    if records is not None:
        given = [r.record if isinstance(r, CritiquedSample) else r for r in records]
        return torch.tensor([r.index for r in given], dtype=torch.long)
    return choose_alignment_indices(len(dataset.train), n_align, seed)


def align_sync(*args: Any, **kwargs: Any) -> AlignResult:
    """`align` without `await`: in a script, or where an event loop already runs (a notebook),
    in a worker thread with a loop of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(align(*args, **kwargs))
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="align_sync") as pool:
        return pool.submit(asyncio.run, align(*args, **kwargs)).result()


def _start_model(model: nn.Module, options: TrainOptions, seed: int) -> nn.Module:
    """The model RRR trains: the original's copy, re-initialised for `retrain` (the same
    initial weights for the same seed, whatever the caller's random state)."""
    from lvlmva.vision.models import reinitialize

    start = copy.deepcopy(model)
    if options.start == "retrain":
        reinitialize(start, seed=seed)
    return start


async def _critique(
    model: nn.Module,
    dataset: DatasetSplits,
    spec: TaskSpec,
    indices: Tensor,
    val_indices: Tensor,
    critic: CriticSettings,
    options: CritiqueOptions,
    run: AlignmentTraining,
    *,
    providers: tuple[Provider | None, Provider | None],
    seed: int,
    device: torch.device,
    progress: bool,
    on_sample: Callable[[SampleRecord], None] | None,
    timings: dict[str, float],
) -> tuple[list[SampleRecord], list[CritiquedSample], CritiqueCounts]:
    """Stages 1-6 over `indices` (training) and `val_indices` (validation, for the model
    check): alignment records in alignment order, each fed to `run` as it arrives, the
    validation samples in the order of `val_indices`, and the engine's totals."""
    explained = copy.deepcopy(model).eval()  # explanations always come from the original
    ready = None if providers[0] is None else (providers[0], providers[1])
    session = await open_session(
        get_critic(critic.kind), critic, spec.family, providers=ready, progress=progress
    )
    position = {int(i): k for k, i in enumerate(indices)}
    records: list[SampleRecord] = []
    val_entries: list[CritiquedSample] = []
    async with session:
        samples = _splits_to_critique(
            explained, dataset, (indices, val_indices), options, seed, device, timings
        )
        async for split_name, sample, record in critique_stream(
            samples, session, spec, dataset, soft_masks=options.soft_masks, votes=options.votes,
            seed=seed, total=len(indices) + len(val_indices),
            splits=("train", "val") if len(val_indices) else ("train",),
        ):  # fmt: skip
            split = getattr(dataset, split_name)
            entry = critiqued(sample, record, split.images[sample.index], options.n_clusters,
                              record.votes)  # fmt: skip
            if split_name == "val":
                val_entries.append(entry)
                continue
            records.append(record)
            run.add(position[record.index], entry)
            if on_sample is not None:
                on_sample(record)
        engine = session.engine
        stopped = engine.stopped.line() if engine.stopped is not None else None
        not_pulled = len(indices) - len(records)
        counts = CritiqueCounts.from_engine(engine.stats, not_pulled=not_pulled, stopped=stopped)
    # Answers arrive in completion order; records follow the alignment order.
    records.sort(key=lambda r: position[r.index])
    val_order = {int(i): k for k, i in enumerate(val_indices)}
    val_entries.sort(key=lambda e: val_order[e.record.index])
    return records, val_entries, counts


async def _splits_to_critique(
    model: nn.Module,
    dataset: DatasetSplits,
    indices: tuple[Tensor, Tensor],
    options: CritiqueOptions,
    seed: int,
    device: torch.device,
    timings: dict[str, float],
) -> AsyncIterator[tuple[str, RenderedSample]]:
    """The rendered training samples, then the rendered validation samples."""
    for split_name, chosen in zip(("train", "val"), indices, strict=True):
        if len(chosen) == 0:
            continue
        split = getattr(dataset, split_name)
        async for sample in rendered_samples(
            model, split, chosen, options, seed=seed, device=device, timings=timings
        ):
            yield split_name, sample


def _evaluate(model: nn.Module, dataset: DatasetSplits) -> Any:
    from lvlmva.vision.metrics import evaluate

    device = next(model.parameters()).device
    return evaluate(model, dataset.test, dataset.info, device=device)


def _score_verdicts(records: list[SampleRecord], dataset: DatasetSplits) -> Any:
    """Verdict accuracy against the dataset's ground-truth spurious masks, where it has them."""
    from lvlmva.vision.metrics import verdict_accuracy

    if dataset.train.spurious_masks is None:
        return None
    scored = [r for r in records if r.verdicts is not None]
    return verdict_accuracy(
        [r.cluster_labels for r in scored],
        [r.colors for r in scored],
        [r.cluster_ids for r in scored],
        [r.verdicts for r in scored],
        dataset.train.spurious_masks[[r.index for r in scored]],
    )
