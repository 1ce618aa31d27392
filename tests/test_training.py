import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path as FilePath

import pytest
import torch

from diffusion_lessons.distributions import gauss2, gmm2, toy_data
from diffusion_lessons.nets import TimeMLP
from diffusion_lessons.objectives import loss
from diffusion_lessons.paths import make_path
from diffusion_lessons.training import (CHECKPOINT_MARKER, CheckpointError, TrainingError, fit, load_checkpoint,
                                        save_checkpoint)

SMALL = dict(steps=40, batch_size=64, lr=3e-3, progress=False)


pytestmark = pytest.mark.usefixtures("one_thread_and_a_private_cache")  # tests/conftest.py


def _data(n=4096, seed=0):
    return gauss2().sample(n, generator=torch.Generator().manual_seed(seed)).float()


def _held_out_loss(model, path):
    """eps loss on fixed data and fixed noise (common random numbers), averaged over many draws."""
    x0 = gauss2().sample(20_000, generator=torch.Generator().manual_seed(99)).float()
    with torch.no_grad():
        return loss(model, x0, path, generator=torch.Generator().manual_seed(7)).item()


def test_training_lowers_the_held_out_loss():
    path = make_path("vp")
    model = TimeMLP(2, hidden=64)
    before = _held_out_loss(model, path)
    result = fit(model, _data(), path, steps=250, batch_size=128, lr=3e-3, progress=False, cache=False)
    after = _held_out_loss(result.ema, path)
    assert result.model is model and not result.from_cache and result.checkpoint is None
    assert result.history["step"][-1] == 250 and len(result.history["loss"]) == len(result.history["step"])
    assert after < 0.75 * before, (before, after)
    assert result.history["loss"][-1] < result.history["loss"][0]


def _weights(model):
    return [p.detach().clone() for p in model.parameters()]


def test_same_seed_same_weights_on_cpu():
    path = make_path("rf")
    runs = []
    for seed, global_seed in [(3, 0), (3, 1), (4, 0)]:
        torch.manual_seed(global_seed)  # the global RNG must not matter: fit draws fresh weights from `seed`
        r = fit(TimeMLP(2, hidden=16), gmm2(), path, target="velocity", seed=seed, cache=False, **SMALL)
        runs.append((_weights(r.model), _weights(r.ema)))
    for a, b in zip(runs[0][0] + runs[0][1], runs[1][0] + runs[1][1]):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(runs[0][0], runs[2][0]))


def test_reinit_false_continues_from_the_current_weights():
    """One step with a negligible learning rate: without reinit the weights stay, with reinit they are redrawn."""
    def data(n, generator):  # the callable form of data
        return torch.randn(n, 2, generator=generator)

    torch.manual_seed(123)
    model = TimeMLP(2, hidden=16)
    start = _weights(model)
    tiny = {**SMALL, "steps": 1, "lr": 1e-12}
    kept = fit(model, data, make_path("vp"), reinit=False, **tiny)
    assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(start, _weights(kept.model)))
    redrawn = fit(TimeMLP(2, hidden=16), data, make_path("vp"), **tiny)
    assert not all(torch.allclose(a, b, atol=1e-3) for a, b in zip(start, _weights(redrawn.model)))
    assert kept.config["init"] != redrawn.config["init"] == "seed"
    assert kept.checkpoint != redrawn.checkpoint


def test_second_call_comes_from_the_cache(tmp_path):
    path, data = make_path("vp"), _data()
    first = fit(TimeMLP(2, hidden=16), data, path, **SMALL)
    assert re.fullmatch(r"TimeMLP-[0-9a-f]{16}\.pt", first.checkpoint.name)
    assert first.checkpoint.parent == tmp_path / "cache"
    started = time.perf_counter()
    second = fit(TimeMLP(2, hidden=16), data, path, **SMALL)
    assert time.perf_counter() - started < 1.0
    assert second.from_cache and second.checkpoint == first.checkpoint
    assert second.history == first.history
    for a, b in zip(_weights(first.model) + _weights(first.ema), _weights(second.model) + _weights(second.ema)):
        assert torch.equal(a, b)
    # any setting that changes the run changes the key: here the learning rate and the data's bytes
    assert fit(TimeMLP(2, hidden=16), data, path, **{**SMALL, "lr": 1e-3}).checkpoint != first.checkpoint
    changed = data.clone()
    changed[0, 0] += 1
    assert not fit(TimeMLP(2, hidden=16), changed, path, **SMALL).from_cache


