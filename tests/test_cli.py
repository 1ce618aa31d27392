import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from diffusion_lessons.cli import main
from diffusion_lessons.nets import TimeMLP
from diffusion_lessons.paths import make_path
from diffusion_lessons.training import load_checkpoint, save_checkpoint


@pytest.fixture(autouse=True)
def private_cache_smoke_budget_one_thread(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_LESSONS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DIFFUSION_LESSONS_BUDGET", "smoke")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _checkpoint_line(out: str):
    lines = [line for line in out.splitlines() if line.startswith("checkpoint: ")]
    assert len(lines) == 1, out
    return lines[0].removeprefix("checkpoint: ")


def test_train_writes_a_checkpoint_that_records_what_sample_needs(tmp_path, capsys):
    argv = ["train", "--data", "gmm2", "--target", "score", "--path", "cosine", "--steps", "20", "--seed", "3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    file = _checkpoint_line(out)
    assert file.startswith(str(tmp_path / "cache")) and "trained in" in out
    _, config = load_checkpoint(file, which="ema")
    assert config["target"] == "score" and config["path"] == make_path("cosine").config()
    assert config["t_min"] == 1e-3 and config["steps"] == 20 and config["seed"] == 3
    assert config["data"]["config"] == {"name": "gmm2"} and config["model"]["class"] == "TimeMLP"
    assert main(argv) == 0  # the same run again comes from the cache
    out = capsys.readouterr().out
    assert "loaded from the cache" in out and _checkpoint_line(out) == file
    assert main(argv + ["--out", str(tmp_path / "copy.pt")]) == 0
    assert _checkpoint_line(capsys.readouterr().out) == str(tmp_path / "copy.pt")
    assert load_checkpoint(tmp_path / "copy.pt")[1] == config


def _zero_model_checkpoint(file, path, target, t_min=1e-3):
    """A TimeMLP that predicts 0 for `target`, so the PF-ODE it defines is linear with a known solution."""
    model = TimeMLP(2, hidden=8)
    torch.nn.init.zeros_(model.net[-1].weight)
    torch.nn.init.zeros_(model.net[-1].bias)
    save_checkpoint(file, model, {"path": path.config(), "target": target, "t_min": t_min}, ema=model)


@pytest.mark.parametrize("name, target", [("vp", "eps"), ("rf", "x0")])
def test_sample_integrates_the_pf_ode_of_the_checkpoint(tmp_path, capsys, name, target):
    """eps_hat = 0 means score 0 and dx/dt = f x, so x(t_min) = x(1) alpha(t_min) / alpha(1);
    x0_hat = 0 means eps_hat = x / sigma and dx/dt = (sigma' / sigma) x, so x(t_min) = x(1) sigma(t_min) / sigma(1)."""
    path = make_path(name)
    _zero_model_checkpoint(tmp_path / "zero.pt", path, target)
    out = tmp_path / "samples.npz"
    argv = ["sample", str(tmp_path / "zero.pt"), "--n", "300", "--out", str(out), "--seed", "5", "--steps", "400"]
    assert main(argv) == 0  # Heun's error, O(h^2), is below 1e-4 with 400 steps
    assert f"wrote 300 samples to {out}" in capsys.readouterr().out
    samples = np.load(out)["samples"]
    x_T = float(path.sigma(1.0)) * torch.randn(300, 2, generator=torch.Generator().manual_seed(5))
    ratio = path.alpha(1e-3) / path.alpha(1.0) if target == "eps" else path.sigma(1e-3) / path.sigma(1.0)
    np.testing.assert_allclose(samples, (x_T * float(ratio)).numpy(), rtol=1e-3)


def test_sample_draws_a_scatter_plot(tmp_path):
    _zero_model_checkpoint(tmp_path / "zero.pt", make_path("rf"), "velocity")
    assert main(["sample", str(tmp_path / "zero.pt"), "--n", "50", "--steps", "5", "--out",
                 str(tmp_path / "plot.png")]) == 0
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "spiral", "--steps", "5"], "unknown dataset 'spiral'; valid datasets: moons, swiss_roll"),
    (["train", "--data", "moons", "--target", "noise"], "unknown target 'noise'; valid targets: eps, x0, score, velocity"),
    (["train", "--data", "moons", "--path", "edm"], "unknown path 'edm'; valid paths: vp, subvp, ve, rf, cosine"),
    (["train", "--data", "moons", "--budget", "huge"], "unknown budget 'huge'; valid budgets: smoke, laptop, gpu"),
    (["sample", "missing.pt", "--out", "s.npz"], "no checkpoint at missing.pt"),
    (["sample", "missing.pt", "--out", "s.txt"], "cannot write samples to s.txt: use one of .npz, .png"),
])
def test_bad_names_give_one_line_and_a_nonzero_status(capsys, argv, message):
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("diffusion-lessons: error: ") and message in err


def _run(*args, tmp_path):
    env = {**os.environ, "DIFFUSION_LESSONS_CACHE": str(tmp_path / "cache"), "DIFFUSION_LESSONS_BUDGET": "smoke",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "diffusion_lessons", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_python_dash_m_runs_the_command_line(tmp_path):
    done = _run("train", "--data", "moons", "--target", "velocity", "--path", "rf", "--steps", "20", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert os.path.isfile(_checkpoint_line(done.stdout))
    failed = _run("train", "--data", "moons", "--target", "noise", tmp_path=tmp_path)
    assert failed.returncode == 2
    assert failed.stderr.splitlines() == ["diffusion-lessons: error: unknown target 'noise'; "
                                          "valid targets: eps, x0, score, velocity"]
