"""One checkpoint format: save, load, and the file machinery that keeps a cache whole.

A checkpoint is a plain dict of tensors, strings, numbers, lists and dicts, written atomically
(a temporary file in the same folder, fsync, then os.replace) and read with
torch.load(weights_only=True), so loading never unpickles arbitrary objects:

    {"diffusion_lessons_checkpoint": 1, "config": {..., "model": {"class": "TimeMLP", ...}},
     "state_dict": {...}, "ema_state_dict": {...} or None, "history": {"step": [...], "loss": [...]},
     "resume": {...}  (only in the resume checkpoints `fit` writes while it trains)}

`exclusive_lock(file)` serialises the processes that write one cache entry (`training.fit` uses it).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path as FilePath

import torch

from .nets import build_model

try:
    import fcntl
except ImportError:  # not POSIX (Windows): no lock; atomic renames still keep every file whole
    fcntl = None

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "load_verified", "CHECKPOINT_MARKER"]

CHECKPOINT_MARKER = "diffusion_lessons_checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, foreign, or does not match what was asked for."""


def _plain(value, what: str = "checkpoint config"):
    """value as plain JSON types (tuples become lists); objects without a JSON form are an error."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as err:
        raise ValueError(f"the {what} must be JSON-like (dicts, lists, strings, numbers): {err}") from None


def _cpu_state(module) -> dict:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def checkpoint_payload(model, config: dict, ema=None, history: dict | None = None, resume: dict | None = None) -> dict:
    """The dict save_checkpoint writes (resume: the extra section of a resume checkpoint)."""
    if not hasattr(model, "config"):
        raise ValueError(f"{type(model).__name__} has no .config, so a checkpoint could not rebuild it; "
                         "use a model from diffusion_lessons.nets")
    payload = {
        CHECKPOINT_MARKER: CHECKPOINT_VERSION,
        "config": {**_plain(config), "model": _plain(model.config, "model config")},
        "state_dict": _cpu_state(model),
        "ema_state_dict": None if ema is None else _cpu_state(ema),
        "history": _plain(history or {}, "history"),
    }
    if resume is not None:
        payload["resume"] = resume
    return payload


def write_atomically(payload: dict, file: FilePath) -> FilePath:
    """torch.save to a temporary file in file's folder, fsync, then os.replace: file is old or new, never half."""
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, file)
    except BaseException:
        FilePath(tmp).unlink(missing_ok=True)
        raise
    return file


def save_checkpoint(file, model, config: dict, ema=None, history: dict | None = None) -> FilePath:
    """Write model (and EMA) weights with `config` to `file` atomically; returns the file.

    config: JSON-like dict of the run's settings; config["model"] is set to model.config, which
    load_checkpoint uses to rebuild the model. A failed write leaves any existing file untouched.
    """
    return write_atomically(checkpoint_payload(model, config, ema, history), FilePath(file))


def load_verified(file):
    """torch.load(file, weights_only=True) of a zip archive whose every record matches its CRC-32;
    CheckpointError for a missing, unreadable, corrupt, legacy-format or pickled-object file.

    torch writes a checkpoint as a zip archive with a CRC-32 per record, which torch.load does not
    check, so a flipped bit would load as a wrong weight. Here every record is read with Python's
    zipfile, which checks it against its CRC (a mismatch makes the file corrupt), and torch loads an
    archive rebuilt from those verified records, never the file's own headers (a flipped bit there,
    e.g. one marking a record as a folder, made torch read uninitialised memory while every CRC still
    matched). Files in torch's legacy (non-zip) format have no checksums and are refused.
    """
    file = FilePath(file)
    raw = _read_bytes(file)
    try:
        zipped = zipfile.is_zipfile(io.BytesIO(raw))
    except Exception as err:  # noqa: BLE001 - e.g. BadZipFile from a damaged end record
        raise _corrupt(file, f"its zip structure is damaged: {type(err).__name__}: {str(err)[:120]}") from None
    try:
        payload = torch.load(io.BytesIO(_verified_archive(raw, file) if zipped else raw), map_location="cpu",
                             weights_only=True)
    except CheckpointError:
        raise
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, KeyError, ...
        first = (str(err).splitlines() or [""])[0]
        reason = ("the weights-only loader refused it: it holds pickled Python objects, or is garbage"
                  if "Weights only load failed" in first else f"{type(err).__name__}: {first[:120]}")
        raise _corrupt(file, reason) from None
    if not zipped:
        raise CheckpointError(f"{file} is in torch's legacy (non-zip) format, which has no checksums to verify; "
                              "write it again with save_checkpoint")
    return payload


