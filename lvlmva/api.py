"""The library call: `await lvlmva.align(model, dataset, spec)`.

This is the one place where `vision/` (explanations, clusters, masks, RRR) meets `engine/`
(the Critic & Judge over an LVLM API). The pipeline streams: attributions and PPEPS-WGM run in
batches in a worker thread, rendered jobs go to the engine as they are ready, verdicts become
masks in an `AlignmentPool`, and the RRR trainer (another thread) starts once a first share of
masks exists and takes in the rest as they arrive.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lvlmva.engine.types import CritiqueJob, ImagePart, JobResult, JobStatus, Provider, Usage
from lvlmva.errors import ConfigError, DataError
from lvlmva.vision.datasets.base import DatasetSplits

log = logging.getLogger(__name__)

CriticKind = Literal["simulated", "openai", "litellm", "ground-truth"]
SIMULATED_CRITIC_MODEL = "simulated-critic"
SIMULATED_JUDGE_MODEL = "simulated-judge"


@dataclass(frozen=True)
class CriticSettings:
    """Which LVLM critiques the explanations, and how it is reached.

    `kind="simulated"` is the documented offline simulation (it answers from the datasets'
    ground-truth masks with `verdict_accuracy`); it is never a real model. `kind="ground-truth"`
    skips the LVLM and uses the true spurious masks (the RRR upper bound).
    """

    kind: CriticKind = "simulated"
    critic_model: str = SIMULATED_CRITIC_MODEL
    judge_model: str = SIMULATED_JUDGE_MODEL
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    fused: bool = False
    verdict_accuracy: float = 0.87
    relevant_accuracy: float | None = None
    sim_latency_ms: float = 0.0
    sim_transport: Literal["in-process", "http"] = "in-process"
    rpm: float | None = None
    tpm: float | None = None
    max_in_flight: int = 32
    budget_usd: float | None = None
    cache_dir: str | Path | None = None
    prices_file: str | Path | None = None
    seed: int = 0


@dataclass
class SampleRecord:
    """One alignment sample: its clusters, the Critic's words, the verdicts and the mask."""

    index: int
    label: int
    class_name: str
    cluster_labels: Tensor = field(repr=False)  # [H, W], -1 = background
    colors: tuple[str, ...]
    cluster_ids: tuple[int, ...]
    status: str
    mask: Tensor | None = field(default=None, repr=False)  # [H, W] float, 1 = spurious
    verdicts: dict[str, bool] | None = None
    critique: str | None = field(default=None, repr=False)
    error: str | None = None
    # original / clusters / overlay PNGs
    images: dict[str, bytes] = field(default_factory=dict, repr=False)


@dataclass
class AlignResult:
    """What `align` returns: the aligned model, per-sample records, metrics and LVLM costs."""

    model: nn.Module
    before: Any  # lvlmva.vision.metrics.Metrics
    after: Any
    samples: list[SampleRecord]
    lam: float
    critic: CriticSettings
    history: Any = None
    verdict_accuracy: Any = None
    provider_calls: int = 0
    cache_hits: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    failed_jobs: int = 0
    not_run_jobs: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def __repr__(self) -> str:
        # Kept cheap on purpose: asyncio.run() on Python 3.11+ calls repr() of the main task's
        # result (CPython issue 112559), and the generated dataclass repr formatted the model
        # and every sample's tensors, which took 10-30 s after a 1,000-sample run.
        before = getattr(self.before, "test_accuracy", None)
        after = getattr(self.after, "test_accuracy", None)
        return (
            f"AlignResult(samples={len(self.samples)}, "
            f"masks={sum(1 for s in self.samples if s.mask is not None)}, lam={self.lam!r}, "
            f"before={before!r}, after={after!r}, critic={self.critic.kind!r}, "
            f"provider_calls={self.provider_calls})"
        )

    def metrics_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "critic": self.critic.kind,
            "critic_model": self.critic.critic_model
            if self.critic.kind != "ground-truth"
            else None,
            "judge_model": self.critic.judge_model if self.critic.kind != "ground-truth" else None,
            "lambda": self.lam,
            "n_align": len(self.samples),
            "n_masks": sum(1 for s in self.samples if s.mask is not None),
            "provider_calls": self.provider_calls,
            "cache_hits": self.cache_hits,
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "failed_jobs": self.failed_jobs,
            "not_run_jobs": self.not_run_jobs,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        }
        if self.critic.kind == "simulated":
            out["configured_verdict_accuracy"] = self.critic.verdict_accuracy
        if self.verdict_accuracy is not None:
            out["verdict_accuracy"] = self.verdict_accuracy.to_dict()
        return out


