"""Hostile input to the installed `diffusion-lessons` command, run in subprocesses (issue 18).

Every case ends with one line on stderr that names the problem and the fix, a non-zero status and
nothing written, or with the right result. The cases that need nothing from one another run one after
the other in one subprocess that executes the installed command's script for each (DRIVER: one
interpreter start instead of twenty, on two cores); the permission cases run as an unprivileged user
when the tests run as root (root reads and writes any file), each in its own process; the ones that
need a sequence (train, damage, train again; Ctrl-C) start the command once per step.
"""
import copy
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path as FilePath

import numpy as np
import pytest
import torch
from test_checkpoint_integrity import flip_bytes

import diffusion_lessons
from diffusion_lessons.cli import T_EDGE
from diffusion_lessons.nets import TimeMLP
from diffusion_lessons.paths import make_path
from diffusion_lessons.training import save_checkpoint

ROOT = FilePath(__file__).resolve().parents[1]
COMMAND = shutil.which("diffusion-lessons", path=str(FilePath(sys.executable).parent)) or shutil.which(
    "diffusion-lessons")
pytestmark = pytest.mark.skipif(COMMAND is None, reason="the diffusion-lessons command is not installed")
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _can_drop_privileges() -> bool:
    return os.geteuid() != 0 or shutil.which("setpriv") is not None


def _env(work: FilePath) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "DIFFUSION_LESSONS_CACHE": str(work / "cache"), "DIFFUSION_LESSONS_BUDGET": "smoke",
            "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "MPLCONFIGDIR": str(work / "mpl")}


def run(work: FilePath, *args, unprivileged=False, timeout=300):
    prefix = NOBODY if unprivileged and os.geteuid() == 0 else []
    return subprocess.run([*prefix, COMMAND, *map(str, args)], capture_output=True, text=True, env=_env(work),
                          cwd=work, timeout=timeout, check=False)


# Runs the installed command's script (runpy) once per argv, as the console would, in this one process;
# an exception that escapes prints its traceback. Prints [{"code", "out", "err"}, ...] as JSON.
DRIVER = r"""
import contextlib, io, json, runpy, sys, traceback

command, results = sys.argv[1], []
for argv in json.loads(sys.argv[2]):
    out, err, code = io.StringIO(), io.StringIO(), None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        sys.argv = [command, *argv]
        try:
            runpy.run_path(command, run_name="__main__")
        except SystemExit as exit:
            code = exit.code
        except BaseException:
            traceback.print_exc()
    results.append({"returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
print(json.dumps(results))
"""