def read_checkpoint(file) -> dict:
    """The validated payload of a checkpoint file; CheckpointError otherwise.

    The file is read by `load_verified` (every record checked against its CRC-32, weights-only); the
    payload must then be a diffusion-lessons checkpoint whose state dicts map names to finite tensors.
    """
    payload = load_verified(file)
    if not isinstance(payload, dict) or CHECKPOINT_MARKER not in payload:
        raise CheckpointError(f"{file} is not a diffusion-lessons checkpoint (no {CHECKPOINT_MARKER!r} key); "
                              "write checkpoints with save_checkpoint or fit")
    if payload[CHECKPOINT_MARKER] != CHECKPOINT_VERSION:
        raise CheckpointError(f"{file} has checkpoint format {payload[CHECKPOINT_MARKER]!r}; this version of "
                              f"diffusion-lessons reads format {CHECKPOINT_VERSION}")
    config = payload.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict) or "state_dict" not in payload:
        raise CheckpointError(f"{file} is incomplete: it needs 'config' (with 'model') and 'state_dict'")
    _check_state(payload["state_dict"], "state_dict", file)
    if payload.get("ema_state_dict") is not None:
        _check_state(payload["ema_state_dict"], "ema_state_dict", file)
    return payload


def _corrupt(file: FilePath, reason: str) -> CheckpointError:
    return CheckpointError(f"cannot read {file}: it is truncated, corrupt or not a diffusion-lessons checkpoint "
                           f"({reason}); delete it and train again")


def _read_bytes(file: FilePath) -> bytes:
    """The file's bytes; CheckpointError naming what is wrong: missing, a folder, or not readable."""
    if file.is_dir():
        raise CheckpointError(f"{file} is a directory, not a checkpoint file; give the path of a .pt file")
    try:
        return file.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {file}: the file does not exist "
                              "(train one with fit(...) or `diffusion-lessons train`)") from None
    except PermissionError:
        raise CheckpointError(f"cannot read {file}: permission denied; make it readable (chmod u+r) or run as "
                              "the user who owns it") from None
    except OSError as err:
        raise CheckpointError(f"cannot read {file}: {err.strerror or err}") from None


def _verified_archive(raw: bytes, file: FilePath) -> bytes:
    """The zip archive `raw` rebuilt from its records, each checked against its CRC-32; CheckpointError when a
    record does not match, a name repeats, or the archive will not unpack."""
    out, seen = io.BytesIO(), set()
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as clean:
            for info in archive.infolist():
                if info.filename in seen:
                    raise _corrupt(file, f"record {info.filename!r} appears twice")
                seen.add(info.filename)
                try:
                    data = archive.read(info)
                except zipfile.BadZipFile as err:
                    if "CRC" not in str(err):
                        raise
                    raise _corrupt(file, f"record {info.filename!r} does not match its CRC-32 checksum: the bytes "
                                         "changed after it was written") from None
                clean.writestr(info.filename, data)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - BadZipFile, or headers damaged so that zipfile fails another way
        raise _corrupt(file, f"its zip structure is damaged: {type(err).__name__}: {str(err)[:120]}") from None
    return out.getvalue()


