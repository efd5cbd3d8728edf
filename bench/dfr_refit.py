"""DFR's last step, measured: the head with the tuned C fitted on the half of the validation
split that tuned it (before 2026-12-03) or on the whole split (since; DFR's own evaluation
does so), on the same original models, side by side in one run.

    python bench/groups.py --seeds 0 1 2 3 4 5 6 7 8 9 --methods original dfr --out R
    python bench/dfr_refit.py --models R --seeds 0 1 2 3 4 5 6 7 8 9

C is tuned once per model (`baselines._tune_dfr_c`, the library's own step); both heads average
10 group-balanced L1 logistic fits with that C; test WGA is reported per benchmark.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import torch

from lvlmva.vision import baselines
from lvlmva.vision.checkpoint import load_checkpoint
from lvlmva.vision.metrics import mean_std, wilcoxon

HERE = Path(__file__).resolve().parent


def _groups_bench():
    spec = importlib.util.spec_from_file_location("groups_bench", HERE / "groups.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _head_wga(feats, labels, groups, rows, c, info, test, seed) -> float:
    """Test WGA of the head fitted with C on the validation `rows`, standardised by them."""
    mean, scale = feats[rows].mean(axis=0), feats[rows].std(axis=0) + 1e-6
    generator = torch.Generator().manual_seed(seed + 1)
    w, b, _ = baselines._fit_dfr_head(
        (feats[rows] - mean) / scale, labels[rows], groups[rows], c, info.num_classes, 10,
        generator, seed,
    )  # fmt: skip
    pred = ((test[0] - mean) / scale @ w.T + b).argmax(axis=1)
    return baselines.worst_group_accuracy(pred, test[1], test[2])


def compare(name: str, seed: int, args: argparse.Namespace, groups_bench) -> tuple[float, float]:
    splits = groups_bench.load_splits(name, seed, args)
    model = load_checkpoint(Path(args.models) / "models" / f"{name}-seed{seed}-original.pt").model
    val, test = splits.val, splits.test
    feats = baselines.penultimate_features(model, val.images).numpy()
    labels = val.labels.long().numpy()
    generator = torch.Generator().manual_seed(seed)
    c, _, _, _ = baselines._tune_dfr_c(
        feats, labels, val.groups, baselines.DFR_CS, splits.info.num_classes, 10, generator, seed
    )
    fit_half, _ = baselines._halves(val.groups, torch.Generator().manual_seed(seed))
    test_data = (baselines.penultimate_features(model, test.images).numpy(), test.labels,
                 test.groups)  # fmt: skip
    half = _head_wga(feats, labels, val.groups, fit_half.numpy(), c, splits.info, test_data, seed)
    whole = _head_wga(feats, labels, val.groups, np.arange(len(val)), c, splits.info, test_data,
                      seed)  # fmt: skip
    print(f"{name} seed {seed}: C={c:g} test WGA, head on half {half:.3f}, on all {whole:.3f}")
    return half, whole


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", required=True, help="the --out of a bench/groups.py run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--benchmarks", nargs="+", default=["synth-lesions", "synth-knee"])
    p.add_argument("--image-size", type=int, default=40)
    p.add_argument("--n-train", type=int, default=600)
    p.add_argument("--n-val", type=int, default=400)
    p.add_argument("--n-test", type=int, default=600)
    args = p.parse_args()
    torch.set_num_threads(1)
    groups_bench = _groups_bench()
    for name in args.benchmarks:
        pairs = [compare(name, seed, args, groups_bench) for seed in args.seeds]
        half, whole = zip(*pairs, strict=True)
        a, b = mean_std(half), mean_std(whole)
        p_value = wilcoxon(whole, half)
        print(f"{name}: test WGA, head on half {a.mean:.3f} ± {a.std:.3f}, on all "
              f"{b.mean:.3f} ± {b.std:.3f}, p (all > half) {p_value:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
