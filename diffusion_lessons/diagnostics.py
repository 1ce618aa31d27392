"""Conservativity diagnostics: is a learned field the gradient of something? (Vuong et al. 2025,
arXiv:2509.00336; checks GF-6, TK-5, WGF-3 to WGF-5)

A field F(x, t) on R^D is a gradient field, F = grad phi, exactly when (on a simply connected
domain) it passes two equivalent tests:

* the **differential** test: its Jacobian J = dF/dx is symmetric at every point. We report the
  ratio A(x) = ||J - J^T||_F / ||J||_F, which is 0 for a gradient and at most 2 (the book uses this
  ratio, not the variant ||J - J^T||_F / ||J + J^T||_F, because it stays finite when J is
  antisymmetric);
* the **integral** test: every loop integral (circulation) vanishes, and the line integral between
  two points does not depend on the path (for F = grad log p it is log p(b) - log p(a)).

The two tests are linked by Stokes' theorem: on a small circle of radius r in the plane of
orthonormal u, v, circulation / (pi r^2) -> v^T (J - J^T) u as r -> 0.

A *field* is any callable field(x, t) -> tensor like x, with x [N, ...] and t a float or a tensor
[N]; networks, exact scores and lambdas alike. A network (an nn.Module with parameters) is
evaluated in its own dtype and device and the results come back in x's. Every function here
assumes that samples do not interact (output n depends on input n only), which holds for all
networks of the package (no BatchNorm in training mode). Results are detached tensors.
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "EXACT_MAX_DIM",
    "asymmetry_ratio",
    "circulation",
    "jacobian",
    "jacobian_asymmetry",
    "path_independence_gap",
    "path_integral",
    "sub_jacobian",
    "sub_jacobian_asymmetry",
]

EXACT_MAX_DIM = 64  # jacobian_asymmetry uses the exact Jacobian up to this many coordinates per sample
_TRANSFORM_ERRORS = (RuntimeError, NotImplementedError)  # what torch.func raises on fields it cannot trace


# -- shared checks and the field call ------------------------------------------------------------------
def _check_batch(x, who: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] < 1 or not x.is_floating_point():
        got = f"shape {list(x.shape)}, dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{who} expects x: a floating tensor [N, ...] (a batch of N points, N >= 1); got {got}. "
                         "A single point x of shape [D] becomes a batch with x[None]")


def _check_time(t, n: int, who: str):
    """t as given (a float, or a tensor [n] or scalar tensor); raises on any other shape."""
    if isinstance(t, torch.Tensor) and t.dim() > 0 and tuple(t.shape) != (n,):
        raise ValueError(f"{who}: t must be a float or a tensor [{n}] (one time per point or loop); "
                         f"got shape {list(t.shape)}")
    return t


def _repeat_time(t, times: int):
    """Time for a batch repeated `times` times (x.repeat(times, ...)): a float stays a float."""
    return t.repeat(times) if isinstance(t, torch.Tensor) and t.dim() == 1 else t


def _evaluate(field, x: torch.Tensor, t) -> torch.Tensor:
    """field(x, t), a network in its own dtype/device; checks that the result is shaped like x."""
    params = next(field.parameters(), None) if isinstance(field, torch.nn.Module) else None
    if params is not None and (params.dtype != x.dtype or params.device != x.device):
        out = field(x.to(params.device, params.dtype), t)
        out = out.to(x.device, x.dtype) if isinstance(out, torch.Tensor) else out
    else:
        out = field(x, t)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"a field must return a tensor shaped like its input x {list(x.shape)}; got {got}")
    return out


def _needs_graph(out: torch.Tensor) -> None:
    if not out.requires_grad:
        raise ValueError("the field's output does not depend on x through autograd: it was computed under "
                         "torch.no_grad() or detached inside the field; differentiate the field itself instead")


# -- full Jacobians ----------------------------------------------------------------------------------
def jacobian(field, x: torch.Tensor, t, method: str = "auto", chunk_size: int | None = None) -> torch.Tensor:
    """J[n] = d field(x, t)[n] / d x[n]: a tensor [N, D, D] (row i: output i, column j: input j),
    D = prod(x.shape[1:]) (images are flattened in C, H, W order).

    method "func": torch.func.jacrev of the batch sum sum_n field(x, t)[n], i.e. one forward pass on
    the batch and D vector-Jacobian products vectorised by vmap (chunk_size of them at a time; None:
    all D). Exact, fast, and t may differ per point; as samples do not interact, the derivative of
    the batch sum with respect to x[n] is J[n].
    "autograd": a loop of D backward passes with torch.autograd; slower, but works for fields that
    torch.func cannot trace (e.g. a hand-written energy model that calls requires_grad_).
    "auto" (default): "func", falling back to "autograd" when torch.func raises. Both give the same
    numbers (EnergyNet, whose forward calls torch.autograd.grad, works with both). The first torch.func
    call of a session takes a few seconds (it imports torch._dynamo).
    """
    _check_batch(x, "jacobian")
    t = _check_time(t, x.shape[0], "jacobian")
    if method not in ("auto", "func", "autograd"):
        raise ValueError(f"unknown method {method!r}; valid methods: auto, func, autograd")
    if method != "autograd":
        try:
            return _jacobian_func(field, x, t, chunk_size)
        except _TRANSFORM_ERRORS:
            if method == "func":
                raise
    return _jacobian_autograd(field, x, t)


def _jacobian_func(field, x, t, chunk_size):
    n, d = x.shape[0], x[0].numel()

    def summed(xx):
        return _evaluate(field, xx, t).sum(0)

    jac = torch.func.jacrev(summed, chunk_size=chunk_size)(x.detach())  # [*event, N, *event]
    return jac.reshape(d, n, d).transpose(0, 1).detach()


def _jacobian_autograd(field, x, t):
    n, d = x.shape[0], x[0].numel()
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        out = _evaluate(field, xg, t).reshape(n, d)
        _needs_graph(out)
        rows = []
        for i in range(d):
            (row,) = torch.autograd.grad(out[:, i].sum(), xg, retain_graph=i < d - 1, allow_unused=True)
            rows.append(torch.zeros_like(xg) if row is None else row)
    return torch.stack([r.reshape(n, d) for r in rows], 1).detach()


def asymmetry_ratio(J: torch.Tensor) -> torch.Tensor:
    """||J - J^T||_F / ||J||_F for Jacobians J [..., D, D] -> [...] (0 for a gradient field, <= 2)."""
    if not isinstance(J, torch.Tensor) or J.dim() < 2 or J.shape[-1] != J.shape[-2]:
        got = list(J.shape) if isinstance(J, torch.Tensor) else type(J).__name__
        raise ValueError(f"asymmetry_ratio expects square matrices [..., D, D]; got {got}")
    return torch.linalg.matrix_norm(J - J.transpose(-1, -2)) / torch.linalg.matrix_norm(J)


# -- the matrix-free estimator ------------------------------------------------------------------------
def _jvp_vjp(field, x, t, z, need_vjp: bool = True):
    """(J z, J^T z) per sample (J^T z is None unless need_vjp), by torch.func, or by autograd: then
    J z is the derivative of the linear map u -> J^T u (the double-backward trick)."""

    def f(xx):
        return _evaluate(field, xx, t)

    try:
        _, jz = torch.func.jvp(f, (x.detach(),), (z,))
        jtz = torch.func.vjp(f, x.detach())[1](z)[0] if need_vjp else None
        return jz.detach(), None if jtz is None else jtz.detach()
    except _TRANSFORM_ERRORS:
        pass
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        out = f(xg)
        _needs_graph(out)
        u = torch.zeros_like(out, requires_grad=True)
        (jtu,) = torch.autograd.grad(out, xg, u, create_graph=True)
        (jz,) = torch.autograd.grad(jtu, u, z, retain_graph=need_vjp)
        jtz = torch.autograd.grad(out, xg, z)[0] if need_vjp else None
    return jz.detach(), None if jtz is None else jtz.detach()


def _probes(shape, kind: str, dtype, device, generator):
    gen_device = generator.device if generator is not None else device
    if kind == "rademacher":
        z = torch.randint(0, 2, shape, generator=generator, device=gen_device).to(dtype) * 2 - 1
    elif kind == "gaussian":
        z = torch.randn(shape, generator=generator, dtype=dtype, device=gen_device)
    else:
        raise ValueError(f"unknown probe kind {kind!r}; valid kinds: rademacher, gaussian")
    return z.to(device)


def _probe_asymmetry(field, x, t, n_probes: int, probes: str, generator, max_batch: int):
    """Per-point ratio sqrt(2 mean_z a / mean_z b) and its delta-method standard error, with
    a = |Jz|^2 - (J^T z).(J z) (mean ||J - J^T||_F^2 / 2) and b = |Jz|^2 (mean ||J||_F^2)."""
    n = x.shape[0]
    per_chunk = max(1, max_batch // n)
    a, b = [], []
    for start in range(0, n_probes, per_chunk):
        p = min(per_chunk, n_probes - start)
        z = _probes((p * n, *x.shape[1:]), probes, x.dtype, x.device, generator)
        xr = x.detach().repeat(p, *([1] * (x.dim() - 1)))
        jz, jtz = _jvp_vjp(field, xr, _repeat_time(t, p), z)
        jz, jtz = jz.reshape(p, n, -1), jtz.reshape(p, n, -1)
        b.append(jz.square().sum(-1))
        a.append(b[-1] - (jtz * jz).sum(-1))
    a, b = torch.cat(a), torch.cat(b)  # [n_probes, N]
    A, B = a.mean(0).clamp_min(0), b.mean(0)
    ratio = (2 * A / B).sqrt()
    if n_probes < 2:
        return ratio, torch.full_like(ratio, float("nan"))
    va, vb = a.var(0), b.var(0)
    cab = ((a - a.mean(0)) * (b - B)).sum(0) / (n_probes - 1)
    rel = (va / A.square() + vb / B.square() - 2 * cab / (A * B)).clamp_min(0) / n_probes
    stderr = torch.where(A > 0, 0.5 * ratio * rel.sqrt(), torch.zeros_like(ratio))
    return ratio, stderr


def jacobian_asymmetry(field, x: torch.Tensor, t, exact: bool | None = None, n_probes: int = 64,
                       probes: str = "rademacher", generator: torch.Generator | None = None,
                       return_stderr: bool = False, max_batch: int = 1024):
    """Per-point Jacobian asymmetry ratio ||J - J^T||_F / ||J||_F of field(., t) at x [N, ...] -> [N].

    exact=True: from the full Jacobian (`jacobian`, D backward passes); exact=False: the matrix-free
    estimator, which needs only Jacobian-vector products (JVP, J z) and vector-Jacobian
    products (VJP, J^T z) with n_probes isotropic probes z (E z z^T = I; "rademacher" +-1 entries or
    "gaussian"):

        ||J - J^T||_F^2 = 2 E[|Jz|^2 - (J^T z).(J z)],    ||J||_F^2 = E |Jz|^2,

    each mean over the same probes. The ratio of two Monte-Carlo means is biased at O(1/n_probes) and
    consistent; its standard error is O(1/sqrt(n_probes)). exact=None (default): exact when
    D = prod(x.shape[1:]) <= EXACT_MAX_DIM (64), else the estimator. With return_stderr, returns
    (ratio, stderr): the estimator's delta-method standard error (zeros when exact). Probes are
    evaluated in chunks of at most max_batch samples per field call.
    """
    _check_batch(x, "jacobian_asymmetry")
    t = _check_time(t, x.shape[0], "jacobian_asymmetry")
    if exact is None:
        exact = x[0].numel() <= EXACT_MAX_DIM
    if exact:
        ratio = asymmetry_ratio(jacobian(field, x, t))
        return (ratio, torch.zeros_like(ratio)) if return_stderr else ratio
    if int(n_probes) < 1:
        raise ValueError(f"n_probes must be a positive integer; got {n_probes}")
    ratio, stderr = _probe_asymmetry(field, x, t, int(n_probes), probes, generator, int(max_batch))
    return (ratio, stderr) if return_stderr else ratio


# -- sub-Jacobians (images) ---------------------------------------------------------------------------
def _subset(index, k: int, n: int, d: int, device, generator) -> torch.Tensor:
    """Index set [N, k] of flat coordinates: `index` [k] (shared) or [N, k], else k random distinct ones."""
    if index is None:
        if not 1 <= int(k) <= d:
            raise ValueError(f"k must lie in 1..{d} (the number of coordinates per sample); got {k}")
        gen_device = generator.device if generator is not None else "cpu"
        index = torch.randperm(d, generator=generator, device=gen_device)[: int(k)]
    index = torch.as_tensor(index, device=device)
    if index.dtype not in (torch.int64, torch.int32) or index.dim() not in (1, 2) or \
            (index.dim() == 2 and index.shape[0] != n) or index.numel() == 0:
        raise ValueError(f"index must be integer coordinates [k] (the same for all points) or [{n}, k]; "
                         f"got shape {list(index.shape)}, dtype {index.dtype}")
    if int(index.min()) < 0 or int(index.max()) >= d:
        raise ValueError(f"index values must lie in 0..{d - 1} (flat coordinates of one sample)")
    index = index.long().expand(n, -1) if index.dim() == 1 else index.long()
    if bool((index.sort(1).values.diff(dim=1) == 0).any()):
        raise ValueError("index must not repeat a coordinate")
    return index


def sub_jacobian(field, x: torch.Tensor, t, index) -> torch.Tensor:
    """J_SS[n] = [d field_i / d x_j]_{i, j in S} at x[n]: [N, k, k], from k JVPs with the basis
    vectors e_j, j in S. index: flat coordinates (C, H, W order) [k] or [N, k]."""
    _check_batch(x, "sub_jacobian")
    t = _check_time(t, x.shape[0], "sub_jacobian")
    n, d = x.shape[0], x[0].numel()
    if index is None:
        raise ValueError("sub_jacobian needs the coordinates `index` ([k] or [N, k]); "
                         "sub_jacobian_asymmetry draws a random subset for you")
    index = _subset(index, 0, n, d, x.device, None)
    k = index.shape[1]
    tangents = torch.zeros(k, n, d, dtype=x.dtype, device=x.device)
    tangents.scatter_(2, index.T[:, :, None], 1.0)  # tangents[a, n, index[n, a]] = 1
    xr = x.detach().repeat(k, *([1] * (x.dim() - 1)))
    columns, _ = _jvp_vjp(field, xr, _repeat_time(t, k), tangents.reshape(xr.shape), need_vjp=False)
    columns = columns.reshape(k, n, d).permute(1, 2, 0)  # [N, D, k]: column a is J e_{index[a]}
    return torch.gather(columns, 1, index[:, :, None].expand(n, k, k))


def sub_jacobian_asymmetry(field, x: torch.Tensor, t, index=None, k: int = 32,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """Asymmetry ratio ||J_SS - J_SS^T||_F / ||J_SS||_F [N] of the block of the Jacobian on a subset S
    of coordinates (check WGF-5): the cheap test for image models, k JVPs per point instead of D.

    index: flat coordinates [k] or [N, k]; None draws k distinct coordinates with `generator`, the
    same subset for every point. A symmetric J has symmetric blocks, so a non-zero value proves
    non-conservativity; a zero one proves nothing outside S.
    """
    _check_batch(x, "sub_jacobian_asymmetry")
    index = _subset(index, k, x.shape[0], x[0].numel(), x.device, generator)
    return asymmetry_ratio(sub_jacobian(field, x, t, index))


# -- loop and line integrals ---------------------------------------------------------------------------
def _vectors(center, u, v, who: str):
    """center, u, v as [B, D] (broadcast), plus whether the input was a single loop ([D])."""
    tensors = [torch.as_tensor(a) for a in (center, u, v)]
    dtype = next((a.dtype for a in tensors if a.is_floating_point()), torch.get_default_dtype())
    if any(a.dim() not in (1, 2) for a in tensors):
        raise ValueError(f"{who}: center, u and v must be vectors [D] or batches [B, D]; "
                         f"got shapes {[list(a.shape) for a in tensors]}")
    single = all(a.dim() == 1 for a in tensors)
    try:
        c, u, v = torch.broadcast_tensors(*[a.to(dtype).reshape(-1, a.shape[-1]) for a in tensors])
    except RuntimeError:
        raise ValueError(f"{who}: center, u and v must have the same dimension D (and batch size B); "
                         f"got shapes {[list(a.shape) for a in tensors]}") from None
    tol = 1e3 * torch.finfo(dtype).eps
    gram = torch.stack([(u * u).sum(1) - 1, (v * v).sum(1) - 1, (u * v).sum(1)])
    if bool((gram.abs() > tol).any()):
        raise ValueError(f"{who}: u and v must be orthonormal (|u| = |v| = 1, u.v = 0); "
                         "orthonormalise them, e.g. with torch.linalg.qr")
    return c, u, v, single


def _field_on(field, points: torch.Tensor, t, shape, who: str) -> torch.Tensor:
    """field at points [B, M, D] (time t: float or tensor [B]) -> [B, M, D]; shape: the field's event shape."""
    b, m, d = points.shape
    event = (d,) if shape is None else tuple(shape)
    if math.prod(event) != d:
        raise ValueError(f"{who}: shape {event} has {math.prod(event)} coordinates, the points have {d}")
    t = _check_time(t, b, who)
    tt = t.repeat_interleave(m) if isinstance(t, torch.Tensor) and t.dim() == 1 else t
    return _evaluate(field, points.reshape(b * m, *event), tt).reshape(b, m, d).detach()


