"""RRR: the penalty, the streaming alignment pool, the trainer and the lambda search."""

from __future__ import annotations

import copy
import math
import threading
import time

import pytest
import torch
from torch import nn

from lvlmva.errors import ConfigError, DataError
from lvlmva.vision.datasets.base import ShortcutDataset
from lvlmva.vision.metrics import evaluate
from lvlmva.vision.rrr import (
    AlignmentBatch,
    AlignmentPool,
    RRRTrainer,
    StepResult,
    rrr_penalty,
    search_lambda,
)

SIDE = 6


def _decoy_data(n: int, seed: int, correlated: bool) -> ShortcutDataset:
    """Two classes: a noisy 2x2 centre patch is the real signal; pixel (0, 0) is a clean
    decoy equal to the label when `correlated`, random otherwise. Groups: class x decoy."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.rand(n, 1, SIDE, SIDE, generator=g) * 0.2
    signal = (0.35 * y.float() + 0.25 * torch.randn(n, generator=g)).clamp(-0.5, 0.8)
    x[:, 0, 2:4, 2:4] += signal.view(n, 1, 1)
    decoy = y if correlated else torch.randint(0, 2, (n,), generator=g)
    x[:, 0, 0, 0] = decoy.float()
    masks = torch.zeros(n, SIDE, SIDE, dtype=torch.bool)
    masks[:, 0, 0] = True
    return ShortcutDataset(x.clamp(0, 1), y, 2 * y + decoy, masks)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 16), nn.ReLU(), nn.Linear(16, 2))


def _pool(data: ShortcutDataset, n: int, labels: bool = True) -> AlignmentPool:
    pool = AlignmentPool()
    pool.add(data.images[:n], data.spurious_masks[:n], data.labels[:n] if labels else None)
    pool.close()
    return pool


FAST = {"epochs": 3, "train_batch": 64, "lr": 1e-2, "progress": False}
DECOY = {"epochs": 5, "train_batch": 32, "lr": 3e-2, "progress": False}  # plain training: ~0.5


# --- penalty -------------------------------------------------------------------------------


def test_penalty_matches_the_closed_form_of_a_linear_model():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 4))
    x = torch.rand(5, 2, 3, 3)
    masks = torch.rand(5, 3, 3)
    w = model[1].weight  # [K, D]
    p = torch.softmax(model(x), dim=1)  # [B, K]
    # d/dx sum_k log p_k = sum_k w_k - K * sum_k p_k w_k
    grad = (w.sum(0) - 4 * p @ w).view(5, 2, 3, 3)
    expected = ((masks.unsqueeze(1) * grad) ** 2).sum()
    assert torch.allclose(rrr_penalty(model, x, masks), expected, rtol=1e-5)
    per_channel = masks.unsqueeze(1).expand(5, 2, 3, 3)
    assert torch.allclose(rrr_penalty(model, x, per_channel), expected, rtol=1e-5)


def test_penalty_trains_the_parameters_and_vanishes_off_the_mask():
    model = _mlp()
    x = torch.rand(4, 1, SIDE, SIDE)
    assert rrr_penalty(model, x, torch.zeros(4, SIDE, SIDE)).item() == 0.0
    penalty = rrr_penalty(model, x, torch.ones(4, SIDE, SIDE, dtype=torch.bool))
    penalty.backward()
    assert penalty.item() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model[1].parameters())
    assert x.grad is None  # the caller's images are not modified


def test_penalty_rejects_masks_that_do_not_fit():
    with pytest.raises(DataError, match="do not fit"):
        rrr_penalty(_mlp(), torch.rand(2, 1, SIDE, SIDE), torch.ones(2, SIDE, SIDE + 1))


# --- pool ----------------------------------------------------------------------------------


def test_pool_samples_without_replacement_when_large_enough():
    pool = AlignmentPool()
    images = torch.arange(10.0).view(10, 1, 1, 1).expand(10, 1, 2, 2).clone()
    pool.add(images[:6], torch.zeros(6, 2, 2))
    pool.add(images[6:], torch.ones(4, 2, 2, dtype=torch.bool), torch.arange(4))
    assert len(pool) == 10
    got, _ = pool.sample(10, torch.Generator().manual_seed(0))
    assert sorted(got[:, 0, 0, 0].tolist()) == list(range(10))
    # masks and labels stay with their images
    batch = pool.draw(10, torch.Generator().manual_seed(3))
    ids = batch.images[:, 0, 0, 0].long()
    assert torch.equal(batch.masks[:, 0, 0], (ids >= 6).float())
    assert torch.equal(batch.labels[ids >= 6], ids[ids >= 6] - 6)
    assert (batch.labels[ids < 6] < 0).all()
    small, _ = pool.sample(25, torch.Generator().manual_seed(0))  # with replacement
    assert len(small) == 25 and len(set(small[:, 0, 0, 0].tolist())) <= 10
    pool.add(torch.full((1, 1, 2, 2), 10.0), torch.zeros(1, 2, 2))  # later samples are drawn
    grown, _ = pool.sample(11, torch.Generator().manual_seed(0))
    assert sorted(grown[:, 0, 0, 0].tolist()) == list(range(11))


def test_pool_rejects_bad_shapes_and_empty_sampling():
    pool = AlignmentPool()
    with pytest.raises(DataError, match="empty"):
        pool.sample(1)
    with pytest.raises(DataError, match=r"\[n, H, W\]"):
        pool.add(torch.rand(2, 1, 4, 4), torch.ones(2, 4, 5))
    pool.add(torch.rand(2, 1, 4, 4), torch.ones(2, 4, 4))
    with pytest.raises(DataError, match="differ"):
        pool.add(torch.rand(2, 3, 4, 4), torch.ones(2, 4, 4))
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.add(torch.rand(1, 1, 4, 4), torch.ones(1, 4, 4))


def test_pool_wait_for_wakes_on_add_close_and_times_out():
    pool = AlignmentPool()
    assert pool.wait_for(1, timeout=0.01) is False

    def producer() -> None:
        for _ in range(3):
            time.sleep(0.02)
            pool.add(torch.rand(1, 1, 2, 2), torch.ones(1, 2, 2))
        pool.close()

    thread = threading.Thread(target=producer)
    thread.start()
    assert pool.wait_for(3, timeout=5.0) is True
    assert pool.wait_for(10, timeout=5.0) is False  # returns on close, not on the timeout
    thread.join()
    assert pool.closed and len(pool) == 3


# --- trainer -------------------------------------------------------------------------------


def test_rrr_removes_the_decoy_and_plain_training_does_not():
    train, test = _decoy_data(256, 0, True), _decoy_data(512, 1, False)
    plain = RRRTrainer(_mlp(), lam=0.0, **DECOY).fit(train, _pool(train, 64)).model_
    aligned = RRRTrainer(_mlp(), lam=100.0, **DECOY).fit(train, _pool(train, 64)).model_
    acc_plain = evaluate(plain, test).test_accuracy
    acc_aligned = evaluate(aligned, test).test_accuracy
    assert acc_plain < 0.6 and acc_aligned > 0.68

    def decoy_gradient(model: nn.Module) -> float:
        x = test.images[:64].clone().requires_grad_(True)
        torch.log_softmax(model(x), dim=1).sum().backward()
        return x.grad[:, 0, 0, 0].abs().mean().item()

    assert decoy_gradient(aligned) < 0.01 * decoy_gradient(plain)


def test_fit_is_deterministic_for_a_seed_and_trains_in_place():
    train = _decoy_data(192, 0, True)
    states = []
    for seed in (0, 0, 1):
        model = _mlp()
        trainer = RRRTrainer(model, lam=10.0, seed=seed, **FAST)
        assert trainer.fit(train, _pool(train, 20)) is trainer
        assert trainer.model_ is model and not model.training
        states.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(states[0], states[1])
    assert not torch.equal(states[0], states[2])


def test_history_and_copy_model():
    train, val = _decoy_data(192, 0, True), _decoy_data(128, 2, False)
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = RRRTrainer(model, lam=10.0, copy_model=True, **FAST).fit(
        train, _pool(train, 20), val=val
    )
    assert trainer.model_ is not model
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    h = trainer.history_
    assert len(h.loss) == len(h.ce) == len(h.penalty) == len(h.val_accuracy) == 3
    assert len(h.val_wga) == 3 and len(h.step_time_s) == 3 and h.pool_size == [20] * 3
    assert h.steps == 3 * 3  # 192 / 64 steps per epoch
    assert all(lo > 0 for lo in h.loss) and all(0 <= a <= 1 for a in h.val_accuracy)
    assert all(lo >= ce for lo, ce in zip(h.loss, h.ce, strict=True))


def test_the_trainer_keeps_scikit_learns_estimator_conventions():
    from sklearn.base import clone

    model = _mlp()
    trainer = RRRTrainer(model, lam=10.0, epochs=2, seed=3, progress=False)
    assert trainer.get_params()["lam"] == 10.0 and trainer.get_params()["model"] is model
    twin = clone(trainer).set_params(lam=0.5)
    assert twin.lam == 0.5 and trainer.lam == 10.0 and twin.seed == 3
    assert twin.model is not model  # a clone trains its own copy
    assert all(torch.equal(a, b) for a, b in zip(
        twin.model.parameters(), model.parameters(), strict=True))  # fmt: skip
    assert not hasattr(twin, "model_")  # fitted attributes are not cloned


def test_labelled_alignment_samples_enter_the_cross_entropy():
    train = _decoy_data(64, 0, True)
    ce = {}
    for labels in (True, False):
        trainer = RRRTrainer(_mlp(), lam=0.0, epochs=1, train_batch=64, lr=0.0, progress=False)
        pool = AlignmentPool()
        # alignment samples with the wrong label raise the CE only when labels are given
        pool.add(
            train.images[:8], train.spurious_masks[:8], 1 - train.labels[:8] if labels else None
        )
        pool.close()
        ce[labels] = trainer.fit(train, pool).history_.ce[0]
    model = _mlp()
    with torch.no_grad():
        logits = model(torch.cat([train.images, train.images[:8]]))
        y = torch.cat([train.labels, 1 - train.labels[:8]])
        expected = nn.functional.cross_entropy(logits, y).item()
        expected_unlabelled = nn.functional.cross_entropy(logits[:64], y[:64]).item()
    assert ce[True] == pytest.approx(expected, rel=1e-5)
    assert ce[False] == pytest.approx(expected_unlabelled, rel=1e-5)


def test_training_waits_for_min_pool_and_takes_in_streamed_masks():
    train = _decoy_data(256, 0, True)
    pool = AlignmentPool()
    trainer = RRRTrainer(_mlp(), lam=10.0, min_pool=4, **{**FAST, "epochs": 4})
    worker = threading.Thread(target=trainer.fit, args=(train, pool), daemon=True)
    worker.start()
    pool.add(train.images[:3], train.spurious_masks[:3])
    time.sleep(0.2)
    assert getattr(trainer, "history_", None) is None or trainer.history_.steps == 0
    assert worker.is_alive()  # still waiting for the fourth mask
    for start in range(3, 40, 4):
        pool.add(train.images[start : start + 4], train.spurious_masks[start : start + 4])
        time.sleep(0.005)
    pool.close()
    worker.join(timeout=60)
    assert not worker.is_alive()
    sizes = trainer.history_.pool_size
    assert trainer.history_.steps == 4 * 4 and len(sizes) == 4
    assert sizes == sorted(sizes) and sizes[0] >= 4 and sizes[-1] <= 43


def _wait_for_epochs(trainer: RRRTrainer, epochs: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while getattr(trainer, "history_", None) is None or len(trainer.history_.loss) < epochs:
        assert time.monotonic() < deadline, f"fewer than {epochs} epochs in {timeout} s"
        time.sleep(0.01)


def _open_pool(data: ShortcutDataset, n: int) -> AlignmentPool:
    pool = AlignmentPool()
    pool.add(data.images[:n], data.spurious_masks[:n])
    return pool


def test_last_epoch_starts_only_once_every_mask_is_in():
    train = _decoy_data(256, 0, True)
    pool = _open_pool(train, 4)
    trainer = RRRTrainer(_mlp(), lam=10.0, min_pool=4, **FAST)  # 3 epochs of 4 steps
    worker = threading.Thread(target=trainer.fit, args=(train, pool), daemon=True)
    worker.start()
    _wait_for_epochs(trainer, 2)
    worker.join(timeout=2.0)  # without the hold, the last 4 steps end well within this
    assert worker.is_alive() and trainer.history_.steps == 2 * 4  # held before the last epoch
    pool.add(train.images[4:40], train.spurious_masks[4:40])
    pool.close()
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert trainer.history_.steps == 3 * 4 and trainer.history_.pool_size[-1] == 40


def test_last_epoch_wait_can_be_switched_off_or_stopped():
    train = _decoy_data(256, 0, True)
    pool = _open_pool(train, 4)  # never closed
    trainer = RRRTrainer(_mlp(), min_pool=4, last_epoch_waits=False, **FAST)
    assert trainer.fit(train, pool).history_.steps == 3 * 4
    waiting = RRRTrainer(_mlp(), min_pool=4, **FAST)
    worker = threading.Thread(target=waiting.fit, args=(train, _open_pool(train, 4)), daemon=True)
    worker.start()
    _wait_for_epochs(waiting, 2)
    waiting.stop()
    worker.join(timeout=5)
    assert not worker.is_alive() and waiting.history_.steps == 2 * 4


def test_stop_ends_a_waiting_fit_and_empty_closed_pool_is_an_error():
    trainer = RRRTrainer(_mlp(), **FAST)
    pool = AlignmentPool()
    worker = threading.Thread(
        target=trainer.fit, args=(_decoy_data(64, 0, True), pool), daemon=True
    )
    worker.start()
    time.sleep(0.05)
    trainer.stop()
    worker.join(timeout=5)
    pool.close()
    assert not worker.is_alive() and trainer.history_.steps == 0
    with pytest.raises(DataError, match="without any masks"):
        trainer.fit(_decoy_data(64, 0, True), pool)
    with pytest.raises(DataError, match=r"within 0\.05 s"):
        RRRTrainer(_mlp(), pool_timeout=0.05, **FAST).fit(_decoy_data(64, 0, True), AlignmentPool())


@pytest.mark.parametrize(
    ("option", "value"), [("lam", -1.0), ("align_batch", 0), ("lr", float("nan")), ("epochs", -1)]
)
def test_bad_settings_are_config_errors(option, value):
    train = _decoy_data(64, 0, True)
    with pytest.raises(ConfigError, match=option):
        RRRTrainer(_mlp(), **{**FAST, option: value}).fit(train, _pool(train, 8))


# --- lambda search -------------------------------------------------------------------------


def test_search_lambda_prefers_a_penalty_when_validation_breaks_the_decoy():
    train, val = _decoy_data(256, 0, True), _decoy_data(256, 3, False)
    pool = _pool(train, 64)
    result = search_lambda(_mlp, train, pool, val, grid=(0.0, 100.0), **DECOY)
    assert result.criterion == "wga"  # val has groups
    assert set(result.scores) == {0.0, 100.0}
    assert result.best_lambda == 100.0
    assert result.scores[100.0] > result.scores[0.0] + 0.2
    assert result.metrics[100.0].wga == result.scores[100.0]
    by_acc = search_lambda(_mlp, train, pool, val, grid=(100.0,), criterion="accuracy", **DECOY)
    assert by_acc.scores[100.0] == by_acc.metrics[100.0].test_accuracy
    with pytest.raises(ConfigError, match="grid"):
        search_lambda(_mlp, train, pool, val, grid=())


def test_search_lambda_auto_skips_groups_that_follow_the_class():
    """Decoy-like validation groups (one per class) score only class accuracy: "auto" then
    uses accuracy, not their WGA."""
    train, val = _decoy_data(64, 0, True), _decoy_data(128, 3, True)
    assert torch.unique(val.groups, return_counts=True)[1].min() >= 30  # groups 0, 3: 3 * class
    result = search_lambda(_mlp, train, _pool(train, 8), val, grid=(0.0,), **{**DECOY, "epochs": 1})
    assert result.criterion == "accuracy"
    assert result.scores[0.0] == result.metrics[0.0].test_accuracy


def test_search_lambda_scores_only_groups_large_enough_to_count():
    """Two mislabelled images in a group of their own would set WGA to 0 for every lambda;
    the search scores the groups of at least 30 samples, as align's model check does."""
    train, val = _decoy_data(256, 0, True), _decoy_data(256, 3, False)
    noisy = ShortcutDataset(
        torch.cat([val.images, val.images[:2]]),
        torch.cat([val.labels, 1 - val.labels[:2]]),
        torch.cat([val.groups, torch.full((2,), 9)]),
    )
    result = search_lambda(_mlp, train, _pool(train, 64), noisy, grid=(0.0, 100.0), **DECOY)
    assert result.criterion == "wga"
    assert result.metrics[100.0].wga == 0.0  # the tiny group, every image wrong
    assert result.scores[100.0] > result.scores[0.0] + 0.2 and result.best_lambda == 100.0


