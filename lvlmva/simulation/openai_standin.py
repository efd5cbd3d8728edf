"""`OpenAIStandIn`: a strict stand-in of the OpenAI API (chat completions, files, batches), the
yardstick our provider code is tested against. It is written from OpenAI's spec, SDK and docs
(each rule cites its source in the module that holds it), not from our client: where our client
and the stand-in disagree, the stand-in is meant to be the one that matches OpenAI.

It owns the protocol (routes, validation, status codes, error bodies, usage, headers, batch
lifecycle); the content of answers comes from an `Answerer` (the simulated LVLM by default in
`lvlmva serve-sim`: a simulation answering from ground-truth masks, never a model).

    standin = OpenAIStandIn(FixedAnswerer("hello"), clock=FakeClock())
    app = build_openai_app(standin)                   # aiohttp app, for tests
    server = await start_openai_standin(standin)      # on 127.0.0.1, a free port
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass, field

from lvlmva.simulation.answerers import Answerer
from lvlmva.simulation.batch_api import BatchRunner, BatchTiming
from lvlmva.simulation.clock import Clock, FakeClock, SystemClock
from lvlmva.simulation.openai_chat import ChatEngine, ChatSettings
from lvlmva.simulation.openai_errors import (
    APIError,
    insufficient_quota,
    invalid_api_key,
    missing_api_key,
)
from lvlmva.simulation.openai_faults import Faults
from lvlmva.simulation.openai_files import FileStore
from lvlmva.simulation.openai_ledger import Ledger

__all__ = ["OpenAIStandIn", "StandInConfig"]


@dataclass(frozen=True)
class StandInConfig:
    """Authentication (`require_auth`: every /v1 request needs `Authorization: Bearer <key>`;
    `api_keys`: the keys accepted, None for any non-empty key), the chat rules' settings, the
    batch timings, and the seed of every id and fault stream."""

    require_auth: bool = True
    api_keys: Collection[str] | None = None
    chat: ChatSettings = field(default_factory=ChatSettings)
    batch: BatchTiming = field(default_factory=BatchTiming)
    seed: int = 0


class OpenAIStandIn:
    """The stand-in's state: clock, faults, ledger, chat engine, files and batches."""

    def __init__(
        self,
        answerer: Answerer,
        config: StandInConfig | None = None,
        *,
        clock: Clock | None = None,
        faults: Faults | None = None,
    ) -> None:
        self.answerer = answerer
        self.config = config or StandInConfig()
        self.clock = clock or SystemClock()
        self.initial_faults = faults or Faults()
        self.reset()

    def reset(self) -> None:
        """Forget everything: ledger, files, batches, rate windows, prompt cache; faults back to
        those given at construction; id and fault streams restarted from the seed."""
        self.ledger = Ledger()
        self.engine = ChatEngine(
            self.answerer,
            dataclasses.replace(self.config.chat, seed=self.config.seed),
            self.clock,
            self.ledger,
            self.initial_faults,
        )
        self.files = FileStore(self.clock, self.ledger, seed=self.config.seed)
        self.batches = BatchRunner(
            self.files, self.engine, self.clock, self.ledger, self.config.batch,
            seed=self.config.seed,
        )  # fmt: skip

    @property
    def faults(self) -> Faults:
        return self.engine.faults

    @faults.setter
    def faults(self, value: Faults) -> None:
        self.engine.faults = value

    def advance(self, seconds: float) -> float:
        """Move a `FakeClock` forward and run the batches up to the new time."""
        if not isinstance(self.clock, FakeClock):
            raise TypeError("advance needs the stand-in to run on a FakeClock")
        now = self.clock.advance(seconds)
        self.batches.tick()
        return now

    def authorize(self, header: str | None) -> str | None:
        """The API key of an `Authorization` header (APIError 401 when refused)."""
        key = None
        if header and header.startswith("Bearer "):
            key = header[len("Bearer ") :].strip() or None
        if self.config.require_auth:
            if key is None:
                raise missing_api_key()
            keys = self.config.api_keys
            if keys is not None and key not in keys:
                raise invalid_api_key(key)
        revoke = self.faults.revoke_key_after
        if revoke is not None and self.ledger.sync_answers >= revoke:
            raise invalid_api_key(key or "")
        return key

    def quota_error(self) -> APIError | None:
        """429 `insufficient_quota` once the injected quota is used up."""
        after = self.faults.quota_after
        if after is not None and self.ledger.sync_answers >= after:
            return insufficient_quota()
        return None

    def __repr__(self) -> str:
        return f"OpenAIStandIn(answerer={self.answerer!r}, clock={self.clock!r})"
