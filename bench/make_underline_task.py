"""Write a third task of the study's own, from MNIST: grey PNGs, a CSV and a task spec YAML.

    python bench/make_underline_task.py --mnist ../shared/data/mnist --out runs/underline-task
    lvlmva align --dataset image-folder --csv runs/underline-task/images.csv \\
        --spec runs/underline-task/spec.yaml --out runs/underline-run

No project code defines this task: `align` sees only the folder. It was written in the seventh
session, after every default of `align` was fixed, and is run with them unchanged (a check that
they generalise, not a task to tune on). Two MNIST classes, **three** and **five**, 28 x 28 grey,
and in some images a short **underline** (2 px high, 10 to 16 px long, grey level 140 to 255)
one blank row below the digit's lowest stroke, centred under it. Unlike the patch (on the empty
frame) and the stamp (on the border), it lies next to the object: the clusters at the digit's
foot mix stroke and line, the case the ambiguity error model makes hard. In the training and
validation splits it is under 90% of the threes and 10% of the fives; in the test split under
half of each, independent of the class. Groups are class x underline (the validation split's
minority groups have about 40 images each, so `align` checks its models by validation worst-group
accuracy). `--shortcut 0.97` writes a harder version (the line under 97% of the threes and 3%
of the fives; about 12 images per validation minority group, too few for the worst-group
criterion, so `align` falls back to its label-free one). Only digits whose lowest stroke leaves
room for the line are used, in every group, so the line's presence says nothing about where
the digit sits. The mask of an image is its line's pixels (empty without one). Training and
validation images come from MNIST's training file, test images from its test file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_patch_task import class_pools, save_sample  # sibling scripts, not a package
from make_stamp_task import write_listing

SIZE = 28
SPLITS = {"train": 2000, "val": 800, "test": 1000}
SHORTCUT = 0.9  # share of train / val threes with a line, and of fives without one
GAP, HEIGHT = 1, 2  # blank rows between the lowest stroke and the line; the line's height
CLASSES = {"three": 3, "five": 5}
STROKE = 24  # grey level above which a pixel is stroke

SPEC = """\
# Task spec of the study's third own image-folder task (bench/make_underline_task.py).
task: underlined-digits
family: generic
notes: |
  Some images carry a short horizontal line under the digit, drawn by the labelling tool to
  mark an image as checked. It says nothing about which digit it is: any cluster on or
  touching that line is spurious, even where it also covers the foot of the digit. The empty
  background is irrelevant.
classes:
  - name: three
    description: A handwritten 3, two bumps open to the left, one above the other, meeting
      in a point or a short cusp in the middle on the right; no vertical stroke on the left.
  - name: five
    description: A handwritten 5, a flat top bar, a short vertical stroke down on the left,
      and a round belly open to the left at the bottom.
"""


def has_room(image: np.ndarray) -> bool:
    """Whether the line fits below the digit's lowest stroke row."""
    rows = np.flatnonzero((image > STROKE).any(axis=1))
    return len(rows) > 0 and rows[-1] + GAP + HEIGHT < SIZE


def draw_line(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw the underline on `image` (in place); returns its mask."""
    stroke = image > STROKE
    top = np.flatnonzero(stroke.any(axis=1))[-1] + GAP + 1
    cols = np.flatnonzero(stroke.any(axis=0))
    centre = (cols[0] + cols[-1]) / 2 + rng.uniform(-2, 2)
    length = int(rng.integers(10, 17))
    left = int(np.clip(round(centre - length / 2), 0, SIZE - length))
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[top : top + HEIGHT, left : left + length] = True
    image[mask] = np.uint8(rng.integers(140, 256))
    return mask


def write_task(mnist: Path, out: Path, seed: int = 0, shortcut: float = SHORTCUT) -> Path:
    """Write images/, masks/, images.csv and spec.yaml under `out`; returns the CSV path.
    `shortcut`: the share of training and validation threes with a line (and of fives
    without one)."""
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    pools = class_pools(mnist, CLASSES, rng, keep=has_room)
    rows = []
    for split, count in SPLITS.items():
        pool = pools["t10k" if split == "test" else "train"]
        for i in range(count):
            label = ("three", "five")[i % 2]
            image = pool["images"][pool[label].pop()].copy()
            rate = 0.5 if split == "test" else (shortcut if label == "three" else 1 - shortcut)
            mask = draw_line(image, rng) if rng.random() < rate else None
            path, mask_path = save_sample(out, f"{split}-{i:04d}.png", image, mask)
            group = f"{label}/{'line' if mask is not None else 'no line'}"
            rows.append([path, label, group, mask_path, split])
    return write_listing(out, rows, SPEC)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mnist", type=Path, required=True, help="folder with MNIST's IDX gz files")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shortcut", type=float, default=SHORTCUT,
                   help="share of train / val threes with a line, and of fives without one")
    args = p.parse_args()
    csv = write_task(args.mnist, args.out, args.seed, args.shortcut)
    print(f"wrote {csv} and {args.out / 'spec.yaml'}")


if __name__ == "__main__":
    main()
