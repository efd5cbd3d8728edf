"""PPEPS-WGM: the weighted Gaussian mixture estimator and the segmentation built on it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from lvlmva.errors import ConfigError, DataError
from lvlmva.vision.ppeps import Segmentation, segment
from lvlmva.vision.wgmm import WeightedGaussianMixture

FAST = settings(max_examples=6, deadline=None)


def _blobs(rng: np.random.Generator, n: int, d: int = 2) -> np.ndarray:
    centres = rng.uniform(0, 1, size=(3, d))
    return centres[rng.integers(0, 3, n)] + rng.normal(0, 0.08, size=(n, d))


def _init(X: np.ndarray, k: int, rng: np.random.Generator) -> dict:
    d = X.shape[1]
    return {
        "weights_init": np.full(k, 1.0 / k),
        "means_init": X[rng.choice(len(X), k, replace=False)],
        "precisions_init": np.stack([np.eye(d) * rng.uniform(5, 50)] * k),
    }


def _sklearn(X: np.ndarray, k: int, max_iter: int, init: dict) -> GaussianMixture:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return GaussianMixture(k, max_iter=max_iter, tol=0.0, **init).fit(X)


# ----------------------------------------------------------------------------- estimator


@FAST
@given(seed=st.integers(0, 2**16), k=st.integers(2, 5), d=st.sampled_from([2, 3]))
def test_uniform_weights_reproduce_sklearn_from_the_same_start(seed, k, d):
    rng = np.random.default_rng(seed)
    X = _blobs(rng, 60, d)
    init = _init(X, k, rng)
    ref = _sklearn(X, k, 15, init)
    ours = WeightedGaussianMixture(k, max_iter=15, tol=0.0, dtype="float64", **init).fit(X)
    np.testing.assert_allclose(ours.weights_, ref.weights_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(ours.covariances_, ref.covariances_, rtol=1e-6, atol=1e-9)
    assert ours.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-9, abs=1e-9)
    assert ours.n_iter_ == ref.n_iter_ == 15
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))


@FAST
@given(seed=st.integers(0, 2**16))
def test_integer_weights_act_as_repeated_points(seed):
    rng = np.random.default_rng(seed)
    X = _blobs(rng, 40)
    counts = rng.integers(0, 4, len(X))
    counts[:5] = 1  # the starting means below carry weight
    init = _init(X[:5], 3, rng)
    weighted = WeightedGaussianMixture(3, max_iter=20, tol=0.0, dtype="float64", **init)
    repeated = WeightedGaussianMixture(3, max_iter=20, tol=0.0, dtype="float64", **init)
    weighted.fit(X, sample_weight=counts)
    repeated.fit(np.repeat(X, counts, axis=0))
    np.testing.assert_allclose(weighted.means_, repeated.means_, atol=1e-10)
    np.testing.assert_allclose(weighted.covariances_, repeated.covariances_, atol=1e-10)
    np.testing.assert_allclose(weighted.weights_, repeated.weights_, atol=1e-10)
    assert weighted.lower_bound_ == pytest.approx(repeated.lower_bound_, abs=1e-10)
    # and the weights matter: unweighted data gives another fit
    plain = WeightedGaussianMixture(3, max_iter=20, tol=0.0, dtype="float64", **init).fit(X)
    assert not np.allclose(plain.means_, weighted.means_, atol=1e-6)


def test_a_batch_fits_like_its_problems_one_by_one_padding_included():
    rng = np.random.default_rng(3)
    sizes = (50, 35, 20)
    problems = [(_blobs(rng, n), rng.uniform(0.1, 2.0, n)) for n in sizes]
    X = np.zeros((3, max(sizes), 2))
    w = np.zeros((3, max(sizes)))
    for b, (xb, wb) in enumerate(problems):
        X[b, : len(xb)], w[b, : len(wb)] = xb, wb
        X[b, len(xb) :] = 5.0  # padding far away: zero weight must make it invisible
    seeds = [11, 12, 13]
    settings_ = {"max_iter": 200, "tol": 1e-6, "dtype": "float64"}
    batch = WeightedGaussianMixture(4, random_state=seeds, **settings_).fit(X, sample_weight=w)
    for b, (xb, wb) in enumerate(problems):
        one = WeightedGaussianMixture(4, random_state=[seeds[b]], **settings_)
        one.fit(xb[None], sample_weight=wb[None])
        np.testing.assert_allclose(batch.means_[b], one.means_[0], atol=1e-8)
        np.testing.assert_allclose(batch.covariances_[b], one.covariances_[0], atol=1e-8)
        np.testing.assert_allclose(batch.weights_[b], one.weights_[0], atol=1e-8)
        assert batch.n_iter_[b] == one.n_iter_[0]
    assert batch.converged_.all()
    assert len(set(batch.n_iter_.tolist())) > 1  # each problem stopped on its own


def test_shapes_types_and_probabilities():
    rng = np.random.default_rng(0)
    X = _blobs(rng, 30)
    gmm = WeightedGaussianMixture(3, random_state=0).fit(X)
    assert gmm.means_.shape == (3, 2) and gmm.covariances_.shape == (3, 2, 2)
    assert isinstance(gmm.weights_, np.ndarray) and isinstance(gmm.converged_, bool)
    proba = gmm.predict_proba(X[:7])
    assert proba.shape == (7, 3)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(gmm.predict(X[:7]), proba.argmax(1))
    assert gmm.score_samples(X[:7]).shape == (7,)
    assert gmm.weights_.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(gmm.precisions_ @ gmm.covariances_, np.eye(2)[None].repeat(3, 0),
                               atol=1e-3)  # fmt: skip

    Xt = torch.tensor(np.stack([X, X[::-1].copy()]), dtype=torch.float32)
    batch = WeightedGaussianMixture(3, random_state=0).fit(Xt, sample_weight=torch.ones(2, 30))
    assert torch.is_tensor(batch.means_) and batch.means_.shape == (2, 3, 2)
    assert batch.predict_proba(Xt).shape == (2, 30, 3)
    assert batch.predict(Xt).dtype == torch.int64
    assert batch.score(Xt).shape == (2,)
    with pytest.raises(DataError, match="expects"):
        batch.predict(Xt[0])


def test_a_component_that_loses_all_weight_stays_finite():
    rng = np.random.default_rng(1)
    X = rng.normal(0.5, 0.05, size=(40, 2))
    init = {
        "weights_init": np.array([0.5, 0.5]),
        "means_init": np.array([[0.5, 0.5], [50.0, 50.0]]),  # nothing near the second one
        "precisions_init": np.stack([np.eye(2) * 100.0] * 2),
    }
    for dtype in ("float32", "float64"):
        gmm = WeightedGaussianMixture(2, max_iter=30, tol=0.0, dtype=dtype, **init).fit(X)
        assert np.isfinite(gmm.means_).all() and np.isfinite(gmm.covariances_).all()
        assert gmm.weights_[1] < 1e-5
        np.testing.assert_allclose(gmm.means_[1], [50.0, 50.0])  # kept where it was
        assert np.isfinite(gmm.lower_bound_)


@pytest.mark.parametrize("points", [1, 2, 3])
def test_fewer_weighted_points_than_components_give_a_finite_fit(points):
    X = np.array([[0.1, 0.2], [0.7, 0.9], [0.4, 0.4]])[:points]
    gmm = WeightedGaussianMixture(5, random_state=0, reg_covar=1e-4).fit(X)
    assert np.isfinite(gmm.means_).all() and np.isfinite(gmm.covariances_).all()
    assert np.isfinite(gmm.predict_proba(X)).all()
    assert len(set(gmm.predict(X).tolist())) == points


def test_random_init_is_seeded():
    X = _blobs(np.random.default_rng(5), 50)
    a = WeightedGaussianMixture(3, init_params="random", random_state=4).fit(X)
    b = WeightedGaussianMixture(3, init_params="random", random_state=4).fit(X)
    np.testing.assert_array_equal(a.means_, b.means_)


def test_bad_input_and_settings_are_reported():
    X = np.random.default_rng(0).uniform(size=(10, 2))
    with pytest.raises(DataError, match="positive weight"):
        WeightedGaussianMixture(2).fit(X, sample_weight=np.zeros(10))
    with pytest.raises(DataError, match="negative"):
        WeightedGaussianMixture(2).fit(X, sample_weight=-np.ones(10))
    with pytest.raises(DataError, match="one weight per sample"):
        WeightedGaussianMixture(2).fit(X, sample_weight=np.ones(9))
    with pytest.raises(DataError, match="NaN"):
        WeightedGaussianMixture(2).fit(np.full((10, 2), np.nan))
    with pytest.raises(ConfigError, match="init_params"):
        WeightedGaussianMixture(2, init_params="kmeans").fit(X)
    with pytest.raises(ConfigError, match="means_init"):
        WeightedGaussianMixture(2, means_init=np.zeros((3, 2))).fit(X)
    with pytest.raises(ConfigError, match="positive definite"):
        WeightedGaussianMixture(2, precisions_init=-np.stack([np.eye(2)] * 2)).fit(X)


# ----------------------------------------------------------------------------- segment()


def _blob_maps() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Two 20x20 maps with three well-separated positive blobs of different strength."""
    grid = torch.arange(20, dtype=torch.float32)
    r, c = grid[:, None], grid[None, :]
    centres = [((4, 4), 3.0), ((15, 5), 2.0), ((10, 15), 1.0)]
    masks, maps = [], torch.zeros(2, 1, 20, 20)
    for (cy, cx), amp in centres:
        d2 = (r - cy) ** 2 + (c - cx) ** 2
        masks.append(d2 <= 4)
        maps[0, 0] += amp * torch.where(d2 <= 4, torch.exp(-d2 / 8), torch.zeros(()))
    maps[0, 0] -= 0.5 * ((r - 18) ** 2 + (c - 18) ** 2 <= 2).float()  # negative: background
    maps[1] = maps[0].flip(-1)
    return maps, masks


