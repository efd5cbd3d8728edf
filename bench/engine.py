"""Engine benchmark against the simulated LVLM served on loopback (issue 3, "done when").

    python bench/engine.py --jobs 5000 --rpm 6000 --latency-ms 200 --json
    python bench/engine.py --jobs 5000 --rpm 6000 --latency-ms 200 --inject-429 0.05 \
        --inject-500 0.02 --json
    python bench/engine.py --jobs 5000 --rpm 6000 --latency-ms 200 --warm --json
    python bench/engine.py --jobs 5000 --rpm 6000 --latency-ms 200 --client both --json

Starts `python -m lvlmva.cli serve-sim` (a SIMULATED LVLM, not a model) on 127.0.0.1 with a
mask-oracle folder, renders synthetic jobs (random cluster maps drawn with the fixed colour
palette, PNG via PIL) once into a spool file before the clock starts, streams them lazily from
it (one job in memory at a time, as the engine pulls them), runs every job as Critic + Judge
(or one fused call) through `--client` and prints one JSON line. Definitions of the figures:

- `provider_calls`: HTTP requests the client sent (retries and re-asks included).
- `throughput_fraction_of_cap`: provider_calls per minute of wall time / `--rpm`.
- `ideal_s`: the least wall time the rate cap allows: provider_calls * 60 / rpm, plus one
  simulated latency for the last answer (0 when nothing was sent).
- `overhead_ms_per_job`: (wall_s - ideal_s) * 1000 / jobs: time lost beyond the cap.
- `client_cpu_ms_per_job`: user + system CPU of the client process (getrusage) per job; the
  server is a separate process and not counted.
- `peak_rss_mb`: the client process's peak resident memory (ru_maxrss).
- `lost`: jobs pulled from the job stream that never came back as a result.
- `duplicate_calls`: successful answers the server gave more than once for identical request
  content (billed twice), from its `GET /sim/stats`.
- `peak_rpm_observed`: rate-cap compliance measured at the server: the most requests that
  arrived within any sliding 60-s window (`peak_requests_60s` of `GET /sim/stats`); `within_cap`
  says whether it is at most `--rpm`. `peak_rpm_1s_x60` (the busiest 1-s window x 60) shows
  burstiness only: the cap is per minute, and a client may burst within it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import pickle
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lvlmva.engine.types import CritiqueJob, ImagePart

CLUSTERS = 7
GRID = 16  # cluster-map resolution before upscaling


# -- synthetic jobs -----------------------------------------------------------------------------


def _png(array: np.ndarray, size: int, palette: bytes | None = None) -> bytes:
    if palette is None:
        image = Image.fromarray(array)
    else:
        image = Image.fromarray(array, mode="P")
        image.putpalette(palette)
    image = image.resize((size, size), Image.NEAREST)
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


@dataclass(frozen=True)
class JobFactory:
    """Job i is a deterministic function of (seed, i): a random grey original, a random
    Voronoi cluster map with CLUSTERS clusters, and a 4x4 corner square as the spurious region."""

    seed: int
    size: int
    class_variables: tuple[dict[str, str], ...]
    palette: dict[str, tuple[int, int, int]]

    def _draw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, i])
        original = rng.integers(0, 256, (GRID, GRID), dtype=np.uint8)
        centers = rng.uniform(0, GRID, (CLUSTERS, 2))
        rows, cols = np.mgrid[0:GRID, 0:GRID]
        d = (rows[..., None] - centers[:, 0]) ** 2 + (cols[..., None] - centers[:, 1]) ** 2
        labels = d.argmin(axis=2).astype(np.uint8)
        return original, labels

    @staticmethod
    def mask(i: int) -> np.ndarray:
        mask = np.zeros((GRID, GRID), dtype=bool)
        corner = i % 4
        r, c = (0 if corner < 2 else GRID - 4), (0 if corner % 2 == 0 else GRID - 4)
        mask[r : r + 4, c : c + 4] = True
        return mask

    def job(self, i: int) -> CritiqueJob:
        original, labels = self._draw(i)
        colors = tuple(self.palette)[:CLUSTERS]
        values = np.array([self.palette[c] for c in colors], dtype=np.uint8)
        flat = values.tobytes()
        overlay = (0.5 * values[labels] + 0.5 * original[..., None]).astype(np.uint8)
        present = tuple(c for k, c in enumerate(colors) if (labels == k).any())
        size = self.size
        return CritiqueJob(
            job_id=f"bench/{i}",
            images=(
                ImagePart("original", _png(original, size), width=size, height=size),
                ImagePart("clusters", _png(labels, size, flat), width=size, height=size),
                ImagePart("overlay", _png(overlay, size), width=size, height=size),
            ),
            colors=present,
            variables=self.class_variables[i % len(self.class_variables)],
        )


def spool_jobs(factory: JobFactory, n: int, spool: Path, oracle: Path) -> None:
    """Render every job once into a spool file (pickled, one after another) and write the
    simulator's oracle. Runs before the clock starts: the figures measure the client, not PIL."""
    from lvlmva.simulation import write_oracle

    with spool.open("wb") as handle:

        def masks() -> Iterator[tuple[bytes, np.ndarray]]:
            for i in range(n):
                job = factory.job(i)
                pickle.dump(job, handle, protocol=pickle.HIGHEST_PROTOCOL)
                yield job.images[0].data, factory.mask(i)

        write_oracle(oracle, masks())