def resolve_spec(spec: Any, splits: DatasetSplits) -> Any:
    """A `TaskSpec`, a path to a spec file, a built-in spec name, or None (the dataset's task)."""
    from lvlmva.prompts import TaskSpec, load_spec

    if spec is None:
        spec = splits.info.task
    if not isinstance(spec, TaskSpec):
        spec = load_spec(spec)
    spec.check_classes(splits.info.class_names)
    return spec


async def preflight(critic: CriticSettings, timeout: float = 15.0) -> None:
    """Check that an OpenAI-compatible endpoint answers and accepts the key, before any
    money is spent: one free `GET /models`. Raises ConfigError naming the endpoint."""
    import aiohttp

    from lvlmva.engine.providers.openai_compat import resolve_endpoint

    if critic.kind != "openai":
        return
    base, key = resolve_endpoint(critic.base_url, critic.api_key)
    headers = {"Authorization": f"Bearer {key}"}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(f"{base}/models", headers=headers) as response,
        ):
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ConfigError(
            f"cannot reach the LVLM endpoint {base} ({type(exc).__name__}); check --base-url "
            "and that the server is running"
        ) from None
    if status in (401, 403):
        raise ConfigError(f"the endpoint {base} rejected the API key (HTTP {status})")
    if status >= 500:
        raise ConfigError(f"the endpoint {base} answered HTTP {status}; try again later")


def choose_alignment_indices(n_train: int, n_align: int, seed: int) -> Tensor:
    """A seeded random choice of `n_align` training samples to explain and critique."""
    if n_align <= 0:
        raise ConfigError(f"--n-align must be positive, got {n_align}")
    generator = torch.Generator().manual_seed(seed + 7919)
    return torch.randperm(n_train, generator=generator)[: min(n_align, n_train)]


