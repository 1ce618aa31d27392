"""Sampler accuracy per NFE: every method of dl.sample on every grid, on GMM2 with the exact score.

The probability-flow ODE of GMM2 (two Gaussians in 2-D) under Song's VP, from t = 1 to t = 1e-3, has no
closed form; the reference x_ref is scipy's DOP853 (rtol 1e-10, atol 1e-12) on the same starting points.
Every error is the mean over the trajectories of ||x - x_ref||. The tables:

* sampler x grid: each method on the uniform, log-SNR and Karras grids at NFE 5 ... 256 (the largest step
  count whose NFE does not exceed the column);
* reaching 1000-step Euler: the smallest NFE at which each method/grid pair is as accurate as Euler with
  1000 steps, and the best pair within 20 NFE;
* the best grid of two families (power, Karras) at 20 NFE per method, tuned on the test problem itself;
* tAB-DEIS at 20 NFE with its order and power grid chosen on 500 other starting points (not in the quick run);
* teleport start: the closed-form Gaussian jump from t = 1 to t_skip (chapter 6: GMM2's moment-matched
  Gaussian, dl.gaussian_pf_ode), then each method/grid from t_skip, within 10 NFE.

`sampler_tables(quick, table)` returns the markdown of the tables; bench.py prints it.
"""
from __future__ import annotations

import time

import torch

__all__ = ["STEPS_PER_NFE", "deis_power_grid_choice", "dop853_reference", "power_grid", "sampler_tables"]

STEPS_PER_NFE = {"euler": 1, "heun": 2, "rk4": 4, "ddim": 1, "dpm2": 2, "dpm++2m": 1, "dpm++3m": 1, "deis": 1,
                 "edm": 2, "evodiff": 1}
GRIDS = ("uniform", "log_snr", "karras")


