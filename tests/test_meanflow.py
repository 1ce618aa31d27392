"""MeanFlow against independent float64 references: check FM-3 (a), (b); the target's JVP, stop-gradients, draw."""
import math

import numpy as np
import pytest
import torch

import diffusion_lessons as dl
from diffusion_lessons import flow_maps as fm
from diffusion_lessons.flow_maps import (
    AverageVelocityMap,
    MeanFlowObjective,
    exact_average_velocity,
    exact_flow_map,
    exact_velocity,
    meanflow_target,
    sample_flow_map,
)

MU, LAM = 0.5, 0.25
DATA = dl.Gaussian(torch.tensor([MU], dtype=torch.float64), torch.tensor([[LAM]], dtype=torch.float64))
RF = dl.RectifiedFlow()
U, V, PHI = exact_average_velocity(DATA, RF), exact_velocity(DATA, RF), exact_flow_map(DATA, RF)


def np_u(z, t, r):
    """Independent closed form of the average velocity on rectified flow: (z - Phi_{t->r}(z)) / (t - r)."""
    v = lambda s: (1 - s) ** 2 * LAM + s**2
    return (z - ((1 - r) * MU + np.sqrt(v(r) / v(t)) * (z - (1 - t) * MU))) / (t - r)


def np_trajectory(z, t, s):
    v = lambda q: (1 - q) ** 2 * LAM + q**2
    return (1 - s) * MU + np.sqrt(v(s) / v(t)) * (z - (1 - t) * MU)


def _z(n=101):
    return torch.linspace(-3, 3, n, dtype=torch.float64)[:, None]


def _times(t, r, n):
    return torch.full((n,), t, dtype=torch.float64), torch.full((n,), r, dtype=torch.float64)


# -- FM-3 (a) ---------------------------------------------------------------------------------------------
def test_fm3a_the_meanflow_target_at_the_exact_map_is_the_map():
    """Check FM-3 (a): with the exact u and the exact velocity in the tangent, u_tgt = u (t = 0.7, r = 0.2);
    the JVP equals a central difference along the exact trajectory (numpy, h = 1e-5)."""
    z = _z()
    t, r = _times(0.7, 0.2, len(z))
    v = V(z, t)
    u, u_tgt = meanflow_target(U, z, t, r, v)
    residual = (u - u_tgt).abs().max().item()
    print("MeanFlow identity residual", residual)
    assert residual < 1e-8
    assert np.abs(u.detach().numpy() - np_u(z.numpy(), 0.7, 0.2)).max() < 1e-12
    h, zs = 1e-5, z.numpy()
    fd = (np_u(np_trajectory(zs, 0.7, 0.7 + h), 0.7 + h, 0.2) - np_u(np_trajectory(zs, 0.7, 0.7 - h), 0.7 - h, 0.2)) / (2 * h)
    dudt = ((v - u_tgt) / 0.5).numpy()
    assert np.abs(dudt - fd).max() < 1e-8


def test_fm3a_a_sign_error_in_the_tangent_fails_the_check():
    """The same check with tangent (-v, 1, 0) (a wrong target): the residual is far above 1e-8."""
    z = _z()
    t, r = _times(0.7, 0.2, len(z))
    u, dudt = torch.func.jvp(U, (z, t, r), (-V(z, t), torch.ones_like(t), torch.zeros_like(r)))
    assert (u - (V(z, t) - 0.5 * dudt)).abs().max() > 1e-2