def test_a_damaged_cache_entry_is_retrained():
    path, data = make_path("vp"), _data()
    file = fit(TimeMLP(2, hidden=16), data, path, **SMALL).checkpoint
    file.write_bytes(file.read_bytes()[:100])
    with pytest.warns(UserWarning, match="ignoring the cached checkpoint"):
        again = fit(TimeMLP(2, hidden=16), data, path, **SMALL)
    assert not again.from_cache and again.checkpoint == file
    load_checkpoint(file)  # rewritten whole


def _trained(tmp_path):
    result = fit(TimeMLP(2, hidden=16), _data(), make_path("vp"), cache=False, **SMALL)
    config = {"path": make_path("vp").config(), "target": "eps", "t_min": 1e-3}
    file = save_checkpoint(tmp_path / "model.pt", result.model, config, ema=result.ema, history=result.history)
    return result, file


def test_checkpoint_round_trip_with_ema(tmp_path):
    result, file = _trained(tmp_path)
    model, config = load_checkpoint(file, expect={"target": "eps", "path": make_path("vp").config()})
    assert config["model"] == result.model.config and config["target"] == "eps"
    ema, _ = load_checkpoint(file, which="ema")
    x = torch.randn(10, 2)
    with torch.no_grad():
        torch.testing.assert_close(model(x, 0.3), result.model(x, 0.3), rtol=0, atol=0)
        torch.testing.assert_close(ema(x, 0.3), result.ema(x, 0.3), rtol=0, atol=0)
        assert not torch.allclose(ema(x, 0.3), model(x, 0.3))
    payload = torch.load(file, weights_only=True)
    assert payload[CHECKPOINT_MARKER] == 1 and payload["history"] == result.history


def test_interrupted_save_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    result, file = _trained(tmp_path)
    good = file.read_bytes()

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(file, TimeMLP(2, hidden=16), {"target": "x0"})
    monkeypatch.undo()
    assert file.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]  # no stray temporary file
    assert load_checkpoint(file)[1]["target"] == "eps"


def test_damaged_and_foreign_files_raise_checkpoint_error(tmp_path):
    _, file = _trained(tmp_path)
    cases = {
        "truncated.pt": file.read_bytes()[: file.stat().st_size // 2],
        "random.pt": bytes(torch.randint(0, 256, (4000,), generator=torch.Generator().manual_seed(0)).tolist()),
        "empty.pt": b"",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match="cannot read .* truncated, corrupt or not a diffusion-lessons"):
            load_checkpoint(tmp_path / name)
    torch.save({"state_dict": TimeMLP(2).state_dict()}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match=f"not a diffusion-lessons checkpoint \\(no '{CHECKPOINT_MARKER}' key"):
        load_checkpoint(tmp_path / "foreign.pt")
    with open(tmp_path / "pickled.pt", "wb") as f:
        pickle.dump({CHECKPOINT_MARKER: 1, "config": {"model": {}}, "obj": _Custom()}, f, protocol=2)
    torch.save({CHECKPOINT_MARKER: 1, "obj": _Custom()}, tmp_path / "pickled_torch.pt")
    for name in ("pickled.pt", "pickled_torch.pt"):
        with pytest.raises(CheckpointError, match="weights-only loader refused it: it holds pickled Python"):
            load_checkpoint(tmp_path / name)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


class _Custom:
    pass


def test_mismatched_checkpoints_raise_checkpoint_error(tmp_path):
    _, file = _trained(tmp_path)
    payload = torch.load(file, weights_only=True)
    payload["config"]["model"]["hidden"] = 32  # config says 32 hidden units, the weights have 16
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="weights do not fit the model"):
        load_checkpoint(tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="target: file has 'eps', expected 'score'"):
        load_checkpoint(file, expect={"target": "score"})
    save_checkpoint(tmp_path / "no_ema.pt", TimeMLP(2), {})
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_checkpoint(tmp_path / "no_ema.pt", which="ema")


