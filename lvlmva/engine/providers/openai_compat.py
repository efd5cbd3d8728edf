"""OpenAI-compatible chat provider (OpenAI, vLLM, Ollama, llama.cpp ...) on plain aiohttp.

It follows the openai SDK's async client conventions (`base_url`, `api_key` defaulting to
`OPENAI_API_KEY`, `organization` / `project` defaulting to `OPENAI_ORG_ID` / `OPENAI_PROJECT_ID`
and sent as the `OpenAI-Organization` / `OpenAI-Project` headers, a timeout per request,
`await aclose()` / `async with`) without its request and response models, which cost several ms
of CPU per request. It never retries: the engine owns the one retry loop (the SDK's
`max_retries=0`)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from typing import Any, Literal

import aiohttp

from lvlmva.engine.errors import (
    BadRequest,
    ConnectionFailed,
    ProviderError,
    ProviderTimeout,
    ResponseTooLarge,
    ServerError,
)
from lvlmva.engine.keys import ProviderIdentity, endpoint_identity
from lvlmva.engine.providers.wire import (
    PLACEHOLDER_KEY,
    build_chat_kwargs,
    error_for_status,
    parse_error_body,
    parse_logprobs,
    parse_rate_limits,
    parse_retry_after,
    scrub,
    to_openai_messages,
)
from lvlmva.engine.types import ChatRequest, ChatResponse, Usage
from lvlmva.errors import ConfigError

__all__ = [
    "DEFAULT_BASE_URL",
    "MAX_RESPONSE_BYTES",
    "OpenAICompatibleProvider",
    "build_chat_kwargs",
    "openai_headers",
    "parse_chat_completion",
    "parse_chat_response",
    "parse_retry_after",
    "resolve_endpoint",
    "to_openai_messages",
]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
MAX_RESPONSE_BYTES = 4 * 2**20  # a chat completion is kilobytes; refuse a body past 4 MiB


def status_error(
    status: int, body: bytes, headers: Mapping[str, str], *, where: str, secret: str | None
) -> ProviderError:
    """The error for a non-2xx answer (scrubbed of `secret`, message truncated)."""
    text, code = parse_error_body(body)
    message = f"{where}: HTTP {status}: {scrub(text, secret)}"
    return error_for_status(status, message, retry_after=parse_retry_after(headers), code=code)


def _usage(raw: Any) -> Usage:
    """Usage with its details (`prompt_tokens_details.cached_tokens`,
    `completion_tokens_details.reasoning_tokens`; absent on most local servers)."""
    raw = raw if isinstance(raw, dict) else {}
    prompt_details = raw.get("prompt_tokens_details") or {}
    completion_details = raw.get("completion_tokens_details") or {}
    return Usage(
        int(raw.get("prompt_tokens") or 0),
        int(raw.get("completion_tokens") or 0),
        int(prompt_details.get("cached_tokens") or 0),
        int(completion_details.get("reasoning_tokens") or 0),
    )


def parse_chat_completion(body: bytes, *, where: str) -> tuple[str, Usage, str | None]:
    """Text, usage and model of a chat-completion JSON body (`parse_chat_response` without
    the finish reason, for callers written before it: use that one, so that an answer cut at
    the token limit is never taken for a whole one)."""
    answer = parse_chat_response(body, where=where)
    return answer.text, answer.usage, answer.model or None


def parse_chat_response(body: bytes, *, where: str) -> ChatResponse:
    """The answer in a chat-completion JSON body: text (`""` for null content, flagged),
    usage with its details, model (`""` when absent) and finish reason. A malformed body or one
    without choices is a `ServerError`, a refusal a `BadRequest`."""
    try:
        data = json.loads(body)
        choice = data["choices"][0]
        message = choice["message"]
        content = message.get("content")
        refusal = message.get("refusal")
        usage = _usage(data.get("usage"))
        finish = choice.get("finish_reason")
        logprobs = parse_logprobs(choice.get("logprobs"))
    except (IndexError, KeyError) as exc:
        if isinstance(exc, IndexError) or exc.args == ("choices",):
            raise ServerError(f"{where}: response has no choices") from None
        raise ServerError(f"{where}: malformed response: missing {exc}") from None
    except (ValueError, TypeError, AttributeError) as exc:
        raise ServerError(f"{where}: malformed response: {scrub(str(exc), None)}") from None
    if refusal:
        raise BadRequest(f"{where}: the model refused: {scrub(str(refusal), None)}")
    if content is not None and not isinstance(content, str):
        raise ServerError(f"{where}: malformed response: content is not a string")
    model = data.get("model")
    return ChatResponse(
        content or "",
        usage,
        model if isinstance(model, str) else "",
        finish_reason=finish if isinstance(finish, str) else None,
        content_null=content is None,
        logprobs=logprobs,
    )


def openai_headers(
    key: str, organization: str | None = None, project: str | None = None
) -> dict[str, str]:
    """The authentication headers the openai SDK sends: the bearer key, and the organization
    and project (`OPENAI_ORG_ID`, `OPENAI_PROJECT_ID` when not given; `OPENAI_ORGANIZATION`,
    an older name other tools read, as a fallback)."""
    organization = organization or os.environ.get("OPENAI_ORG_ID") or os.environ.get(
        "OPENAI_ORGANIZATION"
    )
    project = project or os.environ.get("OPENAI_PROJECT_ID")
    headers = {"Authorization": f"Bearer {key}"}
    if organization:
        headers["OpenAI-Organization"] = organization
    if project:
        headers["OpenAI-Project"] = project
    return headers


def resolve_endpoint(base_url: str | None, api_key: str | None) -> tuple[str, str]:
    """`(root URL, key)` as the openai SDK resolves them: `base_url`, else `OPENAI_BASE_URL`,
    else OpenAI; `api_key`, else `OPENAI_API_KEY`, else a placeholder for a server of one's own
    (OpenAI itself needs a real key: ConfigError)."""
    root = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    key = api_key or os.environ.get("OPENAI_API_KEY")
    if not key:
        if root == DEFAULT_BASE_URL:
            raise ConfigError(
                "no OpenAI API key: set OPENAI_API_KEY, or pass --base-url for a local "
                "OpenAI-compatible server"
            )
        key = PLACEHOLDER_KEY
    return root, key


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class OpenAICompatibleProvider:
    """A `Provider` for any OpenAI-compatible `/chat/completions` endpoint.

    `base_url=None` means `OPENAI_BASE_URL` or OpenAI itself, which needs `api_key` or
    `OPENAI_API_KEY`; an explicit `base_url` gets a placeholder key when none is given.
    `structured_output=False` for servers without `json_schema` response formats.
    `max_tokens_param` overrides the name the output budget is sent under (by default the
    model family's: `lvlmva.engine.model_params`). A response body over `max_response_bytes`
    is refused (`ResponseTooLarge`) without being held in memory. At most `max_connections`
    connections are open at once. `identity` (default: this endpoint's URL) is what the cache
    keys its answers by. The aiohttp session is created on first use, inside the running
    event loop; like the SDK's client it honours the `HTTP(S)_PROXY` / `NO_PROXY` variables."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        organization: str | None = None,
        project: str | None = None,
        name: str = "openai",
        structured_output: bool = True,
        max_connections: int = 256,
        max_tokens_param: Literal["max_tokens", "max_completion_tokens"] | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        identity: ProviderIdentity | str | None = None,
    ) -> None:
        root, key = resolve_endpoint(base_url, api_key)
        if max_connections < 1:
            raise ConfigError(f"max_connections must be at least 1 (got {max_connections})")
        if max_response_bytes < 1024:
            raise ConfigError(
                f"max_response_bytes must be at least 1024 (got {max_response_bytes})"
            )
        if max_tokens_param not in (None, "max_tokens", "max_completion_tokens"):
            raise ConfigError(
                f"max_tokens_param must be max_tokens or max_completion_tokens, "
                f"got {max_tokens_param!r}"
            )
        self.name = name
        self.base_url = base_url
        self.identity = identity if identity is not None else endpoint_identity(root)
        self.supports_structured_output = structured_output
        self.max_connections = max_connections
        self.max_response_bytes = max_response_bytes
        self._url = root + "/chat/completions"
        self._max_tokens_param = max_tokens_param
        self._secret = key
        self._headers = {
            **openai_headers(key, organization, project),
            "Content-Type": "application/json",
        }
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"OpenAICompatibleProvider(name={self.name!r}, base_url={self.base_url!r})"

    def _get_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session_loop is not loop or self._session.closed:
            # A session belongs to its loop; one left on a finished loop is dropped with it.
            connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers, trust_env=True
            )
            self._session_loop = loop
        return self._session

    @property
    def max_tokens_param(self) -> str | None:
        """The name the output budget is sent under (None: the model family's); a batch file
        built with `build_chat_kwargs(request, structured_output=..., max_tokens_param=...)`
        and these two settings carries the same body as this provider's requests."""
        return self._max_tokens_param

    def body(self, request: ChatRequest) -> bytes:
        """The JSON request body sent for `request`."""
        kwargs = build_chat_kwargs(
            request,
            structured_output=self.supports_structured_output,
            max_tokens_param=self._max_tokens_param,
        )
        return json.dumps(kwargs, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    async def complete(self, request: ChatRequest, *, timeout: float) -> ChatResponse:
        where = f"{self.name} ({request.model})"
        session = self._get_session()
        data = self.body(request)
        try:
            async with session.post(
                self._url, data=data, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                status, headers = response.status, response.headers
                payload = await self._read(response, where)
        except TimeoutError:
            raise ProviderTimeout(f"{where}: no answer in {timeout:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            detail = scrub(f"{type(exc).__name__}: {exc}", self._secret)
            raise ConnectionFailed(f"{where}: connection failed: {detail}") from None
        if not 200 <= status < 300:
            raise status_error(status, payload, headers, where=where, secret=self._secret)
        answer = parse_chat_response(payload, where=where)
        return ChatResponse(
            answer.text,
            answer.usage,
            answer.model or request.model,
            finish_reason=answer.finish_reason,
            rate_limits=parse_rate_limits(headers),
            content_null=answer.content_null,
            logprobs=answer.logprobs,
        )

    async def _read(self, response: aiohttp.ClientResponse, where: str) -> bytes:
        """The body, refused past `max_response_bytes` (by its Content-Length when sent,
        else while it streams in: a huge body is never held whole)."""
        cap = self.max_response_bytes
        declared = response.content_length
        if declared is not None and declared > cap:
            raise ResponseTooLarge(self._too_large(where, declared), status=response.status)
        chunks, size = [], 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > cap:
                raise ResponseTooLarge(self._too_large(where, None), status=response.status)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, where: str, declared: int | None) -> str:
        size = f"{declared / 2**20:.1f} MiB" if declared is not None else "more"
        return (
            f"{where}: the response body ({size}) is over the {self.max_response_bytes / 2**20:g} "
            "MiB cap; raise max_response_bytes (--max-response-mb) if the server is right"
        )

    async def aclose(self) -> None:
        """Close the connections (a later request opens new ones)."""
        session, self._session = self._session, None
        if session is not None and not session.closed and self._session_loop is _running_loop():
            await session.close()
        # A session left on another, finished loop went with it: nothing to close here.

    async def __aenter__(self) -> OpenAICompatibleProvider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
