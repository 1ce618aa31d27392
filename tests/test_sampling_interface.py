"""dl.sample, the one front door: NFE counted by the test's own model, every method on every target,
trajectories, generators, dtypes, the last step onto sigma = 0, and errors that name the fix."""
import math

import pytest
import torch

import diffusion_lessons as dl

F64 = {"dtype": torch.float64}
pytestmark = pytest.mark.usefixtures("one_thread")

STOCHASTIC = {"em": {}, "pc": {}, "ddim": {"eta": 1.0}, "edm": {"churn": 10.0}, "sde-dpm++": {}}  # sde-dpm++: mrs.py
DETERMINISTIC = ["euler", "heun", "rk4", "ddim", "dpm2", "dpm2m", "dpm++2m", "dpm++3m", "edm"]


class Counted:
    """The exact GMM2 prediction of `target`, counting its own calls, refusing sigma = 0 (a network never saw it)."""

    def __init__(self, path, target="eps", data=None):
        self.path, self.calls = path, 0
        self.field = dl.exact_prediction(data or dl.gmm2(), path, target)

    def __call__(self, x, t):
        assert isinstance(t, float), type(t)
        if float(self.path.sigma(t)) == 0.0:
            raise AssertionError(f"the model was evaluated at t = {t}, where sigma = 0")
        self.calls += 1
        return self.field(x, t)


def _x_T(n=64, seed=0, shape=(2,)):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), **F64)


def _expected_nfe(method, n, ends_on_data, corrector_steps=1):
    per_step = {"heun": 2, "rk4": 4, "dpm2": 2, "edm": 2, "pc": corrector_steps + 1}.get(method, 1)
    saved = 1 if ends_on_data and method in ("heun", "dpm2", "edm") else 0  # no second evaluation at sigma = 0
    return per_step * n - saved


@pytest.mark.parametrize("method", [m for m in dl.METHODS if m != "adaptive"])
def test_nfe_is_the_number_of_model_calls(method):
    path = dl.VP()
    for grid, on_data in [(dl.time_grid(7, kind="log_snr", path=path), False),
                          (torch.cat([dl.time_grid(7, kind="log_snr", path=path), torch.zeros(1, **F64)]), True)]:
        if on_data and not dl.METHODS[method].ends_on_data:
            continue
        model = Counted(path)
        out = dl.sample(model, path, _x_T(), grid, method=method, generator=torch.Generator().manual_seed(0))
        n = len(grid) - 1
        assert out.nfe == model.calls == _expected_nfe(method, n, on_data), (method, on_data, out.nfe, model.calls)
        assert bool(torch.isfinite(out.x).all())


def test_pc_nfe_with_several_corrector_steps():
    path, model = dl.VE(), Counted(dl.VE())
    out = dl.sample(model, path, _x_T(), dl.time_grid(5), "pc", target="eps", corrector_steps=3,
                    generator=torch.Generator().manual_seed(0))
    assert out.nfe == model.calls == 4 * 5


@pytest.mark.parametrize("method", [m for m in dl.METHODS if m != "adaptive"])
def test_every_target_gives_the_same_trajectory(method):
    """The exact field read as eps, x0, score or velocity is one field: the trajectories agree in float64."""
    path, x_T = dl.VP(), _x_T(32)
    grid = dl.time_grid(8, kind="log_snr", path=path)
    options = STOCHASTIC.get(method, {}) if method not in ("ddim", "edm") else {}
    runs = {}
    for target in ("eps", "x0", "score", "velocity"):
        out = dl.sample(Counted(path, target), path, x_T, grid, method=method, target=target, trajectory=True,
                        generator=torch.Generator().manual_seed(1), **options)
        runs[target] = out.trajectory
    scale = float(runs["eps"].abs().max())
    for target, traj in runs.items():
        gap = float((traj - runs["eps"]).abs().max())
        assert gap < 1e-10 * scale, (method, target, gap)


@pytest.mark.parametrize("method", [m for m in dl.METHODS if m != "adaptive"])
def test_trajectory_shape_and_float32(method):
    path = dl.VP()
    x_T = _x_T(5, shape=(1, 3, 3))
    data = dl.Gaussian(torch.zeros(9, **F64), torch.eye(9, **F64))

    def model(x, t):
        return dl.exact_prediction(data, path, "eps")(x.reshape(len(x), -1), t).reshape(x.shape)

    out = dl.sample(model, path, x_T, dl.time_grid(6), method, trajectory=True,
                    generator=torch.Generator().manual_seed(0))
    assert out.trajectory.shape == (7, 5, 1, 3, 3)
    assert torch.equal(out.trajectory[0], x_T) and torch.equal(out.trajectory[-1], out.x)
    assert dl.sample(model, path, x_T, dl.time_grid(6), method).trajectory is None
    data32 = dl.Gaussian(torch.zeros(9), torch.eye(9))
    out32 = dl.sample(lambda x, t: dl.exact_prediction(data32, path, "eps")(x.reshape(len(x), -1), t).reshape(x.shape),
                      path, x_T.float(), dl.time_grid(6), method, generator=torch.Generator().manual_seed(0))
    assert out32.x.dtype == torch.float32
    if method not in STOCHASTIC:
        assert float((out32.x.double() - out.x).abs().max()) < 1e-4


@pytest.mark.parametrize("method", list(STOCHASTIC))
def test_generator_reproducibility(method):
    path = dl.VP()
    grid = dl.time_grid(6, kind="log_snr", path=path)
    run = lambda seed: dl.sample(Counted(path), path, _x_T(), grid, method,
                                 generator=torch.Generator().manual_seed(seed), **STOCHASTIC[method]).x
    assert torch.equal(run(3), run(3))
    assert not torch.allclose(run(3), run(4))


