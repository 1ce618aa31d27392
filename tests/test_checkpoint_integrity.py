"""Every checkpoint read is checked whole: bit rot, strings and NaN in the weights, declared shapes that
the stored tensors do not have, folders and unreadable files. Each is a CheckpointError naming the
problem; a cache entry or resume checkpoint that fails is retrained (or ignored), never used.

torch.load does not verify the CRC-32 that the zip format stores for each record, so before the fix a
checkpoint with flipped bytes in a weight loaded silently with wrong weights.
"""
import copy
import math
import os
import zipfile

import pytest
import torch
from test_training import _Interrupted, _moons_until

from diffusion_lessons import checkpoints
from diffusion_lessons.distributions import toy_data
from diffusion_lessons.nets import TimeMLP
from diffusion_lessons.paths import make_path
from diffusion_lessons.training import (
    CheckpointError,
    TrainingError,
    fit,
    load_checkpoint,
    save_checkpoint,
)

SMALL = {"steps": 40, "batch_size": 64, "lr": 3e-3, "progress": False}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_LESSONS_CACHE", str(tmp_path / "cache"))


def flip_bytes(file, count=64):
    """Invert `count` bytes in the middle of the largest tensor record of a torch zip checkpoint (bit rot
    inside the weights, where the pickle still parses and torch.load succeeds)."""
    raw = bytearray(file.read_bytes())
    with zipfile.ZipFile(file) as archive:
        record = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    extra = int.from_bytes(raw[record.header_offset + 28:record.header_offset + 30], "little")
    start = record.header_offset + 30 + len(record.filename.encode()) + extra
    assert record.file_size >= count
    middle = start + (record.file_size - count) // 2
    for k in range(middle, middle + count):
        raw[k] ^= 0xA5
    file.write_bytes(bytes(raw))
    torch.load(file, weights_only=True)  # torch itself still loads it: only the CRC tells


def _saved(tmp_path):
    model = TimeMLP(2, hidden=16)
    config = {"path": make_path("vp").config(), "target": "eps", "t_min": 1e-3}
    return save_checkpoint(tmp_path / "model.pt", model, config, ema=copy.deepcopy(model)), model


def _weights(model):
    return [p.detach().clone() for p in model.parameters()]


def test_flipped_bytes_in_a_checkpoint_are_detected(tmp_path):
    file, _ = _saved(tmp_path)
    flip_bytes(file)
    with pytest.raises(CheckpointError, match=r"cannot read .* corrupt.*record '.*/data/\d+' does not match its "
                                              r"CRC-32 checksum.*delete it and train again"):
        load_checkpoint(file)


def test_a_flipped_bit_in_the_zip_directory_does_not_change_the_weights(tmp_path):
    """Bit 4 of a record's external attributes in the central directory marks it as an MS-DOS folder: every
    CRC still matches, but torch's zip reader then returned uninitialised memory for that tensor (found by
    the property test below). The weights now come from the CRC-checked records: exactly those saved."""
    file, model = _saved(tmp_path)
    raw = bytearray(file.read_bytes())
    entry = raw.find(b"PK\x01\x02")
    while entry != -1:  # every central-directory entry of a tensor record
        name_length = int.from_bytes(raw[entry + 28:entry + 30], "little")
        if b"/data/" in raw[entry + 46:entry + 46 + name_length]:
            raw[entry + 38] |= 0x10
        entry = raw.find(b"PK\x01\x02", entry + 4)
    file.write_bytes(bytes(raw))
    loaded, _ = load_checkpoint(file)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_a_cache_entry_with_flipped_bytes_is_retrained_to_the_same_weights():
    path, data = make_path("vp"), toy_data("moons", 2048, generator=torch.Generator().manual_seed(0))
    first = fit(TimeMLP(2, hidden=16), data, path, **SMALL)
    flip_bytes(first.checkpoint)
    with pytest.warns(UserWarning, match=r"ignoring the cached checkpoint .*CRC-32.*; training again"):
        again = fit(TimeMLP(2, hidden=16), data, path, **SMALL)
    assert not again.from_cache
    for a, b in zip(_weights(first.ema), _weights(again.ema)):
        assert torch.equal(a, b)
    load_checkpoint(first.checkpoint)  # rewritten whole


RESUMABLE = {"steps": 60, "batch_size": 64, "lr": 3e-3, "checkpoint_every": 20, "progress": False}


def test_a_resume_checkpoint_with_flipped_bytes_is_ignored(tmp_path, monkeypatch):
    """Before: the run resumed from the damaged weights and cached a final model off by 0.6 as correct."""
    path = make_path("vp")
    monkeypatch.setenv("DIFFUSION_LESSONS_CACHE", str(tmp_path / "whole"))
    whole = fit(TimeMLP(2, hidden=16), _moons_until(None), path, **RESUMABLE)
    monkeypatch.setenv("DIFFUSION_LESSONS_CACHE", str(tmp_path / "cut"))
    with pytest.raises(_Interrupted):
        fit(TimeMLP(2, hidden=16), _moons_until(45), path, **RESUMABLE)
    (partial,) = (tmp_path / "cut").glob("*.partial.pt")
    flip_bytes(partial)
    with pytest.warns(UserWarning, match=r"ignoring the resume checkpoint .*CRC-32.*training from the start"):
        again = fit(TimeMLP(2, hidden=16), _moons_until(None), path, **RESUMABLE)
    assert again.resumed_from == 0
    for a, b in zip(_weights(whole.ema) + _weights(whole.model), _weights(again.ema) + _weights(again.model)):
        assert torch.equal(a, b)


