"""A critique run: pipeline stages 1-6 over a dataset split, each sample written to a durable
`lvlmva.runs.CritiqueRun` as soon as its verdicts arrive, no training.

The samples are a seeded permutation of the split (for the training split, the order `align`
uses), so asking for more later (`n` larger, or all) appends to the same run. A resumed run skips
every sample stored "ok" and retries failed and not-run ones; answers the engine had already
received come from the answer cache. Nothing holds more than the samples in flight: records,
images and masks go to disk one sample at a time.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lvlmva.critics import CriticSettings, get_critic, open_session
from lvlmva.engine.types import Provider
from lvlmva.errors import ConfigError
from lvlmva.pipeline.align import choose_alignment_indices, resolve_spec
from lvlmva.pipeline.critique import critique_samples
from lvlmva.pipeline.executors import ExecutorSettings, VisionJob, open_executor
from lvlmva.pipeline.options import CritiqueOptions
from lvlmva.pipeline.records import CritiqueCounts, RenderedSample, SampleRecord
from lvlmva.prompts import TaskSpec, load_prompt_set
from lvlmva.runs import CritiqueRun, RunManifest, RunRecord, SampleArrays
from lvlmva.vision.datasets.base import DatasetSplits, ShortcutDataset

__all__ = [
    "SPLITS",
    "CritiqueRunResult",
    "critique_run",
    "file_sha256",
    "run_manifest",
    "sample_order",
]

SPLITS = ("train", "val", "test")
# Settings a resumed run must share with the run it continues (others, such as the budget or
# the endpoint's address, may change between sessions).
_SAME_CRITIC = ("kind", "critic_model", "judge_model", "fused", "seed", "verdict_accuracy")
_SAME_EXTRA = ("seed", "n_clusters", "attribution")


@dataclass(frozen=True)
class CritiqueRunResult:
    """What one `critique_run` call did: samples asked for, already stored (skipped), stored
    now by status, the engine's totals for this call, and wall times."""

    path: Path
    requested: int
    skipped: int
    stored: dict[str, int]
    counts: CritiqueCounts
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        t = self.counts.tally
        done = ", ".join(f"{n} {s}" for s, n in sorted(self.stored.items())) or "nothing new"
        lines = [
            f"critique run {self.path}: {self.requested} samples asked for, {self.skipped} "
            f"already stored, now {done}; LVLM calls {t.provider_calls}, answers reused "
            f"{t.reused}, cost ${t.cost_usd:.4f}"
        ]
        lines.extend(self.counts.notes())
        return "\n".join(lines)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 (hex) of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def sample_order(n_split: int, n: int | None, seed: int) -> torch.Tensor:
    """The first `n` (None: all) of the split's seeded permutation; for the training split
    these are `align`'s alignment samples, and a larger `n` extends the same prefix."""
    return choose_alignment_indices(n_split, n_split if n is None else n, seed)


def _critic_entries(critic: CriticSettings) -> dict[str, Any]:
    entries: dict[str, Any] = {
        "kind": critic.kind,
        "critic_model": critic.critic_model,
        "judge_model": critic.judge_model,
        "base_url": critic.base_url,
        "fused": critic.fused,
        "seed": critic.seed,
        "options": dict(critic.options),
        "max_in_flight": critic.limits.max_in_flight,
        "rpm": critic.limits.rpm,
        "tpm": critic.limits.tpm,
        "budget_usd": critic.limits.budget_usd,
    }
    if critic.kind == "simulated":
        entries["verdict_accuracy"] = critic.simulation.verdict_accuracy
    return entries


def run_manifest(
    dataset: DatasetSplits,
    split: str,
    spec: TaskSpec,
    critic: CriticSettings,
    options: CritiqueOptions,
    *,
    seed: int,
    checkpoint_sha256: str | None = None,
    model_path: str | None = None,
) -> RunManifest:
    """The manifest of a run of `split` (secrets never enter it: `api_key` is not read)."""
    info = dataset.info
    return RunManifest(
        dataset=info.name,
        split=split,
        class_names=info.class_names,
        masks="soft" if options.soft_masks else "hard",
        checkpoint_sha256=checkpoint_sha256,
        dataset_options=dict(info.options),
        spec_version=spec.sha256,
        prompt_version=load_prompt_set(spec.family).sha256,
        critic=_critic_entries(critic),
        extra={
            "seed": seed,
            "n_clusters": options.n_clusters,
            "attribution": options.attribution,
            "votes": options.votes,
            "spec_task": spec.task,
            "model_path": model_path,
        },
    )


