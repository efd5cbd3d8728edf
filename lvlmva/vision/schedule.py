"""A pool of alignment samples whose content follows a fixed schedule, so that a run trained
while the critique is still going gives the same model whatever order the answers arrive in.

The samples have fixed positions (the alignment order). At training progress ``p`` (the share
of steps done) the trainer draws from the first ``L(p)`` positions; ``L`` grows in `stages`
equal steps from ``start_fraction * n`` to ``n``, reached at progress `ramp_end` (the start of
the last epoch, so that every sample is trained on). A stage is built once, when every position
before it has arrived (with a mask or, for a failed critique, without one), by a callback that
returns that prefix's images, masks and labels. A stage waits for its prefix, never for the
arrival order: streamed and sequential runs draw the same batches.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

from torch import Tensor

from lvlmva.errors import DataError
from lvlmva.vision.rrr import AlignmentPool

__all__ = ["ScheduledPool", "StageBuilder"]

StageBuilder = Callable[[int], tuple[Tensor, Tensor, Tensor]]
"""length -> (images [m, C, H, W], masks [m, H, W], labels [m]) of the positions < length that
have a mask, in position order."""


class ScheduledPool:
    """See the module docstring. `arrived(position)` and `close()` come from the producer's
    thread; `stage(progress)` from the trainer's (it blocks until the stage is ready)."""

    def __init__(
        self,
        n: int,
        build: StageBuilder,
        *,
        start_fraction: float = 0.25,
        stages: int = 4,
        ramp_end: float = 0.8,
    ) -> None:
        if n < 1:
            raise DataError("a scheduled pool needs at least one alignment sample")
        if not 0.0 < start_fraction <= 1.0 or stages < 1 or not 0.0 <= ramp_end <= 1.0:
            raise ValueError(
                f"bad schedule: start_fraction={start_fraction}, stages={stages}, "
                f"ramp_end={ramp_end}"
            )
        self.n = n
        self._build = build
        count = 1 if start_fraction >= 1.0 else stages
        fractions = [
            start_fraction + (1.0 - start_fraction) * s / max(1, count - 1) for s in range(count)
        ]
        self.lengths = sorted({max(1, min(n, math.ceil(f * n))) for f in fractions})
        self.ramp_end = ramp_end
        self._arrived = [False] * n
        self._prefix = 0  # positions [0, _prefix) have all arrived
        self._closed = False
        self._built: dict[int, AlignmentPool] = {}
        self._cond = threading.Condition()

    def arrived(self, position: int) -> None:
        """Position `position` is in (its mask, if any, can be built now)."""
        with self._cond:
            self._arrived[position] = True
            while self._prefix < self.n and self._arrived[self._prefix]:
                self._prefix += 1
            self._cond.notify_all()

    def close(self) -> None:
        """Nothing more will arrive: positions still missing count as arrived without a mask."""
        with self._cond:
            self._closed = True
            self._prefix = self.n
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def length_at(self, progress: float) -> int:
        """The prefix length the schedule gives at training progress `progress` in [0, 1]."""
        last = len(self.lengths) - 1
        if self.ramp_end <= 0.0 or last == 0:
            return self.lengths[-1]
        index = min(last, math.floor(progress / self.ramp_end * last + 1e-9))
        return self.lengths[index]

    def stage(self, progress: float, stop: threading.Event | None = None) -> AlignmentPool | None:
        """The (closed) pool of the stage for `progress`, built once; waits until its prefix has
        arrived. A stage without any mask yields to the next one. None if `stop` was set while
        waiting. DataError when no stage has a mask at all."""
        index = self.lengths.index(self.length_at(progress))
        for length in self.lengths[index:]:
            with self._cond:
                while self._prefix < length:
                    if stop is not None and stop.is_set():
                        return None
                    self._cond.wait(timeout=0.2)
                pool = self._built.get(length)
            if pool is None:
                pool = AlignmentPool()
                images, masks, labels = self._build(length)
                pool.add(images, masks, labels)
                pool.close()
                with self._cond:
                    self._built[length] = pool
            if len(pool) > 0:
                return pool
        raise DataError(
            "no correction masks were produced (every critique failed or was not run); "
            "see the per-sample errors, check the endpoint and budget, and rerun"
        )