def _with_state(tmp_path, name, edit):
    """A copy of a good checkpoint whose payload `edit` changed (written with torch.save: valid CRCs)."""
    file, _ = _saved(tmp_path)
    payload = torch.load(file, weights_only=True)
    edit(payload)
    torch.save(payload, tmp_path / name)
    return tmp_path / name


def test_a_string_in_the_state_dict_is_a_checkpoint_error(tmp_path):
    def put_string(payload):
        payload["state_dict"]["net.0.weight"] = "not a tensor"

    with pytest.raises(CheckpointError, match=r"state_dict\['net.0.weight'\] is a str, not a tensor"):
        load_checkpoint(_with_state(tmp_path, "string.pt", put_string))

    def replace_state(payload):
        payload["state_dict"] = "weights"

    with pytest.raises(CheckpointError, match=r"state_dict is a str, not a dict of tensors"):
        load_checkpoint(_with_state(tmp_path, "whole_string.pt", replace_state))


def test_a_declared_layer_wider_than_the_stored_weights_is_refused_before_allocating(tmp_path):
    """Before: hidden = 10**7 built a TimeMLP of 10**14 weights (400 TB) before comparing with the file."""
    def widen(payload):
        payload["config"]["model"]["hidden"] = 10**7

    file = _with_state(tmp_path, "wide.pt", widen)
    with pytest.raises(CheckpointError, match=r"the weights do not fit .*'net.0.weight': the config declares "
                                              r"\[10000000, 34\], the file holds \[16, 34\]"):
        load_checkpoint(file)


def test_nan_weights_are_a_checkpoint_error(tmp_path):
    def poison(payload):
        payload["ema_state_dict"]["net.2.bias"][3] = math.nan

    file = _with_state(tmp_path, "nan.pt", poison)
    with pytest.raises(CheckpointError, match=r"ema_state_dict\['net.2.bias'\] holds NaN or infinite values"):
        load_checkpoint(file, which="ema")


def test_a_cache_entry_with_nan_weights_is_retrained():
    path, data = make_path("rf"), toy_data("moons", 1024, generator=torch.Generator().manual_seed(1))
    first = fit(TimeMLP(2, hidden=16), data, path, target="velocity", **SMALL)
    payload = torch.load(first.checkpoint, weights_only=True)
    payload["ema_state_dict"]["net.0.bias"][0] = math.inf
    torch.save(payload, first.checkpoint)
    with pytest.warns(UserWarning, match=r"ignoring the cached checkpoint .*holds NaN or infinite"):
        again = fit(TimeMLP(2, hidden=16), data, path, target="velocity", **SMALL)
    assert not again.from_cache and all(torch.isfinite(p).all() for p in again.ema.parameters())


def test_a_directory_is_not_reported_as_missing(tmp_path):
    (tmp_path / "model.pt").mkdir()
    with pytest.raises(CheckpointError, match=r"model.pt is a directory, not a checkpoint file; give the path of a "
                                              r"\.pt file"):
        load_checkpoint(tmp_path / "model.pt")


def test_an_unreadable_file_is_not_called_corrupt(tmp_path, monkeypatch):
    """A permission error says so and does not advise deleting the file (before: 'corrupt ... delete it')."""
    file, _ = _saved(tmp_path)

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(file), "read_bytes", refuse)
    with pytest.raises(CheckpointError, match=r"cannot read .*model.pt: permission denied; make it readable") as err:
        load_checkpoint(file)
    assert "delete" not in str(err.value) and "corrupt" not in str(err.value)


def test_a_legacy_torch_file_without_checksums_is_refused(tmp_path):
    file, _ = _saved(tmp_path)
    payload = torch.load(file, weights_only=True)
    torch.save(payload, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"legacy \(non-zip\) format, which has no checksums"):
        load_checkpoint(tmp_path / "legacy.pt")


