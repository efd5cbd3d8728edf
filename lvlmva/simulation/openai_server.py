"""The OpenAI stand-in's HTTP routes (aiohttp): the API under /v1, admin routes for tests.

API (OpenAPI spec openai/openai-openapi@f85dbe2 paths): `POST /v1/chat/completions`,
`GET /v1/models`, `GET /v1/models/{model}`, `POST /v1/files` (multipart), `GET /v1/files`,
`GET /v1/files/{file_id}`, `DELETE /v1/files/{file_id}`, `GET /v1/files/{file_id}/content`,
`POST /v1/batches`, `GET /v1/batches`, `GET /v1/batches/{batch_id}`,
`POST /v1/batches/{batch_id}/cancel`. Every /v1 request needs `Authorization: Bearer <key>`
(unless the stand-in was built with `require_auth=False`); every answer carries `x-request-id`
and `openai-version`; an unknown route is a 404 "Invalid URL (METHOD /path)", as the API says.

Admin (no auth, not part of the API): `POST /stand-in/advance` {"seconds"} (FakeClock only),
`GET /stand-in/clock`, `GET /stand-in/ledger` (`?calls=0` leaves out the call list),
`GET|POST /stand-in/faults` (POST: a JSON object of `Faults` fields to change),
`POST /stand-in/reset`; and the older simulation server's `GET /sim/stats` (`?per_hash=0`) and
`POST /sim/reset`, which `lvlmva serve-sim` tooling reads.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from lvlmva.errors import ConfigError
from lvlmva.simulation.clock import FakeClock
from lvlmva.simulation.openai_errors import APIError, invalid_request, missing_required
from lvlmva.simulation.openai_files import MAX_FILE_BYTES
from lvlmva.simulation.openai_ledger import CallRecord, body_sha256
from lvlmva.simulation.openai_models import CUSTOM, openai_model_ids
from lvlmva.simulation.openai_standin import OpenAIStandIn
from lvlmva.simulation.server import LoopbackServer, listen

__all__ = ["StandInServer", "build_openai_app", "start_openai_standin"]

STANDIN_KEY = web.AppKey("standin", OpenAIStandIn)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPENAI_VERSION = "2020-10-01"


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None, pad: int = 0):
    text = json.dumps(body, ensure_ascii=False)
    if pad > len(text):
        text += " " * (pad - len(text))  # still valid JSON, just large
    return web.Response(text=text, status=status, content_type="application/json", headers=headers)


def _error(exc: APIError) -> web.Response:
    return _json(exc.body(), exc.status, dict(exc.headers))


def _standin(request: web.Request) -> OpenAIStandIn:
    return request.app[STANDIN_KEY]


def _authorized(request: web.Request) -> OpenAIStandIn:
    """The stand-in, once the request's API key is accepted (401 otherwise)."""
    standin = _standin(request)
    standin.authorize(request.headers.get("Authorization"))
    return standin


@web.middleware
async def _protocol(request: web.Request, handler: Handler) -> web.StreamResponse:
    """API errors as JSON bodies, unknown routes as the API's 404, and the common headers."""
    started = time.perf_counter()
    try:
        response = await handler(request)
    except APIError as exc:
        response = _error(exc)
    except ConfigError as exc:
        response = _error(invalid_request(str(exc)))
    except web.HTTPRequestEntityTooLarge:
        response = _error(APIError(413, "The request body is too large.", "invalid_request_error"))
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        response = _error(
            APIError(404, f"Invalid URL ({request.method} {request.path})", "invalid_request_error")
        )
    response.headers.setdefault("x-request-id", f"req_{uuid.uuid4().hex}")
    response.headers.setdefault("openai-version", OPENAI_VERSION)
    response.headers.setdefault(
        "openai-processing-ms", str(round((time.perf_counter() - started) * 1000))
    )
    return response


def _unparseable() -> APIError:
    return invalid_request(
        "We could not parse the JSON body of your request. The API expects a JSON payload."
    )


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _unparseable() from None


# -- chat -------------------------------------------------------------------------------------


