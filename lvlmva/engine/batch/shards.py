"""The shard writer: request lines collected into batch input files within the API's limits.

A line is the Batch API's `BatchRequestInput` (openai/openai-openapi: `custom_id`, `method`
"POST", `url`, `body`); its `body` is the provider's synchronous request body, byte for byte
(`OpenAICompatibleProvider.body`), so a line and a synchronous call are one request with one
cache key. Shards are kept per model (a batch input file takes one model) and closed when the
next line would pass `max_lines`, `max_bytes` or `max_tokens` (estimated prompt tokens: the
batch queue's unit, `lvlmva.engine.batch.queue`; the smaller of the configured limit and what
the queue taught the run), or when the engine has nothing more to offer. `halves` splits a
written shard that the queue refused as too large.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from lvlmva.engine.batch.options import ENDPOINT
from lvlmva.engine.errors import BadRequest

__all__ = ["OpenShard", "ShardWriter", "batch_line", "halves"]


def batch_line(custom_id: str, body: bytes) -> bytes:
    """One JSONL line of a batch input file; `body` is the JSON request body as sent."""
    head = f'{{"custom_id":{json.dumps(custom_id)},"method":"POST","url":{json.dumps(ENDPOINT)},'
    return head.encode("utf-8") + b'"body":' + body + b"}\n"


@dataclass
class OpenShard:
    """Lines of one model not yet written to the manifest."""

    model: str
    custom_ids: list[str] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)
    stages: set[str] = field(default_factory=set)
    tokens: list[int] = field(default_factory=list)  # estimated prompt tokens per line
    size: int = 0
    total_tokens: int = 0

    def add(self, custom_id: str, stage: str, line: bytes, tokens: int = 0) -> None:
        self.custom_ids.append(custom_id)
        self.lines.append(line)
        self.stages.add(stage)
        self.tokens.append(tokens)
        self.size += len(line)
        self.total_tokens += tokens

    def content(self) -> bytes:
        return b"".join(self.lines)

    def stage_names(self) -> str:
        return "+".join(sorted(self.stages))

    def __len__(self) -> int:
        return len(self.lines)


class ShardWriter:
    """Collects lines into one open shard per model."""

    def __init__(
        self,
        *,
        max_lines: int,
        max_bytes: int,
        max_tokens: int | None = None,
        learned: Callable[[str], int | None] | None = None,
    ) -> None:
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.max_tokens = max_tokens  # the configured queue limit: a line above it is refused
        self.learned = learned  # model -> prompt tokens its queue took at most (cuts shards)
        self._open: dict[str, OpenShard] = {}

    def token_cap(self, model: str) -> int | None:
        """The most estimated prompt tokens a shard of `model` may hold (None: no cap)."""
        caps = [self.max_tokens, self.learned(model) if self.learned else None]
        known = [c for c in caps if c is not None]
        return min(known) if known else None

    def add(
        self, model: str, custom_id: str, stage: str, line: bytes, tokens: int = 0
    ) -> OpenShard | None:
        """Take `line` (of `tokens` estimated prompt tokens) in; returns the model's shard it
        closed to make room, if any. A line larger than a whole file, or than the batch queue,
        is a `BadRequest` (no batch can carry it)."""
        if len(line) > self.max_bytes:
            raise BadRequest(
                f"{stage}: the request is {len(line):,} bytes, more than a batch input file "
                f"may hold ({self.max_bytes:,}); send it synchronously (without --batch)"
            )
        if self.max_tokens is not None and tokens > self.max_tokens:
            raise BadRequest(
                f"{stage}: the request has about {tokens:,} prompt tokens, more than the batch "
                f"queue of {model} holds (--batch-queue-tokens {self.max_tokens:,}); send it "
                "synchronously (without --batch)"
            )
        shard = self._open.get(model)
        closed = None
        cap = self.token_cap(model)
        if shard is not None and (
            len(shard) >= self.max_lines
            or shard.size + len(line) > self.max_bytes
            or (cap is not None and shard.total_tokens + tokens > cap)
        ):
            closed = self._open.pop(model)
            shard = None
        if shard is None:
            shard = self._open[model] = OpenShard(model)
        shard.add(custom_id, stage, line, tokens)
        return closed

    def close_all(self) -> list[OpenShard]:
        """Every open shard, now closed."""
        shards = [s for s in self._open.values() if len(s)]
        self._open.clear()
        return shards

    def __len__(self) -> int:
        return sum(len(s) for s in self._open.values())


def halves(content: bytes, tokens: int) -> list[tuple[list[str], bytes, int]]:
    """A batch input file of two or more lines split in two halves of about equal estimated
    prompt tokens: (custom_ids, content, tokens) per half. Per-line tokens are not kept, so
    each line is given the shard's `tokens` in proportion to its bytes (images dominate both)."""
    lines = content.splitlines(keepends=True)
    if len(lines) < 2:
        raise ValueError("a shard of one line cannot be split")
    total, running, ends = len(content), 0, []
    for line in lines[:-1]:
        running += len(line)
        ends.append(abs(2 * running - total))  # how far a cut after this line is from half
    cut = 1 + ends.index(min(ends))
    parts = []
    for chunk in (lines[:cut], lines[cut:]):
        body = b"".join(chunk)
        ids = [json.loads(line)["custom_id"] for line in chunk]
        parts.append((ids, body, round(tokens * len(body) / total)))
    return parts