async def align(
    model: nn.Module,
    dataset: DatasetSplits,
    spec: Any = None,
    *,
    critic: CriticSettings | None = None,
    critic_provider: Provider | None = None,
    judge_provider: Provider | None = None,
    n_align: int = 1000,
    n_clusters: int = 7,
    attribution: str = "deeplift-shap",
    soft_masks: bool = True,
    lam: float | None = None,
    start: Literal["retrain", "finetune"] = "retrain",
    gamma: float = 0.0,
    epochs: int = 5,
    lr: float = 1e-3,
    min_pool_fraction: float = 0.25,
    streaming: bool = True,
    explain_batch: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    on_sample: Callable[[SampleRecord], None] | None = None,
) -> AlignResult:
    """Explain, critique, mask and retrain `model` on `dataset` with the class-level `spec`.

    `critic` says which LVLM to use (default: the offline simulation). `critic_provider` /
    `judge_provider` let a caller pass ready `Provider` objects instead (e.g. a custom client).
    `soft_masks` (default) weights each masked pixel by the "no" clusters' responsibility
    instead of 0/1 (docs/benchmarks.md: it met both group-robustness targets where 0/1 masks
    missed synth-knee, and matched them on decoy-mnist).
    `lam` is the RRR weight; None picks the dataset's default. `start="retrain"` trains the
    model's architecture afresh with the RRR loss, from weights drawn under
    `torch.manual_seed(seed)` like `build_model`'s (explanations still come from the original);
    `"finetune"` continues from the original weights. Streaming (default) starts training once
    `min_pool_fraction` of the masks exist and holds the last epoch until all are in; with
    `streaming=False` every sample is critiqued before training starts and the pool is filled in
    the alignment order (bit-reproducible on CPU).
    """
    from lvlmva.vision.metrics import evaluate, verdict_accuracy
    from lvlmva.vision.models import reinitialize
    from lvlmva.vision.rrr import AlignmentPool, RRRTrainer

    critic = critic or CriticSettings()
    device = torch.device(device)
    info = dataset.info
    timings: dict[str, float] = {}
    started = time.perf_counter()

    before = await asyncio.to_thread(evaluate, model, dataset.test, info, device=device)
    explained_model = copy.deepcopy(model).eval()  # explanations always come from the original
    aligned = copy.deepcopy(model)
    if start == "retrain":
        reinitialize(aligned, seed=seed)  # the same initial weights for the same seed
    elif start != "finetune":
        raise ConfigError(f"start must be 'retrain' or 'finetune', got {start!r}")
    indices = choose_alignment_indices(len(dataset.train), n_align, seed)
    if lam is None:
        lam = default_lambda(info.name, start, critic_masks=critic.kind != "ground-truth")

    pool = AlignmentPool()
    min_pool = max(1, int(min_pool_fraction * len(indices))) if streaming else len(indices)
    trainer = RRRTrainer(
        aligned,
        lam=lam,
        gamma=gamma,
        epochs=epochs,
        lr=lr,
        seed=seed,
        device=device,
        progress=progress,
        min_pool=min_pool,
    )
    records: list[SampleRecord] = []
    stats = _CritiqueStats()

    def add_to_pool(record: SampleRecord) -> None:
        if record.mask is not None:
            pool.add(
                dataset.train.images[record.index : record.index + 1],
                record.mask.unsqueeze(0),
                dataset.train.labels[record.index : record.index + 1],
            )

    train_task: asyncio.Future | None = None
    if streaming:
        train_task = asyncio.ensure_future(asyncio.to_thread(trainer.fit, dataset.train, pool))

    try:
        if critic.kind == "ground-truth":
            records = _ground_truth_records(dataset, indices, pool)
        else:
            spec = resolve_spec(spec, dataset)
            async for record in _critique_stream(
                explained_model,
                dataset,
                spec,
                indices,
                critic,
                critic_provider,
                judge_provider,
                n_clusters,
                attribution,
                soft_masks,
                explain_batch,
                seed,
                device,
                stats,
                progress=progress,
            ):
                records.append(record)
                if streaming:
                    add_to_pool(record)
                if on_sample is not None:
                    on_sample(record)
            # Answers arrive in completion order; records (and, when not streaming, the pool
            # the trainer draws from) follow the alignment order, so a run is reproducible.
            position = {int(i): k for k, i in enumerate(indices)}
            records.sort(key=lambda r: position[r.index])
            if not streaming:
                for record in records:
                    add_to_pool(record)
        timings["critique_s"] = time.perf_counter() - started
        pool.close()
        if len(pool) == 0:
            raise DataError(
                "no correction masks were produced (every critique failed or was not run); "
                "see the per-sample errors, check the endpoint and budget, and rerun"
            )
        if train_task is None:
            await asyncio.to_thread(trainer.fit, dataset.train, pool)
        else:
            await train_task
    except BaseException:
        pool.close()
        if train_task is not None:
            trainer.stop()
            await asyncio.gather(train_task, return_exceptions=True)
        raise
    timings["total_s"] = time.perf_counter() - started

    after = await asyncio.to_thread(evaluate, aligned, dataset.test, info, device=device)
    vacc = None
    if critic.kind != "ground-truth" and dataset.train.spurious_masks is not None:
        scored = [r for r in records if r.verdicts is not None]
        vacc = verdict_accuracy(
            [r.cluster_labels for r in scored],
            [r.colors for r in scored],
            [r.cluster_ids for r in scored],
            [r.verdicts for r in scored],
            dataset.train.spurious_masks[[r.index for r in scored]],
        )
    return AlignResult(
        model=aligned,
        before=before,
        after=after,
        samples=records,
        lam=lam,
        critic=critic,
        history=trainer.history_,
        verdict_accuracy=vacc,
        provider_calls=stats.provider_calls,
        cache_hits=stats.cache_hits,
        usage=stats.usage,
        cost_usd=stats.cost_usd,
        failed_jobs=stats.failed,
        not_run_jobs=stats.not_run,
        timings=timings,
    )


