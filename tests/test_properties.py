"""Property-based checks (hypothesis) of the path identities and the target conversions.

Random schedules (VP and sub-VP with random beta_min < beta_max, VE with random sigma_min < sigma_max,
rectified flow, cosine), random times in the interior of [0, 1], random shapes [N, ...] and both
float dtypes. Tolerances are a few hundred units in the last place of the dtype, times the
conditioning of the formula checked (how much it can amplify rounding), so float64 checks are
tight and float32 ones are not flaky.
"""
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import diffusion_lessons as dl

# deadline=None: the first call of a torch op can take long on a loaded machine; database=None: no
# .hypothesis folder in the repository (a failure prints the example that reproduces it)
FAST = settings(max_examples=60, deadline=None, database=None)
TARGETS = ("eps", "x0", "score", "velocity")
DTYPES = st.sampled_from([torch.float32, torch.float64])


@st.composite
def paths(draw):
    """A path with a random schedule, kept where its coefficients are O(1)..O(1e3) over t in [0.05, 0.95]."""
    kind = draw(st.sampled_from(["vp", "subvp", "ve", "rf", "cosine"]))
    if kind in ("vp", "subvp"):
        beta_min = draw(st.floats(0.05, 2.0))
        return dl.make_path(kind, beta_min=beta_min, beta_max=beta_min + draw(st.floats(0.5, 20.0)))
    if kind == "ve":
        sigma_min = draw(st.floats(1e-3, 1.0))
        return dl.VE(sigma_min=sigma_min, sigma_max=sigma_min * draw(st.floats(2.0, 1e3)))
    return dl.make_path(kind)


shapes = st.tuples(st.integers(1, 6), st.lists(st.integers(1, 4), min_size=0, max_size=3))
interior_times = st.floats(0.05, 0.95)


def _batch(path, shape, dtype, seed, t_scalar, per_sample):
    """x0, eps ~ N(0, I) of shape [N, *trailing] in `dtype`, and t: t_scalar, or a tensor [N] in [0.05, 0.95]."""
    n, trailing = shape
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, *trailing, generator=g, dtype=torch.float64)
    eps = torch.randn(n, *trailing, generator=g, dtype=torch.float64)
    if per_sample:
        t = 0.05 + 0.9 * torch.rand(n, generator=g, dtype=torch.float64)
    else:
        t = t_scalar
    return x0.to(dtype), eps.to(dtype), (t.to(dtype) if per_sample else t)


def _coefficients(path, t, like):
    """alpha, sigma, alpha', sigma' at t, shaped to broadcast against `like` (float64)."""
    tt = torch.as_tensor(t, dtype=torch.float64)
    shape = (-1, *[1] * (like.dim() - 1)) if tt.dim() else ()
    return [c.reshape(shape) for c in (path.alpha(tt), path.sigma(tt), path.dalpha(tt), path.dsigma(tt))]


def _ulp(dtype):
    return torch.finfo(dtype).eps


def _exact_targets(path, x0, eps, t):
    """The four targets of the pair (x0, eps) at t, computed in float64 from their definitions."""
    a, s, da, ds = _coefficients(path, t, x0)
    x0, eps = x0.double(), eps.double()
    return {"eps": eps, "x0": x0, "score": -eps / s, "velocity": da * x0 + ds * eps}, a * x0 + s * eps


def _condition(path, t, like):
    """How much the affine maps between targets can amplify a relative rounding error (float64 tensor).

    Going through (x0, eps) divides by alpha, by sigma or by the determinant alpha sigma' - sigma alpha'
    of the velocity map: the ratios below bound the amplification, up to a constant.
    """
    a, s, da, ds = _coefficients(path, t, like)
    det = (a * ds - s * da).abs()
    a, s, da, ds = a.abs(), s.abs(), da.abs(), ds.abs()
    size = 1 + a + s + da + ds
    return (1 + a / s + s / a) * (1 + size * (a + s) / det) * (1 + 1 / s)


@FAST
@given(path=paths(), shape=shapes, dtype=DTYPES, seed=st.integers(0, 2**31 - 1), t=interior_times,
       per_sample=st.booleans(), src=st.sampled_from(TARGETS), dst=st.sampled_from(TARGETS))
def test_conversions_round_trip(path, shape, dtype, seed, t, per_sample, src, dst):
    """convert(convert(v, src, dst), dst, src) == v, and convert maps the exact src target to the exact dst."""
    x0, eps, t = _batch(path, shape, dtype, seed, t, per_sample)
    exact, x = _exact_targets(path, x0, eps, t)
    x = x.to(dtype)
    value = exact[src].to(dtype)
    there = dl.convert(value, src, dst, x, t, path)
    back = dl.convert(there, dst, src, x, t, path)
    assert there.dtype == back.dtype == dtype and back.shape == value.shape
    scale = 1 + max(v.abs().max() for v in exact.values())
    tol = 300 * _ulp(dtype) * _condition(path, t, x0) * scale
    round_trip_error = (back.double() - value.double()).abs()
    assert (round_trip_error <= tol).all(), (src, dst, round_trip_error.max())
    assert ((there.double() - exact[dst]).abs() <= tol).all(), (src, dst)


