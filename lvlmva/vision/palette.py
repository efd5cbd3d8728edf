"""The cluster colours, by name, in the order cluster ids take them (torch-free, so the run store
and the review server can name colours without loading the vision stack).

The order is chosen for people and for the Critic (measured in `lvlmva.review.palette`, checked
in tests/test_review_palette.py; figures in docs/review.md):
- the first seven (J = 7, the default cluster count) stay apart under simulated protanopia,
  deuteranopia and tritanopia: smallest CIE76 Delta E 15.5, against 5.3 (red / brown) in the
  release order red, blue, green, yellow, pink, brown, grey, ...;
- red comes late: it sits on red markers, decoys and lesions, where a red cluster would be
  hard to tell from the feature it covers; grey and white come last, they vanish on greyscale
  images (digits, radiographs).
Changing the order changes the colour names the Critic is told, so answers cached under the old
order are not reused (each sample is asked once more).
"""

from __future__ import annotations

PALETTE: dict[str, tuple[int, int, int]] = {
    "yellow": (255, 230, 20),
    "magenta": (255, 0, 255),
    "brown": (130, 70, 20),
    "cyan": (0, 230, 240),
    "orange": (255, 130, 0),
    "pink": (255, 140, 200),
    "purple": (140, 40, 200),
    "green": (30, 160, 50),
    "blue": (30, 90, 240),
    "red": (230, 25, 25),
    "grey": (150, 150, 150),
    "white": (255, 255, 255),
}
"""Ordered colour name -> RGB. Pairwise RGB distance >= 100 and none near black (background)."""

RELEASE_ORDER = ("red", "blue", "green", "yellow", "pink", "brown", "grey", "orange", "purple",
                 "cyan", "white", "magenta")
"""The order of releases up to 0.1.0, kept to measure against."""
