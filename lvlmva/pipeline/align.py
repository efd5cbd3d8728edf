"""`align()`: explain, critique, mask, retrain and evaluate, as the pipeline's stages.

Streaming (the default): attributions and PPEPS-WGM run in batches in a worker thread,
rendered jobs go to the engine as they are ready, verdicts become masks in the trainer's pool,
and the RRR trainer (another thread) starts once a first share of masks exists and takes in
the rest as they arrive.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lvlmva.critics import CriticSettings, get_critic, open_session
from lvlmva.engine.errors import RunStopped
from lvlmva.engine.types import Provider
from lvlmva.errors import ConfigError, DataError
from lvlmva.pipeline.critique import critique_samples, ground_truth_records
from lvlmva.pipeline.explain import rendered_samples
from lvlmva.pipeline.options import CritiqueOptions, TrainOptions, split_options
from lvlmva.pipeline.records import AlignResult, CritiqueCounts, SampleRecord, critique_metrics
from lvlmva.pipeline.training import AlignmentTraining, default_lambda
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
    records: Sequence[SampleRecord] | None = None,
    **options: Any,
) -> AlignResult:
    """Explain, critique, mask and retrain `model` on `dataset` with the class-level `spec`.

    `critic` says which LVLM to use (default: the offline simulation); `critique` what to
    critique and `training` how to train (`CritiqueOptions`, `TrainOptions`; their fields may
    also be given as keywords, e.g. `n_align=200, epochs=2`). `critic_provider` /
    `judge_provider` are ready `Provider` objects to use instead of the critic's own.
    Explanations always come from the original `model`, which is left unchanged.
    `records`: masks made already (a reviewed critique run, `pipeline.from_run`): no explanation
    and no LVLM call; they enter the pool at once, in the given order.

    An endpoint that refuses the run stops it: `RunStopped` names the status and the server's
    message, with the result trained on the masks received (`.result`, or None) and `.metrics`;
    when every critique failed, a `DataError` gives the first distinct reasons.
    """
    critic = critic or CriticSettings()
    what, how = split_options(critique, training, options)
    backend = get_critic(critic.kind)
    device = torch.device(device)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    if records is not None:
        how = dataclasses.replace(how, streaming=False)
    elif backend.uses_llm:
        spec = resolve_spec(spec, dataset)
        if critic_provider is None:
            await backend.preflight(critic)
    before = await asyncio.to_thread(_evaluate, model, dataset)
    indices = _alignment_indices(dataset, what.n_align, seed, records)
    default = default_lambda(dataset.info.name, how.start, critic_masks=backend.uses_llm)
    lam = how.lam if how.lam is not None else default
    run = AlignmentTraining(
        _start_model(model, how, seed), dataset.train, how, lam=lam, n_samples=len(indices),
        seed=seed, device=device, progress=progress,
    )  # fmt: skip
    run.start()
    try:
        if records is None and backend.uses_llm:
            records, counts = await _critique(
                model, dataset, spec, indices, critic, what, run,
                providers=(critic_provider, judge_provider), seed=seed, device=device,
                progress=progress, on_sample=on_sample, timings=timings,
            )  # fmt: skip
            _check_some_masks(records, counts, len(indices), critic)
        else:  # masks made already, or the true ones
            records = ground_truth_records(dataset, indices) if records is None else list(records)
            counts = CritiqueCounts()
            run.add(records)
        timings["critique_s"] = time.perf_counter() - started
        history = await run.finish()
    except BaseException:
        await run.abort()
        raise
    timings["total_s"] = time.perf_counter() - started
    after = await asyncio.to_thread(_evaluate, run.trainer.model_, dataset)
    result = AlignResult(
        model=run.trainer.model_, before=before, after=after, samples=records, lam=lam,
        critic=critic, history=history, counts=counts, timings=timings,
        verdict_accuracy=_score_verdicts(records, dataset) if backend.uses_llm else None,
    )  # fmt: skip
    if counts.stopped is not None:  # trained on the masks received before the stop
        stop = _stop_line(counts, len(records), len(indices))
        raise RunStopped(stop, result=result, metrics=result.metrics_dict())
    return result


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
    dataset: DatasetSplits, n_align: int, seed: int, records: Sequence[SampleRecord] | None
) -> Tensor:
    if records is not None:
        return torch.tensor([r.index for r in records], dtype=torch.long)
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
) -> tuple[list[SampleRecord], CritiqueCounts]:
    """Stages 1-6 over `indices`: records in alignment order, masks fed to `run` (as they
    arrive when streaming, in alignment order otherwise), and the engine's totals."""
    explained = copy.deepcopy(model).eval()  # explanations always come from the original
    ready = None if providers[0] is None else (providers[0], providers[1])
    session = await open_session(
        get_critic(critic.kind), critic, spec.family, providers=ready, progress=progress
    )
    records: list[SampleRecord] = []
    async with session:
        samples = rendered_samples(
            explained, dataset.train, indices, options, seed=seed, device=device, timings=timings
        )
        async for record in critique_samples(
            samples, session, spec, dataset, soft_masks=options.soft_masks, total=len(indices)
        ):
            records.append(record)
            if run.options.streaming:
                run.add([record])
            if on_sample is not None:
                on_sample(record)
        engine = session.engine
        stopped = engine.stopped.line() if engine.stopped is not None else None
        not_pulled = len(indices) - len(records)
        counts = CritiqueCounts.from_engine(engine.stats, not_pulled=not_pulled, stopped=stopped)
    # Answers arrive in completion order; records (and, when not streaming, the pool the
    # trainer draws from) follow the alignment order, so a sequential run is reproducible.
    position = {int(i): k for k, i in enumerate(indices)}
    records.sort(key=lambda r: position[r.index])
    if not run.options.streaming:
        run.add(records)
    return records, counts


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