def circulation(field, center, u, v, radius, t, n: int = 2000, normalize: bool = False, shape=None):
    """Loop integral C = oint field . dgamma around the circle gamma(theta) = c + r (cos theta u + sin theta v),
    theta from 0 to 2 pi (counter-clockwise from u towards v), by the periodic trapezoidal rule with n nodes,

        C ~ sum_j field(gamma(theta_j), t) . gamma'(theta_j) 2 pi / n,   theta_j = 2 pi j / n,

    spectrally accurate for smooth fields. 0 for a gradient field; C / (pi r^2) -> v^T (J - J^T) u as
    r -> 0 (Stokes; J at the centre). normalize=True returns C / (sum_j |field . gamma'| 2 pi / n) in [-1, 1].

    center, u, v: [D] for one loop or [B, D] for B loops (broadcast); u, v orthonormal. radius: float
    or tensor [B]; t: float or tensor [B]. shape: the field's input shape per sample when it is not
    [D] (e.g. (1, 16, 16) for images). Returns a scalar tensor (one loop) or [B].
    """
    c, u, v, single = _vectors(center, u, v, "circulation")
    if int(n) < 3:
        raise ValueError(f"circulation needs n >= 3 nodes; got {n}")
    r = torch.as_tensor(radius, dtype=c.dtype, device=c.device).reshape(-1, 1, 1)
    if r.shape[0] not in (1, c.shape[0]) or not bool((r > 0).all()):
        raise ValueError(f"radius must be positive: a float or a tensor [B] = [{c.shape[0]}]")
    theta = torch.arange(int(n), dtype=c.dtype, device=c.device) * (2 * math.pi / int(n))
    cos, sin = theta.cos()[None, :, None], theta.sin()[None, :, None]
    loops = max(c.shape[0], r.shape[0])
    single = single and torch.as_tensor(radius).dim() == 0
    c, u, v = (a[:, None, :].expand(loops, 1, -1) for a in (c, u, v))
    points = c + r * (cos * u + sin * v)  # [B, n, D]
    tangent = r * (cos * v - sin * u)
    integrand = (_field_on(field, points, t, shape, "circulation") * tangent).sum(-1)  # [B, n]
    value = integrand.sum(1) * (2 * math.pi / int(n))
    if normalize:
        value = value / (integrand.abs().sum(1) * (2 * math.pi / int(n)))
    return value[0] if single else value


