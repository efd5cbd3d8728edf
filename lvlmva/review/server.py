"""Serving the review app: bind (loopback unless allowed otherwise), print the URL, run."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from lvlmva.errors import ConfigError
from lvlmva.review.app import RealignHook, make_app
from lvlmva.review.security import check_bind, new_token
from lvlmva.runs import CritiqueRun


async def serve(
    run: CritiqueRun,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    allow_remote: bool = False,
    reviewer: str | None = None,
    token: str | None = None,
    realign: RealignHook | None = None,
    ready: Callable[[str], None] = print,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the review app over `run` until `stop` is set (or forever); `ready` gets the URL.
    `port=0` picks a free port."""
    check_bind(host, allow_remote)
    app = make_app(run, token=token or new_token(), reviewer=reviewer,
                   allow_remote=allow_remote, realign=realign)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port "
                "(0 takes a free one)"
            ) from None
        bound = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        ready(f"http://{shown}:{bound}/")
        await (stop or asyncio.Event()).wait()
    finally:
        await runner.cleanup()
