"""Issue-5 figures: group robustness (AGA / WGA) and corruption robustness on the synthetic
benchmarks, ResNet-18, mean +- std over seeds, for the original model, LVLM-VA with the
simulated critic, DFR, JTT and SUBG.

    python bench/groups.py --seeds 0 1 2 3 4 5 6 7 8 9 --out runs/groups \
        --write-md docs/benchmarks.md docs/bench_groups.md

lambda is chosen as `align` chooses it by default (`--lambda-from align`: per seed, one member
per lambda of its grid in units of lambda0, the best on validation or the original), or, with
`--lambda-from search` (the protocol of the first tables), once per benchmark on the
*validation* split of the first seed (`search_lambda` over `--lambda-grid`, absolute values,
scored by validation WGA), unless `--lam` fixes it. Then,
per benchmark and seed: the original ResNet-18 is trained; `lvlmva.api.align` runs with the
simulated critic (an offline simulation answering from the ground-truth masks with verdict
accuracy 0.87, not a real model); DFR retrains the original's last layer; JTT and SUBG train
fresh models. Test accuracy, AGA, WGA and (original vs aligned) the accuracy drop under gamma,
defocus blur and contrast are measured. Every finished cell is appended at once as one JSON line
to OUT/results.jsonl; a rerun with the same settings skips the cells already there (resume).
`--render-only` rebuilds the markdown from the JSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lvlmva.api import CriticSettings, align
from lvlmva.vision import baselines
from lvlmva.vision.checkpoint import load_checkpoint, save_checkpoint
from lvlmva.vision.corruptions import CORRUPTIONS, corruption_accuracy
from lvlmva.vision.datasets import load_dataset
from lvlmva.vision.datasets.base import DatasetSplits
from lvlmva.vision.metrics import evaluate, mean_std, wilcoxon
from lvlmva.vision.models import build_model, reinitialize
from lvlmva.vision.rrr import AlignmentPool, search_lambda
from lvlmva.vision.seeding import seeded
from lvlmva.vision.training import train_classifier

BENCHMARKS = ("synth-lesions", "synth-knee")
METHODS = ("original", "lvlm-va", "dfr", "jtt", "subg")
PHASES = (("original", "lvlm-va"), ("dfr", "subg"), ("jtt",))
ARCH = "resnet18"
# The paper's real-data figures (DESIGN.md), AGA / WGA: context only, not measured here.
REFERENCE = {
    "synth-lesions": {
        "label": "skin lesions (ISIC)",
        "original": (0.740, 0.230),
        "lvlm-va": (0.749, 0.446),
        "dfr": (0.687, 0.177),
        "jtt": (0.724, 0.310),
        "subg": (0.638, 0.509),
    },
    "synth-knee": {
        "label": "knee radiographs",
        "original": (0.588, 0.030),
        "lvlm-va": (0.595, 0.191),
    },
}
REFERENCE_CORRUPTION_GAIN = {"gamma": 0.025, "defocus": 0.022, "contrast": 0.055}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS), choices=BENCHMARKS)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--image-size", type=int, default=40)
    p.add_argument("--n-train", type=int, default=600)
    p.add_argument("--n-val", type=int, default=400)
    p.add_argument("--n-test", type=int, default=600)
    p.add_argument("--epochs", type=int, default=5, help="epochs of every training run")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n-align", type=int, default=48, help="alignment samples critiqued")
    p.add_argument(
        "--soft-masks",
        action="store_true",
        help="masks weighted by the 'no' clusters' responsibilities instead of 0/1",
    )
    p.add_argument("--verdict-accuracy", type=float, default=0.87)
    p.add_argument("--lam", type=float, help="fix the RRR weight (default: --lambda-from)")
    p.add_argument(
        "--lambda-from",
        choices=("align", "search"),
        default="align",
        help="align: align's own choice per seed (its default); search: search_lambda over "
        "--lambda-grid on the first seed, then fixed",
    )
    p.add_argument("--lambda-grid", type=float, nargs="+", default=[0.03, 0.1, 0.3, 1.0])
    p.add_argument("--jtt-id-epochs", type=int, nargs="+", default=[3])
    p.add_argument("--jtt-upweights", type=float, nargs="+", default=[20.0])
    p.add_argument("--dfr-resamples", type=int, default=10)
    p.add_argument("--severities", type=int, nargs="+", default=[3])
    p.add_argument("--corruption-n", type=int, default=300, help="test images for corruptions")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/groups")
    p.add_argument(
        "--write-md",
        nargs="+",
        default=[],
        help="write the markdown tables to these files (between the bench's markers if present)",
    )
    p.add_argument("--render-only", action="store_true", help="only rebuild the markdown")
    p.add_argument("--command", help="command line to print in the markdown (default: argv)")
    return p.parse_args(argv)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Everything that changes a cell's result (a cell is reused only if these match)."""
    keys = [
        "image_size",
        "n_train",
        "n_val",
        "n_test",
        "epochs",
        "lr",
        "n_align",
        "verdict_accuracy",
        "lam",
        "lambda_from",
        "lambda_grid",
        "jtt_id_epochs",
        "jtt_upweights",
        "dfr_resamples",
        "severities",
        "corruption_n",
        "soft_masks",
    ]
    return {k: getattr(args, k) for k in keys}