class CountingJobs:
    """Streams the spooled jobs lazily (one in memory at a time) and counts those pulled."""

    def __init__(self, spool: Path, n: int) -> None:
        self.spool, self.n, self.pulled = spool, n, 0

    def __iter__(self) -> Iterator[CritiqueJob]:
        with self.spool.open("rb") as handle:
            for _ in range(self.n):
                job = pickle.load(handle)
                self.pulled += 1
                yield job


# -- the simulated server -----------------------------------------------------------------------


class SimProcess:
    def __init__(self, args: argparse.Namespace, oracle_dir: Path) -> None:
        command = [
            sys.executable, "-m", "lvlmva.cli", "serve-sim", "--port", "0",
            "--latency-ms", str(args.latency_ms),
            "--inject-429", str(args.inject_429), "--inject-500", str(args.inject_500),
            "--retry-after-s", str(args.retry_after_s),
            "--oracle-dir", str(oracle_dir), "--seed", str(args.seed),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        match = re.search(r"listening on (http://\S+)", line)
        if not match:
            self.proc.kill()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise SystemExit(f"serve-sim did not start: {line}{err}")
        self.base_url = match.group(1).rstrip("/")
        self.root = self.base_url.removesuffix("/v1")

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.root}/sim/stats?per_hash=0", timeout=30) as r:
            return json.load(r)

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.root}/sim/reset", method="POST", data=b"")
        urllib.request.urlopen(request, timeout=30).read()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# -- clients ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    ok: int = 0
    failed: int = 0
    not_run: int = 0
    yielded: int = 0
    provider_calls: int = 0
    retries: int = 0
    reasks: int = 0
    cache_hits: int = 0
    errors: Counter | None = None


def _prompts():
    from lvlmva.prompts import load_prompt_set

    return load_prompt_set("decoy-digits")


async def run_ours(args: argparse.Namespace, base_url: str, jobs: CountingJobs, cache_dir: Path):
    from lvlmva.cache import VerdictCache
    from lvlmva.engine.cost import ModelPrice, PriceTable
    from lvlmva.engine.engine import Engine, EngineConfig
    from lvlmva.engine.providers.openai_compat import OpenAICompatibleProvider
    from lvlmva.engine.retry import RetryPolicy

    provider = OpenAICompatibleProvider(
        base_url=base_url, api_key="sim", name="serve-sim", max_connections=args.max_in_flight
    )
    config = EngineConfig(
        critic_model="sim-critic",
        judge_model="sim-judge",
        prompts=_prompts(),
        fused=args.fused,
        max_in_flight=args.max_in_flight,
        rpm=args.rpm,
        retry=RetryPolicy(max_attempts=args.max_attempts),
        prices=PriceTable({"sim-critic": ModelPrice(0, 0), "sim-judge": ModelPrice(0, 0)}),
        progress=False,
    )
    engine = Engine(provider, None, config, cache=VerdictCache(cache_dir))
    out = Outcome(errors=Counter())
    try:
        async for result in engine.run(iter(jobs)):
            out.yielded += 1
            out.ok += result.ok
            if result.status.value == "failed":
                out.failed += 1
                out.errors[(result.error or "")[:80]] += 1
            elif result.status.value == "not_run":
                out.not_run += 1
    finally:
        await engine.aclose()
    s = engine.stats
    out.provider_calls, out.retries, out.reasks = s.provider_calls, s.retries, s.reasks
    out.cache_hits = s.cache_hits
    return out


