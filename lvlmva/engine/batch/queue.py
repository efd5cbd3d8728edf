"""The batch queue: how many prompt tokens of this run's batches each model's queue holds.

OpenAI caps the prompt tokens enqueued in batches per model and organisation ("Enqueued prompt
tokens per model", the Batch guide; the limits page lists it as the batch queue limit, e.g.
90,000 for gpt-4o at usage tier 1, 2,000,000 for gpt-4o-mini); output tokens do not count. A
batch that would pass the cap fails validation with `token_limit_exceeded` and costs nothing,
but it does not run either. `QueueGate` keeps this run's batches within a model's capacity:

- the capacity is `BatchOptions.queue_tokens` when given (`--batch-queue-tokens`, the figure
  on the limits page), and the shard writer also cuts shards to it;
- whatever is configured, a `token_limit_exceeded` teaches the gate that the queue held no more
  than this run's other batches of that model then held: their sum becomes the model's learned
  capacity (a lower bound, since the organisation's other batches share the queue), so the
  refused shard is created again only once enough of them have ended, not after a fixed wait;
- a shard may always be created when none of this run's batches of its model is queued (the
  only way to find out whether it fits); refused then, it is more than the queue takes
  (`too_large`): the learned capacity drops to half of it, the shard is split in two
  (`lvlmva.engine.batch.poller`) and the shard writer cuts new shards to the learned capacity;
  a shard written before, larger than that, is split without being tried (`never_fits`).

The gate counts this process's batches only; other processes of the organisation are seen
through `token_limit_exceeded` alone.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

__all__ = ["QueueGate"]


class QueueGate:
    """Admits shards into their model's batch queue. `limit`: the configured prompt-token
    capacity per model (None: learned from refusals only)."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self._held: dict[str, dict[str, int]] = defaultdict(dict)  # model -> shard -> tokens
        self._learned: dict[str, int] = {}
        self._alone: dict[str, int] = {}  # model -> half the fewest tokens refused, none queued
        self._changed: dict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def capacity(self, model: str) -> int | None:
        """The prompt tokens this run may hold in `model`'s queue (None: no known cap)."""
        known = [c for c in (self.limit, self._learned.get(model)) if c is not None]
        return min(known) if known else None

    def held(self, model: str) -> int:
        """Prompt tokens of this run's batches of `model` now in its queue."""
        return sum(self._held[model].values())

    def fits(self, model: str, tokens: int) -> bool:
        """Whether a shard of `tokens` may be created now."""
        capacity = self.capacity(model)
        held = self.held(model)
        return held == 0 or capacity is None or held + max(tokens, 1) <= capacity

    async def enter(self, model: str, shard_id: str, tokens: int) -> None:
        """Wait until the shard fits, then count it as queued (at once if it already is)."""
        while shard_id not in self._held[model] and not self.fits(model, tokens):
            event = self._changed[model]
            event.clear()
            await event.wait()
        self._held[model][shard_id] = tokens

    def hold(self, model: str, shard_id: str, tokens: int) -> None:
        """Count a shard that is already queued (a batch a rerun resumes)."""
        self._held[model][shard_id] = tokens

    def leave(self, model: str, shard_id: str) -> None:
        """The shard's batch ended (or was never created): its tokens leave the queue."""
        if self._held[model].pop(shard_id, None) is not None:
            self._changed[model].set()

    def refused(self, model: str, shard_id: str) -> int:
        """The shard's batch failed with `token_limit_exceeded`: it leaves the queue, and the
        tokens the run's other batches of `model` hold become the learned capacity. Returns
        that sum (0: none of this run's batches was queued, so no shard of this run will end
        to make room)."""
        self.leave(model, shard_id)
        others = self.held(model)
        if others:
            self._learned[model] = min(others, self._learned.get(model, others))
        return others

    def too_large(self, model: str, tokens: int) -> int:
        """A shard of `tokens` was refused with none of this run's batches queued: the queue
        takes less (or the organisation's other batches fill it). The learned capacity drops
        to half of the shard; returns it."""
        half = max(1, (tokens + 1) // 2)
        self._alone[model] = min(half, self._alone.get(model, half))
        self._learned[model] = min(half, self._learned.get(model, half))
        return self._learned[model]

    def never_fits(self, model: str, tokens: int) -> bool:
        """Whether a shard of `tokens` is larger than half of one the queue refused with none
        of this run's batches in it: the size new shards are cut to, so it is split without
        trying (a try costs a validation round; a split, only one more batch)."""
        return tokens > self._alone.get(model, tokens)
