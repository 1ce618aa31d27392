"""Progressive distillation (Salimans & Ho 2022): a student that does in one DDIM step what its teacher does in two.

The sampler is DDIM on the uniform grid t_i = i / N of N steps (t = 0 data, t = 1 noise):
x_s = alpha_s x0_hat + sigma_s eps_hat, eps_hat = (x_t - alpha_t x0_hat) / sigma_t. A student with N
steps is trained from a teacher with 2N (google-research/diffusion_distillation, dpm.py:
training_losses): draw i ~ U{1..N}, t = i / N, x_t = alpha_t x0 + sigma_t eps; two teacher DDIM steps
t -> t - 1/(2N) -> s = t - 1/N give z_s; the student's target is the x0 that takes x_t to z_s in one step,

    x_tgt = (z_s - (sigma_s / sigma_t) x_t) / (alpha_s - (sigma_s / sigma_t) alpha_t)

(= the teacher's last x0_hat when sigma_s = 0), and eps_tgt = (x_t - alpha_t x_tgt) / sigma_t. The loss is
"snr_trunc": max(||x0_hat - x_tgt||^2, ||eps_hat - eps_tgt||^2) / D, i.e. the x0 error weighted by
max(SNR, 1). The student starts from the teacher's weights and predicts v = alpha eps - sigma x0 (the
code's default parameterisation; needs alpha^2 + sigma^2 = 1). Repeating halves the steps each round:
`distill_rounds` trains 2N0 -> N0 -> ... -> N0 / 2^k.
"""
from __future__ import annotations

import copy
import hashlib
import pathlib
from collections.abc import Callable

import torch

from ..paths import Path, convert
from ..sampling import sample

__all__ = ["ProgressiveDistillation", "ddim_grid", "distill_rounds", "sample_ddim"]

CODE_HASH = hashlib.sha256(pathlib.Path(__file__).read_bytes()).hexdigest()[:16]  # joins the cache key


def ddim_grid(n_steps: int) -> torch.Tensor:
    """The N-step grid of progressive distillation: t_i = i / N from 1 down to 0 (float64, [N + 1])."""
    if int(n_steps) < 1:
        raise ValueError(f"n_steps must be a positive integer; got {n_steps}")
    return torch.linspace(1.0, 0.0, int(n_steps) + 1, dtype=torch.float64)


def sample_ddim(model: Callable, target: str, path: Path, x_T: torch.Tensor, n_steps: int) -> torch.Tensor:
    """DDIM (eta = 0) on ddim_grid(n_steps), NFE = n_steps: the sampler a distilled student is trained for."""
    with torch.no_grad():
        return sample(model, path, x_T, ddim_grid(n_steps), method="ddim", target=target).x


def _ddim_step(x0_hat, eps_hat, path: Path, s):
    return path.alpha(s) * x0_hat + path.sigma(s) * eps_hat


class ProgressiveDistillation:
    """fit's objective for one round: fit(copy_of_teacher, data, path, reinit=False, objective=ProgressiveDistillation(...)).

    teacher: model(x, t) predicting `teacher_target` on `path`, sampled with 2 * student_steps DDIM steps;
    student_target: what the student predicts ("v" by default). The teacher's weights join the cache key.
    """

    def __init__(self, teacher: torch.nn.Module, teacher_target: str, path: Path, student_steps: int,
                 student_target: str = "v"):
        if int(student_steps) < 1:
            raise ValueError(f"student_steps must be a positive integer; got {student_steps}")
        self.teacher, self.teacher_target, self.path = teacher, teacher_target, path
        self.n, self.student_target = int(student_steps), student_target

    def draw(self, x0: torch.Tensor, generator, step: int, steps: int):
        """(t [B] on the student's grid {1/N, ..., 1}, eps like x0)."""
        i = torch.randint(1, self.n + 1, (x0.shape[0],), generator=generator, device=x0.device)
        return i.to(x0.dtype) / self.n, torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)

    def targets(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor):
        """(x_t, x_tgt, eps_tgt) of the module docstring, from two teacher DDIM steps; no gradient."""
        col = (-1, *([1] * (x0.dim() - 1)))
        p = self.path
        tt, mid, s = t.reshape(col), (t - 0.5 / self.n).reshape(col), (t - 1.0 / self.n).reshape(col)
        x_t = p.alpha(tt) * x0 + p.sigma(tt) * eps
        with torch.no_grad():
            z = x_t
            for a, b in ((tt, mid), (mid, s)):
                out = self.teacher(z, a.reshape(-1))
                x0_hat = convert(out, self.teacher_target, "x0", z, a.reshape(-1), p)
                eps_hat = convert(out, self.teacher_target, "eps", z, a.reshape(-1), p)
                z = _ddim_step(x0_hat, eps_hat, p, b)
            ratio = p.sigma(s) / p.sigma(tt)
            x_tgt = (z - ratio * x_t) / (p.alpha(s) - ratio * p.alpha(tt))
            eps_tgt = (x_t - p.alpha(tt) * x_tgt) / p.sigma(tt)
        return x_t, x_tgt, eps_tgt

    def loss(self, model, ema, x0: torch.Tensor, t, eps) -> torch.Tensor:
        """mean_n max(||x0_hat - x_tgt||^2, ||eps_hat - eps_tgt||^2) / D (truncated-SNR weighting)."""
        x_t, x_tgt, eps_tgt = self.targets(x0, t, eps)
        out = model(x_t, t)
        x_err = (convert(out, self.student_target, "x0", x_t, t, self.path) - x_tgt).square().flatten(1).mean(1)
        eps_err = (convert(out, self.student_target, "eps", x_t, t, self.path) - eps_tgt).square().flatten(1).mean(1)
        return torch.maximum(x_err, eps_err).mean()

    def ema_decay(self, step, steps):
        return None

    def config(self) -> dict:
        digest = hashlib.sha256()
        for value in self.teacher.state_dict().values():
            digest.update(value.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
        return {"method": "progressive distillation", "student_steps": self.n, "student_target": self.student_target,
                "teacher": {"model": self.teacher.config, "weights": digest.hexdigest()[:16],
                            "target": self.teacher_target},
                "path": self.path.config(), "code": CODE_HASH}


def distill_rounds(fit: Callable, teacher: torch.nn.Module, teacher_target: str, path: Path, data, start_steps: int,
                   rounds: int, **fit_kwargs) -> list:
    """Repeated halving: round k trains a student with start_steps / 2^(k+1) steps from the previous one
    (round 0's teacher: `teacher` with start_steps DDIM steps). fit: dl.fit; each round is one cached fit call,
    the student a copy of its teacher (reinit=False). Returns the FitResults, one per round."""
    results, target = [], teacher_target
    for k in range(rounds):
        student_steps = start_steps // 2 ** (k + 1)
        if student_steps < 1:
            raise ValueError(f"{rounds} rounds from {start_steps} steps would go below one step")
        objective = ProgressiveDistillation(teacher, target, path, student_steps)
        student = copy.deepcopy(teacher).train().requires_grad_(True)
        result = fit(student, data, path, reinit=False, objective=objective, **fit_kwargs)
        results.append(result)
        teacher, target = result.ema, objective.student_target
    return results