async def run_litellm(args: argparse.Namespace, base_url: str, jobs: CountingJobs):
    """The same Critic + Judge calls through litellm's Router: its rpm limit (usage-based
    routing, the strategy that enforces rpm) and its retries; no cache."""
    try:
        import litellm
        from litellm import Router
    except ImportError:
        raise SystemExit(
            "litellm is not installed: pip install 'lvlm-va[litellm]' to compare with its Router"
        ) from None
    from lvlmva.engine import requests
    from lvlmva.engine.providers.wire import build_chat_kwargs
    from lvlmva.engine.types import ChatRequest
    from lvlmva.engine.validation import VerdictValidationError, parse_verdicts

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    params = {"api_base": base_url, "api_key": "sim", "rpm": int(args.rpm)}
    router = Router(
        model_list=[
            {"model_name": m, "litellm_params": {"model": f"openai/{m}", **params}}
            for m in ("sim-critic",)
        ],
        routing_strategy="usage-based-routing-v2",
        num_retries=args.max_attempts - 1,
    )
    prompts = _prompts()
    sampling = requests.Sampling(max_tokens=1024, seed=0)
    out = Outcome(errors=Counter())
    calls = 0

    async def ask(request: ChatRequest) -> str:
        nonlocal calls
        kwargs = build_chat_kwargs(request, structured_output=True)
        kwargs["model"] = "sim-critic"
        calls += 1
        response = await router.acompletion(**kwargs)
        return response.choices[0].message.content or ""

    async def one(job: CritiqueJob) -> None:
        # The same request bodies as the engine's (lvlmva.engine.requests), sent by the Router.
        model = "sim-critic"
        try:
            if args.fused:
                first = requests.fused_request(
                    prompts, job, model=model, sampling=sampling, structured=True
                )
            else:
                critic = requests.critic_request(prompts, job, model=model, sampling=sampling)
                critique = await ask(critic)
                first = requests.judge_request(
                    prompts, job, critique, model=model, sampling=sampling, structured=True
                )
            current = first
            for attempt in range(3):
                text = await ask(current)
                try:
                    parse_verdicts(text, job.colors)
                    out.ok += 1
                    return
                except VerdictValidationError as exc:
                    if attempt == 2:
                        raise
                    out.reasks += 1
                    current = requests.reask_request(first, text, exc, job.colors)
        except Exception as exc:
            out.failed += 1
            out.errors[f"{type(exc).__name__}: {str(exc)[:60]}"] += 1
        finally:
            out.yielded += 1

    slots = asyncio.Semaphore(args.max_in_flight)
    tasks: set[asyncio.Task] = set()
    for job in jobs:
        await slots.acquire()
        task = asyncio.create_task(one(job))
        tasks.add(task)
        task.add_done_callback(lambda t: (tasks.discard(t), slots.release()))
    await asyncio.gather(*tasks)
    out.provider_calls = calls
    return out


