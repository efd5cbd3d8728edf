"""The robust-alignment study: `align` with its defaults against the simulated critic's verdict
accuracy, error model, robust mechanism, J and number of alignment samples, on five tasks.

    python bench/robust_study.py --plans main mechanisms accuracy clusters samples \\
        --data-dir /work/shared/data --out docs/data/robust/study.jsonl
    python bench/robust_study.py --render            # tables into docs/robust.md, figures

Pilot plans (`start`, `val-samples`, `hard-masks`, `gaussian-consensus`, `logprobs`) write to
`--out` files under `docs/data/robust/pilots/`, which the tables do not read; docs/robust.md
reports them.
So do pilot tasks (`PILOT_TASKS`, run only when named with `--tasks`).

Every cell (dataset, seed, critic, settings) is one `lvlmva.pipeline.align` call on the seed's
original model, appended as one JSON line to `--out` as soon as it is done; a rerun skips the
cells already there (resume), so the command can be stopped and started at will. Critics:
``ground-truth`` (the true masks: the upper bound) and the **simulated LVLM** (an offline
simulation answering from the ground-truth masks; never a real model) with a configured verdict
accuracy and error model (``independent`` or ``ambiguity``, `lvlmva.simulation.error_models`).
LVLM calls are counted as `align` counts them and priced **as if they were GPT-4o's** (list
price, the simulation's token estimates; Batch API at 50%).

Tasks and models (`TASKS`): every task with the reference MLP (`lvlmva align`'s default
architecture) and `align`'s default 1,000 alignment samples (all 600 training images of the
synthetic benchmarks): decoy-digits, decoy-mnist, synth-lesions and synth-knee (40 px,
600 / 400 / 600 images, the size of bench/groups.py), and the study's own image-folder tasks
(bench/make_stamp_task.py and bench/make_patch_task.py: PNGs, CSV and spec YAML, loaded only
through `--dataset image-folder`). ResNet-18 is left out: with the five-member lambda grid
one synth-knee cell took 20 minutes on the shared cores (70 cells: a day). Every original
model trains 5 epochs; every alignment retrains 5 epochs with the default lambda grid and
model check.

Stages 1-3 (explain, segment, render) depend on the seed's model and data only, not on the
critic: within a process they are computed once per (seed, split, samples, J) and reused by the
cells of that seed (`_memoised_renders`); everything from the critique on is `align` itself.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import dataclasses
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "data" / "robust" / "study.jsonl"
MODELS = ROOT / "runs" / "robust" / "models"
STAMP_DIR = ROOT / "runs" / "robust" / "stamp-task"
PATCH_DIR = ROOT / "runs" / "robust" / "patch-task"
UNDERLINE_DIR = ROOT / "runs" / "robust" / "underline-task"
UNDERLINE_97_DIR = ROOT / "runs" / "robust" / "underline-97-task"
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"
SEEDS = tuple(range(7))
GPT4O = (2.50, 10.00)  # USD per 1M input / output tokens, the list price the bench assumes

SYNTHETIC = {"image_size": 40, "n_train": 600, "n_val": 400, "n_test": 600}


@dataclass(frozen=True)
class Task:
    """A dataset as the study runs it: loader options, architecture, alignment samples, the
    headline metric ("test_accuracy" on the decoy data, "wga" where test groups exist)."""

    name: str
    dataset: str
    arch: str
    n_align: int
    metric: str
    options: dict[str, Any] = field(default_factory=dict)
    spec: str | None = None


TASKS = {
    "decoy-digits": Task("decoy-digits", "decoy-digits", "mlp", 1000, "test_accuracy"),
    "decoy-mnist": Task("decoy-mnist", "decoy-mnist", "mlp", 1000, "test_accuracy"),
    "synth-lesions": Task("synth-lesions", "synth-lesions", "mlp", 1000, "wga", SYNTHETIC),
    "synth-knee": Task("synth-knee", "synth-knee", "mlp", 1000, "wga", SYNTHETIC),
    "stamp": Task(
        "stamp",
        "image-folder",
        "mlp",
        1000,
        "wga",
        {"csv": str(STAMP_DIR / "images.csv"), "image_size": 32},
        str(STAMP_DIR / "spec.yaml"),
    ),
    "patch": Task(  # bench/make_patch_task.py: written after the defaults were fixed
        "patch",
        "image-folder",
        "mlp",
        1000,
        "wga",
        {"csv": str(PATCH_DIR / "images.csv"), "image_size": 28},
        str(PATCH_DIR / "spec.yaml"),
    ),
}
# Pilot tasks: run only when named with --tasks, never by the study's default command. Each
# is a study task at its loader's defaults, as a run with every default loads it: patch-64 and
# stamp-64 the own tasks' files without --image-size (64 px); synth-lesions-64 and synth-knee-64
# the benchmarks at 64 px with 2,000 / 600 / 600 images (1,000 of the 2,000 are aligned).
PILOT_TASKS = {
    f"{name}-64": dataclasses.replace(
        TASKS[name], name=f"{name}-64", options={"csv": TASKS[name].options["csv"]}
    )
    for name in ("patch", "stamp")
} | {
    f"{name}-64": dataclasses.replace(TASKS[name], name=f"{name}-64", options={})
    for name in ("synth-lesions", "synth-knee")
}
# The third own task (bench/make_underline_task.py, seventh session), with every default: no
# image size (the loader's 64 px), the defaults' 1,000 alignment samples, the MLP.
PILOT_TASKS["underline"] = Task(
    "underline",
    "image-folder",
    "mlp",
    1000,
    "wga",
    {"csv": str(UNDERLINE_DIR / "images.csv")},
    str(UNDERLINE_DIR / "spec.yaml"),
)
# Its harder version (the line under 97% of the threes, 3% of the fives): too few validation
# images per minority group for the worst-group criterion, so `align` uses its label-free one.
PILOT_TASKS["underline-97"] = dataclasses.replace(
    PILOT_TASKS["underline"],
    name="underline-97",
    options={"csv": str(UNDERLINE_97_DIR / "images.csv")},
    spec=str(UNDERLINE_97_DIR / "spec.yaml"),
)
STUDY_TASKS = tuple(TASKS)
TASKS.update(PILOT_TASKS)


@dataclass(frozen=True)
class Cell:
    """One `align` run of the study."""

    task: str
    seed: int
    critic: str  # "ground-truth" or "simulated"
    accuracy: float | None = None
    error_model: str | None = None
    votes: int = 1
    neighbours: int = 10
    confidence: bool | str = False  # CritiqueOptions.confidence: False, True or "auto"
    clusters: int = 7
    n_align: int | None = None  # None: the task's
    systematic: float = 0.5
    start: str = "retrain"  # TrainOptions.start
    val_samples: int | None = None  # CritiqueOptions.val_samples (None: the default count)
    masks: str = "soft"  # CritiqueOptions.soft_masks: "soft" or "hard"
    kernel: str = "uniform"  # CritiqueOptions.neighbour_kernel
    fused: bool = False  # one structured-output call per image (CriticSettings.fused)
    logprobs: int | None = None  # RequestSettings.verdict_logprobs
    val_masks: str = "critique"  # CritiqueOptions.val_masks

    def key(self) -> dict[str, Any]:
        """The cell's settings; `start`, `val_samples`, `masks`, `kernel`, `fused`, `logprobs`
        and `val_masks` only where they are not the default (older rows keep their ids)."""
        default = {"start": "retrain", "val_samples": None, "masks": "soft", "kernel": "uniform",
                   "fused": False, "logprobs": None, "val_masks": "critique"}  # fmt: skip
        return {k: v for k, v in self.__dict__.items() if default.get(k, object()) != v}


MECHANISMS = {
    "raw": {"neighbours": 0},
    "votes3": {"votes": 3, "neighbours": 0},
    "consensus": {},  # the default
    "votes3+consensus": {"votes": 3},
    "consensus+confidence": {"confidence": True},
}


def sim(task: str, seed: int, accuracy: float, model: str, **kw: Any) -> Cell:
    return Cell(task, seed, "simulated", accuracy, model, **kw)


def plan(name: str, tasks: list[str], seeds: list[int]) -> Iterator[Cell]:
    """The cells of plan `name`, in the order they run."""
    if name == "main":  # the done-when table: every task, 7 seeds
        for seed in seeds:
            for task in tasks:
                yield Cell(task, seed, "ground-truth")
                for accuracy in (0.87, 0.46):
                    for model in ("independent", "ambiguity"):
                        yield sim(task, seed, accuracy, model)
    elif name == "accuracy":  # the real-model figures not in "main"
        for task in ("decoy-digits", "stamp"):
            for seed in seeds:
                for accuracy in (1.0, 0.88, 0.42):
                    for model in ("independent", "ambiguity"):
                        yield sim(task, seed, accuracy, model)
    elif name == "mechanisms":
        for task in ("decoy-digits", "stamp"):
            for seed in seeds:
                for accuracy in (0.87, 0.46):
                    for model in ("independent", "ambiguity"):
                        for mech, settings in MECHANISMS.items():
                            if mech != "consensus":
                                yield sim(task, seed, accuracy, model, **settings)
                yield sim(task, seed, 0.87, "independent", votes=3, neighbours=0, systematic=0.0)
                yield sim(task, seed, 0.87, "independent", votes=3, neighbours=0, systematic=1.0)
    elif name == "start":  # fine-tune from the original instead of retraining
        for seed in seeds:
            for task in tasks:
                yield Cell(task, seed, "ground-truth", start="finetune")
                for model in ("independent", "ambiguity"):
                    yield sim(task, seed, 0.87, model, start="finetune")
    elif name == "val-samples":  # the model check with more critiqued validation images
        for seed in seeds:
            for n in (500, 800):
                yield Cell("patch", seed, "ground-truth", val_samples=n)
                for model in ("independent", "ambiguity"):
                    yield sim("patch", seed, 0.87, model, val_samples=n)
    elif name == "hard-masks":  # the main plan's critic cells with 0/1 masks (the true
        for cell in plan("main", tasks, seeds):  # masks do not depend on the mask rule)
            if cell.critic != "ground-truth":
                yield dataclasses.replace(cell, masks="hard")
    elif name == "gaussian-consensus":  # the main plan's critic cells, neighbours weighted
        for cell in plan("main", tasks, seeds):  # by likeness (the true masks are not pooled)
            if cell.critic != "ground-truth":
                yield dataclasses.replace(cell, kernel="gaussian")
    elif name == "logprobs":  # verdict confidence from token log-probabilities, two-step
        for task in ("decoy-digits", "stamp"):  # (the default: "main" has its rows) and fused
            for seed in seeds:
                for accuracy in (0.87, 0.46):
                    for model in ("independent", "ambiguity"):
                        for fused in (False, True):
                            if fused:
                                yield sim(task, seed, accuracy, model, fused=True)
                            yield sim(task, seed, accuracy, model, fused=fused, logprobs=5)
                            yield sim(task, seed, accuracy, model, fused=fused, logprobs=5,
                                      confidence=True)  # fmt: skip
    elif name == "logprobs-confidence":  # the two-step cells of "logprobs" with confidence
        for cell in plan("logprobs", tasks, seeds):  # weights only (more seeds for the best)
            if not cell.fused and cell.confidence:
                yield cell
    elif name == "confidence-control":  # the control of "logprobs-confidence": confidence
        for task in ("decoy-digits", "stamp"):  # weights from agreement alone, no logprobs
            for seed in seeds:
                for accuracy in (0.87, 0.46):
                    for model in ("independent", "ambiguity"):
                        yield sim(task, seed, accuracy, model, confidence=True)
    elif name == "auto-confidence":  # "auto" confidence weights (docs/robust.md) beside the
        for seed in seeds:  # default and the true masks, on the tasks given (run on one machine)
            for task in tasks:
                yield Cell(task, seed, "ground-truth")
                for model in ("independent", "ambiguity"):
                    yield sim(task, seed, 0.87, model)
                    yield sim(task, seed, 0.87, model, confidence="auto")
    elif name == "val-neighbours":  # the check's validation masks from the nearest critiqued
        for seed in seeds:  # clusters (no LVLM call) beside the default (critiqued), on the
            for task in ("decoy-digits", "stamp", "patch"):  # tasks the counterfactual decides
                for accuracy in (0.87, 0.46):
                    for model in ("independent", "ambiguity"):
                        yield sim(task, seed, accuracy, model)
                        yield sim(task, seed, accuracy, model, val_masks="neighbours")
    elif name == "clusters":
        for seed in seeds[:3]:
            for j in (3, 5, 9):
                for model in ("independent", "ambiguity"):
                    yield sim("decoy-digits", seed, 0.87, model, clusters=j)
    elif name == "samples":
        for seed in seeds[:3]:
            for n in (50, 200, 5000):
                yield Cell("decoy-digits", seed, "ground-truth", n_align=n)
                yield sim("decoy-digits", seed, 0.87, "independent", n_align=n)
    else:
        raise SystemExit(f"unknown plan {name!r}")


def cell_id(cell: Cell) -> str:
    return hashlib.sha256(json.dumps(cell.key(), sort_keys=True).encode()).hexdigest()[:16]


# -- data, original models and the stage 1-3 memo ---------------------------------------------


def load(task: Task, seed: int, data_dir: str | None):
    from lvlmva.vision.datasets import load_dataset

    csv = Path(task.options.get("csv", ROOT))  # the own tasks' files are written on first use
    if csv.parent == STAMP_DIR and not csv.exists():
        sys.path.insert(0, str(ROOT / "bench"))
        from make_stamp_task import write_task

        write_task(STAMP_DIR)
    if csv.parent == PATCH_DIR and not csv.exists():
        sys.path.insert(0, str(ROOT / "bench"))
        import make_patch_task

        mnist = Path(data_dir) / "mnist" if data_dir else MNIST_DIR
        make_patch_task.write_task(mnist, PATCH_DIR)
    if csv.parent in (UNDERLINE_DIR, UNDERLINE_97_DIR) and not csv.exists():
        sys.path.insert(0, str(ROOT / "bench"))
        import make_underline_task

        mnist = Path(data_dir) / "mnist" if data_dir else MNIST_DIR
        shortcut = 0.97 if csv.parent == UNDERLINE_97_DIR else make_underline_task.SHORTCUT
        make_underline_task.write_task(mnist, csv.parent, shortcut=shortcut)
    return load_dataset(task.dataset, data_dir=data_dir, seed=seed, **task.options)


def original(task: Task, seed: int, splits) -> tuple[torch.nn.Module, float]:
    """The seed's original model (trained normally, 5 epochs; saved and reloaded)."""
    from lvlmva.vision.checkpoint import load_checkpoint, save_checkpoint
    from lvlmva.vision.models import build_model
    from lvlmva.vision.training import train_classifier

    path = MODELS / f"{task.name}-seed{seed}.pt"
    if path.exists():
        return load_checkpoint(path).model, 0.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(task.arch, splits.info)
    started = time.perf_counter()
    train_classifier(model, splits.train, epochs=5, seed=seed, progress=False)
    seconds = time.perf_counter() - started
    save_checkpoint(path, model, task.arch, splits.info)
    return model, seconds


