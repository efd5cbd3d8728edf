"""Issue-4 figures: decoy-mnist aligned through the simulated critic, and streamed vs
sequential wall time.

    python bench/align_sim.py --data-dir ../shared/data --seeds 0 1 2 --json
    python bench/align_sim.py --dataset decoy-digits --compare-streaming --sim-latency-ms 200

The simulated LVLM is an offline simulation answering from ground-truth masks with the given
verdict accuracy; it is not a real model.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import platform
import statistics
import time

import torch

from lvlmva.api import CriticSettings, align
from lvlmva.vision.datasets import load_dataset
from lvlmva.vision.models import build_model
from lvlmva.vision.training import train_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="decoy-mnist")
    parser.add_argument("--data-dir")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-align", type=int, default=1000)
    parser.add_argument("--train-epochs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lambda", dest="lam", type=float)
    parser.add_argument("--verdict-accuracy", type=float, default=0.87)
    parser.add_argument(
        "--relevant-accuracy",
        type=float,
        help="share of relevant clusters the simulation marks 'yes' (default: verdict accuracy)",
    )
    parser.add_argument("--sim-latency-ms", type=float, default=0.0)
    parser.add_argument("--max-in-flight", type=int, default=32)
    parser.add_argument(
        "--compare-streaming",
        action="store_true",
        help="also run critique-everything-then-train and compare wall time",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    rows = []
    for seed in args.seeds:
        splits = load_dataset(args.dataset, data_dir=args.data_dir, seed=seed)
        torch.manual_seed(seed)
        model = build_model("mlp", splits.info)
        train_classifier(model, splits.train, epochs=args.train_epochs, seed=seed, progress=False)
        modes = (True, False) if args.compare_streaming else (True,)
        for streaming in modes:
            critic = CriticSettings(
                kind="simulated",
                verdict_accuracy=args.verdict_accuracy,
                relevant_accuracy=args.relevant_accuracy,
                sim_latency_ms=args.sim_latency_ms,
                max_in_flight=args.max_in_flight,
                seed=seed,
            )
            started = time.perf_counter()
            result = asyncio.run(
                align(
                    copy.deepcopy(model),
                    splits,
                    critic=critic,
                    n_align=args.n_align,
                    epochs=args.epochs,
                    lam=args.lam,
                    seed=seed,
                    streaming=streaming,
                    progress=False,
                )
            )
            wall = time.perf_counter() - started
            row = {
                "seed": seed,
                "streaming": streaming,
                "before": result.before.test_accuracy,
                "after": result.after.test_accuracy,
                "verdict_accuracy": result.verdict_accuracy.accuracy,
                "relevant_yes": result.verdict_accuracy.non_spurious_yes,
                "masks": sum(s.mask is not None for s in result.samples),
                "lambda": result.lam,
                "wall_s": round(wall, 2),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)

    summary = {
        "dataset": args.dataset,
        "n_align": args.n_align,
        "configured_verdict_accuracy": args.verdict_accuracy,
        "configured_relevant_accuracy": args.relevant_accuracy,
        "sim_latency_ms": args.sim_latency_ms,
        "machine": platform.machine(),
        "cores": torch.get_num_threads(),
    }
    for streaming in sorted({r["streaming"] for r in rows}, reverse=True):
        group = [r for r in rows if r["streaming"] is streaming]
        key = "streamed" if streaming else "sequential"
        for field in ("before", "after", "verdict_accuracy", "relevant_yes", "wall_s"):
            values = [r[field] for r in group]
            summary[f"{key}_{field}_mean"] = round(statistics.mean(values), 4)
            if len(values) > 1:
                summary[f"{key}_{field}_std"] = round(statistics.stdev(values), 4)
    if args.compare_streaming:
        summary["streamed_over_sequential_wall"] = round(
            summary["streamed_wall_s_mean"] / summary["sequential_wall_s_mean"], 3
        )
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
