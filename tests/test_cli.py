import json
import os
import subprocess
import sys
from pathlib import Path as FilePath

import numpy as np
import pytest
import torch

from diffusion_lessons.cli import main
from diffusion_lessons.distributions import toy_data
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


@pytest.mark.parametrize("name, target, method", [("vp", "eps", "heun"), ("rf", "x0", "heun"), ("vp", "eps", "rk4")])
def test_sample_integrates_the_pf_ode_of_the_checkpoint(tmp_path, capsys, name, target, method):
    """eps_hat = 0 means score 0 and dx/dt = f x, so x(t_min) = x(1) alpha(t_min) / alpha(1);
    x0_hat = 0 means eps_hat = x / sigma and dx/dt = (sigma' / sigma) x, so x(t_min) = x(1) sigma(t_min) / sigma(1)."""
    path = make_path(name)
    _zero_model_checkpoint(tmp_path / "zero.pt", path, target)
    out = tmp_path / "samples.npz"
    argv = ["sample", str(tmp_path / "zero.pt"), "--n", "300", "--out", str(out), "--seed", "5", "--steps", "400",
            "--method", method]
    assert main(argv) == 0  # Heun's error, O(h^2), is below 1e-4 with 400 steps (RK4's far below)
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


BAD_NAMES = [  # (argv, one more environment variable or None, what the one line on stderr must say)
    (["train", "--data", "spiral", "--steps", "5"], None,
     "unknown dataset 'spiral'; valid datasets: moons, swiss_roll, checkerboard, rings, 8gaussians, gmm2"),
    (["train", "--data", "moons", "--target", "noise"], None,
     "unknown target 'noise'; valid targets: eps, x0, score, velocity"),
    (["train", "--data", "moons", "--path", "ddpm"], None, "unknown path 'ddpm'; valid paths: vp, subvp, ve, rf, cosine, edm"),
    (["train", "--data", "moons", "--budget", "huge"], None, "unknown budget 'huge'; valid budgets: smoke, laptop, gpu"),
    (["train", "--data", "moons"], ("DIFFUSION_LESSONS_BUDGET", "tiny"),
     "unknown budget 'tiny' in $DIFFUSION_LESSONS_BUDGET; valid budgets: smoke, laptop, gpu"),
    (["sample", "missing.pt", "--out", "s.npz", "--method", "rk5"], None,
     "unknown method 'rk5'; valid methods: euler, heun, rk4, adaptive"),
]


@pytest.mark.parametrize("argv, env, message", BAD_NAMES + [
    (["sample", "missing.pt", "--out", "s.npz"], None, "no checkpoint at missing.pt"),
    (["sample", "missing.pt", "--out", "s.txt"], None, "cannot write samples to s.txt: use one of .npz, .png"),
])
def test_bad_names_give_one_line_and_a_nonzero_status(capsys, monkeypatch, argv, env, message):
    if env:
        monkeypatch.setenv(*env)
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("diffusion-lessons: error: ") and message in err