def _open_run(path: Path, manifest: RunManifest, *, sync: bool) -> CritiqueRun:
    """Create the run, or reopen it after checking that it was made the same way."""
    if not (path / "manifest.json").exists():
        return CritiqueRun.create(path, manifest, sync=sync)
    run = CritiqueRun.open(path, sync=sync)
    have = run.manifest
    clashes = [
        name
        for name in ("dataset", "split", "class_names", "masks", "checkpoint_sha256",
                     "dataset_options", "spec_version", "prompt_version")
        if getattr(have, name) != getattr(manifest, name)
    ]  # fmt: skip
    clashes += [f"critic {k}" for k in _SAME_CRITIC if have.critic.get(k) != manifest.critic.get(k)]
    clashes += [k for k in _SAME_EXTRA if have.extra.get(k) != manifest.extra.get(k)]
    if have.extra.get("votes", 1) != manifest.extra.get("votes", 1):  # runs before votes: 1
        clashes.append("votes")
    if clashes:
        run.close()
        raise ConfigError(
            f"--out {path} holds a critique run made differently ({', '.join(clashes)} differ); "
            "resume it with the same model, data, spec and critic, or choose a new --out"
        )
    return run


def _spurious_colors(sample: RenderedSample, split: ShortcutDataset) -> tuple[str, ...] | None:
    """Colours of the clusters that touch the sample's ground-truth spurious region, if known."""
    if split.spurious_masks is None:
        return None
    region = split.spurious_masks[sample.index].bool().to(sample.cluster_labels.device)
    labels = sample.cluster_labels
    return tuple(
        color
        for color, k in zip(sample.colors, sample.cluster_ids, strict=True)
        if bool(((labels == k) & region).any())
    )


def stored_sample(
    record: SampleRecord, sample: RenderedSample, split_name: str, split: ShortcutDataset
) -> tuple[RunRecord, SampleArrays]:
    """The store's record and files of one critiqued sample."""
    status = record.status if record.status in ("ok", "failed") else "not_run"
    run_record = RunRecord(
        index=record.index,
        split=split_name,
        label=record.label,
        class_name=record.class_name,
        status=status,
        colors=record.colors,
        cluster_ids=record.cluster_ids,
        prediction=sample.prediction,
        confidence=sample.confidence,
        critique=record.critique,
        verdicts=record.verdicts if status == "ok" else None,
        agreement=_agreement(record) if status == "ok" else None,
        provider_calls=record.tally.provider_calls,
        cache_hits=record.tally.reused,
        cost_usd=record.tally.cost_usd,
        error=record.error,
        spurious_colors=_spurious_colors(sample, split),
    )
    arrays = SampleArrays(
        images=sample.pngs(),
        labels=sample.cluster_labels,
        responsibilities=sample.responsibilities,
        attribution=sample.attribution,
        mask=record.mask,
    )
    return run_record, arrays


def _agreement(record: SampleRecord) -> dict[str, float] | None:
    """How sure the critic was of each verdict, where it was graded (several votes, or the
    verdict tokens' log-probabilities): the "no" share for a "no", one minus it for a "yes"."""
    if record.votes is None or record.verdicts is None:
        return None
    return {c: p if not record.verdicts[c] else 1.0 - p for c, p in record.votes.items()}


async def _tracked(
    samples: AsyncIterator[RenderedSample], pending: dict[int, RenderedSample]
) -> AsyncIterator[RenderedSample]:
    """`samples`, each kept in `pending` until its record is stored."""
    async for sample in samples:
        pending[sample.index] = sample
        yield sample


