"""Gauge freedom, Wasserstein gradient flow and intrinsic dimension (Horvat & Pfister 2024,
arXiv:2402.03845; Vuong et al. 2025, arXiv:2509.00336; Jordan, Kinderlehrer & Otto 1998).

* **Gauge decomposition** (weighted Helmholtz–Hodge, Horvat & Pfister 2024): a 2-D field splits orthogonally in
  L^2(p) as s = grad phi + r with div(p grad phi) = div(p s) and div(p r) = 0. Only grad phi enters the
  continuity equation; the gauge part r moves trajectories, not densities. Solved on a grid by finite
  volumes (phi at the nodes, fluxes on the faces, no flux through the boundary).
* **Continuity equation and WGF** (Jordan et al. 1998; Vuong et al. 2025). The forward Fokker–Planck equation is
  d_t p = -div(p u) with u = f x - g^2/2 grad log p = -g^2/2 grad log(p / pi), pi = N(0, c I),
  c = -g^2 / (2 f): the Wasserstein-2 gradient flow of g^2/2 KL(p || pi). Hence the energy identity
  d/dt KL(p_t || pi) = -g^2/2 E_p |grad log(p_t / pi)|^2 (for VP: c = 1, -beta/2 E|x + grad log p|^2).
* **Intrinsic dimension** (Horvat & Pfister 2024; Stanczuk et al. 2022): the score-Hessian spectrum at small
  noise, the SVD of a matrix of scores near a data point (Stanczuk et al. 2022), and the singular values of the flow-map
  Jacobian. The thresholds used here are ours; which exact rule Horvat & Pfister use is unverified.

Grids are in 'ij' order (values[i, j] sits at (axes[0][i], axes[1][j])) and float64.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
import torch.nn.functional as F

from .diagnostics import jacobian as _jacobian
from .paths import Path, expand_time

__all__ = [
    "ContinuityResidual",
    "DimensionEstimate",
    "EnergyDissipation",
    "GaugeDecomposition",
    "Grid",
    "continuity_residual",
    "empirical_score_hessian",
    "energy_dissipation",
    "flow_map_dimension",
    "flow_map_singular_values",
    "flux_divergence",
    "gauge_condition",
    "gauge_decomposition",
    "gauge_perturbed",
    "kl_to_prior",
    "make_grid",
    "pf_velocity_jacobian",
    "score_hessian_dimension",
    "score_svd_dimension",
    "wgf_prior_variance",
    "wgf_velocity",
]

Field = Callable[[torch.Tensor, object], torch.Tensor]


# -- grids ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Grid:
    """A tensor-product grid: `axes` one increasing, evenly spaced 1-D float64 tensor per dimension."""

    axes: tuple

    shape = property(lambda self: tuple(len(a) for a in self.axes))
    spacing = property(lambda self: tuple(float(a[1] - a[0]) for a in self.axes))

    @property
    def points(self) -> torch.Tensor:
        """All nodes [M, D], M = prod(shape), in 'ij' order (reshape values [M] with `self.reshape`)."""
        mesh = torch.meshgrid(*self.axes, indexing="ij")
        return torch.stack([m.reshape(-1) for m in mesh], 1)

    def reshape(self, values: torch.Tensor) -> torch.Tensor:
        """values [M, ...] -> [*shape, ...]."""
        return values.reshape(*self.shape, *values.shape[1:])

    def integrate(self, values: torch.Tensor) -> float:
        """Riemann sum of values on the nodes ([*shape] or [M]) times the cell volume."""
        return float(values.sum()) * math.prod(self.spacing)


def make_grid(extent, n) -> Grid:
    """Grid over extent = (a, b) (1-D) or (x_min, x_max, y_min, y_max) (2-D, as in plotting), n nodes per axis."""
    extent = [float(e) for e in extent]
    if len(extent) % 2 or not extent:
        raise ValueError(f"extent must be (a, b) or (x_min, x_max, y_min, y_max); got {extent}")
    dims = len(extent) // 2
    ns = [int(n)] * dims if np.isscalar(n) else [int(k) for k in n]
    if len(ns) != dims or min(ns) < 3:
        raise ValueError(f"n must be an integer >= 3 or one per dimension ({dims}); got {n}")
    return Grid(tuple(torch.linspace(extent[2 * k], extent[2 * k + 1], ns[k], dtype=torch.float64)
                      for k in range(dims)))


def _evaluate(field: Field, x: torch.Tensor, t) -> torch.Tensor:
    """field(x, t) as float64 on the CPU; x goes in as it is, except that a network gets its own dtype and device."""
    dtype, device = x.dtype, x.device
    if isinstance(field, torch.nn.Module):
        p = next(field.parameters(), None)
        if p is not None:
            dtype, device = p.dtype, p.device
    with torch.no_grad():
        return field(x.to(dtype=dtype, device=device), t).detach().to("cpu", torch.float64)


def flux_divergence(density: torch.Tensor, vectors: torch.Tensor, grid: Grid) -> torch.Tensor:
    """div(p v) on the nodes by second-order central differences: density [*shape], vectors [*shape, D]."""
    flux = density[..., None] * vectors
    return sum(torch.gradient(flux[..., k], spacing=grid.spacing[k], dim=k, edge_order=2)[0]
               for k in range(len(grid.axes)))


# -- the gauge decomposition ---------------------------------------------------------------------------
def gauge_condition(field: Field, score: Field, x: torch.Tensor, t) -> torch.Tensor:
    """(1/p) div(p r) = div r + r . grad log p at points x [N, D] -> [N]: zero everywhere iff r is a gauge field."""
    div = torch.diagonal(_jacobian(field, x, t), dim1=-2, dim2=-1).sum(-1)
    with torch.no_grad():
        return div + (field(x, t) * score(x, t)).sum(-1)


def gauge_perturbed(score: Field, A: torch.Tensor) -> Field:
    """The field (I + A) score(x, t) = score + A score for a constant antisymmetric A [D, D] (Horvat &
    Pfister 2024): A grad log p_t is a gauge field of every p_t, since div(p A grad log p) = div(A grad p)
    = sum_ij A_ij d_i d_j p = 0. So the PF-ODE driven by (I + A) grad log p_t samples p_t exactly and gives
    exact likelihoods, though its Jacobian (I + A) H is not symmetric (checks GF-1 to GF-3, GF-6).
    score: field(x [N, D], t) -> [N, D]; A is used in x's dtype and device."""
    A = torch.as_tensor(A)
    if A.dim() != 2 or A.shape[0] != A.shape[1] or not torch.allclose(A, -A.T):
        raise ValueError(f"A must be a square antisymmetric matrix (A^T = -A); got {list(A.shape)} {A.tolist()}")

    def field(x, t):
        s = score(x, t)
        return s + s @ A.to(dtype=s.dtype, device=s.device).T

    return field


