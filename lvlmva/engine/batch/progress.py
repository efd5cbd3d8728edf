"""While batches run: one plain line per shard when its step, status or counts change (and
at most every `interval_s` otherwise), readable on a terminal and in a log file alike:

    batch 20250101-120000-3f9a1c critic gpt-5-mini: in_progress 1,200/5,000 done, 3 failed,
    expires in 23h12m
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from lvlmva.engine.batch.store import SPLIT_INTO, ShardRecord, Step

__all__ = ["BatchReporter", "describe_shard", "time_left"]


def time_left(expires_at: float | None, now: float | None = None) -> str:
    """`23h12m` until `expires_at`, or where it lies in the past, the UTC time itself."""
    if expires_at is None:
        return "-"
    left = expires_at - (time.time() if now is None else now)
    if left <= 0:
        return "at " + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires_at))
    hours, rest = divmod(int(left), 3600)
    return f"in {hours}h{rest // 60:02d}m"


def describe_shard(record: ShardRecord, now: float | None = None) -> str:
    """One line: the shard, what it holds and where it stands."""
    head = f"batch {record.id} {record.stages} {record.model}"
    step = record.step
    if step is Step.WRITTEN:
        where = "written" if record.mode == "api" else "written, waiting for `lvlmva batch export`"
        return f"{head}: {where}, {record.lines:,} requests ({record.bytes / 1e6:.1f} MB)"
    if step is Step.EXPORTED:
        return f"{head}: exported, {record.lines:,} requests, waiting for `lvlmva batch ingest`"
    if step in (Step.UPLOADED, Step.CREATING):
        return f"{head}: {step} ({record.file_id}), {record.lines:,} requests"
    done = f"{record.completed:,}/{record.lines:,} done, {record.failed:,} failed"
    status = record.status or "created"
    if step is Step.INGESTED and (record.error or "").startswith(SPLIT_INTO):
        return f"{head}: refused as too large for the batch queue, {record.error}"
    if step is Step.INGESTED:
        return f"{head}: {status}, ingested, {done}" + (
            f" ({record.error})" if record.error else ""
        )
    return f"{head}: {status} {done}, expires {time_left(record.expires_at, now)}" + (
        f" [{record.batch_id}]" if record.batch_id else ""
    )


class BatchReporter:
    """Writes `describe_shard` lines to `stream` (default stderr) when `enabled`."""

    def __init__(
        self, *, enabled: bool = True, stream: TextIO | None = None, interval_s: float = 30.0
    ) -> None:
        self.enabled = enabled
        self._stream = stream
        self._interval = interval_s
        self._last: dict[str, tuple[str, float]] = {}

    def shard(self, record: ShardRecord) -> None:
        if not self.enabled:
            return
        line = describe_shard(record)
        state = line.rsplit(", expires", 1)[0]
        now = time.monotonic()
        previous = self._last.get(record.id)
        if previous is not None and previous[0] == state and now - previous[1] < self._interval:
            return
        self._last[record.id] = (state, now)
        self.note(line)

    def note(self, text: str) -> None:
        if self.enabled:
            stream = self._stream or sys.stderr
            stream.write(text + "\n")
            stream.flush()
