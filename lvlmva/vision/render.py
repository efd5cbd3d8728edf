"""The three Critic images of a sample (pipeline stage 3), a contact sheet for people, and the
cluster map read back.

Cluster id k is drawn in `PALETTE` entry k (PPEPS-WGM orders ids by cluster weight), on black.
Images are upscaled nearest-neighbour so an LVLM can see small inputs (28 px -> 336 px).
`decode_cluster_map` inverts the cluster map under these conventions (the simulated LVLM reads
the Critic's second image with it). `render_many` renders a batch on a small thread pool: the PNG
encoder (zlib) releases the GIL, so the samples encode in parallel.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from lvlmva.vision.palette import PALETTE  # the order is documented there

BACKGROUND = (0, 0, 0)
_NAMES = tuple(PALETTE)

STRAY_TOLERANCE = 60.0  # RGB distance beyond which a pixel matches no palette colour
MAX_STRAY_FRACTION = 0.05  # more stray pixels than this: the image is not a cluster map
MAX_COLOURS = 4096  # more distinct colours than this: the image is not a cluster map


@dataclass(frozen=True)
class CriticImages:
    """PNG bytes of the original, the cluster map and the overlay; the colour names and ids of
    the clusters present (in cluster-id order); `size` is (height, width) of the PNGs."""

    original: bytes
    clusters: bytes
    overlay: bytes
    colors: tuple[str, ...]
    cluster_ids: tuple[int, ...]
    size: tuple[int, int]


def _as_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _target_hw(h: int, w: int, size: int | None) -> tuple[int, int]:
    """Output (height, width): the longer side becomes `size`, by an integer factor if it can."""
    if size is None:
        return h, w
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    longest = max(h, w)
    if size % longest == 0:
        k = size // longest
        return h * k, w * k
    scale = size / longest
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize_nearest(array: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of [H, W, ...] to `out_hw` (an exact repeat for integer factors):
    output pixel (r, c) takes input pixel (r * H // out_h, c * W // out_w)."""
    h, w = array.shape[:2]
    rows = (np.arange(out_hw[0]) * h) // out_hw[0]
    cols = (np.arange(out_hw[1]) * w) // out_hw[1]
    return array[rows][:, cols]


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _image_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """[C, H, W] in [0, 1] with C = 1 or 3 -> [H, W] (grey) or [H, W, 3] uint8."""
    arr = _as_numpy(image).astype(np.float64)
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise ValueError(f"image must be [C, H, W] with 1 or 3 channels, got {arr.shape}")
    arr = np.rint(np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255).astype(np.uint8)
    return arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)


def original_png(image: torch.Tensor | np.ndarray, *, size: int | None = 336) -> bytes:
    """The Critic's first image alone, byte for byte as `render_critic_images` draws it (what
    the simulated LVLM's oracle is keyed by)."""
    pixels = _image_uint8(image)
    return _png(resize_nearest(pixels, _target_hw(*pixels.shape[:2], size)))


def render_critic_images(
    image: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    *,
    size: int | None = 336,
    alpha: float = 0.5,
) -> CriticImages:
    """The original, the cluster map (clusters in palette colours on black) and the overlay
    (cluster colours blended with weight `alpha` over the original; background pixels keep the
    original), all upscaled nearest-neighbour so the longer side is `size` (None: as is).

    `image` is [C, H, W] in [0, 1]; `labels` is [H, W] with cluster ids and -1 for background.
    """
    pixels = _image_uint8(image)
    lab = _as_numpy(labels).astype(np.int64)
    if lab.shape != pixels.shape[:2]:
        raise ValueError(f"labels {lab.shape} do not match the image's {pixels.shape[:2]}")
    if lab.size and lab.min() < -1:
        raise ValueError(f"cluster labels must be >= -1 (-1 = background), got {lab.min()}")
    ids = tuple(int(k) for k in np.unique(lab[lab >= 0]))
    if ids and ids[-1] >= len(PALETTE):
        raise ValueError(f"cluster id {ids[-1]} has no colour: the palette has {len(PALETTE)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")

    rgb = np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels
    colours = np.array([BACKGROUND, *PALETTE.values()], dtype=np.uint8)
    cluster_map = colours[lab + 1]  # -1 (background) -> black
    foreground = (lab >= 0)[..., None]
    blended = np.rint((1.0 - alpha) * rgb + alpha * cluster_map.astype(np.float64))
    overlay = np.where(foreground, blended.astype(np.uint8), rgb)

    out_hw = _target_hw(*lab.shape, size)
    return CriticImages(
        original=_png(resize_nearest(pixels, out_hw)),
        clusters=_png(resize_nearest(cluster_map, out_hw)),
        overlay=_png(resize_nearest(overlay, out_hw)),
        colors=tuple(_NAMES[k] for k in ids),
        cluster_ids=ids,
        size=out_hw,
    )


