"""The simulated LVLM behind an OpenAI-compatible HTTP API (aiohttp), for `lvlmva serve-sim`.

Routes: `POST /v1/chat/completions` (OpenAI request and response shapes; images as base64
`data:` URLs; `response_format` `json_schema` or `json_object`), `GET /v1/models`,
`GET /sim/stats` (`?per_hash=0` leaves out the per-request-hash counts; `peak_requests_60s` /
`peak_requests_1s`: the most chat requests that arrived within any 60-s / 1-s sliding window)
and `POST /sim/reset`.
Answers are those of the in-process `SimulatedLVLM` for the same request. A 429 carries
`Retry-After` (whole seconds, rounded up) and `retry-after-ms`. An injected timeout holds the
request for `hang_s` seconds (the client normally gives up first), then answers 504.
Everything is async (sleeps, no thread per request), so latency costs no CPU.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import math
import re
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from lvlmva.engine.types import ChatRequest, ImagePart, Message, Part, TextPart
from lvlmva.errors import ConfigError
from lvlmva.simulation.simulator import SimOutcome, SimulatedLVLM

__all__ = [
    "LoopbackServer",
    "SimServer",
    "build_app",
    "is_loopback",
    "listen",
    "parse_chat_request",
    "start_sim_server",
]

_DATA_URL = re.compile(
    r"\Adata:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[^,;]*)*?;base64,(?P<data>.*)\Z", re.S
)
_ROLES = ("system", "user", "assistant")
SIM_KEY = web.AppKey("sim", SimulatedLVLM)
HANG_KEY = web.AppKey("hang_s", float)
OWNER = "lvlmva-simulation"


class RequestError(ValueError):
    """A request the OpenAI API would answer with 400."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parts(content: Any, where: str) -> tuple[Part, ...]:
    if isinstance(content, str):
        return (TextPart(content),)
    if not isinstance(content, list):
        raise RequestError(f"{where}.content must be a string or a list of parts")
    parts: list[Part] = []
    for i, item in enumerate(content):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "text" and isinstance(item.get("text"), str):
            parts.append(TextPart(item["text"]))
        elif kind == "image_url":
            spec = item.get("image_url")
            url = spec.get("url") if isinstance(spec, dict) else spec
            match = _DATA_URL.match(url) if isinstance(url, str) else None
            if match is None:
                raise RequestError(
                    f"{where}.content[{i}]: the simulation cannot fetch image URLs; send "
                    "images as base64 data: URLs"
                )
            try:
                data = base64.b64decode(match.group("data"), validate=True)
            except (binascii.Error, ValueError):
                raise RequestError(f"{where}.content[{i}]: invalid base64 image data") from None
            parts.append(ImagePart(f"image{i}", data, match.group("mime") or "image/png"))
        else:
            raise RequestError(f"{where}.content[{i}]: unsupported part type {kind!r}")
    return tuple(parts)


