"""Shortcut models against independent float64 references: check FM-2 (a), (b), (c)."""
import itertools
import math

import numpy as np
import pytest
import torch

import diffusion_lessons as dl
from diffusion_lessons.flow_maps import (
    AverageVelocityMap,
    ShortcutObjective,
    exact_average_velocity,
    exact_velocity,
    sample_flow_map,
    self_consistency_target,
)

MU, LAM = 0.5, 0.25  # 1-D data N(0.5, 0.25)
DATA = dl.Gaussian(torch.tensor([MU], dtype=torch.float64), torch.tensor([[LAM]], dtype=torch.float64))
RF = dl.RectifiedFlow()
U = exact_average_velocity(DATA, RF)


def np_phi(x, t, r):
    """Independent closed form on rectified flow: Phi_{t->r}(x) = (1-r) mu + sqrt(v(r)/v(t)) (x - (1-t) mu)."""
    v = lambda s: (1 - s) ** 2 * LAM + s**2
    return (1 - r) * MU + np.sqrt(v(r) / v(t)) * (x - (1 - t) * MU)


def np_velocity(x, t):
    """dPhi/dr at r = t, from the closed form: -mu + (x - (1-t) mu) v'(t) / (2 v(t))."""
    v, dv = (1 - t) ** 2 * LAM + t**2, -2 * (1 - t) * LAM + 2 * t
    return -MU + (x - (1 - t) * MU) * dv / (2 * v)


def _x(n=101):
    return torch.linspace(-3, 3, n, dtype=torch.float64)[:, None]


# -- FM-2 (a) ---------------------------------------------------------------------------------------------
def test_fm2a_the_exact_map_is_self_consistent():
    """Check FM-2 (a): s(x, t, d) = (x - Phi_{t -> t-d}(x)) / d equals its own two-half-step target."""
    x = _x()
    worst = 0.0
    for k in range(7):
        d = 2.0**-k
        for t in np.arange(1.0, 0.0, -d)[:4]:
            tt, rr = torch.full((len(x),), t, dtype=torch.float64), torch.full((len(x),), t - d, dtype=torch.float64)
            target = self_consistency_target(U, x, tt, rr, clip=math.inf)
            worst = max(worst, (U(x, tt, rr) - target).abs().max().item())
    print("self-consistency residual", worst)
    assert worst < 1e-12


def _wrong_time_target(net, x, t, r):
    """The target with the second half step read at t instead of t - d/2 (a wrong target)."""
    mid = (t + r) / 2
    u1 = net(x, t, mid)
    return (u1 + net(x - (t - mid)[:, None] * u1, t, t - (t - mid))) / 2


def test_fm2a_a_wrong_half_step_time_fails_the_check():
    x = _x()
    tt, rr = torch.full((len(x),), 0.75, dtype=torch.float64), torch.full((len(x),), 0.25, dtype=torch.float64)
    assert (U(x, tt, rr) - _wrong_time_target(U, x, tt, rr)).abs().max() > 1e-2


def test_fm2a_the_objective_vanishes_at_the_exact_map_on_bootstrap_rows():
    """With every row a bootstrap row, the shortcut loss of the exact average velocity is zero."""
    objective = ShortcutObjective(bootstrap_every=1, denoise_timesteps=16, clip=math.inf)
    g = torch.Generator().manual_seed(0)
    x0 = DATA.sample(4096, generator=g)
    drawn = objective.draw(x0, g, 1, 1)
    assert bool(drawn[3].all())
    assert objective.loss(U, U, x0, *drawn).item() < 1e-24


# -- FM-2 (b) ---------------------------------------------------------------------------------------------
def test_fm2b_the_shortcut_tends_to_the_velocity_at_first_order():
    """Check FM-2 (b): max |s(x, t, d) - v(x, t)| at t = 0.7 (0.3 in the paper's time) halves with d."""
    x = _x()
    t = 0.7
    ours, ref = [], []
    v = exact_velocity(DATA, RF)(x, t)
    assert np.abs(v.numpy() - np_velocity(x.numpy(), t)).max() < 1e-13
    for k in range(3, 8):
        d = 2.0**-k
        ours.append((U(x, t, t - d) - v).abs().max().item())
        xs = x.numpy()
        ref.append(np.abs((xs - np_phi(xs, t, t - d)) / d - np_velocity(xs, t)).max())
    assert np.allclose(ours, ref, rtol=1e-8, atol=0), (ours, ref)
    ratios = [a / b for a, b in itertools.pairwise(ours)]
    print("errors", ours, "ratios", ratios)
    assert all(1.9 <= q <= 2.25 for q in ratios), ratios


# -- FM-2 (c) ---------------------------------------------------------------------------------------------
def test_fm2c_one_step_of_size_one_samples_the_data():
    """Check FM-2 (c): one step d = 1 from N(0, 1) gives the data law N(0.5, 0.25) (MC within 4 s.e.)."""
    n = 200_000
    z = torch.randn(n, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = sample_flow_map(AverageVelocityMap(U), z, [1.0, 0.0])
    x = out.x.numpy().ravel()
    assert out.nfe == 1
    assert abs(x.mean() - MU) < 4 * math.sqrt(LAM / n)
    assert abs(x.var(ddof=1) - LAM) < 4 * LAM * math.sqrt(2 / (n - 1))


# -- the draw of the code of record -----------------------------------------------------------------------
def test_the_draw_splits_the_batch_as_the_code_does():
    objective = ShortcutObjective()  # T = 128, bootstrap_every = 8
    x0 = torch.zeros(256, 2)
    t, r, eps, boot = objective.draw(x0, torch.Generator().manual_seed(2), 1, 1)
    d = (t - r)[boot]
    assert int(boot.sum()) == 32 and bool(boot[:32].all())
    levels = torch.round(-torch.log2(d)).long()
    counts = torch.bincount(levels, minlength=7)
    assert counts[1:].tolist() == [4] * 6 and counts[0].item() == 4 + 4  # 4 per level, the remainder at d = 1
    assert torch.allclose((t[boot] / d), torch.round(t[boot] / d)) and bool((r[boot] >= 0).all())
    assert torch.allclose(t[~boot] - r[~boot], torch.full((224,), 1 / 128))
    assert torch.allclose(t[~boot] * 128, torch.round(t[~boot] * 128)) and bool((r[~boot] >= 0).all())
    assert eps.shape == x0.shape


def test_the_bootstrap_targets_come_from_the_ema_network_without_gradient():
    torch.manual_seed(0)
    model, ema = dl.FlowMapMLP(1, hidden=16).double(), dl.FlowMapMLP(1, hidden=16).double()
    objective = ShortcutObjective(denoise_timesteps=16, bootstrap_every=2)
    x0 = DATA.sample(64, generator=torch.Generator().manual_seed(3))
    t, r, eps, boot = objective.draw(x0, torch.Generator().manual_seed(4), 1, 1)
    model.zero_grad()
    objective.loss(model, ema, x0, t, r, eps, boot).backward()
    ours = torch.cat([p.grad.flatten() for p in model.parameters()])
    x_t = (1 - t)[:, None] * x0 + t[:, None] * eps
    target = eps - x0
    target[boot] = self_consistency_target(ema, x_t[boot], t[boot], r[boot])
    model.zero_grad()
    ((model(x_t, t, r) - target) ** 2).mean().backward()
    assert torch.allclose(ours, torch.cat([p.grad.flatten() for p in model.parameters()]), rtol=1e-10, atol=1e-14)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="power of 2"):
        ShortcutObjective(denoise_timesteps=100)