def dop853_reference(score, path, x_T: torch.Tensor, t_end: float, t_start: float = 1.0) -> torch.Tensor:
    """The PF-ODE dx/dt = f x - g^2/2 score from t_start to t_end, all points as one system, scipy DOP853
    with rtol 1e-10, atol 1e-12, float64 on the CPU."""
    from scipy.integrate import solve_ivp

    x_T = x_T.detach().to("cpu", torch.float64)

    def rhs(t, y):
        x = torch.from_numpy(y).reshape(x_T.shape)
        return (path.f(t) * x - 0.5 * path.g2(t) * score(x, t)).numpy().ravel()

    sol = solve_ivp(rhs, (t_start, t_end), x_T.numpy().ravel(), method="DOP853", rtol=1e-10, atol=1e-12)
    if not sol.success:
        raise RuntimeError(f"the DOP853 reference failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1].reshape(x_T.shape))


class _Problem:
    """GMM2 on VP, exact eps-prediction, n starting points (drawn with `seed`), the DOP853 reference at t_end."""

    def __init__(self, n: int, t_end: float = 1e-3, seed: int = 0):
        from .distributions import exact_prediction, exact_score, gmm2
        from .paths import VP

        self.path, self.data, self.t_end = VP(), gmm2(), t_end
        self.model = exact_prediction(self.data, self.path, "eps")
        self.x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        start = time.perf_counter()
        self.ref = dop853_reference(exact_score(self.data, self.path), self.path, self.x_T, t_end)
        self.ref_seconds = time.perf_counter() - start

    def error(self, method: str, nfe: int, kind: str, x=None, t_start: float = 1.0) -> tuple[float, int] | None:
        """(mean error, NFE used) of `method` on `kind` with at most `nfe` evaluations (None if it does not fit)."""
        from .sampling import sample, time_grid

        steps = nfe // STEPS_PER_NFE[method]
        if steps < (2 if method == "evodiff" else 1):
            return None
        grid = time_grid(steps, t_start, self.t_end, kind=kind, path=self.path)
        out = sample(self.model, self.path, self.x_T if x is None else x, grid, method)
        return float((out.x - self.ref).norm(dim=1).mean()), out.nfe


def power_grid(steps: int, power: float, t_end: float = 1e-3) -> torch.Tensor:
    """t_i = t_end + (1 - t_end) u_i^power, u from 1 to 0 in `steps` equal steps (power > 1: finer near the data)."""
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return t_end + (1 - t_end) * u**power


def deis_power_grid_choice(nfe: int = 20, seed: int = 1, n: int = 500, orders=range(3, 8),
                           powers=(1.0, 1.1, 1.2, 1.3, 1.4, 1.5)) -> tuple[int, float, float]:
    """(order, power, mean error) of the tAB-DEIS order and power grid (`nfe` steps) with the least error on n
    starting points drawn with `seed`, against their own DOP853 reference: a choice that never sees the test points
    (seed 0) it is then measured on."""
    from .sampling import sample

    train = _Problem(n, seed=seed)
    errors = {(order, p): float((sample(train.model, train.path, train.x_T, power_grid(nfe, p, train.t_end), "deis",
                                        order=order).x - train.ref).norm(dim=1).mean())
              for order in orders for p in powers}
    order, p = min(errors, key=errors.get)
    return order, p, errors[order, p]


def _grid_table(problem: _Problem, methods, nfes) -> list[list]:
    rows = []
    for method in methods:
        for kind in GRIDS:
            cells = [problem.error(method, nfe, kind) for nfe in nfes]
            rows.append([method, kind, *("-" if c is None else f"{c[0]:.2e}" for c in cells)])
    return rows


def _reaching(problem: _Problem, methods, target: float, max_nfe: int) -> tuple[list[list], tuple]:
    """Per method/grid the smallest NFE of a scan (every NFE to 20, then steps of ~15 %) with error <= target; the
    best pair within 20 NFE."""
    scan = sorted({*range(2, 21), *(round(20 * 1.15**k) for k in range(1, 40) if 20 * 1.15**k <= max_nfe)})
    rows, best = [], None
    for method in methods:
        for kind in GRIDS:
            found, best20 = None, None
            for nfe in scan:
                result = problem.error(method, nfe, kind)
                if result is None:
                    continue
                if nfe <= 20 and (best20 is None or result[0] < best20[0]):
                    best20 = result
                if result[0] <= target:
                    found = result
                    break
            rows.append([method, kind, "-" if found is None else found[1], f"{best20[0]:.2e}" if best20 else "-"])
            if best20 and (best is None or best20[0] < best[0]):
                best = (best20[0], best20[1], method, kind)
    return rows, best


def _teleport(problem: _Problem, methods, skips, max_nfe: int = 10) -> list[list]:
    from .closed_form import gaussian_pf_ode
    from .distributions import Gaussian, exact_score

    gaussian = Gaussian(problem.data.mean(), problem.data.covariance())
    score = exact_score(problem.data, problem.path)
    rows = []
    for t_skip in skips:
        x = gaussian_pf_ode(gaussian, problem.path, problem.x_T, 1.0, t_skip)
        jump = dop853_reference(score, problem.path, x, problem.t_end, t_start=t_skip)  # the jump's error alone
        results = [(r, m, k) for m in methods for k in GRIDS
                   if (r := problem.error(m, max_nfe, k, x=x, t_start=t_skip)) is not None]
        (err, nfe), method, kind = min(results, key=lambda r: r[0][0])
        rows.append([t_skip, f"{float((jump - problem.ref).norm(dim=1).mean()):.2e}", method, kind, nfe, f"{err:.2e}"])
    return rows


def _tuned_grids(problem: _Problem, methods, nfe: int = 20) -> list[list]:
    """Each method's best grid at `nfe` among two families searched on the test problem itself: power grids
    t_i = t_end + (1 - t_end) u_i^p and EDM's rho-grids with rho from 1 to 10 (an upper bound on what choosing
    the grid can buy; a grid tuned on the reference is not one a sampler could pick without it)."""
    from .sampling import sample, time_grid

    rows = []
    for method in methods:
        steps = nfe // STEPS_PER_NFE[method]
        if steps < (2 if method == "evodiff" else 1):
            continue
        grids = {f"power p = {p}": power_grid(steps, p, problem.t_end) for p in (0.8, 1.0, 1.2, 1.5, 2.0, 3.0)}
        grids.update({f"karras rho = {rho}": time_grid(steps, 1.0, problem.t_end, kind="karras", path=problem.path,
                                                       rho=rho) for rho in (1, 2, 3, 5, 7, 10)})
        errors = {name: float((sample(problem.model, problem.path, problem.x_T, grid, method).x - problem.ref)
                              .norm(dim=1).mean()) for name, grid in grids.items()}
        name = min(errors, key=errors.get)
        rows.append([method, name, f"{errors[name]:.2e}"])
    return rows


def sampler_tables(quick: bool, table) -> str:
    """The tables as markdown; `table(title, headers, rows, note)` formats one (bench._table)."""
    from .sampling import sample, time_grid

    n, nfes = (50, (8, 16)) if quick else (500, (5, 10, 20, 40, 80, 160, 256))
    methods = ("euler", "heun", "dpm++2m") if quick else tuple(STEPS_PER_NFE)
    problem = _Problem(n)
    euler_steps = 100 if quick else 1000
    euler = sample(problem.model, problem.path, problem.x_T, time_grid(euler_steps), "euler")
    target = float((euler.x - problem.ref).norm(dim=1).mean())
    source = (f"GMM2, VP, exact eps-prediction, float64 on the CPU, {n} trajectories from the same x_T ~ N(0, I), "
              f"t = 1 -> 1e-3; x_ref: scipy DOP853 rtol 1e-10 ({problem.ref_seconds:.1f} s).")
    grid_rows = _grid_table(problem, methods, nfes)
    out = table("Sampler accuracy per NFE: mean ||x - x_ref||", ["method", "grid", *map(str, nfes)], grid_rows,
                source + " Grids: uniform in t, uniform in lambda = log(alpha/sigma) (log_snr), EDM's rho = 7 in "
                "sigma/alpha (karras). A cell uses the most steps whose NFE fits the column (heun, dpm2, edm: 2 a "
                "step, rk4: 4).")
    reach_rows, best = _reaching(problem, methods, target, 24 if quick else 256)
    verdict = "no pair reaches it" if best is None or best[0] > target else "reached"
    out += "\n" + table(f"Reaching {euler_steps}-step Euler (error {target:.2e})", [
        "method", "grid", f"smallest NFE with error <= Euler-{euler_steps}", "best error with NFE <= 20"], reach_rows,
        f"Best pair within 20 NFE: {best[2]} on {best[3]} grid, {best[0]:.2e} at NFE {best[1]} ({verdict}: target "
        f"{target:.2e}, ratio {best[0] / target:.1f}).")
    tuned = _tuned_grids(problem, methods)
    best_tuned = min(tuned, key=lambda row: float(row[2]))
    out += "\n" + table("The best grid of two families at 20 NFE, tuned on this problem", [
        "method", "best grid", "mean error"], tuned,
        f"Power grids (p in 0.8-3) and Karras grids (rho in 1-10); best: {best_tuned[0]} on {best_tuned[1]}, "
        f"{best_tuned[2]} (target {target:.2e}, ratio {float(best_tuned[2]) / target:.1f}).")
    if not quick:
        order, p, train_error = deis_power_grid_choice()
        deis = sample(problem.model, problem.path, problem.x_T, power_grid(20, p, problem.t_end), "deis", order=order)
        error = float((deis.x - problem.ref).norm(dim=1).mean())
        verdict = "reaches" if error <= target else "misses"
        out += "\n" + table("tAB-DEIS at 20 NFE, its order and power grid chosen on other starting points", [
            "order", "grid", "error on the choosing set (seed 1)", "error on the test set", "Euler-1000 (test set)"],
            [[order, f"power p = {p}", f"{train_error:.2e}", f"{error:.2e}", f"{target:.2e}"]],
            f"Orders 3-7 and powers 1.0-1.5 tried on 500 other starting points (seed 1, their own DOP853 reference); "
            f"the best pair, measured on the test set, {verdict} the accuracy of {euler_steps}-step Euler "
            f"(ratio {error / target:.2f}) with {deis.nfe} NFE.")
    skips = (0.6,) if quick else (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    out += "\n" + table("Teleport start, then a sampler within 10 NFE", [
        "t_skip", "jump alone (DOP853 after it)", "best method", "grid", "NFE", "mean error"],
        _teleport(problem, methods, skips),
        f"Closed-form jump 1 -> t_skip with GMM2's moment-matched Gaussian (dl.gaussian_pf_ode), then the best "
        f"method/grid from t_skip to 1e-3 within 10 NFE; target ({euler_steps}-step Euler): {target:.2e}. The second "
        "column is the jump's own error (the exact solve after it): the Gaussian's bias, which no sampler after the "
        "jump removes; where it is below the last column, the 10 evaluations are the limit.")
    return out
