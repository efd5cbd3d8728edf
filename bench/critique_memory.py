"""Memory of a large critique run: `lvlmva critique --all` (simulated critic, in process) over a
whole training split, its resident memory (VmRSS) sampled against the samples stored.

    python bench/critique_memory.py --dataset decoy-mnist --data-dir ../shared/data --out /tmp/mem

A run that streams stays flat once the dataset is loaded; one that held records, images or masks
would grow by their size with every sample.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def rss_mib(pid: int) -> tuple[float, float] | None:
    """(VmRSS, VmHWM) of `pid` in MiB."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                      .splitlines() if ":" in line)
    except OSError:
        return None
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def stored(run: Path) -> int:
    from lvlmva.runs import CritiqueRun

    if not (run / "run.sqlite").exists():
        return 0
    with CritiqueRun.open(run) as r:
        return r.count()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="decoy-mnist")
    parser.add_argument("--data-dir")
    parser.add_argument("--n", type=int, help="samples (default: the whole training split)")
    parser.add_argument("--every", type=float, default=15.0, help="seconds between samples")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = ["--dataset", args.dataset, *(["--data-dir", args.data_dir] if args.data_dir else [])]
    model = args.out / "original" / "model.pt"
    cli = [sys.executable, "-m", "lvlmva.cli"]
    if not model.exists():
        subprocess.run([*cli, "train", *data, "--epochs", "1", "--quiet", "--out",
                        str(model.parent)], check=True)
    run = args.out / "run"
    count = ["--n", str(args.n)] if args.n else ["--all"]
    argv = [*cli, "critique", "--model", str(model), *data, *count, "--no-fsync", "--quiet",
            "--cache-dir", str(args.out / "cache"), "--out", str(run)]
    started = time.perf_counter()
    points = []
    with open(args.out / "critique.log", "w") as log:
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        while child.poll() is None:
            memory = rss_mib(child.pid)
            if memory is not None:
                points.append({"s": round(time.perf_counter() - started), "stored": stored(run),
                               "rss_mib": round(memory[0]), "peak_mib": round(memory[1])})
                print(json.dumps(points[-1]), flush=True)
            time.sleep(args.every)
    result = {"returncode": child.returncode, "seconds": round(time.perf_counter() - started),
              "stored": stored(run), "points": points}
    (args.out / "memory.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "points"}))


if __name__ == "__main__":
    main()