_MEMO: dict[tuple, list] = {}


def _memoised_renders() -> None:
    """Reuse stage 1-3 results within the process (see the module docstring)."""
    import importlib

    stages = importlib.import_module("lvlmva.pipeline.align")  # the module, not the function
    real = stages.rendered_samples
    if getattr(real, "memoised", False):
        return

    async def memo(model, split, indices, options, *, seed, device, timings=None):
        key = (id(split), hashlib.sha256(indices.numpy().tobytes()).hexdigest(),
               options.n_clusters, options.attribution, options.explain_batch, seed)  # fmt: skip
        if key not in _MEMO:
            _MEMO[key] = [s async for s in real(model, split, indices, options, seed=seed,
                                                device=device, timings=timings)]  # fmt: skip
        for sample in _MEMO[key]:
            yield sample

    memo.memoised = True
    stages.rendered_samples = memo


# -- one cell ---------------------------------------------------------------------------------


def run_cell(cell: Cell, task: Task, splits, model: torch.nn.Module) -> dict[str, Any]:
    from lvlmva.api import CriticSettings, align

    if cell.critic == "ground-truth":
        critic = CriticSettings("ground-truth")
    else:
        critic = CriticSettings(
            "simulated", verdict_accuracy=cell.accuracy, error_model=cell.error_model,
            systematic=cell.systematic, seed=cell.seed, fused=cell.fused,
            verdict_logprobs=cell.logprobs,
        )  # fmt: skip
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    result = asyncio.run(
        align(
            copy.deepcopy(model), splits, task.spec, critic=critic,
            n_align=cell.n_align or task.n_align, n_clusters=cell.clusters, votes=cell.votes,
            neighbours=cell.neighbours, neighbour_kernel=cell.kernel, confidence=cell.confidence,
            start=cell.start, val_samples=cell.val_samples, val_masks=cell.val_masks,
            soft_masks=cell.masks == "soft",
            seed=cell.seed, progress=False,
        )
    )  # fmt: skip
    seconds = time.perf_counter() - started
    return row_of(cell, task, result, seconds, load_before)