def _polyline(vertices, who: str):
    vertices = torch.as_tensor(vertices)
    if vertices.dim() not in (2, 3) or vertices.shape[-2] < 2:
        raise ValueError(f"{who}: a path is its vertices [K + 1, D] (K >= 1 straight segments) or a batch "
                         f"[B, K + 1, D]; got shape {list(vertices.shape)}")
    return (vertices[None] if vertices.dim() == 2 else vertices), vertices.dim() == 2


def path_integral(field, vertices, t, n: int = 64, shape=None):
    """Line integral int_gamma field . dx along the polyline through `vertices` [K + 1, D] (or B paths
    [B, K + 1, D]), from the first vertex to the last, at time t (float or tensor [B]).

    Each straight segment x(s) = a + s (b - a), s in [0, 1], is integrated by composite Simpson with
    n (even) subintervals, error O(n^-4) per segment: int_0^1 field(x(s)) . (b - a) ds. Curved paths
    are polylines with many vertices. For field = grad log p the result is log p(end) - log p(start).
    Returns a scalar tensor (one path) or [B].
    """
    vertices, single = _polyline(vertices, "path_integral")
    if int(n) < 2 or int(n) % 2:
        raise ValueError(f"path_integral needs an even number n >= 2 of Simpson subintervals; got {n}")
    n = int(n)
    dtype = vertices.dtype if vertices.is_floating_point() else torch.get_default_dtype()
    vertices = vertices.to(dtype)
    s = torch.linspace(0, 1, n + 1, dtype=dtype, device=vertices.device)
    w = torch.ones(n + 1, dtype=dtype, device=vertices.device)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    start, step = vertices[:, :-1], vertices[:, 1:] - vertices[:, :-1]  # [B, K, D]
    points = start[:, :, None, :] + s[None, None, :, None] * step[:, :, None, :]  # [B, K, n + 1, D]
    b, k = start.shape[:2]
    values = _field_on(field, points.reshape(b, k * (n + 1), -1), t, shape, "path_integral")
    dots = (values.reshape(b, k, n + 1, -1) * step[:, :, None, :]).sum(-1)  # [B, K, n + 1]
    total = (dots * w).sum((1, 2)) / (3 * n)
    return total[0] if single else total


def path_independence_gap(field, path_1, path_2, t, n: int = 64, shape=None):
    """int_{path_1} field . dx - int_{path_2} field . dx for two polylines (vertices [K + 1, D] or
    [B, K + 1, D], see path_integral) with the same first and last vertex: 0 for a gradient field."""
    p1, single = _polyline(path_1, "path_independence_gap")
    p2, _ = _polyline(path_2, "path_independence_gap")
    if p1.shape[-1] != p2.shape[-1] or p1.shape[0] != p2.shape[0] or not (
            torch.allclose(p1[:, 0], p2[:, 0].to(p1)) and torch.allclose(p1[:, -1], p2[:, -1].to(p1))):
        raise ValueError("path_independence_gap needs two paths with the same start and end points "
                         "(first and last vertices), the same dimension D and the same batch size B")
    gap = path_integral(field, p1, t, n, shape) - path_integral(field, p2, t, n, shape)
    return gap[0] if single else gap
