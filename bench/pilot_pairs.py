"""Paired tables of a pilot that runs one setting beside the default on the same seeds and
machine (docs/robust.md): per task and critic, the mean metric of each, its share of the true
masks' gain where the rows have them, runs below the original on test, originals kept, and the
variant against the default seed by seed (better / worse, Wilcoxon p), with LVLM calls.

    python bench/pilot_pairs.py docs/data/robust/pilots/auto-confidence.jsonl --field confidence
    python bench/pilot_pairs.py docs/data/robust/pilots/val-neighbours.jsonl --field val_masks
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from scipy.stats import wilcoxon

DEFAULTS = {"confidence": False, "val_masks": "critique"}


def load(path: Path, field: str):
    """{(task, accuracy, error model): {variant: {seed: row}}} and {(task, seed): truth row}."""
    rows, truth = defaultdict(lambda: defaultdict(dict)), {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        cell = row["cell"]
        if cell["critic"] == "ground-truth":
            truth[(cell["task"], cell["seed"])] = row
            continue
        value = cell.get(field, DEFAULTS.get(field))
        rows[(cell["task"], cell["accuracy"], cell["error_model"])][value][cell["seed"]] = row
    return rows, truth


def metric(row: dict, when: str) -> float:
    return row[when][row["metric"]]


def line(key, variants, truth, field: str) -> str:
    default = DEFAULTS.get(field)
    other = next(v for v in variants if v != default)
    seeds = sorted(set(variants[default]) & set(variants[other]))
    parts = []
    for v in (default, other):
        chosen = [variants[v][s] for s in seeds]
        after = [metric(r, "after") for r in chosen]
        before = [metric(r, "before") for r in chosen]
        text = f"{statistics.mean(after):.3f}"
        if all((key[0], s) in truth for s in seeds):
            high = statistics.mean(metric(truth[(key[0], s)], "after") for s in seeds)
            low = statistics.mean(before)
            text += f" ({(statistics.mean(after) - low) / (high - low):.0%})"
        below = sum(a < b - 1e-9 for a, b in zip(after, before, strict=True))
        kept = sum(r["selection"]["kept_original"] for r in chosen)
        calls = statistics.mean(r["lvlm_calls"] for r in chosen)
        parts.append(f"{text}, {below} below, {kept} kept, {calls:.0f} calls")
    diff = [metric(variants[other][s], "after") - metric(variants[default][s], "after")
            for s in seeds]  # fmt: skip
    p = wilcoxon(diff).pvalue if any(abs(d) > 1e-12 for d in diff) else float("nan")
    up, down = sum(d > 1e-9 for d in diff), sum(d < -1e-9 for d in diff)
    task, accuracy, model = key
    return (f"| {task} | {accuracy} {model} | {len(seeds)} | " + " | ".join(parts)
            + f" | {up} / {down}, p = {p:.2f} |")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rows", type=Path)
    p.add_argument("--field", required=True, choices=sorted(DEFAULTS))
    args = p.parse_args()
    rows, truth = load(args.rows, args.field)
    print(f"| task | critic | seeds | default | {args.field} changed | changed vs default: "
          "better / worse |\n|---|---|---|---|---|---|")
    for key in sorted(rows, key=lambda k: (k[0], -k[1], k[2])):
        if len(rows[key]) == 2:
            print(line(key, rows[key], truth, args.field))


if __name__ == "__main__":
    main()