class _NaNAfter(torch.nn.Module):
    """A model whose output turns NaN at its k-th call (one call per training step)."""

    def __init__(self, k):
        super().__init__()
        self.k, self.calls, self.layer = k, 0, torch.nn.Linear(2, 2)

    def forward(self, x, t):
        self.calls += 1
        out = self.layer(x)
        return out * float("nan") if self.calls >= self.k else out


def test_divergence_names_the_step_and_saves_nothing(tmp_path):
    with pytest.raises(TrainingError, match=r"diverged at step 7: the loss is nan.*lower learning rate"):
        fit(_NaNAfter(7), _data(), make_path("vp"), cache=False, **{**SMALL, "steps": 20})
    with pytest.raises(TrainingError, match=r"diverged at step \d+.*lr=1e\+10"):
        fit(TimeMLP(2, hidden=16), _data(), make_path("vp"), **{**SMALL, "lr": 1e10, "steps": 200})
    assert not (tmp_path / "cache").exists() or not os.listdir(tmp_path / "cache")


def test_bad_data_says_what_is_wrong():
    with pytest.raises(ValueError, match=r"TimeMLP\(dim=2\) expects x of shape \[N, 2\]; got \[N, 3\]"):
        fit(TimeMLP(2, hidden=16), torch.randn(100, 3), make_path("vp"), **SMALL)
    with pytest.raises(ValueError, match="data must be a tensor"):
        fit(TimeMLP(2, hidden=16), "moons", make_path("vp"), **SMALL)
    with pytest.raises(ValueError, match="unknown target 'noise'"):
        fit(TimeMLP(2, hidden=16), _data(), make_path("vp"), target="noise", **SMALL)


# -- the cache key ------------------------------------------------------------------------------------

def test_the_cache_key_covers_everything_that_changes_the_result(tmp_path):
    """Each setting, changed alone, gives another cache file; the same settings give the same file."""
    import diffusion_lessons
    from diffusion_lessons import training

    data = _data(64)

    def key(model=None, data=data, path=None, **changes):
        kwargs = {"steps": 2, "batch_size": 8, "progress": False, **changes}
        return fit(model or TimeMLP(2, hidden=16), data, path or make_path("vp"), **kwargs).checkpoint.name

    base = key()
    changed_data = data.clone()
    changed_data[3, 1] += 1e-3
    variants = {
        "model config": key(model=TimeMLP(2, hidden=32)),
        "path config": key(path=make_path("vp", beta_max=10.0)),
        "path": key(path=make_path("subvp")),
        "target": key(target="score"),
        "steps": key(steps=3),
        "batch size": key(batch_size=16),
        "learning rate": key(lr=1e-4),
        "seed": key(seed=1),
        "data": key(data=changed_data),
        "EMA decay": key(ema_decay=0.99),
        "t_min": key(t_min=1e-2),
        "weighting": key(weighting="likelihood"),
        "logging interval": key(log_every=2),
        "starting weights": key(reinit=False),
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(diffusion_lessons, "__version__", "999.0")
        variants["package version"] = key()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "_code_hash", lambda: "edited source")
        variants["model code"] = key()
    assert key() == base and key(checkpoint_every=1) == base  # how often it checkpoints changes nothing
    assert [name for name, file in variants.items() if file == base] == []
    assert len(set(variants.values())) == len(variants)
    _, config = load_checkpoint(tmp_path / "cache" / base)
    assert {"model", "path", "target", "steps", "batch_size", "lr", "seed", "data", "version", "code"} <= set(config)


# -- resuming an interrupted run ----------------------------------------------------------------------

class _Interrupted(Exception):
    pass


def _moons_until(calls: int | None):
    """moons(n, generator), raising _Interrupted at the call after `calls` (None: never): a run cut short."""
    count = [0]

    def moons(n, generator):
        count[0] += 1
        if calls is not None and count[0] > calls:
            raise _Interrupted
        return toy_data("moons", n, generator=generator)

    return moons


RESUMABLE = dict(steps=100, batch_size=64, lr=3e-3, checkpoint_every=20, log_every=7, progress=False)


