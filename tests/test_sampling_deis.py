"""tAB-DEIS against references written here: DDIM (its order 1), scipy quadrature of its coefficients in t with
kappa'(t) of Song's VP written out, exactness for a polynomial noise prediction, orders on the Gaussian closed form,
and chapter 10's performance goal on GMM2 against a DOP853 solve, with the grid chosen on other starting points."""
import math

import pytest
import torch
from scipy.integrate import quad

import diffusion_lessons as dl
from diffusion_lessons.sampling.deis import deis_coefficients

from test_sampling_exponential import _rms, _start, gaussian_eps, gaussian_flow

F64 = {"dtype": torch.float64}
pytestmark = pytest.mark.usefixtures("one_thread")


def vp_kappa(t, bmin=0.1, bmax=20.0):
    """kappa = sigma / alpha = sqrt(e^B - 1) on Song's VP and its derivative e^B B' / (2 kappa)."""
    B, dB = bmin * t + 0.5 * (bmax - bmin) * t**2, bmin + (bmax - bmin) * t
    kappa = math.sqrt(math.expm1(B))
    return kappa, math.exp(B) * dB / (2 * kappa)


def lagrange(nodes, j, tau):
    return math.prod((tau - t_m) / (nodes[j] - t_m) for m, t_m in enumerate(nodes) if m != j)


def test_order_one_is_ddim():
    path, x_T = dl.VP(), _start(200)
    model = dl.exact_prediction(dl.gmm2(), path, "eps")
    for grid in (dl.time_grid(12), dl.time_grid(7, kind="log_snr", path=path),
                 torch.cat([dl.time_grid(6), torch.zeros(1, **F64)])):
        deis = dl.sample(model, path, x_T, grid, "deis", order=1).x
        ddim = dl.sample(model, path, x_T, grid, "ddim").x
        assert float((deis - ddim).abs().max()) < 1e-12


@pytest.mark.parametrize("nodes, t, t_next", [([1.0], 1.0, 0.8), ([0.9, 0.75], 0.75, 0.6),
                                              ([0.4, 0.3, 0.2, 0.1], 0.1, 1e-3), ([0.05, 0.02, 0.01], 0.01, 1e-3)])
def test_coefficients_are_the_integrals_of_the_lagrange_basis_against_dkappa(nodes, t, t_next):
    """C_j = int_t^t_next L_j(tau) kappa'(tau) dtau by scipy quad in t (the package integrates in kappa)."""
    coeffs = deis_coefficients(dl.VP(), nodes, t, t_next)
    for j, c in enumerate(coeffs):
        ref = quad(lambda tau: lagrange(nodes, j, tau) * vp_kappa(tau)[1], t, t_next, epsabs=1e-13, epsrel=1e-12)[0]
        assert abs(c - ref) < 1e-9 * max(1.0, abs(ref)), (j, c, ref)
    assert abs(sum(coeffs) - (vp_kappa(t_next)[0] - vp_kappa(t)[0])) < 1e-9


@pytest.mark.parametrize("order", [2, 3, 4])
def test_a_polynomial_noise_prediction_of_degree_order_minus_one_is_integrated_exactly(order):
    """eps_hat = p(t) whatever x, p of degree order - 1: from step `order` on (a full history), each step is exact,
    x_t / alpha_t - x_s / alpha_s = int p dkappa (scipy quad in t)."""
    path = dl.VP()
    p = lambda t: sum((0.7 - 0.3 * i) * t**i for i in range(order))  # noqa: E731
    grid = dl.time_grid(8, kind="log_snr", path=path).tolist()
    traj = dl.sample(lambda x, t: torch.full_like(x, p(t)), path, torch.zeros(1, 1, **F64), grid, "deis",
                     order=order, trajectory=True).trajectory.flatten().tolist()
    alpha = [float(path.alpha(t)) for t in grid]
    for k in range(order - 1, len(grid) - 1):
        exact = quad(lambda tau: p(tau) * vp_kappa(tau)[1], grid[k], grid[k + 1], epsabs=1e-13, epsrel=1e-12)[0]
        gap = abs(traj[k + 1] / alpha[k + 1] - traj[k] / alpha[k] - exact)
        assert gap < 1e-8 * max(1.0, abs(exact)), (k, gap)


def test_orders_on_the_gaussian_closed_form():
    """Error ratios when the log-SNR grid doubles (1000 trajectories, exact eps, oracle the closed form): order 2 in
    [3.3, 5.0]; order 3 at least 4.5; order 4 at least 11 from 40 steps on. The first steps have fewer points (the
    start), which on this grid costs little."""
    path, x_T = dl.VP(), _start()
    exact = gaussian_flow(x_T, 1.0, 1e-3)

    def ratios(order):
        errors = [_rms(dl.sample(gaussian_eps, path, x_T, dl.time_grid(n, kind="log_snr", path=path), "deis",
                                 order=order).x, exact) for n in (10, 20, 40, 80, 160)]
        return [a / b for a, b in zip(errors, errors[1:])]

    second, third, fourth = ratios(2), ratios(3), ratios(4)
    print("DEIS ratios: order 2", second, "order 3", third, "order 4", fourth)
    assert all(3.3 <= r <= 5.0 for r in second), second
    assert all(r >= 4.5 for r in third), third
    assert all(r >= 11 for r in fourth[1:]), fourth


def test_bad_order_and_a_start_without_alpha_are_refused():
    path, x_T = dl.VP(), _start(4)
    model = dl.exact_prediction(dl.gmm2(), path, "eps")
    for order in (0, 9, 2.0, True):
        with pytest.raises(ValueError, match="order must be a whole number from 1 to 8"):
            dl.sample(model, path, x_T, dl.time_grid(4), "deis", order=order)
    with pytest.raises(ValueError, match="predicts noise and needs alpha > 0"):
        dl.sample(lambda x, t: x, dl.RectifiedFlow(), x_T, dl.time_grid(4), "deis")


def test_the_fast_sampler_goal_twenty_evaluations_reach_thousand_step_euler():
    """Chapter 10's goal on GMM2 (VP, exact eps, t = 1 -> 1e-3, DOP853 reference): the order and the power of the grid
    t_i = t_end + (1 - t_end) u_i^p are chosen on 500 starting points (seed 1); on 500 others (seed 0) DEIS with
    20 NFE is then at least as accurate as Euler with 1000 steps."""
    from diffusion_lessons.bench_samplers import _Problem, deis_power_grid_choice, power_grid

    test = _Problem(500)
    euler = dl.sample(test.model, test.path, test.x_T, dl.time_grid(1000), "euler").x
    target = float((euler - test.ref).norm(dim=1).mean())
    order, power, train_error = deis_power_grid_choice(nfe=20, seed=1)
    out = dl.sample(test.model, test.path, test.x_T, power_grid(20, power, test.t_end), "deis", order=order)
    error = float((out.x - test.ref).norm(dim=1).mean())
    print(f"DEIS order {order}, power {power}: train {train_error:.3e}, test {error:.3e}, Euler-1000 {target:.3e}")
    assert out.nfe == 20 and error <= target, (order, power, error, target)

