"""Shipped weights (diffusion_lessons/weights, shipped.py): every manifest entry loads into today's code,
its file is the one the manifest hashed, it was trained by what its recipe builds today, and its model
still meets the claim its recipe states against the moment-matched Gaussian (measured again here).
Damaged, missing or foreign files give a clear error, and `pretrained` does not use them.
"""
import copy
import dataclasses
import itertools
import json
import math
import re
import shutil
from pathlib import Path as FilePath

import pytest
import torch

import diffusion_lessons as dl
from diffusion_lessons import recipes, shipped, training
from diffusion_lessons.checkpoints import CheckpointError, save_checkpoint

REPO = FilePath(__file__).resolve().parent.parent
MANIFEST = shipped.read_manifest()
SHIP = "diffusion-lessons pretrain --budget laptop --ship"


class _Named(Exception):
    pass


def _todays_run_config(name: str, budget: str, monkeypatch, tmp_path) -> dict:
    """The run configuration `fit` computes for recipe `name` at `budget` today (stopped before training)."""
    seen = []

    def record(config, _name):
        seen.append(config)
        raise _Named

    monkeypatch.setenv("DIFFUSION_LESSONS_CACHE", str(tmp_path))
    # A student's teacher (chapter 12) comes from the shipped weights, as when it was shipped: with
    # DIFFUSION_LESSONS_WEIGHTS=train the first fit call would be the teacher's own.
    monkeypatch.setenv(shipped.WEIGHTS_ENV, "shipped")
    monkeypatch.setattr(training, "_cache_file", record)
    with pytest.raises(_Named):
        recipes.train(name, budget, progress=False)
    return {k: v for k, v in seen[0].items() if k != "code"}


# -- the set as a whole --------------------------------------------------------------------------------

def test_every_recipe_that_ships_has_shipped_weights():
    missing = [name for name in recipes.shipped_names() if name not in MANIFEST]
    assert not missing, f"recipes without shipped weights: {missing}; run `{SHIP} --only {' '.join(missing)}`"
    stale = sorted(set(MANIFEST) - set(recipes.shipped_names()))
    assert not stale, f"shipped weights of recipes that no longer ship: {stale}; run `{SHIP}`"


def test_the_weights_folder_holds_the_manifest_and_its_files_only():
    on_disk = {p.name for p in shipped.WEIGHTS_DIR.iterdir() if not p.name.startswith(".")}
    assert on_disk == {"MANIFEST.json"} | {e["file"] for e in MANIFEST.values()}


def test_every_shipped_recipe_states_a_claim():
    for name in MANIFEST:
        claim = recipes.get(name).claim
        assert claim is not None, f"recipe {name} ships weights but states no claim (recipes._claim)"
        assert claim.factor is None or claim.factor >= 1.2, f"{name}: a claim should beat the baseline clearly"


def test_every_pretrained_call_in_a_chapter_names_a_recipe():
    calls = {}
    for notebook in sorted((REPO / "notebooks").glob("*.ipynb")):
        for cell in json.loads(notebook.read_text())["cells"]:
            for name in re.findall(r"pretrained\(\s*[\"']([^\"']+)[\"']", "".join(cell["source"])):
                calls.setdefault(name, []).append(notebook.stem)
    unknown = {name: where for name, where in calls.items() if name not in recipes.names()}
    assert not unknown, f"chapters load models that no recipe makes: {unknown}"


def test_the_readme_states_the_total_size():
    total = sum(e["bytes"] for e in MANIFEST.values()) / 2**20
    sizes = [float(x) for x in re.findall(r"([\d.]+) MiB", (REPO / "README.md").read_text())]
    assert any(abs(size - total) < 0.15 for size in sizes), f"README.md should state the shipped total, {total:.1f} MiB"