def _same_tensors(file_a, file_b):
    a, b = (torch.load(f, weights_only=True) for f in (file_a, file_b))
    assert a["config"] == b["config"] and a["history"] == b["history"]
    for part in ("state_dict", "ema_state_dict"):
        assert a[part].keys() == b[part].keys()
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), (part, name)


def test_an_interrupted_run_resumes_to_the_same_final_state(tmp_path, monkeypatch):
    """Stopped during step 54 (checkpoints every 20 steps, losses logged every 7), then called again:
    it resumes at step 40 and ends bit for bit where an uninterrupted run ends (model, EMA, history)."""
    path = make_path("vp")
    monkeypatch.setenv("DIFFUSION_LESSONS_CACHE", str(tmp_path / "whole"))
    whole = fit(TimeMLP(2, hidden=32), _moons_until(None), path, **RESUMABLE)
    assert whole.resumed_from == 0 and os.listdir(tmp_path / "whole") == [whole.checkpoint.name]

    monkeypatch.setenv("DIFFUSION_LESSONS_CACHE", str(tmp_path / "cut"))
    with pytest.raises(_Interrupted):
        fit(TimeMLP(2, hidden=32), _moons_until(53), path, **RESUMABLE)
    partial = tmp_path / "cut" / whole.checkpoint.name.replace(".pt", ".partial.pt")
    assert os.listdir(tmp_path / "cut") == [partial.name]  # no final file, no lock, no temporary file
    payload = torch.load(partial, weights_only=True)  # weights-only: tensors, numbers, strings only
    resume = payload["resume"]
    assert resume["step"] == 40 and payload["history"]["step"] == [7, 14, 21, 28, 35]
    assert len(resume["window"]) == 5  # the losses of steps 36..40, not yet logged
    assert all(state.dtype == torch.uint8 for state in resume["rng"].values())
    assert set(resume["rng"]) == {"data", "noise", "global"} and resume["optimizer"]["state"]

    again = fit(TimeMLP(2, hidden=32), _moons_until(None), path, **RESUMABLE)
    assert again.resumed_from == 40 and not again.from_cache
    assert os.listdir(tmp_path / "cut") == [whole.checkpoint.name]  # the partial file is gone
    _same_tensors(whole.checkpoint, again.checkpoint)
    for a, b in zip(_weights(whole.ema), _weights(again.ema)):
        assert torch.equal(a, b)


def test_an_unusable_resume_checkpoint_is_ignored(tmp_path, monkeypatch):
    """A damaged partial file (and a temporary file of a writer killed mid-write) do not stop a run."""
    path = make_path("rf")
    monkeypatch.setenv("DIFFUSION_LESSONS_CACHE", str(tmp_path / "clean"))
    clean = fit(TimeMLP(2, hidden=16), _moons_until(None), path, **RESUMABLE)
    cache = tmp_path / "dirty"
    cache.mkdir()
    monkeypatch.setenv("DIFFUSION_LESSONS_CACHE", str(cache))
    (cache / clean.checkpoint.name.replace(".pt", ".partial.pt")).write_bytes(b"\x80\x02garbage")
    (cache / f".{clean.checkpoint.name}.x1y2z3.tmp").write_bytes(b"half a checkpoint")
    with pytest.warns(UserWarning, match="ignoring the resume checkpoint .* training from the start"):
        again = fit(TimeMLP(2, hidden=16), _moons_until(None), path, **RESUMABLE)
    assert again.resumed_from == 0 and os.listdir(cache) == [clean.checkpoint.name]
    _same_tensors(clean.checkpoint, again.checkpoint)


class _TimeMLPTurningNaN(TimeMLP):
    """A TimeMLP (same config, so the same cache key) whose output turns NaN from its k-th call on."""

    def __init__(self, *args, nan_from: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.nan_from, self.calls = nan_from, 0

    def forward(self, x, t, y=None):
        self.calls += 1
        out = super().forward(x, t, y)
        return out * float("nan") if self.calls >= self.nan_from else out


def _snapshot(folder):
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir())}