# --- batch norm ----------------------------------------------------------------------------


def _bn_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * SIDE * SIDE, 2),
    )  # fmt: skip
    with torch.no_grad():  # statistics that are not the identity, as after some training
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.3, 2.0)
    return net.train()


def _bn_ordinary() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.rand(16, 1, SIDE, SIDE, generator=g), torch.randint(2, (16,), generator=g)


def _bn_step(model: nn.Module, batch: AlignmentBatch, lam: float = 1.0) -> StepResult:
    """One `RRRTrainer.step` that leaves the parameters as they are (lr 0)."""
    images, labels = _bn_ordinary()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0)
    return RRRTrainer(model, lam=lam).step(model, optimizer, images, labels, batch)


def _bn_batch(labelled: bool = True) -> AlignmentBatch:
    g = torch.Generator().manual_seed(4)
    masks = torch.zeros(8, SIDE, SIDE)
    masks[0, :2, :2] = 1.0  # only sample 0 is penalised
    labels = torch.randint(2, (8,), generator=g) if labelled else torch.full((8,), -100)
    return AlignmentBatch(torch.rand(8, 1, SIDE, SIDE, generator=g), masks, labels)


def test_batch_norm_penalty_of_a_sample_is_its_own():
    batch = _bn_batch()
    other = batch.images.clone()
    other[7] = torch.rand(1, SIDE, SIDE)
    penalties = [
        _bn_step(_bn_net(), AlignmentBatch(x, batch.masks, batch.labels)).penalty
        for x in (batch.images, other)
    ]
    assert penalties[0] > 0 and penalties[0] == pytest.approx(penalties[1], rel=1e-6)


