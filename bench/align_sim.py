"""Issue-4 figures: `align()` through the simulated critic, and streamed vs sequential wall time.

The simulated LVLM is an offline simulation that answers from the datasets' ground-truth
spurious masks with the configured verdict accuracy (and latency); it is not a real model.

    python bench/align_sim.py --data-dir /work/shared/data --search-lambda --seeds 0 1 2 \\
        --compare-streaming --sim-latency-ms 200 --json-out runs.jsonl
    python bench/align_sim.py --summarize runs.jsonl
    python bench/align_sim.py --dataset decoy-digits --compare-streaming --sim-latency-ms 200

Per seed: the dataset's seeded splits; the reference MLP trained normally (`--train-epochs`,
Adam, lr 1e-3, batch 64: it learns the shortcut); then `align()`: `--n-align` training images
explained (DeepLiftShap), segmented (PPEPS-WGM, J = 7), rendered and critiqued by the
simulation, and the MLP retrained from scratch (`--start retrain`) with RRR on the masks
(`--epochs`, 64 training + 8 alignment samples a step). Accuracy before / after is on the test
split. With `--compare-streaming` each seed is aligned twice from the same initial weights:
streamed (training starts once 25% of the masks exist and takes in the rest as they arrive)
and sequential (critique everything, then train); the order alternates with the seed so that
drifting load from other processes does not favour one mode.

Lambda: `--lambda` if given; else, with `--search-lambda`, `search_lambda` on the simulated
masks of `--search-seed`, scored by accuracy on the validation split with its decoy squares
repainted in the shade of a random digit (the plain validation split carries the training
shortcut and would reward it); else `align`'s own choice on validation (its lambda grid and
model check, `lvlmva.pipeline.selection`). Test
accuracy never chooses anything.

Every finished run (and the lambda search) is appended as one JSON line to `--json-out`, so a
run cut short still counts; `--summarize FILE ...` rebuilds the summary from such files.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

import lvlmva.api as api
from lvlmva.api import CriticSettings, align
from lvlmva.vision.datasets import load_dataset
from lvlmva.vision.datasets.base import DatasetSplits, ShortcutDataset
from lvlmva.vision.datasets.decoy import decoy_shade
from lvlmva.vision.metrics import evaluate, mean_std
from lvlmva.vision.models import build_model, reinitialize
from lvlmva.vision.rrr import AlignmentPool, search_lambda
from lvlmva.vision.training import train_classifier

DECOY_DATASETS = ("decoy-mnist", "decoy-digits")
GRID = (0.01, 0.1, 1.0, 10.0)


def repaint_decoys(split: ShortcutDataset, seed: int) -> ShortcutDataset:
    """A copy of a decoyed split whose squares get the shade of a random digit (as in the
    test split), so that its accuracy no longer rewards the shortcut."""
    g = torch.Generator().manual_seed(seed)
    digits = torch.randint(0, 10, (len(split),), generator=g)
    shade = decoy_shade(digits).view(-1, 1, 1, 1).expand_as(split.images)
    images = torch.where(split.spurious_masks[:, None], shade, split.images)
    groups = 2 * split.labels + (digits == split.labels).long()
    return ShortcutDataset(images, split.labels, groups, split.spurious_masks)


def prepare(args: argparse.Namespace, seed: int) -> tuple[DatasetSplits, torch.nn.Module, float]:
    """The seeded splits and the normally trained (shortcut) model, and its training time."""
    splits = load_dataset(args.dataset, data_dir=args.data_dir, seed=seed)
    torch.manual_seed(seed)
    model = build_model("mlp", splits.info)
    started = time.perf_counter()
    train_classifier(model, splits.train, epochs=args.train_epochs, seed=seed, progress=False)
    return splits, model, time.perf_counter() - started


def critic_settings(args: argparse.Namespace, seed: int) -> CriticSettings:
    return CriticSettings(
        kind="simulated",
        verdict_accuracy=args.verdict_accuracy,
        relevant_accuracy=args.relevant_accuracy,
        sim_latency_ms=args.sim_latency_ms,
        max_in_flight=args.max_in_flight,
        seed=seed,
    )


def mask_stats(splits: DatasetSplits, samples: Sequence[api.SampleRecord]) -> dict[str, Any]:
    """How the masks compare with the ground-truth spurious regions of their images."""
    truth = splits.train.spurious_masks
    with_mask = [s for s in samples if s.mask is not None]
    if truth is None or not with_mask:
        return {}
    masks = torch.stack([s.mask for s in with_mask]) > 0
    clustered = torch.stack([s.cluster_labels for s in with_mask]) >= 0
    region = truth[[s.index for s in with_mask]]
    hit = (masks & region).flatten(1).sum(1)
    labels = torch.tensor([s.label for s in with_mask])
    in_cluster = (clustered & region).flatten(1).sum(1).float() / region.flatten(1).sum(1)
    return {
        # share of ground-truth spurious pixels in some cluster (what a perfect critic can mask)
        "clustered_spurious_recall": round(float((clustered & region).sum() / region.sum()), 4),
        # share of ground-truth spurious pixels inside the mask
        "mask_spurious_recall": round(float(hit.sum() / region.sum()), 4),
        "samples_spurious_masked": round(float((hit > 0).float().mean()), 4),
        "mask_pixels_mean": round(float(masks.flatten(1).sum(1).float().mean()), 2),
        "mask_pixels_off_spurious_mean": round(
            float((masks & ~region).flatten(1).sum(1).float().mean()), 2
        ),
        # per class: mean share of an image's spurious pixels that lie in some cluster
        "clustered_spurious_recall_by_class": {
            str(k): round(float(in_cluster[labels == k].nanmean()), 2)
            for k in sorted(set(labels.tolist()))
        },
    }


def run_align(
    args: argparse.Namespace,
    splits: DatasetSplits,
    model: torch.nn.Module,
    seed: int,
    *,
    lam: float | None,
    streaming: bool,
    epochs: int | None = None,
) -> tuple[api.AlignResult, dict[str, Any]]:
    """One `align()` call, timed; returns the result and the timing figures."""
    arrivals: list[tuple[float, bool]] = []  # (seconds since start, has a mask), as they come
    load_before = os.getloadavg()[0]
    returned: list[float] = []

    async def timed() -> api.AlignResult:
        out = await align(
            copy.deepcopy(model),
            splits,
            critic=critic_settings(args, seed),
            n_align=args.n_align,
            epochs=args.epochs if epochs is None else epochs,
            lam=lam,
            start=args.start,
            attribution=args.attribution,
            soft_masks=args.soft_masks,
            seed=seed,
            streaming=streaming,
            progress=False,
            on_sample=lambda record: arrivals.append(
                (time.perf_counter() - started, record.mask is not None)
            ),
        )
        returned.append(time.perf_counter() - started)
        return out

    started = time.perf_counter()
    result = asyncio.run(timed())
    wall = time.perf_counter() - started
    # The trainer starts when the pool holds its first share (streamed) or every mask
    # (sequential); the pool grows by one per record with a mask.
    n_masks = sum(s.mask is not None for s in result.samples)
    mask_times = [t for t, has_mask in arrivals if has_mask]
    need = max(1, int(0.25 * len(result.samples))) if streaming else len(result.samples)
    train_start = mask_times[need - 1] if n_masks >= need else result.timings["critique_s"]
    history = result.history
    timing = {
        "wall_s": round(wall, 2),
        "vision_s": round(result.timings.get("vision_s", 0.0), 2),
        "first_mask_s": round(mask_times[0], 2) if mask_times else None,
        "critique_s": round(result.timings["critique_s"], 2),
        "train_start_s": round(train_start, 2),
        "train_s": round(result.timings["total_s"] - train_start, 2),
        # after training: test evaluation and verdict scoring inside align(), then the
        # event loop's shutdown
        "after_train_s": round(returned[0] - result.timings["total_s"], 2),
        "loop_shutdown_s": round(wall - returned[0], 2),
        "rrr_steps": history.steps if history is not None else 0,
        "rrr_step_ms": round(1e3 * statistics.fmean(history.step_time_s), 2)
        if history is not None and history.step_time_s
        else None,
        "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    return result, timing


def choose_lambda(args: argparse.Namespace) -> dict[str, Any]:
    """`search_lambda` on the simulated masks of `--search-seed` (see the module docstring)."""
    seed = args.search_seed
    started = time.perf_counter()
    splits, model, _ = prepare(args, seed)
    # Critique only (epochs = 0): the masks the simulation gives for this seed.
    result, _ = run_align(args, splits, model, seed, lam=0.0, streaming=False, epochs=0)
    records = [s for s in result.samples if s.mask is not None]
    pool = AlignmentPool()
    pool.add(
        torch.stack([splits.train.images[s.index] for s in records]),
        torch.stack([s.mask for s in records]),
        torch.tensor([s.label for s in records]),
    )
    pool.close()
    if args.dataset in DECOY_DATASETS:
        val, val_name, criterion = repaint_decoys(splits.val, seed=12345), "repainted", "accuracy"
    else:
        val, val_name, criterion = splits.val, "plain", "auto"

    def make_model() -> torch.nn.Module:
        fresh = copy.deepcopy(model)
        if args.start == "retrain":
            reinitialize(fresh, seed=seed)  # the weights `align(seed=seed)` starts from
        return fresh

    search = search_lambda(
        make_model,
        splits.train,
        pool,
        val,
        grid=args.grid,
        criterion=criterion,
        info=splits.info,
        epochs=args.epochs,
        seed=seed,
        progress=False,
    )
    return {
        "lambda_search": {
            "seed": seed,
            "start": args.start,
            "attribution": args.attribution,
            "validation": val_name,
            "criterion": search.criterion,
            "scores": {f"{k:g}": round(v, 4) for k, v in search.scores.items()},
            "best_lambda": search.best_lambda,
            "masks": len(records),
            "verdict_accuracy": None
            if result.verdict_accuracy is None
            else result.verdict_accuracy.to_dict()["accuracy"],
            **mask_stats(splits, result.samples),
            "original_val_accuracy": round(evaluate(model, val).test_accuracy, 4),
            "wall_s": round(time.perf_counter() - started, 2),
        }
    }


def run_seed(args: argparse.Namespace, seed: int, lam: float | None) -> list[dict[str, Any]]:
    splits, model, train_s = prepare(args, seed)
    modes = [True, False] if args.compare_streaming else [True]
    if seed % 2:
        modes.reverse()
    rows = []
    for streaming in modes:
        result, timing = run_align(args, splits, model, seed, lam=lam, streaming=streaming)
        vacc = result.verdict_accuracy
        row: dict[str, Any] = {
            "dataset": args.dataset,
            "seed": seed,
            "mode": "streamed" if streaming else "sequential",
            "start": args.start,
            "attribution": args.attribution,
            "soft_masks": args.soft_masks,
            "lambda": result.lam,
            "n_align": len(result.samples),
            "before": round(result.before.test_accuracy, 4),
            "after": round(result.after.test_accuracy, 4),
            "before_wga": result.before.wga,
            "after_wga": result.after.wga,
            "configured_verdict_accuracy": args.verdict_accuracy,
            "sim_latency_ms": args.sim_latency_ms,
            "max_in_flight": args.max_in_flight,
            "verdict_accuracy": None if vacc is None else vacc.to_dict()["accuracy"],
            "relevant_yes": None if vacc is None else vacc.to_dict()["non_spurious_yes"],
            "spurious_clusters": None if vacc is None else vacc.n_spurious_clusters,
            "masks": sum(s.mask is not None for s in result.samples),
            "lvlm_calls": result.provider_calls,
            "failed_jobs": result.failed_jobs,
            "not_run_jobs": result.not_run_jobs,
            "train_original_s": round(train_s, 2),
            **timing,
            **mask_stats(splits, result.samples),
            "threads": torch.get_num_threads(),
        }
        rows.append(row)
    return rows


def summarize(rows: list[dict[str, Any]], search: dict[str, Any] | None) -> dict[str, Any]:
    """Means +- std per mode, the streamed / sequential wall-time ratio and the targets."""
    summary: dict[str, Any] = {}
    if search is not None:
        summary["lambda_search"] = search
    for mode in ("streamed", "sequential"):
        group = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["seed"])
        if not group:
            continue
        part: dict[str, Any] = {"seeds": [r["seed"] for r in group]}
        for key in ("before", "after", "verdict_accuracy", "relevant_yes", "wall_s", "masks"):
            values = [r[key] for r in group if r.get(key) is not None]
            if values:
                ms = mean_std(values)
                part[key] = {"mean": round(ms.mean, 4), "std": round(ms.std, 4)}
        summary[mode] = part
    streamed = [r for r in rows if r["mode"] == "streamed"]
    targets: dict[str, bool] = {}
    if streamed:
        configured = streamed[0]["configured_verdict_accuracy"]
        targets["after_mean>=0.94"] = summary["streamed"]["after"]["mean"] >= 0.94
        targets["verdict_accuracy_within_0.03"] = all(
            r["verdict_accuracy"] is not None and abs(r["verdict_accuracy"] - configured) <= 0.03
            for r in streamed
        )
    pairs = [
        (s, q)
        for s in streamed
        for q in rows
        if q["mode"] == "sequential" and q["seed"] == s["seed"]
    ]
    if pairs:
        summary["streamed_over_sequential_wall"] = {
            str(s["seed"]): round(s["wall_s"] / q["wall_s"], 3) for s, q in pairs
        }
        ratio = statistics.fmean(s["wall_s"] for s, _ in pairs) / statistics.fmean(
            q["wall_s"] for _, q in pairs
        )
        summary["streamed_over_sequential_wall_mean"] = round(ratio, 3)
        gap = statistics.fmean(s["after"] - q["after"] for s, q in pairs)
        summary["after_streamed_minus_sequential"] = round(gap, 4)
        targets["streamed_faster"] = ratio < 1.0
    summary["targets_met"] = targets
    return summary


def read_runs(paths: Sequence[str]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    rows, search = [], None
    for path in paths:
        with open(path) as fh:
            for line in fh:
                if not line.strip():
                    continue
                item = json.loads(line)
                if "lambda_search" in item:
                    search = item["lambda_search"]
                elif "seed" in item:
                    rows.append(item)
    return rows, search


def _json(obj: Any) -> str:
    def fix(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return json.dumps(fix(obj))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="decoy-mnist")
    parser.add_argument("--data-dir")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--n-align", type=int, default=1000)
    parser.add_argument("--train-epochs", type=int, default=5, help="epochs of the original")
    parser.add_argument("--epochs", type=int, default=5, help="RRR epochs")
    parser.add_argument("--start", choices=("retrain", "finetune"), default="retrain")
    parser.add_argument("--lambda", dest="lam", type=float)
    parser.add_argument(
        "--attribution",
        default="deeplift-shap",
        choices=("deeplift-shap", "integrated-gradients", "gradient-shap"),
    )
    parser.add_argument(
        "--soft-masks", action="store_true", help="masks weighted by the clusters' responsibilities"
    )
    parser.add_argument(
        "--search-lambda",
        action="store_true",
        help="choose lambda on the validation split (repainted decoys) with the simulated masks",
    )
    parser.add_argument("--grid", type=float, nargs="+", default=list(GRID))
    parser.add_argument("--search-seed", type=int, default=0)
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
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json-out", help="append every finished run here (JSON lines)")
    parser.add_argument(
        "--summarize", nargs="+", metavar="FILE", help="only summarise earlier --json-out files"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.summarize:
        rows, search = read_runs(args.summarize)
        summary = summarize(rows, search)
        print(_json(summary))
        return summary

    def emit(item: dict[str, Any]) -> None:
        line = _json(item)
        print(line, flush=True)
        if args.json_out:
            with open(args.json_out, "a") as fh:
                fh.write(line + "\n")

    given = sys.argv[1:] if argv is None else list(argv)
    emit(
        {
            "command": "python bench/align_sim.py " + " ".join(given),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }
    )
    search = None
    lam = args.lam
    if lam is None and args.search_lambda:
        found = choose_lambda(args)
        emit(found)
        search = found["lambda_search"]
        lam = search["best_lambda"]
    rows = []
    for seed in args.seeds:
        for row in run_seed(args, seed, lam):
            emit(row)
            rows.append(row)
    summary = summarize(rows, search)
    print(_json({"summary": summary}), flush=True)
    return summary


if __name__ == "__main__":
    main()