def test_every_model_class_is_checked_on_the_meta_device(tmp_path):
    """Each model class saves and loads through the meta-device check, and a config that declares another
    width than its stored weights is refused for each."""
    from diffusion_lessons.flow_maps import ConsistencyModel
    from diffusion_lessons.nets import MODELS, EnergyNet, FlowMapMLP, FlowMapUNet, UNet

    models = [TimeMLP(3, hidden=8), UNet(channels=1, base=8, mults=(1,)), EnergyNet(2, hidden=8),
              FlowMapMLP(2, hidden=8), FlowMapUNet(channels=1, base=8, mults=(1,)),
              ConsistencyModel(TimeMLP(2, hidden=8))]
    assert {type(m).__name__ for m in models} == set(MODELS)
    for model in models:
        file = save_checkpoint(tmp_path / "m.pt", model, {})
        loaded, _ = load_checkpoint(file)
        assert type(loaded) is type(model)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
        payload = torch.load(file, weights_only=True)
        declared = payload["config"]["model"]
        declared = declared.get("net", declared)  # a wrapper (ConsistencyModel) declares its network inside
        declared["base" if "base" in declared else "hidden"] = 10**6
        torch.save(payload, tmp_path / "wide.pt")
        with pytest.raises(CheckpointError, match="the config declares"):
            load_checkpoint(tmp_path / "wide.pt")


# -- the cache and the run: checked before training, cleaned after --------------------------------------

class _CountingMoons:
    def __init__(self, stop_after=None):
        self.calls, self.stop_after = 0, stop_after

    def sample(self, n, generator=None):
        self.calls += 1
        if self.stop_after is not None and self.calls > self.stop_after:
            raise KeyboardInterrupt
        return toy_data("moons", n, generator=generator)

    def config(self):
        return {"name": "moons"}


def test_a_directory_at_the_cache_path_fails_before_training(tmp_path):
    """Before: the run trained to the end, then could not replace the directory with its checkpoint."""
    data = _CountingMoons()
    probe = fit(TimeMLP(2, hidden=16), data, make_path("vp"), **{**SMALL, "steps": 2})
    probe.checkpoint.unlink()
    probe.checkpoint.mkdir()
    data.calls = 0
    with pytest.raises(CheckpointError, match=r"the cache path .* is a directory .* remove it, or set "
                                              r"\$DIFFUSION_LESSONS_CACHE elsewhere"):
        fit(TimeMLP(2, hidden=16), data, make_path("vp"), **{**SMALL, "steps": 2})
    assert data.calls == 0


def test_a_resume_file_beside_a_finished_checkpoint_is_removed():
    """A run killed between writing its final checkpoint and deleting its resume file left the resume file
    for ever (before); the next call that finds the finished entry deletes it."""
    data = _CountingMoons()
    done = fit(TimeMLP(2, hidden=16), data, make_path("vp"), **SMALL)
    stale = done.checkpoint.with_suffix(".partial.pt")
    save_checkpoint(stale, done.model, done.config, ema=done.ema)
    again = fit(TimeMLP(2, hidden=16), data, make_path("vp"), **SMALL)
    assert again.from_cache and not stale.exists()
    assert os.listdir(done.checkpoint.parent) == [done.checkpoint.name]


@pytest.mark.parametrize("every, resumable", [(10, True), (0, False)])
def test_an_interrupt_says_whether_a_resume_checkpoint_exists(every, resumable):
    with pytest.raises(KeyboardInterrupt) as stopped:
        fit(TimeMLP(2, hidden=16), _CountingMoons(stop_after=25), make_path("vp"),
            **{**SMALL, "checkpoint_every": every})
    partial = stopped.value.resume_checkpoint
    if resumable:
        assert partial.name.endswith(".partial.pt") and checkpoints.read_checkpoint(partial)["resume"]["step"] == 20
    else:
        assert partial is None


def test_non_finite_ema_weights_are_never_written(monkeypatch):
    """The EMA is checked with the weights before every write (before: only the weights were)."""
    from diffusion_lessons import train_step

    real = train_step.ema_updater

    def poisoned(ema, model):
        update = real(ema, model)

        def poisoned_update(decay):
            update(decay)
            with torch.no_grad():
                next(ema.parameters()).fill_(math.nan)

        return poisoned_update

    monkeypatch.setattr(train_step, "ema_updater", poisoned)
    with pytest.raises(TrainingError, match=r"diverged at step 40: the EMA weights are no longer finite"):
        fit(TimeMLP(2, hidden=16), _CountingMoons(), make_path("vp"), **SMALL)
    cache = checkpoints.FilePath(os.environ["DIFFUSION_LESSONS_CACHE"])
    assert not cache.exists() or not [f for f in cache.iterdir() if f.suffix == ".pt"]


def test_the_classifier_cache_is_read_with_the_same_check(tmp_path):
    """metrics' cached classifier (the Frechet distance's embedding) goes through load_verified too: a
    flipped byte in its weights makes it unusable (retrained), not silently different."""
    from diffusion_lessons import metrics
    from diffusion_lessons.checkpoints import write_atomically

    model = metrics.DigitClassifier()
    write_atomically({"state_dict": model.state_dict(), "test_accuracy": 0.9}, tmp_path / "clf.pt")
    assert metrics._load_classifier(tmp_path / "clf.pt", metrics.DigitClassifier(), verbose=False) is not None
    flip_bytes(tmp_path / "clf.pt")
    assert metrics._load_classifier(tmp_path / "clf.pt", metrics.DigitClassifier(), verbose=False) is None