def test_batch_norm_statistics_move_once_a_step():
    for lam, labelled in ((1.0, True), (1.0, False), (0.0, True)):
        model = _bn_net()
        _bn_step(model, _bn_batch(labelled), lam)
        assert int(model[1].num_batches_tracked) == 1 and model[1].training


def test_batch_norm_penalty_and_gradients_are_those_of_the_evaluated_model():
    """The step's penalty is the eval-mode one `penalty_scale` measures (same units), and its
    gradients are those of an eval-mode copy's penalty plus a train-mode copy's CE."""
    from lvlmva.vision.rrr_grid import penalty_scale

    batch, model = _bn_batch(), _bn_net()
    evaluated, trained = copy.deepcopy(model).eval(), copy.deepcopy(model)
    lambda0 = penalty_scale(model, batch.images, batch.masks, batch.labels, 8)
    result = _bn_step(model, batch)
    penalty = rrr_penalty(evaluated, batch.images, batch.masks)
    assert result.penalty == pytest.approx(float(penalty.detach()), rel=1e-5)
    ce_eval = nn.functional.cross_entropy(evaluated(batch.images), batch.labels).item()
    assert lambda0 == pytest.approx(ce_eval / (8 * result.penalty / 8), rel=1e-5)
    images, labels = _bn_ordinary()
    logits = trained(torch.cat([images, batch.images]))
    ce = nn.functional.cross_entropy(logits, torch.cat([labels, batch.labels]))
    assert result.ce == pytest.approx(ce.item(), rel=1e-5)
    (ce + penalty).backward()
    params = zip(model.parameters(), evaluated.parameters(), trained.parameters(), strict=True)
    for p, a, b in params:
        expected = sum(q.grad for q in (a, b) if q.grad is not None)
        assert torch.allclose(p.grad, expected, rtol=1e-4, atol=1e-7)


def test_resnets_train_with_rrr():
    from lvlmva.vision.datasets.base import DatasetInfo
    from lvlmva.vision.models import build_model

    info = DatasetInfo("toy", ("a", "b"), 1, SIDE, "toy-task", (0.5,), (0.25,))
    torch.manual_seed(0)
    model, train = build_model("resnet18", info), _decoy_data(8, 0, True)
    trainer = RRRTrainer(model, lam=1.0, epochs=1, train_batch=4, align_batch=2, progress=False)
    trainer.fit(train, _pool(train, 4))
    assert trainer.history_.steps == 2 and math.isfinite(trainer.history_.penalty[0])
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(int(m.num_batches_tracked) == 2 for m in bns)
