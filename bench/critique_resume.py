"""A critique run killed with SIGKILL midway and resumed, against the simulated LVLM served over
HTTP by the strict OpenAI stand-in (`lvlmva serve-sim`), whose ledger counts the answers per
request body: how many requests were answered twice; then `align --critique RUN` against
`align` with the same verdicts (calls, metrics, weights); and the critique process's peak RSS.

    python bench/critique_resume.py --n 1000 --out /tmp/resume

Everything runs as the user would run it: `lvlmva` subprocesses, loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def lvlmva(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lvlmva.cli", *args], **kwargs)


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def stored(run: Path) -> int:
    from lvlmva.runs import CritiqueRun

    if not (run / "manifest.json").exists():
        return 0
    with CritiqueRun.open(run) as r:
        return r.count()


def ledger(base: str) -> dict:
    with urllib.request.urlopen(f"{base}/stand-in/ledger?calls=0", timeout=30) as answer:
        return json.load(answer)


def start_server(out: Path, port: int, latency_ms: float) -> tuple[subprocess.Popen, str]:
    log = open(out / "serve-sim.log", "w")  # noqa: SIM115 (the server outlives this function)
    server = lvlmva("serve-sim", "--dataset", "decoy-digits", "--port", str(port),
                    "--latency-ms", str(latency_ms), stdout=log, stderr=subprocess.STDOUT)
    for _ in range(600):
        if "listening" in (out / "serve-sim.log").read_text():
            return server, f"http://127.0.0.1:{port}"
        time.sleep(0.5)
    raise RuntimeError("serve-sim did not start")


def critic_args(base: str, cache: Path) -> list[str]:
    return ["--critic", "openai", "--base-url", f"{base}/v1", "--critic-model", "simulated-critic",
            "--judge-model", "simulated-judge", "--cache-dir", str(cache), "--quiet"]


def kill_midway(argv: list[str], run: Path, at: int, log: Path) -> tuple[int, float | None]:
    """Start the critique, SIGKILL it once `at` samples are stored; (stored, its peak RSS)."""
    with open(log, "w") as handle:
        child = lvlmva(*argv, stdout=handle, stderr=subprocess.STDOUT)
        peak = None
        while child.poll() is None and stored(run) < at:
            peak = peak_rss_mib(child.pid) or peak
            time.sleep(0.2)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    return stored(run), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--port", type=int, default=18791)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--epochs", type=int, default=2, help="alignment epochs of both aligns")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    model = out / "original" / "model.pt"
    if not model.exists():
        lvlmva("train", "--dataset", "decoy-digits", "--quiet", "--out", str(out / "original")
               ).wait()
    server, base = start_server(out, args.port, args.latency_ms)
    report: dict = {"n": args.n, "latency_ms": args.latency_ms}
    try:
        run, cache = out / "run", out / "cache"
        argv = ["critique", "--model", str(model), "--n", str(args.n), "--masks", "hard",
                "--out", str(run), *critic_args(base, cache)]
        report["stored_when_killed"], report["peak_rss_mib_first"] = kill_midway(
            argv, run, args.n // 2, out / "critique-1.log")
        answered_before = ledger(base)["sync_answers"]
        started = time.perf_counter()
        with open(out / "critique-2.log", "w") as log:
            assert lvlmva(*argv, stdout=log, stderr=subprocess.STDOUT).wait() == 0
        report["resume_s"] = round(time.perf_counter() - started, 1)
        after = ledger(base)
        report.update(stored_after_resume=stored(run), answers_before_kill=answered_before,
                      answers_total=after["sync_answers"], needed=2 * args.n,
                      answered_twice=len(after["answered_more_than_once"]))
        common = ["--epochs", str(args.epochs), "--quiet", "--report-samples", "12",
                  "--val-samples", "0"]  # the run has no critiqued validation image
        assert lvlmva("align", "--critique", str(run), "--out", str(out / "from-run"),
                      *common).wait() == 0
        assert lvlmva("align", "--model", str(model), "--n-align", str(args.n), "--no-streaming",
                      "--masks", "hard", "--out", str(out / "direct"), *common,
                      *critic_args(base, cache)).wait() == 0
        report["answers_after_direct_align"] = ledger(base)["sync_answers"]
        report.update(compare(out / "from-run", out / "direct"))
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
    print(json.dumps(report, indent=2))
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")


def compare(a: Path, b: Path) -> dict:
    import torch

    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    wa, wb = (torch.load(p / "model.pt", weights_only=False)["state_dict"] for p in (a, b))
    return {
        "from_run_provider_calls": ma["provider_calls"],
        "direct_provider_calls": mb["provider_calls"],
        "direct_cache_hits": mb["cache_hits"],
        "same_weights": all(torch.equal(wa[k], wb[k]) for k in wa),
        "after_from_run": ma["after"]["test_accuracy"],
        "after_direct": mb["after"]["test_accuracy"],
        "wga_from_run": ma["after"]["wga"], "wga_direct": mb["after"]["wga"],
    }


if __name__ == "__main__":
    main()