def test_segment_recovers_separated_blobs_largest_first():
    maps, masks = _blob_maps()
    seg = segment(maps, 3, seed=0)
    assert isinstance(seg, Segmentation) and seg.n_clusters == 3
    assert seg.labels.shape == (2, 20, 20) and seg.labels.dtype == torch.int64
    assert seg.responsibilities.shape == (2, 3, 20, 20)
    for expected, mask in enumerate(masks):  # blobs were made strongest first
        assert (seg.labels[0][mask] == expected).all()
        assert (seg.labels[1][mask.flip(-1)] == expected).all()
    foreground = torch.stack(masks).any(0)
    assert (seg.labels[0][~foreground] == -1).all()


def test_segment_with_more_clusters_than_blobs_never_mixes_blobs():
    maps, masks = _blob_maps()
    seg = segment(maps[:1], 7, seed=1)
    ids = [set(seg.labels[0][m].tolist()) for m in masks]
    assert all(ids) and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    used = seg.labels[0][seg.labels[0] >= 0].unique()
    assert used.tolist() == list(range(len(used)))  # ids are 0..k-1


def test_responsibilities_are_posteriors_on_the_foreground_only():
    maps, _ = _blob_maps()
    seg = segment(maps, 4, seed=0)
    fg = seg.labels >= 0
    total = seg.responsibilities.sum(1)
    torch.testing.assert_close(total[fg], torch.ones_like(total[fg]), atol=1e-5, rtol=0)
    assert (seg.responsibilities.permute(0, 2, 3, 1)[~fg] == 0).all()
    assert torch.equal(seg.responsibilities.argmax(1)[fg], seg.labels[fg])
    assert torch.isfinite(seg.responsibilities).all()


