"""Checks of the arguments a user passes: each failure is one ValueError naming the argument, what was
expected and the value given, raised before any work is done."""
from __future__ import annotations

import math
import numbers

import torch

__all__ = ["check_allocation", "check_data", "check_fit_settings", "check_seed", "positive_real", "real_in", "whole_number"]


def whole_number(name: str, value, low: int, high: int | None = None, bound: str | None = None) -> int:
    """value as an int when it is a whole number in [low, high] (2000.0 is, 1.5 and True are not)."""
    try:
        whole = None if isinstance(value, bool) or int(value) != value else int(value)
    except (TypeError, ValueError, OverflowError):  # a string, None, NaN, inf, ...
        whole = None
    if whole is None or whole < low or (high is not None and whole > high):
        bound = bound or (f"a whole number >= {low}" if high is None else f"a whole number from {low} to {high}")
        raise ValueError(f"{name} must be {bound}; got {value!r}")
    return whole


def real_in(name: str, value, low: float, high: float) -> bool:
    """Whether value is a finite real number in [low, high]; ValueError naming `name` when it is no number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number; got {value!r}")  # noqa: TRY004 - one error type for bad input
    return math.isfinite(value) and low <= value <= high


def positive_real(name: str, value, example: str) -> float:
    """value as a float when it is a finite number > 0."""
    if not real_in(name, value, 0.0, math.inf) or value == 0:
        raise ValueError(f"{name} must be a finite number > 0, e.g. {name}={example}; got {value!r}")
    return float(value)


def check_seed(seed, name: str = "seed") -> int:
    """seed as an int when it is a whole number from 0 to 2**62 (torch seeds are 64-bit; fit also uses seed + 2)."""
    return whole_number(name, seed, 0, 2**62, "a whole number from 0 to 2**62")


def check_fit_settings(seed, ema_decay, t_min, checkpoint_every) -> None:
    """The settings of fit that _settings does not cover, checked before any work (each error names its argument)."""
    check_seed(seed)
    if not real_in("ema_decay", ema_decay, 0.0, 1.0):
        raise ValueError(f"ema_decay must be a number in [0, 1] (the EMA keeps this fraction of itself at each "
                         f"step; 0.999 is usual); got {ema_decay!r}")
    if not real_in("t_min", t_min, 0.0, 1.0) or t_min == 1:
        raise ValueError(f"t_min must be a number in [0, 1) (training times are drawn from [t_min, 1]); got {t_min!r}")
    if checkpoint_every is not None:
        whole_number("checkpoint_every", checkpoint_every, 0,
                     bound="None (automatic), 0 (no resume checkpoints) or a whole number of steps >= 1")


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_allocation(nbytes: float, what: str, fix: str, device=None) -> None:
    """ValueError when `what` needs more host memory than is available. An allocation larger than the
    machine fails at once inside torch; one between the memory available and the machine's size
    succeeds and gets the process killed by the kernel when it is touched: refuse both here."""
    if device is not None and torch.device(device).type != "cpu":
        return
    free = available_memory()
    if free is not None and nbytes > free:
        raise ValueError(f"{what} needs about {nbytes / 2**30:.3g} GiB of memory, more than the {free / 2**30:.3g} "
                         f"GiB available; {fix}")


def check_data(data, batch_size: int) -> None:
    """A data tensor must be finite (one NaN sample would only show up as a NaN loss steps later), and a
    batch of it (with its noise and the noised batch) must fit in memory."""
    if not isinstance(data, torch.Tensor) or not data.is_floating_point() or data.dim() == 0 or not data.numel():
        return
    bad = (~torch.isfinite(data)).flatten(1).any(dim=1).nonzero().flatten() if data.dim() > 1 else \
        (~torch.isfinite(data)).nonzero().flatten()
    if len(bad):
        raise ValueError(f"data holds NaN or infinite values ({len(bad)} of {len(data)} samples, the first at "
                         f"index {int(bad[0])}); remove or fix those samples")
    check_allocation(4.0 * batch_size * data[0].numel() * data.element_size(), f"a batch of batch_size={batch_size}",
                     "use a smaller batch_size", data.device)