@dataclasses.dataclass
class GaugeDecomposition:
    """field = conservative + gauge on a 2-D grid, weighted by density p (all on the nodes, float64).

    potential [*shape] (E_p phi = 0), conservative = grad phi and gauge [*shape, 2]; field, density likewise.
    """

    grid: Grid
    t: float
    density: torch.Tensor
    field: torch.Tensor
    potential: torch.Tensor
    conservative: torch.Tensor
    gauge: torch.Tensor

    def norm(self, vectors: torch.Tensor) -> float:
        """||v||_{L^2(p)} = sqrt(int p |v|^2) for vectors [*shape, 2]."""
        return math.sqrt(self.grid.integrate(self.density * vectors.square().sum(-1)))

    def fractions(self) -> dict:
        """||grad phi||_p / ||s||_p and ||r||_p / ||s||_p (their squares add up to 1 when orthogonal)."""
        total = self.norm(self.field)
        return {"conservative": self.norm(self.conservative) / total, "gauge": self.norm(self.gauge) / total}

    def orthogonality(self) -> float:
        """<grad phi, r>_p / (||grad phi||_p ||r||_p): 0 up to discretisation error."""
        inner = self.grid.integrate(self.density * (self.conservative * self.gauge).sum(-1))
        return inner / max(self.norm(self.conservative) * self.norm(self.gauge), 1e-300)

    def as_field(self, part: str = "gauge") -> Field:
        """The part ("gauge", "conservative" or "field") as a field(x, t): bilinear in x, 0 off the grid, t ignored."""
        values = {"gauge": self.gauge, "conservative": self.conservative, "field": self.field}[part]
        image = values.permute(2, 1, 0)[None]  # [1, 2, ny, nx]: grid_sample reads (x, y) = (width, height)
        lo = torch.tensor([float(a[0]) for a in self.grid.axes], dtype=torch.float64)
        hi = torch.tensor([float(a[-1]) for a in self.grid.axes], dtype=torch.float64)

        def interpolated(x, t=None):
            where = (2 * (x.detach().cpu().double() - lo) / (hi - lo) - 1)[None, None]
            out = F.grid_sample(image, where, mode="bilinear", padding_mode="zeros", align_corners=True)
            return out[0, :, 0].T.to(dtype=x.dtype, device=x.device)

        return interpolated


