"""Weighted Gaussian mixture estimator, batched over many independent problems in torch.

`WeightedGaussianMixture` follows scikit-learn's estimator API (`fit(X, sample_weight=...)`,
`predict`, `predict_proba`, `score_samples`, fitted attributes with a trailing underscore).
Unlike `sklearn.mixture.GaussianMixture` every sufficient statistic of EM is weighted:

    N_k     = sum_i w_i r_ik                      pi_k = N_k / sum_k N_k
    mu_k    = sum_i w_i r_ik x_i / N_k
    Sigma_k = sum_i w_i r_ik (x_i - mu_k)(x_i - mu_k)^T / N_k + reg_covar * I
    L       = sum_i w_i log p(x_i) / sum_i w_i    (the lower bound used for convergence)

so integer weights act exactly like repeated points and uniform weights reproduce sklearn.
`X` is one problem [n, d] or a batch [B, n, d] with weights [B, n]; all problems run in one set
of tensor operations, each stops on its own convergence test. Zero weights pad problems of
different sizes to one tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin
from torch import Tensor

from lvlmva.errors import ConfigError, DataError

INIT_METHODS = ("k-means++", "random")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class MixtureParams:
    """Parameters of B mixtures with K components in d dimensions."""

    weights: Tensor  # [B, K]
    means: Tensor  # [B, K, d]
    covariances: Tensor  # [B, K, d, d]

    def take(self, index: Tensor) -> MixtureParams:
        return MixtureParams(self.weights[index], self.means[index], self.covariances[index])


# ----------------------------------------------------------------------------- EM kernels


def precision_cholesky(covariances: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """U with U U^T = Sigma^-1 (as sklearn's precisions_cholesky_), half log det Sigma^-1, ok.

    Shapes [B, K, d, d], [B, K], [B, K]; ok is False where Sigma is not positive definite.
    2x2 matrices use the closed form, which is much faster than batched LAPACK calls.
    """
    if covariances.shape[-1] == 2:
        a, b, c = covariances[..., 0, 0], covariances[..., 0, 1], covariances[..., 1, 1]
        l11 = a.clamp_min(0).sqrt()
        l21 = b / l11
        rest = c - l21 * l21
        ok = (a > 0) & (rest > 0) & torch.isfinite(rest)
        l11 = torch.where(ok, l11, torch.ones_like(l11))
        l21 = torch.where(ok, l21, torch.zeros_like(l21))
        l22 = torch.where(ok, rest, torch.ones_like(rest)).sqrt()
        zero = torch.zeros_like(l11)
        U = torch.stack(
            (torch.stack((1.0 / l11, -l21 / (l11 * l22)), -1), torch.stack((zero, 1.0 / l22), -1)),
            -2,
        )
        return U, -(l11.log() + l22.log()), ok
    chol, info = torch.linalg.cholesky_ex(covariances)
    ok = info == 0
    eye = torch.eye(covariances.shape[-1], dtype=covariances.dtype, device=covariances.device)
    chol = torch.where(ok[..., None, None], chol, eye)
    inv = torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False)
    half_log_det = inv.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return inv.transpose(-1, -2), half_log_det, ok


def joint_log_prob(XT: Tensor, params: MixtureParams) -> Tensor:
    """log pi_k + log N(x_i | mu_k, Sigma_k) for points XT [B, d, n]: [B, K, n].

    The whitened residuals z = U^T (x - mu) of all K components come from one batched product
    [U_1^T; ...; U_K^T] @ XT minus U_k^T mu_k, as in sklearn (accurate in float32); the layout
    keeps K off the innermost axis so the reductions over components vectorise.
    """
    B, d, n = XT.shape
    K = params.means.shape[1]
    U, half_log_det, ok = precision_cholesky(params.covariances)
    if not bool(ok.all()):
        raise DataError("a covariance matrix is not positive definite; raise reg_covar")
    scale = math.sqrt(0.5)  # folds the -1/2 of the exponent into z
    stacked = (U.transpose(-1, -2) * scale).reshape(B, K * d, d)
    shift = (params.means.unsqueeze(-2) @ U).reshape(B, K * d, 1) * scale
    z = torch.baddbmm(shift, stacked, XT, beta=-1.0).view(B, K, d, n)
    const = half_log_det + params.weights.log() - 0.5 * d * math.log(2.0 * math.pi)
    out = torch.addcmul(const.unsqueeze(-1), z[:, :, 0], z[:, :, 0], value=-1.0)
    for j in range(1, d):
        out.addcmul_(z[:, :, j], z[:, :, j], value=-1.0)
    return out


def e_step(
    XT: Tensor, w: Tensor, params: MixtureParams, *, times_weight: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Responsibilities [B, K, n], per-point log-likelihood [B, n], weighted mean of it [B].

    With `times_weight` the responsibilities come back multiplied by the sample weights (what
    the M-step needs), saving a pass over the largest tensor.
    """
    log_prob = joint_log_prob(XT, params)
    top = log_prob.amax(1, keepdim=True)
    resp = log_prob.sub_(top).exp_()  # in place: log_prob is not needed any more
    total = resp.sum(1, keepdim=True)
    resp.mul_((w.unsqueeze(1) if times_weight else 1.0) / total)
    log_norm = (top + total.log()).squeeze(1)
    weighted = torch.where(w > 0, w * log_norm, torch.zeros_like(log_norm))
    lower_bound = weighted.sum(-1) / w.sum(-1)
    return resp, log_norm, lower_bound


def point_features(X: Tensor) -> Tensor:
    """[1, x, x x^T (flattened)] of every point: [B, n, 1 + d + d*d].

    One batched product wr @ features gives every weighted sufficient statistic of the M-step.
    """
    ones = torch.ones_like(X[..., :1])
    return torch.cat((ones, X, (X.unsqueeze(-1) * X.unsqueeze(-2)).flatten(-2)), -1)


def m_step(
    features: Tensor,
    w: Tensor,
    wr: Tensor,
    reg_covar: float,
    previous: MixtureParams,
) -> MixtureParams:
    """Weighted estimates from weighted responsibilities wr = w_i r_ik, [B, K, n].

    features = point_features(X). A component whose weighted count falls below machine
    precision of its problem's total weight (or whose covariance is not positive definite)
    keeps the mean and covariance of `previous`, so empty components never give NaN.
    """
    B, K, _ = wr.shape
    d = previous.means.shape[-1]
    eps = torch.finfo(wr.dtype).eps
    stats = wr @ features  # [B, K, 1 + d + d*d]
    raw = stats[..., 0]
    nk = raw + 10.0 * eps  # as sklearn, so empty components divide safely
    means = stats[..., 1 : 1 + d] / nk.unsqueeze(-1)
    cov = stats[..., 1 + d :].reshape(B, K, d, d) / nk[..., None, None]
    eye = torch.eye(d, dtype=wr.dtype, device=wr.device)
    cov = cov - means.unsqueeze(-1) * means.unsqueeze(-2) + reg_covar * eye
    dead = (raw <= eps * w.sum(-1, keepdim=True)) | ~precision_cholesky(cov)[2]
    if bool(dead.any()):
        means = torch.where(dead.unsqueeze(-1), previous.means, means)
        cov = torch.where(dead[..., None, None], previous.covariances, cov)
    weights = nk / nk.sum(-1, keepdim=True)
    return MixtureParams(weights, means, cov)


def overall_covariance(X: Tensor, w: Tensor, reg_covar: float) -> Tensor:
    """Weighted covariance of every problem's points, [B, d, d], regularised."""
    total = w.sum(-1, keepdim=True)
    mean = (w.unsqueeze(-1) * X).sum(1) / total
    diff = X - mean.unsqueeze(1)
    cov = torch.einsum("bn,bni,bnj->bij", w, diff, diff) / total.unsqueeze(-1)
    return cov + reg_covar * torch.eye(X.shape[-1], dtype=X.dtype, device=X.device)


def run_em(
    X: Tensor,
    w: Tensor,
    params: MixtureParams,
    *,
    max_iter: int,
    tol: float,
    reg_covar: float,
) -> tuple[MixtureParams, Tensor, Tensor, Tensor]:
    """EM until every problem converges (|change of lower bound| < tol) or max_iter.

    Returns the parameters, converged [B] bool, n_iter [B] int64 and lower_bound [B]; the lower
    bound is that of the last E-step, as in scikit-learn. Converged problems are frozen and
    leave the batch.
    """
    B = X.shape[0]
    XT, F = X.transpose(1, 2).contiguous(), point_features(X)
    weights, means, covs = params.weights.clone(), params.means.clone(), params.covariances.clone()
    lower = torch.full((B,), -math.inf, dtype=X.dtype, device=X.device)
    converged = torch.zeros(B, dtype=torch.bool, device=X.device)
    n_iter = torch.zeros(B, dtype=torch.int64, device=X.device)
    active = torch.arange(B, device=X.device)
    for _ in range(max_iter):
        if active.numel() == 0:
            break
        every = active.numel() == B
        current = MixtureParams(weights, means, covs)
        if every:
            XTa, Fa, wa = XT, F, w
        else:
            XTa, Fa, wa = XT[active], F[active], w[active]
            current = current.take(active)
        wr, _, bound = e_step(XTa, wa, current, times_weight=True)
        new = m_step(Fa, wa, wr, reg_covar, previous=current)
        done = (bound - lower[active]).abs() < tol
        if every:
            weights, means, covs = new.weights, new.means, new.covariances
        else:
            weights[active], means[active], covs[active] = new.weights, new.means, new.covariances
        lower[active] = bound
        n_iter[active] += 1
        converged[active] = done
        active = active[~done]
    return MixtureParams(weights, means, covs), converged, n_iter, lower


# ----------------------------------------------------------------------------- initialisation


def problem_generators(
    random_state: int | Sequence[int] | None, n: int
) -> list[np.random.Generator]:
    """One numpy generator per problem, so a problem's draws do not depend on the others."""
    if random_state is None:
        base = int(np.random.SeedSequence().entropy % (2**63))
        return [np.random.default_rng((base, b)) for b in range(n)]
    if isinstance(random_state, int | np.integer):
        return [np.random.default_rng((int(random_state), b)) for b in range(n)]
    seeds = [int(s) for s in random_state]
    if len(seeds) != n:
        raise ConfigError(f"random_state lists {len(seeds)} seeds for {n} problems; give one each")
    return [np.random.default_rng(s) for s in seeds]


def _sample_indices(probs: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF draws [B, m] from the rows of probs [B, n] (float64) with uniforms u [B, m]."""
    cdf = probs.cumsum(-1)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_max(probs.shape[1] - 1)
    bad = probs.gather(1, idx) <= 0  # only through rounding at the top end
    return torch.where(bad, probs.argmax(-1, keepdim=True), idx)


def _sq_dist(X: Tensor, centres: Tensor) -> Tensor:
    """Squared distances of points [B, n, d] to centres [B, m, d]: [B, m, n]."""
    return (X.unsqueeze(1) - centres.unsqueeze(2)).square().sum(-1)


def kmeans_plusplus(X: Tensor, w: Tensor, k: int, gens: list[np.random.Generator]) -> Tensor:
    """Greedy weighted k-means++ seeding; returns centre indices [B, k].

    The first centre is drawn with probability proportional to w, every next one among
    2 + log(k) candidates drawn proportional to w * D^2, keeping the one that lowers the weighted
    potential most (sklearn's greedy variant). Duplicate centres only happen when fewer than k
    points carry weight.
    """
    trials = 2 + int(math.log(k))
    draws = np.stack([g.random(1 + (k - 1) * trials) for g in gens])
    u = torch.from_numpy(draws).to(X.device)
    rows = torch.arange(X.shape[0], device=X.device)
    wd = w.double()
    centres = [_sample_indices(wd, u[:, :1])[:, 0]]
    closest = _sq_dist(X, X[rows, centres[0]].unsqueeze(1))[:, 0]  # [B, n]
    for j in range(1, k):
        probs = wd * closest.double()
        probs = torch.where(probs.sum(-1, keepdim=True) > 0, probs, wd)
        cand = _sample_indices(probs, u[:, 1 + (j - 1) * trials : 1 + j * trials])
        new_closest = torch.minimum(closest.unsqueeze(1), _sq_dist(X, X[rows.unsqueeze(1), cand]))
        best = (w.unsqueeze(1) * new_closest).sum(-1).argmin(-1)
        centres.append(cand[rows, best])
        closest = new_closest[rows, best]
    return torch.stack(centres, 1)


def initial_responsibilities(
    X: Tensor, w: Tensor, k: int, method: str, gens: list[np.random.Generator]
) -> tuple[Tensor, Tensor | None]:
    """Responsibilities [B, K, n] to start from, and the seed points [B, K, d] where there are."""
    if method == "random":
        draws = np.stack([g.random((X.shape[1], k)) for g in gens])
        resp = torch.from_numpy(draws).to(device=X.device, dtype=X.dtype).transpose(1, 2)
        return resp / resp.sum(1, keepdim=True), None
    idx = kmeans_plusplus(X, w, k, gens)
    seeds = X.gather(1, idx.unsqueeze(-1).expand(-1, -1, X.shape[-1]))  # [B, K, d]
    nearest = _sq_dist(X, seeds).argmin(1)  # [B, n]
    return torch.nn.functional.one_hot(nearest, k).transpose(1, 2).to(X.dtype), seeds


# ----------------------------------------------------------------------------- estimator


class WeightedGaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture fitted by weighted EM, one problem or a batch of problems at once.

    Parameters mirror `sklearn.mixture.GaussianMixture` (full covariances only):
    `init_params` is "k-means++" (greedy weighted k-means++ seeds, each point hard-assigned to its
    nearest seed) or "random" (uniform random responsibilities); `weights_init`, `means_init`
    ([K, d] or [B, K, d]) and `precisions_init` ([K, d, d] or [B, K, d, d]) override it.
    `random_state` is an int, None, or one seed per problem; problem b of a batch draws from its
    own generator, so its result does not depend on the other problems. `dtype` is "float32"
    (default, fast) or "float64". `device` None uses the device of a tensor `X`, else CPU.

    Fitted attributes (`weights_`, `means_`, `covariances_`, `precisions_`, `converged_`,
    `n_iter_`, `lower_bound_`) carry a leading batch axis when `X` was a batch, and are numpy
    arrays when `X` was a numpy array, torch tensors when it was a tensor.
    """

    def __init__(
        self,
        n_components: int = 7,
        *,
        covariance_type: str = "full",
        max_iter: int = 100,
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        init_params: str = "k-means++",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        random_state: int | Sequence[int] | None = None,
        dtype: str = "float32",
        device: str | torch.device | None = None,
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.max_iter = max_iter
        self.tol = tol
        self.reg_covar = reg_covar
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.dtype = dtype
        self.device = device

    # -- fitting

    def fit(self, X, y=None, sample_weight=None) -> WeightedGaussianMixture:
        """Fit by weighted EM. X [n, d] or [B, n, d]; sample_weight [n] or [B, n] (>= 0)."""
        self._check_settings()
        Xt, wt, batched = self._prepare(X, sample_weight)
        B, _, d = Xt.shape
        has_weight = (wt > 0).sum(-1)
        if bool((has_weight == 0).any()):
            bad = int((has_weight == 0).nonzero()[0])
            raise DataError(f"problem {bad} has no sample with positive weight; drop it first")
        # EM runs on coordinates centred per problem, which keeps float32 moments accurate
        centre = (wt.unsqueeze(-1) * Xt).sum(1, keepdim=True) / wt.sum(-1)[:, None, None]
        Xc = Xt - centre
        start = self._initial_params(Xc, wt, centre, B, d)
        params, converged, n_iter, lower = run_em(
            Xc, wt, start, max_iter=self.max_iter, tol=self.tol, reg_covar=self.reg_covar
        )
        params = MixtureParams(params.weights, params.means + centre, params.covariances)
        self._params = params
        self._batched = batched
        self._numpy = not torch.is_tensor(X)
        out = self._output
        self.weights_ = out(params.weights)
        self.means_ = out(params.means)
        self.covariances_ = out(params.covariances)
        self.precisions_ = out(torch.linalg.inv(params.covariances))
        self.converged_ = out(converged) if batched else bool(converged[0])
        self.n_iter_ = out(n_iter) if batched else int(n_iter[0])
        self.lower_bound_ = out(lower) if batched else float(lower[0])
        return self

    def fit_predict(self, X, y=None, sample_weight=None):
        """Fit, then return the component of highest responsibility of every sample."""
        return self.fit(X, sample_weight=sample_weight).predict(X)

    # -- prediction

    def predict_proba(self, X):
        """Posterior responsibilities, [n, K] (or [B, n, K]); rows sum to 1."""
        Xt, batched = self._prepare_predict(X)
        ones = torch.ones(Xt.shape[:2], dtype=Xt.dtype, device=Xt.device)
        resp, _, _ = e_step(Xt.transpose(1, 2), ones, self._params)
        return self._result(resp.transpose(1, 2), X, batched)

    def predict(self, X):
        """Component of highest responsibility, [n] (or [B, n]) int64."""
        Xt, batched = self._prepare_predict(X)
        return self._result(self._joint_log_prob(Xt).argmax(1), X, batched)

    def score_samples(self, X):
        """Log-likelihood of every sample under the mixture, [n] (or [B, n])."""
        Xt, batched = self._prepare_predict(X)
        return self._result(torch.logsumexp(self._joint_log_prob(Xt), 1), X, batched)

    def score(self, X, y=None, sample_weight=None):
        """Weighted mean log-likelihood: a float, or one per problem [B] for a batch."""
        Xt, batched = self._prepare_predict(X)
        w = self._weights_for(Xt, sample_weight)
        log_norm = torch.logsumexp(self._joint_log_prob(Xt), 1)
        mean = torch.where(w > 0, w * log_norm, torch.zeros_like(log_norm)).sum(-1) / w.sum(-1)
        return self._result(mean, X, True) if batched else float(mean[0])

    def _joint_log_prob(self, Xt: Tensor) -> Tensor:
        """log pi_k + log N(x | mu_k, Sigma_k), [B, K, n]."""
        return joint_log_prob(Xt.transpose(1, 2), self._params)

    # -- helpers

    def _check_settings(self) -> None:
        if not isinstance(self.n_components, int | np.integer) or self.n_components < 1:
            raise ConfigError(f"n_components must be a positive integer, not {self.n_components!r}")
        if self.covariance_type != "full":
            raise ConfigError(
                f"covariance_type {self.covariance_type!r} is not supported; use 'full'"
            )
        if self.init_params not in INIT_METHODS:
            raise ConfigError(
                f"init_params {self.init_params!r} is not one of {', '.join(INIT_METHODS)}"
            )
        if self.dtype not in _DTYPES:
            raise ConfigError(f"dtype {self.dtype!r} is not one of {', '.join(_DTYPES)}")
        if self.max_iter < 0 or self.tol < 0 or self.reg_covar < 0:
            raise ConfigError("max_iter, tol and reg_covar must be >= 0")

    def _device(self, X) -> torch.device:
        if self.device is not None:
            return torch.device(self.device)
        return X.device if torch.is_tensor(X) else torch.device("cpu")

    def _tensor(self, X, name: str) -> Tensor:
        dtype = _DTYPES[self.dtype]
        t = X if torch.is_tensor(X) else torch.as_tensor(np.asarray(X))
        t = t.to(device=self._device(X), dtype=dtype)
        if not bool(torch.isfinite(t).all()):
            raise DataError(f"{name} contains NaN or infinite values; clean it before fitting")
        return t

    def _prepare(self, X, sample_weight) -> tuple[Tensor, Tensor, bool]:
        Xt = self._tensor(X, "X")
        if Xt.ndim not in (2, 3):
            raise DataError(f"X must be [n, d] or [B, n, d], got shape {tuple(Xt.shape)}")
        batched = Xt.ndim == 3
        Xt = Xt if batched else Xt.unsqueeze(0)
        return Xt, self._weights_for(Xt, sample_weight), batched

    def _weights_for(self, Xt: Tensor, sample_weight) -> Tensor:
        if sample_weight is None:
            return torch.ones(Xt.shape[:2], dtype=Xt.dtype, device=Xt.device)
        w = self._tensor(sample_weight, "sample_weight").to(Xt.device)
        if w.numel() != Xt.shape[0] * Xt.shape[1]:
            raise DataError(
                f"sample_weight has shape {tuple(w.shape)}; "
                f"it needs one weight per sample of X {tuple(Xt.shape[:2])}"
            )
        if bool((w < 0).any()):
            raise DataError("sample_weight has negative values; weights must be >= 0")
        return w.reshape(Xt.shape[:2])

    def _initial_params(
        self, X: Tensor, w: Tensor, centre: Tensor, B: int, d: int
    ) -> MixtureParams:
        """Starting parameters for centred X (means_init is given uncentred)."""
        k = self.n_components
        given = (self.weights_init, self.means_init, self.precisions_init)
        estimated = None
        if any(g is None for g in given):
            gens = problem_generators(self.random_state, B)
            resp, seeds = initial_responsibilities(X, w, k, self.init_params, gens)
            # a seed that owns no weight stays where it was drawn, with the overall covariance
            spread = overall_covariance(X, w, self.reg_covar).unsqueeze(1).expand(B, k, d, d)
            where = (
                seeds if seeds is not None else torch.zeros(B, k, d, dtype=X.dtype, device=X.device)
            )
            fallback = MixtureParams(
                torch.full((B, k), 1.0 / k, dtype=X.dtype, device=X.device), where, spread
            )
            wr = resp * w.unsqueeze(1)
            estimated = m_step(point_features(X), w, wr, self.reg_covar, fallback)
        weights = self._broadcast_init(self.weights_init, (B, k), "weights_init", X)
        means = self._broadcast_init(self.means_init, (B, k, d), "means_init", X)
        precisions = self._broadcast_init(self.precisions_init, (B, k, d, d), "precisions_init", X)
        if precisions is not None and bool((torch.linalg.cholesky_ex(precisions)[1] != 0).any()):
            raise ConfigError("precisions_init must hold symmetric positive definite matrices")
        return MixtureParams(
            estimated.weights if weights is None else weights / weights.sum(-1, keepdim=True),
            estimated.means if means is None else means - centre,
            estimated.covariances if precisions is None else torch.linalg.inv(precisions),
        )

    def _broadcast_init(self, value, shape: tuple[int, ...], name: str, X: Tensor) -> Tensor | None:
        if value is None:
            return None
        t = self._tensor(value, name).to(X.device)
        if tuple(t.shape) == shape[1:]:
            t = t.unsqueeze(0).expand(shape)
        if tuple(t.shape) != shape:
            raise ConfigError(f"{name} has shape {tuple(t.shape)}; expected {shape[1:]} or {shape}")
        return t

    def _prepare_predict(self, X) -> tuple[Tensor, bool]:
        if not hasattr(self, "_params"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("call fit before predicting")
        Xt = self._tensor(X, "X").to(self._params.means.device)
        batched = Xt.ndim == 3
        Xt = Xt if batched else Xt.unsqueeze(0)
        B, d = self._params.means.shape[0], self._params.means.shape[-1]
        if Xt.ndim != 3 or Xt.shape[-1] != d or Xt.shape[0] != B or batched != self._batched:
            want = f"[B={B}, n, {d}]" if self._batched else f"[n, {d}]"
            raise DataError(f"X has shape {tuple(np.shape(X))}; this mixture expects {want}")
        return Xt, batched

    def _output(self, t: Tensor):
        t = t if self._batched else t[0]
        return t.detach().cpu().numpy() if self._numpy else t

    @staticmethod
    def _result(t: Tensor, X, batched: bool):
        t = t if batched else t[0]
        return t if torch.is_tensor(X) else t.detach().cpu().numpy()
