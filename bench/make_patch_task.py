"""Write a second task of the study's own, from MNIST: grey PNGs, a CSV and a task spec YAML.

    python bench/make_patch_task.py --mnist ../shared/data/mnist --out runs/patch-task
    lvlmva align --dataset image-folder --csv runs/patch-task/images.csv \\
        --spec runs/patch-task/spec.yaml --image-size 28 --out runs/patch-run

No project code defines this task: `align` sees only the folder. It was written after every
default of `align` was fixed and is run with them unchanged (a check that they generalise, not
a task to tune on). Two MNIST classes, **four** and **nine** (a pair an MLP confuses), each
28 x 28 grey image as MNIST has it, and in some images a small **checkerboard patch** (4 x 4 px
of alternating light and dark squares of 2 px) at a random place on the background (it never
touches the digit's stroke) within 5 px of an edge, anywhere along the frame. In the training
and validation splits it is on 98% of the fours and 2% of the nines (the shortcut); in the test
split on half of each, independent of the class. Groups are class x patch; the validation
split's minority groups (about 8 images each) are too small to score, so `align` checks its
models the group-free way. A first version (the patch anywhere on the background, on 90% /
10%) was not a shortcut task: the original MLP ignored the patch (test WGA 0.94), so it
tested nothing and was changed before any study run. The mask of an image is its patch's
pixels (empty without a patch). Training and validation images come from MNIST's training
file, test images from its test file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_stamp_task import write_listing  # a sibling script, not a package

SIZE = 28
PATCH = 4
SPLITS = {"train": 2000, "val": 800, "test": 1000}
SHORTCUT = 0.98  # share of train / val fours with a patch, and of nines without one
FRAME = 5  # the patch lies within this many pixels of an edge (MNIST's digits do not reach it)
CLASSES = {"four": 4, "nine": 9}

SPEC = """\
# Task spec of the study's second own image-folder task (bench/make_patch_task.py).
task: patched-digits
family: generic
notes: |
  Some images carry a small checkerboard patch, a square of alternating light and dark
  squares, somewhere on the black background. It is a scanner artefact, unrelated to the
  digit: any cluster on or touching the patch is spurious. The empty background is irrelevant.
classes:
  - name: four
    description: A handwritten 4, an open or closed top made of a vertical stroke and a slanted
      or vertical stroke joined by a horizontal bar, with a long stem going below the bar.
  - name: nine
    description: A handwritten 9, a closed round loop at the top with a single stem going down
      from its right side, straight or curved; no horizontal bar.
"""


def read_mnist(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 28, 28] uint8 and labels [N] of MNIST's `prefix` ("train" or "t10k")."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lvlmva.vision.datasets.mnist_idx import read_idx  # an IDX file reader, nothing more

    images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
    return images, labels


def place_patch(image: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """Draw the checkerboard on `image` (in place) where the patch and a 1 px margin around it
    are background; its mask, or None when no such place exists."""
    stroke = np.pad(image > 24, 1)  # a 1 px margin of background around the image too
    window = np.lib.stride_tricks.sliding_window_view(stroke, (PATCH + 2, PATCH + 2))
    free = np.argwhere(~window.any(axis=(2, 3)))  # top-left corners, in image coordinates
    far = SIZE - FRAME
    edge = (free[:, 0] + PATCH <= FRAME) | (free[:, 0] >= far)
    free = free[edge | (free[:, 1] + PATCH <= FRAME) | (free[:, 1] >= far)]
    if len(free) == 0:
        return None
    y, x = free[rng.integers(len(free))]
    yy, xx = np.mgrid[0:PATCH, 0:PATCH]
    light = (yy // 2 + xx // 2) % 2 == 0
    image[y : y + PATCH, x : x + PATCH] = np.where(light, 255, 110).astype(np.uint8)
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[y : y + PATCH, x : x + PATCH] = True
    return mask


def write_task(mnist: Path, out: Path, seed: int = 0) -> Path:
    """Write images/, masks/, images.csv and spec.yaml under `out`; returns the CSV path."""
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    pools = class_pools(mnist, CLASSES, rng)
    rows = []
    for split, count in SPLITS.items():
        source = "t10k" if split == "test" else "train"
        pool = pools[source]
        for i in range(count):
            label = ("four", "nine")[i % 2]
            image = pool["images"][pool[label].pop()].copy()
            rate = 0.5 if split == "test" else (SHORTCUT if label == "four" else 1 - SHORTCUT)
            mask = place_patch(image, rng) if rng.random() < rate else None
            path, mask_path = save_sample(out, f"{split}-{i:04d}.png", image, mask)
            group = f"{label}/{'patch' if mask is not None else 'no patch'}"
            rows.append([path, label, group, mask_path, split])
    return write_listing(out, rows, SPEC)


def class_pools(
    mnist: Path,
    classes: dict[str, int],
    rng: np.random.Generator,
    keep: Callable[[np.ndarray], bool] = lambda image: True,
) -> dict[str, dict]:
    """Per MNIST file ("train", "t10k"): each class's image indices in a random order (those
    `keep` accepts; drawn with `.pop()`) and, under "images", the file's images."""
    pools = {}
    for source in ("train", "t10k"):
        images, labels = read_mnist(mnist, source)
        pools[source] = {
            name: [
                int(i) for i in rng.permutation(np.flatnonzero(labels == digit)) if keep(images[i])
            ]
            for name, digit in classes.items()
        }
        pools[source]["images"] = images
    return pools


def save_sample(
    out: Path, name: str, image: np.ndarray, mask: np.ndarray | None
) -> tuple[str, str]:
    """Save `image` (and `mask`, if any) as PNGs under `out`; their CSV paths ("" for no mask)."""
    Image.fromarray(image).save(out / "images" / name)
    if mask is None:
        return f"images/{name}", ""
    Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / name)
    return f"images/{name}", f"masks/{name}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mnist", type=Path, required=True, help="folder with MNIST's IDX gz files")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(f"wrote {write_task(args.mnist, args.out, args.seed)} and {args.out / 'spec.yaml'}")


if __name__ == "__main__":
    main()