async def critique_run(
    model: nn.Module,
    dataset: DatasetSplits,
    out: str | Path,
    spec: TaskSpec | str | None = None,
    *,
    critic: CriticSettings | None = None,
    critique: CritiqueOptions | None = None,
    split: str = "train",
    n: int | None = 1000,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    checkpoint_sha256: str | None = None,
    model_path: str | None = None,
    sync: bool = True,
    providers: tuple[Provider, Provider | None] | None = None,
    executor: ExecutorSettings | None = None,
) -> CritiqueRunResult:
    """Explain, segment, render and critique the first `n` (None: all) samples of the seeded
    permutation of `split` with `model`, storing each in the run folder `out` (created, or
    resumed and extended). `providers` (Critic, Judge) replace the critic's own connection;
    `executor` says where the vision stages run (default: a thread of this process; the LVLM
    calls always leave from here, through one engine)."""
    critic = critic or CriticSettings()
    options = critique or CritiqueOptions()
    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if n is not None and n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    backend = get_critic(critic.kind)
    if not backend.uses_llm:
        raise ConfigError(
            f"--critic {critic.kind} asks no LVLM, so there is nothing to critique; choose "
            "simulated, openai or litellm"
        )
    spec = resolve_spec(spec, dataset)
    part: ShortcutDataset = getattr(dataset, split)
    if len(part) == 0:
        raise ConfigError(
            f"the {split} split of {dataset.info.name} is empty; pick another --split"
        )
    open_executor(executor).preflight()
    if providers is None:
        await backend.preflight(critic)
    device = torch.device(device)
    manifest = run_manifest(
        dataset, split, spec, critic, options, seed=seed,
        checkpoint_sha256=checkpoint_sha256, model_path=model_path,
    )  # fmt: skip
    started = time.perf_counter()
    with _open_run(Path(out), manifest, sync=sync) as run:
        order = sample_order(len(part), n, seed)
        done = set(run.done_indices())
        todo = torch.tensor([i for i in order.tolist() if i not in done], dtype=torch.long)
        stored: dict[str, int] = {}
        counts = CritiqueCounts()
        timings: dict[str, float] = {}
        if len(todo):
            counts = await _critique_into(
                run, model, dataset, spec, todo, critic, options, split,
                seed=seed, device=device, progress=progress, providers=providers,
                stored=stored, timings=timings, executor=executor,
            )  # fmt: skip
        timings["total_s"] = time.perf_counter() - started
        return CritiqueRunResult(
            run.root, len(order), len(order) - len(todo), stored, counts, timings
        )


async def _critique_into(
    run: CritiqueRun,
    model: nn.Module,
    dataset: DatasetSplits,
    spec: TaskSpec,
    todo: torch.Tensor,
    critic: CriticSettings,
    options: CritiqueOptions,
    split: str,
    *,
    seed: int,
    device: torch.device,
    progress: bool,
    providers: tuple[Provider, Provider | None] | None,
    stored: dict[str, int],
    timings: dict[str, float],
    executor: ExecutorSettings | None = None,
) -> CritiqueCounts:
    """Stages 1-6 over `todo`, each record stored as it completes; the engine's totals. The
    executor computes stages 1-3 wherever it runs; the records are made and stored here."""
    explained = copy.deepcopy(model).eval()  # the caller's model is left as it is
    part: ShortcutDataset = getattr(dataset, split)
    pending: dict[int, RenderedSample] = {}
    async with open_executor(executor) as vision:
        session = await open_session(
            get_critic(critic.kind), critic, spec.family, providers=providers, progress=progress
        )
        async with session:
            job = VisionJob(explained, part, todo, options, seed=seed, device=device)
            samples = vision.rendered(job, timings)
            records = critique_samples(
                _tracked(samples, pending), session, spec, dataset,
                soft_masks=options.soft_masks, total=len(todo), split_name=split,
                votes=options.votes, seed=seed,
            )  # fmt: skip
            async for record in records:
                sample = pending.pop(record.index)
                run_record, arrays = stored_sample(record, sample, split, part)
                await asyncio.to_thread(run.add, run_record, arrays)
                stored[run_record.status] = stored.get(run_record.status, 0) + 1
            return CritiqueCounts.from_engine(session.engine.stats)


def manifest_critic(manifest: RunManifest) -> CriticSettings:
    """The critic settings a run was made with, as far as the manifest keeps them (for reports
    and for `align --critique`; no endpoint, no key)."""
    entries: Mapping[str, Any] = manifest.critic
    kind = str(entries.get("kind", "openai"))
    settings = CriticSettings(
        kind if kind in ("simulated", "openai", "litellm") else "openai",
        critic_model=str(entries.get("critic_model", "unknown")),
        judge_model=str(entries.get("judge_model", entries.get("critic_model", "unknown"))),
        fused=bool(entries.get("fused", False)),
    )
    if kind == "simulated" and entries.get("verdict_accuracy") is not None:
        settings = settings.replace(verdict_accuracy=float(entries["verdict_accuracy"]))
    return settings
