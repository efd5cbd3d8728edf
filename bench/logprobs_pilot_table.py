"""The tables of the logprobs pilot (docs/robust.md, "Confidence from token log-probabilities")
from its rows, all run on one machine:

    python bench/logprobs_pilot_table.py

`docs/data/robust/pilots/logprobs.jsonl`: `robust_study.py --plans logprobs --seeds 0 1` and
`--plans logprobs-confidence --seeds 2 3 4 5 6` per task; `logprobs-controls.jsonl`: `--plans main`
and `--plans confidence-control`, seeds 0-6, per task (the baselines, rerun on the same machine:
the study's own rows come from other machines, whose originals differ in the low bits).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from scipy.stats import wilcoxon

DATA = Path(__file__).resolve().parents[1] / "docs" / "data" / "robust" / "pilots"
TASKS = ("decoy-digits", "stamp")
CRITICS = [(a, e) for a in (0.87, 0.46) for e in ("independent", "ambiguity")]
DEFAULTS = {
    "start": "retrain", "val_samples": None, "masks": "soft", "kernel": "uniform",
    "n_align": None, "clusters": 7, "votes": 1, "neighbours": 10, "systematic": 0.5,
}  # fmt: skip
SIX = ["two-step", "two-step + logprobs", "two-step + logprobs + confidence weights",
       "fused", "fused + logprobs", "fused + logprobs + confidence weights"]  # fmt: skip
SEVEN = ["two-step", "two-step + confidence weights", "two-step + logprobs + confidence weights"]


def variant(cell: dict) -> str | None:
    if any(cell.get(k, d) != d for k, d in DEFAULTS.items()):
        return None
    if cell["critic"] == "ground-truth":
        return "truth"
    name = "fused" if cell.get("fused") else "two-step"
    name += " + logprobs" if cell.get("logprobs") else ""
    return name + (" + confidence weights" if cell.get("confidence") else "")


def load():
    after, before, truth = defaultdict(dict), {}, defaultdict(dict)
    for name in ("logprobs.jsonl", "logprobs-controls.jsonl"):
        for line in (DATA / name).read_text().splitlines():
            row = json.loads(line)
            cell, metric = row["cell"], row["metric"]
            v = variant(cell)
            if v is None:
                continue
            before[(cell["task"], cell["seed"])] = row["before"][metric]
            if v == "truth":
                truth[cell["task"]][cell["seed"]] = row["after"][metric]
            else:
                key = (cell["task"], cell["accuracy"], cell["error_model"], v)
                after[key][cell["seed"]] = row["after"][metric]
    return after, before, truth


def shown(values: list[float], seeds: list[int], task: str, before, low: float, high: float) -> str:
    mean = statistics.mean(values)
    below = sum(v < before[(task, s)] - 1e-9 for v, s in zip(values, seeds, strict=True))
    return f"{mean:.3f} ({(mean - low) / (high - low):.0%})" + (f", {below} below" if below else "")


def main() -> None:
    after, before, truth = load()
    for seeds, columns in (([0, 1], SIX), (list(range(7)), SEVEN)):
        heads = columns + (["logprobs vs agreement: better / worse, p"] if len(seeds) > 2 else [])
        print(f"\nseeds {seeds[0]}-{seeds[-1]}\n| task, critic | " + " | ".join(heads) + " |")
        print("|---|" + "---|" * len(heads))
        for task in TASKS:
            low = statistics.mean(before[(task, s)] for s in seeds)
            high = statistics.mean(truth[task][s] for s in seeds)
            for accuracy, model in CRITICS:
                cells = [[after[(task, accuracy, model, v)][s] for s in seeds] for v in columns]
                text = [shown(c, seeds, task, before, low, high) for c in cells]
                if len(seeds) > 2:  # logprobs against agreement, seed by seed
                    diff = [x - y for x, y in zip(cells[2], cells[1], strict=True)]
                    p = wilcoxon(diff).pvalue if any(abs(d) > 1e-12 for d in diff) else float("nan")
                    up, down = sum(d > 1e-9 for d in diff), sum(d < -1e-9 for d in diff)
                    text.append(f"{up} / {down}, p = {p:.2f}")
                print(f"| {task}, {accuracy} {model} | " + " | ".join(text) + " |")
            print(f"({task}: original {low:.3f}, true masks {high:.3f})")


if __name__ == "__main__":
    main()
