"""Distributions with exact answers: Gaussians and Gaussian mixtures, and the toy data sets.

Under the path x_t = alpha_t x0 + sigma_t eps, a mixture stays a mixture (checks TK-1 to TK-4):

    p_t(x) = sum_k pi_k N(x; alpha_t mu_k, C_k(t)),   C_k(t) = alpha_t^2 Sigma_k + sigma_t^2 I,

so its score, its Hessian and its denoiser E[x0 | x_t] are known in closed form. They are the
references every trained model in the course is held against.

Each covariance is diagonalised once, Sigma_k = U_k diag(lambda_k) U_k^T; then for every t,
C_k(t) = U_k diag(alpha_t^2 lambda_k + sigma_t^2) U_k^T, so solves and log-determinants cost one
matrix product and are batched over points *and* times (t may differ per point). Zero-variance
directions (lambda = 0, data on a subspace) are handled for any t > 0.
"""
from __future__ import annotations

import math

import torch

from .paths import Path, as_time, convert, field_time
from .validate import check_allocation, whole_number

__all__ = [
    "GaussianMixture",
    "Gaussian",
    "exact_score",
    "exact_log_prob",
    "exact_denoiser",
    "exact_score_jacobian",
    "exact_prediction",
    "gmm2",
    "gauss2",
    "toy_data",
    "TOY_DATASETS",
    "manifold_data",
    "MANIFOLD_DATASETS",
]


def _as_floats(value, name: str, dtype=None, device=None) -> torch.Tensor:
    """value as a tensor (of dtype on device when given); ValueError naming it when it holds no numbers."""
    try:
        out = torch.as_tensor(value, dtype=dtype, device=device)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be a tensor (or nested list) of numbers; got {type(value).__name__}: "
                         f"{(str(err).splitlines() or [''])[0][:100]}") from None
    if out.is_complex() or out.dtype == torch.bool:
        raise ValueError(f"{name} must hold real numbers; got {out.dtype}")
    return out


def _check_points(x: torch.Tensor, dim: int, who: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who} expects a torch tensor of shape [N, {dim}]; got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"{who} expects x of shape [N, {dim}]; got {list(x.shape)}")


