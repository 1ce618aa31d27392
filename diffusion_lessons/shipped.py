"""Shipped weights: the trained models the book loads by default, and the command that makes them.

    trained = dl.pretrained("ch02-eps-gmm2")   # a FitResult: .model and .ema (the EMA weights), .history, .config
    trained.source                              # "shipped" | "cache" | "trained"
    trained.budget                              # the budget the weights were trained at
    print(trained.describe())                   # one line for the page: where the weights come from

Every model a chapter trains is a recipe (recipes package); `diffusion-lessons pretrain --budget B --ship`
trains each (or loads it from the model cache) and writes its EMA weights to
`diffusion_lessons/weights/<recipe>.pt`, in the package's checkpoint format (checkpoints.py), with an
entry in `weights/MANIFEST.json`: the file's SHA-256 and size, the dtype, the budget, the full
training configuration (fit's run configuration without the hash of the code), the quality figure
the model reached with its floor and its no-learning baseline (recipes.evaluate), the device, the
training seconds and the date.

`$DIFFUSION_LESSONS_WEIGHTS` decides what `pretrained` does:

* ``shipped`` (default): load the shipped file when the recipe has one, else train the recipe at the
  current budget (through the model cache);
* ``train``: always train at the current budget (from the model cache when it is there).

A shipped file is checked before it is used: its SHA-256 must be the manifest's (else it is treated
as corrupt), it must pass the checkpoint format's own checks, and the model, path and target it was
trained for must be what its recipe builds today. A refused file is never loaded: `pretrained` says
why (a warning) and trains instead; `load_shipped` raises CheckpointError.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import hashlib
import json
import os
import time
import warnings
from pathlib import Path as FilePath

import torch

from . import recipes
from .budget import WEIGHTS_ENV, WEIGHTS_MODES, resolve, weights_mode
from .checkpoints import (
    CHECKPOINT_MARKER,
    CHECKPOINT_VERSION,
    CheckpointError,
    read_checkpoint,
    write_atomically,
)
from .training import FitResult

__all__ = [
    "WEIGHTS_DIR",
    "WEIGHTS_ENV",
    "WEIGHTS_MODES",
    "Pretrained",
    "load_shipped",
    "pretrained",
    "read_manifest",
    "ship_recipe",
    "weights_mode",
    "write_manifest",
]

WEIGHTS_DIR = FilePath(__file__).with_name("weights")
MANIFEST = "MANIFEST.json"
MANIFEST_FORMAT = 1
# The keys of a run configuration that say what the weights mean: a shipped file that differs from its
# recipe in one of these is refused. (The rest, e.g. steps or the data's fingerprint, only says how
# they were trained; tests/test_shipped.py asks for all of it to match, so a changed recipe is re-shipped.)
MEANING = ("model", "path", "target")
SHIP_COMMAND = "diffusion-lessons pretrain --budget {budget} --ship"


@dataclasses.dataclass
class Pretrained(FitResult):
    """What `pretrained` returns: a FitResult whose .model and .ema are both the EMA network (the weights
    that are shipped), plus where they come from.

    source: "shipped" (the file in diffusion_lessons/weights), "cache" (trained earlier on this machine)
    or "trained" (just now); budget: the budget the weights were trained at; recipe: its name;
    entry: the manifest entry (shipped weights only), with the quality figure they reached.
    """

    source: str = "trained"
    budget: str = "laptop"
    recipe: str = ""
    entry: dict | None = None

    def describe(self) -> str:
        """One line for the page: shipped or trained here, recipe, steps, budget, quality, how to retrain."""
        steps = (self.config or {}).get("steps")
        if self.source == "shipped":
            e = self.entry
            q = e.get("quality") or {}
            quality = "" if not q else f"; {recipes.Quality(**q)}"
            took = "" if e.get("seconds") is None else f" in {e['seconds']:.0f} s"
            return (f"{self.recipe}: shipped weights ({e['dtype']}), trained by `{SHIP_COMMAND.format(budget=self.budget)}`, "
                    f"{steps} steps at the {self.budget} budget on {e['device']}{took} ({e['date']})"
                    f"{quality}. To train it yourself, set {WEIGHTS_ENV}=train.")
        how = "loaded from the model cache (trained here earlier)" if self.source == "cache" else \
            f"trained here just now in {self.seconds:.0f} s"
        why = f"{WEIGHTS_ENV}=train" if weights_mode() == "train" else "no usable shipped weights"
        return (f"{self.recipe}: {how}, {steps} steps at the {self.budget} budget ({why}); "
                f"`{SHIP_COMMAND.format(budget=self.budget)}` measures its quality.")


# -- the manifest ----------------------------------------------------------------------------------------

def read_manifest(folder: FilePath | None = None) -> dict:
    """The manifest's entries, {recipe: entry}; {} when there is none. CheckpointError if it is unreadable."""
    file = (folder or WEIGHTS_DIR) / MANIFEST
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text())
        assert data["format"] == MANIFEST_FORMAT and isinstance(data["recipes"], dict)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise CheckpointError(f"{file} is not a diffusion-lessons weights manifest (format {MANIFEST_FORMAT}); "
                              f"write it again with `{SHIP_COMMAND.format(budget='laptop')}`") from None
    return data["recipes"]