RENDER_THREADS = min(8, os.cpu_count() or 1)
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="lvlmva-render")
        return _POOL


def render_many(
    images: Sequence[torch.Tensor | np.ndarray] | torch.Tensor,
    labels: Sequence[torch.Tensor | np.ndarray] | torch.Tensor,
    *,
    size: int | None = 336,
    alpha: float = 0.5,
) -> list[CriticImages]:
    """`render_critic_images` of every (image, labels) pair, in order, on `RENDER_THREADS`
    threads shared by all callers (the same bytes as one by one)."""
    if len(images) != len(labels):
        raise ValueError(f"{len(labels)} label maps for {len(images)} images")
    pairs = list(zip(images, labels, strict=True))
    if len(pairs) <= 1 or RENDER_THREADS == 1:
        return [render_critic_images(i, lab, size=size, alpha=alpha) for i, lab in pairs]
    pool = _pool()
    jobs = [pool.submit(render_critic_images, i, lab, size=size, alpha=alpha) for i, lab in pairs]
    return [job.result() for job in jobs]


@dataclass(frozen=True)
class ClusterMap:
    """A cluster-map image read back. `labels` [H, W] (int64) holds each pixel's cluster id
    (the index of its colour in `names`, as `render_critic_images` draws them) and -1 for the
    black background; `names` is the whole palette in order, `present` the colours found (in
    palette order) and `counts` their pixel counts."""

    labels: np.ndarray
    names: tuple[str, ...]
    present: tuple[str, ...]
    counts: Mapping[str, int]


def _palette_image(refs: Sequence[tuple[int, int, int]]) -> Image.Image:
    flat = [v for rgb in refs for v in rgb]
    flat += [0, 0, 0] * (256 - len(refs))  # unused entries are black (background)
    image = Image.new("P", (1, 1))
    image.putpalette(flat)
    return image


def _read_rgb(png: bytes) -> Image.Image:
    try:
        with Image.open(io.BytesIO(png)) as img:
            img.load()
            return img if img.mode == "RGB" else img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"the cluster map is not a readable image ({exc})") from None


def _check_stray_pixels(rgb: Image.Image, refs: Sequence[tuple[int, int, int]]) -> None:
    """ValueError if `rgb` has over `MAX_COLOURS` colours or over `MAX_STRAY_FRACTION` of its
    pixels farther than `STRAY_TOLERANCE` from every colour of `refs`."""
    found = rgb.getcolors(MAX_COLOURS)
    if found is None:
        raise ValueError(
            f"the image has more than {MAX_COLOURS} distinct colours: it is not a cluster map"
        )
    counts = np.array([c for c, _ in found], dtype=np.int64)
    colours = np.array([rgb_ for _, rgb_ in found], dtype=np.float64)
    distance = np.linalg.norm(colours[:, None, :] - np.array(refs, np.float64)[None], axis=-1)
    stray = int(counts[distance.min(axis=1) > STRAY_TOLERANCE].sum())
    w, h = rgb.size
    if stray > MAX_STRAY_FRACTION * h * w:
        raise ValueError(
            f"{stray / (h * w):.0%} of the pixels match neither black nor a palette colour: "
            "the image does not look like a cluster map"
        )