class GaussianMixture:
    """sum_k weights[k] N(means[k], covs[k]) on R^D.

    weights [K] (>= 0 with a positive sum, normalised here), means [K, D], covs [K, D, D]: finite,
    K >= 1, D >= 1, each covariance symmetric positive semi-definite (a zero eigenvalue is allowed: data
    on a subspace, or a point mass with covs = 0, as every noised law p_t with t > 0 is still smooth).
    Computations follow the dtype and device of the points they are given.
    """

    def __init__(self, weights, means, covs):
        means = _as_floats(means, "means")
        dtype = means.dtype if means.is_floating_point() else torch.float64
        weights = _as_floats(weights, "weights", dtype, means.device)
        means = means.to(dtype)
        covs = _as_floats(covs, "covs", dtype, means.device)
        if means.dim() != 2 or 0 in means.shape:
            raise ValueError(f"means must have shape [K, D] with K >= 1 components and D >= 1 dimensions; "
                             f"got {list(means.shape)}")
        K, D = means.shape
        if weights.shape != (K,):
            raise ValueError(f"weights must have shape [K] = [{K}]; got {list(weights.shape)}")
        if covs.shape != (K, D, D):
            raise ValueError(f"covs must have shape [K, D, D] = [{K}, {D}, {D}]; got {list(covs.shape)}")
        for name, value in (("weights", weights), ("means", means), ("covs", covs)):
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"{name} must be finite; got NaN or infinite entries in {name}")
        if bool((weights < 0).any()) or not bool(weights.sum() > 0):
            raise ValueError(f"mixture weights must be >= 0 with a positive sum; got {weights.tolist()}")
        if not torch.allclose(covs, covs.transpose(-1, -2), atol=1e-10, rtol=1e-8):
            raise ValueError("covs must be symmetric: covs[k] == covs[k].T")
        self.weights = weights / weights.sum()
        self.means, self.covs = means, covs
        evals, evecs = torch.linalg.eigh(covs.double())
        if bool((evals < -1e-10 * evals.abs().max().clamp_min(1.0)).any()):
            raise ValueError(f"covs must be positive semi-definite; the smallest eigenvalue is {evals.min().item():.3g}")
        self._evals = evals.clamp_min(0.0).to(dtype)  # [K, D]
        self._evecs = evecs.to(dtype)  # [K, D, D], columns are eigenvectors

    # -- basic facts ---------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def mean(self) -> torch.Tensor:
        """Global mean sum_k pi_k mu_k."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """Global covariance sum_k pi_k (Sigma_k + mu_k mu_k^T) - m m^T."""
        m = self.mean()
        second = torch.einsum("k,kij->ij", self.weights, self.covs + self.means[:, :, None] * self.means[:, None, :])
        return second - torch.outer(m, m)

    def to(self, dtype=None, device=None) -> "GaussianMixture":
        return self._rebuild(lambda a: a.to(dtype=dtype, device=device))

    def _rebuild(self, fn) -> "GaussianMixture":
        return GaussianMixture(fn(self.weights), fn(self.means), fn(self.covs))

    def config(self) -> dict:
        """A JSON-friendly fingerprint (used in model-cache keys)."""
        return {
            "class": type(self).__name__,
            "weights": self.weights.tolist(),
            "means": self.means.tolist(),
            "covs": self.covs.tolist(),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(K={self.n_components}, D={self.dim}, dtype={self.means.dtype})"

    # -- sampling ------------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None, return_labels: bool = False):
        """n exact samples [n, D] (and their component labels [n] when return_labels); n a whole number >= 1."""
        n = whole_number("n", n, 1)
        dev = self.means.device
        per_sample = 8 + self.means.element_size() * (self.dim**2 + 3 * self.dim)  # label, z, root[label], x
        check_allocation(n * per_sample, f"sample(n={n}) of a {self.dim}-dimensional mixture", "draw fewer at a time",
                         dev)
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype, device=dev)
        root = self._evecs * self._evals.sqrt()[:, None, :]  # U diag(sqrt(lambda)): root root^T = Sigma
        x = self.means[labels] + torch.einsum("nij,nj->ni", root[labels], z)
        return (x, labels) if return_labels else x

    # -- exact quantities of the noised law p_t ------------------------------------------------
    def _parts(self, x: torch.Tensor, alpha, sigma):
        """Per-component quantities of p_t at x [N, D] for scalars or [N] tensors alpha, sigma.

        Returns log(pi_k N(x; alpha mu_k, C_k)) [N, K], the component scores -C_k^{-1}(x - alpha mu_k)
        [N, K, D], the rotated residuals z = U^T r [N, K, D] and the eigenvalues c of C_k [N|1, K, D]
        (views of `_parts_kn`'s tensors).
        """
        log_joint, comp_scores, z, c = self._parts_kn(x, alpha, sigma)
        return log_joint.T, comp_scores.permute(2, 0, 1), z.permute(2, 0, 1), c.permute(2, 0, 1)

    def _parts_kn(self, x: torch.Tensor, alpha, sigma):
        """`_parts` laid out with the points last: log_joint [K, N], comp_scores and z [K, D, N], c [K, D, N|1].

        Sums over the components and coordinates then run along whole rows of N numbers; over the short last
        axis of [N, K, D] (K and D are often 2) torch reduces several times slower.
        """
        dt, dev = x.dtype, x.device
        mu, U, lam = (a.to(dtype=dt, device=dev) for a in (self.means, self._evecs, self._evals))
        a = torch.as_tensor(alpha, dtype=dt, device=dev).reshape(1, 1, -1)
        s = torch.as_tensor(sigma, dtype=dt, device=dev).reshape(1, 1, -1)
        r = x.T[None] - a * mu[:, :, None]  # [K, D, N]
        z = U.transpose(1, 2) @ r
        c = a**2 * lam[:, :, None] + s**2  # [K, D, N|1]
        if not torch.compiler.is_compiling() and bool((c == 0).any()):
            raise ValueError("the law has no density where sigma_t = 0 (t = 0, or the mixture itself) and a "
                             "covariance is singular (a point mass, or data on a subspace); use a time t > 0")
        q = z / c
        logdet = torch.log(c).sum(1)
        logw = torch.log(self.weights.to(dtype=dt, device=dev))[:, None]
        log_joint = logw - 0.5 * ((z * q).sum(1) + logdet + self.dim * math.log(2 * math.pi))
        return log_joint, -(U @ q), z, c

    def _score_kn(self, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """grad log p_t at x [N, D]: the posterior-weighted component scores (contiguous [N, D])."""
        log_joint, comp_scores, _, _ = self._parts_kn(x, alpha, sigma)
        return (torch.softmax(log_joint, 0)[:, None] * comp_scores).sum(0).T.contiguous()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) [N] of the mixture itself (t = 0)."""
        _check_points(x, self.dim, "log_prob")
        return torch.logsumexp(self._parts_kn(x, 1.0, 0.0)[0], dim=0)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """grad_x log p(x) [N, D] of the mixture itself (needs nondegenerate covariances)."""
        _check_points(x, self.dim, "score")
        return self._score_kn(x, 1.0, 0.0)

    def noised(self, path: Path, t) -> "GaussianMixture":
        """The law of x_t = alpha_t x0 + sigma_t eps for x0 from this mixture (t a float)."""
        a, s = float(path.alpha(t)), float(path.sigma(t))
        eye = torch.eye(self.dim, dtype=self.covs.dtype, device=self.covs.device)
        return self._rebuild_with(self.weights, a * self.means, a**2 * self.covs + s**2 * eye)

    def _rebuild_with(self, weights, means, covs):
        return GaussianMixture(weights, means, covs)

    def posterior(self, A, y, noise_std: float) -> "GaussianMixture":
        """The exact law of x given y = A x + noise_std * n, n ~ N(0, I): a mixture again (same class).

        A [M, D], y [M], noise_std >= 0 (0: exact observation, needing A Sigma_k A^T invertible).
        By Bayes' rule and Gaussian conditioning, component by component (S_k = A Sigma_k A^T + noise_std^2 I,
        K_k = Sigma_k A^T S_k^{-1}):

            weights  pi_k N(y; A mu_k, S_k) / sum_j pi_j N(y; A mu_j, S_j),
            means    mu_k + K_k (y - A mu_k),      covs  Sigma_k - K_k A Sigma_k.
        """
        A = torch.as_tensor(A, dtype=self.means.dtype, device=self.means.device)
        y = torch.as_tensor(y, dtype=self.means.dtype, device=self.means.device)
        if A.dim() != 2 or A.shape[1] != self.dim or y.shape != (A.shape[0],):
            raise ValueError(f"posterior needs A [M, {self.dim}] and y [M]; got A {list(A.shape)}, y {list(y.shape)}")
        if not noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0; got {noise_std}")
        eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
        S = A @ self.covs @ A.T + noise_std**2 * eye  # [K, M, M]
        gain = torch.linalg.solve(S, A @ self.covs).transpose(-1, -2)  # Sigma_k A^T S_k^{-1} (S_k symmetric)
        residual = y - self.means @ A.T  # [K, M]
        means = self.means + torch.einsum("kdm,km->kd", gain, residual)
        covs = self.covs - gain @ A @ self.covs
        covs = 0.5 * (covs + covs.transpose(-1, -2))  # symmetric to rounding
        log_evidence = -0.5 * (torch.einsum("km,km->k", residual, torch.linalg.solve(S, residual[..., None])[..., 0])
                               + torch.logdet(S))
        weights = torch.softmax(torch.log(self.weights) + log_evidence, 0)
        return self._rebuild_with(weights, means, covs)


class Gaussian(GaussianMixture):
    """N(mean, cov): a one-component mixture, with `mean` [D] and `cov` [D, D] as attributes."""

    def __init__(self, mean, cov):
        mean = torch.as_tensor(mean)
        mean = mean if mean.is_floating_point() else mean.double()
        cov = torch.as_tensor(cov, dtype=mean.dtype, device=mean.device)
        if mean.dim() != 1:
            raise ValueError(f"mean must have shape [D]; got {list(mean.shape)}")
        one = torch.ones(1, dtype=mean.dtype, device=mean.device)
        super().__init__(one, mean[None], cov[None])

    @property
    def mean_vector(self) -> torch.Tensor:
        return self.means[0]

    @property
    def cov(self) -> torch.Tensor:
        return self.covs[0]

    @property
    def eigen(self):
        """(eigenvalues [D], eigenvectors [D, D] as columns) of the covariance, ascending."""
        return self._evals[0], self._evecs[0]

    def _rebuild(self, fn):
        return Gaussian(fn(self.means[0]), fn(self.covs[0]))

    def _rebuild_with(self, weights, means, covs):
        return Gaussian(means[0], covs[0])


# -- exact fields of the noised law, as callables field(x, t) ---------------------------------
def _time_args(dist, path, x, t, who):
    _check_points(x, dist.dim, who)
    t = as_time(t, x, extend=True)  # clamped into [0, 1]: adaptive solvers probe past the ends
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != x.shape[0]):
        raise ValueError(f"{who}: t must be a float or a tensor [N] = [{x.shape[0]}]; got {list(t.shape)}")
    return t, path.alpha(t), path.sigma(t)


