"""Fault injection for the OpenAI stand-in: which failure a request meets, drawn from a seeded
stream, and the settings a test changes while the server runs (`POST /stand-in/faults`).

Each fault imitates something the API does: a revoked key (401 `invalid_api_key`), exhausted
quota (429 `insufficient_quota`), a model the account cannot see (404 `model_not_found`),
transient 429s and 500s, a hung request, answers cut at the token limit (`finish_reason`
`length`), withheld by the content filter (`content_filter`, content null) or refused
(`message.refusal`), bodies larger than a client expects (valid JSON padded with spaces), and
an alias moved to a new snapshot (`moved_aliases`: `gpt-4o` answers as another dated model, as
it does when OpenAI points the alias at a new release).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lvlmva.errors import ConfigError
from lvlmva.simulation.faults import TransportFault, TransportRates, check_shares, draw_one
from lvlmva.simulation.openai_usage import AnswerShape

__all__ = ["FaultDraw", "Faults", "draw_faults"]

_SHARES = (
    "rate_429", "rate_500", "rate_timeout", "truncate_share", "content_filter_share",
    "refusal_share", "oversize_share",
)  # fmt: skip


@dataclass(frozen=True)
class Faults(TransportRates):
    """Injected faults. Counts are of successful synchronous chat answers so far:
    `revoke_key_after=3` answers three requests, then 401s every request (all routes);
    `quota_after=0` answers every chat and batch request 429 `insufficient_quota` at once.
    Shares are per-request probabilities: the transport ones (429, 500, timeout; synchronous
    calls only) together at most 1, and the answer ones (truncate, content filter, refusal;
    batch lines too) together at most 1."""

    revoke_key_after: int | None = None
    quota_after: int | None = None
    missing_models: frozenset[str] = frozenset()
    retry_after_s: float = 1.0
    hang_s: float = 120.0
    truncate_share: float = 0.0
    content_filter_share: float = 0.0
    refusal_share: float = 0.0
    oversize_share: float = 0.0
    oversize_bytes: int = 8 * 1024 * 1024
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    moved_aliases: Mapping[str, str] = field(default_factory=dict)  # alias -> model it answers as

    def __post_init__(self) -> None:
        check_shares(
            {name: getattr(self, name) for name in _SHARES},
            self.TRANSPORT,
            ("truncate_share", "content_filter_share", "refusal_share"),
            label="fault ",
        )
        for name in ("revoke_key_after", "quota_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"fault {name} must not be negative, got {value}")
        for name in ("retry_after_s", "hang_s", "latency_ms", "latency_jitter_ms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"fault {name} must not be negative")

    def updated(self, changes: Mapping[str, Any]) -> Faults:
        """A copy with `changes` applied (unknown names: ConfigError naming them)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown fault settings {unknown}; known: {sorted(known)}")
        values = dict(changes)
        if "missing_models" in values:
            values["missing_models"] = frozenset(values["missing_models"] or ())
        try:
            return dataclasses.replace(self, **values)
        except TypeError as exc:
            raise ConfigError(f"fault settings {values}: a wrong type ({exc})") from None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["missing_models"] = sorted(self.missing_models)
        return out


@dataclass(frozen=True)
class FaultDraw:
    """What one request meets: a transport fault or none, an answer shape, padding or not,
    and its latency in seconds."""

    transport: TransportFault | None = None
    shape: AnswerShape = "normal"
    oversize: bool = False
    delay_s: float = 0.0


def draw_faults(faults: Faults, rng: random.Random, *, synchronous: bool) -> FaultDraw:
    """Draw the faults of one request (the same number of draws whatever the settings, so a
    seed fixes the sequence)."""
    transport = faults.transport(rng)
    shape = draw_one(
        rng,
        (
            ("truncate", faults.truncate_share),
            ("content_filter", faults.content_filter_share),
            ("refusal", faults.refusal_share),
        ),
    )
    oversize = rng.random() < faults.oversize_share
    jitter = faults.latency_jitter_ms * (2.0 * rng.random() - 1.0)
    delay = max(0.0, faults.latency_ms + jitter) / 1000.0
    return FaultDraw(
        transport=transport if synchronous else None,
        shape=shape or "normal",
        oversize=oversize and synchronous,
        delay_s=delay if synchronous else 0.0,
    )
