"""Property-based hostile input (hypothesis): arbitrary shapes, dtypes, NaN / inf, out-of-range times,
garbage settings and garbage files, through the public API and the command line.

The property, everywhere: the call either returns a result of the right shape that is finite wherever
its input was finite, or raises one of the package's own errors (ValueError, CheckpointError,
TrainingError) whose message names the argument at fault; never an error from inside torch, never a
NaN written to disk. (NaN *values* handed to a pure map such as `convert` are the caller's data and
pass through where they were, row by row; NaN *settings*, parameters and times are refused.)
"""
import contextlib
import io
import math
import os
import random
import tempfile
from pathlib import Path as FilePath

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_properties import paths  # random schedules of every path

import diffusion_lessons as dl
from diffusion_lessons.checkpoints import read_checkpoint
from diffusion_lessons.cli import main
from diffusion_lessons.training import CheckpointError, TrainingError

# deadline=None: one call of a torch op can take long on a loaded machine; database=None: no .hypothesis folder
PROPERTY = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
SLOW_PROPERTY = settings(PROPERTY, max_examples=40)
PACKAGE_ERRORS = (ValueError, CheckpointError, TrainingError)

any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)
moderate = st.floats(-1e3, 1e3, allow_nan=False)
hostile_value = st.one_of(moderate, st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1e30, -1e-30]))
# counts and settings: small ones that run, and ones that must be refused (huge, fractional, NaN, not numbers);
# never a size between the memory available and the machine's, which would get the test itself killed
hostile_number = st.one_of(st.integers(-3, 40), st.floats(-2, 2),
                           st.sampled_from([10**12, 2**70, -2**70, 1e300, 1.5, math.nan, math.inf, -math.inf, "3",
                                            None, True, [1]]))
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool]


def assert_names(err: Exception, *names: str) -> None:
    """A package error whose one-line message names one of `names` (the arguments at fault)."""
    message = str(err)
    assert isinstance(err, PACKAGE_ERRORS), f"{type(err).__name__} from inside: {message}"
    assert "\n" not in message.strip() and any(n in message for n in names), message


@st.composite
def tensors(draw, shape=None, dtypes=DTYPES):
    shape = draw(st.lists(st.integers(0, 3), min_size=0, max_size=3)) if shape is None else shape
    values = draw(st.lists(hostile_value, min_size=math.prod(shape), max_size=math.prod(shape)))
    dtype = draw(st.sampled_from(dtypes))
    tensor = torch.tensor(values, dtype=torch.float64).reshape(shape)
    return tensor.to(dtype) if dtype.is_floating_point else tensor.nan_to_num().clamp(-1e3, 1e3).to(dtype)


times = st.one_of(any_float, st.floats(0.0, 1.0), st.sampled_from([0.0, 1.0, 0.5, 1e-30]))
target_names = st.sampled_from([*dl.TARGETS, "noise", ""])


@PROPERTY
@given(path=paths(), x=tensors(), data=st.data(), src=target_names, dst=target_names)
def test_convert_is_finite_where_its_input_is_or_names_the_argument(path, x, data, src, dst):
    value = data.draw(tensors(shape=list(x.shape)))
    t = data.draw(st.one_of(times, tensors(dtypes=[torch.float64, torch.float32])))
    try:
        out = dl.convert(value, src, dst, x, t, path)
    except Exception as err:  # noqa: BLE001 - the property is about which errors escape
        assert_names(err, "target", "time", "t must", "x must", "shape", "floating-point", "undefined at t")
        return
    assert out.shape == x.shape
    assert bool((torch.isfinite(out) | ~(torch.isfinite(value) & torch.isfinite(x))).all())


@PROPERTY
@given(name=st.sampled_from(["vp", "subvp", "ve", "rf", "cosine", "edm", "VP-SDE"]),
       params=st.dictionaries(st.sampled_from(["beta_min", "beta_max", "sigma_min", "sigma_max", "gamma"]),
                              st.one_of(any_float, st.just("x")), max_size=3),
       t=st.floats(0.0, 1.0))