def exact_score(dist: GaussianMixture, path: Path):
    """score(x, t) = grad_x log p_t(x) = sum_k w_k(x, t) s_k(x, t), s_k = -C_k^{-1}(x - alpha mu_k)."""

    def score(x, t):
        _, a, s = _time_args(dist, path, x, t, "exact_score")
        return dist._score_kn(x, a, s)

    return score


def exact_log_prob(dist: GaussianMixture, path: Path):
    """log_prob(x, t) = log p_t(x) [N], by log-sum-exp over components."""

    def log_prob(x, t):
        _, a, s = _time_args(dist, path, x, t, "exact_log_prob")
        return torch.logsumexp(dist._parts_kn(x, a, s)[0], dim=0)

    return log_prob


def exact_denoiser(dist: GaussianMixture, path: Path):
    """x0_hat(x, t) = E[x0 | x_t = x] = sum_k w_k [mu_k + alpha Sigma_k C_k^{-1} (x - alpha mu_k)].

    Written through Sigma_k C_k^{-1} = U diag(lambda / c) U^T, it stays finite where alpha_t = 0.
    """

    def denoiser(x, t):
        _, a, s = _time_args(dist, path, x, t, "exact_denoiser")
        log_joint, _, z, c = dist._parts_kn(x, a, s)  # [K, N], [K, D, N], [K, D, N|1]
        U = dist._evecs.to(x)
        lam = dist._evals.to(x)[:, :, None]
        a3 = torch.as_tensor(a, dtype=x.dtype, device=x.device).reshape(1, 1, -1)
        post = dist.means.to(x)[:, :, None] + a3 * (U @ (lam * z / c))
        return (torch.softmax(log_joint, 0)[:, None] * post).sum(0).T.contiguous()

    return denoiser


