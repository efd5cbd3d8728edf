"""Where the correction masks go: how much of the spurious region they cover and how much of
the rest of the foreground they mask, per task, error model and robust mechanism.

    python bench/mask_quality.py --tasks synth-lesions decoy-digits --seeds 0 \\
        --data-dir ../shared/data --json docs/data/robust/mask_quality.json

Each row runs `align` on a task of the robust study (`bench/robust_study.py`: the same data,
sizes and original model) with the **simulated LVLM** (an offline simulation answering from the
ground-truth masks; never a real model) at verdict accuracy 0.87, and reads the final masks of
the alignment samples (soft masks, after the neighbour consensus where `neighbours` > 0):

- ``spurious_covered``: mean over samples with a spurious region of sum(mask * truth) /
  sum(truth), the share of the shortcut's pixels whose input gradient RRR will penalise
  (the true masks give 1.0);
- ``other_masked``: mean over samples of the mask's mean over the foreground pixels outside the
  spurious region (relevant or irrelevant, the dataset does not say which), the share of the
  rest that RRR is told to ignore (the true masks give 0.0);
- ``spurious_in_foreground``: mean over samples with a spurious region of the share of its
  pixels that the segmentation keeps as foreground at all (what any verdicts could mask: the
  ceiling of ``spurious_covered``).

Training does not change the masks, so each `align` trains one epoch only.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import robust_study as study


def mask_quality(samples, train) -> dict[str, float]:
    """`spurious_covered` and `other_masked` (module docstring) of an `align` result's records
    against the training split's true masks."""
    covered, other, inside, n_spurious, n = 0.0, 0.0, 0.0, 0, 0
    for record in samples:
        if record.mask is None:
            continue
        truth = train.spurious_masks[record.index].float()
        mask = record.mask.float()
        foreground = (record.cluster_labels >= 0).float()
        rest = foreground * (1.0 - truth)
        if truth.sum() > 0:
            covered += float((mask * truth).sum() / truth.sum())
            inside += float((foreground * truth).sum() / truth.sum())
            n_spurious += 1
        other += float((mask * rest).sum() / rest.sum().clamp_min(1.0))
        n += 1
    return {
        "spurious_covered": round(covered / max(n_spurious, 1), 3),
        "other_masked": round(other / max(n, 1), 3),
        "spurious_in_foreground": round(inside / max(n_spurious, 1), 3),
        "samples": n,
    }


def prepared(task_name: str, seed: int, data_dir: str | None):
    """A study task, its splits for `seed` and the seed's original model (loaded once, for
    every `aligned_once` of that task and seed)."""
    task = study.TASKS[task_name]
    splits = study.load(task, seed, data_dir)
    return task, splits, study.original(task, seed, splits)[0]


def aligned_once(prepared, seed: int, error_model: str, k: int):
    """`align` for one epoch of a copy of the `prepared` task's original model with the
    simulated critic at 0.87 and `k` neighbours."""
    from lvlmva.api import CriticSettings, align

    task, splits, model = prepared
    critic = CriticSettings("simulated", verdict_accuracy=0.87, error_model=error_model, seed=seed)
    return asyncio.run(
        align(
            copy.deepcopy(model), splits, task.spec, critic=critic, n_align=task.n_align,
            neighbours=k, seed=seed, epochs=1, progress=False,
        )
    )  # fmt: skip


def run(task_name: str, seed: int, data_dir: str | None, neighbours: int) -> list[dict[str, Any]]:
    rows, setup = [], prepared(task_name, seed, data_dir)
    _, splits, _ = setup
    for error_model in ("independent", "ambiguity"):
        for k in (0, neighbours):
            result = aligned_once(setup, seed, error_model, k)
            row = {"task": task_name, "seed": seed, "error_model": error_model, "neighbours": k}
            row.update(mask_quality(result.samples, splits.train))
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main(
    argv: list[str] | None = None,
    *,
    run: Callable[[str, int, str | None, int], list[dict[str, Any]]] = run,
    script: str = "bench/mask_quality.py",
    doc: str = __doc__,
) -> None:
    """The command line of this script, and of another with the same flags and its own `run`
    (one list of rows per task and seed)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument(
        "--tasks", nargs="+", default=list(study.STUDY_TASKS), choices=tuple(study.TASKS)
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--neighbours", type=int, default=10)
    p.add_argument("--data-dir")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [
        row
        for task in args.tasks
        for seed in args.seeds
        for row in run(task, seed, args.data_dir, args.neighbours)
    ]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        header = {"command": " ".join(["python", script, *(argv or sys.argv[1:])])}
        args.json.write_text(json.dumps({"header": header, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
