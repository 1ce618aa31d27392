"""Compute budgets: how much training and sampling a chapter may spend; and where its models come from.

* ``smoke``  -- CI: seconds per chapter; claims about trained models use loose bounds;
* ``laptop`` -- minutes on a CPU: results worth looking at;
* ``gpu``    -- real models: the digits UNet to good quality, full sampler comparisons.

The budget comes from the environment variable ``DIFFUSION_LESSONS_BUDGET``; without it, ``gpu`` when
CUDA is available and ``laptop`` otherwise. A chapter asks ``pick(smoke=..., laptop=..., gpu=...)``.

The weights setting ``DIFFUSION_LESSONS_WEIGHTS`` says where a chapter's trained models come from
(``dl.pretrained``, shipped.py): ``shipped`` (default) loads the weights shipped with the package,
``train`` trains them at the current budget. This module imports torch only to look for CUDA, so that
the book's build scripts can read both settings quickly.
"""
from __future__ import annotations

import os

__all__ = ["BUDGETS", "BUDGET_ENV", "WEIGHTS_ENV", "WEIGHTS_MODES", "current", "pick", "resolve", "weights_mode"]

BUDGETS = ("smoke", "laptop", "gpu")
BUDGET_ENV = "DIFFUSION_LESSONS_BUDGET"
WEIGHTS_ENV = "DIFFUSION_LESSONS_WEIGHTS"
WEIGHTS_MODES = ("shipped", "train")


def _check(name: str, where: str) -> str:
    key = str(name).strip().lower()
    if key not in BUDGETS:
        raise ValueError(f"unknown budget {name!r}{where}; valid budgets: {', '.join(BUDGETS)}")
    return key


def current() -> str:
    """The active budget: ``$DIFFUSION_LESSONS_BUDGET`` if set, else ``gpu`` with CUDA, else ``laptop``."""
    name = os.environ.get(BUDGET_ENV, "").strip()
    if not name:
        import torch

        return "gpu" if torch.cuda.is_available() else "laptop"
    return _check(name, f" in ${BUDGET_ENV}")


def resolve(budget: str | None = None) -> str:
    """The canonical name of ``budget`` (default: ``current()``); ValueError naming the valid ones."""
    return current() if budget is None else _check(budget, "")


def pick(*, smoke, laptop, gpu, budget: str | None = None):
    """The value for ``budget`` (default: ``current()``), e.g. ``steps = pick(smoke=300, laptop=3000, gpu=20000)``."""
    return {"smoke": smoke, "laptop": laptop, "gpu": gpu}[resolve(budget)]


def weights_mode() -> str:
    """``$DIFFUSION_LESSONS_WEIGHTS`` (default ``shipped``); ValueError naming the valid values."""
    raw = os.environ.get(WEIGHTS_ENV, "")
    mode = raw.strip().lower() or "shipped"
    if mode not in WEIGHTS_MODES:
        raise ValueError(f"unknown weights setting {raw!r} in ${WEIGHTS_ENV}; valid values: {', '.join(WEIGHTS_MODES)}")
    return mode
