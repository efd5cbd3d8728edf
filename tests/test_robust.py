"""Robust verdicts and the model check: votes, neighbour consensus, the scheduled pool, the
lambda grid and the selection (the pieces; tests/test_align.py runs them end to end)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch

from lvlmva.engine.types import CritiqueJob, JobResult, JobStatus, Tally, Usage
from lvlmva.pipeline.selection import (
    chance_floor,
    choose_criterion,
    counterfactual_split,
    scored_groups,
    select_model,
)
from lvlmva.pipeline.votes import VoteCollector, base_job_id, variant_jobs
from lvlmva.vision.consensus import (
    cluster_descriptors,
    consensus_weights,
    neighbour_consensus,
    weighted_mask,
)
from lvlmva.vision.datasets.base import ShortcutDataset
from lvlmva.vision.masks import mask_from_verdicts
from lvlmva.vision.rrr_grid import LambdaGridTrainer, RRRSettings, penalty_scale
from lvlmva.vision.schedule import ScheduledPool

# -- votes -------------------------------------------------------------------------------------


def test_variants_keep_the_first_order_and_permute_the_others():
    job = CritiqueJob("d/train/5", (), ("red", "blue", "green", "yellow"))
    variants = variant_jobs(job, 3, seed=0)
    assert [v.job_id for v in variants] == ["d/train/5#0", "d/train/5#1", "d/train/5#2"]
    assert variants[0].colors == job.colors
    assert all(sorted(v.colors) == sorted(job.colors) for v in variants)
    assert all(v.colors != job.colors for v in variants[1:])
    assert [v.colors for v in variant_jobs(job, 3, seed=0)] == [v.colors for v in variants]
    assert variant_jobs(job, 1, seed=0) == [job]
    assert base_job_id("d/train/5#2", 3) == "d/train/5"


def _result(job_id, verdicts=None, status=JobStatus.OK, calls=2):
    tally = Tally(provider_calls=calls, usage=Usage(10, 5), cost_usd=0.01)
    return JobResult(job_id, status, verdicts=verdicts, tally=tally)


def test_votes_give_shares_a_majority_that_keeps_ties_and_summed_costs():
    collector = VoteCollector(4)
    answers = [
        {"red": False, "blue": True},
        {"red": False, "blue": False},
        {"red": True, "blue": True},
    ]
    for v, verdicts in enumerate(answers):
        assert collector.add(_result(f"j#{v}", verdicts)) is None
    voted = collector.add(_result("j#3", None, JobStatus.FAILED))
    assert voted.result.job_id == "j" and voted.result.ok and voted.validated == 3
    assert voted.no_share == pytest.approx({"red": 2 / 3, "blue": 1 / 3})
    assert voted.result.verdicts == {"red": False, "blue": True}
    assert voted.result.provider_calls == 8 and voted.result.usage == Usage(40, 20)
    tie = VoteCollector(2)
    tie.add(_result("t#1", {"red": True}))
    assert tie.add(_result("t#0", {"red": False})).result.verdicts == {"red": True}
    failed = VoteCollector(2)
    failed.add(_result("f#0", None, JobStatus.FAILED))
    out = failed.add(_result("f#1", None, JobStatus.FAILED))
    assert out.result.status is JobStatus.FAILED and out.no_share is None


# -- consensus ---------------------------------------------------------------------------------


def test_descriptors_locate_and_measure_each_cluster():
    image = torch.zeros(1, 10, 10)
    image[0, :2, :2] = 0.8
    labels = torch.full((10, 10), -1)
    labels[:2, :2] = 0
    labels[4:8, 4:8] = 1
    d = cluster_descriptors(image, labels, [0, 1], n_clusters=7)
    assert d.shape == (2, 6)
    assert d[0, :2].tolist() == pytest.approx([0.1, 0.1])
    assert d[1, :2].tolist() == pytest.approx([0.6, 0.6])
    assert d[0, 2] == pytest.approx(torch.log(torch.tensor(0.04)).item())
    assert d[0, 5] == pytest.approx(0.8) and d[1, 5] == pytest.approx(0.0)
    assert d[1, 4] == pytest.approx(1 / 6)


def _two_kinds(n_images=40, flip_every=7):
    """Per image a corner cluster (truly spurious) and a centre cluster (relevant), with
    every `flip_every`-th verdict wrong; returns features, shares, owners and the truth."""
    g = torch.Generator().manual_seed(0)
    feats, shares, owners, truth = [], [], [], []
    for i in range(n_images):
        for spurious, centre in ((True, 0.05), (False, 0.5)):
            base = [centre, centre, -3.0, 0.1, float(not spurious), 0.9 if spurious else 0.4]
            feats.append(torch.tensor(base) + 0.02 * torch.randn(6, generator=g))
            wrong = len(shares) % flip_every == 0
            shares.append(float(spurious != wrong))
            owners.append(i)
            truth.append(spurious)
    return torch.stack(feats), torch.tensor(shares), torch.tensor(owners), torch.tensor(truth)


def test_neighbour_consensus_overturns_isolated_errors():
    feats, shares, owners, truth = _two_kinds()
    raw_errors = int(((shares > 0.5) != truth).sum())
    assert raw_errors >= 10
    pooled, neighbours = neighbour_consensus(feats, shares, owners, k=10)
    assert int(((pooled > 0.5) != truth).sum()) == 0
    assert torch.all((neighbours > 0.5) == truth)
    off, _ = neighbour_consensus(feats, shares, owners, k=0)
    assert torch.equal(off, shares)


def test_neighbours_come_from_other_images_only():
    # two images, each with 6 identical clusters saying "no", and one image of "yes" clusters
    # elsewhere: without the own-image exclusion every cluster would be its own majority
    feats = torch.cat([torch.zeros(6, 3), torch.zeros(6, 3) + 0.01, torch.ones(6, 3)])
    shares = torch.tensor([1.0] * 6 + [0.0] * 6 + [0.0] * 6)
    owners = torch.tensor([0] * 6 + [1] * 6 + [2] * 6)
    pooled, neighbours = neighbour_consensus(feats, shares, owners, k=6)
    assert torch.all(neighbours[:6] == 0.0)  # image 0 sees image 1's "yes"
    assert torch.all(neighbours[6:12] == 1.0)
    assert torch.all(pooled[:6] < 0.5)


def test_gaussian_kernel_still_overturns_isolated_errors_among_alike_clusters():
    feats, shares, owners, truth = _two_kinds()
    pooled, _ = neighbour_consensus(feats, shares, owners, k=10, kernel="gaussian")
    assert int(((shares > 0.5) != truth).sum()) >= 10
    assert int(((pooled > 0.5) != truth).sum()) == 0


def test_gaussian_kernel_keeps_the_own_verdict_of_a_cluster_unlike_its_neighbours():
    # 40 images, each with a "yes" cluster near 0 (the typical distance apart), and one
    # outlying cluster far from all of them saying "no": uniform weights outvote it, the
    # Gaussian kernel gives neighbours that far almost no weight
    g = torch.Generator().manual_seed(1)
    feats = torch.cat([0.1 * torch.randn(40, 4, generator=g), torch.full((1, 4), 3.0)])
    shares = torch.tensor([0.0] * 40 + [1.0])
    owners = torch.arange(41)
    uniform, _ = neighbour_consensus(feats, shares, owners, k=10)
    gaussian, _ = neighbour_consensus(feats, shares, owners, k=10, kernel="gaussian")
    assert float(uniform[-1]) < 0.5 < float(gaussian[-1])
    assert torch.all(gaussian[:40] < 0.5)


def test_gaussian_kernel_with_identical_descriptors_is_the_uniform_vote():
    feats = torch.zeros(30, 3)
    shares = torch.tensor([1.0, 0.0, 0.0] * 10)
    owners = torch.arange(30) // 3
    uniform, nb_u = neighbour_consensus(feats, shares, owners, k=6)
    gaussian, nb_g = neighbour_consensus(feats, shares, owners, k=6, kernel="gaussian")
    assert torch.allclose(uniform, gaussian) and torch.allclose(nb_u, nb_g)
    with pytest.raises(ValueError, match="kernel"):
        neighbour_consensus(feats, shares, owners, k=6, kernel="box")


def test_weighted_masks_match_the_verdict_masks_for_zero_one_weights():
    labels = torch.tensor([[0, 0, 1], [1, 2, -1], [2, 2, -1]])
    resp = torch.rand(3, 3, 3)
    resp = resp / resp.sum(0, keepdim=True)
    colors, ids = ("red", "blue", "green"), (0, 1, 2)
    verdicts = {"red": False, "blue": True, "green": False}
    weights = torch.tensor([1.0, 0.0, 1.0])
    for soft in (False, True):
        expected = mask_from_verdicts(
            labels, colors, ids, verdicts, responsibilities=resp, soft=soft
        )
        got = weighted_mask(labels, ids, weights, responsibilities=resp, soft=soft)
        assert torch.allclose(got, expected)
    assert consensus_weights(torch.tensor([0.2, 0.5, 0.6, 1.0])).tolist() == [0, 0, 1, 1]
    assert consensus_weights(torch.tensor([0.25, 0.75]), confidence=True).tolist() == [0.0, 0.5]


# -- the scheduled pool ------------------------------------------------------------------------


def _builder(built):
    def build(length):
        built.append(length)
        idx = torch.arange(length)
        images = idx.float().view(-1, 1, 1, 1).expand(length, 1, 2, 2).clone()
        return images, torch.ones(length, 2, 2), idx
    return build


def test_stages_follow_the_schedule_and_wait_for_their_prefix():
    built = []
    pool = ScheduledPool(8, _builder(built), start_fraction=0.25, stages=4, ramp_end=0.8)
    assert pool.lengths == [2, 4, 6, 8]
    progress = (0.0, 0.26, 0.27, 0.55, 0.79, 0.8, 1.0)
    assert [pool.length_at(p) for p in progress] == [2, 2, 4, 6, 6, 8, 8]
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.stage(0.0)))
    waiter.start()
    pool.arrived(1)  # out of order: position 0 is still missing
    waiter.join(0.5)
    assert waiter.is_alive() and not got
    pool.arrived(0)
    waiter.join(5)
    assert len(got[0]) == 2 and built == [2]
    assert pool.stage(0.1) is got[0]  # built once
    stop = threading.Event()
    stop.set()
    assert pool.stage(1.0, stop) is None
    pool.close()  # the missing positions count as arrived
    assert len(pool.stage(1.0)) == 8


def test_an_empty_stage_yields_to_the_next_and_no_mask_at_all_is_an_error():
    from lvlmva.errors import DataError

    def build(length):
        n = max(0, length - 2)  # the first two positions have no mask
        return torch.zeros(n, 1, 2, 2), torch.ones(n, 2, 2), torch.zeros(n, dtype=torch.long)

    pool = ScheduledPool(4, build, start_fraction=0.5, stages=2)
    pool.close()
    assert len(pool.stage(0.0)) == 2
    empty = ScheduledPool(2, lambda n: (torch.zeros(0, 1, 2, 2), torch.zeros(0, 2, 2),
                                        torch.zeros(0, dtype=torch.long)))  # fmt: skip
    empty.close()
    with pytest.raises(DataError, match="no correction masks"):
        empty.stage(0.0)


# -- the lambda grid ---------------------------------------------------------------------------


def _toy(n=64):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(n, 1, 4, 4, generator=g)
    labels = (images[:, 0, 0, 0] > 0.5).long()
    return ShortcutDataset(images, labels)


def _toy_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 2))  # fmt: skip


def _toy_pool(train):
    def build(length):
        masks = torch.zeros(length, 4, 4)
        masks[:, 0, 0] = 1.0
        return train.images[:length], masks, train.labels[:length]

    pool = ScheduledPool(32, build, start_fraction=0.5, stages=2, ramp_end=0.5)
    pool.close()
    return pool


def test_the_grid_trains_members_on_the_same_batches_deterministically():
    train = _toy()
    def fit():
        settings = RRRSettings(epochs=2, train_batch=16, progress=False)
        grid = LambdaGridTrainer(_toy_model(), lams=(0.5, 0.5, 0.0), settings=settings)
        return grid.fit(train, _toy_pool(train))

    fits = [fit(), fit()]
    a, b, free = fits[0].members_
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)  # equal lambdas, equal batches: equal models
    pairs = zip(a.model.parameters(), free.model.parameters(), strict=True)
    assert any(not torch.equal(p, q) for p, q in pairs)
    for p, q in zip(a.model.parameters(), fits[1].members_[0].model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert a.history.steps == 2 * 4 and len(a.history.penalty) == 2
    assert free.history.penalty[-1] == 0.0 < a.history.penalty[-1]  # lambda 0: not computed


def test_the_grid_in_units_of_lambda0():
    train = _toy()
    model = _toy_model()
    masks = torch.zeros(8, 4, 4)
    masks[:, 0, 0] = 1.0
    scale = penalty_scale(model, train.images[:8], masks, train.labels[:8], batch=8)
    assert scale > 0
    with pytest.warns(RuntimeWarning, match="falls back to 1.0.*8 of the 8 masks are empty"):
        empty = penalty_scale(model, train.images[:8], torch.zeros(8, 4, 4), train.labels[:8], 8)
    assert empty == 1.0
    settings = RRRSettings(epochs=1, progress=False)
    fit = LambdaGridTrainer(model, scales=(0.1, 1.0), settings=settings).fit(
        train, _toy_pool(train)
    )
    head = torch.stack([masks[0]] * 16)  # the first stage: half of the 32 positions
    expected = penalty_scale(model, train.images[:16], head, train.labels[:16], 8)
    assert fit.lambda0_ == pytest.approx(expected)
    assert [m.lam for m in fit.members_] == pytest.approx([0.1 * fit.lambda0_, fit.lambda0_])


# -- the model check ---------------------------------------------------------------------------


def _split(labels, groups):
    labels, groups = torch.tensor(labels), torch.tensor(groups)
    return ShortcutDataset(torch.zeros(len(labels), 1, 2, 2), labels, groups)


def test_groups_count_only_when_some_class_has_two_big_ones():
    matching = _split([0] * 40 + [1] * 40, [1] * 40 + [3] * 40)  # decoy-like: one per class
    assert scored_groups(matching) == []
    assert choose_criterion(matching, can_critique=True)[0] == "counterfactual"
    assert choose_criterion(matching, can_critique=False)[0] == "none"
    mixed = _split([0] * 60 + [1] * 40, [0] * 30 + [1] * 30 + [2] * 35 + [3] * 5)
    assert scored_groups(mixed) == [0, 1, 2]  # group 3 is too small to be scored
    assert choose_criterion(mixed, can_critique=True)[0] == "wga"


def test_counterfactual_images_swap_the_flagged_regions_of_both_with_another_class():
    images = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 1, 2, 2).clone()
    val = ShortcutDataset(images, torch.tensor([0, 0, 0, 1, 1, 1]))
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    cf = counterfactual_split(val, [0, 1, 3], [mask, mask, torch.zeros(2, 2)], seed=0)
    assert cf.labels.tolist() == [0, 0, 1]
    assert cf.images[0, 0, 0, 0] == 3.0 and cf.images[1, 0, 0, 0] == 3.0  # the class-1 donor
    assert cf.images[0, 0, 1, 1] == 0.0 and cf.images[1, 0, 1, 1] == 1.0  # unflagged: kept
    # nothing flagged of its own: the donor's flagged region (with the donor's pixels) comes in
    assert cf.images[2, 0, 0, 0] in (0.0, 1.0)
    assert torch.equal(cf.images[2].flatten()[1:], images[3].flatten()[1:])
    # no flagged region on either side: unchanged
    cf = counterfactual_split(val, [0, 3], [torch.zeros(2, 2), torch.zeros(2, 2)], seed=0)
    assert torch.equal(cf.images, images[[0, 3]])


class _Constant(torch.nn.Module):
    def __init__(self, label):
        super().__init__()
        self.label = label
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(len(x), 2)
        out[:, self.label] = 1.0
        return out + 0 * self.weight


class _Reader(torch.nn.Module):
    """Predicts class 1 where the image is bright: right on the splits below."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        bright = x.flatten(1).mean(1)
        return torch.stack([1.0 - bright, bright], 1) + 0 * self.weight