def test_divergence_leaves_every_saved_file_untouched(tmp_path):
    """A NaN loss stops training with the step named, and nothing on disk changes: neither another run's
    checkpoint nor this run's resume checkpoint, even when the NaN falls between two resume checkpoints."""
    cache, path, data = tmp_path / "cache", make_path("vp"), _data()
    other = fit(TimeMLP(2, hidden=16), data, path, **SMALL).checkpoint  # a good entry of another run
    nan_run = {**SMALL, "steps": 100, "checkpoint_every": 20, "log_every": 50}
    with pytest.raises(TrainingError, match=r"diverged at step 50: the loss is nan.*lower learning rate"):
        fit(_TimeMLPTurningNaN(2, hidden=16, nan_from=50), data, path, **nan_run)
    partials = sorted(cache.glob("*.partial.pt"))
    assert len(partials) == 1 and torch.load(partials[0], weights_only=True)["resume"]["step"] == 40
    before = _snapshot(cache)
    assert sorted(before) == sorted([other.name, partials[0].name])
    # resumed at step 40, NaN from step 55; the losses are logged only at step 50 and 100, so it is the
    # check before the resume checkpoint of step 60 that must catch it
    with pytest.raises(TrainingError, match=r"diverged at step 55: the loss is nan.*lower learning rate"):
        fit(_TimeMLPTurningNaN(2, hidden=16, nan_from=15), data, path, **nan_run)
    assert _snapshot(cache) == before
    load_checkpoint(other)


# -- faults: SIGKILL and two processes at once ----------------------------------------------------------

TRAIN_SCRIPT = r'''
"""Train a small cached model on slowed-down moons; print the FitResult as JSON."""
import json, os, pathlib, sys, time
import torch
import diffusion_lessons as dl

steps, every, pause = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
barrier = pathlib.Path(sys.argv[4]) if len(sys.argv) > 4 else None
torch.set_num_threads(1)


class SlowMoons:
    """moons, with a pause per batch so that a test can catch the run in the middle (the pause is not in
    the config: it does not change the result)."""

    def sample(self, n, generator=None):
        time.sleep(pause)
        return dl.toy_data("moons", n, generator=generator)

    def config(self):
        return {"name": "moons"}


if barrier is not None:  # say we are ready, then wait for the go, so that two processes start fit together
    (barrier / f"ready-{os.getpid()}").touch()
    while not (barrier / "go").exists():
        time.sleep(0.01)
r = dl.fit(dl.TimeMLP(2, hidden=32), SlowMoons(), dl.VP(), steps=steps, batch_size=64, checkpoint_every=every,
           log_every=7, progress=False)
print(json.dumps({"from_cache": r.from_cache, "resumed_from": r.resumed_from, "checkpoint": str(r.checkpoint)}))
'''


