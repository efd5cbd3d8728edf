"""Training, prediction and the `lvlmva train` command, on decoy-digits and tiny images."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lvlmva.cli import main
from lvlmva.commands.train import metrics_json
from lvlmva.vision.checkpoint import load_checkpoint
from lvlmva.vision.datasets import load_dataset
from lvlmva.vision.datasets.base import DatasetInfo, ShortcutDataset
from lvlmva.vision.metrics import evaluate
from lvlmva.vision.models import build_model
from lvlmva.vision.training import predict_logits, train_classifier


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine is small and shared
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("decoy-digits", seed=0)


def _fresh_mlp(info, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", info)


def _accuracy(model, dataset) -> float:
    predictions = predict_logits(model, dataset.images).argmax(dim=1)
    return float((predictions == dataset.labels).float().mean())


def test_training_learns_and_records_its_history(digits):
    model = _fresh_mlp(digits.info)
    assert _accuracy(model, digits.val) < 0.3
    history = train_classifier(model, digits.train, epochs=3, progress=False)
    assert history.epochs == 3 and len(history.accuracy) == 3 and history.seconds > 0
    assert history.loss[0] > history.loss[1] > history.loss[2]
    assert history.accuracy[-1] > 0.9
    assert _accuracy(model, digits.val) > 0.9  # val carries the same shortcut as train
    assert model.training  # the mode it had


def test_training_is_seeded_and_leaves_the_global_rng_alone(digits):
    base = _fresh_mlp(digits.info)
    runs = [copy.deepcopy(base) for _ in range(3)]
    state = torch.random.get_rng_state()
    for model, seed in zip(runs, (5, 5, 6), strict=True):
        train_classifier(model, digits.train, epochs=1, seed=seed, progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    same = [
        torch.equal(a, b) for a, b in zip(runs[0].parameters(), runs[1].parameters(), strict=True)
    ]
    other = [
        torch.equal(a, b) for a, b in zip(runs[0].parameters(), runs[2].parameters(), strict=True)
    ]
    assert all(same) and not all(other)


def test_uniform_sample_weights_equal_no_weights(digits):
    plain, weighted = _fresh_mlp(digits.info), _fresh_mlp(digits.info)
    train_classifier(plain, digits.train, epochs=1, progress=False)
    weights = np.full(len(digits.train), 3.0)
    train_classifier(weighted, digits.train, epochs=1, sample_weight=weights, progress=False)
    for a, b in zip(plain.parameters(), weighted.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_sample_weights_steer_what_is_learned(digits):
    zero_for_sevens = (digits.train.labels != 7).float()
    model = _fresh_mlp(digits.info)
    train_classifier(model, digits.train, epochs=3, sample_weight=zero_for_sevens, progress=False)
    sevens = digits.val.subset(torch.nonzero(digits.val.labels == 7)[:, 0])
    assert _accuracy(model, sevens) < 0.2  # never rewarded for predicting 7
    others = digits.val.subset(torch.nonzero(digits.val.labels != 7)[:, 0])
    assert _accuracy(model, others) > 0.85


def test_bad_sample_weights_are_rejected(digits):
    model = _fresh_mlp(digits.info)
    n = len(digits.train)
    for weights, match in (
        (np.ones(n - 1), "entries"),
        (-np.ones(n), "non-negative"),
        (np.zeros(n), "sums to zero"),
    ):
        with pytest.raises(ValueError, match=match):
            train_classifier(model, digits.train, epochs=1, sample_weight=weights, progress=False)


def test_predict_logits_is_batched_and_restores_the_mode(digits):
    model = _fresh_mlp(digits.info)
    model.train()
    images = digits.test.images[:50]
    logits = predict_logits(model, images, batch_size=7)
    with torch.no_grad():
        expected = model.eval()(images)
    assert logits.shape == (50, 10) and not logits.requires_grad
    assert torch.allclose(logits, expected, atol=1e-6)
    model.train()
    predict_logits(model, images)
    assert model.training


class _Constant(nn.Module):
    def __init__(self, predicted: int, classes: int = 2) -> None:
        super().__init__()
        self.predicted, self.classes = predicted, classes

    def forward(self, x):
        return nn.functional.one_hot(torch.full((len(x),), self.predicted), self.classes).float()


def test_train_metrics_per_group():
    info = DatasetInfo("toy", ("a", "b"), 1, 2, "t", (0.0,), (1.0,), ("a/x", "a/y", "b/x", "b/y"))
    labels = torch.tensor([0, 0, 0, 1, 1])
    groups = torch.tensor([0, 0, 1, 2, 2])
    data = ShortcutDataset(torch.zeros(5, 1, 2, 2), labels, groups)
    metrics = metrics_json(evaluate(_Constant(0), data, info))
    assert metrics["test_accuracy"] == pytest.approx(0.6)
    assert metrics["group_accuracy"] == {"a/x": 1.0, "a/y": 1.0, "b/x": 0.0}  # b/y: no sample
    assert metrics["aga"] == pytest.approx(2 / 3) and metrics["wga"] == 0.0
    no_groups = metrics_json(evaluate(_Constant(1), ShortcutDataset(data.images, labels), info))
    assert no_groups == {"test_accuracy": pytest.approx(0.4)}


def test_train_command_writes_a_reloadable_model_and_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--epochs", "2", "--seed", "1", "--device", "cpu", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    summary = capsys.readouterr().out.strip()
    assert summary.startswith("decoy-digits mlp: test accuracy") and "\n" not in summary
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"test_accuracy", "group_accuracy", "aga", "wga"}
    assert len(metrics["group_accuracy"]) == 20
    assert metrics["wga"] <= metrics["aga"] and 0.3 < metrics["test_accuracy"] <= 1
    checkpoint = load_checkpoint(out / "model.pt")
    assert checkpoint.arch == "mlp" and checkpoint.info.options == {"seed": 1}
    assert checkpoint.extra["epochs"] == 2 and len(checkpoint.extra["train_loss"]) == 2
    splits = load_dataset(checkpoint.info.name, **checkpoint.info.options)
    again = metrics_json(evaluate(checkpoint.model, splits.test, checkpoint.info))
    for key in ("test_accuracy", "aga", "wga"):
        assert again[key] == pytest.approx(metrics[key])
    assert again["group_accuracy"] == pytest.approx(metrics["group_accuracy"])


def test_train_command_on_an_image_csv(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = ["path,label"]
    for i in range(12):
        array = np.full((9, 9, 3), 40 if i % 2 else 220, dtype=np.uint8)
        array += rng.integers(0, 20, array.shape, dtype=np.uint8)
        Image.fromarray(array).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{'dark' if i % 2 else 'light'}")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    argv = ["train", "--dataset", "image-folder", "--csv", str(tmp_path / "data.csv")]
    argv += ["--image-size", "8", "--epochs", "3", "--quiet", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics) == {"test_accuracy"}
    info = load_checkpoint(tmp_path / "run" / "model.pt").info
    assert (info.channels, info.image_size, info.class_names) == (3, 8, ("dark", "light"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "nope"], "unknown dataset 'nope'"),
        (["--epochs", "0"], "--epochs must be positive"),
        (["--dataset", "decoy-mnist", "--data-dir", "/nonexistent"], "MNIST files missing"),
    ],
)
def test_train_command_errors_are_one_line(tmp_path, capsys, argv, message):
    assert main(["train", *argv, "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("lvlmva train: error:") and "\n" not in err
