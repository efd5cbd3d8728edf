"""The synchronous path's "done when" runs, end to end through the CLI, against the strict OpenAI
stand-in (`lvlmva serve-sim`: the SIMULATED LVLM behind OpenAI's rules, not a model).

    python bench/real_endpoint.py --json

Starts `lvlmva serve-sim --fake-clock` on loopback, then runs `lvlmva align --dataset
decoy-digits --critic openai --base-url URL --critic-model gpt-5-mini --judge-model gpt-5-nano`
(`--train-epochs 1 --epochs 1`) in three scenarios, each with a fresh cache and a reset stand-in:

- `revoked_key`: the key is refused (401) after 10 answers; 200 samples. Reports the exit code,
  wall time, the last stderr line and the requests the stand-in received in all.
- `truncated`: 30% of answers are cut at the token limit; 100 samples. Reports cache entries
  holding a cut answer (read back from the cache), masks; then the stand-in is healthy again and
  the same command reruns: its masks and the requests it needed.
- `budget`: a full 100-sample run's cost C, then the same run on a fresh cache with
  `--budget-usd C/2`: masks and cost over the cap.
- `oversize`: every answer padded to 50 MiB, 16 jobs at once through our engine in this
  process: the error, and this process's peak RSS before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

MODELS = ["--critic-model", "gpt-5-mini", "--judge-model", "gpt-5-nano"]


class StandIn:
    def __init__(self) -> None:
        command = [sys.executable, "-m", "lvlmva.cli", "serve-sim", "--port", "0", "--fake-clock"]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        match = re.search(r"listening on (http://\S+)", line)
        if not match:
            self.proc.kill()
            raise SystemExit(f"serve-sim did not start: {line}")
        self.base_url = match.group(1).rstrip("/")
        self.root = self.base_url.removesuffix("/v1")

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(
            self.root + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def ledger(self) -> dict:
        with urllib.request.urlopen(f"{self.root}/stand-in/ledger?calls=0", timeout=30) as r:
            return json.load(r)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def align(base_url: str, out: Path, cache: Path, n: int, *extra: str) -> dict:
    command = [
        sys.executable, "-m", "lvlmva.cli", "align", "--dataset", "decoy-digits",
        "--critic", "openai", "--base-url", base_url, *MODELS, "--n-align", str(n),
        "--train-epochs", "1", "--epochs", "1", "--quiet", "--cache-dir", str(cache),
        "--out", str(out), *extra,
    ]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - started
    metrics_path = out / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    return {
        "exit": proc.returncode,
        "wall_s": round(wall, 1),
        "stderr_lines": len(errors),
        "last_stderr": errors[-1] if errors else "",
        "masks": metrics.get("n_masks"),
        "cost_usd": metrics.get("cost_usd"),
        "provider_calls": metrics.get("provider_calls"),
    }


def cut_entries(cache: Path) -> tuple[int, int]:
    """(entries, entries holding an unusable answer) of a cache directory."""
    from lvlmva.cache import VerdictCache

    with VerdictCache(cache) as c:
        entries = [c._cache.get(k) for k in c._cache.iterkeys()]
    bad = sum(1 for e in entries if e.get("finish_reason") not in (None, "stop"))
    return len(entries), bad


async def oversize(base_url: str) -> dict:
    """16 concurrent answers of 50 MiB against the 4 MiB cap: refused, never held."""
    import io

    import numpy as np
    from PIL import Image

    from lvlmva.engine.engine import Engine, EngineConfig
    from lvlmva.engine.providers.openai_compat import OpenAICompatibleProvider
    from lvlmva.engine.types import CritiqueJob, ImagePart
    from lvlmva.prompts import load_prompt_set, load_spec

    def png(seed: int) -> bytes:
        out = io.BytesIO()
        pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(out, format="PNG")
        return out.getvalue()

    spec = load_spec("decoy-digits")
    names = ("original", "clusters", "overlay")
    jobs = [
        CritiqueJob(f"j{i}", tuple(ImagePart(n, png(3 * i + k)) for k, n in enumerate(names)),
                    ("red",), spec.variables(spec.class_names[0]))
        for i in range(16)
    ]  # fmt: skip
    config = EngineConfig(critic_model="gpt-4o-mini", prompts=load_prompt_set("decoy-digits"),
                          max_in_flight=16, progress=False)  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    engine = Engine(OpenAICompatibleProvider(base_url=base_url), None, config)
    try:
        results = [r async for r in engine.run(jobs)]
    finally:
        await engine.aclose()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "jobs": len(results), "failed": sum(not r.ok for r in results),
        "error": results[0].error, "peak_rss_mb_before": round(before, 1),
        "peak_rss_mb_after": round(after, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    standin = StandIn()
    rows: dict[str, dict] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="lvlmva-endpoint-") as work:
            root = Path(work)
            standin.post("/stand-in/reset", {})
            standin.post("/stand-in/faults", {"revoke_key_after": 10})
            run = align(standin.base_url, root / "a", root / "ca", 200)
            rows["revoked_key"] = {**run, "requests": standin.ledger()["sync_calls"]}

            standin.post("/stand-in/reset", {})
            standin.post("/stand-in/faults", {"truncate_share": 0.3})
            first = align(standin.base_url, root / "b", root / "cb", 100)
            entries, cut = cut_entries(root / "cb")
            before = standin.ledger()["sync_calls"]
            standin.post("/stand-in/faults", {"truncate_share": 0.0})
            rerun = align(standin.base_url, root / "b2", root / "cb", 100)
            rows["truncated"] = {
                "first": first, "cache_entries": entries, "cut_entries_cached": cut,
                "rerun": rerun, "rerun_requests": standin.ledger()["sync_calls"] - before,
            }  # fmt: skip

            standin.post("/stand-in/reset", {})
            full = align(standin.base_url, root / "c", root / "cc", 100)
            cap = round(full["cost_usd"] / 2, 6)
            half = align(standin.base_url, root / "d", root / "cd", 100, "--budget-usd", str(cap))
            rows["budget"] = {
                "full": full, "cap_usd": cap, "half": half,
                "cost_over_cap": round(half["cost_usd"] / cap, 4) if half["cost_usd"] else None,
            }  # fmt: skip
            standin.post("/stand-in/reset", {})
            standin.post("/stand-in/faults", {"oversize_share": 1.0, "oversize_bytes": 50 << 20})
            rows["oversize"] = asyncio.run(oversize(standin.base_url))
    finally:
        standin.close()
    if args.json:
        print(json.dumps(rows))
    else:
        for name, row in rows.items():
            print(name, json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
