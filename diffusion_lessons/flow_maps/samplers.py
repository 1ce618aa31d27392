"""Few-step sampling with a flow map: x <- Phi_{t_i -> t_{i+1}}(x) along a short grid of times.

A flow map is any callable flow(x, t, r) -> x at time r <= t (t = 0 data, t = 1 noise): the exact one
(flow_maps.exact), or a network through its parameterisation. Shortcut models (Frans et al. 2024) and
MeanFlow (Geng et al. 2025) parameterise it by an average velocity u(x, t, r):

    Phi_{t -> r}(x) = x - (t - r) u(x, t, r),

so one step from t = 1 to r = 0 is a whole generation (NFE 1) and the grid (1, 1/2, 0) two steps.
Consistency models have their own (stochastic) multistep sampler, flow_maps.consistency.sample_consistency.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import NamedTuple

import torch

__all__ = ["AverageVelocityMap", "FlowMapSample", "sample_flow_map"]


class FlowMapSample(NamedTuple):
    """What a few-step sampler returns, like dl.sample: x [N, ...] at the last time, nfe (network
    evaluations), trajectory [len(grid), N, ...] when asked for, else None."""

    x: torch.Tensor
    nfe: int
    trajectory: torch.Tensor | None = None


class AverageVelocityMap(torch.nn.Module):
    """flow(x, t, r) = x - (t - r) net(x, t, r): a two-time network read as an average velocity.

    net: a FlowMapMLP / FlowMapUNet (or any model(x, t, r)) trained by the MeanFlow or shortcut
    objective. t, r: floats or tensors [N] with r <= t.
    """

    def __init__(self, net: Callable):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, t, r) -> torch.Tensor:
        step = torch.as_tensor(t, dtype=x.dtype, device=x.device) - torch.as_tensor(r, dtype=x.dtype, device=x.device)
        return x - step.reshape(-1, *([1] * (x.dim() - 1))) * self.net(x, t, r)


def _grid(grid) -> list[float]:
    times = torch.as_tensor(grid, dtype=torch.float64).detach().cpu().reshape(-1)
    if times.numel() < 2 or not bool((times[1:] < times[:-1]).all()):
        raise ValueError(f"grid must hold at least 2 strictly decreasing times (noise -> data), e.g. [1.0, 0.0] "
                         f"for one step; got {times.tolist()}")
    if not bool(((times >= 0) & (times <= 1)).all()):
        raise ValueError(f"grid times must lie in [0, 1] (t = 0 data, t = 1 noise); got {times.tolist()}")
    return times.tolist()


def sample_flow_map(flow: Callable, x_T: torch.Tensor, grid, trajectory: bool = False) -> FlowMapSample:
    """Apply a flow map step by step along a decreasing grid: x_{i+1} = flow(x_i, t_i, t_{i+1}).

    flow: callable flow(x, t, r) (e.g. AverageVelocityMap(net), flow_maps.exact_flow_map(data, path));
    x_T: [N, ...] at grid[0]; grid: decreasing times, e.g. [1, 0] (one step) or dl.time_grid(2, 1, 0)
    (two). Runs under torch.no_grad(). NFE = len(grid) - 1, counted.
    """
    times = _grid(grid)
    x, states, calls = x_T, [x_T], 0
    with torch.no_grad():
        for t, r in itertools.pairwise(times):
            x = flow(x, t, r)
            calls += 1
            if trajectory:
                states.append(x)
    return FlowMapSample(x, calls, torch.stack(states) if trajectory else None)
