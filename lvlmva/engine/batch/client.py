"""The Files and Batches client, on the official openai SDK (`AsyncOpenAI`): upload a shard,
create its batch, find a batch again after a crash, poll, cancel and download.

These are a few requests per shard, so the SDK's request and response models cost nothing
that matters here, and they bring the multipart upload and the `Batch` type. The SDK never
retries (`max_retries=0`): a retried `POST /batches` whose first answer was lost would create
a second batch of the same lines (the SDK sends no idempotency key to OpenAI), so the poller
retries instead, after looking the batch up by its metadata. The client reads
`OPENAI_ORG_ID` / `OPENAI_PROJECT_ID` and the proxy variables as the SDK does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from lvlmva.engine.batch.options import COMPLETION_WINDOW, ENDPOINT
from lvlmva.engine.errors import (
    BadRequest,
    ConnectionFailed,
    ProviderError,
    ProviderTimeout,
)
from lvlmva.engine.providers.wire import error_for_status, scrub
from lvlmva.errors import ConfigError

__all__ = ["FINISHED", "SHARD_KEY", "BatchClient", "BatchInfo", "QuotaExhausted"]

FINISHED = ("completed", "expired", "cancelled", "failed")
SHARD_KEY = "lvlmva_shard"  # the batch metadata naming our shard
FIND_SLACK_S = 600.0  # clock skew allowed when looking a batch up by its creation time


class QuotaExhausted(BadRequest):
    """HTTP 429 `insufficient_quota`: the account's credit is used up; waiting will not help."""


@dataclass(frozen=True)
class BatchInfo:
    """What we use of the API's `Batch` object."""

    id: str
    status: str
    input_file_id: str
    created_at: float
    completed: int = 0
    failed: int = 0
    total: int = 0
    expires_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: tuple[str, ...] = ()  # "code: message" of a batch that failed validation
    error_codes: tuple[str, ...] = ()
    shard: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @classmethod
    def of(cls, batch: Any) -> BatchInfo:
        counts = batch.request_counts
        errors = batch.errors.data if batch.errors is not None and batch.errors.data else []
        return cls(
            id=batch.id,
            status=batch.status,
            input_file_id=batch.input_file_id,
            created_at=float(batch.created_at),
            completed=counts.completed if counts else 0,
            failed=counts.failed if counts else 0,
            total=counts.total if counts else 0,
            expires_at=float(batch.expires_at) if batch.expires_at else None,
            output_file_id=batch.output_file_id,
            error_file_id=batch.error_file_id,
            errors=tuple(
                f"{e.code}: {e.message}" + (f" (line {e.line})" if e.line else "") for e in errors
            ),
            error_codes=tuple(e.code or "" for e in errors),
            shard=(batch.metadata or {}).get(SHARD_KEY),
        )


class BatchClient:
    """Files + Batches at `base_url` (an OpenAI-compatible root such as
    `https://api.openai.com/v1`) with `api_key`."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 300.0) -> None:
        try:
            import openai
        except ImportError:
            raise ConfigError(
                "the Batch API mode needs the openai SDK: pip install 'lvlm-va[batch]'"
            ) from None
        self.base_url = base_url
        self._secret = api_key
        self._openai = openai
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout
        )

    def __repr__(self) -> str:
        return f"BatchClient({self.base_url!r})"

    async def upload(self, filename: str, content: bytes) -> tuple[str, float]:
        """Upload a batch input file; returns its file id and creation time (the server's
        clock: no batch of it can be older)."""
        with self._errors("upload"):
            file = await self._client.files.create(
                file=(filename, content, "application/jsonl"), purpose="batch"
            )
        return file.id, float(file.created_at)

    async def create(self, file_id: str, shard_id: str) -> BatchInfo:
        """Create the batch of an uploaded file, tagged with the shard's id."""
        with self._errors("batch create"):
            batch = await self._client.batches.create(
                input_file_id=file_id,
                endpoint=ENDPOINT,
                completion_window=COMPLETION_WINDOW,
                metadata={SHARD_KEY: shard_id},
            )
        return BatchInfo.of(batch)

    async def find(self, shard_id: str, file_id: str, since: float) -> BatchInfo | None:
        """The batch created for `shard_id` from `file_id` at or after `since` (the server's
        Unix time), if there is one (the list is newest first: the search stops at older
        batches)."""
        with self._errors("batch list"):
            async for batch in self._client.batches.list(limit=100):
                if batch.created_at < since - FIND_SLACK_S:
                    return None
                info = BatchInfo.of(batch)
                if info.shard == shard_id and info.input_file_id == file_id:
                    return info
        return None

    async def retrieve(self, batch_id: str) -> BatchInfo:
        with self._errors("batch retrieve"):
            return BatchInfo.of(await self._client.batches.retrieve(batch_id))

    async def cancel(self, batch_id: str) -> BatchInfo:
        with self._errors("batch cancel"):
            return BatchInfo.of(await self._client.batches.cancel(batch_id))

    async def download(self, file_id: str) -> bytes:
        with self._errors("file download"):
            return (await self._client.files.content(file_id)).content

    async def aclose(self) -> None:
        await self._client.close()

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """SDK exceptions as our `ProviderError`s, scrubbed of the key."""
        openai = self._openai
        where = f"batch API ({what})"
        try:
            yield
        except openai.APIStatusError as exc:
            text = scrub(_message(exc.body, exc), self._secret)
            message = f"{where}: HTTP {exc.status_code}: {text}"
            if exc.status_code == 429 and getattr(exc, "code", None) == "insufficient_quota":
                raise QuotaExhausted(message, status=429) from None
            retry_after = _retry_after(exc.response.headers)
            raise error_for_status(exc.status_code, message, retry_after=retry_after) from None
        except openai.APITimeoutError:
            raise ProviderTimeout(f"{where}: no answer in time") from None
        except openai.APIConnectionError as exc:
            detail = scrub(f"{type(exc.__cause__ or exc).__name__}: {exc.__cause__ or exc}",
                           self._secret)  # fmt: skip
            raise ConnectionFailed(f"{where}: connection failed: {detail}") from None
        except ProviderError:
            raise
        except openai.OpenAIError as exc:
            raise ProviderError(f"{where}: {scrub(str(exc), self._secret)}") from None


def _message(body: object, exc: Exception) -> str:
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping) and error.get("message"):
            return str(error["message"])
    return str(getattr(exc, "message", None) or exc)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    from lvlmva.engine.providers.wire import parse_retry_after

    return parse_retry_after(headers)
