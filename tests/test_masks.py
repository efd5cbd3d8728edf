"""Correction masks: union of the "no" clusters, soft responsibilities, bad verdicts."""

from __future__ import annotations

import pytest
import torch

from lvlmva.vision.masks import mask_from_verdicts

LABELS = torch.tensor(
    [
        [-1, 0, 0, 1],
        [2, 2, 0, 1],
        [-1, -1, 4, 4],
    ]
)
COLORS = ("red", "blue", "green", "pink")  # cluster 3 absent, 4 is pink
IDS = (0, 1, 2, 4)


def _responsibilities(seed: int = 0) -> torch.Tensor:
    logits = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(seed))
    return logits.softmax(dim=0)


def test_mask_is_the_union_of_the_no_clusters():
    verdicts = {"red": True, "blue": False, "green": True, "pink": False}
    mask = mask_from_verdicts(LABELS, COLORS, IDS, verdicts)
    expected = ((LABELS == 1) | (LABELS == 4)).float()
    assert mask.dtype == torch.float32 and torch.equal(mask, expected)


def test_all_yes_gives_an_empty_mask_and_all_no_the_foreground():
    yes = dict.fromkeys(COLORS, True)
    no = dict.fromkeys(COLORS, False)
    assert mask_from_verdicts(LABELS, COLORS, IDS, yes).sum() == 0
    assert torch.equal(mask_from_verdicts(LABELS, COLORS, IDS, no), (LABELS >= 0).float())


def test_soft_mask_sums_the_no_responsibilities_on_the_foreground():
    resp = _responsibilities()
    verdicts = {"red": False, "blue": True, "green": True, "pink": False}
    soft = mask_from_verdicts(LABELS, COLORS, IDS, verdicts, responsibilities=resp, soft=True)
    expected = (resp[0] + resp[4]) * (LABELS >= 0)
    assert torch.allclose(soft, expected)
    assert soft.min() >= 0 and soft.max() <= 1
    assert (soft[LABELS < 0] == 0).all()


def test_soft_mask_is_clipped_to_one():
    resp = torch.full((5, 3, 4), 0.6)  # not normalised: the sum of two is 1.2
    verdicts = {"red": False, "blue": False, "green": True, "pink": True}
    soft = mask_from_verdicts(LABELS, COLORS, IDS, verdicts, responsibilities=resp, soft=True)
    assert torch.equal(soft, (LABELS >= 0).float())


def test_soft_mode_needs_matching_responsibilities():
    verdicts = dict.fromkeys(COLORS, False)
    with pytest.raises(ValueError, match="responsibilities"):
        mask_from_verdicts(LABELS, COLORS, IDS, verdicts, soft=True)
    with pytest.raises(ValueError, match="do not match"):
        mask_from_verdicts(
            LABELS, COLORS, IDS, verdicts, responsibilities=torch.rand(5, 4, 3), soft=True
        )
    with pytest.raises(ValueError, match="outside"):
        mask_from_verdicts(
            LABELS, COLORS, IDS, verdicts, responsibilities=torch.rand(3, 3, 4), soft=True
        )


@pytest.mark.parametrize(
    ("verdicts", "message"),
    [
        ({"red": True, "blue": False, "green": True}, r"missing: \['pink'\]"),
        ({"red": True, "blue": False, "green": True, "pink": True, "cyan": False}, "cyan"),
    ],
)
def test_unknown_or_missing_colours_are_programming_errors(verdicts, message):
    with pytest.raises(ValueError, match=message):
        mask_from_verdicts(LABELS, COLORS, IDS, verdicts)


def test_colours_and_ids_must_pair_up():
    with pytest.raises(ValueError, match="3 colours for 4 cluster ids"):
        mask_from_verdicts(LABELS, COLORS[:3], IDS, dict.fromkeys(COLORS[:3], True))


def test_a_mask_follows_its_own_label_map_and_responsibilities():
    """The pipeline builds one mask per critiqued image: flipping an image's segmentation
    flips its mask, in both modes."""
    resp = _responsibilities(1)
    verdicts = {"red": True, "blue": False, "green": True, "pink": False}
    for soft in (False, True):
        mask = mask_from_verdicts(LABELS, COLORS, IDS, verdicts, responsibilities=resp, soft=soft)
        flipped = mask_from_verdicts(
            LABELS.flip(1), COLORS, IDS, verdicts, responsibilities=resp.flip(2), soft=soft
        )
        assert mask.sum() > 0 and torch.equal(flipped, mask.flip(1))