def test_deterministic_methods_ignore_the_generator():
    path = dl.VP()
    for method in DETERMINISTIC:
        a = dl.sample(Counted(path), path, _x_T(), dl.time_grid(5), method, generator=torch.Generator().manual_seed(0)).x
        b = dl.sample(Counted(path), path, _x_T(), dl.time_grid(5), method).x
        assert torch.equal(a, b), method


def test_heun_last_step_onto_sigma_zero_is_euler_and_never_evaluates_there():
    """Issue: Heun's last step onto t = 0 evaluated the field at t = 0. Now (Karras et al. 2022, Alg. 1) that step
    is an Euler step: x_0 = x + h v(x, t) with the velocity from the model, and the model is never called at sigma = 0.
    The field below raises at sigma = 0; with the old sample_ode it raised."""
    path = dl.VP()
    grid = [1.0, 0.5, 0.1, 0.0]
    model = Counted(path, "velocity")
    out = dl.sample(model, path, _x_T(), grid, "heun", target="velocity", trajectory=True)
    x_before = out.trajectory[-2]
    expected = x_before + (0.0 - 0.1) * dl.exact_prediction(dl.gmm2(), path, "velocity")(x_before, 0.1)
    assert torch.allclose(out.x, expected, rtol=0, atol=1e-13)
    assert out.nfe == 5
    # the same for any velocity field through sample_ode (no path: t = 0 is the data on every path)
    calls = []

    def velocity(x, t):
        calls.append(t)
        if t == 0.0:
            raise AssertionError("velocity evaluated at t = 0")
        return -x

    dl.sample_ode(velocity, _x_T(), grid, method="heun")
    assert 0.0 not in calls and len(calls) == 5


@pytest.mark.parametrize("method", [m for m, e in dl.METHODS.items() if e.ends_on_data])
def test_methods_that_end_on_the_data_never_query_sigma_zero(method):
    path = dl.VP()
    grid = torch.cat([dl.time_grid(6, kind="log_snr", path=path), torch.zeros(1, **F64)])
    out = dl.sample(Counted(path), path, _x_T(), grid, method, generator=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(out.x).all())


def test_errors_name_the_valid_choices():
    path, x_T, grid = dl.VP(), _x_T(4), dl.time_grid(4)
    model = Counted(path)
    with pytest.raises(ValueError, match="unknown method 'midpoint'; valid methods: euler, heun, rk4"):
        dl.sample(model, path, x_T, grid, "midpoint")
    with pytest.raises(ValueError, match="unknown target 'noise'; valid targets: eps, x0, score, velocity"):
        dl.sample(model, path, x_T, grid, "ddim", target="noise")
    with pytest.raises(ValueError, match="method 'heun' takes no argument 'eta'; it takes no options"):
        dl.sample(model, path, x_T, grid, "heun", eta=1.0)
    with pytest.raises(ValueError, match="method 'ddim' takes no argument 'churn'; its options are: eta"):
        dl.sample(model, path, x_T, grid, "ddim", churn=1.0)
    with pytest.raises(ValueError, match="eta must be a number >= 0"):
        dl.sample(model, path, x_T, grid, "ddim", eta=-1)
    with pytest.raises(ValueError, match="unknown variant 'midpoint'; valid variants: dpmsolver, taylor"):
        dl.sample(model, path, x_T, grid, "dpm++2m", variant="midpoint")
    with pytest.raises(ValueError, match="'rk4' would evaluate the model at t = 0.0, where sigma = 0.*heun"):
        dl.sample(model, path, x_T, [1.0, 0.5, 0.0], "rk4")
    with pytest.raises(ValueError, match="must decrease"):
        dl.sample(model, path, x_T, [0.1, 0.5], "ddim")
    with pytest.raises(ValueError, match="strictly decreasing"):
        dl.sample(model, path, x_T, [1.0, 0.5, 0.7], "ddim")
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        dl.sample(model, path, x_T, [1.5, 0.5], "ddim")
    with pytest.raises(ValueError, match="shaped like x"):
        dl.sample(lambda x, t: x[:, :1], path, x_T, grid, "ddim")
    with pytest.raises(ValueError, match="predicts noise and needs alpha > 0"):
        dl.sample(lambda x, t: x, dl.RectifiedFlow(), x_T, grid, "dpm2")
    with pytest.raises(ValueError, match="x_T must be a floating-point tensor"):
        dl.sample(model, path, x_T.long(), grid, "ddim")


def test_data_prediction_methods_start_where_alpha_is_zero():
    """Rectified flow at t = 1 (alpha = 0): DDIM and DPM-Solver++ take the first step in their stride."""
    path, x_T = dl.RectifiedFlow(), _x_T()
    ref = dl.sample(Counted(path, "velocity"), path, x_T, dl.time_grid(400, 1.0, 1e-3), "rk4", target="velocity").x
    for method in ("ddim", "dpm++2m", "dpm++3m"):
        errors = []
        for n in (10, 40):
            out = dl.sample(Counted(path, "velocity"), path, x_T, dl.time_grid(n, 1.0, 1e-3), method, target="velocity")
            errors.append(float((out.x - ref).norm(dim=1).mean()))
        print(method, errors)
        assert all(math.isfinite(e) for e in errors) and errors[1] < errors[0] / 3, (method, errors)