def decode_cluster_map(
    png: bytes, palette: Mapping[str, tuple[int, int, int]] = PALETTE
) -> ClusterMap:
    """Read a cluster-map image (drawn in `palette` on black) back into cluster ids.

    Every pixel takes the nearest of black and the palette colours (PIL's `quantize` with that
    fixed palette), so resampling and light compression are tolerated. ValueError when the bytes
    are not an image, when it has more than 4096 distinct colours, or when more than 5% of its
    pixels are farther than 60 (RGB distance) from black and every palette colour: it is then
    not a cluster map drawn in this palette.
    """
    if not palette or len(palette) > 255:
        raise ValueError(f"the palette must have 1 to 255 colours, got {len(palette)}")
    rgb = _read_rgb(png)
    names = tuple(palette)
    refs = (BACKGROUND, *(tuple(int(v) for v in palette[n]) for n in names))
    _check_stray_pixels(rgb, refs)
    quantized = rgb.quantize(palette=_palette_image(refs), dither=Image.Dither.NONE)
    codes = np.asarray(quantized, dtype=np.int64)  # 0 = black, k = palette entry k - 1
    codes = np.where(codes < len(refs), codes, 0)  # unused palette entries are black
    per_code = np.bincount(codes.ravel(), minlength=len(refs))
    return ClusterMap(
        labels=codes - 1,
        names=names,
        present=tuple(n for k, n in enumerate(names, start=1) if per_code[k] > 0),
        counts={n: int(per_code[k]) for k, n in enumerate(names, start=1) if per_code[k] > 0},
    )


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and draw.textlength(candidate, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def _thumbnail(png: bytes, thumb: int) -> Image.Image:
    img = Image.open(io.BytesIO(png)).convert("RGB")
    scale = thumb / max(img.size)
    return img.resize(
        (max(1, round(img.width * scale)), max(1, round(img.height * scale))),
        Image.Resampling.NEAREST,
    )


def contact_sheet(
    rows: Sequence[CriticImages],
    captions: Sequence[str],
    path: str | Path,
    *,
    verdicts: Sequence[Mapping[str, bool] | None] | None = None,
    thumb: int = 168,
) -> Path:
    """Write one PNG with a row per sample: its caption, the three Critic images and a colour
    legend (with the verdict "yes"/"no" of each colour when `verdicts` are given)."""
    if not rows:
        raise ValueError("contact_sheet needs at least one row")
    if len(captions) != len(rows):
        raise ValueError(f"{len(captions)} captions for {len(rows)} rows")
    if verdicts is not None and len(verdicts) != len(rows):
        raise ValueError(f"{len(verdicts)} verdict sets for {len(rows)} rows")
    font, small = _font(15), _font(13)
    pad, gap, line_h, swatch = 12, 8, 19, 13
    per_column = max(1, thumb // line_h)
    n_legend_cols = max(1, -(-max(len(r.colors) for r in rows) // per_column))
    legend_w = 120 * n_legend_cols
    width = pad * 2 + 3 * thumb + 3 * gap + legend_w
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = [_wrap(scratch, c, font, width - 2 * pad) for c in captions]
    header_h = line_h + gap
    height = pad + header_h + sum(len(w) * line_h + thumb + 2 * gap for w in wrapped) + pad

    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for k, title in enumerate(("original", "clusters", "overlay", "legend")):
        draw.text((pad + k * (thumb + gap), pad), title, fill=(90, 90, 90), font=small)
    y = pad + header_h
    for i, (row, lines) in enumerate(zip(rows, wrapped, strict=True)):
        if i:
            draw.line((pad, y - gap, width - pad, y - gap), fill=(200, 200, 200))
        for line in lines:
            draw.text((pad, y), line, fill="black", font=font)
            y += line_h
        for k, png in enumerate((row.original, row.clusters, row.overlay)):
            sheet.paste(_thumbnail(png, thumb), (pad + k * (thumb + gap), y))
        row_verdicts = verdicts[i] if verdicts is not None else None
        x0 = pad + 3 * (thumb + gap)
        for j, name in enumerate(row.colors):
            x = x0 + (j // per_column) * 120
            ty = y + (j % per_column) * line_h
            draw.rectangle((x, ty + 2, x + swatch, ty + 2 + swatch), PALETTE[name], "black")
            draw.text((x + swatch + 5, ty), name, fill="black", font=small)
            if row_verdicts is not None and name in row_verdicts:
                yes = bool(row_verdicts[name])
                draw.text(
                    (x + swatch + 62, ty),
                    "yes" if yes else "no",
                    fill=(20, 120, 40) if yes else (190, 30, 30),
                    font=small,
                )
        y += thumb + 2 * gap
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")
    return path
