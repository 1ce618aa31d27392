"""Compute budgets: how much training and sampling a chapter may spend (DESIGN.md §6).

* ``smoke``  -- CI: seconds per chapter; claims about trained models use loose bounds;
* ``laptop`` -- minutes on a CPU: results worth looking at;
* ``gpu``    -- real models: the digits UNet to good quality, full sampler comparisons.

The budget comes from the environment variable ``DIFFUSION_LESSONS_BUDGET``; without it, ``gpu`` when
CUDA is available and ``laptop`` otherwise. A chapter asks ``pick(smoke=..., laptop=..., gpu=...)``.
"""
from __future__ import annotations

import os

import torch

__all__ = ["BUDGETS", "BUDGET_ENV", "current", "resolve", "pick"]

BUDGETS = ("smoke", "laptop", "gpu")
BUDGET_ENV = "DIFFUSION_LESSONS_BUDGET"


def _check(name: str, where: str) -> str:
    key = str(name).strip().lower()
    if key not in BUDGETS:
        raise ValueError(f"unknown budget {name!r}{where}; valid budgets: {', '.join(BUDGETS)}")
    return key


def current() -> str:
    """The active budget: ``$DIFFUSION_LESSONS_BUDGET`` if set, else ``gpu`` with CUDA, else ``laptop``."""
    name = os.environ.get(BUDGET_ENV, "").strip()
    if not name:
        return "gpu" if torch.cuda.is_available() else "laptop"
    return _check(name, f" in ${BUDGET_ENV}")


def resolve(budget: str | None = None) -> str:
    """The canonical name of ``budget`` (default: ``current()``); ValueError naming the valid ones."""
    return current() if budget is None else _check(budget, "")


def pick(*, smoke, laptop, gpu, budget: str | None = None):
    """The value for ``budget`` (default: ``current()``), e.g. ``steps = pick(smoke=300, laptop=3000, gpu=20000)``."""
    return {"smoke": smoke, "laptop": laptop, "gpu": gpu}[resolve(budget)]
