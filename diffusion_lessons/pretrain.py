"""Train every recipe into the cache, then say how each did: `diffusion-lessons pretrain`.

    diffusion-lessons pretrain [--budget smoke|laptop|gpu] [--only NAME ...] [--list] [--ship]

Each recipe (the recipes package) is trained with `fit` (a progress bar per model; a model already in the
cache is loaded instead) and measured against a known answer (recipes.evaluate). The summary table
gives, per model: the device, the training steps, the seconds spent (training, or loading from the
cache), the final logged loss, the quality figure (sliced W2 or Fréchet distance, with its floor: the
same figure between two sets of real data) and whether the model came from the cache.

With --ship it also writes the shipped weights (shipped.py): every recipe that ships (or those named
by --only) into diffusion_lessons/weights/, with MANIFEST.json, and says for each whether its claim
(its quality against the moment-matched Gaussian's) holds; the exit status is 1 when one does not.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time

from tqdm.auto import tqdm

from . import recipes, shipped
from .budget import resolve
from .training import TrainingError

__all__ = ["Row", "format_table", "list_recipes", "pretrain", "ship"]


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


def ship(names: list[str] | None = None, budget: str | None = None, folder=None, progress: bool = True) -> list[Row]:
    """Write the shipped weights of `names` (default: every recipe that ships, replacing the whole set) at
    `budget` into `folder` (default: diffusion_lessons/weights) and update its manifest; one Row each,
    whose source is "shipped", "claim fails" or "failed" (a training error: nothing written for it)."""
    budget = resolve(budget)
    folder = folder or shipped.WEIGHTS_DIR
    everything = not names
    names = recipes.shipped_names() if everything else [recipes.get(name).name for name in names]
    old = shipped.read_manifest(folder)
    entries = {} if everything else dict(old)
    rows = []
    for i, name in enumerate(names, 1):
        if progress:
            tqdm.write(f"[{i}/{len(names)}] shipping {name} ({budget}): {recipes.describe(name)}", file=sys.stderr)
        try:
            entry = shipped.ship_recipe(name, budget, folder, progress)
        except TrainingError as err:
            rows.append(Row(name, source="failed", error=" ".join(str(err).split())))
            continue
        before = old.get(name) or {}
        if entry["seconds"] is None and before.get("config") == entry["config"]:  # from the cache: keep the time
            entry.update(seconds=before.get("seconds"), device=before.get("device", entry["device"]))
        entries[name] = entry
        rows.append(_ship_row(entry))
    for stale in set(old) - set(entries):  # recipes that no longer ship: their files go
        (folder / old[stale]["file"]).unlink(missing_ok=True)
    shipped.write_manifest(entries, folder)
    return rows


def _ship_row(entry: dict) -> Row:
    claim = recipes.get(entry["recipe"]).claim
    quality = recipes.Quality(**entry["quality"]) if entry["quality"] else None
    holds, line = claim.check(quality) if claim and quality else (True, "no claim")
    return Row(entry["recipe"], device=entry["device"], steps=entry["config"].get("steps"),
               seconds=math.nan if entry["seconds"] is None else entry["seconds"],
               loss=math.nan, quality=f"{quality} {entry['dtype']} {entry['bytes'] / 1024:.0f} KiB" if quality else "—",
               source="shipped" if holds else "claim fails", error="" if holds else f"claim fails: {line}")