def test_segment_is_deterministic_and_independent_of_its_batch():
    maps, _ = _blob_maps()
    noise = torch.randn(6, 1, 20, 20, generator=torch.Generator().manual_seed(0))
    maps = torch.cat([maps, noise])
    first, again = segment(maps, 5, seed=3), segment(maps, 5, seed=3)
    assert torch.equal(first.labels, again.labels)
    alone = segment(maps[4:5], 5, seed=3)
    one_by_one = segment(maps, 5, seed=3, batch_size=1)
    # up to float32 rounding in differently padded batches
    assert (alone.labels[0] == first.labels[4]).float().mean() > 0.98
    assert (one_by_one.labels == first.labels).float().mean() > 0.98
    assert not torch.equal(segment(maps, 5, seed=4).labels, first.labels)


def test_degenerate_maps_have_defined_segmentations():
    maps = torch.zeros(6, 1, 8, 8)
    maps[1, 0, 2, 3] = 0.7  # one pixel
    maps[2, 0, 0, 0], maps[2, 0, 5, 5], maps[2, 0, 7, 1] = 0.2, 0.9, 0.5  # three pixels < J
    maps[3] = 1.0  # constant
    maps[4] = -1.0  # only negative evidence
    maps[5, 0, 1:3, 1:3] = 1e-30  # tiny but positive
    seg = segment(maps, 4, seed=0)
    assert (seg.labels[0] == -1).all() and (seg.responsibilities[0] == 0).all()
    assert seg.labels[1][2, 3] == 0 and (seg.labels[1] >= 0).sum() == 1
    assert seg.labels[2][5, 5] == 0 and seg.labels[2][7, 1] == 1 and seg.labels[2][0, 0] == 2
    assert seg.responsibilities[2, 1, 7, 1] == 1.0
    assert (seg.labels[3] >= 0).all() and seg.labels[3].unique().tolist() == [0, 1, 2, 3]
    assert (seg.labels[4] == -1).all()
    assert seg.cluster_counts().tolist() == [0, 1, 3, 4, 0, 4]
    assert torch.isfinite(seg.responsibilities).all()


def test_channels_are_summed_before_the_positive_part():
    maps = torch.zeros(1, 3, 6, 6)
    maps[0, 0, 1, 1], maps[0, 1, 1, 1] = 1.0, -2.0  # net negative: background
    maps[0, 0, 4, 4], maps[0, 2, 4, 4] = 0.5, 0.5
    seg = segment(maps.numpy(), 2)  # numpy accepted
    assert seg.labels[0, 1, 1] == -1 and seg.labels[0, 4, 4] == 0


def test_threshold_drops_weak_pixels():
    maps = torch.zeros(1, 10, 10)  # [N, H, W] accepted
    maps[0, 2:5, 2:5] = 1.0
    maps[0, 7:9, 7:9] = 0.05
    assert (segment(maps, 2, threshold=0.1).labels[0, 7:9, 7:9] == -1).all()
    assert (segment(maps, 2, threshold=0.01).labels[0, 7:9, 7:9] >= 0).all()


def test_segment_rejects_bad_input():
    with pytest.raises(DataError, match="NaN"):
        segment(torch.full((1, 1, 4, 4), float("nan")))
    with pytest.raises(DataError, match="shape"):
        segment(torch.zeros(4, 4))
    with pytest.raises(ConfigError, match="n_clusters"):
        segment(torch.zeros(1, 1, 4, 4), 0)
    with pytest.raises(ConfigError, match="threshold"):
        segment(torch.zeros(1, 1, 4, 4), threshold=1.5)
