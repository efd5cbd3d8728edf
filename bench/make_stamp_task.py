"""Write the study's own task as a user would bring it: PNG images, a CSV and a task spec YAML.

    python bench/make_stamp_task.py --out runs/stamp-task
    lvlmva align --dataset image-folder --csv runs/stamp-task/images.csv \\
        --spec runs/stamp-task/spec.yaml --image-size 32 --out runs/stamp-run

No project code defines this task: `align` sees only the folder. Each 32 x 32 RGB image shows a
dark outline shape on textured paper, a **ring** or a **cross** (position, size, stroke width
and rotation drawn at random), and a small round ink **stamp** (radius 2-3 px) somewhere along
the image border. In the training and validation splits the stamp is red on 95% of the rings
and blue on 95% of the crosses (the shortcut); in the test split its colour is drawn at random,
independent of the class. Groups are class x stamp colour; the validation split's minority
groups are too small (about 10 images) to score a worst-group accuracy, so `align` checks its
models the group-free way. The mask of an image is its stamp's pixels.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32
SPLITS = {"train": 2000, "val": 400, "test": 1000}
SHORTCUT = 0.95  # share of train / val images whose stamp colour follows the class
CLASSES = ("ring", "cross")
INKS = {"red": (0.85, 0.12, 0.10), "blue": (0.12, 0.25, 0.85)}
CLASS_INK = {"ring": "red", "cross": "blue"}

SPEC = """\
# Task spec of the study's own image-folder task (bench/make_stamp_task.py).
task: stamped-shapes
family: generic
notes: |
  Some images carry a small round ink stamp (red or blue) near the image border. It is an
  office mark, unrelated to the drawn shape: any cluster on or touching a stamp is spurious.
  The paper texture around the shape is irrelevant too.
classes:
  - name: ring
    description: One closed round outline, an annulus, with an empty centre and no strokes
      crossing it.
  - name: cross
    description: Two straight strokes of similar length crossing near their middles, like a
      plus sign or a tilted X; no closed loop.
"""


def paper(rng: np.random.Generator) -> np.ndarray:
    """Light textured paper [H, W, 3]."""
    base = 0.78 + 0.08 * rng.random()
    noise = rng.normal(0.0, 0.06, (SIZE, SIZE, 1))
    tint = np.array([1.0, 0.98, 0.93])
    return np.clip((base + noise) * tint, 0.0, 1.0)


def shape_mask(label: str, rng: np.random.Generator) -> np.ndarray:
    """Boolean [H, W] stroke pixels of a ring or a cross, placed and sized at random."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    cy, cx = SIZE / 2 + rng.uniform(-6, 6, size=2)
    radius = rng.uniform(4.5, 9.0)
    width = rng.uniform(1.2, 2.4)
    if label == "ring":
        distance = np.hypot(yy - cy, xx - cx)
        return np.abs(distance - radius) <= width / 2
    angle = rng.uniform(0, math.pi / 2)
    u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
    v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
    arm = radius * 1.1
    return ((np.abs(u) <= width / 2) & (np.abs(v) <= arm)) | (
        (np.abs(v) <= width / 2) & (np.abs(u) <= arm)
    )


def stamp_mask(rng: np.random.Generator) -> np.ndarray:
    """Boolean [H, W] pixels of a round stamp centred 2-4 px inside a random border."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    radius = rng.uniform(2.0, 3.0)
    inset = rng.uniform(2.5, 4.0)
    along = rng.uniform(inset, SIZE - inset)
    side = rng.integers(4)
    cy, cx = [(inset, along), (SIZE - inset, along), (along, inset), (along, SIZE - inset)][side]
    return np.hypot(yy - cy, xx - cx) <= radius


def scribbles(rng: np.random.Generator) -> np.ndarray:
    """Boolean [H, W] pixels of one or two short straight pencil strokes anywhere."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    out = np.zeros((SIZE, SIZE), dtype=bool)
    for _ in range(rng.integers(1, 3)):
        (y0, x0), angle = rng.uniform(4, SIZE - 4, size=2), rng.uniform(0, math.pi)
        length = rng.uniform(4.0, 9.0)
        u = (xx - x0) * math.cos(angle) + (yy - y0) * math.sin(angle)
        v = -(xx - x0) * math.sin(angle) + (yy - y0) * math.cos(angle)
        out |= (np.abs(v) <= 0.7) & (np.abs(u) <= length / 2)
    return out


def draw(label: str, ink: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image [H, W, 3] in [0, 1] and its stamp mask."""
    image = paper(rng)
    image[scribbles(rng)] = 0.55 + 0.1 * rng.random()
    stroke = shape_mask(label, rng)
    image[stroke] = 0.45 + 0.15 * rng.random()
    stamp = stamp_mask(rng)
    colour = np.array(INKS[ink]) + rng.normal(0.0, 0.03, 3)
    image[stamp] = np.clip(colour, 0.0, 1.0)
    return image, stamp


def write_task(out: Path, seed: int = 0, sizes: dict[str, int] | None = None) -> Path:
    """Write images/, masks/, images.csv and spec.yaml under `out` (`sizes`: images per split,
    default `SPLITS`); returns the CSV path."""
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for split, count in (sizes or SPLITS).items():
        for i in range(count):
            label = CLASSES[i % 2]
            follows = rng.random() < SHORTCUT if split != "test" else rng.random() < 0.5
            other = "blue" if CLASS_INK[label] == "red" else "red"
            ink = CLASS_INK[label] if follows else other
            image, stamp = draw(label, ink, rng)
            name = f"{split}-{i:04d}.png"
            Image.fromarray((image * 255).round().astype(np.uint8)).save(out / "images" / name)
            Image.fromarray(stamp.astype(np.uint8) * 255).save(out / "masks" / name)
            rows.append([f"images/{name}", label, f"{label}/{ink}", f"masks/{name}", split])
    return write_listing(out, rows, SPEC)


def write_listing(out: Path, rows: list[list[str]], spec: str) -> Path:
    """Write `out`/images.csv (path, label, group, mask_path, split per row) and
    `out`/spec.yaml; returns the CSV path."""
    csv_path = out / "images.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group", "mask_path", "split"])
        writer.writerows(rows)
    (out / "spec.yaml").write_text(spec)
    return csv_path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(f"wrote {write_task(args.out, args.seed)} and {args.out / 'spec.yaml'}")


if __name__ == "__main__":
    main()