def _env(tmp_path):
    return {**os.environ, "DIFFUSION_LESSONS_CACHE": str(tmp_path / "cache"), "DIFFUSION_LESSONS_BUDGET": "smoke",
            "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def _run(*args, tmp_path):
    return subprocess.run([sys.executable, "-m", "diffusion_lessons", *args], capture_output=True, text=True,
                          env=_env(tmp_path), timeout=300)




def test_python_dash_m_runs_the_command_line(tmp_path):
    done = _run("train", "--data", "moons", "--target", "velocity", "--path", "rf", "--steps", "20", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert os.path.isfile(_checkpoint_line(done.stdout))
    failed = _run("train", "--data", "moons", "--target", "noise", tmp_path=tmp_path)
    assert failed.returncode == 2
    assert failed.stderr.splitlines() == ["diffusion-lessons: error: unknown target 'noise'; "
                                          "valid targets: eps, x0, score, velocity"]


# Runs each command line as `python -m diffusion_lessons` would (runpy on the package's __main__), in one
# fresh interpreter to keep the test fast; an exception that escapes prints its traceback, as the
# interpreter would. Prints [{"code": exit status, "out": stdout, "err": stderr}, ...] as JSON.
ENTRY_POINT_DRIVER = r"""
import contextlib, io, json, os, runpy, sys, traceback

results = []
for argv, env in json.loads(sys.argv[1]):
    saved = dict(os.environ)
    os.environ.update(env)
    out, err, code = io.StringIO(), io.StringIO(), None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        sys.argv = ["diffusion-lessons", *argv]
        try:
            runpy.run_module("diffusion_lessons", run_name="__main__", alter_sys=True)
        except SystemExit as exit:
            code = exit.code
        except BaseException:
            traceback.print_exc()
    os.environ.clear()
    os.environ.update(saved)
    results.append({"code": code, "out": out.getvalue(), "err": err.getvalue()})
print(json.dumps(results))
"""


def test_bad_names_through_the_entry_point_give_one_line_and_no_traceback(tmp_path):
    """Each bad name through `python -m diffusion_lessons` (see ENTRY_POINT_DRIVER), import included:
    status 2, one line on stderr naming the bad value and the valid ones, no traceback, nothing on
    stdout. argparse's own errors (unknown command, malformed number) are one line too."""
    cases = BAD_NAMES + [(["serve"], None, "invalid choice: 'serve' (choose from"),
                         (["train", "--data", "moons", "--steps", "many"], None, "invalid int value: 'many'")]
    spec = json.dumps([[argv, dict([env]) if env else {}] for argv, env, _ in cases])
    done = subprocess.run([sys.executable, "-c", ENTRY_POINT_DRIVER, spec], capture_output=True, text=True,
                          env=_env(tmp_path), cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    for (argv, _, message), result in zip(cases, json.loads(done.stdout), strict=True):
        lines = result["err"].splitlines()
        assert result["code"] == 2 and result["out"] == "", (argv, result)
        assert "Traceback" not in result["err"], (argv, result["err"])
        assert len(lines) == 1 and lines[0].startswith("diffusion-lessons") and message in lines[0], (argv, lines)
        if argv == ["serve"]:
            assert "'train'" in lines[0] and "'sample'" in lines[0]


def test_an_interrupted_train_command_resumes_when_run_again(capsys, monkeypatch):
    """Interrupted after 25 of 40 steps (a resume checkpoint every 10), the same command resumes at step 20."""
    from diffusion_lessons import cli

    calls = []

    def failing_toy_data(name, n, generator=None):  # Ctrl-C during the 26th batch
        calls.append(n)
        if len(calls) > 25:
            raise KeyboardInterrupt
        return toy_data(name, n, generator=generator)

    argv = ["train", "--data", "moons", "--steps", "40", "--checkpoint-every", "10"]
    with monkeypatch.context() as patch:
        patch.setattr(cli, "toy_data", failing_toy_data)
        assert main(argv) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "resumed from step 20, trained in" in out
    assert [f.suffixes for f in (FilePath(_checkpoint_line(out)).parent).iterdir()] == [[".pt"]]


# -- pretrain and bench ----------------------------------------------------------------------------------

def test_pretrain_list_names_every_recipe(capsys):
    from diffusion_lessons import recipes

    assert main(["pretrain", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == recipes.names()
    assert {"digits32-unet", "procedural-unet"} <= set(recipes.names())


def test_pretrain_trains_a_recipe_then_finds_it_in_the_cache(tmp_path, capsys):
    argv = ["pretrain", "--only", "ch07-free", "--budget", "smoke"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["recipe", "device", "steps"] and len(out) == 3, out
    name, device, steps, seconds, loss, *quality, source = out[2].split()
    assert (name, device, steps, source) == ("ch07-free", "cpu", "200", "trained")
    assert float(seconds) > 0 and 0 < float(loss) < 10 and quality[0] == "SW2" and quality[2] == "(exact"
    assert len(list((tmp_path / "cache").glob("ch07-free-*.pt"))) == 1
    assert main(argv) == 0  # the second time it comes from the cache, with the same quality
    again = capsys.readouterr().out.splitlines()[2].split()
    assert again[-1] == "cache" and again[5:-1] == quality and again[4] == loss


def test_pretrain_book_trains_what_the_chapters_load_and_not_the_extra_models(monkeypatch, capsys):
    import re

    from diffusion_lessons import pretrain, recipes

    asked = []
    monkeypatch.setattr(pretrain, "pretrain", lambda names, budget=None: asked.append(names) or [])
    assert main(["pretrain", "--book", "--budget", "smoke"]) == 0
    loaded = {name for notebook in (FilePath(__file__).parent.parent / "notebooks").glob("*.ipynb")
              for name in re.findall(r'pretrained\(\\"([a-z0-9-]+)\\"', notebook.read_text())}
    assert asked == [recipes.shipped_names()] and len(loaded) > 20
    assert loaded <= set(asked[0]) and not {"digits32-unet", "procedural-unet"} & set(asked[0])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:  # one or the other
        main(["pretrain", "--book", "--only", "ch07-free"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "not allowed with argument --book" in err


@pytest.mark.parametrize("argv, message", [
    (["pretrain", "--only", "ch04-velocity", "nope"], "unknown recipe 'nope'; valid recipes: ch02-eps-gmm2, "),
    (["pretrain", "--budget", "huge"], "unknown budget 'huge'; valid budgets: smoke, laptop, gpu"),
])
def test_pretrain_bad_names_give_one_line_and_a_nonzero_status(tmp_path, capsys, argv, message):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("diffusion-lessons: error: ")
    assert message in captured.err and ("procedural-unet" in captured.err or "budget" in message)
    assert captured.out == "" and not (tmp_path / "cache").exists()  # nothing trained


def test_bench_hands_every_argument_to_the_benchmarks(monkeypatch, capsys):
    import types

    seen = []
    fake = types.ModuleType("diffusion_lessons.bench")
    fake.main = lambda argv: seen.append(argv) or 7
    monkeypatch.setitem(sys.modules, "diffusion_lessons.bench", fake)
    assert main(["bench", "--quick", "--only", "train", "--help"]) == 7
    assert seen == [["--quick", "--only", "train", "--help"]]
    monkeypatch.setitem(sys.modules, "diffusion_lessons.bench", None)  # as if the module were missing
    assert main(["bench"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("diffusion-lessons: error: ") and "bench" in err