def _start_training(tmp_path, cache, *args):
    script = tmp_path / "train_script.py"
    script.write_text(TRAIN_SCRIPT)
    env = {**os.environ, "DIFFUSION_LESSONS_CACHE": str(cache), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.Popen([sys.executable, str(script), *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def _wait_for(condition, timeout=180.0, what="a condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_a_run_killed_with_sigkill_resumes_to_the_state_of_an_uninterrupted_run(tmp_path):
    """400 steps, a resume checkpoint every 50: SIGKILL the process once one exists, start it again, and
    compare every tensor of the final checkpoint with a run that was never interrupted (torch.equal)."""
    whole = _start_training(tmp_path, tmp_path / "whole", 400, 50, 0.005)
    victim = _start_training(tmp_path, tmp_path / "killed", 400, 50, 0.02)  # slower: >= 7 s after step 50
    try:
        _wait_for(lambda: list((tmp_path / "killed").glob("*.partial.pt")) or victim.poll() is not None,
                  what="the first resume checkpoint")
        victim.send_signal(signal.SIGKILL)
        _, err = victim.communicate(timeout=60)
    finally:
        victim.kill()
    assert victim.returncode == -signal.SIGKILL, err
    (partial,) = (tmp_path / "killed").glob("*.partial.pt")
    assert not list((tmp_path / "killed").glob("*-????????????????.pt"))  # killed before the end
    step = torch.load(partial, weights_only=True)["resume"]["step"]
    assert step % 50 == 0 and 50 <= step < 400

    resumed = _finish(_start_training(tmp_path, tmp_path / "killed", 400, 50, 0.005))
    reference = _finish(whole)
    assert resumed["resumed_from"] == step and not resumed["from_cache"] and reference["resumed_from"] == 0
    assert FilePath(resumed["checkpoint"]).name == FilePath(reference["checkpoint"]).name
    _same_tensors(reference["checkpoint"], resumed["checkpoint"])
    assert os.listdir(tmp_path / "killed") == [FilePath(resumed["checkpoint"]).name]  # no partial, lock or tmp


def test_two_processes_training_the_same_model_share_one_cache_entry(tmp_path):
    """Two processes ask for the same model at the same moment: one trains it, the other waits for the
    lock and loads its checkpoint; the cache ends with one valid checkpoint and nothing else."""
    cache, barrier = tmp_path / "cache", tmp_path / "barrier"
    barrier.mkdir()
    processes = [_start_training(tmp_path, cache, 150, 0, 0.01, barrier) for _ in range(2)]
    try:
        _wait_for(lambda: len(list(barrier.glob("ready-*"))) == 2 or any(p.poll() is not None for p in processes),
                  what="both processes to be ready")
        (barrier / "go").touch()
        results = [_finish(p) for p in processes]
    finally:
        for p in processes:
            p.kill()
    assert sorted(r["from_cache"] for r in results) == [False, True]
    assert results[0]["checkpoint"] == results[1]["checkpoint"]
    assert os.listdir(cache) == [FilePath(results[0]["checkpoint"]).name]
    load_checkpoint(results[0]["checkpoint"], which="ema")


# -- the hardware: compile choice, DDP settings ---------------------------------------------------------

def test_compile_is_automatic_only_for_long_runs_on_one_gpu():
    from diffusion_lessons.train_step import COMPILE_MIN_STEPS, compile_mode

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compile_mode(None, cpu, 10**6) is None and compile_mode(None, cuda, COMPILE_MIN_STEPS - 1) is None
    assert compile_mode(None, cuda, COMPILE_MIN_STEPS) == "reduce-overhead"
    assert compile_mode(True, cpu, 1) == "default" and compile_mode(False, cuda, 10**6) is None
    assert compile_mode("max-autotune-no-cudagraphs", cpu, 1) == "max-autotune-no-cudagraphs"
    with pytest.raises(ValueError, match="compile must be None .*'reduce-overhead'; got 3"):
        fit(TimeMLP(2, hidden=16), _data(), make_path("vp"), compile=3, **SMALL)


def test_the_noise_drawn_apart_gives_the_same_loss():
    """objectives.draw_noise draws what loss() draws, in the same order: the trainer relies on it."""
    from diffusion_lessons.objectives import draw_noise

    model, x0, path = TimeMLP(2, hidden=16), _data(64), make_path("vp")
    with torch.no_grad():
        inside = loss(model, x0, path, "velocity", generator=torch.Generator().manual_seed(5))
        apart = loss(model, x0, path, "velocity", noise=draw_noise(x0, torch.Generator().manual_seed(5)))
    assert torch.equal(inside, apart)


def test_fit_reports_its_clock_at_each_logged_step(tmp_path, monkeypatch):
    """FitResult.clock: one (step, seconds) per logged step, increasing, inside the call's wall time; the speed
    between two logs is steps over seconds; a cached result has no clock and says so when asked for a speed."""
    monkeypatch.setenv("DIFFUSION_LESSONS_CACHE", str(tmp_path))
    kwargs = dict(steps=40, batch_size=64, log_every=10, progress=False)
    r = fit(TimeMLP(2), gmm2(), make_path("vp"), **kwargs)
    assert [k for k, _ in r.clock] == r.history["step"] == [10, 20, 30, 40]
    times = [t for _, t in r.clock]
    assert all(0 < a < b for a, b in zip(times, times[1:])) and times[-1] <= r.seconds
    assert r.steps_per_second(after=20) == pytest.approx(20 / (times[3] - times[1]))
    with pytest.raises(ValueError, match="two logged steps"):
        r.steps_per_second(after=40)
    cached = fit(TimeMLP(2), gmm2(), make_path("vp"), **kwargs)
    assert cached.from_cache and cached.clock is None
    with pytest.raises(ValueError, match="two logged steps"):
        cached.steps_per_second()