def _face_system(p_faces: list, s_faces: list, shape: tuple, h: tuple):
    """Weighted Laplacian L and right side b of  div_h(p grad_h phi) = div_h(p s)  with no boundary flux."""
    index = np.arange(math.prod(shape)).reshape(shape)
    rows, cols, vals, b = [], [], [], np.zeros(math.prod(shape))
    for k, (pf, sf) in enumerate(zip(p_faces, s_faces)):
        lo = index[(slice(None),) * k + (slice(None, -1),)].ravel()  # node before each face along axis k
        hi = index[(slice(None),) * k + (slice(1, None),)].ravel()
        w = pf.ravel() / h[k] ** 2
        rows += [lo, hi, lo, hi]
        cols += [hi, lo, lo, hi]
        vals += [w, w, -w, -w]
        flux = pf.ravel() * sf.ravel() / h[k]  # a face is the upper face of `lo` and the lower face of `hi`
        np.add.at(b, lo, flux)
        np.add.at(b, hi, -flux)
    L = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(b.size, b.size))
    return L, b


def gauge_decomposition(field: Field, log_prob: Callable, t: float, grid: Grid,
                        floor: float = 1e-10) -> GaugeDecomposition:
    """Weighted Helmholtz–Hodge decomposition of a 2-D field at time t (Horvat & Pfister 2024; check GF-1).

    Solves div(p grad phi) = div(p s) with p(grad phi - s).n = 0 on the boundary: phi on the nodes, p and
    s evaluated at face midpoints (so a gradient field is recovered to O(h^2)), p floored at
    floor * max(p) where it underflows. Then r = s - grad phi has div(p r) = 0, face by face.
    field(x [M, 2], t) -> [M, 2]; log_prob(x [M, 2], t) -> [M] (e.g. dl.exact_log_prob(dist, path)).
    The grid must hold nearly all the mass of p_t.
    """
    if len(grid.axes) != 2:
        raise ValueError(f"gauge_decomposition works on 2-D grids; got a {len(grid.axes)}-D grid")
    h, shape = grid.spacing, grid.shape
    p_faces, s_faces = [], []
    for k in range(2):
        mids = list(grid.axes)
        mids[k] = 0.5 * (grid.axes[k][1:] + grid.axes[k][:-1])
        pts = torch.stack([m.reshape(-1) for m in torch.meshgrid(*mids, indexing="ij")], 1)
        face_shape = tuple(len(m) for m in mids)
        p_faces.append(torch.exp(_evaluate(log_prob, pts, t)).reshape(face_shape).numpy())
        s_faces.append(_evaluate(field, pts, t)[:, k].reshape(face_shape).numpy())
    top = max(float(pf.max()) for pf in p_faces)
    p_faces = [np.maximum(pf, floor * top) for pf in p_faces]
    L, b = _face_system(p_faces, s_faces, shape, h)
    nodes = grid.points
    density = grid.reshape(torch.exp(_evaluate(log_prob, nodes, t)))
    # phi is defined up to a constant. The rows of L and the entries of b sum to 0, so adding phi_pin
    # to one equation forces phi_pin = 0 and leaves a nonsingular, still consistent system.
    pin = int(torch.argmax(density))
    L = L + sp.csr_matrix(([1.0], ([pin], [pin])), shape=L.shape)
    phi = torch.from_numpy(spla.spsolve(L.tocsc(), b)).reshape(shape)
    phi = phi - grid.integrate(density * phi) / grid.integrate(density)
    grads = torch.gradient(phi, spacing=h, edge_order=2)
    conservative = torch.stack(grads, -1)
    values = grid.reshape(_evaluate(field, nodes, t))
    return GaugeDecomposition(grid, float(t), density, values, phi, conservative, values - conservative)