async def _chat(request: web.Request) -> web.StreamResponse:
    standin = _standin(request)
    standin.ledger.sim_stats.arrivals.append(time.monotonic())
    raw = await request.read()
    try:
        body = json.loads(raw)
        sha = body_sha256(body)
    except (ValueError, UnicodeDecodeError):
        body, sha = None, body_sha256(raw.decode("latin-1"))
    try:
        standin.authorize(request.headers.get("Authorization"))
        if body is None:
            raise _unparseable()
        quota = standin.quota_error()
        if quota is not None:
            raise quota
    except APIError as exc:
        model = body.get("model") if isinstance(body, dict) else None
        standin.ledger.record_call(
            CallRecord(0, "sync", model if isinstance(model, str) else None, sha, exc.status,
                       exc.code, at=standin.clock.now())
        )  # fmt: skip
        return _error(exc)
    outcome = standin.engine.run(body)
    if outcome.draw.transport == "timeout":
        await asyncio.sleep(standin.faults.hang_s)
    elif outcome.draw.delay_s > 0:
        await asyncio.sleep(outcome.draw.delay_s)
    pad = standin.faults.oversize_bytes if outcome.draw.oversize else 0
    return _json(outcome.body, outcome.status, dict(outcome.headers), pad)


async def _models(request: web.Request) -> web.Response:
    standin = _authorized(request)
    settings = standin.config.chat
    names = [(n, CUSTOM.owned_by) for n in settings.custom_models]
    if settings.serve_openai_models:
        names += [(n, "system") for n in openai_model_ids()]
    data = [{"id": n, "object": "model", "created": 0, "owned_by": o} for n, o in names]
    return _json({"object": "list", "data": data})


async def _model(request: web.Request) -> web.Response:
    standin = _authorized(request)
    name = request.match_info["model"]
    family, _ = standin.engine.resolve(name)
    return _json({"id": name, "object": "model", "created": 0, "owned_by": family.owned_by})


# -- files ------------------------------------------------------------------------------------


async def _upload(request: web.Request) -> web.Response:
    standin = _authorized(request)
    if not request.content_type.startswith("multipart/"):
        raise invalid_request("Invalid Content-Type: file uploads need multipart/form-data.")
    form = await request.post()
    upload, purpose = form.get("file"), form.get("purpose")
    if not isinstance(upload, web.FileField):
        raise missing_required("file")
    if purpose is None:
        raise missing_required("purpose")
    expires = {
        key: form.get(f"expires_after[{key}]")
        for key in ("anchor", "seconds")
        if form.get(f"expires_after[{key}]") is not None
    }
    content = upload.file.read()
    meta = standin.files.upload(upload.filename or "upload", purpose, content, expires or None)
    return _json(meta.to_dict())


async def _files(request: web.Request) -> web.Response:
    standin = _authorized(request)
    return _json(standin.files.list(request.query))


async def _file(request: web.Request) -> web.Response:
    standin = _authorized(request)
    file_id = request.match_info["file_id"]
    if request.method == "DELETE":
        return _json(standin.files.delete(file_id))
    return _json(standin.files.get(file_id).to_dict())


async def _file_content(request: web.Request) -> web.Response:
    standin = _authorized(request)
    standin.batches.tick()
    content = standin.files.content(request.match_info["file_id"])
    return web.Response(body=content, content_type="application/octet-stream")


# -- batches ----------------------------------------------------------------------------------


async def _batch_create(request: web.Request) -> web.Response:
    standin = _authorized(request)
    quota = standin.quota_error()
    if quota is not None:
        raise quota
    return _json(standin.batches.create(await _json_body(request)))


async def _batches(request: web.Request) -> web.Response:
    standin = _authorized(request)
    return _json(standin.batches.list(request.query))


async def _batch(request: web.Request) -> web.Response:
    standin = _authorized(request)
    return _json(standin.batches.retrieve(request.match_info["batch_id"]))


