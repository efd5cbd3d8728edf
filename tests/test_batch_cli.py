"""`lvlmva align --batch` end to end: the CLI in a subprocess against the strict OpenAI
stand-in (the simulated LVLM behind it, on a fake clock this test moves), killed with SIGKILL
at each step of the batch lifecycle and run again, then checked against the stand-in's ledger;
and one uninterrupted run checked against the done-when figures (masks, synchronous calls,
answers, cost at the batch price)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cli_child
import pytest
from aiohttp import web

from lvlmva.simulation import DictOracle, SimulatedLVLM
from lvlmva.simulation.answerers import SimulatedAnswerer
from lvlmva.simulation.batch_api import BatchTiming
from lvlmva.simulation.clock import FakeClock
from lvlmva.simulation.openai_server import build_openai_app
from lvlmva.simulation.openai_standin import OpenAIStandIn, StandInConfig
from lvlmva.simulation.server import listen
from lvlmva.vision.render import PALETTE

pytestmark = pytest.mark.slow
KEY = "sk-test-batch-cli"
ROOT = Path(__file__).resolve().parents[1]
FORKS = multiprocessing.get_context("forkserver")
FORKS.set_forkserver_preload(cli_child.PRELOAD)


@dataclass
class Kill:
    """Kill the CLI when a request matches: `before` its handler runs, or after it (the
    server acted, the client never hears)."""

    method: str
    path: str  # a regular expression on the path
    after: bool = False
    when: Callable[[OpenAIStandIn, web.Request], bool] = lambda standin, request: True
    signal: int = signal.SIGKILL  # SIGINT: Ctrl-C, which detaches

    @property
    def exit_code(self) -> int:
        return 130 if self.signal == signal.SIGINT else -signal.SIGKILL


@dataclass
class Harness:
    standin: OpenAIStandIn
    base_url: str = ""
    kill: Kill | None = None
    proc: multiprocessing.process.BaseProcess | None = None
    killed: list[str] = field(default_factory=list)
    seconds_per_poll: float = 1.0

    def _matches(self, request: web.Request, after: bool) -> bool:
        k = self.kill
        return (
            k is not None and k.after is after and request.method == k.method
            and re.fullmatch(k.path, request.path) is not None and k.when(self.standin, request)
        )  # fmt: skip

    def _kill(self, request: web.Request) -> None:
        assert self.proc is not None and self.proc.pid is not None and self.kill is not None
        os.kill(self.proc.pid, self.kill.signal)
        self.killed.append(f"{request.method} {request.path}")
        self.kill = None

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        if request.method == "GET" and re.fullmatch("/v1/batches/[^/]+", request.path):
            self.standin.advance(self.seconds_per_poll)  # time passes as the client waits
        if self._matches(request, after=False):
            self._kill(request)
            await asyncio.sleep(0.5)  # the client is gone; nothing reaches the handler
            return web.Response(status=503)
        response = await handler(request)
        if self._matches(request, after=True):
            self._kill(request)
        return response


@contextlib.asynccontextmanager
async def served(timing: BatchTiming, *, seconds_per_poll: float):
    """The stand-in on a fake clock that moves `seconds_per_poll` at each poll of a batch, so
    a batch advances only while a client waits on it, whatever the machine's speed."""
    sim = SimulatedLVLM(oracle=DictOracle(), palette=PALETTE)  # no oracle: every cluster kept
    standin = OpenAIStandIn(
        SimulatedAnswerer(sim), StandInConfig(api_keys={KEY}, batch=timing), clock=FakeClock()
    )
    harness = Harness(standin, seconds_per_poll=seconds_per_poll)
    app = build_openai_app(standin)
    app.middlewares.append(harness.middleware)
    runner, port = await listen(app, "127.0.0.1", 0)
    harness.base_url = f"http://127.0.0.1:{port}/v1"
    try:
        yield harness
    finally:
        await runner.cleanup()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained MLP checkpoint for decoy-digits (the batch mechanics need no accuracy)."""
    import torch

    from lvlmva.vision.checkpoint import save_checkpoint
    from lvlmva.vision.datasets import load_dataset
    from lvlmva.vision.models import build_model

    splits = load_dataset("decoy-digits", seed=0)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "original.pt"
    save_checkpoint(path, build_model("mlp", splits.info), "mlp", splits.info)
    return path


VAL_SAMPLES = 2  # validation images align critiques for its model check (decoy-digits: no groups)


def align_command(harness: Harness, tmp: Path, model: Path, n: int, **models: str) -> list[str]:
    return [
        "align", "--model", str(model),
        "--critic", "openai", "--base-url", harness.base_url,
        "--critic-model", models.get("critic", "gpt-4o"),
        "--judge-model", models.get("judge", "gpt-4o-mini"),
        "--batch", "--batch-poll-s", "0.05", "--n-align", str(n), "--epochs", "1",
        "--clusters", "3", "--device", "cpu", "--val-samples", str(VAL_SAMPLES),
        "--cache-dir", str(tmp / "cache"), "--out", str(tmp / "out"),
    ]  # fmt: skip


async def run_cli(harness: Harness, argv: list[str], log: Path, timeout: float = 120) -> int:
    """Run `lvlmva argv` in a child process until it exits (or is killed); its exit code."""
    env = {"OPENAI_API_KEY": KEY, "PYTHONPATH": str(ROOT)}
    harness.proc = proc = FORKS.Process(target=cli_child.main, args=(argv, str(log), env))
    proc.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while proc.exitcode is None:
        if loop.time() > deadline:
            proc.kill()
            proc.join()
            raise AssertionError(f"the CLI did not finish: {log.read_text()[-3000:]}")
        await asyncio.sleep(0.05)
    proc.join()
    return proc.exitcode


def _status(status: str) -> Callable[[OpenAIStandIn, web.Request], bool]:
    def check(standin: OpenAIStandIn, request: web.Request) -> bool:
        batch = standin.batches._batches.get(request.match_info.get("batch_id", ""))
        return batch is not None and batch.status == status

    return check


def _judge_batch(standin: OpenAIStandIn, request: web.Request) -> bool:
    return len(standin.batches._batches) == 2 and _status("in_progress")(standin, request)


KILLS = (  # one per lifecycle step, in the order a run meets them (the last one is Ctrl-C)
    ("written: killed while uploading", Kill("POST", "/v1/files")),
    ("creating: the batch exists, its id never recorded", Kill("POST", "/v1/batches", True)),
    ("polled: killed while the Critic batch runs",
     Kill("GET", "/v1/batches/[^/]+", True, _status("in_progress"))),
    ("completed: killed while downloading its output",
     Kill("GET", "/v1/files/[^/]+/content")),
    ("ingested, the Judge batch running: Ctrl-C",
     Kill("GET", "/v1/batches/[^/]+", True, _judge_batch, signal.SIGINT)),
)  # fmt: skip


async def test_kill_9_at_each_step_and_ctrl_c_then_no_line_goes_out_twice(tmp_path, checkpoint):
    n = 4
    timing = BatchTiming(validation_s=10, lines_per_s=0.5, finalizing_s=10)
    async with served(timing, seconds_per_poll=2.0) as harness:
        command = align_command(harness, tmp_path, checkpoint, n)
        for k, (step, kill) in enumerate(KILLS):
            harness.kill = kill
            rc = await run_cli(harness, command, tmp_path / f"run{k}.log")
            log = (tmp_path / f"run{k}.log").read_text()
            assert rc == kill.exit_code, (step, log[-3000:])
        assert "lvlmva align: detached; submitted batches run on at the API" in log
        rc = await run_cli(harness, command, tmp_path / "final.log")
        log = (tmp_path / "final.log").read_text()
        assert rc == 0, log[-3000:]
        ledger = harness.standin.ledger
        assert len(harness.killed) == len(KILLS)
        assert ledger.batch_lines_submitted_more_than_once() == {}
        assert ledger.answered_more_than_once() == {}
        assert len(ledger.batch_lines) == 2 * (n + VAL_SAMPLES)
        assert len(harness.standin.batches._batches) == 2
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n_masks"] == n and metrics["failed_jobs"] == 0


PRICES = {  # USD per 1M tokens, OpenAI's list prices: input, cached input, output
    "gpt-4o": (2.50, 1.25, 10.00),
    "gpt-4o-mini": (0.15, 0.075, 0.60),
    "gpt-5-mini": (0.25, 0.025, 2.00),
    "gpt-5-nano": (0.05, 0.005, 0.40),
}
# The done-when's models: reasoning models, sent with max_completion_tokens and no temperature.
DONE_WHEN_MODELS = {"critic": "gpt-5-mini", "judge": "gpt-5-nano"}


async def test_a_100_job_batch_run_meets_the_done_when_figures(tmp_path, checkpoint):
    n = 100
    timing = BatchTiming(validation_s=30, lines_per_s=20, finalizing_s=30)
    async with served(timing, seconds_per_poll=10.0) as harness:
        command = align_command(harness, tmp_path, checkpoint, n, **DONE_WHEN_MODELS)
        rc = await run_cli(harness, command, tmp_path / "run.log", timeout=240)
        assert rc == 0, (tmp_path / "run.log").read_text()[-3000:]
        ledger = harness.standin.ledger
        assert ledger.sync_calls <= 10
        assert ledger.answered_more_than_once() == {}
        assert ledger.batch_lines_submitted_more_than_once() == {}
        tokens = ledger.by_model("batch")
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n_masks"] == n
    batch_price = sum(
        ((t.prompt_tokens - t.cached_tokens) * PRICES[m][0] + t.cached_tokens * PRICES[m][1]
         + t.completion_tokens * PRICES[m][2]) / 2e6
        for m, t in tokens.items()
    )  # fmt: skip
    assert metrics["cost_usd"] == pytest.approx(batch_price, rel=0.15)
