"""The review app's HTTP side (aiohttp): a JSON API over a `CritiqueRun` and the static page.

Every route that names a sample takes its integer index (never a path); image routes map a
fixed set of names to the run's own files. Store calls run in worker threads, so a slow disk
never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shlex
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from lvlmva.errors import ConfigError, DataError
from lvlmva.review import panels
from lvlmva.review.params import card, detail, parse_page, parse_query
from lvlmva.review.realign import realign_argv
from lvlmva.review.security import guard
from lvlmva.runs import CritiqueRun, MissingSample
from lvlmva.vision.palette import PALETTE

STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
FILE_IMAGES = ("original", "clusters", "overlay")
PANEL_IMAGES = ("attribution", "mask", "effective")

RealignHook = Callable[[CritiqueRun], Awaitable[str]]
"""What "re-align with these overrides" runs when wired: gets the run, returns a message."""

RUN_KEY = web.AppKey("run", CritiqueRun)


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def errors(request: web.Request, handler) -> web.StreamResponse:
    """Our own errors become one-line JSON answers: 404 for a missing sample, else 400."""
    try:
        return await handler(request)
    except MissingSample as exc:
        return _json_error(404, str(exc))
    except DataError as exc:
        return _json_error(400, str(exc))
    except ConfigError as exc:
        return _json_error(400, str(exc))


class Review:
    """The route handlers, bound to one run."""

    def __init__(self, run: CritiqueRun, token: str, reviewer: str | None,
                 realign: RealignHook | None) -> None:
        self.run = run
        self.token = token
        self.reviewer = reviewer
        self.realign_hook = realign
        self.names = run.manifest.class_names
        self.index_html = (STATIC / "index.html").read_text().replace("__REVIEW_TOKEN__", token)
        self.scales = {"attribution": panels.scale_stops(panels.ATTRIBUTION_SCALE),
                       "mask": panels.scale_stops(panels.MASK_SCALE)}

    @staticmethod
    def _index(request: web.Request) -> int:
        return int(request.match_info["index"])  # the route only matches digits

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=self.index_html, content_type="text/html",
                            headers={"Cache-Control": "no-store"})

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound()
        return web.FileResponse(STATIC / name, headers={"Content-Type": STATIC_FILES[name],
                                                        "Cache-Control": "no-cache"})

    async def info(self, request: web.Request) -> web.Response:
        m = self.run.manifest
        has_truth = await asyncio.to_thread(self.run.has_ground_truth)
        argv = realign_argv(self.run)
        return web.json_response({
            "run_id": m.run_id, "created": m.created, "dataset": m.dataset, "split": m.split,
            "class_names": list(m.class_names), "masks": m.masks, "critic": dict(m.critic),
            "path": str(self.run.root.resolve()), "has_truth": has_truth,
            "reviewer": self.reviewer,
            "palette": {n: "#{:02x}{:02x}{:02x}".format(*rgb) for n, rgb in PALETTE.items()},
            "scales": self.scales,
            "realign": {"argv": argv, "command": shlex.join(argv),
                        "wired": self.realign_hook is not None},
        })

    async def summary(self, request: web.Request) -> web.Response:
        summary = await asyncio.to_thread(self.run.summary)
        return web.json_response(dataclasses.asdict(summary))

    async def samples(self, request: web.Request) -> web.Response:
        query = parse_query(request.query)
        offset, limit = parse_page(request.query)
        page = await asyncio.to_thread(self.run.query, query, offset=offset, limit=limit)
        return web.json_response({"total": page.total, "offset": offset, "limit": limit,
                                  "items": [card(s, self.names) for s in page.items]})

    async def _detail(self, index: int) -> dict[str, Any]:
        def load() -> dict[str, Any]:
            sample = self.run.get(index)
            out = detail(sample, self.names)
            stored = self.run.arrays(index)
            out["images"] = sorted(stored.names)
            attribution = stored.attribution
            out["attribution_bound"] = (None if attribution is None
                                        else float(abs(attribution).max()))
            out["audit"] = [dataclasses.asdict(e) for e in self.run.audit(index, limit=50)]
            return out

        return await asyncio.to_thread(load)

    async def sample(self, request: web.Request) -> web.Response:
        return web.json_response(await self._detail(self._index(request)))

    async def labels(self, request: web.Request) -> web.Response:
        index = self._index(request)
        labels = await asyncio.to_thread(lambda: self.run.arrays(index).labels)
        return web.json_response({"height": int(labels.shape[0]), "width": int(labels.shape[1]),
                                  "labels": labels.ravel().tolist()})

    async def image(self, request: web.Request) -> web.StreamResponse:
        index, kind = self._index(request), request.match_info["kind"]
        if kind in FILE_IMAGES:
            stored = await asyncio.to_thread(self.run.arrays, index)
            path = stored.image_path(kind)
            fresh = request.query.get("g") == str(stored.generation)
            cache = "private, max-age=31536000, immutable" if fresh else "no-cache"
            return web.FileResponse(path, headers={"Cache-Control": cache,
                                                   "Content-Type": "image/png"})
        if kind not in PANEL_IMAGES:
            raise web.HTTPNotFound()
        panel = await asyncio.to_thread(self._panel, index, kind)
        return web.Response(body=panel.png, content_type="image/png",
                            headers={"Cache-Control": "no-store"})

    def _panel(self, index: int, kind: str) -> panels.Panel:
        stored = self.run.arrays(index)
        if kind == "attribution":
            if stored.attribution is None:
                raise DataError(f"sample {index} has no attribution map stored")
            return panels.attribution_panel(stored.attribution)
        mask = stored.mask if kind == "mask" else self.run.effective_mask(index)
        if mask is None:
            raise DataError(f"sample {index} has no mask (its critique did not succeed)")
        return panels.mask_panel(mask)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise ConfigError("the request body must be a JSON object") from None
        if not isinstance(body, dict):
            raise ConfigError("the request body must be a JSON object")
        return body

    async def verdict(self, request: web.Request) -> web.Response:
        index, body = self._index(request), await self._body(request)
        color, verdict, note = body.get("color"), body.get("verdict"), body.get("note")
        if not isinstance(color, str) or not isinstance(verdict, bool):
            raise ConfigError('send {"color": <a colour>, "verdict": true | false}')
        if note is not None and not isinstance(note, str):
            raise ConfigError("note must be a string")
        await asyncio.to_thread(self.run.override, index, color, verdict, note=note,
                                reviewer=self.reviewer)
        return web.json_response(await self._detail(index))

    async def note(self, request: web.Request) -> web.Response:
        index, body = self._index(request), await self._body(request)
        note = body.get("note")
        if note is not None and (not isinstance(note, str) or len(note) > 10_000):
            raise ConfigError("note must be a string of at most 10,000 characters")
        await asyncio.to_thread(self.run.set_note, index, note, reviewer=self.reviewer)
        return web.json_response(await self._detail(index))

    async def export(self, request: web.Request) -> web.Response:
        out = self.run.root / "exports" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        result = await asyncio.to_thread(self.run.export, out)
        return web.json_response(dataclasses.asdict(result))

    async def realign(self, request: web.Request) -> web.Response:
        command = shlex.join(realign_argv(self.run))
        if self.realign_hook is None:
            return web.json_response(
                {"error": f"re-aligning from the app is not wired yet; run: {command}",
                 "command": command}, status=501)
        return web.json_response({"message": await self.realign_hook(self.run),
                                  "command": command})


def make_app(
    run: CritiqueRun,
    *,
    token: str,
    reviewer: str | None = None,
    allow_remote: bool = False,
    realign: RealignHook | None = None,
) -> web.Application:
    """The review app over `run`; writes need `token` (the page sends it as the
    X-Review-Token header). `realign`, when given, runs on "re-align with these overrides"."""
    app = web.Application(middlewares=[guard(token, remote=allow_remote), errors],
                          client_max_size=1 << 20)
    app[RUN_KEY] = run
    r = Review(run, token, reviewer, realign)
    sample = r"/api/samples/{index:\d{1,12}}"
    app.router.add_get("/", r.page)
    app.router.add_get("/static/{name}", r.static)
    app.router.add_get("/api/run", r.info)
    app.router.add_get("/api/summary", r.summary)
    app.router.add_get("/api/samples", r.samples)
    app.router.add_get(sample, r.sample)
    app.router.add_get(sample + "/labels", r.labels)
    app.router.add_get(sample + r"/image/{kind:[a-z]+}", r.image)
    app.router.add_post(sample + "/verdict", r.verdict)
    app.router.add_post(sample + "/note", r.note)
    app.router.add_post("/api/export", r.export)
    app.router.add_post("/api/realign", r.realign)
    return app