async def _batch_cancel(request: web.Request) -> web.Response:
    standin = _authorized(request)
    return _json(standin.batches.cancel(request.match_info["batch_id"]))


# -- admin ------------------------------------------------------------------------------------


async def _advance(request: web.Request) -> web.Response:
    standin = _standin(request)
    body = await _json_body(request)
    seconds = body.get("seconds") if isinstance(body, dict) else None
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
        raise invalid_request('POST /stand-in/advance takes {"seconds": <number >= 0>}.')
    if not isinstance(standin.clock, FakeClock):
        raise APIError(409, "The stand-in runs on the wall clock; start it with a FakeClock "
                       "(lvlmva serve-sim --fake-clock) to advance time.")  # fmt: skip
    return _json({"now": standin.advance(float(seconds))})


async def _clock(request: web.Request) -> web.Response:
    standin = _standin(request)
    return _json({"now": standin.clock.now(), "fake": isinstance(standin.clock, FakeClock)})


async def _ledger(request: web.Request) -> web.Response:
    calls = request.query.get("calls", "1").lower() not in ("0", "false", "no")
    return _json(_standin(request).ledger.to_dict(calls=calls))


async def _faults(request: web.Request) -> web.Response:
    standin = _standin(request)
    if request.method == "POST":
        changes = await _json_body(request)
        if not isinstance(changes, dict):
            raise invalid_request("POST /stand-in/faults takes a JSON object of fault settings.")
        standin.faults = standin.faults.updated(changes)
    return _json(standin.faults.to_dict())


async def _reset(request: web.Request) -> web.Response:
    _standin(request).reset()
    return _json({"reset": True})


async def _sim_stats(request: web.Request) -> web.Response:
    per_hash = request.query.get("per_hash", "1").lower() not in ("0", "false", "no")
    stats = _standin(request).ledger.sim_stats.to_dict(per_hash=per_hash)
    return _json({**stats, "stand_in": True})


def build_openai_app(standin: OpenAIStandIn) -> web.Application:
    """The aiohttp application serving `standin` (see the module docstring for the routes)."""
    app = web.Application(client_max_size=MAX_FILE_BYTES + 16 * 1024 * 1024,
                          middlewares=[_protocol])  # fmt: skip
    app[STANDIN_KEY] = standin
    add = app.router.add_route
    for method, path, handler in (
        ("POST", "/v1/chat/completions", _chat),
        ("GET", "/v1/models", _models),
        ("GET", "/v1/models/{model}", _model),
        ("POST", "/v1/files", _upload),
        ("GET", "/v1/files", _files),
        ("GET", "/v1/files/{file_id}", _file),
        ("DELETE", "/v1/files/{file_id}", _file),
        ("GET", "/v1/files/{file_id}/content", _file_content),
        ("POST", "/v1/batches", _batch_create),
        ("GET", "/v1/batches", _batches),
        ("GET", "/v1/batches/{batch_id}", _batch),
        ("POST", "/v1/batches/{batch_id}/cancel", _batch_cancel),
        ("POST", "/stand-in/advance", _advance),
        ("GET", "/stand-in/clock", _clock),
        ("GET", "/stand-in/ledger", _ledger),
        ("GET", "/stand-in/faults", _faults),
        ("POST", "/stand-in/faults", _faults),
        ("POST", "/stand-in/reset", _reset),
        ("GET", "/sim/stats", _sim_stats),
        ("POST", "/sim/reset", _reset),
    ):
        add(method, path, handler)
    return app


@dataclass
class StandInServer(LoopbackServer):
    """A running stand-in; `base_url` is what an OpenAI client takes."""

    standin: OpenAIStandIn


async def start_openai_standin(
    standin: OpenAIStandIn,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    allow_remote: bool = False,
) -> StandInServer:
    """Serve `standin` on `host:port` (port 0: a free port) until `close()`; a host that is
    not a loopback address is refused unless `allow_remote`."""
    runner, bound = await listen(build_openai_app(standin), host, port, allow_remote=allow_remote)
    return StandInServer(runner=runner, host=host, port=bound, standin=standin)