def parse_chat_request(body: Any) -> ChatRequest:
    """An OpenAI chat-completions request body as a `ChatRequest` (RequestError if invalid)."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    if body.get("stream"):
        raise RequestError("streaming is not supported by the simulation")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("'model' is required")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise RequestError("'messages' must be a non-empty list")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            raise RequestError(f"messages[{i}] needs a role of {', '.join(_ROLES)}")
        messages.append(Message(m["role"], _parts(m.get("content", ""), f"messages[{i}]")))
    schema: Mapping[str, Any] | None = None
    schema_name = "verdicts"
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema") or {}
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise RequestError("response_format.json_schema.schema must be an object")
        schema, schema_name = spec["schema"], str(spec.get("name", schema_name))
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        schema = {"type": "object"}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    defaults = ChatRequest(model=model, messages=())
    try:
        return ChatRequest(
            model=model,
            messages=tuple(messages),
            temperature=float(body.get("temperature", defaults.temperature)),
            max_tokens=int(max_tokens) if max_tokens is not None else defaults.max_tokens,
            seed=int(body["seed"]) if body.get("seed") is not None else None,
            response_schema=schema,
            schema_name=schema_name,
        )
    except (TypeError, ValueError):
        raise RequestError("temperature, max_tokens and seed must be numbers") from None


def _error(status: int, message: str, kind: str, code: str | None = None, **headers: str):
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers or None)


def _completion(outcome: SimOutcome) -> dict[str, Any]:
    response = outcome.response
    assert response is not None
    return {
        "id": f"chatcmpl-sim-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": response.model,
        "system_fingerprint": OWNER,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": response.text, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": response.usage.prompt_tokens,
            "completion_tokens": response.usage.completion_tokens,
            "total_tokens": response.usage.total_tokens,
        },
    }


async def _chat(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIM_KEY]
    sim.stats.arrivals.append(time.monotonic())
    try:
        body = await request.json(loads=json.loads)
        chat = parse_chat_request(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        sim.stats.requests += 1
        sim.stats.by_status["400"] += 1
        return _error(400, "the request body is not valid JSON", "invalid_request_error")
    except RequestError as exc:
        sim.stats.requests += 1
        sim.stats.by_status["400"] += 1
        return _error(400, str(exc), "invalid_request_error")
    outcome = sim.plan(chat)
    if outcome.kind == "timeout":
        await asyncio.sleep(request.app[HANG_KEY])
        sim.deliver(outcome)
        return _error(504, "simulated upstream timeout", "server_error", "timeout")
    if outcome.delay_s > 0:
        await asyncio.sleep(outcome.delay_s)
    sim.deliver(outcome)
    if outcome.kind == "ok":
        return web.json_response(_completion(outcome))
    if outcome.kind == "429":
        wait = outcome.retry_after or 0.0
        return _error(
            429,
            outcome.message,
            "requests",
            "rate_limit_exceeded",
            **{"Retry-After": str(math.ceil(wait)), "retry-after-ms": str(round(wait * 1000))},
        )
    if outcome.kind == "500":
        return _error(500, outcome.message, "server_error")
    return _error(400, outcome.message, "invalid_request_error")


async def _models(request: web.Request) -> web.Response:
    names = ("simulated-critic", "simulated-judge", "simulated")
    return web.json_response(
        {
            "object": "list",
            "data": [{"id": n, "object": "model", "created": 0, "owned_by": OWNER} for n in names],
        }
    )


async def _stats(request: web.Request) -> web.Response:
    per_hash = request.query.get("per_hash", "1").lower() not in ("0", "false", "no")
    return web.json_response(request.app[SIM_KEY].stats.to_dict(per_hash=per_hash))


async def _reset(request: web.Request) -> web.Response:
    request.app[SIM_KEY].reset()
    return web.json_response({"reset": True})


def build_app(sim: SimulatedLVLM, *, hang_s: float | None = None) -> web.Application:
    """The aiohttp application serving `sim`; an injected timeout holds a request for
    `hang_s` seconds (default: `sim.timeout_hang_s`, else 120 s) before answering 504."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[SIM_KEY] = sim
    default = sim.timeout_hang_s if sim.timeout_hang_s is not None else 120.0
    app[HANG_KEY] = float(default if hang_s is None else hang_s)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/chat/completions", _chat)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/models", _models)
    app.router.add_get("/sim/stats", _stats)
    app.router.add_post("/sim/reset", _reset)
    return app


@dataclass
class LoopbackServer:
    """A running aiohttp server; `base_url` is what an OpenAI client takes."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    async def close(self) -> None:
        await self.runner.cleanup()


@dataclass
class SimServer(LoopbackServer):
    """A running simulation server."""

    sim: SimulatedLVLM


async def listen(
    app: web.Application, host: str, port: int, *, allow_remote: bool = False
) -> tuple[web.AppRunner, int]:
    """Serve `app` on `host:port` (port 0: a free port); returns the runner and the bound port.
    A host that is not a loopback address is refused unless `allow_remote`."""
    if not allow_remote and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve the simulation on {host}, which is not a loopback address; "
            "use 127.0.0.1, or pass --allow-remote if you really mean it"
        )
    if not 0 <= port <= 65535:
        raise ConfigError(f"port must be in 0..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve host {host!r}: {exc}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.SockSite(runner, sock, backlog=1024)
    await site.start()
    return runner, sock.getsockname()[1]


async def start_sim_server(
    sim: SimulatedLVLM,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    allow_remote: bool = False,
    hang_s: float | None = None,
) -> SimServer:
    """Serve `sim` on `host:port` (port 0: a free port) until `close()`. A host that is not a
    loopback address is refused unless `allow_remote`."""
    app = build_app(sim, hang_s=hang_s)
    runner, bound = await listen(app, host, port, allow_remote=allow_remote)
    return SimServer(runner=runner, host=host, port=bound, sim=sim)
