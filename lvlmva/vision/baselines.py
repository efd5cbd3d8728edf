"""Group-robustness baselines that need group labels: DFR, JTT and SUBG.

- `dfr`: Deep Feature Reweighting (Kirichenko et al. 2023). Penultimate-layer features of the
  original model; an L1-regularised logistic regression (scikit-learn) fitted on group-balanced
  resamples of one half of the validation split, its C chosen by worst-group accuracy on the
  other half; the model's last linear layer is replaced by it.
- `jtt`: Just Train Twice (Liu et al. 2021). Train an identification model for T epochs, take its
  training errors, retrain a fresh model with the errors' loss weighted by `upweight`; T and the
  weight are chosen by validation worst-group accuracy over a small grid.
- `subg`: subsample every group of the training split to the size of the smallest, then train
  (Idrissi et al. 2022).

Each returns a `BaselineResult` with the model and the chosen hyper-parameters.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from lvlmva.errors import ConfigError, DataError
from lvlmva.vision.datasets.base import DatasetSplits, ShortcutDataset
from lvlmva.vision.modes import eval_mode, on_device
from lvlmva.vision.seeding import seeded

if TYPE_CHECKING:
    from typing import Unpack

    from lvlmva.vision.training import TrainOptions

DFR_CS = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)
JTT_ID_EPOCHS = (1, 2)
JTT_UPWEIGHTS = (5.0, 20.0)

ModelFactory = Callable[[], nn.Module]


@dataclass
class BaselineResult:
    """A baseline's model, its chosen hyper-parameters and the validation WGA of every
    candidate setting that was tried (keys like "C=0.1" or "T=1,up=5")."""

    model: nn.Module
    method: str
    params: dict[str, float | int]
    val_wga: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    fits: int = 0  # DFR: logistic regressions fitted
    not_converged: int = 0  # DFR: of those, stopped at max_iter (counted, not warned one by one)


# --- shared helpers ---------------------------------------------------------------------------


def _require_groups(data: ShortcutDataset, split: str) -> Tensor:
    if data.groups is None:
        raise DataError(
            f"the {split} split has no group labels; group-robustness baselines need groups "
            "(class x spurious attribute), e.g. a 'group' column in an image-folder CSV"
        )
    return data.groups.long().cpu()


def worst_group_accuracy(pred: Tensor | np.ndarray, labels: Tensor, groups: Tensor) -> float:
    """The lowest per-group accuracy over the groups present in `groups`."""
    correct = torch.as_tensor(np.asarray(pred)).long().cpu() == labels.long().cpu()
    return min(float(correct[groups == g].float().mean()) for g in torch.unique(groups).tolist())


def _build(model_fn: ModelFactory, seed: int) -> nn.Module:
    """A fresh model from `model_fn`, its initial weights seeded, the global RNG untouched."""
    with seeded(seed):
        return model_fn()


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The name and module of the last `nn.Linear` registered in `model` (its classifier)."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ConfigError("the model has no nn.Linear layer, so DFR has no last layer to retrain")
    return found[-1]


@torch.no_grad()
def penultimate_features(
    model: nn.Module, images: Tensor, *, batch_size: int = 256, device: str | torch.device = "cpu"
) -> Tensor:
    """The inputs of the model's last linear layer for `images`: features [N, D] on the CPU."""
    device = torch.device(device)
    _, layer = last_linear(model)
    captured: list[Tensor] = []
    handle = layer.register_forward_hook(
        lambda _m, inputs, _out: captured.append(inputs[0].detach().flatten(1).float().cpu())
    )
    try:
        with on_device(model, device), eval_mode(model):
            for batch in images.split(batch_size):
                model(batch.to(device))
    finally:
        handle.remove()
    return torch.cat(captured) if captured else torch.empty(0, layer.in_features)


def balanced_indices(groups: Tensor, generator: torch.Generator) -> Tensor:
    """Indices of a random subsample with every present group cut to the smallest one's size."""
    present = torch.unique(groups).tolist()
    smallest = min(int((groups == g).sum()) for g in present)
    chosen = []
    for g in present:
        members = torch.nonzero(groups == g).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:smallest]])
    return torch.cat(chosen).sort().values