def align_sync(*args: Any, **kwargs: Any) -> AlignResult:
    """`align` for callers without an event loop."""
    return asyncio.run(align(*args, **kwargs))


# RRR weights measured per dataset and start mode (inputs in [0, 1]; docs/benchmarks.md).
# Fine-tuning a model that already relies on a shortcut starts with a penalty of 1e3-1e4 against
# a cross-entropy near 0.05, so it needs a far smaller weight than training afresh.
_DEFAULT_LAMBDA = {
    ("decoy-mnist", "retrain"): 0.1,
    ("decoy-digits", "retrain"): 1e-2,
    ("decoy-digits", "finetune"): 1e-4,
    ("decoy-mnist", "finetune"): 1e-4,
}
# Critic masks are noisier than true ones (wrong "no" verdicts on the digit, decoys that never
# got positive attribution), and a weaker penalty suits them: on decoy-mnist the validation
# search chose 0.003 for the simulated critic at 0.87 against 0.1 for true masks
# (docs/bench_align.md).
_CRITIC_MASK_LAMBDA = {("decoy-mnist", "retrain"): 3e-3}


def default_lambda(dataset: str, start: str = "retrain", *, critic_masks: bool = False) -> float:
    """The RRR weight used when none is given, for masks from a critic or the true ones
    (search one with `lvlmva.vision.rrr.search_lambda` for a new dataset)."""
    if critic_masks and (dataset, start) in _CRITIC_MASK_LAMBDA:
        return _CRITIC_MASK_LAMBDA[(dataset, start)]
    return _DEFAULT_LAMBDA.get((dataset, start), 1.0 if start == "retrain" else 1e-4)


@dataclass
class _CritiqueStats:
    provider_calls: int = 0
    cache_hits: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    failed: int = 0
    not_run: int = 0

    def add(self, result: JobResult) -> None:
        self.provider_calls += result.provider_calls
        self.cache_hits += result.cache_hits
        self.usage = self.usage + result.usage
        self.cost_usd += result.cost_usd
        self.failed += result.status is JobStatus.FAILED
        self.not_run += result.status is JobStatus.NOT_RUN


def _ground_truth_records(dataset: DatasetSplits, indices: Tensor, pool: Any) -> list[SampleRecord]:
    masks = dataset.train.spurious_masks
    if masks is None:
        raise DataError(
            f"dataset {dataset.info.name!r} has no ground-truth spurious masks, so "
            "--critic ground-truth cannot be used; choose an LVLM critic"
        )
    chosen = masks[indices].float()
    pool.add(dataset.train.images[indices], chosen, dataset.train.labels[indices])
    records = []
    for i, mask in zip(indices.tolist(), chosen, strict=True):
        label = int(dataset.train.labels[i])
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


_PREFETCH_BATCHES = 2  # explained batches held ready ahead of the engine


@dataclass
class _Pending:
    """What the vision side keeps about a job while the LVLM works on it."""

    index: int
    label: int
    cluster_labels: Tensor
    responsibilities: Tensor
    colors: tuple[str, ...]
    cluster_ids: tuple[int, ...]
    images: dict[str, bytes]


