"""Recipes: chapters load every trained model through dl.pretrained (never a fit call of their own), by the
name of a registered recipe, and every chapter recipe is loaded by some chapter.
"""
import ast
import re
from pathlib import Path as FilePath

import pytest
import torch

from diffusion_lessons import recipes

nbformat = pytest.importorskip("nbformat")

PRETRAINED = re.compile(r'pretrained\(\\?"([\w.-]+)\\?"')
NOTEBOOKS = sorted((FilePath(__file__).parent.parent / "notebooks").glob("[0-9][0-9]*_*.ipynb"))


def _code_cells(notebook) -> list[str]:
    return [c.source for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code"]


def _fit_calls(source: str) -> int:
    """How many calls of a function named `fit` the code makes (comments and strings do not count)."""
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    tree = ast.parse("\n".join(lines))
    return sum(1 for node in ast.walk(tree) if isinstance(node, ast.Call)
               and getattr(node.func, "attr", getattr(node.func, "id", None)) == "fit")


def test_no_chapter_trains_a_network_itself():
    """Every trained model of a chapter comes through dl.pretrained (shipped weights, or its recipe at the
    current budget): a `fit` call in a chapter's code would retrain on every book build."""
    fitting = {nb.name: n for nb in NOTEBOOKS if (n := sum(_fit_calls(c) for c in _code_cells(nb)))}
    assert not fitting, f"chapters that call fit themselves: {fitting}; make the model a recipe and load it " \
                        f"with dl.pretrained(name)"


SHOWN_FIT = re.compile(r'#\s*(?:dl\.)?fit\(.*\bname=\\?"([\w.-]+)\\?"')


def test_the_fit_calls_a_chapter_shows_are_the_recipes_it_loads():
    """The fit call a chapter shows its reader (as a comment beside dl.pretrained) names a registered recipe,
    and the chapter loads that very recipe."""
    shown = {nb.name: SHOWN_FIT.findall(nb.read_text()) for nb in NOTEBOOKS}
    assert any(shown.values()), "no chapter shows the fit call behind its models"
    for name, models in shown.items():
        loaded = set(PRETRAINED.findall((NOTEBOOKS[0].parent / name).read_text()))
        for model in models:
            assert model in recipes.names(), f"{name} shows fit(..., name={model!r}), which is not a recipe"
            assert model in loaded, f"{name} shows the fit call of {model!r} but does not load it with dl.pretrained"


def _named_in_loading_cells(notebook) -> list[str]:
    """Recipe names written as string literals in a code cell that calls pretrained (a loop over names)."""
    names = set(recipes.names())
    return [node.value for source in _code_cells(notebook) if "pretrained(" in source
            for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Constant) and node.value in names]


def test_every_pretrained_model_of_a_chapter_is_a_recipe_and_every_recipe_is_used():
    """Chapters that load their models with dl.pretrained("name") name registered recipes, and every
    chapter recipe is loaded by some chapter."""
    used = {name for nb in NOTEBOOKS for name in PRETRAINED.findall(nb.read_text()) + _named_in_loading_cells(nb)}
    assert used and used <= set(recipes.names()), f"unknown recipes: {used - set(recipes.names())}"
    orphans = [name for name in recipes.names() if name.startswith("ch") and name not in used]
    assert not orphans, f"recipes no chapter loads: {orphans}"


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
    shown = str(quality)
    assert shown.startswith("FD ") and "(exact data " in shown and ", moment-matched Gaussian " in shown