def run_many(work: FilePath, argvs: list) -> list:
    """The results of the command on each argv, run in one subprocess (DRIVER), as CompletedProcess."""
    done = subprocess.run([sys.executable, "-c", DRIVER, COMMAND, json.dumps([list(map(str, a)) for a in argvs])],
                          capture_output=True, text=True, env=_env(work), cwd=work, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    return [subprocess.CompletedProcess(argv, **r) for argv, r in zip(argvs, json.loads(done.stdout), strict=True)]


def assert_one_line_error(done, *phrases, status=None):
    """Non-zero status (or `status`), nothing on stdout, one line on stderr holding every phrase, no traceback."""
    assert done.returncode != 0 and (status is None or done.returncode == status), (done.returncode, done.stderr)
    lines = done.stderr.splitlines()
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    assert lines[0].startswith("diffusion-lessons") and all(p in lines[0] for p in phrases), (lines[0], phrases)
    assert done.stdout == "", done.stdout


# -- the checkpoints the cases sample -------------------------------------------------------------------

def _zero_eps_model():
    """A TimeMLP predicting eps_hat = 0 (so the PF-ODE is dx/dt = f x, solved in closed form)."""
    model = TimeMLP(2, hidden=8)
    torch.nn.init.zeros_(model.net[-1].weight)
    torch.nn.init.zeros_(model.net[-1].bias)
    return model


def _save(file, model=None, **config):
    model = model or _zero_eps_model()
    full = {"path": make_path("vp").config(), "target": "eps", "t_min": 1e-3, **config}
    return save_checkpoint(file, model, full, ema=copy.deepcopy(model))


def _edited(work, name, edit):
    payload = torch.load(_save(work / "base.pt"), weights_only=True)
    edit(payload)
    torch.save(payload, work / name)
    return work / name


def _setup(work: FilePath) -> dict:
    """name -> (argv, unprivileged) of the independent cases, with the files they need written in `work`."""
    for folder in ("mpl", "cache", "out"):
        (work / folder).mkdir(mode=0o777)
        os.chmod(work / folder, 0o777)  # the unprivileged runs write here
    good = _save(work / "good.pt")
    _save(work / "t_min0.pt", t_min=0.0)
    _save(work / "unknown_kw.pt", path={"name": "vp", "gamma": 3.0})
    _save(work / "no_name.pt", path={"beta_min": 0.1, "beta_max": 20.0})
    _save(work / "bad_target.pt", target="noise")
    huge = _zero_eps_model()
    with torch.no_grad():
        huge.net[-1].bias.fill_(3e38)  # finite weights whose predictions overflow on the way
    _save(work / "overflow.pt", huge)
    infinite = _zero_eps_model()
    with torch.no_grad():
        for parameter in infinite.parameters():
            parameter.fill_(3e38)  # finite weights whose sums overflow: a NaN or infinite prediction
    _save(work / "inf_output.pt", infinite)
    _save(work / "runaway.pt", huge, target="velocity")  # finite velocities whose Heun average overflows x
    _edited(work, "string.pt", lambda p: p["ema_state_dict"].__setitem__("net.0.weight", "a string"))
    _edited(work, "wide.pt", lambda p: p["config"]["model"].__setitem__("hidden", 10**7))
    _edited(work, "nan.pt", lambda p: p["ema_state_dict"]["net.0.bias"].__setitem__(0, math.nan))
    shutil.copy(good, work / "bitrot.pt")
    flip_bytes(work / "bitrot.pt")
    shutil.copy(good, work / "unreadable.pt")
    os.chmod(work / "unreadable.pt", 0)
    (work / "folder.pt").mkdir()
    (work / "existing.npz").mkdir()
    (work / "readonly").mkdir(mode=0o555)
    os.chmod(work / "readonly", 0o555)
    os.chmod(work, 0o755)

    def sample(file, *more):
        return ["sample", file, "--n", "50", "--steps", "20", "--out", f"out/{FilePath(file).stem}.npz", *more]

    return {
        "string": (sample("string.pt"), False),
        "wide": (sample("wide.pt"), False),
        "unknown_kw": (sample("unknown_kw.pt"), False),
        "no_name": (sample("no_name.pt"), False),
        "bad_target": (sample("bad_target.pt"), False),
        "n_huge": (["sample", "good.pt", "--n", str(10**12), "--out", "out/n.npz"], False),
        "steps_huge": (["sample", "good.pt", "--steps", str(10**12), "--out", "out/steps.npz"], False),
        "seed_huge": (["sample", "good.pt", "--seed", str(2**70), "--out", "out/seed.npz"], False),
        "bench_readonly": (["bench", "--quick", "--only", "samplers", "--out", "readonly/tables.md"], True),
        "folder": (sample("folder.pt"), False),
        "unreadable": (sample("unreadable.pt"), True),
        "out_is_folder": (["sample", "good.pt", "--out", "existing.npz"], False),
        "bitrot": (sample("bitrot.pt"), False),
        "nan": (sample("nan.pt"), False),
        "overflow": (sample("overflow.pt"), False),
        "inf_output": (sample("inf_output.pt"), False),
        "runaway": (sample("runaway.pt"), False),
        "t_min0": (["sample", "t_min0.pt", "--n", "300", "--steps", "400", "--seed", "5", "--out", "out/t0.npz"],
                   False),
        "version": (["--version"], False),
        "train_negative_every": (["train", "--data", "moons", "--steps", "5", "--checkpoint-every", "-5"], False),
        "train_seed_huge": (["train", "--data", "moons", "--steps", "5", "--seed", str(2**70)], False),
        "train_steps_fraction": (["train", "--data", "moons", "--steps", "1.5"], False),
    }


@pytest.fixture(scope="module")
def cases():
    """Runs every independent case; yields (work folder, name -> CompletedProcess)."""
    work = FilePath(tempfile.mkdtemp(prefix="dl-cli-hostile-"))
    try:
        argvs = _setup(work)
        alone = [name for name, (_, nobody) in argvs.items() if nobody]
        together = [name for name in argvs if name not in alone]
        results = dict(zip(together, run_many(work, [argvs[name][0] for name in together]), strict=True))
        results.update({name: run(work, *argvs[name][0], unprivileged=True) for name in alone})
        yield work, results
    finally:
        os.chmod(work / "readonly", 0o755)
        shutil.rmtree(work, ignore_errors=True)


def _written(work):
    return sorted(p.name for p in (work / "out").iterdir())


@pytest.mark.parametrize("name, phrases", [
    ("string", ["string.pt: ema_state_dict['net.0.weight'] is a str, not a tensor", "damaged"]),
    ("wide", ["the weights do not fit", "'net.0.weight': the config declares [10000000, 34], the file holds [8, 34]"]),
    ("unknown_kw", ["unknown_kw.pt has an unusable path",
                    "unknown parameter 'gamma' for path 'vp'; valid parameters: beta_min, beta_max"]),
    ("no_name", ["no_name.pt has an unusable path", "a path config needs a 'name' key"]),
    ("bad_target", ["bad_target.pt has an unknown target 'noise'"]),
    ("folder", ["folder.pt is a directory, not a checkpoint file; give the path of a .pt file"]),
    ("bitrot", ["bitrot.pt", "does not match its CRC-32 checksum", "delete it and train again"]),
    ("nan", ["nan.pt: ema_state_dict['net.0.bias'] holds NaN or infinite values"]),
    ("overflow", ["sampling the model in overflow.pt failed", "overflows torch.float32", "nothing was written"]),
    ("inf_output", ["the model in inf_output.pt predicts NaN or infinite values at t = 1", "nothing was written"]),
    ("runaway", ["the model in runaway.pt predicts NaN or infinite values", "nothing was written"]),
])
def test_sample_refuses_a_checkpoint_it_cannot_use(cases, name, phrases):
    """Before: TypeError tracebacks (a string in the state dict, an unknown path keyword), an attempt to
    allocate 400 TB (a 10**7-wide layer), 'does not exist' for a folder, and NaN samples written with
    status 0 (bit rot, NaN weights, predictions that overflow, samples that run away to inf)."""
    work, done = cases
    assert_one_line_error(done[name], *phrases, status=1)
    assert not (work / "out" / f"{name}.npz").exists()


@pytest.mark.parametrize("name, phrases", [
    ("n_huge", ["--n must be a whole number from 1 to 10000000 (for more, run again with another --seed)",
                "got 1000000000000"]),
    ("steps_huge", ["--steps must be a whole number from 1 to 100000; got 1000000000000"]),
    ("seed_huge", ["--seed must be a whole number from 0 to 2**62; got 1180591620717411303424"]),
    ("out_is_folder", ["--out existing.npz is a directory; give a file name such as existing.npz/samples.npz"]),
    ("train_negative_every", ["checkpoint_every must be None (automatic), 0 (no resume checkpoints)",
                              "or a whole number of steps >= 1; got -5"]),
    ("train_seed_huge", ["seed must be a whole number from 0 to 2**62"]),
    ("train_steps_fraction", ["argument --steps: invalid int value: '1.5'"]),
])
def test_bad_numbers_are_named_before_any_work(cases, name, phrases):
    """Before: allocation tracebacks (--n, --steps 10**12), 'Overflow when unpacking long long' (seed 2**70),
    IsADirectoryError after sampling, and checkpoint_every -5 silently meaning 'never'."""
    work, done = cases
    assert_one_line_error(done[name], *phrases, status=2)
    assert set(_written(work)) <= {"t0.npz"} and list((work / "cache").iterdir()) == []  # t0.npz: the t_min0 case


@pytest.mark.skipif(not _can_drop_privileges(), reason="needs setpriv to test permissions as root")
def test_an_unreadable_checkpoint_is_a_permission_problem_not_a_corrupt_file(cases):
    """Before: 'truncated, corrupt ...; delete it and train again' for a file that was only unreadable."""
    _, done = cases
    assert_one_line_error(done["unreadable"], "cannot read unreadable.pt: permission denied; make it readable",
                          status=1)
    assert "delete" not in done["unreadable"].stderr


@pytest.mark.skipif(not _can_drop_privileges(), reason="needs setpriv to test permissions as root")
def test_bench_out_into_a_read_only_folder_fails_before_benchmarking(cases):
    """Before: PermissionError traceback after the benchmarks had run; now the file is opened first."""
    work, done = cases
    assert_one_line_error(done["bench_readonly"], "cannot write --out readonly/tables.md: Permission denied",
                          status=2)
    assert not (work / "readonly" / "tables.md").exists()


def test_a_checkpoint_trained_with_t_min_0_samples_finite_points(cases):
    """t_min = 0 puts sigma = 0 at the end of the grid, where the velocity of an eps model is infinite
    (before: every sample inf, status 0). The solve now ends at T_EDGE, where sigma > 0: with eps_hat = 0,
    dx/dt = f x and x(T_EDGE) = x(1) alpha(T_EDGE) / alpha(1) (Heun with 400 steps: error far below 1e-3)."""
    work, done = cases
    assert done["t_min0"].returncode == 0, done["t_min0"].stderr
    samples = np.load(work / "out" / "t0.npz")["samples"]
    path = make_path("vp")
    x_T = float(path.sigma(1.0)) * torch.randn(300, 2, generator=torch.Generator().manual_seed(5))
    expected = x_T * float(path.alpha(T_EDGE) / path.alpha(1.0))
    assert np.isfinite(samples).all()
    np.testing.assert_allclose(samples, expected.numpy(), rtol=1e-3)


def test_version(cases):
    _, done = cases
    assert done["version"].returncode == 0
    assert done["version"].stdout.strip() == f"diffusion-lessons {diffusion_lessons.__version__}"


# -- sequences: train, damage or interrupt, train again ------------------------------------------------------

TRAIN = ["train", "--data", "moons", "--steps", "20"]


@pytest.fixture
def work(tmp_path):
    (tmp_path / "mpl").mkdir()
    return tmp_path


def _checkpoint(done) -> FilePath:
    assert done.returncode == 0, done.stderr
    (line,) = [s for s in done.stdout.splitlines() if s.startswith("checkpoint: ")]
    return FilePath(line.removeprefix("checkpoint: "))


def test_a_damaged_cache_entry_is_one_warning_line_and_a_retrain(work):
    """Before: the warning printed a line of source (`result = fit(TimeMLP(2), ...`) under it."""
    file = _checkpoint(run(work, *TRAIN))
    flip_bytes(file)
    again = run(work, *TRAIN)
    assert _checkpoint(again) == file and "trained in" in again.stdout
    warnings = [line for line in again.stderr.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1 and warnings[0].startswith("diffusion-lessons: warning: ignoring the cached checkpoint")
    assert "CRC-32" in warnings[0] and "training again" in warnings[0]
    assert "fit(" not in again.stderr and "UserWarning" not in again.stderr


def test_a_folder_at_the_cache_path_is_reported_before_training(work):
    """Before: the run trained to the end (its progress bar reached 20/20), then failed to save."""
    file = _checkpoint(run(work, *TRAIN))
    file.unlink()
    file.mkdir()
    again = run(work, *TRAIN)
    assert_one_line_error(again, f"the cache path {file} is a directory", "remove it", status=1)


def test_a_resume_file_left_beside_a_finished_checkpoint_is_removed(work):
    file = _checkpoint(run(work, *TRAIN))
    stale = file.with_suffix(".partial.pt")
    shutil.copy(file, stale)
    again = run(work, *TRAIN)
    assert "loaded from the cache" in again.stdout and _checkpoint(again) == file
    assert not stale.exists() and sorted(os.listdir(file.parent)) == [file.name]


def _interrupt(work, *more):
    """Start a long `train`, wait until it trains (and, with --checkpoint-every, until a resume checkpoint
    exists), then press Ctrl-C (SIGINT). Returns (status, last line of stderr, files in the cache)."""
    cache = work / "cache"
    # As from a terminal: SIGINT at its default in the child even when this test runs in a background job
    # (a non-interactive shell starts those with SIGINT ignored, and the child would inherit that).
    process = subprocess.Popen([COMMAND, "train", "--data", "moons", "--steps", "100000", *more], env=_env(work),
                               cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wanted = "*.partial.pt" if more else "*.pt.lock"  # the lock is taken just before training starts
        deadline = time.monotonic() + 120
        while not list(cache.glob(wanted)) and process.poll() is None:
            assert time.monotonic() < deadline, "the run did not start training"
            time.sleep(0.05)
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    return process.returncode, err.splitlines()[-1], sorted(p.name for p in cache.iterdir())


def test_ctrl_c_before_any_resume_checkpoint_does_not_promise_one(work):
    """Before: 'run the same command again to resume from its last resume checkpoint', though none existed
    (the default writes the first after 10% of the steps and 30 s)."""
    status, last, files = _interrupt(work)
    assert status == 130 and not [f for f in files if f.endswith(".partial.pt")]
    assert last.startswith("diffusion-lessons: interrupted before the first resume checkpoint")
    assert "starts again from step 0" in last and "--checkpoint-every N" in last


def test_ctrl_c_after_a_resume_checkpoint_names_its_step(work):
    status, last, files = _interrupt(work, "--checkpoint-every", "50")
    (partial,) = [f for f in files if f.endswith(".partial.pt")]
    step = torch.load(work / "cache" / partial, weights_only=True)["resume"]["step"]
    assert status == 130 and step % 50 == 0
    assert last == ("diffusion-lessons: interrupted; run the same command again to resume from its resume "
                    f"checkpoint at step {step}")


def test_non_finite_samples_are_never_written(tmp_path, monkeypatch, capsys):
    """The last guard of `sample`, in this process: a solver that returns inf for some samples (here patched
    in, since a finite model is caught earlier) leaves no file and says how many samples were bad."""
    from diffusion_lessons import cli

    def half_infinite(velocity, x, grid, method):
        return torch.where(torch.arange(len(x))[:, None] % 2 == 0, x, torch.full_like(x, math.inf))

    monkeypatch.setattr(cli, "sample_ode", half_infinite)
    _save(tmp_path / "good.pt")
    assert cli.main(["sample", str(tmp_path / "good.pt"), "--n", "10", "--out", str(tmp_path / "s.npz")]) == 1
    err = capsys.readouterr().err
    assert "gave NaN or infinite values for 5 of 10 samples" in err and "nothing was written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.pt"]