async def _critique_stream(
    model: nn.Module,
    dataset: DatasetSplits,
    spec: Any,
    indices: Tensor,
    critic: CriticSettings,
    critic_provider: Provider | None,
    judge_provider: Provider | None,
    n_clusters: int,
    attribution: str,
    soft_masks: bool,
    explain_batch: int,
    seed: int,
    device: torch.device,
    stats: _CritiqueStats,
    *,
    progress: bool | None = None,
) -> AsyncIterator[SampleRecord]:
    """Explain + segment + render in batches, critique as jobs become ready, yield records."""
    from lvlmva.vision.masks import mask_from_verdicts

    pending: dict[str, _Pending] = {}
    if critic.kind == "simulated" and dataset.train.spurious_masks is None:
        raise DataError(
            f"the simulated critic answers from ground-truth spurious masks, and dataset "
            f"{dataset.info.name!r} has none; use --critic openai or litellm"
        )
    engine, oracle, closers = await build_engine(
        critic, spec.family, critic_provider, judge_provider, progress=progress
    )
    info = dataset.info

    # Explanations run ahead of the engine, at most `_PREFETCH_BATCHES` batches: the CPU/GPU
    # work of the next batch overlaps the LVLM's latency on this one instead of draining it.
    # Items: a batch, the producer's error, or None at the end.
    ready: asyncio.Queue[list[_Pending] | Exception | None] = asyncio.Queue(_PREFETCH_BATCHES)

    async def explain_ahead() -> None:
        try:
            for start in range(0, len(indices), explain_batch):
                batch = indices[start : start + explain_batch]
                rendered = await asyncio.to_thread(
                    _explain_segment_render,
                    model,
                    dataset,
                    batch,
                    n_clusters,
                    attribution,
                    seed,
                    device,
                )
                await ready.put(rendered)
        except Exception as exc:
            await ready.put(exc)
        else:
            await ready.put(None)

    producer = asyncio.ensure_future(explain_ahead())

    async def jobs() -> AsyncIterator[CritiqueJob]:
        while (rendered := await ready.get()) is not None:
            if isinstance(rendered, Exception):
                raise rendered
            for item in rendered:
                job_id = f"{info.name}/train/{item.index}"
                pending[job_id] = item
                if oracle is not None:
                    oracle.add(
                        ImagePart("original", item.images["original"]).sha256,
                        dataset.train.spurious_masks[item.index].numpy(),
                    )
                variables = dict(spec.variables(info.class_names[item.label]))
                yield CritiqueJob(
                    job_id=job_id,
                    images=tuple(
                        ImagePart(name, item.images[name])
                        for name in ("original", "clusters", "overlay")
                    ),
                    colors=item.colors,
                    variables=variables,
                )

    try:
        async for result in engine.run(jobs(), total=len(indices)):
            stats.add(result)
            item = pending.pop(result.job_id)
            mask = None
            if result.ok and result.verdicts is not None:
                mask = mask_from_verdicts(
                    item.cluster_labels,
                    item.colors,
                    item.cluster_ids,
                    result.verdicts,
                    responsibilities=item.responsibilities,
                    soft=soft_masks,
                )
            yield SampleRecord(
                index=item.index,
                label=item.label,
                class_name=info.class_names[item.label],
                cluster_labels=item.cluster_labels,
                colors=item.colors,
                cluster_ids=item.cluster_ids,
                status=result.status.value,
                mask=mask,
                verdicts=dict(result.verdicts) if result.verdicts else None,
                critique=result.critique,
                error=result.error,
                images=item.images,
            )
    finally:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)
        await engine.aclose()
        for close in closers:
            await close()


def _explain_segment_render(
    model: nn.Module,
    dataset: DatasetSplits,
    batch: Tensor,
    n_clusters: int,
    attribution: str,
    seed: int,
    device: torch.device,
) -> list[_Pending]:
    """Vision work for one batch (runs in a worker thread)."""
    from lvlmva.vision.attribution import explain
    from lvlmva.vision.ppeps import segment
    from lvlmva.vision.render import render_critic_images

    images = dataset.train.images[batch]
    labels = dataset.train.labels[batch]
    attributions = explain(
        model,
        images,
        labels,
        method=attribution,
        baselines=dataset.train.images,
        device=device,
        seed=seed + int(batch[0]),
    )
    seg = segment(attributions, n_clusters, seed=seed, device=device)
    out = []
    for j, index in enumerate(batch.tolist()):
        rendered = render_critic_images(images[j], seg.labels[j])
        out.append(
            _Pending(
                index=index,
                label=int(labels[j]),
                cluster_labels=seg.labels[j],
                responsibilities=seg.responsibilities[j],
                colors=rendered.colors,
                cluster_ids=rendered.cluster_ids,
                images={
                    "original": rendered.original,
                    "clusters": rendered.clusters,
                    "overlay": rendered.overlay,
                },
            )
        )
    return out


