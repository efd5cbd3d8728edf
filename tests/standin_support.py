"""Helpers for the OpenAI stand-in tests: serve a stand-in on loopback with a fake clock and an
official openai SDK client pointed at it."""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import openai
from PIL import Image

from lvlmva.simulation.answerers import Answerer, FixedAnswerer
from lvlmva.simulation.clock import FakeClock
from lvlmva.simulation.openai_faults import Faults
from lvlmva.simulation.openai_server import StandInServer, start_openai_standin
from lvlmva.simulation.openai_standin import OpenAIStandIn, StandInConfig

KEY = "sk-test-0123456789abcdef"


@dataclass
class Served:
    standin: OpenAIStandIn
    server: StandInServer
    client: openai.AsyncOpenAI
    http: aiohttp.ClientSession

    @property
    def clock(self) -> FakeClock:
        assert isinstance(self.standin.clock, FakeClock)
        return self.standin.clock

    async def raw(self, method: str, path: str, **kwargs) -> tuple[int, dict, object]:
        """A raw request (Authorization added unless given): status, headers, JSON body."""
        headers = {"Authorization": f"Bearer {KEY}", **kwargs.pop("headers", {})}
        async with self.http.request(
            method, self.server.url + path, headers=headers, **kwargs
        ) as response:
            body = await response.json(content_type=None)
            return response.status, dict(response.headers), body


@contextlib.asynccontextmanager
async def serve(
    answerer: Answerer | None = None,
    config: StandInConfig | None = None,
    faults: Faults | None = None,
) -> AsyncIterator[Served]:
    standin = OpenAIStandIn(
        answerer or FixedAnswerer("The answer is 42."), config, clock=FakeClock(), faults=faults
    )
    server = await start_openai_standin(standin)
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
    http = aiohttp.ClientSession()
    try:
        yield Served(standin, server, client, http)
    finally:
        await http.close()
        await client.close()
        await server.close()


def user(text: str = "Say hi.") -> list[dict]:
    return [{"role": "user", "content": text}]


def png(width: int, height: int, colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def image_part(data: bytes, detail: str | None = None) -> dict:
    spec = {"url": "data:image/png;base64," + base64.b64encode(data).decode()}
    if detail is not None:
        spec["detail"] = detail
    return {"type": "image_url", "image_url": spec}
