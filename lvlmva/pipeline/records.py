"""The typed records that pass between the pipeline's stages, and `align`'s result."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from lvlmva.critics.settings import CriticSettings
from lvlmva.engine.types import Tally, Usage
from lvlmva.vision.metrics import Metrics, VerdictAccuracy
from lvlmva.vision.render import CriticImages
from lvlmva.vision.rrr import RRRHistory

if TYPE_CHECKING:
    from lvlmva.pipeline.selection import Selection

__all__ = ["AlignResult", "CritiqueCounts", "RenderedSample", "SampleRecord", "critique_metrics"]


@dataclass(frozen=True)
class RenderedSample:
    """One training sample after explain + segment + render: its PPEPS-WGM clusters
    (`cluster_labels` [H, W], -1 = background; `responsibilities` [J, H, W]) and the three
    Critic images with the colour names of the clusters present; the attribution summed over
    channels [H, W] and the model's predicted class and its probability, when computed."""

    index: int
    label: int
    cluster_labels: Tensor = field(repr=False)
    responsibilities: Tensor = field(repr=False)
    images: CriticImages = field(repr=False)
    attribution: Tensor | None = field(default=None, repr=False)
    prediction: int | None = None
    confidence: float | None = None

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
    tally: Tally = field(default_factory=Tally)  # what its critique cost (calls, reuse, USD)
    # robust verdicts (lvlmva.pipeline.masking): share of "no" per colour over the Critic's
    # samples (several votes, or the verdict tokens' P("no") where the Judge gave
    # log-probabilities), and P(spurious) after pooling with similar clusters
    votes: dict[str, float] | None = None
    consensus: dict[str, float] | None = None


@dataclass(frozen=True)
class CritiqueCounts:
    """A run's critique totals: the engine's `Tally` (calls, answers reused, tokens, cost),
    the jobs that failed or were not run, the samples never critiqued because the run stopped
    (`not_pulled`), why it stopped early (`stopped`: the breaker's one line, or None), and the
    models that answered per model asked for (`served`, answers used, cached or new), and the
    worst cases of requests that timed out (`possibly_billed_usd`: the endpoint may have run
    and billed them; not in the tally's cost)."""

    tally: Tally = field(default_factory=Tally)
    failed: int = 0
    not_run: int = 0
    not_pulled: int = 0
    stopped: str | None = None
    served: dict[str, dict[str, int]] = field(default_factory=dict)
    possibly_billed_usd: float = 0.0

    @classmethod
    def from_engine(cls, stats: Any, **more: Any) -> CritiqueCounts:
        """From `Engine.stats`, the one place the counters are summed."""
        return cls(
            stats.tally, stats.failed, stats.not_run, served=stats.snapshots(),
            possibly_billed_usd=stats.possibly_billed_usd, **more,
        )

    def notes(self) -> list[str]:
        """The summary lines a run's totals call for: what timed-out requests may have cost
        (they count against a budget), and a moved alias."""
        lines = []
        if self.possibly_billed_usd > 0:
            lines.append(
                f"timed-out requests may have been billed up to ${self.possibly_billed_usd:.4f} "
                "(not in the cost above; counted against --budget-usd)"
            )
        if self.snapshot_warning:
            lines.append(f"WARNING: {self.snapshot_warning}")
        return lines

    @property
    def snapshot_warning(self) -> str | None:
        """A warning when the answers to one model name came from several models: an alias
        (gpt-4o) moved to a new snapshot between the cached answers and the new ones, so one
        run mixes two critics. None when every name was answered by one model."""
        mixed = {asked: found for asked, found in self.served.items() if len(found) > 1}
        if not mixed:
            return None
        parts = []
        for asked, found in mixed.items():
            named = ", ".join(f"{model}: {n}" for model, n in found.items())
            parts.append(f"{asked} by {len(found)} models ({named})")
        newest = max(next(iter(mixed.values())))
        return (
            "the answers to " + "; ".join(parts) + " (the alias moved while answers were "
            f"cached); pin a dated snapshot (e.g. --critic-model {newest}) or use a fresh "
            "--cache-dir so that one model answers every image"
        )


def critique_metrics(samples: list[SampleRecord], counts: CritiqueCounts) -> dict[str, Any]:
    """What the critique did, for metrics.json: failures by reason and per sample, the jobs
    whose answers were paid for but gave no verdict (and what they cost), samples never
    critiqued, and why the run stopped."""
    failed = [s for s in samples if s.status in ("failed", "not_run")]
    reasons = Counter(s.error or s.status for s in failed)
    abandoned = [s for s in failed if s.tally.cost_usd > 0]
    return {
        "failure_reasons": dict(reasons.most_common()),
        "failed_samples": [
            {"index": s.index, "status": s.status, "error": s.error} for s in failed
        ],
        "paid_without_verdict": {
            "jobs": len(abandoned),
            "cost_usd": round(sum(s.tally.cost_usd for s in abandoned), 6),
        },
        "not_critiqued": counts.not_pulled,
        "stopped": counts.stopped,
        "cached_prompt_tokens": counts.tally.usage.cached_tokens,
        "reasoning_tokens": counts.tally.usage.reasoning_tokens,
        "served_models": counts.served,
        "snapshot_warning": counts.snapshot_warning,
        "timed_out_possibly_billed_usd": round(counts.possibly_billed_usd, 6),
    }


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
        return self.counts.tally.provider_calls

    @property
    def cache_hits(self) -> int:
        """Answers not paid for: from the cache or shared with an identical request."""
        return self.counts.tally.reused

    @property
    def usage(self) -> Usage:
        return self.counts.tally.usage

    @property
    def cost_usd(self) -> float:
        return self.counts.tally.cost_usd

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
        if llm:
            out.update(critique_metrics(self.samples, self.counts))
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
        if self.robust.get("warning"):
            lines.append(f"WARNING: {self.robust['warning']}")
        lines.extend(self.counts.notes())
        return "\n".join(lines)