def write_manifest(entries: dict, folder: FilePath | None = None) -> FilePath:
    """Write {recipe: entry} as the manifest (sorted, one key per line: diffs stay readable), atomically."""
    folder = folder or WEIGHTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / MANIFEST
    text = json.dumps({"format": MANIFEST_FORMAT, "recipes": dict(sorted(entries.items()))}, indent=1, sort_keys=True)
    tmp = file.with_name(f".{MANIFEST}.tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, file)
    return file


def sha256(file: FilePath) -> str:
    return hashlib.sha256(FilePath(file).read_bytes()).hexdigest()


# -- loading ---------------------------------------------------------------------------------------------

def _check_meaning(name: str, config: dict, call: recipes.FitCall, file: FilePath, budget: str) -> None:
    """CheckpointError when the file's model, path or target is not what recipe `name` builds today."""
    today = {"model": call.model.config, "path": call.path.config(), "target": call.kwargs.get("target", "eps")}
    today = json.loads(json.dumps(today, default=repr))
    diffs = [f"{key}: file {config.get(key)!r}, recipe {today[key]!r}" for key in MEANING if config.get(key) != today[key]]
    if diffs:
        raise CheckpointError(f"{file} was trained for another model than recipe {name!r} builds today "
                              f"({'; '.join(diffs)}); ship it again with "
                              f"`{SHIP_COMMAND.format(budget=budget)} --only {name}`")


def load_shipped(name: str, folder: FilePath | None = None, device=None) -> Pretrained:
    """The shipped EMA weights of recipe `name` as a Pretrained (source "shipped"), on `device` (default:
    cuda when available, as `fit`). CheckpointError when there are none, or the file is missing, corrupt
    (its SHA-256 is not the manifest's), foreign, or trained for another model than the recipe's."""
    started = time.perf_counter()
    folder = folder or WEIGHTS_DIR
    entry = read_manifest(folder).get(recipes.get(name).name)
    if entry is None:
        raise CheckpointError(f"no shipped weights for recipe {name!r} in {folder / MANIFEST}; "
                              f"ship them with `{SHIP_COMMAND.format(budget='laptop')} --only {name}`")
    file = folder / entry["file"]
    if not file.is_file():
        raise CheckpointError(f"the shipped weights of {name!r} are missing: no file {file} (the manifest lists it); "
                              "reinstall the package or ship them again")
    if sha256(file) != entry["sha256"]:
        raise CheckpointError(f"{file} is corrupt: its SHA-256 is not the one in {MANIFEST} (truncated, edited or "
                              "replaced); reinstall the package or ship it again")
    payload = read_checkpoint(file)
    call = recipes.fit_call(name, entry["budget"])
    _check_meaning(name, payload["config"], call, file, entry["budget"])
    model = call.model
    try:
        model.load_state_dict(payload["state_dict"])  # copies into the recipe's own parameters (float32)
    except RuntimeError as err:
        raise CheckpointError(f"{file}: the weights do not fit recipe {name!r}'s model: "
                              f"{str(err).splitlines()[0]}") from None
    model = model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval().requires_grad_(False)
    return Pretrained(model, model, payload.get("history") or {"step": [], "loss": []}, file,
                      time.perf_counter() - started, True, payload["config"], source="shipped",
                      budget=entry["budget"], recipe=name, entry=entry)


def _train(name: str, budget: str | None, device) -> Pretrained:
    budget = resolve(budget)
    result = recipes.train(name, budget)
    ema = result.ema.to(device).eval().requires_grad_(False)
    return Pretrained(ema, ema, result.history, result.checkpoint, result.seconds, result.from_cache, result.config,
                      result.resumed_from, result.clock, source="cache" if result.from_cache else "trained",
                      budget=budget, recipe=name)


def pretrained(name: str, budget: str | None = None, device="cpu") -> Pretrained:
    """Recipe `name`'s trained model, as `$DIFFUSION_LESSONS_WEIGHTS` says (see the module docstring).

    budget: None loads the shipped weights whatever budget they were trained at (`.budget` says which),
    and trains at the current budget when there are none; a budget other than the shipped one trains
    at that budget. A shipped file that is refused (corrupt, foreign, another model) is not used: a
    warning says why, and the model is trained instead.
    device: where the returned network lives; the CPU by default, where the chapters make their tensors,
    also on a machine with a GPU (Colab's included): pass "cuda" to sample there, with inputs on it; None:
    where `fit` trains (cuda when available), as a distillation's teacher needs. A model trained here is
    trained where `fit` trains, then moved.
    """
    recipe = recipes.get(name)
    mode = weights_mode()
    if mode == "shipped" and recipe.name in read_manifest():
        entry = read_manifest()[recipe.name]
        if budget is None or resolve(budget) == entry["budget"]:
            try:
                return load_shipped(recipe.name, device=device)
            except CheckpointError as err:
                warnings.warn(f"not using the shipped weights of {name}: {err}. Training it at the "
                              f"{resolve(budget)} budget instead.", stacklevel=2)
    return _train(recipe.name, budget, device)


# -- shipping --------------------------------------------------------------------------------------------

def _half_changes_nothing(q32: recipes.Quality | None, q16: recipes.Quality | None) -> bool:
    """Whether rounding the weights to float16 leaves the quality figure as printed (3 significant digits)."""
    return q32 is not None and q16 is not None and f"{q32.value:.3g}" == f"{q16.value:.3g}"


def ship_recipe(name: str, budget: str, folder: FilePath | None = None, progress: bool = True) -> dict:
    """Train (or load from the cache) recipe `name` at `budget`, write its EMA weights to folder/<name>.pt
    and return its manifest entry (the caller writes the manifest). float16 when rounding the weights to
    it leaves the quality figure unchanged to 3 significant digits, else float32. "seconds" is None when
    the model came from the cache (the cache does not record how long it took)."""
    folder = folder or WEIGHTS_DIR
    call = recipes.fit_call(name, budget)
    result = recipes.train(name, budget, call=call, progress=progress)
    q32 = recipes.evaluate(name, result, budget, call=call)
    ema16 = copy.deepcopy(result.ema)
    ema16.load_state_dict(_cast(result.ema.state_dict(), torch.float16))  # rounded, back in float32 parameters
    q16 = recipes.evaluate(name, dataclasses.replace(result, ema=ema16.eval()), budget, call=call)
    dtype = torch.float16 if _half_changes_nothing(q32, q16) else torch.float32
    quality = q16 if dtype == torch.float16 else q32
    config = {k: v for k, v in result.config.items() if k != "code"}
    payload = {CHECKPOINT_MARKER: CHECKPOINT_VERSION, "config": config, "history": result.history,
               "state_dict": _cast(result.ema.state_dict(), dtype), "ema_state_dict": None}
    file = write_atomically(payload, folder / f"{name}.pt")
    return {
        "recipe": name, "file": file.name, "sha256": sha256(file), "bytes": file.stat().st_size,
        "dtype": str(dtype).removeprefix("torch."), "budget": budget, "config": config,
        "quality": None if quality is None else dataclasses.asdict(quality),
        "quality_float32": None if q32 is None else q32.value, "quality_float16": None if q16 is None else q16.value,
        "device": next(result.ema.parameters()).device.type,
        "seconds": None if result.from_cache else round(result.seconds, 1),
        "date": datetime.date.today().isoformat(), "torch": torch.__version__,
    }


def _cast(state: dict, dtype: torch.dtype) -> dict:
    """A state dict on the CPU with its floating-point tensors in `dtype`."""
    return {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu() for k, v in state.items()}