# -- FM-3 (b) ---------------------------------------------------------------------------------------------
def test_fm3b_two_steps_equal_one_and_one_step_samples_the_data():
    """Check FM-3 (b): (1 -> 0.5 -> 0) minus (1 -> 0) with the exact u is ~1e-12; the one-step law is exact."""
    n = 200_000
    z1 = torch.randn(n, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    flow = AverageVelocityMap(U)
    one, two = sample_flow_map(flow, z1, [1.0, 0.0]), sample_flow_map(flow, z1, [1.0, 0.5, 0.0])
    assert (one.nfe, two.nfe) == (1, 2)
    gap = (one.x - two.x).abs().max().item()
    print("semigroup gap", gap)
    assert gap < 1e-10
    x = one.x.numpy().ravel()
    assert abs(x.mean() - MU) < 4 * math.sqrt(LAM / n)
    assert abs(x.var(ddof=1) - LAM) < 4 * LAM * math.sqrt(2 / (n - 1))


# -- the loss: stop-gradients and the adaptive weight -----------------------------------------------------
def _central(net, z, t, r, v, h=1e-6):
    """du/dt by a central difference where t - r > 2h; 0 where r = t (the target is v there, whatever du/dt is)."""
    moving = (t - r > 2 * h)[:, None]
    back = torch.where(moving[:, 0], t - h, t)
    return torch.where(moving, (net(z + h * v, t + h, r) - net(z - h * v, back, r)) / (2 * h), torch.zeros_like(z))


def _fd_dudt(net, z, t, r, v, h=1e-6):
    with torch.no_grad():
        return _central(net, z, t, r, v, h)


def _grad(model, value):
    model.zero_grad()
    value.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _setup():
    torch.manual_seed(0)
    model = dl.FlowMapMLP(1, hidden=16, time_dim=8).double()
    objective = MeanFlowObjective()
    x0 = DATA.sample(64, generator=torch.Generator().manual_seed(1))
    t, r, eps = objective.draw(x0, torch.Generator().manual_seed(2), 1, 1)
    z, v = (1 - t)[:, None] * x0 + t[:, None] * eps, eps - x0
    return model, objective, x0, t, r, eps, z, v


def _reference_loss(model, z, t, r, v, detach_target=True, detach_weight=True):
    """The loss written out, du/dt by central differences: sum (u - u_tgt)^2 / sg(sum (u - u_tgt)^2 + 0.01)."""
    u = model(z, t, r)
    if detach_target:
        target = v - (t - r)[:, None] * _fd_dudt(model, z, t, r, v)
    else:  # the target keeps its graph (du/dt by the same difference, differentiable)
        target = v - (t - r)[:, None] * _central(model, z, t, r, v)
    error = ((u - target) ** 2).sum(1)
    weight = error.detach() + 0.01 if detach_weight else error + 0.01
    return (error / weight).mean()


def test_the_loss_gradient_has_stop_gradients_on_the_target_and_the_weight():
    model, objective, x0, t, r, eps, z, v = _setup()
    ours = _grad(model, objective.loss(model, None, x0, t, r, eps))
    reference = _grad(model, _reference_loss(model, z, t, r, v))
    assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-8)
    no_sg_target = _grad(model, _reference_loss(model, z, t, r, v, detach_target=False))
    no_sg_weight = _grad(model, _reference_loss(model, z, t, r, v, detach_weight=False))
    scale = reference.abs().max()
    assert (ours - no_sg_target).abs().max() > 1e-2 * scale  # a missing stop-gradient fails
    assert (ours - no_sg_weight).abs().max() > 1e-2 * scale


def test_the_draw_follows_sample_tr():
    objective = MeanFlowObjective()
    n = 100_000
    t, r, eps = objective.draw(torch.zeros(n, 1), torch.Generator().manual_seed(3), 1, 1)
    k = int(0.75 * n)
    assert torch.equal(t[:k], r[:k]) and bool((t[k:] >= r[k:]).all()) and bool((r[k:] < t[k:]).any())
    logit = torch.log(t / (1 - t)).double()
    # the larger of two N(-0.4, 1): mean -0.4 + 1/sqrt(pi), variance 1 - 1/pi
    mean, var = -0.4 + 1 / math.sqrt(math.pi), 1 - 1 / math.pi
    assert abs(logit.mean().item() - mean) < 4 * math.sqrt(var / n)
    assert eps.shape == (n, 1)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="data_proportion"):
        MeanFlowObjective(data_proportion=1.5)


def test_the_adaptive_weight_settles_on_the_mean_only_for_a_symmetric_law():
    gen = torch.Generator().manual_seed(0)
    symmetric = torch.tensor([1.0, -2.0], dtype=torch.float64) + torch.randn(200_000, 2, generator=gen,
                                                                             dtype=torch.float64)
    # squared error (norm_p = 0): the mean exactly; adaptive weight on a symmetric law: the mean up to MC error
    assert torch.allclose(fm.adaptive_fixed_point(symmetric, norm_p=0.0), symmetric.mean(0), atol=1e-12)
    assert float((fm.adaptive_fixed_point(symmetric) - torch.tensor([1.0, -2.0], dtype=torch.float64)).norm()) < 0.02
    # 70 % of the mass around +2, 30 % around -2 (unit noise): mean 0.8, the weighted fixed point beside the +2 mode
    heavy = (torch.rand(200_000, generator=gen) < 0.7).to(torch.float64) * 4 - 2
    lopsided = (heavy + torch.randn(200_000, generator=gen, dtype=torch.float64))[:, None]
    assert abs(float(lopsided.mean()) - 0.8) < 0.02
    assert float(fm.adaptive_fixed_point(lopsided)) > 1.5