# -- main ---------------------------------------------------------------------------------------


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(args, sim: SimProcess, spool: Path, cache_dir: Path) -> dict:
    jobs = CountingJobs(spool, args.jobs)
    sim.reset()
    cpu0, t0 = _cpu(), time.perf_counter()
    if args.client == "ours":
        out = asyncio.run(run_ours(args, sim.base_url, jobs, cache_dir))
    else:
        out = asyncio.run(run_litellm(args, sim.base_url, jobs))
    wall = time.perf_counter() - t0
    cpu = _cpu() - cpu0
    server = sim.stats()
    calls = out.provider_calls
    ideal = calls * 60.0 / args.rpm + args.latency_ms / 1000.0 if calls else 0.0
    return {
        "client": args.client,
        "jobs": args.jobs,
        "ok": out.ok,
        "failed": out.failed,
        "not_run": out.not_run,
        "lost": jobs.pulled - out.yielded,
        "provider_calls": calls,
        "server_requests": server["requests"],
        "server_by_status": server["by_status"],
        "duplicate_calls": server["duplicate_answers"],
        "retries": out.retries,
        "reasks": out.reasks,
        "cache_hits": out.cache_hits,
        "wall_s": round(wall, 3),
        "ideal_s": round(ideal, 3),
        "requests_per_min": round(calls * 60.0 / wall, 1),
        "throughput_fraction_of_cap": round(calls * 60.0 / wall / args.rpm, 4),
        "overhead_ms_per_job": round((wall - ideal) * 1000.0 / args.jobs, 4),
        "client_cpu_ms_per_job": round(cpu * 1000.0 / args.jobs, 4),
        "peak_rpm_observed": server["peak_requests_60s"],
        "within_cap": server["peak_requests_60s"] <= args.rpm,
        "peak_rpm_1s_x60": server["peak_requests_1s"] * 60,
        "server_span_s": round(server["arrival_span_s"], 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "errors": dict((out.errors or Counter()).most_common(5)),
    }


def _palette() -> dict[str, tuple[int, int, int]]:
    """The renderer's fixed palette, read in a child process: importing the vision code here
    would load torch and inflate the client's peak RSS."""
    code = "import json; from lvlmva.vision.render import PALETTE; print(json.dumps(PALETTE))"
    text = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return {name: tuple(rgb) for name, rgb in json.loads(text).items()}


def _preload(client: str) -> None:
    """Import what the client needs before the clock starts."""
    import lvlmva.cache
    import lvlmva.engine.engine
    import lvlmva.engine.providers.openai_compat  # noqa: F401

    if client == "litellm-router":
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: no fetch
        try:
            import litellm  # noqa: F401
        except ImportError:
            raise SystemExit(
                "litellm is not installed: pip install 'lvlm-va[litellm]' to compare with "
                "its Router"
            ) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--rpm", type=float, default=6000)
    parser.add_argument("--latency-ms", type=float, default=200)
    parser.add_argument("--inject-429", type=float, default=0.0)
    parser.add_argument("--inject-500", type=float, default=0.0)
    parser.add_argument("--retry-after-s", type=float, default=1.0, help="the sim's Retry-After")
    parser.add_argument("--warm", action="store_true", help="cold run, then a warm rerun")
    parser.add_argument(
        "--client",
        choices=("ours", "litellm-router", "both"),
        default="ours",
        help="both: ours, then litellm's Router, side by side against the same server and jobs",
    )
    parser.add_argument("--fused", action="store_true")
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--max-attempts", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64, help="side of each image in px")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args()
    clients = ("ours", "litellm-router") if args.client == "both" else (args.client,)
    if args.warm and args.client != "ours":
        raise SystemExit("--warm needs --client ours (the litellm Router run has no cache)")

    from lvlmva.prompts import load_spec

    spec = load_spec("decoy-digits")
    factory = JobFactory(
        args.seed,
        args.image_size,
        tuple(spec.variables(c) for c in spec.class_names),
        _palette(),
    )
    for client in clients:
        _preload(client)
    with tempfile.TemporaryDirectory(prefix="lvlmva-bench-") as work:
        oracle, spool = Path(work) / "oracle", Path(work) / "jobs.pickle"
        t = time.perf_counter()
        spool_jobs(factory, args.jobs, spool, oracle)
        setup_s = time.perf_counter() - t
        sim = SimProcess(args, oracle)
        try:
            cache_dir = Path(work) / "cache"
            rows = {}
            for client in clients:
                args.client = client
                rows[client] = measure(args, sim, spool, cache_dir)
            row = rows[clients[0]]
            if len(rows) == 2:
                ours, theirs = rows["ours"], rows["litellm-router"]
                faster = ours["throughput_fraction_of_cap"] >= theirs["throughput_fraction_of_cap"]
                row = {
                    "client": "both",
                    "ours": ours,
                    "litellm_router": theirs,
                    "throughput_ratio_ours_over_litellm": round(
                        ours["throughput_fraction_of_cap"]
                        / max(theirs["throughput_fraction_of_cap"], 1e-9),
                        3,
                    ),
                    "cpu_ratio_litellm_over_ours": round(
                        theirs["client_cpu_ms_per_job"] / max(ours["client_cpu_ms_per_job"], 1e-9),
                        2,
                    ),
                    "wall_ratio_litellm_over_ours": round(
                        theirs["wall_s"] / max(ours["wall_s"], 1e-9), 3
                    ),
                    "overhead_ms_per_job_ours": ours["overhead_ms_per_job"],
                    "overhead_ms_per_job_litellm": theirs["overhead_ms_per_job"],
                    "peak_rpm_observed_ours": ours["peak_rpm_observed"],
                    "peak_rpm_observed_litellm": theirs["peak_rpm_observed"],
                    "ours_not_behind": ours["within_cap"] and faster,
                }
            if args.warm:
                cold = row
                row = measure(args, sim, spool, cache_dir)
                row["cold_wall_s"] = cold["wall_s"]
                row["cold_provider_calls"] = cold["provider_calls"]
                row["speedup_vs_cold"] = round(cold["wall_s"] / max(row["wall_s"], 1e-9), 1)
                row["overhead_ms_per_job"] = round(row["wall_s"] * 1000.0 / args.jobs, 4)
        finally:
            sim.close()
    row.update(
        mode="warm" if args.warm else "cold",
        fused=args.fused,
        rpm=args.rpm,
        latency_ms=args.latency_ms,
        inject_429=args.inject_429,
        inject_500=args.inject_500,
        max_in_flight=args.max_in_flight,
        image_size=args.image_size,
        setup_s=round(setup_s, 2),
        machine=f"{platform.machine()} {os.cpu_count()} CPUs, python {platform.python_version()}",
    )
    if not args.json:
        for key, value in row.items():
            print(f"{key:>28}: {value}", file=sys.stderr)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
