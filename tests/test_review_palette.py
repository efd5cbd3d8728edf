"""Colour checks of the review app: simulated colour blindness on the palette, colour scales."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from lvlmva.review import panels
from lvlmva.review.palette import closest_pair, proposed_order, to_lab, worst_case
from lvlmva.vision.palette import PALETTE, RELEASE_ORDER


def test_lab_of_white_and_black_and_the_simulations_merge_red_and_green():
    lab = to_lab(np.array([[255, 255, 255], [0, 0, 0]]))
    np.testing.assert_allclose(lab, [[100, 0, 0], [0, 0, 0]], atol=0.1)
    red_green = np.array([PALETTE["red"], PALETTE["green"]])
    normal = np.linalg.norm(np.subtract(*to_lab(red_green)))
    for simulation in ("protanopia", "deuteranopia"):
        assert np.linalg.norm(np.subtract(*to_lab(red_green, simulation))) < normal / 2


def test_the_palette_keeps_the_first_seven_colours_apart_for_colour_blind_readers():
    released = list(RELEASE_ORDER)[:7]
    proposal = proposed_order()
    assert sorted(proposal) == sorted(PALETTE) == sorted(RELEASE_ORDER)
    assert proposal == list(PALETTE)  # the palette is the measured order
    assert proposal[-3:] == ["red", "grey", "white"]
    assert closest_pair(released, "protanopia").pair == ("red", "brown")  # the old weak pair
    assert worst_case(proposal[:7]) > 2 * worst_case(released)
    assert worst_case(proposal[:7]) > 15


def _rgb(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_panels_put_zero_at_the_middle_of_the_scale_and_one_at_its_end():
    attribution = np.array([[-2.0, 0.0, 2.0]])
    panel = panels.attribution_panel(attribution)
    assert (panel.low, panel.high) == (-2.0, 2.0)
    rgb = _rgb(panel.png)[0]
    assert rgb[1].min() > 230  # zero is (near) white on RdBu_r
    assert rgb[0][2] > rgb[0][0] and rgb[2][0] > rgb[2][2]  # negative blue, positive red
    mask = _rgb(panels.mask_panel(np.array([[0.0, 1.0]])).png)[0]
    stops = panels.scale_stops(panels.MASK_SCALE, 2)
    assert [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in mask] == stops
