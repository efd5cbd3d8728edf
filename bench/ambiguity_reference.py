"""The reference population of the simulator's ambiguity error model, and its J check.

    python bench/ambiguity_reference.py --write lvlmva/simulation/ambiguity_reference.py
    python bench/ambiguity_reference.py --check --datasets synth-knee decoy-digits synth-lesions \\
        --clusters 3 5 7 9 --json-out runs/robust/jcheck.jsonl

Per dataset and J: the seed-0 splits (synthetic benchmarks at 40 px, 600 / 400 / 600 images, as
`bench/groups.py`), the original model trained normally for 5 epochs (ResNet-18; the reference
MLP on decoy-digits), `--n-align` training samples chosen as `align` chooses them, explained,
segmented with J clusters and rendered by the pipeline's own `explain_segment_render`, and each
cluster map decoded and compared with the ground-truth mask exactly as the simulated LVLM does
(`decode_cluster_map`, `find_spurious` with the model's `NEAR_BAND`). The traits of every
cluster (truly spurious or not, mixedness, size) are what the error model sees.

`--write` stores the histogram of the synth-knee, J = 7 traits (mixedness in 20 bins, log10 of
the size in 16 bins over [1e-4, 1]) as a Python module: the fixed population the ambiguity
model's intercepts are calibrated on. `--check` prints the verdict accuracy the ambiguity model
gives on spurious and other clusters for each dataset and J at the configured accuracy (its
expected value, no sampling): the J ablation's direction (lower at J = 3) is checked there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from lvlmva.pipeline.align import choose_alignment_indices
from lvlmva.pipeline.explain import explain_segment_render
from lvlmva.pipeline.options import CritiqueOptions
from lvlmva.simulation.clustermap import find_spurious
from lvlmva.simulation.error_models import NEAR_BAND, ClusterTraits, build_error_model
from lvlmva.vision.datasets import load_dataset
from lvlmva.vision.models import build_model
from lvlmva.vision.render import PALETTE, decode_cluster_map
from lvlmva.vision.training import train_classifier

SYNTHETIC = {"image_size": 40, "n_train": 600, "n_val": 400, "n_test": 600}
MIX_BINS = 20
SIZE_BINS = 16  # log10 size in [-4, 0]


def dataset_and_model(name: str, seed: int, data_dir: str | None):
    options = SYNTHETIC if name.startswith("synth-") else {}
    splits = load_dataset(name, data_dir=data_dir, seed=seed, **options)
    arch = "resnet18" if name.startswith("synth-") else "mlp"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(arch, splits.info)
    train_classifier(model, splits.train, epochs=5, seed=seed, progress=False)
    return splits, model.eval()


def cluster_traits(splits, model, n_align: int, n_clusters: int, seed: int) -> list[ClusterTraits]:
    """The traits of every cluster of `n_align` alignment samples, as the simulator sees them."""
    indices = choose_alignment_indices(len(splits.train), n_align, seed)
    options = CritiqueOptions(n_align=n_align, n_clusters=n_clusters)
    traits = []
    for start in range(0, len(indices), options.explain_batch):
        batch = indices[start : start + options.explain_batch]
        rendered = explain_segment_render(
            model, splits.train, batch, options, seed=seed, device=torch.device("cpu")
        )
        for sample in rendered:
            decoded = decode_cluster_map(sample.images.clusters, PALETTE)
            mask = splits.train.spurious_masks[sample.index].numpy()
            area = decoded.labels.size
            for finding in find_spurious(decoded, mask, band=NEAR_BAND):
                traits.append(ClusterTraits.of(finding, area))
    return traits


def histogram(traits: list[ClusterTraits], spurious: bool) -> list[tuple[float, float, int]]:
    """(mixedness bin centre, log10-size bin centre, count) cells of one kind of cluster."""
    import math

    cells: Counter[tuple[int, int]] = Counter()
    for t in traits:
        if t.spurious != spurious:
            continue
        m = min(MIX_BINS - 1, int(t.mixedness * MIX_BINS))
        s = min(SIZE_BINS - 1, max(0, int((math.log10(max(t.size, 1e-6)) + 4.0) / 4.0 * SIZE_BINS)))
        cells[(m, s)] += 1
    return [
        (round((m + 0.5) / MIX_BINS, 4), round(-4.0 + (s + 0.5) * 4.0 / SIZE_BINS, 4), n)
        for (m, s), n in sorted(cells.items())
    ]


def write_reference(path: Path, traits: list[ClusterTraits], command: str) -> None:
    spurious, other = histogram(traits, True), histogram(traits, False)
    lines = [
        '"""The fixed reference population of the ambiguity error model (generated, do not edit).',
        "",
        "Traits of every cluster of 200 synth-knee alignment samples (seed 0, 40 px, ResNet-18",
        "trained 5 epochs, DeepLiftShap, PPEPS-WGM with J = 7, rendered at 336 px) as the",
        "simulated LVLM sees them, binned as (mixedness, log10 of the size, count). Written by",
        f"``{command}``.",
        '"""',
        "",
        f'NAME = "synth-knee-j7-s0-{len(spurious)}x{len(other)}"',
        "",
        "SPURIOUS = (",
        *(f"    {cell!r}," for cell in spurious),
        ")",
        "",
        "OTHER = (",
        *(f"    {cell!r}," for cell in other),
        ")",
        "",
    ]
    path.write_text("\n".join(lines))


def check(traits: list[ClusterTraits], accuracy: float) -> dict[str, float]:
    """Expected verdict accuracy (spurious, other) of the ambiguity model on `traits`."""
    model = build_error_model("ambiguity", accuracy, accuracy)
    out = {}
    for kind, spurious in (("spurious", True), ("other", False)):
        chosen = [t for t in traits if t.spurious == spurious]
        errors = [model.error_probability(t) for t in chosen]
        out[kind] = round(1.0 - sum(errors) / max(1, len(errors)), 4)
        out[f"n_{kind}"] = len(chosen)
        out[f"mixedness_{kind}"] = round(sum(t.mixedness for t in chosen) / max(1, len(chosen)), 4)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", type=Path, help="write the synth-knee J = 7 reference module here")
    p.add_argument("--check", action="store_true", help="expected accuracy per dataset and J")
    p.add_argument("--datasets", nargs="+", default=["synth-knee"])
    p.add_argument("--clusters", type=int, nargs="+", default=[7])
    p.add_argument("--n-align", type=int, default=200)
    p.add_argument("--accuracy", type=float, default=0.87)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    given = sys.argv[1:] if argv is None else argv
    command = "python bench/ambiguity_reference.py " + " ".join(given)
    if args.write is not None:
        splits, model = dataset_and_model("synth-knee", 0, args.data_dir)
        write_reference(args.write, cluster_traits(splits, model, 200, 7, 0), command)
        print(f"wrote {args.write}")
    if not args.check:
        return
    for name in args.datasets:
        splits, model = dataset_and_model(name, args.seed, args.data_dir)
        for j in args.clusters:
            started = time.perf_counter()
            traits = cluster_traits(splits, model, args.n_align, j, args.seed)
            row = {
                "dataset": name,
                "clusters": j,
                "seed": args.seed,
                "configured": args.accuracy,
                "error_model": "ambiguity",
                **check(traits, args.accuracy),
                "seconds": round(time.perf_counter() - started, 1),
            }
            print(json.dumps(row), flush=True)
            if args.json_out is not None:
                args.json_out.parent.mkdir(parents=True, exist_ok=True)
                with args.json_out.open("a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
