"""How far the model check's choice is from the best model it could have chosen: for every run,
each candidate's (the original's and every grid member's) test metrics next to its validation
scores, so that the share of the ground-truth gain lost to the masks can be told apart from the
share lost to choosing on a noisy validation score.

    python bench/selection_oracle.py --tasks patch synth-lesions --seeds 0 1 2 3 4 5 6 \\
        --data-dir ../shared/data --out docs/data/robust/oracle.jsonl
    python bench/selection_oracle.py --summary docs/data/robust/oracle.jsonl

Runs `align` with every default as the robust study does (`bench/robust_study.py`: the same
tasks, originals, and cached renders and answers), with the ground-truth masks and with the
**simulated LVLM** (an offline simulation answering from the ground-truth masks at a configured
verdict accuracy; never a real model) at 0.87, both error models. The library is not changed:
the model check is wrapped to record, per candidate,

- ``test``: test accuracy and WGA;
- ``val``: the check's own score (counterfactual accuracy with one donor pairing, or WGA);
- ``val8``: for the counterfactual check, accuracy, mean true-class probability and Brier
  score averaged over 8 donor pairings of the same critiqued images (lower-variance variants of
  the same check, scored here only);
- ``val_hard``: the counterfactual accuracy with the masks made 0/1 (above 0.5) for the swap,
  so that a flagged feature is replaced, not blended (scored here only).

`--accuracy A --confidence --votes K` run the simulated cells at another verdict accuracy or
with a non-default robust mechanism (the rows say which).

`--summary` prints, per task and critic, the mean test metric of the check's choice, of the
variants' choices and of the best candidate on test (the oracle), each as a share of the
ground-truth masks' gain over the original.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import robust_study as study

PAIRINGS = 8
CRITICS = (("ground-truth", None), ("independent", 0.87), ("ambiguity", 0.87))


@torch.no_grad()
def _probabilities(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([F.softmax(model(images[i : i + 512]), 1) for i in range(0, len(images), 512)])


def _scores(model: torch.nn.Module, split, groups: list[int]) -> dict[str, float]:
    """Accuracy, mean true-class probability and 1 - Brier score: over the split, or their
    minimum over `groups`."""
    p = _probabilities(model, split.images)
    y = split.labels
    per_sample = {
        "acc": p.argmax(1).eq(y).float(),
        "ptrue": p.gather(1, y[:, None])[:, 0],
        "brier": 1 - (p - F.one_hot(y, p.shape[1]).float()).pow(2).sum(1),
    }
    if not groups:
        return {k: float(v.mean()) for k, v in per_sample.items()}
    g = split.groups
    return {k: min(float(v[g == i].mean()) for i in groups) for k, v in per_sample.items()}


def install_recorder(state: dict) -> None:
    """Wrap `ModelCheck.select` to record every candidate's metrics into `state`."""
    import lvlmva.pipeline.selection as selection
    from lvlmva.vision.metrics import evaluate

    real = selection.ModelCheck.select

    def select(self, original, members, masks, val_entries, **kw):
        model, chosen = real(self, original, members, masks, val_entries, **kw)
        candidates = {"original": original, **{f"lambda={m.lam:.4g}": m.model for m in members}}
        splits = state["splits"]
        record = {}
        for name, candidate in candidates.items():
            m = evaluate(candidate, splits.test, splits.info)
            record[name] = {"test": {"test_accuracy": m.test_accuracy, "wga": m.wga}}
        if self.criterion[0] == "wga":
            groups = selection.scored_groups(self.val)
            for name, candidate in candidates.items():
                record[name]["val"] = _scores(candidate, self.val, groups)["acc"]
        elif self.criterion[0] == "counterfactual":
            flagged = masks.masks_for(val_entries)
            kept = [(e.record.index, m) for e, m in zip(val_entries, flagged, strict=True)
                    if m is not None]  # fmt: skip
            index, chosen_masks = zip(*kept, strict=True)
            splits8 = [
                selection.counterfactual_split(self.val, index, chosen_masks, self.seed + 1000 * j)
                for j in range(PAIRINGS)
            ]
            hard = [(m > 0.5).to(m.dtype) for m in chosen_masks]
            hard_split = selection.counterfactual_split(self.val, index, hard, self.seed)
            for name, candidate in candidates.items():
                each = [_scores(candidate, s, []) for s in splits8]
                record[name]["val_hard"] = _scores(candidate, hard_split, [])["acc"]
                record[name]["val"] = each[0]["acc"]
                record[name]["val8"] = {k: statistics.mean(e[k] for e in each) for k in each[0]}
        state["candidates"], state["chosen"] = record, chosen.chosen
        return model, chosen

    selection.ModelCheck.select = select


