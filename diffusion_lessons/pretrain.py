"""Train every recipe into the cache, then say how each did: `diffusion-lessons pretrain`.

    diffusion-lessons pretrain [--budget smoke|laptop|gpu] [--only NAME ...] [--list]

Each recipe (recipes.py) is trained with `fit` (a progress bar per model; a model already in the
cache is loaded instead) and measured against a known answer (recipes.evaluate). The summary table
gives, per model: the device, the training steps, the seconds spent (training, or loading from the
cache), the final logged loss, the quality figure (sliced W2 or Fréchet distance, with its floor: the
same figure between two sets of real data) and whether the model came from the cache.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time

from tqdm.auto import tqdm

from . import recipes
from .budget import resolve
from .training import TrainingError

__all__ = ["Row", "pretrain", "format_table", "list_recipes"]


@dataclasses.dataclass
class Row:
    """One line of the summary table."""

    name: str
    device: str = "—"
    steps: int | None = None
    seconds: float = math.nan
    loss: float = math.nan
    quality: str = "—"
    source: str = "—"  # "cache", "trained" or "failed"
    error: str = ""


def _one(name: str, budget: str, progress: bool) -> Row:
    """Train (or load) and evaluate one recipe; a training failure becomes a row, not an exception."""
    call = recipes.fit_call(name, budget)
    try:
        result = recipes.train(name, budget, call=call, progress=progress)
    except TrainingError as err:
        return Row(name, steps=call.kwargs.get("steps"), source="failed", error=" ".join(str(err).split()))
    quality = recipes.evaluate(name, result, budget, call=call)
    history = result.history or {}
    return Row(name, device=next(result.model.parameters()).device.type, steps=(result.config or {}).get("steps"),
               seconds=result.seconds, loss=(history.get("loss") or [math.nan])[-1],
               quality="—" if quality is None else str(quality), source="cache" if result.from_cache else "trained")


def pretrain(names: list[str] | None = None, budget: str | None = None, progress: bool = True) -> list[Row]:
    """Train the recipes `names` (default: all) at `budget` into the cache; one Row per recipe.

    ValueError (naming the valid values) for an unknown recipe or budget, before anything trains.
    """
    budget = resolve(budget)
    names = recipes.names() if not names else [recipes.get(name).name for name in names]
    rows = []
    for i, name in enumerate(names, 1):
        if progress:
            tqdm.write(f"[{i}/{len(names)}] {name} ({budget}): {recipes.describe(name)}", file=sys.stderr)
        started = time.perf_counter()
        rows.append(_one(name, budget, progress))
        if progress:
            tqdm.write(f"[{i}/{len(names)}] {name}: {rows[-1].source}, {rows[-1].quality} "
                       f"({time.perf_counter() - started:.1f} s with the evaluation)", file=sys.stderr)
    return rows


def format_table(rows: list[Row]) -> str:
    """The summary as a fixed-width text table (one header line, one line per recipe)."""
    header = ("recipe", "device", "steps", "time (s)", "final loss", "quality", "from")
    cells = [header] + [(r.name, r.device, "—" if r.steps is None else str(r.steps),
                         "—" if math.isnan(r.seconds) else f"{r.seconds:.1f}",
                         "—" if math.isnan(r.loss) else f"{r.loss:.4f}", r.quality, r.source) for r in rows]
    widths = [max(len(row[k]) for row in cells) for k in range(len(header))]
    right = {2, 3, 4}  # numbers
    lines = ["  ".join(c.rjust(w) if k in right else c.ljust(w) for k, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    failed = [f"{r.name}: {r.error}" for r in rows if r.error]
    return "\n".join(lines + failed)


def list_recipes() -> str:
    """One line per recipe: its name and description."""
    width = max(map(len, recipes.names()))
    return "\n".join(f"{name.ljust(width)}  {recipes.describe(name)}" for name in recipes.names())