# The settings each kind of cell depends on: a cell is reused when these match.
_DATA = ("image_size", "n_train", "n_val", "n_test", "epochs", "lr")
_ALIGN = ("n_align", "verdict_accuracy", "lambda_grid", "soft_masks")
RELEVANT = {
    "original": (*_DATA, "severities", "corruption_n"),
    "lambda-search": (*_DATA, *_ALIGN),
    "lvlm-va": (*_DATA, *_ALIGN, "lam", "lambda_from", "severities", "corruption_n"),
    "dfr": (*_DATA, "dfr_resamples"),
    "jtt": (*_DATA, "jtt_id_epochs", "jtt_upweights"),
    "subg": _DATA,
}


# settings added later: rows without them had these
_ADDED_LATER = {"soft_masks": False, "lambda_from": "search"}


def matches(row: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether `row` was computed with the settings of `config` that its method depends on."""
    done = row.get("config") or {}
    keys = RELEVANT.get(row.get("method", ""), tuple(config))
    return all(done.get(k, _ADDED_LATER.get(k)) == config.get(k) for k in keys)


class Results:
    """The JSON-lines file: one line per finished cell, appended and flushed at once."""

    def __init__(self, path: Path, config: dict[str, Any]) -> None:
        self.path = path
        self.config = config
        self.rows: list[dict[str, Any]] = []
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    self.rows.append(json.loads(line))

    def find(self, **key: Any) -> dict[str, Any] | None:
        for row in reversed(self.rows):
            if matches(row, self.config) and all(row.get(k) == v for k, v in key.items()):
                return row
        return None

    def add(self, row: dict[str, Any]) -> None:
        row = {**row, "config": self.config}
        self.rows.append(row)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        shown = {k: row[k] for k in ("benchmark", "seed", "method") if k in row}
        figures = {k: round(row[k], 4) for k in ("test_accuracy", "aga", "wga") if k in row}
        print(json.dumps({**shown, **figures, "seconds": row.get("seconds")}), flush=True)


def load_splits(name: str, seed: int, args: argparse.Namespace) -> DatasetSplits:
    return load_dataset(
        name,
        seed=seed,
        image_size=args.image_size,
        n_train=args.n_train,
        n_val=args.n_val,
        n_test=args.n_test,
    )


def fresh(info: Any, seed: int) -> nn.Module:
    """A ResNet-18 for `info`, its initial weights seeded (global RNG untouched)."""
    with seeded(seed):
        return build_model(ARCH, info)


def metrics_row(model: nn.Module, splits: DatasetSplits) -> dict[str, Any]:
    m = evaluate(model, splits.test, splits.info)
    return {
        "test_accuracy": m.test_accuracy,
        "aga": m.aga,
        "wga": m.wga,
        "group_accuracy": m.group_accuracy,
    }


def corruption_row(model: nn.Module, splits: DatasetSplits, args: argparse.Namespace) -> dict:
    subset = splits.test.subset(torch.arange(min(args.corruption_n, len(splits.test))))
    return corruption_accuracy(model, subset, severities=args.severities).to_dict()


def mask_coverage(samples: Sequence[Any], splits: DatasetSplits) -> dict[str, float]:
    """How well the critic's masks match the ground-truth spurious pixels of the align samples."""
    gt = splits.train.spurious_masks
    covered = total = outside = mask_px = 0.0
    for s in samples:
        if s.mask is None:
            continue
        truth = gt[s.index].bool()
        mask = s.mask > 0
        covered += float((mask & truth).sum())
        total += float(truth.sum())
        outside += float((mask & ~truth).sum())
        mask_px += float(mask.sum())
    return {
        "gt_pixels_covered": covered / total if total else float("nan"),
        "mask_pixels_off_gt": outside / mask_px if mask_px else float("nan"),
        "with_spurious": sum(bool(gt[s.index].any()) for s in samples) / max(len(samples), 1),
    }


def run_align(
    model: nn.Module, splits: DatasetSplits, seed: int, lam: float | None,
    args: argparse.Namespace,
) -> Any:
    """`lvlmva.api.align` with the simulated critic: retrain from scratch with the RRR loss.

    `align` re-initialises the model under `torch.manual_seed(seed)`, as `choose_lambda`'s
    `make_model` does, so the first seed's aligned model is the one the lambda search scored.
    """
    critic = CriticSettings(kind="simulated", verdict_accuracy=args.verdict_accuracy, seed=seed)
    return asyncio.run(
        align(
            model,
            splits,
            critic=critic,
            n_align=args.n_align,
            soft_masks=args.soft_masks,
            lam=lam,
            start="retrain",
            epochs=args.epochs,
            lr=args.lr,
            streaming=False,  # critique everything, then train (deterministic)
            seed=seed,
            progress=False,
        )
    )


def choose_lambda(name: str, results: Results, args: argparse.Namespace) -> float | None:
    """The RRR weight for `name`: `--lam`; None for `align`'s own choice per seed; or
    `search_lambda` on the first seed's validation split (WGA), with the masks the simulated
    critic gives for that seed's original model."""
    if args.lam is not None:
        return args.lam
    if args.lambda_from == "align":
        return None
    seed = args.seeds[0]
    done = results.find(benchmark=name, seed=seed, method="lambda-search")
    if done is not None:
        return float(done["lambda"])
    splits = load_splits(name, seed, args)
    model, _ = original_model(name, seed, splits, results, args)
    started = time.perf_counter()
    # A zero-epoch align call gives the simulated critic's masks for this seed (no training).
    critic = CriticSettings(kind="simulated", verdict_accuracy=args.verdict_accuracy, seed=seed)
    probe = asyncio.run(
        align(
            copy.deepcopy(model),
            splits,
            critic=critic,
            n_align=args.n_align,
            soft_masks=args.soft_masks,
            lam=1.0,
            epochs=0,
            streaming=False,
            seed=seed,
            progress=False,
        )
    )
    pool = AlignmentPool()
    for s in probe.samples:
        if s.mask is not None:
            pool.add(
                splits.train.images[s.index : s.index + 1],
                s.mask.unsqueeze(0),
                splits.train.labels[s.index : s.index + 1],
            )
    pool.close()

    def make_model() -> nn.Module:
        m = copy.deepcopy(model)
        reinitialize(m, seed=seed)  # the weights `align(seed=seed)` starts from
        return m

    search = search_lambda(
        make_model,
        splits.train,
        pool,
        splits.val,
        grid=args.lambda_grid,
        criterion="wga",
        info=splits.info,
        epochs=args.epochs,
        lr=args.lr,
        seed=seed,
        progress=False,
    )
    results.add(
        {
            "benchmark": name,
            "seed": seed,
            "method": "lambda-search",
            "lambda": search.best_lambda,
            "val_wga": {f"{k:g}": v for k, v in search.scores.items()},
            "val_accuracy": {f"{k:g}": m.test_accuracy for k, m in search.metrics.items()},
            "seconds": round(time.perf_counter() - started, 1),
        }
    )
    return search.best_lambda


def original_model(
    name: str, seed: int, splits: DatasetSplits, results: Results, args: argparse.Namespace
) -> tuple[nn.Module, bool]:
    """The original model (trained, or loaded when its cell is done); True if trained now."""
    path = Path(args.out) / "models" / f"{name}-seed{seed}-original.pt"
    row = results.find(benchmark=name, seed=seed, method="original")
    if row is not None and path.exists():
        return load_checkpoint(path).model, False
    model = fresh(splits.info, seed)
    started = time.perf_counter()
    train_classifier(model, splits.train, epochs=args.epochs, lr=args.lr, seed=seed, progress=False)
    seconds = time.perf_counter() - started
    save_checkpoint(path, model, ARCH, splits.info)
    results.add(
        {
            "benchmark": name,
            "seed": seed,
            "method": "original",
            **metrics_row(model, splits),
            "corruptions": corruption_row(model, splits, args),
            "seconds": round(seconds, 1),
        }
    )
    return model, True


def run_cell(
    name: str,
    seed: int,
    splits: DatasetSplits,
    lam: float | None,
    results: Results,
    args: argparse.Namespace,
    methods: Sequence[str],
) -> None:
    """`methods` for one benchmark and seed (finished cells skipped)."""
    model, _ = original_model(name, seed, splits, results, args)
    jobs: dict[str, Callable[[], dict[str, Any]]] = {
        "lvlm-va": lambda: aligned_row(model, splits, seed, lam, args),
        "dfr": lambda: baseline_row(
            baselines.dfr(copy.deepcopy(model), splits, n_resamples=args.dfr_resamples, seed=seed),
            splits,
        ),
        "jtt": lambda: baseline_row(
            baselines.jtt(
                lambda: build_model(ARCH, splits.info),
                splits,
                epochs=args.epochs,
                id_epochs=args.jtt_id_epochs,
                upweights=args.jtt_upweights,
                lr=args.lr,
                seed=seed,
                progress=False,
            ),
            splits,
        ),
        "subg": lambda: baseline_row(
            baselines.subg(
                lambda: build_model(ARCH, splits.info),
                splits,
                epochs=args.epochs,
                lr=args.lr,
                seed=seed,
                progress=False,
            ),
            splits,
        ),
    }
    for method in methods:
        if method == "original" or results.find(benchmark=name, seed=seed, method=method):
            continue
        results.add({"benchmark": name, "seed": seed, "method": method, **jobs[method]()})


def aligned_row(
    model: nn.Module, splits: DatasetSplits, seed: int, lam: float | None, args
) -> dict:
    result = run_align(copy.deepcopy(model), splits, seed, lam, args)
    selection = result.selection
    return {
        **metrics_row(result.model, splits),
        "corruptions": corruption_row(result.model, splits, args),
        "lambda": result.lam,
        "chosen": None if selection is None else selection.chosen,
        "verdict_accuracy": result.verdict_accuracy.to_dict(),
        "masks": mask_coverage(result.samples, splits),
        "n_masks": sum(s.mask is not None for s in result.samples),
        "critique_s": round(result.timings.get("critique_s", 0.0), 1),
        "seconds": round(result.timings.get("total_s", 0.0), 1),
    }


def baseline_row(result: baselines.BaselineResult, splits: DatasetSplits) -> dict:
    return {
        **metrics_row(result.model, splits),
        "params": result.params,
        "val_wga": result.val_wga,
        "seconds": round(result.seconds, 1),
    }


# --- markdown ---------------------------------------------------------------------------------


def _fmt(values: Sequence[float]) -> str:
    return mean_std(values).format(3) if values else "n/a"


def _paired(rows: list[dict], method: str, key: str) -> tuple[list[float], list[float]]:
    """Values of `key` for `method` and for the original, over the seeds both have."""
    by = {(r["seed"], r["method"]): r for r in rows}
    seeds = sorted(s for s, m in by if m == method and (s, "original") in by)
    return [by[s, method][key] for s in seeds], [by[s, "original"][key] for s in seeds]


def render(results: Results, args: argparse.Namespace, command: str) -> str:
    """The markdown tables from the result lines that match the current settings."""
    rows = [r for r in results.rows if matches(r, results.config)]
    out = [
        f"Command: `{command}`",
        "",
        f"Settings: ResNet-18 ({args.image_size} px, {args.n_train} train / {args.n_val} val / "
        f"{args.n_test} test images), {args.epochs} epochs for every training run, Adam lr "
        f"{args.lr:g}; LVLM-VA: `lvlmva.api.align`, retrain, {args.n_align} alignment samples, "
        f"{'soft' if args.soft_masks else 'hard (0/1)'} masks, lambda "
        f"{lambda_note(args)}, "
        f"DeepLiftShap + PPEPS-WGM (J = 7), simulated critic (offline simulation answering from "
        f"ground-truth masks, verdict accuracy {args.verdict_accuracy}, not a real model); JTT "
        f"T in {args.jtt_id_epochs}, upweight in {args.jtt_upweights}; DFR "
        f"{args.dfr_resamples} resamples per C.",
        "",
    ]
    for name in args.benchmarks:
        bench = [r for r in rows if r["benchmark"] == name and r["method"] in METHODS]
        if not bench:
            continue
        seeds = sorted({r["seed"] for r in bench})
        ref = REFERENCE[name]
        out += [
            f"### {name} (seeds {', '.join(map(str, seeds))})",
            "",
            f"| method | n | test acc | AGA | WGA | p (WGA > orig.) | p (AGA > orig.) | "
            f"mean AGA diff | train s / run | paper, {ref['label']}: AGA / WGA |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for method in METHODS:
            mine = [r for r in bench if r["method"] == method]
            if not mine:
                continue
            p_wga = p_aga = diff = "—"
            if method != "original":
                a, o = _paired(bench, method, "wga")
                p_wga = f"{wilcoxon(a, o):.3f}" if a else "—"
                a, o = _paired(bench, method, "aga")
                if a:
                    p_aga = f"{wilcoxon(a, o):.3f}"
                    diff = f"{sum(x - y for x, y in zip(a, o, strict=True)) / len(a):+.3f}"
            paper = ref.get(method)
            paper_s = f"{paper[0]:.3f} / {paper[1]:.3f}" if paper else "—"
            label = "LVLM-VA (simulated critic)" if method == "lvlm-va" else method.upper()
            if method == "original":
                label = "original"
            out.append(
                f"| {label} | {len(mine)} | {_fmt([r['test_accuracy'] for r in mine])} | "
                f"{_fmt([r['aga'] for r in mine])} | {_fmt([r['wga'] for r in mine])} | "
                f"{p_wga} | {p_aga} | {diff} | {mean_std([r['seconds'] for r in mine]).mean:.0f} "
                f"| {paper_s} |"
            )
        out.append("")
        out += corruption_table(bench, name)
        out += extra_lines(rows, bench, name)
    return "\n".join(out) + "\n"


def corruption_table(bench: list[dict], name: str) -> list[str]:
    by = {(r["seed"], r["method"]): r for r in bench if "corruptions" in r}
    seeds = sorted(s for s, m in by if m == "lvlm-va" and (s, "original") in by)
    if not seeds:
        return []
    lines = [
        f"Corruptions on {name}: accuracy drop (clean minus corrupted, mean over the severities "
        f"measured), paired seeds {', '.join(map(str, seeds))}:",
        "",
        "| corruption | drop, original | drop, LVLM-VA | reduction (orig. - aligned) | "
        "p (reduction > 0) | paper's reduction (real skin data) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for kind in CORRUPTIONS:
        o = [by[s, "original"]["corruptions"]["mean_drop"][kind] for s in seeds]
        a = [by[s, "lvlm-va"]["corruptions"]["mean_drop"][kind] for s in seeds]
        gain = [x - y for x, y in zip(o, a, strict=True)]
        lines.append(
            f"| {kind} | {_fmt(o)} | {_fmt(a)} | {_fmt(gain)} | {wilcoxon(o, a):.3f} | "
            f"{REFERENCE_CORRUPTION_GAIN[kind]:.3f} |"
        )
    return [*lines, ""]


def extra_lines(rows: list[dict], bench: list[dict], name: str) -> list[str]:
    lines = []
    for r in rows:
        if r["benchmark"] == name and r["method"] == "lambda-search":
            lines.append(
                f"Lambda chosen on the validation split of seed {r['seed']} (WGA): "
                f"{r['lambda']:g}; validation WGA per lambda "
                f"{ {k: round(v, 3) for k, v in r['val_wga'].items()} }, accuracy "
                f"{ {k: round(v, 3) for k, v in r['val_accuracy'].items()} } ({r['seconds']} s)."
            )
    aligned = [r for r in bench if r["method"] == "lvlm-va"]
    if aligned:
        vacc = [r["verdict_accuracy"]["accuracy"] for r in aligned]
        cover = [r["masks"]["gt_pixels_covered"] for r in aligned]
        off = [r["masks"]["mask_pixels_off_gt"] for r in aligned]
        lines.append(
            f"Simulated critic on the alignment samples: measured verdict accuracy {_fmt(vacc)}; "
            f"masks cover {_fmt(cover)} of the ground-truth spurious pixels; "
            f"{_fmt(off)} of the masked pixels lie off them."
        )
    return [*lines, ""] if lines else []


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    out = Path(args.out)
    results = Results(out / "results.jsonl", settings(args))
    command = args.command or "python " + " ".join(sys.argv)
    if not args.render_only:
        print(
            json.dumps(
                {
                    "machine": platform.machine(),
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "settings": results.config,
                }
            ),
            flush=True,
        )
        lams = {}
        for name in args.benchmarks:
            if "lvlm-va" in args.methods:
                lams[name] = choose_lambda(name, results, args)
        # Headline cells first (original, LVLM-VA) over all seeds, then the cheap baselines,
        # then JTT (the costliest), so that a cut-short run still answers the main question.
        for phase in PHASES:
            methods = [m for m in phase if m in args.methods]
            if not methods:
                continue
            for seed in args.seeds:
                for name in args.benchmarks:
                    splits = load_splits(name, seed, args)
                    run_cell(name, seed, splits, lams.get(name), results, args, methods)
    text = render(results, args, command)
    print(text)
    for path in args.write_md:
        write_markdown(Path(path), text)


BEGIN, END = "<!-- bench/groups.py: begin -->", "<!-- bench/groups.py: end -->"


def lambda_note(args: argparse.Namespace) -> str:
    if args.lam is not None:
        return f"fixed at {args.lam:g}"
    if args.lambda_from == "align":
        return "chosen by `align` per seed (its default: grid in units of lambda0, or the original)"
    return f"by `search_lambda` over {args.lambda_grid} on the first seed"


def write_markdown(path: Path, text: str) -> None:
    """Write `text` to `path`, or only between the BEGIN / END markers when the file has them
    (so the surrounding prose of a docs page is kept)."""
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        text = f"{head}{BEGIN}\n{text}{END}{rest.split(END, 1)[1]}"
    path.write_text(text)


if __name__ == "__main__":
    main()
