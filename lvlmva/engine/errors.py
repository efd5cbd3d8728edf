"""Provider failures, classified so that one retry loop can decide what to do and one breaker
can stop a run that cannot succeed; the refusals to send a call (budget reached, run stopped);
and `RunStopped`, the error a stopped run ends with."""

from __future__ import annotations

from lvlmva.errors import LvlmvaError


class ProviderError(Exception):
    """A failed provider call. `retryable`: the same request may succeed later; `fatal`: no
    request of this run can succeed (a rejected key, an unknown model, no quota), so the run
    stops. `code` is the API's error code when it sent one (`invalid_api_key` ...)."""

    retryable = False
    fatal = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.code = code


class RateLimited(ProviderError):
    """HTTP 429 for a rate limit: honour `retry_after` when given."""

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

    fatal = True


class NotFound(BadRequest):
    """HTTP 404: the model does not exist for this key (`model_not_found`), or the URL is wrong."""

    fatal = True


class QuotaExceeded(ProviderError):
    """HTTP 429 `insufficient_quota`: the account has no credit left; waiting does not help
    (the API sends it with the rate limits' status, so it must be told apart by its code)."""

    fatal = True


class ResponseTooLarge(ProviderError):
    """The response body passed the provider's size cap (`max_response_bytes`)."""


class NotSent(Exception):
    """A call was not sent; the job ends NOT_RUN with this reason."""


class BudgetReached(NotSent):
    """A call was not sent: the budget is spent or held by calls in flight. Not a provider
    failure: the job ends NOT_RUN."""


class RunHalted(NotSent):
    """A call was not sent: the run was stopped by its breaker (see `RunStopped`)."""


class RunStopped(LvlmvaError):
    """A critique run stopped early because the endpoint refuses every request (the one line
    names the status and the server's message). `result` holds what was done when there is
    something to show (an `AlignResult`), `metrics` the figures written for it."""

    exit_code = 1

    def __init__(self, message: str, *, result: object = None, metrics: dict | None = None):
        super().__init__(message)
        self.result = result
        self.metrics = metrics or {}