def run(
    tasks: list[str], seeds: list[int], data_dir: str | None, out: Path, mechanism: dict
) -> None:
    state: dict = {}
    install_recorder(state)
    study._memoised_renders()
    def key(name: str, seed: int, critic: str, accuracy: float | None, settings: dict) -> tuple:
        """What makes a row: ground-truth rows do not depend on the critic's settings."""
        if critic == "ground-truth":
            return name, seed, critic
        return name, seed, critic, accuracy, json.dumps(settings, sort_keys=True)

    done = set()
    if out.exists():
        done = {key(r["task"], r["seed"], r["critic"], r["accuracy"], r.get("settings", {}))
                for r in map(json.loads, out.open())}  # fmt: skip
    for name in tasks:
        task = study.TASKS[name]
        for seed in seeds:
            todo = [c for c in CRITICS
                    if key(name, seed, c[0], mechanism["accuracy"], mechanism["settings"])
                    not in done]  # fmt: skip
            if mechanism["accuracy"] != 0.87 or mechanism["settings"]:
                todo = [c for c in todo if c[0] != "ground-truth"]
            if not todo:
                continue
            study._MEMO.clear()
            splits = study.load(task, seed, data_dir)
            model, _ = study.original(task, seed, splits)
            state["splits"] = splits
            for critic, accuracy in todo:
                if critic == "ground-truth":
                    cell = study.Cell(name, seed, "ground-truth")
                else:
                    cell = study.sim(
                        name, seed, mechanism["accuracy"], critic, **mechanism["settings"]
                    )
                study.run_cell(cell, task, splits, model)
                if critic != "ground-truth":
                    accuracy = mechanism["accuracy"]
                row = {"task": name, "seed": seed, "critic": critic, "accuracy": accuracy,
                       "settings": mechanism["settings"],
                       "metric": task.metric, "chosen": state["chosen"],
                       "candidates": state["candidates"]}  # fmt: skip
                out.parent.mkdir(parents=True, exist_ok=True)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(name, seed, critic, state["chosen"], flush=True)


def _choice(candidates: dict, score) -> str:
    """The best member by `score` (ties to the smaller lambda), or the original when it is not
    beaten: the check's rule, without its chance floor."""
    members = [k for k in candidates if k != "original"]
    best = max(members, key=lambda k: (score(candidates[k]), -float(k.split("=")[1])))
    return best if score(candidates[best]) > score(candidates["original"]) else "original"


def _smoothed_choice(candidates: dict) -> str:
    """The member whose validation score averaged with its grid neighbours' is best (ties to
    the smaller lambda); the original when that member's own score does not beat it."""
    members = [k for k in candidates if k != "original"]
    members.sort(key=lambda k: float(k.split("=")[1]))
    raw = [candidates[k]["val"] for k in members]
    smooth = [statistics.mean(raw[max(0, i - 1) : i + 2]) for i in range(len(raw))]
    best = max(range(len(members)), key=lambda i: (smooth[i], -i))
    return members[best] if raw[best] > candidates["original"]["val"] else "original"


def summary(path: Path) -> None:
    rows = [json.loads(line) for line in path.open()]
    rules = {
        "the check (as run)": None,
        "8 pairings, accuracy": lambda c: c.get("val8", {}).get("acc", c["val"]),
        "8 pairings, true-class probability": lambda c: c.get("val8", {}).get("ptrue", c["val"]),
        "scores smoothed over the grid": "smoothed",
        "oracle (best on test)": "oracle",
    }
    for task in dict.fromkeys(r["task"] for r in rows):
        metric = next(r["metric"] for r in rows if r["task"] == task)
        by = {(r["critic"], r["seed"]): r for r in rows if r["task"] == task}
        seeds = sorted({s for c, s in by if all((k, s) in by for k, _ in CRITICS)})
        if not seeds:
            print(f"{task}: no seed with every critic (ground truth included); no summary")
            continue
        print(f"{task} ({len(seeds)} seeds, test {metric})")
        for label, rule in rules.items():
            picked = {}
            for critic, _ in CRITICS:
                values, before = [], []
                for s in seeds:
                    c = by[(critic, s)]["candidates"]
                    if rule is None:
                        name = by[(critic, s)]["chosen"]
                    elif rule == "oracle":
                        name = max(c, key=lambda k: c[k]["test"][metric])
                    elif rule == "smoothed":
                        name = _smoothed_choice(c)
                    else:
                        name = _choice(c, rule)
                    values.append(c[name]["test"][metric])
                    before.append(c["original"]["test"][metric])
                picked[critic] = (statistics.mean(values), statistics.mean(before))
            gt_gain = picked["ground-truth"][0] - picked["ground-truth"][1]
            cells = "; ".join(
                f"{critic} {a:.3f} ({100 * (a - b) / gt_gain:.0f}%)" if gt_gain else critic
                for critic, (a, b) in picked.items()
            )
            print(f"  {label:36s} original {picked['ground-truth'][1]:.3f} | {cells}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["patch", "synth-lesions"])
    p.add_argument("--seeds", type=int, nargs="+", default=list(study.SEEDS))
    p.add_argument("--data-dir")
    p.add_argument("--out", type=Path, default=Path("docs/data/robust/oracle.jsonl"))
    p.add_argument("--summary", type=Path, help="only print the summary of this JSONL")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--accuracy", type=float, default=0.87, help="the simulated critic's")
    p.add_argument("--confidence", action="store_true", help="confidence weights (not default)")
    p.add_argument("--votes", type=int, default=1, help="Critic samples per image")
    args = p.parse_args(argv)
    if args.summary:
        summary(args.summary)
        return
    torch.set_num_threads(args.threads)
    settings = {"confidence": True} if args.confidence else {}
    if args.votes != 1:
        settings["votes"] = args.votes
    run(args.tasks, args.seeds, args.data_dir, args.out,
        {"accuracy": args.accuracy, "settings": settings})  # fmt: skip
    summary(args.out)


if __name__ == "__main__":
    main()
