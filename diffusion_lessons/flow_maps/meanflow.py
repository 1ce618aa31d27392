"""MeanFlow (Geng, Deng, Bai, Kolter & He 2025): learn the average velocity through an identity it satisfies.

On a path z_t = alpha_t x + sigma_t eps (MeanFlow's own: alpha = 1 - t, sigma = t, t = 0 data, t = 1 noise,
the course's convention), the average velocity u(z_t, t, r) = (z_t - Phi_{t -> r}(z_t)) / (t - r) obeys the
MeanFlow identity (differentiate (t - r) u = int_r^t v along the trajectory; their eq. 6)

    u(z_t, t, r) = v(z_t, t) - (t - r) d/dt u(z_t, t, r),    d/dt u = v . grad_z u + partial_t u.

The code of record (Gsunshine/meanflow, meanflow.py: MeanFlow.forward, sample_tr) turns it into a
regression with a target built from the network itself, the total derivative taken by a JVP with
tangent (v, 1, 0) in (z, t, r) and no gradient through the target:

    u_tgt = sg( v - clip(t - r, 0, 1) JVP ),   v = alpha'_t x + sigma'_t eps  (= eps - x),
    L = mean_n  ||u - u_tgt||^2 / sg(||u - u_tgt||^2 + 0.01)^p,   p = 1 (norm_p, norm_eps; sum over pixels),

with t, r two logit-normal draws (P_mean = -0.4, P_std = 1), t = max, r = min, and r = t for the first
75 % of the batch (data_proportion: plain flow matching, u = v there). One-step sampling:
z_0 = z_1 - u(z_1, 1, 0) (sample_flow_map(AverageVelocityMap(net), z_1, [1, 0])).
"""
from __future__ import annotations

import hashlib
import pathlib

import torch

from ..paths import Path, RectifiedFlow

__all__ = ["MeanFlowObjective", "adaptive_fixed_point", "meanflow_target"]

CODE_HASH = hashlib.sha256(pathlib.Path(__file__).read_bytes()).hexdigest()[:16]  # joins the cache key


def meanflow_target(net, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor, v: torch.Tensor):
    """(u, u_tgt): u = net(z, t, r) (with its graph) and the detached target sg(v - clip(t - r, 0, 1) du/dt).

    du/dt = d/ds net(z + s v, t + s, r) at s = 0, one forward-mode JVP (torch.func.jvp). net: model(z, t, r);
    z, v: [N, ...]; t, r: tensors [N]. u's gradient flows to the network's weights; u_tgt has none.
    """
    u, dudt = torch.func.jvp(net, (z, t, r), (v, torch.ones_like(t), torch.zeros_like(r)))
    h = (t - r).clamp(0.0, 1.0).reshape(-1, *([1] * (z.dim() - 1)))
    return u, (v - h * dudt).detach()


def adaptive_fixed_point(v: torch.Tensor, norm_eps: float = 0.01, norm_p: float = 1.0,
                         iterations: int = 200) -> torch.Tensor:
    """The constant u that the adaptive loss mean_n ||u - v_n||^2 / sg(||u - v_n||^2 + norm_eps)^norm_p settles
    on for targets v [N, D]: where its gradient vanishes, u = sum_n w_n v_n / sum_n w_n with
    w_n = (||u - v_n||^2 + norm_eps)^(-norm_p), found by iterating that (reweighted least squares) from the mean.

    norm_p = 0 gives the mean, the minimiser of the squared error. For norm_p = 1 and targets scattered
    symmetrically about their mean it is the mean too; for a lopsided (e.g. bimodal) law it moves towards the
    heavier mode: the weight 1 / error favours the targets already close to u.
    """
    v = v.reshape(len(v), -1)
    u = v.mean(0)
    for _ in range(int(iterations)):
        w = ((u - v).square().sum(1) + norm_eps) ** (-norm_p)
        u = (w[:, None] * v).sum(0) / w.sum()
    return u


class MeanFlowObjective:
    """fit's objective for MeanFlow: fit(FlowMapMLP(dim), data, RectifiedFlow(), objective=MeanFlowObjective()).

    path: the interpolation (default rectified flow, MeanFlow's); p_mean, p_std, data_proportion, norm_p,
    norm_eps: the code's defaults. No target network: the EMA is fit's, for sampling.
    """

    def __init__(self, path: Path | None = None, p_mean: float = -0.4, p_std: float = 1.0,
                 data_proportion: float = 0.75, norm_p: float = 1.0, norm_eps: float = 0.01):
        if not 0 <= data_proportion <= 1 or not p_std > 0 or not norm_eps > 0:
            raise ValueError(f"MeanFlowObjective needs 0 <= data_proportion <= 1, p_std > 0 and norm_eps > 0; "
                             f"got {data_proportion}, {p_std}, {norm_eps}")
        self.path = RectifiedFlow() if path is None else path
        self.p_mean, self.p_std, self.data_proportion = float(p_mean), float(p_std), float(data_proportion)
        self.norm_p, self.norm_eps = float(norm_p), float(norm_eps)

    def draw(self, x0: torch.Tensor, generator, step: int, steps: int):
        """(t [B], r [B], eps like x0): sample_tr of the code of record, then the noise."""
        b, kw = x0.shape[0], {"dtype": x0.dtype, "device": x0.device}
        draws = torch.sigmoid(torch.randn(2, b, generator=generator, **kw) * self.p_std + self.p_mean)
        t, r = draws.max(0).values, draws.min(0).values
        r = torch.where(torch.arange(b, device=x0.device) < int(b * self.data_proportion), t, r)
        return t, r, torch.randn(x0.shape, generator=generator, **kw)

    def loss(self, model, ema, x0: torch.Tensor, t, r, eps) -> torch.Tensor:
        tt = t.reshape(-1, *([1] * (x0.dim() - 1)))
        z = self.path.alpha(tt) * x0 + self.path.sigma(tt) * eps
        v = self.path.dalpha(tt) * x0 + self.path.dsigma(tt) * eps
        u, u_tgt = meanflow_target(model, z, t, r, v)
        error = (u - u_tgt).square().flatten(1).sum(1)
        return (error / (error.detach() + self.norm_eps) ** self.norm_p).mean()

    def ema_decay(self, step, steps):
        return None

    def config(self) -> dict:
        return {"method": "meanflow", "path": self.path.config(), "p_mean": self.p_mean, "p_std": self.p_std,
                "data_proportion": self.data_proportion, "norm_p": self.norm_p, "norm_eps": self.norm_eps,
                "code": CODE_HASH}
