"""Requests-per-minute and tokens-per-minute limits, enforced per model as the API enforces them,
with the `x-ratelimit-*` headers it sends.

Sources:

- [headers] the rate-limits guide's header table (as diffed on spybara.com/openai/api/history,
  2026-06): `x-ratelimit-limit-requests` (60), `x-ratelimit-limit-tokens` (150000),
  `x-ratelimit-remaining-requests` (59), `x-ratelimit-remaining-tokens` (149984),
  `x-ratelimit-reset-requests` ("1s"), `x-ratelimit-reset-tokens` ("6m0s"): the time until the
  limit "resets to its initial state", written as a Go duration.
- [429] the API's 429 bodies as quoted in BuilderIO/micro-agent#86 and semanser/codel#72: "Rate
  limit reached for gpt-4o in organization org-... on tokens per min (TPM): Limit 30000, Used
  29937, Requested 385. Please try again in 644ms.", type `tokens` (or `requests`), code
  `rate_limit_exceeded`; and a request larger than the whole limit (TheR1D/shell_gpt#653):
  "Request too large for gpt-4o ... on tokens per min (TPM): Limit 30000, Requested 31538. The
  input or output tokens must be reduced in order to run successfully." - retrying cannot help,
  so that 429 carries no `retry-after`.
- [estimate] a request counts against TPM with its prompt tokens plus the output it asks room
  for (`max_completion_tokens` / `max_tokens`), charged when it is admitted, whatever it then
  uses (third-party restatements of the guide, e.g. tokenswise.com/rate-limits/openai).

The window is a token bucket per model and dimension: full at `limit`, refilled continuously at
`limit` per 60 s, so `reset` is the time to refill to full. OpenAI's own limiter also quantizes
limits into shorter windows; the stand-in does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lvlmva.errors import ConfigError
from lvlmva.simulation.clock import Clock
from lvlmva.simulation.openai_errors import APIError

__all__ = ["Admission", "RateLimiter", "RateLimits", "go_duration"]

ORGANIZATION = "org-standin"


@dataclass(frozen=True)
class RateLimits:
    """Per-model limits; None leaves a dimension unlimited (and out of the headers)."""

    rpm: int | None = None
    tpm: int | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1 (or None for no limit), got {value}")


def go_duration(seconds: float) -> str:
    """`seconds` as a Go duration string, as in the headers: 20ms, 1s, 1.5s, 6m0s, 1h2m3s."""
    millis = max(0, math.ceil(seconds * 1000 - 1e-6))
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


class _Bucket:
    def __init__(self, capacity: int, now: float) -> None:
        self.capacity = float(capacity)
        self.rate = capacity / 60.0
        self.level = float(capacity)
        self.stamp = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        return max(0.0, (amount - self.level) / self.rate)

    @property
    def reset_s(self) -> float:
        return (self.capacity - self.level) / self.rate


@dataclass(frozen=True)
class Admission:
    """The limiter's decision: the headers to send, and the 429 when refused."""

    headers: dict[str, str]
    error: APIError | None = None


class RateLimiter:
    """Token buckets per model for requests and tokens, on `clock`."""

    def __init__(self, limits: RateLimits, clock: Clock) -> None:
        self.limits = limits
        self.clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def reset(self) -> None:
        self._buckets.clear()

    def _bucket(self, model: str, kind: str, capacity: int | None, now: float) -> _Bucket | None:
        if capacity is None:
            return None
        bucket = self._buckets.setdefault((model, kind), _Bucket(capacity, now))
        bucket.refill(now)
        return bucket

    @staticmethod
    def _headers(requests: _Bucket | None, tokens: _Bucket | None) -> dict[str, str]:
        out: dict[str, str] = {}
        for kind, bucket in (("requests", requests), ("tokens", tokens)):
            if bucket is not None:
                out[f"x-ratelimit-limit-{kind}"] = str(int(bucket.capacity))
                out[f"x-ratelimit-remaining-{kind}"] = str(math.floor(bucket.level))
                out[f"x-ratelimit-reset-{kind}"] = go_duration(bucket.reset_s)
        return out

    def admit(self, model: str, tokens: int) -> Admission:
        """Admit one request of `tokens` estimated tokens for `model`, or refuse it (429)."""
        now = self.clock.now()
        requests = self._bucket(model, "requests", self.limits.rpm, now)
        budget = self._bucket(model, "tokens", self.limits.tpm, now)
        if budget is not None and tokens > budget.capacity:
            message = (
                f"Request too large for {model} in organization {ORGANIZATION} on tokens per min "
                f"(TPM): Limit {int(budget.capacity)}, Requested {tokens}. The input or output "
                "tokens must be reduced in order to run successfully. Visit "
                "https://platform.openai.com/account/rate-limits to learn more."
            )
            headers = self._headers(requests, budget)
            return Admission(headers, APIError(429, message, "tokens", None, "rate_limit_exceeded",
                                               headers))  # fmt: skip
        for kind, bucket, amount, unit in (
            ("requests", requests, 1, "RPM"),
            ("tokens", budget, tokens, "TPM"),
        ):
            if bucket is not None and bucket.level < amount:
                wait = bucket.wait_for(amount)
                used = int(bucket.capacity - math.floor(bucket.level))
                message = (
                    f"Rate limit reached for {model} in organization {ORGANIZATION} on {kind} per "
                    f"min ({unit}): Limit {int(bucket.capacity)}, Used {used}, Requested "
                    f"{amount}. Please try again in {go_duration(wait)}. Visit "
                    "https://platform.openai.com/account/rate-limits to learn more."
                )
                headers = {**self._headers(requests, budget), "retry-after": str(math.ceil(wait))}
                return Admission(
                    headers, APIError(429, message, kind, None, "rate_limit_exceeded", headers)
                )
        for bucket, amount in ((requests, 1), (budget, tokens)):
            if bucket is not None:
                bucket.level -= amount
        return Admission(self._headers(requests, budget))
