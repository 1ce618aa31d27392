"""Fields under outside solvers: torchdiffeq's dopri5 probes times past the end of the interval.

An adaptive Runge-Kutta solver steps past the final time and interpolates back (torchdiffeq's dopri5
does; on a smooth field its last step can reach far outside [0, 1]). The package's fields (exact scores,
PF-ODE velocities, reverse drifts) are extended past [0, 1] by their values at the ends, so
`torchdiffeq.odeint` works on them directly and returns the solution of the ODE on [0, 1]; paths
themselves still refuse such times, and no field accepts a NaN time.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import diffusion_lessons as dl

F64 = {"dtype": torch.float64}
S2 = 0.7  # data N(0, S2) in one dimension


def _vp_variance(t: float, s2: float = S2) -> float:
    """Var x_t for x0 ~ N(0, s2) on VP(0.1, 20), written out in numpy: e^{-B} s2 + 1 - e^{-B}."""
    b = 0.1 * t + 0.5 * (20.0 - 0.1) * t * t
    return float(np.exp(-b) * s2 - np.expm1(-b))


@pytest.mark.parametrize("t0, t1", [(1e-3, 1.0), (1.0, 1e-3)])
def test_torchdiffeq_dopri5_integrates_the_exact_pf_ode(t0, t1):
    """For Gaussian data the PF-ODE keeps x / sqrt(Var x_t) constant (independent closed form, numpy);
    odeint's dopri5, with no option that keeps it inside [t0, t1], must reproduce it (it raised before)."""
    odeint = pytest.importorskip("torchdiffeq").odeint
    data = dl.Gaussian(torch.zeros(1, **F64), torch.full((1, 1), S2, **F64))
    path = dl.VP()
    velocity = dl.pf_velocity(dl.exact_score(data, path), path)
    probed = []

    def rhs(t, x):
        probed.append(float(t))
        return velocity(x, t)

    x = torch.linspace(-3, 3, 7, **F64)[:, None]
    out = odeint(rhs, x, torch.tensor([t0, t1], **F64), rtol=1e-10, atol=1e-10, method="dopri5")[-1]
    expected = x.numpy() * math.sqrt(_vp_variance(t1) / _vp_variance(t0))
    assert max(probed) > 1.0 or min(probed) < 0.0  # the solver did step outside [0, 1]
    assert np.abs(out.numpy() - expected).max() < 1e-7


def test_every_exact_field_accepts_times_just_outside_and_reads_the_end_value():
    """Past an end the field is its value at that end (constant extension), for every exact field (the
    velocity prediction, whose eps part is 0/0 at sigma = 0, is undefined at t = 0 and so below it: convert
    says so instead of returning NaN)."""
    gm, path = dl.gmm2(), dl.VP()
    x = gm.sample(5, generator=torch.Generator().manual_seed(0))
    velocity = dl.exact_prediction(gm, path, "velocity")
    fields = [dl.exact_score(gm, path), dl.exact_log_prob(gm, path), dl.exact_denoiser(gm, path),
              dl.exact_score_jacobian(gm, path), velocity,
              dl.pf_velocity(dl.exact_score(gm, path), path), dl.reverse_drift(dl.exact_score(gm, path), path)]
    for field in fields:
        torch.testing.assert_close(field(x, 1.15), field(x, 1.0), rtol=0, atol=0)
        if field is velocity:
            for t in (torch.full((5,), -0.05, **F64), 0.0):
                with pytest.raises(ValueError, match=r"convert from 'x0' to 'velocity' is undefined at t = 0 on vp"):
                    field(x, t)
            continue
        torch.testing.assert_close(field(x, torch.full((5,), -0.05, **F64)), field(x, torch.zeros(5, **F64)),
                                   rtol=0, atol=0)


def test_nan_times_and_paths_still_raise():
    """A field refuses a NaN or infinite time, and a path accepts [0, 1] only."""
    gm, path = dl.gmm2(), dl.VP()
    x = gm.sample(3, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=r"time must lie a finite time \(a field clamps it into \[0, 1\]\)"):
        dl.exact_score(gm, path)(x, math.nan)
    with pytest.raises(ValueError, match=r"a field clamps it"):
        dl.pf_velocity(dl.exact_score(gm, path), path)(x, torch.tensor([0.5, math.inf, 0.2], **F64))
    with pytest.raises(ValueError, match=r"time must lie in \[0, 1\] \(t = 0"):
        path.alpha(1.01)


@pytest.mark.parametrize("extend", [False, True])
def test_a_plain_number_is_read_as_the_same_tensor_and_checked_the_same_way(extend):
    """as_time takes a shortcut for Python floats and ints; it must agree with the tensor route: value, dtype
    (float64 alone, else like's), the clamping of extend=True, and the same error for every bad time."""
    from diffusion_lessons.paths import as_time

    like = torch.zeros(2, dtype=torch.float32)
    for t in (0, 1, 0.0, 0.25, 1.0) + ((-0.5, 1.7, 3) if extend else ()):
        for kwargs in ({}, {"like": like}):
            got, want = as_time(t, extend=extend, **kwargs), as_time(torch.tensor(float(t), **F64), extend=extend,
                                                                      **kwargs)
            assert got.dtype == want.dtype == (torch.float32 if kwargs else torch.float64)
            assert got.shape == () and float(got) == float(want) == min(max(float(t), 0.0), 1.0)
    bad = (math.nan, math.inf, -math.inf) if extend else (math.nan, -0.1, 1.01, 2, -1, math.inf)
    for t in bad:
        with pytest.raises(ValueError) as by_number:
            as_time(t, extend=extend)
        with pytest.raises(ValueError) as by_tensor:
            as_time(torch.tensor(float(t), **F64), extend=extend)
        assert str(by_number.value) == str(by_tensor.value)