def _check_state(state, which: str, file: FilePath) -> None:
    """A state dict must map names to tensors, with finite values in every floating-point tensor."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: {which} is a {type(state).__name__}, not a dict of tensors; the file is "
                              "damaged or was not written by diffusion-lessons")
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{file}: {which}[{name!r}] is a {type(value).__name__}, not a tensor; the file is "
                                  "damaged or was not written by diffusion-lessons")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{file}: {which}[{name!r}] holds NaN or infinite values (the run that wrote it "
                                  "diverged); delete it and train again")


def _check_expected(config: dict, expect: dict, file) -> None:
    wanted = _plain(expect, "expect")
    diffs = [f"{k}: file has {config.get(k)!r}, expected {v!r}" for k, v in wanted.items() if config.get(k) != v]
    if diffs:
        raise CheckpointError(f"{file} does not match what was asked for: " + "; ".join(diffs))


def load_checkpoint(file, expect: dict | None = None, which: str = "model", device="cpu"):
    """(model, config) from a checkpoint: the model rebuilt from config["model"], in eval mode.

    which: "model" for the trained weights, "ema" for their moving average. expect: keys of the
    config that must have these values (e.g. {"target": "eps", "path": path.config()}).
    Raises CheckpointError for a missing, unreadable, truncated, corrupt (CRC mismatch) or foreign
    file, weights that are not finite or do not fit the config (checked on the meta device before
    anything is allocated), or a config that differs from `expect`.
    """
    if which not in ("model", "ema"):
        raise ValueError(f"which must be 'model' or 'ema'; got {which!r}")
    payload = read_checkpoint(file)
    config = payload["config"]
    if expect:
        _check_expected(config, expect, file)
    state = payload.get("state_dict" if which == "model" else "ema_state_dict")
    if state is None:
        raise CheckpointError(f"{file} has no EMA weights; use which='model'")
    model = _build_for(config["model"], state, file)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{file}: the weights do not fit the model its config describes "
                              f"({config['model']}): {str(err).splitlines()[0]}") from None
    return model.to(device).eval(), config


def _build_for(model_config: dict, state: dict, file) -> torch.nn.Module:
    """The model config describes, built once its parameter shapes are known to match `state`.

    The shapes come from a build on the meta device (no memory), so a config declaring a layer far
    wider than the stored weights fails here instead of allocating it.
    """
    try:
        with torch.device("meta"):
            expected = build_model(model_config).state_dict()
    except (ValueError, TypeError, RuntimeError, OverflowError) as err:
        raise CheckpointError(f"{file}: cannot rebuild its model from {model_config}: "
                              f"{(str(err).splitlines() or [''])[0][:200]}") from None
    problems = [f"missing {k!r}" for k in expected if k not in state]
    problems += [f"unexpected {k!r}" for k in state if k not in expected]
    problems += [f"{k!r}: the config declares {list(v.shape)}, the file holds {list(state[k].shape)}"
                 for k, v in expected.items() if k in state and v.shape != state[k].shape]
    if problems:
        raise CheckpointError(f"{file}: the weights do not fit the model its config describes ({model_config}): "
                              + "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else ""))
    return build_model(model_config)


# -- the lock around one cache entry ---------------------------------------------------------------

@contextlib.contextmanager
def exclusive_lock(file: FilePath, waiting_for: str | None):
    """Hold an exclusive lock on `<file>.lock` while one process trains and saves the cache entry `file`.

    A second process asking for the same entry waits here (saying so on stderr when waiting_for names
    the run), then finds the first one's checkpoint. The holder deletes the lock file before releasing
    it; a waiter that then holds a lock on the deleted file sees that the path no longer names its file
    and locks the new one. The kernel releases the lock of a killed process. Without fcntl (Windows)
    or where the file system refuses locks there is no lock: atomic renames still keep files whole.
    """
    lock = file.with_name(file.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(lock, waiting_for) if fcntl is not None else None
    try:
        yield
    finally:
        if fd is not None:
            lock.unlink(missing_ok=True)
            os.close(fd)  # releases the lock


def _acquire(lock: FilePath, waiting_for: str | None):
    """An open descriptor of `lock` holding fcntl.flock(LOCK_EX), or None where locks are unsupported."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting_for:
                    print(f"{waiting_for}: waiting for another process that is training it ({lock})", file=sys.stderr)
                    waiting_for = None
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:  # e.g. a network file system without locks
            os.close(fd)
            warnings.warn(f"cannot lock {lock} ({err}); training without a lock", stacklevel=4)
            return None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the previous holder deleted this lock file: lock the one now at the path


def remove_temporaries(file: FilePath) -> None:
    """Delete the temporary files write_atomically left for `file` when its process was killed mid-write.

    Only for a caller holding exclusive_lock(file) (no live writer can own them then).
    """
    for tmp in file.parent.glob(f".{file.name}.*.tmp"):
        tmp.unlink(missing_ok=True)
