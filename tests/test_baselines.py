"""DFR / JTT / SUBG: the pieces, the choice of hyper-parameters, and the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from lvlmva.cli import main
from lvlmva.errors import DataError
from lvlmva.vision import baselines
from lvlmva.vision.datasets.base import DatasetInfo, DatasetSplits, ShortcutDataset
from lvlmva.vision.datasets.synth_lesions import load_synth_lesions

TINY = {"n_train": 48, "n_val": 32, "n_test": 32, "image_size": 32}


@pytest.fixture(scope="module")
def tiny():
    return load_synth_lesions(seed=0, **TINY)


def _mlp(info: DatasetInfo) -> nn.Module:
    from lvlmva.vision.models import build_model

    return build_model("mlp", info)


def _feature_splits(seed: int = 0) -> DatasetSplits:
    """2-pixel 'images': pixel 0 carries the class (noisy), pixel 1 the spurious attribute,
    which agrees with the class 90% of the time in training and 50% elsewhere."""
    gen = torch.Generator().manual_seed(seed)

    def split(n: int, agree: float) -> ShortcutDataset:
        y = torch.arange(n) % 2
        a = torch.where(torch.rand(n, generator=gen) < agree, y, 1 - y)
        core = (2 * y - 1) + 0.6 * torch.randn(n, generator=gen)
        spur = 3 * (2 * a - 1) + 0.1 * torch.randn(n, generator=gen)
        return ShortcutDataset(torch.stack([core, spur], 1).view(n, 1, 1, 2), y, y * 2 + a)

    info = DatasetInfo("toy", ("a", "b"), 1, 1, "toy", (0.0,), (1.0,), ("a/0", "a/1", "b/0", "b/1"))
    return DatasetSplits(info, split(400, 0.9), split(400, 0.5), split(400, 0.5))


def _spurious_model() -> nn.Module:
    """A linear 'network' whose last layer reads only the spurious feature."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2), nn.Linear(2, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(2))
        model[1].bias.zero_()
        model[2].weight.copy_(torch.tensor([[0.0, -1.0], [0.0, 1.0]]))
        model[2].bias.zero_()
    return model


def _wga(model: nn.Module, data: ShortcutDataset) -> float:
    with torch.no_grad():
        pred = model(data.images).argmax(1)
    return baselines.worst_group_accuracy(pred, data.labels, data.groups)


def test_dfr_moves_the_last_layer_onto_the_core_feature():
    splits = _feature_splits()
    model = _spurious_model()
    before = _wga(model, splits.test)
    result = baselines.dfr(model, splits, n_resamples=3, seed=0)
    assert before < 0.2  # the shortcut model fails the groups where the attribute disagrees
    assert _wga(result.model, splits.test) > 0.8
    weight = result.model[2].weight.detach()
    assert weight[:, 0].abs().sum() > weight[:, 1].abs().sum()
    assert result.params["C"] in baselines.DFR_CS
    assert set(result.val_wga) == {f"C={c:g}" for c in baselines.DFR_CS}
    assert result.params["C"] == pytest.approx(
        float(max(result.val_wga, key=result.val_wga.get).split("=")[1])
    )
    # the original model is left alone
    assert torch.equal(model[2].weight, torch.tensor([[0.0, -1.0], [0.0, 1.0]]))


def test_dfr_folds_standardisation_into_the_layer():
    """The new layer applied to raw features equals the fitted head on standardised ones."""
    splits = _feature_splits(1)
    result = baselines.dfr(_spurious_model(), splits, cs=(0.5,), n_resamples=1, seed=0)
    feats = baselines.penultimate_features(result.model, splits.val.images)
    logits = result.model(splits.val.images).detach()
    layer = result.model[2]
    assert torch.allclose(logits, feats @ layer.weight.detach().T + layer.bias.detach(), atol=1e-5)
    # binary heads are symmetric: the two logits are opposite
    assert torch.allclose(logits.sum(1), torch.zeros(len(logits)), atol=1e-4)


def test_dfr_tunes_c_on_half_of_validation_then_fits_the_head_on_all_of_it(monkeypatch):
    splits = _feature_splits()
    seen = []
    fit = baselines._fit_dfr_head

    def recording(features, labels, groups, c, *args):
        seen.append((len(labels), c))
        return fit(features, labels, groups, c, *args)

    monkeypatch.setattr(baselines, "_fit_dfr_head", recording)
    result = baselines.dfr(_spurious_model(), splits, cs=(1.0, 0.1), n_resamples=2, seed=0)
    n_val = len(splits.val)
    assert [n for n, _ in seen[:2]] == [result.params["n_tune"]] * 2
    assert result.params["n_tune"] < n_val
    assert seen[2] == (n_val, result.params["C"]) and result.params["n_fit"] == n_val
    assert result.fits == 6


def test_penultimate_features_are_the_last_linear_input():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(5, 1, 2, 2)
    expected = torch.relu(model[1](x.flatten(1)))
    got = baselines.penultimate_features(model, x, batch_size=2)
    assert torch.allclose(got, expected, atol=1e-6)


def test_balanced_indices_cut_every_group_to_the_smallest():
    groups = torch.tensor([0] * 10 + [1] * 3 + [2] * 7 + [3] * 5)
    idx = baselines.balanced_indices(groups, torch.Generator().manual_seed(0))
    assert torch.bincount(groups[idx]).tolist() == [3, 3, 3, 3]
    assert len(torch.unique(idx)) == len(idx)