def row_of(cell: Cell, task: Task, result, seconds: float, load_before: float) -> dict[str, Any]:
    va = result.verdict_accuracy
    usage = result.usage
    usd = (usage.prompt_tokens * GPT4O[0] + usage.completion_tokens * GPT4O[1]) / 1e6
    selection = result.selection.to_dict() if result.selection else None
    return {
        "id": cell_id(cell),
        "cell": cell.key(),
        "metric": task.metric,
        "before": _metrics(result.before),
        "after": _metrics(result.after),
        "selection": selection,
        "robust": result.robust,
        "verdict_accuracy": None if va is None else va.to_dict()["accuracy"],
        "relevant_yes": None if va is None else va.to_dict()["non_spurious_yes"],
        "masks": result.n_masks,
        "lvlm_calls": result.provider_calls,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "usd_as_gpt4o_sync": round(usd, 4),
        "usd_as_gpt4o_batch": round(usd / 2, 4),
        "failed_jobs": result.failed_jobs,
        "seconds": round(seconds, 1),
        "timings_s": {k: round(v, 2) for k, v in result.timings.items()},
        "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def _metrics(m) -> dict[str, Any]:
    return {"test_accuracy": m.test_accuracy, "aga": m.aga, "wga": m.wga}


# -- the loop ---------------------------------------------------------------------------------


def done_ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plans", nargs="+", default=["main"])
    p.add_argument("--tasks", nargs="+", default=list(STUDY_TASKS))
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--data-dir")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--render", action="store_true", help="only write the tables and figures")
    args = p.parse_args(argv)
    if args.render:
        sys.path.insert(0, str(ROOT / "bench"))
        from robust_report import render

        render(args.out)
        return
    torch.set_num_threads(args.threads)
    _memoised_renders()
    done = done_ids(args.out)
    cells = [c for name in args.plans for c in plan(name, args.tasks, args.seeds)]
    cells = [c for c in cells if c.task in args.tasks and cell_id(c) not in done]
    print(f"{len(cells)} cells to run ({len(done)} done) on {platform.node()}", flush=True)
    current = None
    for cell in cells:
        task = TASKS[cell.task]
        if current != (cell.task, cell.seed):
            _MEMO.clear()
            splits = load(task, cell.seed, args.data_dir)
            model, train_s = original(task, cell.seed, splits)
            current = (cell.task, cell.seed)
        row = run_cell(cell, task, splits, model)
        row["original_train_s"] = round(train_s, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        train_s = 0.0
        shown = {k: row["cell"][k] for k in ("task", "seed", "critic", "accuracy", "error_model")}
        after = row["after"][task.metric]
        print(json.dumps({**shown, "before": row["before"][task.metric], "after": after,
                          "chosen": (row["selection"] or {}).get("chosen"),
                          "s": row["seconds"]}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
