"""What `detail` costs and what the Critic then sees, per image size (the `--detail fit` default).

    python bench/detail.py --json

Cost: image tokens per image for each model family at `low` and `high`
(`lvlmva.engine.model_params`, the vision guide's rules). Seen: the low-detail version of an
image is at most 512 x 512 px (the vision guide), so an image at most that large reaches the
model whole; a larger one is scaled down. For cluster maps like the ones the Critic reads (a
28 x 28 grid of `--clusters` Voronoi cells in the renderer's palette, upscaled nearest-neighbour
to the image size, as `lvlmva.vision.render` does), this scales each image down to fit
512 x 512 (bicubic, PIL) and decodes it with the simulated Critic's own reader
(`decode_cluster_map`), counting the pixels still read as their cluster (after scaling the
labels the same way, nearest) and the clusters of fewer than 1% of the pixels lost altogether.
"""

from __future__ import annotations

import argparse
import io
import json

import numpy as np
from PIL import Image

from lvlmva.engine.cost import estimate_image_tokens
from lvlmva.vision.render import PALETTE, decode_cluster_map

GRID = 28
LOW_SIDE = 512
MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-5", "gpt-5-mini", "o3")


def cluster_map(seed: int, clusters: int, size: int) -> tuple[np.ndarray, bytes]:
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0, GRID, (clusters, 2))
    rows, cols = np.mgrid[0:GRID, 0:GRID]
    d = (rows[..., None] - centers[:, 0]) ** 2 + (cols[..., None] - centers[:, 1]) ** 2
    labels = d.argmin(axis=2)
    rgb = np.array([PALETTE[c] for c in tuple(PALETTE)[:clusters]], dtype=np.uint8)[labels]
    big = Image.fromarray(rgb).resize((size, size), Image.NEAREST)
    label_img = Image.fromarray(labels.astype(np.uint8)).resize((size, size), Image.NEAREST)
    out = io.BytesIO()
    big.save(out, format="PNG")
    return np.asarray(label_img), out.getvalue()


def seen_at_low(labels: np.ndarray, png: bytes, clusters: int) -> tuple[float, int]:
    """(share of pixels read as their own cluster, small clusters lost) at low detail."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    side = max(image.size)
    if side > LOW_SIDE:
        scale = LOW_SIDE / side
        shape = (round(image.width * scale), round(image.height * scale))
        image = image.resize(shape, Image.BICUBIC)
        labels = np.asarray(Image.fromarray(labels).resize(shape, Image.NEAREST))
    out = io.BytesIO()
    image.save(out, format="PNG")
    decoded = decode_cluster_map(out.getvalue(), PALETTE).labels
    agree = float((decoded == labels).mean())
    names = tuple(PALETTE)[:clusters]
    counts = np.bincount(labels.ravel(), minlength=clusters)
    seen = set(decode_cluster_map(out.getvalue(), PALETTE).present)
    small_lost = sum(
        1 for k in range(clusters) if 0 < counts[k] < 0.01 * labels.size and names[k] not in seen
    )
    return agree, small_lost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="224,336,512,768,1024")
    parser.add_argument("--clusters", type=int, default=7)
    parser.add_argument("--maps", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        agree, lost = [], 0
        for seed in range(args.maps):
            labels, png = cluster_map(seed, args.clusters, size)
            a, small = seen_at_low(labels, png, args.clusters)
            agree.append(a)
            lost += small
        tokens = {
            m: {d: estimate_image_tokens(size, size, model=m, detail=d) for d in ("low", "high")}
            for m in MODELS
        }
        rows.append({
            "size": size,
            "low_pixels_read_right": round(float(np.mean(agree)), 4),
            "low_pixels_read_right_worst": round(float(np.min(agree)), 4),
            "low_small_clusters_lost": lost,
            "image_tokens": tokens,
        })  # fmt: skip
    if args.json:
        print(json.dumps({"maps": args.maps, "clusters": args.clusters, "rows": rows}))
        return
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
