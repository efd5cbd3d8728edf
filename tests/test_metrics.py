"""Metrics: accuracy and groups, verdict accuracy, Wilcoxon, mean +- std."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from lvlmva.errors import DataError
from lvlmva.vision.datasets.base import DatasetInfo, ShortcutDataset
from lvlmva.vision.metrics import (
    evaluate,
    mean_std,
    predict_labels,
    verdict_accuracy,
    wilcoxon,
)


class _Echo(nn.Module):
    """Predicts the class written into pixel (0, 0) of channel 0."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.classes = classes
        self.dummy = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(x[:, 0, 0, 0].round().long(), self.classes).float()


def _dataset(predicted, labels, groups=None) -> ShortcutDataset:
    images = torch.zeros(len(labels), 1, 2, 2)
    images[:, 0, 0, 0] = torch.tensor(predicted, dtype=torch.float32)
    return ShortcutDataset(
        images,
        torch.tensor(labels),
        None if groups is None else torch.tensor(groups),
    )


INFO = DatasetInfo(
    name="toy",
    class_names=("a", "b", "c"),
    channels=1,
    image_size=2,
    task="toy",
    mean=(0.5,),
    std=(0.5,),
    group_names=("g0", "g1", "g2", "g3"),
)


def test_accuracy_without_groups():
    m = evaluate(_Echo(), _dataset([0, 1, 2, 2], [0, 1, 1, 2]), batch_size=3)
    assert m.test_accuracy == pytest.approx(0.75)
    assert m.group_accuracy is None and m.aga is None and m.wga is None and m.n == 4


def test_group_accuracy_aga_wga_skip_empty_groups():
    # group 0: 2/2 right, group 1: 1/3 right, group 3: 0/1 right, group 2: no samples
    data = _dataset([0, 1, 1, 0, 2, 1], [0, 1, 1, 1, 0, 2], groups=[0, 0, 1, 1, 1, 3])
    m = evaluate(_Echo(), data, INFO, batch_size=4)
    assert m.test_accuracy == pytest.approx(3 / 6)
    assert m.group_accuracy == pytest.approx({"g0": 1.0, "g1": 1 / 3, "g3": 0.0})
    assert m.aga == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert m.wga == 0.0
    assert json.loads(json.dumps(m.to_dict()))["group_accuracy"]["g1"] == pytest.approx(1 / 3)
    unnamed = evaluate(_Echo(), data)
    assert set(unnamed.group_accuracy) == {"group 0", "group 1", "group 3"}


def test_evaluate_restores_training_mode_and_rejects_bad_input():
    model = _Echo().train()
    evaluate(model, _dataset([0], [0]))
    assert model.training
    with pytest.raises(DataError, match="empty"):
        evaluate(model, _dataset([], []))
    info = DatasetInfo("toy", ("a", "b", "c"), 1, 2, "toy", (0.5,), (0.5,), ("g0",))
    with pytest.raises(DataError, match="group id 2"):
        evaluate(model, _dataset([0], [0], groups=[2]), info)


class _Moves(_Echo):
    """Records where `.to` sends it, and stays on the CPU (a test machine may have no second
    device): it answers class 0 for inputs on any device."""

    def __init__(self) -> None:
        super().__init__()
        self.moves: list[torch.device] = []

    def to(self, *args, **kwargs):
        self.moves.append(torch.device(args[0]))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(x), self.classes)


def test_predict_labels_moves_the_model_back_to_its_device():
    model = _Moves()
    labels = predict_labels(model, torch.zeros(3, 1, 2, 2), device="meta")
    assert torch.equal(labels, torch.zeros(3, dtype=torch.long))
    assert model.moves == [torch.device("meta"), torch.device("cpu")]
    predict_labels(model, torch.zeros(3, 1, 2, 2), device="cpu")
    assert len(model.moves) == 2  # already there: not moved