# -- each entry -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_the_file_is_the_one_the_manifest_hashed(name):
    entry = MANIFEST[name]
    file = shipped.WEIGHTS_DIR / entry["file"]
    assert file.stat().st_size == entry["bytes"] and shipped.sha256(file) == entry["sha256"]
    assert entry["dtype"] in ("float16", "float32") and entry["budget"] in dl.budget.BUDGETS
    assert file.stat().st_size < 2 * 2**20


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_it_was_trained_by_what_the_recipe_builds_today(name, monkeypatch, tmp_path):
    entry = MANIFEST[name]
    today = _todays_run_config(name, entry["budget"], monkeypatch, tmp_path)
    diff = {k: (entry["config"].get(k), today.get(k)) for k in set(today) | set(entry["config"])
            if entry["config"].get(k) != today.get(k)}
    assert not diff, f"{name} changed since it was shipped ({diff}): run `{SHIP} --only {name}`"


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_it_loads_into_todays_code_and_meets_its_claim(name, monkeypatch):
    # A recipe's fit call may need another model (a distillation's teacher, PD's previous round): the shipped
    # one, as a reader gets it, even where the suite runs with DIFFUSION_LESSONS_WEIGHTS=train (CI), which
    # would otherwise train the whole chain of teachers at the laptop budget first.
    monkeypatch.delenv(shipped.WEIGHTS_ENV, raising=False)
    entry = MANIFEST[name]
    trained = shipped.load_shipped(name)
    assert trained.source == "shipped" and trained.budget == entry["budget"] and trained.model is trained.ema
    assert isinstance(trained, training.FitResult) and trained.history["step"][-1] == entry["config"]["steps"]
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in trained.model.parameters())
    assert name in trained.describe() and "shipped" in trained.describe()
    if entry["quality"] is None:
        return
    quality = recipes.evaluate(name, trained, entry["budget"])
    recorded = entry["quality"]["value"]
    print(f"{name}: {quality} (manifest: {recorded:.4g})")
    assert math.isclose(quality.value, recorded, rel_tol=0.02), f"{name}: measured {quality.value}, shipped {recorded}"
    holds, line = recipes.get(name).claim.check(quality)
    assert holds, f"{name}: {line}"


# -- what happens to a bad file ------------------------------------------------------------------------------

@pytest.fixture
def weights(tmp_path):
    """A copy of one small shipped entry (a 2-D TimeMLP) in a folder of its own: (folder, name, file)."""
    name = next(n for n, e in sorted(MANIFEST.items()) if e["config"]["model"]["class"] == "TimeMLP"
                and e["config"]["model"]["dim"] == 2)
    shutil.copy(shipped.WEIGHTS_DIR / MANIFEST[name]["file"], tmp_path)
    shipped.write_manifest({name: MANIFEST[name]}, tmp_path)
    return tmp_path, name, tmp_path / MANIFEST[name]["file"]


def _rehash(folder, name, file):
    """Make the manifest agree with whatever is now in file (to test the checks after the SHA-256)."""
    entries = shipped.read_manifest(folder)
    entries[name] = {**entries[name], "sha256": shipped.sha256(file), "bytes": file.stat().st_size}
    shipped.write_manifest(entries, folder)


def test_a_corrupt_file_is_refused(weights):
    folder, name, file = weights
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"is corrupt: its SHA-256 is not the one in MANIFEST.json"):
        shipped.load_shipped(name, folder)
    file.write_bytes(bytes(data[:100]))  # truncated, and the manifest updated to match: the format check refuses it
    _rehash(folder, name, file)
    with pytest.raises(CheckpointError, match="truncated, corrupt or not a diffusion-lessons checkpoint"):
        shipped.load_shipped(name, folder)


