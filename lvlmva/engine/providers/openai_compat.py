"""OpenAI-compatible chat provider (OpenAI, vLLM, Ollama, llama.cpp ...) on plain aiohttp.

It follows the openai SDK's async client conventions (`base_url`, `api_key` defaulting to
`OPENAI_API_KEY`, a timeout per request, `await aclose()` / `async with`) without its request
and response models, which cost several ms of CPU per request. It never retries: the engine
owns the one retry loop (the SDK's `max_retries=0`)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from typing import Literal

import aiohttp

from lvlmva.engine.errors import (
    BadRequest,
    ConnectionFailed,
    ProviderError,
    ProviderTimeout,
    ServerError,
)
from lvlmva.engine.providers.wire import (
    PLACEHOLDER_KEY,
    build_chat_kwargs,
    error_for_status,
    parse_retry_after,
    scrub,
    to_openai_messages,
)
from lvlmva.engine.types import ChatRequest, ChatResponse, Usage
from lvlmva.errors import ConfigError

__all__ = [
    "DEFAULT_BASE_URL",
    "OpenAICompatibleProvider",
    "build_chat_kwargs",
    "parse_chat_completion",
    "parse_retry_after",
    "resolve_endpoint",
    "to_openai_messages",
]

DEFAULT_BASE_URL = "https://api.openai.com/v1"


def _error_message(body: bytes) -> str:
    """The server's error message: `error.message` of an OpenAI error body, else the body."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        return text or "(empty body)"
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(error, str):
        return error
    return text


def status_error(
    status: int, body: bytes, headers: Mapping[str, str], *, where: str, secret: str | None
) -> ProviderError:
    """The error for a non-2xx answer (scrubbed of `secret`, message truncated)."""
    message = f"{where}: HTTP {status}: {scrub(_error_message(body), secret)}"
    return error_for_status(status, message, retry_after=parse_retry_after(headers))


def parse_chat_completion(body: bytes, *, where: str) -> tuple[str, Usage, str | None]:
    """Text, usage and model of a chat-completion JSON body; a malformed body or one without
    choices is a `ServerError`, a refusal a `BadRequest`."""
    try:
        data = json.loads(body)
        message = data["choices"][0]["message"]
        content = message.get("content")
        refusal = message.get("refusal")
        usage = data.get("usage") or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
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
    return content or "", Usage(prompt, completion), model if isinstance(model, str) else None


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
    `max_tokens_param="max_completion_tokens"` for OpenAI reasoning models, which reject
    `max_tokens`. At most `max_connections` connections are open at once. The aiohttp session
    is created on first use, inside the running event loop; like the SDK's client it honours
    the `HTTP(S)_PROXY` / `NO_PROXY` environment variables."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        name: str = "openai",
        structured_output: bool = True,
        max_connections: int = 256,
        max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens",
    ) -> None:
        root, key = resolve_endpoint(base_url, api_key)
        if max_connections < 1:
            raise ConfigError(f"max_connections must be at least 1 (got {max_connections})")
        self.name = name
        self.base_url = base_url
        self.supports_structured_output = structured_output
        self.max_connections = max_connections
        self._url = root + "/chat/completions"
        self._max_tokens_param = max_tokens_param
        self._secret = key
        self._headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
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
                payload = await response.read()
                status, headers = response.status, response.headers
        except TimeoutError:
            raise ProviderTimeout(f"{where}: no answer in {timeout:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            detail = scrub(f"{type(exc).__name__}: {exc}", self._secret)
            raise ConnectionFailed(f"{where}: connection failed: {detail}") from None
        if not 200 <= status < 300:
            raise status_error(status, payload, headers, where=where, secret=self._secret)
        text, usage, model = parse_chat_completion(payload, where=where)
        return ChatResponse(text=text, usage=usage, model=model or request.model)

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
