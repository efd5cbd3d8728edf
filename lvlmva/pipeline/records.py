"""The typed records that pass between the pipeline's stages, and `align`'s result."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from lvlmva.critics.settings import CriticSettings
from lvlmva.engine.types import Usage
from lvlmva.vision.metrics import Metrics, VerdictAccuracy
from lvlmva.vision.render import CriticImages
from lvlmva.vision.rrr import RRRHistory

if TYPE_CHECKING:
    from lvlmva.pipeline.selection import Selection

__all__ = ["AlignResult", "CritiqueCounts", "RenderedSample", "SampleRecord"]


@dataclass(frozen=True)
class RenderedSample:
    """One training sample after explain + segment + render: its PPEPS-WGM clusters
    (`cluster_labels` [H, W], -1 = background; `responsibilities` [J, H, W]) and the three
    Critic images with the colour names of the clusters present."""

    index: int
    label: int
    cluster_labels: Tensor = field(repr=False)
    responsibilities: Tensor = field(repr=False)
    images: CriticImages = field(repr=False)

    @property
    def colors(self) -> tuple[str, ...]:
        return self.images.colors

    @property
    def cluster_ids(self) -> tuple[int, ...]:
        return self.images.cluster_ids

    def pngs(self) -> dict[str, bytes]:
        """The Critic images by name: original, clusters, overlay."""
        return {
            "original": self.images.original,
            "clusters": self.images.clusters,
            "overlay": self.images.overlay,
        }


@dataclass
class SampleRecord:
    """One alignment sample: its clusters, the Critic's words, the verdicts, the mask and
    what its critique cost."""

    index: int
    label: int
    class_name: str
    cluster_labels: Tensor = field(repr=False)  # [H, W], -1 = background
    colors: tuple[str, ...]
    cluster_ids: tuple[int, ...]
    status: str  # ok | failed | not_run | ground-truth
    mask: Tensor | None = field(default=None, repr=False)  # [H, W] float, 1 = spurious
    verdicts: dict[str, bool] | None = None
    critique: str | None = field(default=None, repr=False)
    error: str | None = None
    # original / clusters / overlay PNGs
    images: dict[str, bytes] = field(default_factory=dict, repr=False)
    provider_calls: int = 0
    cache_hits: int = 0
    cost_usd: float = 0.0
    # robust verdicts (lvlmva.pipeline.masking): share of "no" per colour over the Critic's
    # samples (several votes only), and P(spurious) after pooling with similar clusters
    votes: dict[str, float] | None = None
    consensus: dict[str, float] | None = None


@dataclass(frozen=True)
class CritiqueCounts:
    """The engine's totals for a run: calls that reached a provider, answers from the cache
    (or shared with an identical request in flight), tokens, cost, and jobs that failed or
    were not run."""

    provider_calls: int = 0
    cache_hits: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    failed: int = 0
    not_run: int = 0

    @classmethod
    def from_engine(cls, stats: Any) -> CritiqueCounts:
        """From `Engine.stats` (the one place the counters are summed)."""
        return cls(
            provider_calls=stats.provider_calls,
            cache_hits=stats.cache_hits + stats.deduplicated,
            usage=stats.usage,
            cost_usd=stats.cost_usd,
            failed=stats.failed,
            not_run=stats.not_run,
        )


@dataclass
class AlignResult:
    """What `align` returns: the aligned model, per-sample records, metrics and LVLM costs."""

    model: nn.Module
    before: Metrics
    after: Metrics
    samples: list[SampleRecord]
    lam: float | None  # None: the original model was kept (see `selection`)
    critic: CriticSettings
    history: RRRHistory | None = None
    verdict_accuracy: VerdictAccuracy | None = None
    counts: CritiqueCounts = field(default_factory=CritiqueCounts)
    timings: dict[str, float] = field(default_factory=dict)
    selection: Selection | None = None  # which model was returned, and why
    robust: dict[str, Any] = field(default_factory=dict)  # robust-verdict settings and counts

    @property
    def n_masks(self) -> int:
        return sum(1 for s in self.samples if s.mask is not None)

    @property
    def provider_calls(self) -> int:
        return self.counts.provider_calls

    @property
    def cache_hits(self) -> int:
        return self.counts.cache_hits

    @property
    def usage(self) -> Usage:
        return self.counts.usage

    @property
    def cost_usd(self) -> float:
        return self.counts.cost_usd

    @property
    def failed_jobs(self) -> int:
        return self.counts.failed

    @property
    def not_run_jobs(self) -> int:
        return self.counts.not_run

    def __repr__(self) -> str:
        # Kept cheap on purpose: asyncio.run() on Python 3.11+ calls repr() of the main task's
        # result (CPython issue 112559), and the generated dataclass repr formatted the model
        # and every sample's tensors, which took 10-30 s after a 1,000-sample run.
        return (
            f"AlignResult(samples={len(self.samples)}, masks={self.n_masks}, lam={self.lam!r}, "
            f"before={self.before.test_accuracy!r}, after={self.after.test_accuracy!r}, "
            f"critic={self.critic.kind!r}, provider_calls={self.provider_calls})"
        )

    def metrics_dict(self) -> dict[str, Any]:
        """The run's figures as JSON-ready values (what `metrics.json` holds)."""
        llm = self.critic.kind != "ground-truth"
        out: dict[str, Any] = {
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "critic": self.critic.kind,
            "critic_model": self.critic.critic_model if llm else None,
            "judge_model": self.critic.judge_model if llm else None,
            "lambda": self.lam,
            "selection": None if self.selection is None else self.selection.to_dict(),
            "robust_verdicts": self.robust,
            "n_align": len(self.samples),
            "n_masks": self.n_masks,
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
            out["configured_verdict_accuracy"] = self.critic.simulation.verdict_accuracy
            out["simulated_error_model"] = self.critic.simulation.error_model
        if self.verdict_accuracy is not None:
            out["verdict_accuracy"] = self.verdict_accuracy.to_dict()
        return out

    def summary(self) -> str:
        """A before/after table of the headline metrics and the LVLM counts."""
        rows = [("test accuracy", "test_accuracy")]
        if self.before.aga is not None:
            rows += [("average group accuracy", "aga"), ("worst group accuracy", "wga")]
        lines = [f"{'':26}{'before':>10}{'after':>10}"]
        for label, name in rows:
            before, after = getattr(self.before, name), getattr(self.after, name)
            lines.append(f"{label:26}{before:>10.4f}{after:>10.4f}")
        verdict = self.verdict_accuracy.accuracy if self.verdict_accuracy is not None else None
        if verdict is not None and not math.isnan(verdict):
            lines.append(f"{'verdict accuracy':26}{'':>10}{verdict:>10.4f}")
        lines.append(
            f"LVLM calls {self.provider_calls}, cache hits {self.cache_hits}, "
            f"cost ${self.cost_usd:.4f}, failed {self.failed_jobs}, "
            f"masks {self.n_masks}/{len(self.samples)}"
        )
        if self.selection is not None:
            lines.append(self.selection.describe())
        return "\n".join(lines)
