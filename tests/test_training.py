import os
import pickle
import re
import time

import pytest
import torch

from diffusion_lessons.distributions import gauss2, gmm2
from diffusion_lessons.nets import TimeMLP
from diffusion_lessons.objectives import loss
from diffusion_lessons.paths import make_path
from diffusion_lessons.training import (CHECKPOINT_MARKER, CheckpointError, TrainingError, fit, load_checkpoint,
                                        save_checkpoint)

SMALL = dict(steps=40, batch_size=64, lr=3e-3, progress=False)


@pytest.fixture(autouse=True)
def one_thread_and_a_private_cache(tmp_path, monkeypatch):
    """Tiny models run fastest on one thread; every test gets an empty cache of its own."""
    monkeypatch.setenv("DIFFUSION_LESSONS_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
