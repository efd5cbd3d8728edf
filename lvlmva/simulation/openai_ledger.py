"""What the OpenAI stand-in saw and answered, for tests to check a client against:

- every chat call, synchronous or batch line, with the SHA-256 of its canonical request body, its
  status and its usage ("no request answered twice", "at most N synchronous calls");
- every uploaded file and every submitted batch line ("no batch line submitted twice");
- token totals per model and channel, from successful answers only (compare a client's cost
  report with the usage the stand-in priced).

`sim_stats` keeps the `GET /sim/stats` view of the older simulation server (requests by status,
answers per request hash, arrival times), so `lvlmva serve-sim` tooling reads the same numbers.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from lvlmva.simulation.simulator import SimStats

__all__ = ["BatchLineRecord", "CallRecord", "FileRecord", "Ledger", "TokenTotals", "body_sha256"]

Channel = Literal["sync", "batch"]


def body_sha256(body: Any) -> str:
    """SHA-256 of a JSON request body in canonical form (sorted keys, no spaces), so the same
    request hashes the same however a client serialised it."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CallRecord:
    """One chat request as answered."""

    seq: int
    channel: Channel
    model: str | None
    body_sha256: str
    status: int
    code: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    finish_reasons: tuple[str, ...] = ()
    batch_id: str | None = None
    custom_id: str | None = None
    at: float = 0.0


@dataclass(frozen=True)
class FileRecord:
    file_id: str
    purpose: str
    filename: str
    bytes: int
    sha256: str
    lines: int
    at: float


@dataclass(frozen=True)
class BatchLineRecord:
    """One line of a submitted batch's input file (`body_sha256` of its `body`, or of the raw
    line when it is not JSON)."""

    batch_id: str
    input_file_id: str
    line: int
    custom_id: str | None
    body_sha256: str


@dataclass
class TokenTotals:
    """Usage of successful answers (status 200)."""

    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass
class Ledger:
    calls: list[CallRecord] = field(default_factory=list)
    files: list[FileRecord] = field(default_factory=list)
    batch_lines: list[BatchLineRecord] = field(default_factory=list)
    totals: dict[tuple[str, str], TokenTotals] = field(default_factory=dict)
    sim_stats: SimStats = field(default_factory=SimStats)

    def record_call(self, record: CallRecord) -> CallRecord:
        record = CallRecord(**{**asdict(record), "seq": len(self.calls) + 1})
        self.calls.append(record)
        if record.channel == "sync":
            self.sim_stats.requests += 1
            status = "timeout" if record.code == "timeout" else str(record.status)
            self.sim_stats.by_status[status] += 1
            if record.status == 200:
                self.sim_stats.answers[record.body_sha256] += 1
        if record.status == 200 and record.model is not None:
            totals = self.totals.setdefault((record.model, record.channel), TokenTotals())
            totals.requests += 1
            totals.prompt_tokens += record.prompt_tokens
            totals.cached_tokens += record.cached_tokens
            totals.completion_tokens += record.completion_tokens
            totals.reasoning_tokens += record.reasoning_tokens
        return record

    @property
    def sync_answers(self) -> int:
        """Successful synchronous chat answers so far."""
        return sum(1 for c in self.calls if c.channel == "sync" and c.status == 200)

    @property
    def sync_calls(self) -> int:
        return sum(1 for c in self.calls if c.channel == "sync")

    def answered_more_than_once(self) -> dict[str, int]:
        """Request-body hashes answered successfully more than once, over both channels."""
        counts = Counter(c.body_sha256 for c in self.calls if c.status == 200)
        return {sha: n for sha, n in counts.items() if n > 1}

    def batch_lines_submitted_more_than_once(self) -> dict[str, int]:
        """Request-body hashes that appear in more than one submitted batch line."""
        counts = Counter(line.body_sha256 for line in self.batch_lines)
        return {sha: n for sha, n in counts.items() if n > 1}

    def to_dict(self, *, calls: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "stand_in": True,
            "sync_calls": self.sync_calls,
            "sync_answers": self.sync_answers,
            "batch_line_calls": sum(1 for c in self.calls if c.channel == "batch"),
            "by_status": dict(Counter(str(c.status) for c in self.calls)),
            "answered_more_than_once": self.answered_more_than_once(),
            "batch_lines_submitted_more_than_once": self.batch_lines_submitted_more_than_once(),
            "tokens": [
                {"model": model, "channel": channel, **asdict(t)}
                for (model, channel), t in sorted(self.totals.items())
            ],
            "files": [asdict(f) for f in self.files],
            "batch_lines": len(self.batch_lines),
        }
        if calls:
            out["calls"] = [asdict(c) for c in self.calls]
        return out

    def by_model(self, channel: Channel | None = None) -> Mapping[str, TokenTotals]:
        """Token totals per model, for one channel or both added up."""
        out: dict[str, TokenTotals] = {}
        for (model, ch), t in self.totals.items():
            if channel is None or ch == channel:
                acc = out.setdefault(model, TokenTotals())
                for name, value in asdict(t).items():
                    setattr(acc, name, getattr(acc, name) + value)
        return out