def exact_score_jacobian(dist: GaussianMixture, path: Path):
    """Hessian of log p_t: sum_k w_k (-C_k^{-1} + s_k s_k^T) - s s^T  [N, D, D] (symmetric)."""

    def jacobian(x, t):
        _, a, s = _time_args(dist, path, x, t, "exact_score_jacobian")
        log_joint, sk, _, c = dist._parts(x, a, s)
        w = torch.softmax(log_joint, 1)
        U = dist._evecs.to(x)
        prec = torch.einsum("kij,nkj,klj->nkil", U, (1 / c).expand(x.shape[0], -1, -1), U)
        score = (w[..., None] * sk).sum(1)
        outer = sk[..., :, None] * sk[..., None, :]
        return (w[..., None, None] * (outer - prec)).sum(1) - score[:, :, None] * score[:, None, :]

    return jacobian


def exact_prediction(dist: GaussianMixture, path: Path, target: str):
    """The exact (MMSE) predictor of `target` in {"eps", "x0", "score", "velocity", "v"} as field(x, t).

    Computed from the denoiser and converted (check PR-1), so it is finite wherever sigma_t > 0.
    """
    denoiser = exact_denoiser(dist, path)

    def field(x, t):
        t = field_time(t, x)  # clamped into [0, 1], like every exact field here
        return convert(denoiser(x, t), "x0", target, x, t, path)

    return field


# -- fixtures: the distributions the chapters and tests share ------------------------------------------
def gmm2(dtype=torch.float64, device=None) -> GaussianMixture:
    """GMM2: pi = (0.3, 0.7), mu = (-2, 0), (2, 1), Sigma_1 = [[.5, .2], [.2, .3]], Sigma_2 = diag(.2, 1)."""
    kw = dict(dtype=dtype, device=device)
    return GaussianMixture(
        torch.tensor([0.3, 0.7], **kw),
        torch.tensor([[-2.0, 0.0], [2.0, 1.0]], **kw),
        torch.tensor([[[0.5, 0.2], [0.2, 0.3]], [[0.2, 0.0], [0.0, 1.0]]], **kw),
    )


def gauss2(axis_aligned: bool = False, dtype=torch.float64, device=None) -> Gaussian:
    """GAUSS2: mu = (1, -1), Sigma = R diag(4, 0.25) R^T with R a 30-degree rotation (or diag(4, .25))."""
    kw = dict(dtype=dtype, device=device)
    lam = torch.tensor([4.0, 0.25], **kw)
    angle = 0.0 if axis_aligned else math.pi / 6
    c, s = math.cos(angle), math.sin(angle)
    R = torch.tensor([[c, -s], [s, c]], **kw)
    return Gaussian(torch.tensor([1.0, -1.0], **kw), R @ torch.diag(lam) @ R.T)