def test_selection_keeps_the_original_unless_an_aligned_model_beats_it():
    labels = torch.tensor([1, 0] * 50)
    split = ShortcutDataset(labels.float().view(-1, 1, 1, 1).expand(-1, 1, 2, 2), labels)
    good, bad = _Reader(), _Constant(0)
    members = [
        SimpleNamespace(lam=0.1, scale=1.0, model=bad),
        SimpleNamespace(lam=1.0, scale=10.0, model=good),
    ]
    check = ("counterfactual", "test")

    def select(original, chosen_from, on, criterion=check, keep=True):
        return select_model(original, chosen_from, on, criterion, keep_original=keep,
                            lambda0=0.1, device=torch.device("cpu"))  # fmt: skip

    chosen, sel = select(bad, members, split)
    assert chosen is good and sel.lam == 1.0 and sel.chosen == "lambda=1" and sel.warning is None
    chosen, sel = select(good, members, split)
    assert chosen is good and sel.kept_original and sel.lam is None  # a tie keeps the original
    assert "ORIGINAL" in sel.warning and "kept_original" in sel.to_dict()
    chosen, sel = select(good, members[:1], split, keep=False)
    assert chosen is bad and "anyway" in sel.warning
    chosen, sel = select(good, members, None, ("none", "no val"))
    assert chosen is bad and "not checked" in sel.warning  # the middle of the grid