def test_a_missing_file_or_entry_is_named(weights):
    folder, name, file = weights
    file.unlink()
    with pytest.raises(CheckpointError, match=rf"shipped weights of '{name}' are missing: no file"):
        shipped.load_shipped(name, folder)
    with pytest.raises(CheckpointError, match="no shipped weights for recipe 'ch07-energy'"):
        shipped.load_shipped("ch07-energy", folder)
    with pytest.raises(ValueError, match="unknown recipe 'nope'; valid recipes:"):
        shipped.load_shipped("nope", folder)
    (folder / "MANIFEST.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="is not a diffusion-lessons weights manifest"):
        shipped.read_manifest(folder)


def test_a_foreign_file_or_another_model_is_refused(weights):
    folder, name, file = weights
    torch.save({"weights": torch.zeros(3)}, file)  # a valid torch file, but not ours
    _rehash(folder, name, file)
    with pytest.raises(CheckpointError, match="is not a diffusion-lessons checkpoint"):
        shipped.load_shipped(name, folder)
    other = dl.TimeMLP(2, hidden=32)  # a checkpoint of another architecture, under the recipe's name
    save_checkpoint(file, other, {"path": dl.VP().config(), "target": "eps"})
    _rehash(folder, name, file)
    with pytest.raises(CheckpointError, match=rf"was trained for another model than recipe '{name}' builds today"):
        shipped.load_shipped(name, folder)


def _fake_train(calls):
    """recipes.train stand-in: records (name, budget) and returns an untrained model as if just trained."""
    def train(name, budget=None, call=None, **kwargs):
        calls.append((name, budget))
        call = recipes.fit_call(name, budget)
        return training.FitResult(call.model, copy.deepcopy(call.model), {"step": [1], "loss": [1.0]}, None, 0.5,
                                  False, {"steps": 1})
    return train


def test_pretrained_falls_back_to_training_and_says_why(weights, monkeypatch):
    folder, name, file = weights
    calls = []
    monkeypatch.setattr(recipes, "train", _fake_train(calls))
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", folder)
    monkeypatch.delenv("DIFFUSION_LESSONS_WEIGHTS", raising=False)
    monkeypatch.setenv("DIFFUSION_LESSONS_BUDGET", "smoke")
    assert dl.pretrained(name).source == "shipped" and not calls
    file.write_bytes(file.read_bytes()[:-10])
    with pytest.warns(UserWarning, match=rf"not using the shipped weights of {name}: .* is corrupt.*smoke budget"):
        result = dl.pretrained(name)
    assert result.source == "trained" and result.budget == "smoke" and calls == [(name, "smoke")]
    assert result.model is result.ema and "trained here just now" in result.describe()


def test_the_weights_setting(weights, monkeypatch):
    folder, name, _ = weights
    calls = []
    monkeypatch.setattr(recipes, "train", _fake_train(calls))
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", folder)
    monkeypatch.setenv("DIFFUSION_LESSONS_BUDGET", "smoke")
    monkeypatch.setenv("DIFFUSION_LESSONS_WEIGHTS", "train")
    result = dl.pretrained(name)
    assert result.source == "trained" and result.budget == "smoke" and calls == [(name, "smoke")]
    assert "DIFFUSION_LESSONS_WEIGHTS=train" in result.describe()
    monkeypatch.setenv("DIFFUSION_LESSONS_WEIGHTS", " Shipped ")
    assert dl.pretrained(name).source == "shipped"
    assert dl.pretrained(name, budget="smoke").source == "trained"  # not the budget the shipped ones have
    assert dl.pretrained("ch07-energy").source == "trained"  # nothing shipped for it in this folder
    monkeypatch.setenv("DIFFUSION_LESSONS_WEIGHTS", "download")
    with pytest.raises(ValueError, match=r"unknown weights setting 'download' .*valid values: shipped, train"):
        dl.pretrained(name)


# -- shipping ----------------------------------------------------------------------------------------------

def test_ship_writes_weights_a_manifest_and_a_table(tmp_path, monkeypatch):
    """Ship one MLP at smoke into a fresh folder, load it back: the same function as the trained EMA model."""
    from diffusion_lessons import pretrain

    monkeypatch.setenv("DIFFUSION_LESSONS_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    name = "ch07-free"
    rows = pretrain.ship([name], budget="smoke", folder=tmp_path / "w", progress=False)
    entry = shipped.read_manifest(tmp_path / "w")[name]
    assert rows[0].name == name and rows[0].source == "shipped" and "SW2" in pretrain.format_table(rows)
    assert entry["budget"] == "smoke" and entry["seconds"] > 0 and entry["quality"]["baseline"] > 0
    assert entry["config"]["steps"] == recipes.fit_call(name, "smoke").kwargs["steps"] and "code" not in entry["config"]
    trained = recipes.train(name, "smoke", progress=False)  # from the cache now
    loaded = shipped.load_shipped(name, tmp_path / "w")
    x, t = torch.randn(64, 2, generator=torch.Generator().manual_seed(0)), 0.4
    with torch.no_grad():
        gap = (loaded.model(x, t) - trained.ema(x, t)).abs().max().item()
    assert gap < (1e-2 if entry["dtype"] == "float16" else 1e-6)
    again = pretrain.ship([name], budget="smoke", folder=tmp_path / "w", progress=False)  # from the cache
    assert shipped.read_manifest(tmp_path / "w")[name]["seconds"] == entry["seconds"] and again[0].source == "shipped"


def test_float16_only_where_the_quality_figure_does_not_move():
    q = recipes.Quality("SW2", 0.04512, 0.06)
    assert shipped._half_changes_nothing(q, dataclasses.replace(q, value=0.04514))
    assert not shipped._half_changes_nothing(q, dataclasses.replace(q, value=0.0452))
    assert not shipped._half_changes_nothing(None, None)


def test_manifest_is_sorted_json(tmp_path):
    shipped.write_manifest({"b": {"x": 1}, "a": {"y": 2}}, tmp_path)
    text = (tmp_path / "MANIFEST.json").read_text()
    assert list(json.loads(text)["recipes"]) == ["a", "b"] and shipped.read_manifest(tmp_path) == {"a": {"y": 2},
                                                                                                    "b": {"x": 1}}


# -- chapter 6's claims about its UNet (sections 6.9 and 6.10), on the shipped weights ----------------------

def chapter6_measures(unet, n: int = 500, grids=(4, 8, 16, 32)) -> dict:
    """What chapter 6 measures on its UNet: the median distance between the UNet's Heun trajectories and the
    closed form of the digits' Gaussian approximation, relative to the signal, at t = 0.9, 0.7, 0.3 (8
    trajectories, 32 steps); and the classifier Fréchet distance of n samples, plain Heun and teleported
    from t = 0.6, on uniform grids of `grids` steps, with the floor of n held-out digits."""
    from diffusion_lessons.closed_form import (
        fit_gaussian,
        gaussian_pf_ode,
        teleport_sample,
    )
    from diffusion_lessons.datasets import digits
    from diffusion_lessons.metrics import (
        classifier_frechet_distance,
        train_digit_classifier,
    )
    from diffusion_lessons.solvers import sample_ode, time_grid

    path, images = dl.VP(), digits(16)
    gaussian = fit_gaussian(images)
    device = next(unet.parameters()).device

    def velocity(x, t):
        with torch.no_grad():
            return dl.convert(unet(x.to(device), t), "eps", "velocity", x.to(device), t, path).to(x.device)

    grid = time_grid(32)
    x_T = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    _, model_path = sample_ode(velocity, x_T, grid, method="heun", return_trajectory=True)
    closed = gaussian_pf_ode(gaussian, path, x_T, 1.0, grid).float()
    mean = gaussian.mean_vector.float().reshape(1, 1, 16, 16)
    signal = (closed - path.alpha(grid).float().reshape(-1, 1, 1, 1, 1) * mean).flatten(2).norm(dim=2)
    gap = ((model_path - closed).flatten(2).norm(dim=2) / signal).median(dim=1).values
    at = {t: float(gap[int((grid - t).abs().argmin())]) for t in (0.9, 0.7, 0.3)}
    classifier = train_digit_classifier(size=16)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    train_set, held_out = images[perm[:1200]], images[perm[1200:]][:n]
    starts = torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    fd = {}
    for steps in grids:
        for name, skip in (("plain", 1.0), ("teleport", 0.6)):
            out = teleport_sample(velocity, gaussian, path, starts, skip, t_grid=time_grid(steps), method="heun")
            fd[name, steps] = (classifier_frechet_distance(out.samples, train_set, classifier), out.nfe)
    return {"gap": at, "fd": fd, "floor": classifier_frechet_distance(held_out, train_set, classifier)}


@pytest.mark.skipif("ch06-unet-digits16" not in MANIFEST, reason="no shipped ch06 UNet")
def test_the_chapter6_unet_follows_the_closed_form_early_and_improves_with_steps():
    """Chapter 6: the UNet follows the Gaussian closed form early and departs late (relative distance below
    0.3 at t = 0.7, growing from t = 0.9 to 0.3); its plain sampler's Fréchet distance does not grow with
    the number of steps; teleporting costs at most 10 % plus a quarter of the floor on each grid."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    m = chapter6_measures(shipped.load_shipped("ch06-unet-digits16").model)
    print(m)
    gap, fd, allowance = m["gap"], m["fd"], 0.25 * m["floor"]
    assert gap[0.7] < 0.25 and gap[0.9] < gap[0.7] < gap[0.3], gap  # the chapter's bound is 0.3
    plain = [fd["plain", k][0] for k in (4, 8, 16, 32)]
    assert all(b <= 1.05 * a for a, b in itertools.pairwise(plain)), f"plain-sampler FD grows with steps: {plain}"
    for k in (4, 8, 16, 32):
        (p, p_nfe), (q, q_nfe) = fd["plain", k], fd["teleport", k]
        assert q_nfe < p_nfe and q < 1.1 * p + allowance, (k, p, q, allowance)


def test_pretrained_networks_live_on_the_cpu_even_beside_a_gpu(monkeypatch):
    """The chapters make their tensors on the CPU, so `pretrained` puts the network there unless asked for another
    device, also where CUDA is available (Colab's GPU runtime): here CUDA is made to look available, and a move to it
    (impossible with the CPU wheel) would raise."""
    monkeypatch.delenv(shipped.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    name = next(n for n, e in sorted(MANIFEST.items()) if e["config"]["model"]["class"] == "TimeMLP")
    trained = dl.pretrained(name)
    assert trained.source == "shipped" and {p.device.type for p in trained.model.parameters()} == {"cpu"}
    x = torch.zeros(3, trained.model.config["dim"])
    assert torch.isfinite(trained.model(x, 0.5)).all()