def test_make_path_builds_a_path_or_names_the_parameter(name, params, t):
    try:
        path = dl.make_path({"name": name, **params})
    except Exception as err:  # noqa: BLE001
        assert_names(err, "path", "beta_min", "beta_max", "sigma_min", "sigma_max", "gamma", "parameter")
        return
    assert dl.make_path(path.config()).config() == path.config()
    assert all(math.isfinite(v) for v in path.config().values() if not isinstance(v, str))
    assert 0 <= float(path.sigma(t)) and 0 <= float(path.alpha(t)) <= 1


@st.composite
def mixtures(draw):
    k, d = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    weights = draw(st.lists(st.one_of(st.floats(0, 5), hostile_value), min_size=k, max_size=k))
    means = draw(st.lists(hostile_value, min_size=k * d, max_size=k * d))
    roots = torch.tensor(draw(st.lists(st.floats(-3, 3), min_size=k * d * d, max_size=k * d * d)),
                         dtype=torch.float64).reshape(k, d, d)
    covs = roots @ roots.transpose(-1, -2)  # PSD, maybe singular
    if draw(st.booleans()) and k * d:  # or broken: NaN, inf, negative
        covs.view(-1)[draw(st.integers(0, k * d * d - 1))] = draw(hostile_value)
    return weights, torch.tensor(means, dtype=torch.float64).reshape(k, d), covs


@PROPERTY
@given(parameters=mixtures(), n=hostile_number, data=st.data())
def test_mixtures_sample_and_score_finitely_or_name_the_parameter(parameters, n, data):
    try:
        mixture = dl.GaussianMixture(*parameters)
    except Exception as err:  # noqa: BLE001
        assert_names(err, "weights", "means", "covs")
        return
    try:
        samples = mixture.sample(n, generator=torch.Generator().manual_seed(0))
    except Exception as err:  # noqa: BLE001
        assert_names(err, "n must", "sample(n=")
    else:
        assert samples.shape == (int(n), mixture.dim) and bool(torch.isfinite(samples).all())
    x = data.draw(tensors(dtypes=[torch.float64, torch.float32, torch.int64]))
    t = data.draw(st.one_of(times, tensors(dtypes=[torch.float64])))
    try:
        score = dl.exact_score(mixture, dl.VP())(x, t)
    except Exception as err:  # noqa: BLE001
        assert_names(err, "expects x", "time", "t must", "floating-point", "no density")
        return
    finite_rows = torch.isfinite(x).all(dim=1, keepdim=True)
    assert score.shape == x.shape and bool((torch.isfinite(score) | ~finite_rows).all())


@SLOW_PROPERTY
@given(setting=st.sampled_from(["steps", "seed", "ema_decay", "t_min", "checkpoint_every", "lr", "batch_size"]),
       value=hostile_number, nan_rows=st.integers(0, 2),
       target=st.sampled_from(dl.TARGETS), path=st.sampled_from(["vp", "ve", "rf"]))
def test_fit_trains_finitely_or_names_the_setting_and_writes_nothing_bad(setting, value, nan_rows, target, path):
    data = torch.randn(32, 2, generator=torch.Generator().manual_seed(1))
    data[:nan_rows, 0] = math.nan
    kwargs = {"steps": 3, "batch_size": 8, "progress": False, setting: value}
    if setting == "steps" and isinstance(value, (int, float)) and not isinstance(value, bool) and value > 20 \
            and math.isfinite(value):
        kwargs["steps"] = 20  # keep it fast: the value itself is tested below by the validation
    with tempfile.TemporaryDirectory() as cache, _env("DIFFUSION_LESSONS_CACHE", cache):
        try:
            result = dl.fit(dl.TimeMLP(2, hidden=8), data, dl.make_path(path), target=target, **kwargs)
        except Exception as err:  # noqa: BLE001
            assert_names(err, setting, "data holds NaN", "diverged")
        else:
            assert nan_rows == 0
            assert all(bool(torch.isfinite(p).all()) for m in (result.model, result.ema) for p in m.parameters())
        for file in FilePath(cache).glob("*.pt"):
            read_checkpoint(file)  # every file written loads, CRCs and finite weights checked