# Two 3x3 images; the spurious region is the top-left pixel in each.
LABELS = [
    torch.tensor([[0, 0, -1], [1, 1, -1], [2, -1, -1]]),
    torch.tensor([[1, 0, 0], [1, -1, -1], [-1, -1, -1]]),
]
SPURIOUS = torch.zeros(2, 3, 3, dtype=torch.bool)
SPURIOUS[:, 0, 0] = True
COLORS = [("red", "blue", "green", "pink"), ("red", "blue")]
IDS = [(0, 1, 2, 5), (0, 1)]  # cluster 5 (pink) has no pixels


def test_verdict_accuracy_counts_overlapping_clusters():
    # image 0: red (cluster 0) overlaps -> "no" is right; blue, green are clean
    # image 1: blue (cluster 1) overlaps -> marked "yes", wrong; red clean
    verdicts = [
        {"red": False, "blue": True, "green": False, "pink": True},
        {"red": "yes", "blue": "yes"},
    ]
    va = verdict_accuracy(LABELS, COLORS, IDS, verdicts, SPURIOUS)
    assert (va.n_spurious_clusters, va.n_spurious_no) == (2, 1)
    assert va.accuracy == pytest.approx(0.5)
    assert (va.n_other_clusters, va.n_other_yes) == (3, 2)
    assert va.non_spurious_yes == pytest.approx(2 / 3)
    assert va.n_images == 2


def test_verdict_accuracy_min_overlap_and_stacked_labels():
    verdicts = [dict.fromkeys(COLORS[0], False), dict.fromkeys(COLORS[1], False)]
    stacked = torch.stack(LABELS)
    # cluster 0 of image 0 has 1 of 2 pixels in the region (0.5): counted only below 0.5
    loose = verdict_accuracy(stacked, COLORS, IDS, verdicts, SPURIOUS, min_overlap=0.4)
    strict = verdict_accuracy(stacked, COLORS, IDS, verdicts, SPURIOUS, min_overlap=0.5)
    assert loose.n_spurious_clusters == 2 and strict.n_spurious_clusters == 0
    assert math.isnan(strict.accuracy)
    assert strict.to_dict()["accuracy"] is None
    json.dumps(strict.to_dict(), allow_nan=False)


def test_verdict_accuracy_bad_input():
    verdicts = [dict.fromkeys(COLORS[0], True), {"red": True}]
    with pytest.raises(DataError, match="no verdict for colour 'blue'"):
        verdict_accuracy(LABELS, COLORS, IDS, verdicts, SPURIOUS)
    with pytest.raises(DataError, match="one entry per image"):
        verdict_accuracy(LABELS, COLORS, IDS, verdicts[:1], SPURIOUS)
    with pytest.raises(DataError, match="'maybe'"):
        verdict_accuracy(
            LABELS[:1], COLORS[:1], IDS[:1], [dict.fromkeys(COLORS[0], "maybe")], SPURIOUS[:1]
        )


def test_wilcoxon_one_sided():
    original = [0.50, 0.52, 0.49, 0.55, 0.51, 0.53]
    better = [o + 0.1 + 0.01 * i for i, o in enumerate(original)]
    p = wilcoxon(better, original)
    assert p == pytest.approx(1 / 2**6)  # exact: every one of 6 differences positive
    assert wilcoxon(original, better) > 0.95
    assert wilcoxon(original, original) == 1.0
    assert 0.0 < wilcoxon([0.6], [0.5]) <= 0.5
    with pytest.raises(DataError, match="paired"):
        wilcoxon([0.1, 0.2], [0.1])


def test_mean_std():
    m = mean_std([0.9, 0.95, 1.0])
    assert m.mean == pytest.approx(0.95) and m.std == pytest.approx(0.05)
    assert mean_std([0.5]) == (0.5, 0.0)
    assert m.format(2) == "0.95 ± 0.05"
    with pytest.raises(DataError):
        mean_std([])