def _halves(groups: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Two disjoint halves of the indices, each holding about half of every group."""
    first, second = [], []
    for g in torch.unique(groups).tolist():
        members = torch.nonzero(groups == g).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        cut = (len(members) + 1) // 2
        first.append(members[:cut])
        second.append(members[cut:])
    return torch.cat(first).sort().values, torch.cat(second).sort().values


# --- DFR ----------------------------------------------------------------------------------------


DFR_MAX_ITER = 1000


def _l1_logistic(c: float, num_classes: int, seed: int):
    import sklearn
    from sklearn.linear_model import LogisticRegression

    solver = "liblinear" if num_classes == 2 else "saga"
    major, minor = (int(p) for p in sklearn.__version__.split(".")[:2])
    # scikit-learn 1.8 deprecated `penalty`; l1_ratio=1 is the same pure L1 penalty.
    l1 = {"l1_ratio": 1.0} if (major, minor) >= (1, 8) else {"penalty": "l1"}
    return LogisticRegression(C=c, solver=solver, max_iter=DFR_MAX_ITER, random_state=seed, **l1)


def _fit_counting(clf, x: np.ndarray, y: np.ndarray) -> tuple[object, bool]:
    """`clf.fit(x, y)` and whether it converged; scikit-learn's ConvergenceWarning is caught
    here (the caller reports a count once) and never reaches the user's stderr."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(x, y)
    others = [w for w in caught if not issubclass(w.category, ConvergenceWarning)]
    for w in others:  # anything else is shown as usual
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return clf, len(others) == len(caught)


def _fit_dfr_head(
    features: np.ndarray,
    labels: np.ndarray,
    groups: Tensor,
    c: float,
    num_classes: int,
    n_resamples: int,
    generator: torch.Generator,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Weights [K, D] and biases [K] averaged over `n_resamples` group-balanced fits, and how
    many of the fits did not converge."""
    weights = np.zeros((num_classes, features.shape[1]))
    biases = np.zeros(num_classes)
    not_converged = 0
    for r in range(n_resamples):
        idx = balanced_indices(groups, generator).numpy()
        if len(np.unique(labels[idx])) < 2:
            raise DataError(
                "a group-balanced subsample of the validation split holds one class only; "
                "DFR needs every class in the held-out half of the validation split"
            )
        clf, converged = _fit_counting(
            _l1_logistic(c, num_classes, seed + r), features[idx], labels[idx]
        )
        not_converged += not converged
        w, b = clf.coef_, clf.intercept_
        full_w, full_b = np.zeros_like(weights), np.zeros_like(biases)
        if w.shape[0] == 1:  # binary: one score z for classes[1]; logits (-z/2, +z/2)
            lo, hi = (int(k) for k in clf.classes_)
            full_w[lo], full_w[hi] = -w[0] / 2, w[0] / 2
            full_b[lo], full_b[hi] = -b[0] / 2, b[0] / 2
        else:
            full_w[clf.classes_], full_b[clf.classes_] = w, b
            missing = np.setdiff1d(np.arange(num_classes), clf.classes_)
            full_b[missing] = -1e4  # classes absent from the held-out data are never predicted
        weights += full_w / n_resamples
        biases += full_b / n_resamples
    return weights, biases, not_converged


def _tune_dfr_c(
    feats: np.ndarray,
    labels: np.ndarray,
    groups: Tensor,
    cs: Sequence[float],
    num_classes: int,
    n_resamples: int,
    generator: torch.Generator,
    seed: int,
) -> tuple[float, dict[str, float], int, int]:
    """DFR's C: heads fitted on one half of the validation split (standardised with its
    statistics) and scored by WGA on the other. Returns the best C, the score per C, the size
    of the fitting half and how many fits did not converge."""
    fit_idx, select_idx = _halves(groups, generator)
    mean = feats[fit_idx].mean(axis=0)
    scale = feats[fit_idx].std(axis=0) + 1e-6
    z = (feats - mean) / scale
    scores: dict[str, float] = {}
    best: tuple[float, float] | None = None
    not_converged = 0
    for c in cs:
        w, b, missed = _fit_dfr_head(
            z[fit_idx], labels[fit_idx], groups[fit_idx], float(c), num_classes, n_resamples,
            generator, seed,
        )  # fmt: skip
        not_converged += missed
        pred = (z[select_idx] @ w.T + b).argmax(axis=1)
        wga = worst_group_accuracy(pred, torch.as_tensor(labels[select_idx]), groups[select_idx])
        scores[f"C={c:g}"] = wga
        if best is None or wga > best[0]:
            best = (wga, float(c))
    assert best is not None
    return best[1], scores, len(fit_idx), not_converged


def dfr(
    model: nn.Module,
    splits: DatasetSplits,
    *,
    cs: Sequence[float] = DFR_CS,
    n_resamples: int = 10,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> BaselineResult:
    """Deep Feature Reweighting of a trained `model` (left unchanged; a copy is returned).

    The validation split is cut into two halves with every group in both. Features (inputs of
    the last linear layer) are standardised with the first half's statistics; for each C in
    `cs`, `n_resamples` L1 logistic regressions on group-balanced resamples of the first half are
    averaged and scored by worst-group accuracy on the second half. With the best C, the head
    is fitted again on the whole validation split (standardised with its statistics,
    `n_resamples` group-balanced resamples averaged), as DFR's evaluation does once C is tuned;
    folded back through the standardisation, it replaces the last linear layer.
    """
    started = time.perf_counter()
    if not cs:
        raise ConfigError("DFR needs at least one value of C to try")
    if n_resamples < 1:
        raise ConfigError(f"n_resamples must be at least 1, got {n_resamples}")
    val = splits.val
    groups = _require_groups(val, "validation")
    if len(torch.unique(groups)) < 2 or len(val) < 4:
        raise DataError(
            f"DFR needs a validation split with at least two groups and 4 images; got "
            f"{len(val)} images in {len(torch.unique(groups))} group(s)"
        )
    generator = torch.Generator().manual_seed(seed)
    feats = penultimate_features(model, val.images, batch_size=batch_size, device=device).numpy()
    labels = val.labels.long().cpu().numpy()
    num_classes = splits.info.num_classes
    c_best, scores, n_tune, not_converged = _tune_dfr_c(
        feats, labels, groups, cs, num_classes, n_resamples, generator, seed
    )
    mean, scale = feats.mean(axis=0), feats.std(axis=0) + 1e-6
    w, b, missed = _fit_dfr_head(
        (feats - mean) / scale, labels, groups, c_best, num_classes, n_resamples, generator, seed
    )
    not_converged += missed

    out = copy.deepcopy(model).cpu()
    name, layer = last_linear(out)
    weight = w / scale[None, :]
    bias = b - weight @ mean
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight, dtype=layer.weight.dtype))
        if layer.bias is None:
            raise ConfigError(f"the last linear layer {name!r} has no bias; DFR needs one")
        layer.bias.copy_(torch.as_tensor(bias, dtype=layer.bias.dtype))
    return BaselineResult(
        model=out.to(device),
        method="dfr",
        params={
            "C": c_best, "n_resamples": n_resamples, "n_tune": n_tune, "n_fit": len(val)
        },
        val_wga=scores,
        seconds=time.perf_counter() - started,
        fits=(len(cs) + 1) * n_resamples,
        not_converged=not_converged,
    )


# --- JTT ----------------------------------------------------------------------------------------


def _predict(model: nn.Module, images: Tensor, batch_size: int, device) -> Tensor:
    from lvlmva.vision.training import predict_logits

    return predict_logits(model, images, batch_size=batch_size, device=device).argmax(dim=1)


def jtt(
    model_fn: ModelFactory,
    splits: DatasetSplits,
    *,
    epochs: int = 5,
    id_epochs: Sequence[int] = JTT_ID_EPOCHS,
    upweights: Sequence[float] = JTT_UPWEIGHTS,
    seed: int = 0,
    **train: Unpack[TrainOptions],
) -> BaselineResult:
    """Just Train Twice with fresh models from `model_fn` (called with torch seeded by `seed`);
    `train` (lr, batch_size, device, progress) goes to every `train_classifier` call.

    One identification model is trained up to max(`id_epochs`); at each T in `id_epochs` its
    misclassified training samples form the error set (training continues from there with a new
    Adam state). For every (T, upweight) a fresh model is trained for `epochs` with the errors'
    loss weighted `upweight` times; the pair with the best validation WGA is kept.
    """
    from lvlmva.vision.training import train_classifier

    started = time.perf_counter()
    if not id_epochs or not upweights:
        raise ConfigError("JTT needs at least one identification epoch count and one upweight")
    if any(int(t) < 1 for t in id_epochs) or any(float(u) < 1 for u in upweights):
        raise ConfigError(
            f"JTT identification epochs must be >= 1 and upweights >= 1; got {list(id_epochs)} "
            f"and {list(upweights)}"
        )
    val_groups = _require_groups(splits.val, "validation")
    data = splits.train
    device = train.get("device", "cpu")

    errors: dict[int, Tensor] = {}
    identifier = _build(model_fn, seed)
    done = 0
    for t in sorted({int(t) for t in id_epochs}):
        train_classifier(identifier, data, epochs=t - done, seed=seed + done, **train)
        done = t
        wrong = _predict(identifier, data.images, 256, device) != data.labels.long().cpu()
        errors[t] = wrong
    del identifier

    scores: dict[str, float] = {}
    best: tuple[float, int, float, nn.Module, int] | None = None
    for t, wrong in errors.items():
        for up in upweights:
            weight = 1.0 + (float(up) - 1.0) * wrong.float()
            model = _build(model_fn, seed + 1)
            train_classifier(
                model, data, epochs=epochs, seed=seed + 1, sample_weight=weight, **train
            )
            pred = _predict(model, splits.val.images, 256, device)
            wga = worst_group_accuracy(pred, splits.val.labels, val_groups)
            scores[f"T={t},up={up:g}"] = wga
            if best is None or wga > best[0]:
                best = (wga, t, float(up), model, int(wrong.sum()))
    assert best is not None
    _, t_best, up_best, model, n_errors = best
    return BaselineResult(
        model=model,
        method="jtt",
        params={"T": t_best, "upweight": up_best, "n_errors": n_errors, "epochs": epochs},
        val_wga=scores,
        seconds=time.perf_counter() - started,
    )


# --- SUBG ---------------------------------------------------------------------------------------


def subg(
    model_fn: ModelFactory,
    splits: DatasetSplits,
    *,
    epochs: int = 5,
    seed: int = 0,
    **train: Unpack[TrainOptions],
) -> BaselineResult:
    """Train a fresh model from `model_fn` on the training split with every group subsampled
    (seeded) to the size of the smallest group; `train` (lr, batch_size, device, progress) goes
    to `train_classifier`."""
    from lvlmva.vision.training import train_classifier

    started = time.perf_counter()
    groups = _require_groups(splits.train, "training")
    idx = balanced_indices(groups, torch.Generator().manual_seed(seed))
    model = _build(model_fn, seed + 1)
    train_classifier(model, splits.train.subset(idx), epochs=epochs, seed=seed + 1, **train)
    per_group = len(idx) // len(torch.unique(groups))
    pred = _predict(model, splits.val.images, 256, train.get("device", "cpu"))
    val_groups = _require_groups(splits.val, "validation")
    wga = worst_group_accuracy(pred, splits.val.labels, val_groups)
    return BaselineResult(
        model=model,
        method="subg",
        params={"per_group": per_group, "n_train": len(idx), "epochs": epochs},
        val_wga={"subg": wga},
        seconds=time.perf_counter() - started,
    )