def test_jtt_upweights_the_identification_errors(tiny, monkeypatch):
    from lvlmva.vision import training

    seen = []
    real = training.train_classifier

    def spy(model, train, **kwargs):
        seen.append(kwargs.get("sample_weight"))
        return real(model, train, **kwargs)

    monkeypatch.setattr(training, "train_classifier", spy)
    result = baselines.jtt(
        lambda: _mlp(tiny.info),
        tiny,
        epochs=1,
        id_epochs=(1, 2),
        upweights=(3.0, 10.0),
        progress=False,
    )
    # two identification stages (no weights), then one retraining per grid point
    assert seen[:2] == [None, None] and len(seen) == 2 + 4
    for weight in seen[2:]:
        assert set(torch.unique(weight).tolist()) <= {1.0, 3.0, 10.0}
    assert set(result.val_wga) == {"T=1,up=3", "T=1,up=10", "T=2,up=3", "T=2,up=10"}
    assert result.params["T"] in (1, 2) and result.params["upweight"] in (3.0, 10.0)
    key = f"T={result.params['T']},up={result.params['upweight']:g}"
    assert result.val_wga[key] == max(result.val_wga.values())
    assert isinstance(result.model, nn.Module)


def test_subg_trains_on_a_group_balanced_subset(tiny, monkeypatch):
    from lvlmva.vision import training

    sizes = []
    real = training.train_classifier

    def spy(model, train, **kwargs):
        sizes.append(torch.bincount(train.groups, minlength=4).tolist())
        return real(model, train, **kwargs)

    monkeypatch.setattr(training, "train_classifier", spy)
    result = baselines.subg(lambda: _mlp(tiny.info), tiny, epochs=1, progress=False)
    smallest = int(torch.bincount(tiny.train.groups).min())
    assert sizes == [[smallest] * 4]
    assert result.params["per_group"] == smallest


def test_baselines_need_groups(tiny):
    no_groups = DatasetSplits(
        tiny.info, tiny.train, ShortcutDataset(tiny.val.images, tiny.val.labels), tiny.test
    )
    with pytest.raises(DataError, match="group"):
        baselines.dfr(_mlp(tiny.info), no_groups)


def _options():
    return [arg for k, v in TINY.items() for arg in ("--dataset-option", f"{k}={v}")]


@pytest.mark.parametrize("method", ["dfr", "jtt", "subg"])
def test_cli_end_to_end(method, tmp_path):
    out = tmp_path / method
    argv = ["baseline", method, "--dataset", "synth-lesions", *_options(), "--arch", "mlp"]
    argv += ["--epochs", "1", "--jtt-id-epochs", "1", "--jtt-upweights", "4", "--dfr-resamples"]
    argv += ["2", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == method
    for side in ("before", "after"):
        assert set(metrics[side]) >= {"test_accuracy", "group_accuracy", "aga", "wga"}
        assert len(metrics[side]["group_accuracy"]) == 4
    assert (out / "model.pt").exists() and (out / "original.pt").exists()
    if method == "jtt":
        assert metrics["params"]["upweight"] == 4.0 and metrics["params"]["T"] == 1

    # the saved model reloads and reproduces the 'after' accuracy
    from lvlmva.vision.checkpoint import load_checkpoint
    from lvlmva.vision.metrics import evaluate

    reloaded = load_checkpoint(out / "model.pt")
    splits = load_synth_lesions(seed=0, **TINY)
    again = evaluate(reloaded.model, splits.test, splits.info)
    assert again.test_accuracy == pytest.approx(metrics["after"]["test_accuracy"])


def test_cli_dfr_on_a_given_model_with_corruptions(tmp_path):
    first = tmp_path / "first"
    argv = ["baseline", "subg", "--dataset", "synth-lesions", *_options(), "--arch", "mlp"]
    assert main([*argv, "--epochs", "1", "--quiet", "--out", str(first)]) == 0
    out = tmp_path / "dfr"
    argv = ["baseline", "dfr", "--model", str(first / "original.pt"), "--dfr-c", "1,0.1"]
    assert main([*argv, "--dfr-resamples", "2", "--corruptions", "--quiet", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["params"]["C"] in (1.0, 0.1)
    assert set(metrics["corruptions"]["before"]["drop"]) == {"gamma", "defocus", "contrast"}
    assert not (out / "original.pt").exists()  # the given model was used, not retrained
    fits = metrics["convergence"]
    # two C values tuned on half of the validation split, then the chosen one on all of it
    assert fits["fits"] == 6 and 0 <= fits["not_converged"] <= 6 and fits["max_iter"] > 0
    report = (out / "report.html").read_text()
    assert "DFR" in report and "worst-group accuracy" in report and "group:" in report


def test_dfr_counts_convergence_instead_of_warning(capsys):
    import warnings

    from lvlmva.vision.baselines import _fit_counting, _l1_logistic

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 40)) * 100
    y = (x[:, 0] + rng.normal(size=60) > 0).astype(int)
    clf = _l1_logistic(100.0, 3, 0)
    clf.max_iter = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning that escaped would raise here
        _, converged = _fit_counting(clf, x, np.where(y > 0, 2, y))
    assert converged is False


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dfr-c", "a,b"], "--dfr-c"),
        (["--dataset-option", "oops"], "KEY=VALUE"),
        (["--dataset-option", "bandage_rate=[2, 0]"], "bandage_rate"),
        (["--epochs", "0"], "--epochs"),
    ],
)
def test_cli_bad_input_is_one_line(extra, message, tmp_path, capsys):
    argv = ["baseline", "dfr", "--dataset", "synth-lesions", *_options(), *extra]
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