# -- continuity equation and the Wasserstein gradient flow ---------------------------------------------
@dataclasses.dataclass
class ContinuityResidual:
    """residual = d_t p + div(p u) and dp_dt on the grid nodes; relative = max|residual| / max|dp_dt|."""

    residual: torch.Tensor
    dp_dt: torch.Tensor
    relative: float


def continuity_residual(log_prob: Callable, velocity: Field, t: float, grid: Grid,
                        dt: float = 1e-5) -> ContinuityResidual:
    """Residual of the continuity equation d_t p_t + div(p_t u_t) = 0 on a 1-D or 2-D grid (check WGF-1).

    d_t p by a central difference of step dt, div by second-order central differences in x. u is the
    velocity in the forward direction of t (data -> noise), e.g. dl.pf_velocity(score, path).
    """
    if not (0 < t - dt and t + dt < 1):
        raise ValueError(f"need 0 < t - dt and t + dt < 1; got t = {t}, dt = {dt}")
    x = grid.points

    def p(s):
        return grid.reshape(torch.exp(_evaluate(log_prob, x, s)))

    dp_dt = (p(t + dt) - p(t - dt)) / (2 * dt)
    residual = dp_dt + flux_divergence(p(t), grid.reshape(_evaluate(velocity, x, t)), grid)
    return ContinuityResidual(residual, dp_dt, float(residual.abs().max() / dp_dt.abs().max()))


def wgf_prior_variance(path: Path, t) -> torch.Tensor:
    """c_t = -g^2 / (2 f): the variance of the Gaussian pi_t = N(0, c_t I) the forward SDE relaxes to (VP: 1)."""
    f = path.f(t)
    if bool((f >= 0).any()):
        raise ValueError(f"{type(path).__name__} has f(t) >= 0: it relaxes to no Gaussian prior (use VP)")
    return -path.g2(t) / (2 * f)


def wgf_velocity(score: Field, path: Path) -> Field:
    """u_t = -grad (delta F_t / delta p) = -g^2/2 grad log(p_t / pi_t) = -g^2/2 (score + x / c_t)  (Jordan et al. 1998).

    F_t = g^2/2 KL(p || N(0, c_t I)). Algebraically this is pf_velocity: f x - g^2/2 score.
    """

    def velocity(x, t):
        tt = expand_time(t, x)
        return -0.5 * path.g2(tt) * (score(x, t) + x / wgf_prior_variance(path, tt))

    return velocity


def kl_to_prior(log_prob: Callable, t: float, grid: Grid, prior_var: float = 1.0) -> float:
    """KL(p_t || N(0, prior_var I)) = int p (log p - log pi) by quadrature on the grid."""
    x = grid.points
    lp = _evaluate(log_prob, x, t)
    log_pi = -0.5 * (x.square().sum(1) / prior_var + x.shape[1] * math.log(2 * math.pi * prior_var))
    return grid.integrate(torch.exp(lp) * (lp - log_pi))


@dataclasses.dataclass
class EnergyDissipation:
    """dkl_dt (finite difference of the KL) and dissipation = -g^2/2 int p |grad log(p / pi)|^2."""

    dkl_dt: float
    dissipation: float
    relative_gap = property(lambda self: abs(self.dkl_dt - self.dissipation) / abs(self.dissipation))