@contextlib.contextmanager
def _env(name, value):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _good_checkpoint(folder: FilePath) -> FilePath:
    model = dl.TimeMLP(2, hidden=8)
    config = {"path": dl.VP().config(), "target": "eps", "t_min": 1e-3}
    return dl.save_checkpoint(folder / "good.pt", model, config, ema=model)


@st.composite
def damaged_bytes(draw, good: bytes):
    kind = draw(st.sampled_from(["flip", "truncate", "garbage", "splice"]))
    if kind == "garbage":
        return draw(st.binary(max_size=2000))
    raw = bytearray(good)
    if kind == "truncate":
        return bytes(raw[:draw(st.integers(0, len(raw) - 1))])
    if kind == "splice":
        start = draw(st.integers(0, len(raw) - 1))
        return bytes(raw[:start] + draw(st.binary(min_size=1, max_size=64)) + raw[start:])
    rng = random.Random(draw(st.integers(0, 2**32)))
    for _ in range(draw(st.integers(1, 64))):
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    return bytes(raw)


@PROPERTY
@given(data=st.data())
def test_a_damaged_checkpoint_is_refused_or_loads_the_same_weights(data):
    """Random bit flips, truncations, splices and garbage: CheckpointError, or (flips in bytes that no
    record covers, e.g. alignment padding) exactly the weights that were saved."""
    with tempfile.TemporaryDirectory() as folder:
        good = _good_checkpoint(FilePath(folder))
        original = read_checkpoint(good)["state_dict"]
        damaged = FilePath(folder) / "damaged.pt"
        damaged.write_bytes(data.draw(damaged_bytes(good.read_bytes())))
        try:
            model, _ = dl.load_checkpoint(damaged)
        except Exception as err:  # noqa: BLE001
            assert_names(err, "damaged.pt")
            return
        assert model.state_dict().keys() == original.keys()
        assert all(torch.equal(model.state_dict()[k], original[k]) for k in original)


cli_numbers = st.one_of(st.integers(1, 30).map(str), st.integers(-5, 0).map(str), st.just(str(10**12)),
                        st.just(str(2**70)), st.sampled_from(["1.5", "nan", "", "many"]))


@SLOW_PROPERTY
@given(n=cli_numbers, steps=cli_numbers, seed=cli_numbers, kind=st.sampled_from(["good", "garbage", "flipped"]),
       method=st.sampled_from(["euler", "heun", "rk4", "rk5"]), suffix=st.sampled_from([".npz", ".png", ".txt"]),
       garbage=st.binary(max_size=300))
def test_the_sample_command_writes_finite_samples_or_one_line(n, steps, seed, kind, method, suffix, garbage):
    """`diffusion-lessons sample` (its main, in this process) with hostile arguments and files: status 0 and
    a file of finite samples, or one error line, a non-zero status and no file."""
    with tempfile.TemporaryDirectory() as folder:
        folder = FilePath(folder)
        checkpoint = _good_checkpoint(folder)
        if kind != "good":
            raw = bytearray(checkpoint.read_bytes())
            if kind == "flipped":
                raw[len(raw) // 2] ^= 0xFF
            checkpoint.write_bytes(garbage if kind == "garbage" else bytes(raw))
        out = folder / f"samples{suffix}"
        argv = ["sample", str(checkpoint), "--n", n, "--steps", steps, "--seed", seed, "--method", method,
                "--out", str(out)]
        stderr, stdout = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            try:
                status = main(argv)
            except SystemExit as exit:  # argparse: a malformed number
                status = exit.code
        lines = stderr.getvalue().splitlines()
        if status == 0:
            assert out.is_file() and lines == []
            if suffix == ".npz":
                assert np.isfinite(np.load(out)["samples"]).all()
            return
        assert len(lines) == 1 and lines[0].startswith("diffusion-lessons") and "Traceback" not in lines[0], lines
        assert sorted(p.name for p in folder.iterdir()) == ["good.pt"]  # nothing written, no temporary left