@FAST
@given(path=paths(), shape=shapes, dtype=DTYPES, seed=st.integers(0, 2**31 - 1), t=interior_times,
       per_sample=st.booleans())
def test_velocity_is_the_probability_flow_drift(path, shape, dtype, seed, t, per_sample):
    """u = alpha' x0 + sigma' eps equals f x - g^2 / 2 * score, the PF-ODE drift (check PR-1)."""
    x0, eps, t = _batch(path, shape, dtype, seed, t, per_sample)
    exact, x = _exact_targets(path, x0, eps, t)
    x = x.to(dtype)
    velocity = dl.convert(eps, "eps", "velocity", x, t, path)
    score = dl.convert(eps, "eps", "score", x, t, path)
    tt = torch.as_tensor(t, dtype=dtype)
    shape_t = (-1, *[1] * (x.dim() - 1)) if tt.dim() else ()
    f, g2 = path.f(tt).reshape(shape_t), path.g2(tt).reshape(shape_t)
    drift = f * x - 0.5 * g2 * score
    terms = (f.double() * x.double()).abs() + (0.5 * g2.double() * score.double()).abs() + exact["velocity"].abs()
    tol = 300 * _ulp(dtype) * _condition(path, t, x0) * (1 + terms)
    assert ((drift.double() - velocity.double()).abs() <= tol).all()
    assert ((velocity.double() - exact["velocity"]).abs() <= tol).all()


@FAST
@given(path=paths(), shape=shapes, dtype=DTYPES, seed=st.integers(0, 2**31 - 1), t=interior_times,
       per_sample=st.booleans())
def test_sample_is_alpha_x0_plus_sigma_eps(path, shape, dtype, seed, t, per_sample):
    """path.sample(x0, t) returns x_t = alpha_t x0 + sigma_t eps with the eps it drew (or was given),
    alpha_t and sigma_t as the path computes them in x0's dtype, per sample when t is a tensor [N]."""
    x0, eps, t = _batch(path, shape, dtype, seed, t, per_sample)
    tt = torch.as_tensor(t, dtype=dtype)
    a, s = (c.reshape((-1, *[1] * (x0.dim() - 1)) if tt.dim() else ()) for c in (path.alpha(tt), path.sigma(tt)))
    given_eps, returned = path.sample(x0, t, eps=eps)
    assert returned is eps and given_eps.dtype == dtype and given_eps.shape == x0.shape
    torch.testing.assert_close(given_eps, a * x0 + s * eps, rtol=4 * _ulp(dtype), atol=4 * _ulp(dtype) * (1 + s.max()))
    x_t, drawn = path.sample(x0, t, generator=torch.Generator().manual_seed(seed))
    assert drawn.shape == x0.shape and drawn.dtype == dtype
    torch.testing.assert_close(x_t, a * x0 + s * drawn, rtol=4 * _ulp(dtype), atol=4 * _ulp(dtype) * (1 + s.max()))


@FAST
@given(path=paths(), t=st.lists(st.floats(0.0, 0.99), min_size=1, max_size=8), dtype=DTYPES)
def test_g2_is_non_negative_and_finite(path, t, dtype):
    """g^2 = (sigma^2)' - 2 f sigma^2 >= 0 wherever the SDE is defined (t < 1 for rectified flow)."""
    g2 = path.g2(torch.tensor(t, dtype=dtype))
    assert torch.isfinite(g2).all() and (g2 >= 0).all(), g2


@settings(max_examples=40, deadline=None, database=None)
@given(path=paths(), t=st.floats(0.05, 0.95))
def test_f_and_g2_match_finite_differences(path, t):
    """f = (log alpha)' and g^2 = (sigma^2)' - 2 f sigma^2 from central differences of alpha and sigma (float64)."""
    h = 1e-5
    alpha = lambda s: float(path.alpha(s))  # noqa: E731
    var = lambda s: float(path.sigma(s)) ** 2  # noqa: E731
    f_fd = (math.log(alpha(t + h)) - math.log(alpha(t - h))) / (2 * h)
    g2_fd = (var(t + h) - var(t - h)) / (2 * h) - 2 * f_fd * var(t)
    # truncation error h^2 |third derivative| / 6 and rounding 1e-16 |value| / h, both relative to the
    # size of the terms, and well below 1e-5 for these schedules
    size_f = 1 + abs(f_fd)
    size_g2 = 1 + abs(g2_fd) + 2 * abs(f_fd) * var(t) + abs(var(t + h) - var(t - h)) / (2 * h)
    assert abs(float(path.f(t)) - f_fd) < 1e-5 * size_f, (float(path.f(t)), f_fd)
    assert abs(float(path.g2(t)) - g2_fd) < 1e-5 * size_g2, (float(path.g2(t)), g2_fd)
    dalpha_fd = (alpha(t + h) - alpha(t - h)) / (2 * h)
    assert abs(float(path.dalpha(t)) - dalpha_fd) < 1e-5 * (1 + abs(dalpha_fd))
