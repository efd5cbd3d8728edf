"""Provider failures, classified so that one retry loop can decide what to do, and the
refusal to send a call once the budget is reached."""

from __future__ import annotations


class ProviderError(Exception):
    """A failed provider call. `retryable` says whether the same request may succeed later."""

    retryable = False

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class RateLimited(ProviderError):
    """HTTP 429: honour `retry_after` when given."""

    retryable = True


class ServerError(ProviderError):
    """HTTP 5xx (503 may carry `retry_after`)."""

    retryable = True


class ProviderTimeout(ProviderError):
    retryable = True


class ConnectionFailed(ProviderError):
    retryable = True


class BadRequest(ProviderError):
    """HTTP 4xx other than 429: resending the same request will not help."""


class AuthenticationFailed(BadRequest):
    """HTTP 401/403: the key or endpoint is wrong."""


class BudgetReached(Exception):
    """A call was not sent: the budget is spent or held by calls in flight. Not a provider
    failure: the job ends NOT_RUN."""