def energy_dissipation(log_prob: Callable, score: Field, path: Path, t: float, grid: Grid,
                       dt: float = 1e-5) -> EnergyDissipation:
    """Both sides of d/dt KL(p_t || pi) = -g^2/2 E_{p_t} |score + x / c|^2 (check WGF-2), on a grid.

    Needs a prior that does not move: c_t = -g^2 / (2 f) constant in t (VP with any betas: c = 1).
    """
    cs = [float(wgf_prior_variance(path, s)) for s in (t - dt, t, t + dt)]
    if max(cs) - min(cs) > 1e-9 * cs[1]:
        raise ValueError(f"the prior N(0, c_t I), c_t = -g^2/(2f), changes with t for {type(path).__name__} "
                         f"({cs[0]:.6g} -> {cs[2]:.6g}); the identity is stated for a fixed prior (VP: c = 1)")
    x = grid.points
    dkl = (kl_to_prior(log_prob, t + dt, grid, cs[1]) - kl_to_prior(log_prob, t - dt, grid, cs[1])) / (2 * dt)
    fisher = (_evaluate(score, x, t) + x / cs[1]).square().sum(1)
    dissipation = -0.5 * float(path.g2(t)) * grid.integrate(torch.exp(_evaluate(log_prob, x, t)) * fisher)
    return EnergyDissipation(dkl, dissipation)


# -- intrinsic dimension -------------------------------------------------------------------------------
@dataclasses.dataclass
class DimensionEstimate:
    """dimension [N] (int64) per query point, with the spectrum [N, D] it was read from (descending)."""

    dimension: torch.Tensor
    spectrum: torch.Tensor
    method: str
    threshold: float | None


def score_hessian_dimension(score: Field | None, x: torch.Tensor, t: float, path: Path, threshold: float = 0.5,
                            jacobian: Callable | None = None) -> DimensionEstimate:
    """Intrinsic dimension from the spectrum of the score's Jacobian at small noise (checks GF-7, GF-8).

    Near a d-dimensional manifold, grad^2 log p_t has D - d eigenvalues ~ -1/sigma_t^2 (normal) and d of
    order -1/(alpha_t^2 lambda_tan + sigma_t^2) (tangent). spectrum = |eig((J + J^T)/2)| sigma_t^2, sorted
    descending; dimension = D - #{spectrum > threshold}. J = jacobian(x, t) if given (e.g.
    dl.exact_score_jacobian(dist, path)), else the autograd Jacobian of score. x: [N, D] query points.
    """
    J = (jacobian or (lambda y, s: _jacobian(score, y, s)))(x, t).detach().double().cpu()
    eig = torch.linalg.eigvalsh(0.5 * (J + J.transpose(-1, -2))).abs() * float(path.sigma(t)) ** 2
    spectrum = eig.sort(dim=-1, descending=True).values
    dimension = x.shape[1] - (spectrum > threshold).sum(-1)
    return DimensionEstimate(dimension, spectrum, "score Hessian", threshold)


def score_svd_dimension(score: Field, x0: torch.Tensor, t: float, path: Path, n_samples: int = 200,
                        generator: torch.Generator | None = None, threshold: float | None = None) -> DimensionEstimate:
    """Intrinsic dimension from the SVD of scores near data points (Stanczuk et al. 2022, arXiv:2212.12611; check GF-8).

    For each data point x0 [N, D], score(x_k, t) at x_k = alpha_t x0 + sigma_t z_k, k = 1..n_samples, is
    stacked into a matrix [n_samples, D] and centred (our choice: it removes the mean pull along the
    manifold). Its normalised singular values (spectrum, largest = 1) are large in the D - d normal
    directions and small in the tangent ones. codimension = the number before the largest drop (largest
    ratio of consecutive values), or the number above `threshold` if given.
    """
    x0 = x0.reshape(1, -1) if x0.dim() == 1 else x0
    n, D = x0.shape
    a, s = float(path.alpha(t)), float(path.sigma(t))
    z = torch.randn(n, n_samples, D, generator=generator, dtype=torch.float64)
    pts = (a * x0.double().cpu()[:, None] + s * z).reshape(-1, D).to(x0)  # in x0's dtype: a model's, say
    scores = _evaluate(score, pts, t).reshape(n, n_samples, D)
    sv = torch.linalg.svdvals(scores - scores.mean(1, keepdim=True))
    spectrum = sv / sv[:, :1]
    if threshold is None:
        ratios = spectrum[:, :-1] / spectrum[:, 1:].clamp_min(1e-300)
        codim = ratios.argmax(-1) + 1
    else:
        codim = (spectrum > threshold).sum(-1)
    return DimensionEstimate(D - codim, spectrum, "score SVD", threshold)