# -- toy 2-D data sets (float32, roughly unit scale) -----------------------------------------------
def _moons(n, g):
    n1 = n // 2
    a = torch.rand(n, generator=g) * math.pi
    upper = torch.stack([torch.cos(a[:n1]), torch.sin(a[:n1])], 1)
    lower = torch.stack([1 - torch.cos(a[n1:]), 0.5 - torch.sin(a[n1:])], 1)
    x = torch.cat([upper, lower]) + 0.06 * torch.randn(n, 2, generator=g)
    return (x - torch.tensor([0.5, 0.25])) * 1.6


def _swiss_roll(n, g):
    s = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
    x = torch.stack([s * torch.cos(s), s * torch.sin(s)], 1) / 5.0
    return x + 0.05 * torch.randn(n, 2, generator=g)


def _checkerboard(n, g):
    x1 = torch.rand(n, generator=g) * 4 - 2
    x2 = torch.rand(n, generator=g) - torch.randint(0, 2, (n,), generator=g) * 2.0
    x2 = x2 + (torch.floor(x1) % 2)
    return torch.stack([x1, x2], 1) * 1.0


def _rings(n, g):
    radii = torch.tensor([0.5, 1.25, 2.0])
    r = radii[torch.randint(0, 3, (n,), generator=g)]
    a = torch.rand(n, generator=g) * 2 * math.pi
    return torch.stack([r * torch.cos(a), r * torch.sin(a)], 1) + 0.05 * torch.randn(n, 2, generator=g)


def _eight_gaussians(n, g):
    angles = torch.arange(8) * (math.pi / 4)
    centres = 2.0 * torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    return centres[torch.randint(0, 8, (n,), generator=g)] + 0.15 * torch.randn(n, 2, generator=g)


def _gmm2(n, g):
    return gmm2().sample(n, generator=g)


_TOY = {
    "moons": _moons,
    "swiss_roll": _swiss_roll,
    "checkerboard": _checkerboard,
    "rings": _rings,
    "8gaussians": _eight_gaussians,
    "gmm2": _gmm2,
}
TOY_DATASETS = tuple(_TOY)


def toy_data(name: str, n: int, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
    """n points [n, 2] of a toy set: moons, swiss_roll, checkerboard, rings, 8gaussians, gmm2."""
    if name not in _TOY:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(TOY_DATASETS)}")
    n = whole_number("n", n, 1)
    check_allocation(n * 64, f"toy_data(n={n})", "draw fewer at a time")  # a few [n, 2] float32 temporaries
    return _TOY[name](n, generator).to(dtype)


# -- data on manifolds of known intrinsic dimension ------------------------------------------------
def _plane_in_r5(n, g):
    basis, _ = torch.linalg.qr(torch.randn(5, 2, generator=torch.Generator().manual_seed(5)))
    return (torch.randn(n, 2, generator=g) @ basis.T) * 1.0


def _circle_in_r3(n, g):
    a = torch.rand(n, generator=g) * 2 * math.pi
    return torch.stack([torch.cos(a), torch.sin(a), torch.zeros(n)], 1)


def _sphere_in_r3(n, g):
    x = torch.randn(n, 3, generator=g)
    return x / x.norm(dim=1, keepdim=True)


# name -> (ambient dimension, intrinsic dimension, sampler)
_MANIFOLDS = {"plane_in_r5": (5, 2, _plane_in_r5), "circle_in_r3": (3, 1, _circle_in_r3), "sphere_in_r3": (3, 2, _sphere_in_r3)}
MANIFOLD_DATASETS = {k: v[:2] for k, v in _MANIFOLDS.items()}


def manifold_data(name: str, n: int, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
    """n points on a manifold of known intrinsic dimension (see MANIFOLD_DATASETS: name -> (ambient, intrinsic))."""
    if name not in _MANIFOLDS:
        raise ValueError(f"unknown manifold dataset {name!r}; valid: {', '.join(_MANIFOLDS)}")
    n = whole_number("n", n, 1)
    check_allocation(n * 128, f"manifold_data(n={n})", "draw fewer at a time")
    return _MANIFOLDS[name][2](n, generator).to(dtype)
