"""PPEPS-WGM benchmark: batched weighted EM in torch vs sklearn's GaussianMixture image by image.

    python bench/ppeps.py                                  # 1,000 synthetic maps, CPU
    python bench/ppeps.py --source mnist-mlp --data-dir ../shared/data
    python bench/ppeps.py --device cuda

Both estimators fit J components with full covariances, k-means++ starts, the same reg_covar
and exactly `--max-iter` EM iterations (tol=0), then label the points. Ours fits all maps in one
batch with the attributions as sample weights; sklearn has no sample weights, so it gets each
map's kept pixels unweighted (or, with --sklearn-repeat R, every pixel repeated
round(R * weight / max weight) times). sklearn runs with BLAS limited to one thread, its fastest
setting for these small problems; torch gets --threads (default 1, so both use one core).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from lvlmva.vision.ppeps import (
    DEFAULT_THRESHOLD,
    WeightedGaussianMixture,
    pixel_points,
    positive_weights,
    problem_seeds,
    segment,
)


def synthetic_maps(n: int, size: int, seed: int) -> torch.Tensor:
    """Attribution-like maps [n, 1, size, size]: 2-5 positive and 2 negative Gaussian blobs plus
    noise inside a central digit-sized disc, exactly 0 outside it (as DeepLiftShap gives where
    input and baselines are blank); about 40 % of the pixels end up positive, as on MNIST."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.arange(size, dtype=torch.float32)
    rows, cols = grid[:, None], grid[None, :]
    centre = (size - 1) / 2
    disc = ((rows - centre) ** 2 + (cols - centre) ** 2) <= (0.42 * size) ** 2
    maps = torch.zeros(n, size, size)
    for i in range(n):
        for sign, count in ((1.0, int(torch.randint(2, 6, (1,), generator=g))), (-1.0, 2)):
            for _ in range(count):
                cy, cx = (torch.rand(2, generator=g) * 0.5 + 0.25) * size
                spread = (0.5 + 2.5 * torch.rand(1, generator=g)) * size / 28
                amp = sign * (0.2 + torch.rand(1, generator=g))
                maps[i] += amp * torch.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / (2 * spread**2))
    maps += 0.03 * torch.randn(n, size, size, generator=g)
    return (maps * disc).unsqueeze(1)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def mnist_mlp_maps(n: int, data_dir: Path, seed: int, device: torch.device) -> torch.Tensor:
    """DeepLiftShap maps (25 training backgrounds) of n MNIST test digits for their true class,
    from a 784-256-10 MLP trained for one epoch on 20,000 training digits (plain torch+captum)."""
    from captum.attr import DeepLiftShap

    folder = data_dir / "mnist" if (data_dir / "mnist").is_dir() else data_dir
    files = {
        "train_x": "train-images-idx3-ubyte.gz",
        "train_y": "train-labels-idx1-ubyte.gz",
        "test_x": "t10k-images-idx3-ubyte.gz",
        "test_y": "t10k-labels-idx1-ubyte.gz",
    }
    missing = [name for name in files.values() if not (folder / name).exists()]
    if missing:
        raise SystemExit(f"{folder} lacks {', '.join(missing)}; pass --data-dir with MNIST IDX")
    arr = {key: _read_idx(folder / name) for key, name in files.items()}
    torch.manual_seed(seed)
    train_x = torch.from_numpy(arr["train_x"][:20000].copy()).float().div(255).unsqueeze(1)
    train_y = torch.from_numpy(arr["train_y"][:20000].astype(np.int64))
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)
    ).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for idx in torch.randperm(len(train_x)).split(64):
        loss = torch.nn.functional.cross_entropy(
            model(train_x[idx].to(device)), train_y[idx].to(device)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test_x = torch.from_numpy(arr["test_x"][:n].copy()).float().div(255).unsqueeze(1)
    test_y = torch.from_numpy(arr["test_y"][:n].astype(np.int64))
    background = train_x[torch.randperm(len(train_x))[:25]].to(device)
    explainer = DeepLiftShap(model)
    maps = [
        explainer.attribute(x.to(device), baselines=background, target=y.to(device)).detach().cpu()
        for x, y in zip(test_x.split(100), test_y.split(100), strict=True)
    ]
    return torch.cat(maps)


def fit_ours(points, seeds, args, reg: float, device: torch.device) -> tuple[float, np.ndarray]:
    """Batched fit + labels of all problems; wall seconds and the per-problem lower bounds."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    gmm = WeightedGaussianMixture(
        args.clusters,
        max_iter=args.max_iter,
        tol=0.0,
        reg_covar=reg,
        random_state=seeds,
        device=device,
    ).fit(points.X.to(device), sample_weight=points.weights.to(device))
    gmm.predict(points.X.to(device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, gmm.lower_bound_.cpu().numpy()


def fit_sklearn(points, args, reg: float) -> tuple[float, int]:
    """sklearn GaussianMixture fitted image by image; wall seconds and total points fitted."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    X, w, valid = points.X.numpy(), points.weights.numpy(), points.valid.numpy()
    datasets = []
    for b in range(len(X)):
        xb, wb = X[b][valid[b]].astype(np.float64), w[b][valid[b]]
        if args.sklearn_repeat:
            reps = np.rint(args.sklearn_repeat * wb / wb.max()).astype(int)
            xb = np.repeat(xb, reps, axis=0)
        datasets.append(xb)
    total = sum(len(x) for x in datasets)
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        for b, xb in enumerate(datasets):
            gm = GaussianMixture(
                args.clusters,
                covariance_type="full",
                max_iter=args.max_iter,
                tol=0.0,
                reg_covar=reg,
                init_params="k-means++",
                random_state=b,
            ).fit(xb)
            gm.predict(xb)
        return time.perf_counter() - start, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=("synthetic", "mnist-mlp"), default="synthetic")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--n", type=int, default=1000, help="number of attribution maps")
    parser.add_argument("--clusters", type=int, default=7)
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of ours (median)")
    parser.add_argument("--sklearn-repeat", type=int, default=0, metavar="R")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (sklearn's BLAS gets 1)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    t0 = time.perf_counter()
    if args.source == "synthetic":
        maps = synthetic_maps(args.n, 28, args.seed)
    else:
        maps = mnist_mlp_maps(args.n, args.data_dir, args.seed, device)
    make_s = time.perf_counter() - t0
    H, W = maps.shape[-2:]
    reg = 1.0 / (12.0 * max(H, W) ** 2)  # segment()'s default: one pixel's variance

    weights, keep = positive_weights(maps, args.threshold)
    counts = keep.sum(1)
    fit = counts > args.clusters  # maps with fewer kept pixels need no EM
    points = pixel_points(weights[fit], keep[fit], (H, W))
    seeds = problem_seeds(args.seed, points)
    positive_share = float((maps.sum(1) > 0).float().mean())

    load_before = os.getloadavg()[0]
    fit_ours(points, seeds, args, reg, device)  # warm-up
    ours = []
    bounds = None
    for _ in range(args.repeats):
        seconds, bounds = fit_ours(points, seeds, args, reg, device)
        ours.append(seconds)
    sk_seconds, sk_points = fit_sklearn(points, args, reg)
    start = time.perf_counter()
    segment(maps, args.clusters, seed=args.seed, threshold=args.threshold,
            max_iter=args.max_iter, tol=0.0, device=device)  # fmt: skip
    segment_s = time.perf_counter() - start
    load_after = os.getloadavg()[0]

    ours_s = statistics.median(ours)
    result = {
        "bench": "ppeps",
        "source": args.source,
        "maps": int(args.n),
        "fitted_maps": int(fit.sum()),
        "clusters": args.clusters,
        "max_iter": args.max_iter,
        "threshold": args.threshold,
        "kept_pixels_mean": round(float(counts[fit].float().mean()), 1),
        "kept_pixels_max": int(counts.max()),
        "positive_pixel_share": round(positive_share, 3),
        "padded_points_per_map": int(points.X.shape[1]),
        "ours_s": round(ours_s, 3),
        "ours_runs_s": [round(s, 3) for s in ours],
        "segment_s": round(segment_s, 3),
        "sklearn_s": round(sk_seconds, 3),
        "sklearn_points": f"repeat-{args.sklearn_repeat}" if args.sklearn_repeat else "kept",
        "sklearn_points_total": int(sk_points),
        "speedup": round(sk_seconds / ours_s, 1),
        "ours_lower_bound_mean": round(float(np.mean(bounds)), 4),
        "all_finite": bool(np.isfinite(bounds).all()),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_avg_1min": [round(load_before, 2), round(load_after, 2)],
        "maps_s": round(make_s, 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    print(json.dumps(result))
    if not math.isfinite(ours_s):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
