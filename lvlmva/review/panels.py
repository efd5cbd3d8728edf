"""The colour-scaled panels of the sample view: attribution and mask as small PNGs.

Both are drawn at the image's own resolution (the browser upscales them pixelated).
Attribution: a diverging scale symmetric about 0 (blue negative, white 0, red positive:
matplotlib's "RdBu_r", readable with red-green colour blindness since it runs blue to red);
mask: a sequential scale on [0, 1] ("viridis", perceptually uniform, colour-blind safe).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image

ATTRIBUTION_SCALE = "RdBu_r"
MASK_SCALE = "viridis"


@cache
def _lut(name: str) -> np.ndarray:
    from matplotlib import colormaps

    return np.rint(colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)


def scale_stops(name: str, n: int = 11) -> list[str]:
    """`n` evenly spaced colours of a scale as CSS hex strings (for a colour bar)."""
    lut = _lut(name)
    picks = lut[np.rint(np.linspace(0, 255, n)).astype(int)]
    return [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in picks]


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Panel:
    """PNG bytes and the values at the two ends of its colour bar."""

    png: bytes
    low: float
    high: float


def attribution_panel(attribution: np.ndarray) -> Panel:
    """The attribution [H, W] on the diverging scale, +-max|a| at the ends."""
    a = np.nan_to_num(attribution.astype(np.float64))
    bound = float(np.abs(a).max()) or 1.0
    positions = np.rint((a / bound + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    return Panel(_png(_lut(ATTRIBUTION_SCALE)[positions]), -bound, bound)


def mask_panel(mask: np.ndarray) -> Panel:
    """The mask [H, W] in [0, 1] on the sequential scale (1 = spurious)."""
    positions = np.rint(np.clip(mask.astype(np.float64), 0, 1) * 255).astype(np.uint8)
    return Panel(_png(_lut(MASK_SCALE)[positions]), 0.0, 1.0)