def empirical_score_hessian(data: torch.Tensor, path: Path) -> Callable:
    """Hessian of log p_t for the empirical law of data [K, D] (a delta mixture), as a callable (x, t) -> [N, D, D]:

        grad^2 log p_t(x) = alpha^2 / sigma^4 Cov[x0 | x_t = x] - I / sigma^2   (second-order Tweedie),

    the posterior over the K points having weights softmax(-|x - alpha x0_k|^2 / (2 sigma^2)). Needs
    memory K D per point, not the K D^2 of exact_score_jacobian, so it scales to many images.
    """

    def jacobian(x, t):
        a, s = float(path.alpha(t)), float(path.sigma(t))
        ref = data.to(x)
        w = torch.softmax(-torch.cdist(x, a * ref).square() / (2 * s**2), dim=1)  # [N, K]
        mean = w @ ref
        second = torch.stack([(ref.T * wn) @ ref for wn in w])  # one D x K product per point
        cov = second - mean[:, :, None] * mean[:, None, :]
        return a**2 / s**4 * cov - torch.eye(x.shape[1], dtype=x.dtype, device=x.device) / s**2

    return jacobian


def pf_velocity_jacobian(score_jacobian: Callable, path: Path) -> Callable:
    """Jacobian of the PF-ODE velocity f x - g^2/2 score: J_v = f I - g^2/2 J_score, as a callable
    (x, t) -> [N, D, D]."""

    def jacobian(x, t):
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        return float(path.f(t)) * eye - 0.5 * float(path.g2(t)) * score_jacobian(x, t)

    return jacobian


def flow_map_singular_values(velocity: Field, x_T: torch.Tensor, t_grid, jacobian: Callable | None = None):
    """Singular values of the flow-map Jacobian Y = d x_t / d x_T along t_grid (Horvat & Pfister 2024).

    Integrates dx/dt = v(x, t) and the variational equation dY/dt = J_v(x, t) Y (Y = I at t_grid[0]) with
    Heun's method. J_v = jacobian(x, t) if given (e.g. pf_velocity_jacobian(...)), else autograd.
    Returns (x at t_grid[-1] [N, D], singular values [len(t_grid), N, D], descending).
    """
    times = [float(s) for s in torch.as_tensor(t_grid, dtype=torch.float64)]
    jac = jacobian or (lambda y, s: _jacobian(velocity, y, s))
    x = x_T.detach()
    Y = torch.eye(x.shape[1], dtype=x.dtype, device=x.device).expand(x.shape[0], -1, -1).clone()
    values = [torch.linalg.svdvals(Y)]
    for t, t_next in itertools.pairwise(times):
        h = t_next - t
        v1, dY1 = _evaluate(velocity, x, t).to(x), jac(x, t).detach() @ Y
        x_pred, Y_pred = x + h * v1, Y + h * dY1
        v2, dY2 = _evaluate(velocity, x_pred, t_next).to(x), jac(x_pred, t_next).detach() @ Y_pred
        x, Y = x + 0.5 * h * (v1 + v2), Y + 0.5 * h * (dY1 + dY2)
        values.append(torch.linalg.svdvals(Y))
    return x, torch.stack(values)


def flow_map_dimension(singular_values: torch.Tensor, threshold: float = 0.1) -> DimensionEstimate:
    """Count the flow-map singular values [N, D] (at one time) above threshold * the largest (check GF-7).

    Off-manifold directions are contracted to 0 as t -> 0, on-manifold ones saturate; the relative
    threshold is our choice, not a rule from Horvat & Pfister (unverified).
    """
    spectrum = singular_values / singular_values[..., :1]
    return DimensionEstimate((spectrum > threshold).sum(-1), spectrum, "flow-map Jacobian", threshold)
