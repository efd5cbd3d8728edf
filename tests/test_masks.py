"""Correction masks: union of the "no" clusters, soft responsibilities, bad verdicts."""

from __future__ import annotations

import numpy as np
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


def test_the_numpy_rule_and_the_torch_wrapper_agree_bit_for_bit():
    from lvlmva.vision.masks import mask_array

    resp = _responsibilities(3)
    verdicts = {"red": False, "blue": True, "green": False, "pink": False}
    for soft in (False, True):
        torch_mask = mask_from_verdicts(LABELS, COLORS, IDS, verdicts, responsibilities=resp,
                                        soft=soft)
        numpy_mask = mask_array(LABELS.numpy(), COLORS, IDS, verdicts,
                                responsibilities=resp.numpy(), soft=soft)
        assert numpy_mask.dtype == np.float32
        assert np.array_equal(torch_mask.numpy(), numpy_mask)


def test_the_run_store_and_the_review_server_never_import_torch(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys, numpy as np\n"
        "from lvlmva.runs import CritiqueRun, RunManifest, RunRecord, SampleArrays\n"
        "import lvlmva.review.app, lvlmva.review.server, lvlmva.commands.review\n"
        "png = bytes.fromhex('89504e470d0a1a0a') + b'x'\n"
        f"run = CritiqueRun.create({str(tmp_path / 'run')!r}, RunManifest(dataset='d', "
        "split='train', class_names=('a', 'b'), masks='hard'))\n"
        "labels = np.array([[0, 1], [1, -1]])\n"
        "run.add(RunRecord(index=0, split='train', label=0, class_name='a', status='ok', "
        "colors=('yellow', 'magenta'), cluster_ids=(0, 1), verdicts={'yellow': True, "
        "'magenta': False}), SampleArrays(images={'original': png}, labels=labels))\n"
        "run.override(0, 'yellow', False)\n"
        "assert run.effective_mask(0).sum() == 3\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