async def build_engine(
    critic: CriticSettings,
    prompt_family: str,
    critic_provider: Provider | None = None,
    judge_provider: Provider | None = None,
    *,
    progress: bool | None = None,
) -> tuple[Any, Any, list[Callable[[], Any]]]:
    """The Engine for `critic`, the simulation's oracle (or None) and async closers.
    `progress`: the critique bar (None: only on a terminal)."""
    from lvlmva.cache import VerdictCache
    from lvlmva.engine.cost import ModelPrice, PriceTable
    from lvlmva.engine.engine import Engine, EngineConfig
    from lvlmva.prompts import load_prompt_set

    closers: list[Callable[[], Any]] = []
    oracle = None
    if critic_provider is None:
        critic_provider, oracle, closer = await _make_provider(critic)
        if closer is not None:
            closers.append(closer)
    prices = PriceTable.from_file(critic.prices_file) if critic.prices_file else PriceTable()
    if critic.kind == "simulated":  # a simulation is free: no "no price" warning for it
        free = ModelPrice(0.0, 0.0)
        prices = prices.with_overrides({SIMULATED_CRITIC_MODEL: free, SIMULATED_JUDGE_MODEL: free})
    cache = VerdictCache(Path(critic.cache_dir)) if critic.cache_dir else None
    config = EngineConfig(
        critic_model=critic.critic_model,
        judge_model=critic.judge_model,
        prompts=load_prompt_set(prompt_family),
        fused=critic.fused,
        max_in_flight=critic.max_in_flight,
        rpm=critic.rpm,
        tpm=critic.tpm,
        seed=critic.seed,
        prices=prices,
        budget_usd=critic.budget_usd,
        progress=progress,
    )
    engine = Engine(critic_provider, judge_provider or critic_provider, config, cache=cache)
    return engine, oracle, closers


async def _make_provider(critic: CriticSettings) -> tuple[Provider, Any, Any]:
    """The provider for `critic`, the simulation's oracle (or None) and an async closer."""
    if critic.kind == "simulated":
        from lvlmva.simulation import DictOracle, SimulatedLVLM
        from lvlmva.vision.render import PALETTE

        oracle = DictOracle()
        sim = SimulatedLVLM(
            oracle=oracle,
            palette=PALETTE,
            verdict_accuracy=critic.verdict_accuracy,
            relevant_accuracy=critic.relevant_accuracy,
            latency_ms=critic.sim_latency_ms,
            seed=critic.seed,
        )
        if critic.sim_transport == "http":
            provider, close = await _serve_over_http(sim)
            return provider, oracle, close
        return sim, oracle, None
    if critic.kind == "openai":
        from lvlmva.engine.providers.openai_compat import OpenAICompatibleProvider

        provider = OpenAICompatibleProvider(base_url=critic.base_url, api_key=critic.api_key)
        return provider, None, None
    if critic.kind == "litellm":
        from lvlmva.engine.providers.litellm_provider import LiteLLMProvider

        return LiteLLMProvider(api_base=critic.base_url, api_key=critic.api_key), None, None
    raise ConfigError(
        f"unknown critic {critic.kind!r}: use simulated, openai, litellm or ground-truth"
    )


async def _serve_over_http(sim: Provider) -> tuple[Provider, Callable[[], Any]]:
    """Serve the simulation on loopback and talk to it through the real OpenAI HTTP path."""
    from lvlmva.engine.providers.openai_compat import OpenAICompatibleProvider
    from lvlmva.simulation import start_sim_server

    server = await start_sim_server(sim, host="127.0.0.1", port=0)
    provider = OpenAICompatibleProvider(base_url=server.base_url, api_key="sim")

    async def close() -> None:
        await provider.aclose()
        await server.close()

    return provider, close


def stack_masks(records: Sequence[SampleRecord]) -> Tensor:
    """The masks of the records that have one, stacked [N, H, W]."""
    return torch.stack([r.mask for r in records if r.mask is not None])
