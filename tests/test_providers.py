"""Providers over real HTTP against a tiny OpenAI-shaped aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import importlib.util
import json
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from lvlmva.engine.errors import (
    AuthenticationFailed,
    BadRequest,
    ConnectionFailed,
    NotFound,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from lvlmva.engine.providers import LiteLLMProvider, OpenAICompatibleProvider, parse_retry_after
from lvlmva.engine.types import ChatRequest, ImagePart, Message, Provider, TextPart
from lvlmva.engine.validation import verdict_schema
from lvlmva.errors import ConfigError

SECRET = "sk-test-SECRET-0123456789"
PNG = b"\x89PNG\r\n\x1a\nfake-image-bytes\x00\x01\x02"


@dataclass
class Reply:
    status: int = 200
    body: dict | str | None = None
    headers: dict = field(default_factory=dict)
    delay: float = 0.0


def completion(text: str, model: str = "served-model") -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


def api_error(message: str, code: str = "error") -> dict:
    return {"error": {"message": message, "type": code, "param": None, "code": code}}


class FakeOpenAI:
    """Serves scripted replies in order (the last one repeats) and records every request."""

    def __init__(self) -> None:
        self.replies: list[Reply] = [Reply(body=completion("hello"))]
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.url = ""
        self.active = 0
        self.peak_active = 0
        self.peers: set = set()
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(await request.json())
        self.headers.append(dict(request.headers))
        self.peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        try:
            if reply.delay:
                await asyncio.sleep(reply.delay)
        finally:
            self.active -= 1
        body = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
        return web.Response(
            status=reply.status, text=body, headers=reply.headers, content_type="application/json"
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def server():
    fake = FakeOpenAI()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def provider(server):
    p = OpenAICompatibleProvider(base_url=server.url, api_key=SECRET, name="local")
    yield p
    await p.aclose()


def vision_request(schema: bool = True) -> ChatRequest:
    colors = ("red", "blue")
    return ChatRequest(
        model="test-model",
        messages=(
            Message.text("system", "You are a careful critic."),
            Message(
                "user",
                (
                    TextPart("Look at these images."),
                    ImagePart("original", PNG, width=28, height=28),
                    ImagePart("clusters", PNG + b"2", mime="image/jpeg"),
                ),
            ),
        ),
        temperature=0.0,
        max_tokens=321,
        seed=7,
        response_schema=verdict_schema(colors) if schema else None,
        schema_name="verdicts",
    )


async def test_request_body_and_response(server, provider):
    assert isinstance(provider, Provider)
    response = await provider.complete(vision_request(), timeout=10)
    assert response.text == "hello"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (11, 7)
    assert response.model == "served-model"

    assert len(server.requests) == 1
    body = server.requests[0]
    assert server.headers[0]["Authorization"] == f"Bearer {SECRET}"
    assert server.headers[0]["Content-Type"] == "application/json"
    assert body["model"] == "test-model"
    assert body["temperature"] == 0.0 and body["max_tokens"] == 321 and body["seed"] == 7
    assert body["messages"][0] == {"role": "system", "content": "You are a careful critic."}
    parts = body["messages"][1]["content"]
    assert parts[0] == {"type": "text", "text": "Look at these images."}
    assert parts[1]["type"] == "image_url"
    assert parts[1]["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(PNG).decode()
    url = parts[2]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == PNG + b"2"
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "verdicts" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"] == verdict_schema(("red", "blue"))


async def test_no_response_format_without_schema_or_support(server):
    p = OpenAICompatibleProvider(base_url=server.url, structured_output=False)
    try:
        await p.complete(vision_request(), timeout=10)
    finally:
        await p.aclose()
    assert "response_format" not in server.requests[0]
    assert server.headers[0]["Authorization"] == "Bearer not-needed"


async def test_429_with_retry_after_seconds_is_rate_limited_and_not_retried(server, provider):
    server.replies = [
        Reply(429, api_error("slow down", "rate_limit_exceeded"), {"Retry-After": "7"})
    ]
    with pytest.raises(RateLimited) as info:
        await provider.complete(vision_request(), timeout=10)
    assert info.value.retry_after == pytest.approx(7.0)
    assert info.value.status == 429 and info.value.retryable
    assert len(server.requests) == 1  # the SDK's retries are off


async def test_429_with_http_date(server, provider):
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    server.replies = [Reply(429, api_error("later"), {"Retry-After": when})]
    with pytest.raises(RateLimited) as info:
        await provider.complete(vision_request(), timeout=10)
    assert 25.0 <= info.value.retry_after <= 31.0
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("reply", "error", "retry_after"),
    [
        (Reply(500, api_error("boom")), ServerError, None),
        (Reply(503, api_error("busy"), {"Retry-After": "2"}), ServerError, 2.0),
        (Reply(502, "<html>bad gateway</html>"), ServerError, None),
        (Reply(400, api_error("bad schema")), BadRequest, None),
        (Reply(404, api_error("no such model")), NotFound, None),
        (Reply(403, api_error("forbidden")), AuthenticationFailed, None),
    ],
)
async def test_status_mapping(server, provider, reply, error, retry_after):
    server.replies = [reply]
    with pytest.raises(error) as info:
        await provider.complete(vision_request(), timeout=10)
    assert type(info.value) is error
    assert info.value.status == reply.status
    assert info.value.retry_after == retry_after
    assert info.value.retryable == (reply.status >= 500)
    assert len(server.requests) == 1


async def test_api_key_never_appears_in_errors(server, provider):
    server.replies = [Reply(401, api_error(f"Incorrect API key provided: {SECRET}"))]
    with pytest.raises(AuthenticationFailed) as info:
        await provider.complete(vision_request(), timeout=10)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(provider)
    assert SECRET not in "".join(traceback.format_exception(info.value))


async def test_slow_response_times_out(server, provider):
    server.replies = [Reply(body=completion("late"), delay=3.0)]
    t0 = time.monotonic()
    with pytest.raises(ProviderTimeout):
        await provider.complete(vision_request(), timeout=0.3)
    assert time.monotonic() - t0 < 2.5
    assert len(server.requests) == 1


async def test_connection_refused_is_connection_failed():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    p = OpenAICompatibleProvider(base_url=f"http://127.0.0.1:{port}/v1")
    try:
        with pytest.raises(ConnectionFailed):
            await p.complete(vision_request(), timeout=5)
    finally:
        await p.aclose()


async def test_malformed_success_body_is_a_server_error(server, provider):
    server.replies = [Reply(200, {"id": "x", "choices": []})]
    with pytest.raises(ServerError, match="no choices"):
        await provider.complete(vision_request(), timeout=10)


async def test_refusal_is_a_bad_request(server, provider):
    body = completion("")
    body["choices"][0]["message"] = {"role": "assistant", "content": None, "refusal": "no way"}
    server.replies = [Reply(200, body)]
    with pytest.raises(BadRequest, match="refused"):
        await provider.complete(vision_request(), timeout=10)


def test_openai_endpoint_without_key_is_a_config_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        OpenAICompatibleProvider()


def test_endpoint_and_key_resolve_like_the_sdk(monkeypatch):
    from lvlmva.engine.providers.openai_compat import DEFAULT_BASE_URL, resolve_endpoint

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1/")
    assert resolve_endpoint(None, None) == ("http://127.0.0.1:8000/v1", "not-needed")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert resolve_endpoint("http://127.0.0.1:9/v1", None) == ("http://127.0.0.1:9/v1", "sk-env")
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert resolve_endpoint(None, "sk-arg") == (DEFAULT_BASE_URL, "sk-arg")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "12"}, 12.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # in the past
        ({}, None),
        (None, None),
    ],
)
def test_parse_retry_after(headers, expected):
    assert parse_retry_after(headers) == expected


def test_parse_retry_after_http_date_in_the_future():
    now = 1_000_000_000.0
    header = email.utils.formatdate(now + 42, usegmt=True)
    assert parse_retry_after({"retry-after": header}, now=now) == pytest.approx(42.0)


# -- litellm --------------------------------------------------------------------------------

HAS_LITELLM = importlib.util.find_spec("litellm") is not None
needs_litellm = pytest.mark.skipif(not HAS_LITELLM, reason="litellm extra not installed")


def test_litellm_missing_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "litellm", None)
    with pytest.raises(ConfigError, match=r"pip install 'lvlm-va\[litellm\]'"):
        LiteLLMProvider()


@needs_litellm
async def test_litellm_against_the_local_server(server):
    p = LiteLLMProvider(api_base=server.url, api_key=SECRET)
    request = vision_request()
    request = ChatRequest(**{**request.__dict__, "model": "openai/test-model"})
    response = await p.complete(request, timeout=10)
    assert response.text == "hello"
    assert response.usage.completion_tokens == 7
    body = server.requests[0]
    assert body["model"] == "test-model"
    assert body["messages"][1]["content"][1]["image_url"]["url"].startswith(
        "data:image/png;base64,"
    )
    assert body["response_format"]["json_schema"]["strict"] is True

    server.replies = [Reply(429, api_error("slow down"), {"Retry-After": "3"})]
    with pytest.raises(RateLimited) as info:
        await p.complete(request, timeout=10)
    assert info.value.retry_after == pytest.approx(3.0)
    assert len(server.requests) == 2  # no retries inside litellm

    server.replies = [Reply(500, api_error("boom"))]
    with pytest.raises(ServerError):
        await p.complete(request, timeout=10)
    assert len(server.requests) == 3

    server.replies = [Reply(401, api_error(f"bad key {SECRET}"))]
    with pytest.raises(AuthenticationFailed) as auth:
        await p.complete(request, timeout=10)
    assert SECRET not in str(auth.value)
    await p.aclose()


# -- the aiohttp transport ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, AuthenticationFailed), (408, ProviderTimeout), (422, BadRequest), (504, ServerError)],
)
async def test_more_statuses_and_the_server_message_is_kept(server, provider, status, error):
    server.replies = [Reply(status, api_error(f"reason {status} " + "x" * 1000))]
    with pytest.raises(error) as info:
        await provider.complete(vision_request(), timeout=10)
    assert type(info.value) is error and info.value.status == status
    assert f"HTTP {status}: reason {status}" in str(info.value)
    assert len(str(info.value)) < 400  # the message is truncated


async def test_non_json_error_body_is_reported_as_text(server, provider):
    server.replies = [Reply(400, "plain words\nof an error")]
    with pytest.raises(BadRequest, match="HTTP 400: plain words of an error"):
        await provider.complete(vision_request(), timeout=10)


@pytest.mark.parametrize(
    "body",
    ["{not json", "[1, 2]", json.dumps({"choices": [{"nothing": 1}]}), json.dumps({"x": 1})],
)
async def test_malformed_success_bodies_are_server_errors(server, provider, body):
    server.replies = [Reply(200, body)]
    with pytest.raises(ServerError, match=r"malformed|no choices"):
        await provider.complete(vision_request(), timeout=10)


async def test_max_completion_tokens_and_default_model(server):
    p = OpenAICompatibleProvider(base_url=server.url, max_tokens_param="max_completion_tokens")
    body = completion("hi")
    del body["model"], body["usage"]
    server.replies = [Reply(200, body)]
    async with p:
        response = await p.complete(vision_request(schema=False), timeout=10)
    assert response.model == "test-model" and response.usage.total_tokens == 0
    sent = server.requests[0]
    assert sent["max_completion_tokens"] == 321 and "max_tokens" not in sent
    assert "response_format" not in sent


async def test_a_dropped_connection_is_connection_failed_and_hides_the_key():
    async def slam(reader, writer):
        await reader.read(100)
        writer.transport.abort()

    listener = await asyncio.start_server(slam, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    p = OpenAICompatibleProvider(base_url=f"http://127.0.0.1:{port}/v1", api_key=SECRET)
    try:
        with pytest.raises(ConnectionFailed) as info:
            await p.complete(vision_request(), timeout=5)
        assert SECRET not in "".join(traceback.format_exception(info.value))
    finally:
        await p.aclose()
        listener.close()
        await listener.wait_closed()


async def test_connections_are_reused_and_capped(server):
    server.replies = [Reply(body=completion("hi"), delay=0.1)]
    p = OpenAICompatibleProvider(base_url=server.url, max_connections=2)
    async with p:
        await asyncio.gather(*(p.complete(vision_request(), timeout=10) for _ in range(6)))
        await p.complete(vision_request(), timeout=10)
    assert len(server.requests) == 7
    assert server.peak_active == 2 and len(server.peers) == 2


def test_the_session_follows_the_event_loop():
    """One provider used from two `asyncio.run`s (a CLI that runs twice) works both times."""
    p = OpenAICompatibleProvider(base_url="http://127.0.0.1:9/v1")

    async def once(close: bool) -> str:
        fake = FakeOpenAI()
        await fake.start()
        try:
            p._url = fake.url + "/chat/completions"
            return (await p.complete(vision_request(), timeout=10)).text
        finally:
            if close:
                await p.aclose()
            await fake.stop()

    assert asyncio.run(once(close=False)) == "hello"  # its session is left on a closed loop
    assert asyncio.run(once(close=True)) == "hello"


def test_defaults_follow_the_openai_client(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    p = OpenAICompatibleProvider()
    assert p._url == "https://api.openai.com/v1/chat/completions"
    assert SECRET not in repr(p) and p._headers["Authorization"] == f"Bearer {SECRET}"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/")
    assert OpenAICompatibleProvider()._url == "http://127.0.0.1:9/v1/chat/completions"
    with pytest.raises(ConfigError, match="max_connections"):
        OpenAICompatibleProvider(base_url="http://127.0.0.1:9/v1", max_connections=0)


def test_the_image_data_url_is_computed_once():
    image = ImagePart("original", PNG)
    assert image.data_url is image.data_url
    assert image.data_url == "data:image/png;base64," + base64.b64encode(PNG).decode()


async def test_finish_reason_and_usage_details_are_read(server, provider):
    body = completion("cut off")
    body["choices"][0]["finish_reason"] = "length"
    body["usage"]["prompt_tokens_details"] = {"cached_tokens": 5}
    body["usage"]["completion_tokens_details"] = {"reasoning_tokens": 3}
    server.replies = [Reply(body=body)]
    answer = await provider.complete(vision_request(), timeout=10)
    assert answer.finish_reason == "length" and answer.text == "cut off"
    assert (answer.usage.cached_tokens, answer.usage.reasoning_tokens) == (5, 3)
    body = completion("")
    body["choices"][0]["message"]["content"] = None
    body["choices"][0]["finish_reason"] = "content_filter"
    server.replies = [Reply(body=body)]
    answer = await provider.complete(vision_request(), timeout=10)
    assert answer.content_null and answer.text == "" and answer.finish_reason == "content_filter"


async def test_insufficient_quota_is_fatal_and_not_a_rate_limit(server, provider):
    from lvlmva.engine.errors import QuotaExceeded

    quota = api_error("You exceeded your current quota", "insufficient_quota")
    server.replies = [Reply(429, quota)]
    with pytest.raises(QuotaExceeded) as info:
        await provider.complete(vision_request(), timeout=10)
    assert info.value.fatal and not info.value.retryable
    assert info.value.code == "insufficient_quota"
    server.replies = [Reply(429, api_error("slow down", "rate_limit_exceeded"))]
    with pytest.raises(RateLimited):
        await provider.complete(vision_request(), timeout=10)


async def test_organization_and_project_headers_come_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("OPENAI_ORG_ID", "org-abc")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj_xyz")
    p = OpenAICompatibleProvider(base_url=server.url, api_key=SECRET)
    await p.complete(vision_request(), timeout=10)
    await p.aclose()
    sent = server.headers[-1]
    assert sent["OpenAI-Organization"] == "org-abc" and sent["OpenAI-Project"] == "proj_xyz"
    monkeypatch.delenv("OPENAI_ORG_ID")
    monkeypatch.setenv("OPENAI_ORGANIZATION", "org-old-name")
    p = OpenAICompatibleProvider(base_url=server.url, api_key=SECRET, project="proj_given")
    await p.complete(vision_request(), timeout=10)
    await p.aclose()
    sent = server.headers[-1]
    assert sent["OpenAI-Organization"] == "org-old-name" and sent["OpenAI-Project"] == "proj_given"


async def test_a_body_past_the_size_cap_is_refused(server):
    from lvlmva.engine.errors import ResponseTooLarge

    huge = json.dumps(completion("x")) + " " * (3 * 2**20)
    server.replies = [Reply(body=huge)]
    p = OpenAICompatibleProvider(base_url=server.url, api_key=SECRET, max_response_bytes=2**20)
    with pytest.raises(ResponseTooLarge, match="over the 1 MiB cap"):
        await p.complete(vision_request(), timeout=10)
    await p.aclose()


def test_rate_limit_headers_are_parsed():
    from lvlmva.engine.providers.wire import parse_duration, parse_rate_limits

    info = parse_rate_limits({
        "x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s", "x-ratelimit-limit-tokens": "150000",
        "x-ratelimit-remaining-tokens": "149984", "x-ratelimit-reset-tokens": "6m0s",
    })  # fmt: skip
    assert (info.remaining_requests, info.reset_requests_s) == (59, 1.0)
    assert (info.limit_tokens, info.reset_tokens_s) == (150000, 360.0)
    assert parse_rate_limits({"content-type": "application/json"}) is None
    assert [parse_duration(t) for t in ("20ms", "1h2m3.5s", "2.5", "soon", "")] == [
        0.02, 3723.5, 2.5, None, None,
    ]


def test_the_tuple_parser_of_earlier_callers_still_reads_a_body():
    from lvlmva.engine.providers.openai_compat import parse_chat_completion, parse_chat_response

    body = json.dumps(completion("hi", model="m-1")).encode()
    text, usage, model = parse_chat_completion(body, where="w")
    assert (text, usage.prompt_tokens, model) == ("hi", 11, "m-1")
    assert parse_chat_response(body, where="w").finish_reason == "stop"
