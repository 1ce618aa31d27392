"""Progressive distillation against an independent float64 re-implementation of the two-step DDIM target."""
import numpy as np
import pytest
import torch

import diffusion_lessons as dl
from diffusion_lessons.flow_maps import (
    ProgressiveDistillation,
    ddim_grid,
    distill_rounds,
    sample_ddim,
)

MU, LAM = np.array([1.0, -0.5]), np.array([2.0, 0.3])
DATA = dl.Gaussian(torch.tensor(MU), torch.diag(torch.tensor(LAM)))
VP = dl.VP()


def _ab(t):
    return float(VP.alpha(t)), float(VP.sigma(t))


def np_x0_hat(x, t):
    """Exact E[x0 | x_t] for the axis-aligned Gaussian (numpy)."""
    a, s = _ab(t)
    return MU + a * LAM / (a * a * LAM + s * s) * (x - a * MU)


def np_two_steps(x0, eps, t, n):
    """x_t and two exact-teacher DDIM steps t -> t - 1/2n -> t - 1/n (numpy)."""
    a, s = _ab(t)
    z = x = a * x0 + s * eps
    for u, w in ((t, t - 0.5 / n), (t - 0.5 / n, t - 1.0 / n)):
        au, su = _ab(u)
        aw, sw = _ab(w)
        xh = np_x0_hat(z, u)
        z = aw * xh + sw * (z - au * xh) / su
    return x, z


def np_target(x0, eps, t, n):
    """Two exact-teacher DDIM steps t -> t - 1/2n -> t - 1/n and the one-step x0 that reproduces them."""
    a, s = _ab(t)
    x = a * x0 + s * eps
    z = x
    for u, w in ((t, t - 0.5 / n), (t - 0.5 / n, t - 1.0 / n)):
        au, su = _ab(u)
        aw, sw = _ab(w)
        xh = np_x0_hat(z, u)
        z = aw * xh + sw * (z - au * xh) / su
    a2, s2 = _ab(t - 1.0 / n)
    if s2 == 0:
        return x, z
    return x, (z - s2 / s * x) / (a2 - s2 / s * a)


def test_the_student_target_reproduces_two_teacher_steps():
    n = 4
    objective = ProgressiveDistillation(dl.exact_prediction(DATA, VP, "eps"), "eps", VP, n)
    g = torch.Generator().manual_seed(0)
    x0 = DATA.sample(64, generator=g)
    t, eps = objective.draw(x0, g, 1, 1)
    assert set((t * n).round().long().tolist()) <= set(range(1, n + 1))
    x_t, x_tgt, eps_tgt = objective.targets(x0, t, eps)
    for i in range(len(x0)):
        ref_x, ref_tgt = np_target(x0[i].numpy(), eps[i].numpy(), float(t[i]), n)
        assert np.abs(x_t[i].numpy() - ref_x).max() < 1e-12
        assert np.abs(x_tgt[i].numpy() - ref_tgt).max() < 1e-9
    # one student DDIM step t -> s with (x_tgt, eps_tgt) lands where the teacher's two steps did
    s = t - 1.0 / n
    landed = VP.alpha(s)[:, None] * x_tgt + VP.sigma(s)[:, None] * eps_tgt
    for i in range(len(x0)):
        assert np.abs(landed[i].numpy() - np_two_steps(x0[i].numpy(), eps[i].numpy(), float(t[i]), n)[1]).max() < 1e-9


def test_the_loss_is_the_truncated_snr_weighting_and_trains_the_student_only():
    torch.manual_seed(0)
    teacher = dl.TimeMLP(2, hidden=16).double()
    student = dl.TimeMLP(2, hidden=16).double()
    objective = ProgressiveDistillation(teacher, "eps", VP, 8)
    g = torch.Generator().manual_seed(1)
    x0 = DATA.sample(128, generator=g)
    t, eps = objective.draw(x0, g, 1, 1)
    value = objective.loss(student, None, x0, t, eps)
    value.backward()
    assert all(p.grad is None for p in teacher.parameters())
    x_t, x_tgt, eps_tgt = objective.targets(x0, t, eps)
    v = student(x_t, t).detach()
    a, s = VP.alpha(t)[:, None], VP.sigma(t)[:, None]
    x0_hat, eps_hat = a * x_t - s * v, s * x_t + a * v  # v = alpha eps - sigma x0, alpha^2 + sigma^2 = 1
    ref = torch.maximum(((x0_hat - x_tgt) ** 2).mean(1), ((eps_hat - eps_tgt) ** 2).mean(1)).mean()
    assert abs(value.item() - ref.item()) < 1e-12


def test_an_exact_teacher_sampled_with_ddim_and_one_round_of_distillation(tmp_path, monkeypatch):
    """A round of distillation from a small trained teacher runs end to end; the student samples in N steps."""
    monkeypatch.setenv("DIFFUSION_LESSONS_CACHE", str(tmp_path))
    teacher = dl.fit(dl.TimeMLP(2, hidden=32), DATA.to(torch.float32), VP, steps=100, batch_size=128,
                     progress=False).ema
    rounds = distill_rounds(dl.fit, teacher, "eps", VP, DATA.to(torch.float32), start_steps=8, rounds=2, steps=30,
                            batch_size=64, progress=False)
    assert [r.config["objective"]["config"]["student_steps"] for r in rounds] == [4, 2]
    x = sample_ddim(rounds[-1].ema, "v", VP, torch.randn(500, 2), 2)
    assert x.shape == (500, 2) and bool(torch.isfinite(x).all())
    assert torch.equal(ddim_grid(2), torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="student_steps must be a positive integer"):
        ProgressiveDistillation(dl.TimeMLP(2), "eps", VP, 0)
