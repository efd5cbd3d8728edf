"""Self-consistency: `votes` Critic & Judge samples of one image, each with the cluster colours
listed in another (seeded) order, and a vote per colour.

The samples are ordinary engine jobs (``<job id>#<v>``), so the engine, its cache and its cost
meter need nothing new: sample 0 keeps the colours' order and is the very request a one-sample
run sends (a rerun with more votes pays only for the new samples). A real LVLM answers a
reordered question partly differently (its random errors) and partly the same (its systematic
ones); only the first kind is voted away. The combined result of a sample carries, per colour,
the share of "no" among its validated samples; its verdict is "no" when more than half said
"no" (a tie keeps the cluster: masking a relevant part is the error that hurts).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass

from lvlmva.engine.types import CritiqueJob, JobResult, JobStatus, Tally

__all__ = ["VoteCollector", "VotedResult", "base_job_id", "variant_jobs"]

_SEP = "#"


def variant_jobs(job: CritiqueJob, votes: int, seed: int) -> list[CritiqueJob]:
    """`votes` jobs for `job`: the first with its colours as they are, the others with them in
    a seeded permutation (never the original order when there are two colours or more).
    One vote: the job itself."""
    if votes <= 1:
        return [job]
    out = [dataclasses.replace(job, job_id=f"{job.job_id}{_SEP}0")]
    for v in range(1, votes):
        colors = list(job.colors)
        random.Random(f"{seed}/{job.job_id}/{v}").shuffle(colors)
        if len(colors) > 1 and tuple(colors) == job.colors:
            colors = colors[1:] + colors[:1]
        out.append(dataclasses.replace(job, job_id=f"{job.job_id}{_SEP}{v}", colors=tuple(colors)))
    return out


def base_job_id(job_id: str, votes: int) -> str:
    """The job id a sample's variant came from."""
    return job_id.rsplit(_SEP, 1)[0] if votes > 1 else job_id


@dataclass(frozen=True)
class VotedResult:
    """A sample's combined result: `result` has the majority verdicts and the summed calls and
    cost of every vote; `no_share` maps each colour to the share of "no" among the validated
    votes (None when none validated), each vote counting its P("no") where its answer had
    token log-probabilities; `graded`: that changed a share; `validated` counts them."""

    result: JobResult
    no_share: Mapping[str, float] | None
    validated: int
    graded: bool = False


class VoteCollector:
    """Gathers the `votes` results of each sample (in any order) and combines them once the
    last one is in."""

    def __init__(self, votes: int) -> None:
        self.votes = votes
        self._waiting: dict[str, dict[int, JobResult]] = {}

    def add(self, result: JobResult) -> VotedResult | None:
        """The combined result when `result` completes its sample, else None."""
        if self.votes <= 1:
            return _combine(result.job_id, [result])
        base, _, index = result.job_id.rpartition(_SEP)
        got = self._waiting.setdefault(base, {})
        got[int(index)] = result
        if len(got) < self.votes:
            return None
        del self._waiting[base]
        return _combine(base, [got[v] for v in sorted(got)])


def _combine(job_id: str, results: list[JobResult]) -> VotedResult:
    ok = [r for r in results if r.ok and r.verdicts is not None]
    costs = {"tally": sum((r.tally for r in results), Tally())}
    if not ok:
        first = results[0]
        status = JobStatus.NOT_RUN if all(
            r.status is JobStatus.NOT_RUN for r in results
        ) else JobStatus.FAILED
        error = next((r.error for r in results if r.error), None)
        combined = JobResult(job_id=job_id, status=status, error=error, critique=first.critique)
        return VotedResult(dataclasses.replace(combined, **costs), None, 0)
    colors = list(ok[0].verdicts)
    said = {c: sum(not r.verdicts.get(c, True) for r in ok) / len(ok) for c in colors}
    verdicts = {c: said[c] <= 0.5 for c in colors}
    no_share = {c: sum(_p_no(r, c) for r in ok) / len(ok) for c in colors}
    graded = no_share != said  # a sure answer's tokens change nothing
    combined = dataclasses.replace(ok[0], job_id=job_id, verdicts=verdicts, **costs)
    return VotedResult(combined, no_share, len(ok), graded)


def _p_no(result: JobResult, color: str) -> float:
    """P("no") of one answer's verdict on `color`: its tokens' where it has them, else 0 / 1."""
    found = (result.no_probability or {}).get(color)
    return float(not result.verdicts.get(color, True)) if found is None else found  # type: ignore[union-attr]