def test_counterfactual_check_keeps_the_original_when_no_member_is_above_chance():
    labels = torch.tensor([1, 0] * 50)
    split = ShortcutDataset(1.0 - labels.float().view(-1, 1, 1, 1).expand(-1, 1, 2, 2), labels)
    wrong = _Reader()  # always wrong here: 0.0
    members = [SimpleNamespace(lam=1.0, scale=1.0, model=_Constant(1))]  # chance: 0.5
    assert chance_floor(split) == pytest.approx(0.5 + 2 * 0.05)

    chosen, sel = select_model(wrong, members, split, ("counterfactual", "test"),
                               keep_original=True, lambda0=None,
                               device=torch.device("cpu"))  # fmt: skip
    assert chosen is wrong and sel.kept_original and "above chance" in sel.warning


def test_the_neighbour_kernel_flag_reaches_the_options_and_a_bad_one_is_refused():
    import argparse

    from lvlmva.commands.common import add_robust_arguments, robust_options
    from lvlmva.errors import ConfigError
    from lvlmva.pipeline.options import CritiqueOptions

    parser = argparse.ArgumentParser()
    add_robust_arguments(parser)
    assert robust_options(parser.parse_args([]))["neighbour_kernel"] == "uniform"
    options = robust_options(parser.parse_args(["--neighbour-kernel", "gaussian"]))
    assert CritiqueOptions(**options).neighbour_kernel == "gaussian"
    with pytest.raises(ConfigError, match="--neighbour-kernel"):
        CritiqueOptions(neighbour_kernel="box")
    parse = lambda *a: CritiqueOptions(**robust_options(parser.parse_args(list(a))))  # noqa: E731
    assert (parse().confidence, parse().val_masks) == (False, "critique")
    assert parse("--confidence-weights").confidence is True  # the bare flag, as before
    assert parse("--confidence-weights", "auto").confidence == "auto"
    assert parse("--val-masks", "neighbours").val_masks == "neighbours"
    with pytest.raises(ConfigError, match="--val-masks"):
        CritiqueOptions(val_masks="guess")


