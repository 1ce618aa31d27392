"""A trained network seen as a field of the course: field(x, t) in x's dtype, read as any target.

Networks are trained in float32 and predict one target (eps, x0, score or velocity); the exact
references and solvers of the chapters work in float64 and ask for another target. `as_field`
does the two conversions once, so no chapter writes its own wrapper.
"""
from __future__ import annotations

from typing import Callable

import torch

from .paths import TARGETS, Path, convert

__all__ = ["as_field"]


def as_field(model: Callable, src: str, dst: str, path: Path, no_grad: bool = False) -> Callable:
    """field(x, t) = convert(model(x, t), src -> dst) evaluated in the model's dtype, returned in x's.

    model: a network (or any callable) predicting target `src` in {"eps", "x0", "score", "velocity"};
    dst: the target the field returns. x may be float64 on the CPU while the model is float32 on a GPU:
    x is cast to the model's dtype and moved to its device for the call only, and the conversion itself
    (the formulas of the notation page: score = -eps / sigma, Tweedie, u = f x - g^2 / 2 score) is done
    in x's dtype and on x's device. no_grad=True runs the
    network without building a graph (sampling); keep the default where Jacobians of the field are needed.
    """
    for name in (src, dst):
        if name not in TARGETS:
            raise ValueError(f"unknown target {name!r}; valid targets: {', '.join(TARGETS)}")
    parameters = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
    dtype = parameters[0].dtype if parameters else None
    device = parameters[0].device if parameters else None

    def field(x: torch.Tensor, t) -> torch.Tensor:
        inp = x if dtype is None else x.to(dtype=dtype, device=device)
        tt = t.to(dtype=inp.dtype, device=inp.device) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
        if no_grad:
            with torch.no_grad():
                pred = model(inp, tt)
        else:
            pred = model(inp, tt)
        return convert(pred.to(dtype=x.dtype, device=x.device), src, dst, x, t, path)

    return field
