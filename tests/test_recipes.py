"""Recipes: each chapter recipe makes the very `fit` call its notebook makes (same cache file), at smoke.

The notebook side runs a backward slice of the chapter: its first code cell, every top-level statement
that calls `fit`, and the earlier statements those need (found from the names they read and write);
`fit` runs up to the point where it names its cache file, which is recorded, and stops there. The
recipe side calls recipes.train the same way. Nothing trains.
"""
import ast
import builtins
import re
from pathlib import Path as FilePath

import pytest
import torch

import diffusion_lessons as dl
from diffusion_lessons import recipes, training

nbformat = pytest.importorskip("nbformat")

NOTEBOOKS = sorted((FilePath(__file__).parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CALLS_FIT = re.compile(r"\bfit\(")
REAL_FIT = training.fit


class _Named(Exception):
    """Raised by the recording _cache_file: fit has named its cache file; stop before training."""


def _recording(monkeypatch, files: list, cache) -> None:
    """Make every fit call append its cache-file name to `files`, then stop (raise _Named)."""
    monkeypatch.setenv("DIFFUSION_LESSONS_CACHE", str(cache))
    monkeypatch.setenv("DIFFUSION_LESSONS_BUDGET", "smoke")
    real = training._cache_file

    def record(config, name):
        files.append(real(config, name).name)
        raise _Named

    monkeypatch.setattr(training, "_cache_file", record)


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    """A list that collects the cache-file name of every fit call made while the test runs."""
    files = []
    _recording(monkeypatch, files, tmp_path)
    return files


@pytest.fixture(scope="module")
def recipe_files(tmp_path_factory):
    """{recipe: the cache-file name its fit call gets at smoke}, for every chapter recipe."""
    files, out = [], {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        _recording(monkeypatch, files, tmp_path_factory.mktemp("cache"))
        for name in recipes.names():
            if name.startswith("ch"):
                with pytest.raises(_Named):
                    recipes.train(name, budget="smoke", progress=False)
                assert torch.get_default_dtype() == torch.float32  # the recipe restored it
                out[name] = files.pop()
    return out


def _fit_that_stops(model, *args, **kwargs):
    """fit up to the cache key; then a stand-in result so the rest of the statement runs."""
    try:
        REAL_FIT(model, *args, **kwargs)
    except _Named:
        pass
    history = {"step": [1], "loss": [0.0]}
    return training.FitResult(model, model, history, None, 0.0, True, None)


def _binds(stmt) -> set:
    """The names a top-level statement binds; a def or class binds its own name only."""
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {a.asname or a.name.split(".")[0] for a in stmt.names}
    if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)):
        return {stmt.name}
    return {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def _reads(stmt) -> set:
    """The names a statement reads from before it: those it loads but neither binds nor takes as
    arguments (a loop variable, a comprehension's, a function's locals). A statement that rebinds a
    name it reads (x = x + 1) would lose the earlier binding: the slice then fails with a NameError."""
    loads = {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    stores = {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    args = {a.arg for a in ast.walk(stmt) if isinstance(a, ast.arg)}
    return loads - stores - args - set(dir(builtins))


def _statements(cell_source: str) -> list:
    lines = [line for line in cell_source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    return ast.parse("\n".join(lines)).body


def _chapter_slice(notebook) -> list:
    """The first code cell's statements, plus a backward slice of the later ones towards every fit call."""
    cells = [c.source for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code"]
    setup, later = _statements(cells[0]), [s for cell in cells[1:] for s in _statements(cell)]
    needed, keep = set(), []
    for stmt in reversed(later):
        source = ast.unparse(stmt)
        if CALLS_FIT.search(source) or _binds(stmt) & needed:
            keep.append(stmt)
            needed = (needed - _binds(stmt)) | _reads(stmt)
    return setup + keep[::-1]


def _notebook_fit_files(notebook, recorded, monkeypatch) -> list:
    monkeypatch.setattr(dl, "fit", _fit_that_stops)
    monkeypatch.setattr(training, "fit", _fit_that_stops)  # `from diffusion_lessons.training import fit`
    before, threads = torch.get_default_dtype(), torch.get_num_threads()
    namespace = {"__name__": "__main__"}
    try:
        for stmt in _chapter_slice(notebook):
            exec(compile(ast.Module([stmt], type_ignores=[]), str(notebook), "exec"), namespace)
    finally:
        torch.set_default_dtype(before)
        torch.set_num_threads(threads)
    files = list(recorded)
    recorded.clear()
    return files


@pytest.mark.parametrize("notebook", [nb for nb in NOTEBOOKS if CALLS_FIT.search(nb.read_text())],
                         ids=lambda nb: nb.stem[:2])
def test_every_fit_of_a_chapter_is_a_recipe_with_the_same_cache_file(notebook, recipe_files, recorded, monkeypatch):
    chapter = notebook.stem[:2]
    in_notebook = _notebook_fit_files(notebook, recorded, monkeypatch)
    assert in_notebook, f"found no fit call to check in {notebook.name}"
    mine = {name: f for name, f in recipe_files.items() if name.startswith(f"ch{chapter}-")}
    # every fit the chapter makes is some recipe's (chapter 3 reuses chapter 2's eps model)
    missing = [f for f in in_notebook if f not in recipe_files.values()]
    assert not missing, f"{notebook.name} trains {missing}, which no recipe makes; recipes make {recipe_files}"
    # and every recipe of this chapter is a fit the chapter makes
    unused = {name: f for name, f in mine.items() if f not in in_notebook}
    assert not unused, f"recipes {unused} make cache files that {notebook.name} does not load ({in_notebook})"


def test_registry_names_descriptions_and_errors():
    names = recipes.names()
    assert len(names) == len(set(names)) and {"digits32-unet", "procedural-unet", "ch02-eps-gmm2"} <= set(names)
    assert all(recipes.describe(name) for name in names)
    with pytest.raises(ValueError, match="unknown recipe 'nope'; valid recipes: ch02-eps-gmm2"):
        recipes.get("nope")
    with pytest.raises(ValueError, match="smoke, laptop, gpu"):
        recipes.fit_call("ch02-eps-gmm2", budget="huge")


def test_image_recipes_fit_their_budgets():
    """The image models: 32 x 32 UNets whose size, steps and batch grow with the budget."""
    sizes = {}
    for budget in ("smoke", "gpu"):
        call = recipes.fit_call("digits32-unet", budget)
        assert call.data.shape[1:] == (1, 32, 32) and call.extra["held_out"].shape == (297, 1, 32, 32)
        sizes[budget] = (sum(p.numel() for p in call.model.parameters()), call.kwargs["steps"], call.kwargs["batch_size"])
    assert all(s < g for s, g in zip(sizes["smoke"], sizes["gpu"]))
    assert sizes["smoke"][0] < 100_000 and sizes["smoke"][1] <= 50  # seconds on a CPU


def test_training_an_image_recipe_reports_a_frechet_distance(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_LESSONS_CACHE", str(tmp_path))
    torch.set_num_threads(1)
    result = recipes.train("procedural-unet", budget="smoke", steps=3, progress=False)
    assert result.history["step"][-1] == 3 and not result.from_cache
    quality = recipes.evaluate("procedural-unet", result, budget="smoke")
    assert quality.metric == "FD" and quality.value > quality.floor > 0
    assert "FD" in str(quality) and "floor" in str(quality)