def test_the_run_warns_when_the_neighbours_overturn_many_verdicts():
    from lvlmva.pipeline.masking import DISAGREEMENT_WARNING, robust_summary
    from lvlmva.pipeline.options import CritiqueOptions

    def records(overturned: int, total: int = 20):
        # each record: one "no" verdict; the first `overturned` are pooled to "yes"
        return [SimpleNamespace(verdicts={"red": False}, votes=None,
                                consensus={"red": 0.2 if i < overturned else 0.9})
                for i in range(total)]  # fmt: skip

    calm = robust_summary(CritiqueOptions(), records(2))
    assert calm["overturned_share"] == 0.1 and calm["warning"] is None
    assert calm["graded_by_logprobs"] == 0
    noisy = robust_summary(CritiqueOptions(), records(8))
    assert noisy["overturned_share"] == 0.4 > DISAGREEMENT_WARNING
    assert "40% of the critic's verdicts" in noisy["warning"]
    assert "lvlmva review" in noisy["warning"]
    assert robust_summary(CritiqueOptions(), [])["warning"] is None


class _Table(torch.nn.Module):
    """Predicts `table[i]` for the image whose first pixel holds i."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.as_tensor(table)
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(len(x), 2)
        out[torch.arange(len(x)), self.table[x[:, 0, 0, 0].long()]] = 1.0
        return out + 0 * self.weight


def test_a_choice_by_worst_group_accuracy_that_costs_average_accuracy_says_so():
    # two majority groups (100 each: the shortcut agrees) and two minority ones (30 each)
    labels = torch.tensor([0] * 100 + [1] * 100 + [0] * 30 + [1] * 30)
    shortcut = torch.tensor([0] * 100 + [1] * 100 + [1] * 30 + [0] * 30)
    index = torch.arange(len(labels)).float().view(-1, 1, 1, 1)
    split = ShortcutDataset(index.expand(-1, 1, 2, 2).clone(), labels, labels * 2 + shortcut)
    original = _Table(shortcut)  # accuracy 200 / 260, WGA 0
    halfway = labels.clone()
    halfway[:50], halfway[100:150] = 1, 0  # WGA 0.5, accuracy 160 / 260
    members = [SimpleNamespace(lam=1.0, scale=1.0, model=_Table(halfway))]
    chosen, sel = select_model(original, members, split, ("wga", "groups"), keep_original=True,
                               lambda0=None, device=torch.device("cpu"))  # fmt: skip
    assert chosen is members[0].model and sel.candidates[1].score == 0.5
    assert sel.to_dict()["accuracy"] == {"original": 0.7692, "lambda=1": 0.6154}
    assert "loses average accuracy" in sel.note and "NOTE:" in sel.describe()
    members.append(SimpleNamespace(lam=2.0, scale=2.0, model=_Table(labels)))  # right everywhere
    _, sel = select_model(original, members, split, ("wga", "groups"), keep_original=True,
                          lambda0=None, device=torch.device("cpu"))  # fmt: skip
    assert sel.chosen == "lambda=2" and sel.note is None


def test_members_trained_on_empty_masks_are_not_returned_as_aligned():
    from lvlmva.pipeline.selection import ModelCheck

    labels = torch.tensor([0] * 100 + [1] * 100 + [0] * 30 + [1] * 30)
    shortcut = torch.tensor([0] * 100 + [1] * 100 + [1] * 30 + [0] * 30)
    index = torch.arange(len(labels)).float().view(-1, 1, 1, 1)
    val = ShortcutDataset(index.expand(-1, 1, 2, 2).clone(), labels, labels * 2 + shortcut)
    members = [SimpleNamespace(lam=1.0, scale=1.0, model=_Table(labels))]  # beats the original
    check = ModelCheck(("wga", "groups"), torch.zeros(0, dtype=torch.long), val, 0)

    def select(flags: bool):
        masks = SimpleNamespace(flags_anything=lambda: flags)
        return check.select(_Table(shortcut), members, masks, [], keep_original=True,
                            lambda0=None, device=torch.device("cpu"))  # fmt: skip

    chosen, sel = select(True)
    assert chosen is members[0].model and not sel.kept_original
    chosen, sel = select(False)
    assert sel.kept_original and sel.lam is None and "flagged nothing" in sel.warning
    assert sel.candidates[1].score == 1.0  # the scores are still there to read


def _critiqued_pool(flip_every: int):
    """Two-cluster samples (descriptors of `_two_kinds`), one verdict in `flip_every` wrong."""
    from lvlmva.pipeline.masking import CritiquedSample
    from lvlmva.pipeline.records import SampleRecord

    feats, shares, owners, _ = _two_kinds(flip_every=flip_every)
    labels = torch.tensor([[0, 0], [1, 1]])
    entries = []
    for i in range(int(owners.max()) + 1):
        rows = (owners == i).nonzero().flatten()
        colors = tuple(f"c{j}" for j in range(len(rows)))
        verdicts = {c: float(shares[r]) < 0.5 for c, r in zip(colors, rows.tolist(), strict=True)}
        record = SampleRecord(i, 0, "a", labels, colors, tuple(range(len(rows))), "ok",
                              verdicts=verdicts)  # fmt: skip
        entries.append(CritiquedSample(record, None, feats[rows], shares[rows]))
    return entries


@pytest.mark.parametrize(("flip_every", "expected"), [(10, True), (3, False)])
def test_auto_confidence_weights_only_while_the_neighbours_overturn_few_verdicts(
    flip_every, expected
):
    import copy

    from lvlmva.errors import ConfigError
    from lvlmva.pipeline.masking import RobustMasks, robust_summary
    from lvlmva.pipeline.options import CritiqueOptions

    masks = {}
    for setting in (True, False, "auto"):
        options = CritiqueOptions(soft_masks=False, confidence=setting)
        entries = copy.deepcopy(_critiqued_pool(flip_every))
        robust = RobustMasks(None, options, len(entries))
        for i, entry in enumerate(entries):
            robust.add(i, entry)
        robust.finalize()
        masks[setting] = torch.stack([e.record.mask for e in entries])
        summary = robust_summary(options, [e.record for e in entries])
        if setting == "auto":
            assert summary["confidence_weights_used"] is expected
            assert (summary["overturned_share"] <= 0.25) is expected
    assert not torch.equal(masks[True], masks[False])  # the two rules differ on this pool
    assert torch.equal(masks["auto"], masks[expected])
    with pytest.raises(ConfigError, match="confidence-weights"):
        CritiqueOptions(confidence="sometimes")


def test_samples_no_critic_saw_get_the_masks_of_their_nearest_critiqued_clusters():
    from lvlmva.pipeline.masking import CritiquedSample, RobustMasks
    from lvlmva.pipeline.options import CritiqueOptions
    from lvlmva.pipeline.records import SampleRecord

    entries = _critiqued_pool(flip_every=7)
    robust = RobustMasks(None, CritiqueOptions(soft_masks=False), len(entries))
    for i, entry in enumerate(entries):
        robust.add(i, entry)
    robust.finalize()
    feats, _, owners, truth = _two_kinds(n_images=8, flip_every=1000)
    labels = torch.tensor([[0, 0], [1, 1]])
    unseen = []
    for i in range(8):
        rows = (owners == i).nonzero().flatten()
        record = SampleRecord(100 + i, 0, "a", labels, ("c0", "c1"), (0, 1), "not_run")
        unseen.append(CritiquedSample(record, None, feats[rows], torch.zeros(0)))
    masks = robust.masks_for(unseen)
    for mask, entry in zip(masks, unseen, strict=True):
        spurious = truth[(owners == entry.record.index - 100).nonzero().flatten()]
        # cluster 0 (top row) is the spurious corner, cluster 1 the relevant centre
        assert mask[0].tolist() == [float(spurious[0])] * 2 and mask[1].tolist() == [0.0, 0.0]
        assert entry.record.consensus is not None and entry.record.verdicts is None
    assert robust.masks_for([]) == []
