"""Sampling: integrate a model's field from noise (t = 1) to data (t = 0), one front door for every method.

    grid = dl.time_grid(n, t_start=1.0, t_end=1e-3, kind="log_snr", path=path)
    out = dl.sample(model, path, x_T, grid, method="dpm++2m", target="eps")   # out.x, out.nfe, out.trajectory

Modules, by what they hold:

* grids        time grids (uniform, quadratic, log-SNR, Karras) and the inverse of lambda(t)
* prediction   the model read as eps / x0 / score / velocity, and the count of its evaluations
* ode          Euler, Heun (EDM Alg. 1), RK4, adaptive: the PF-ODE in t; `sample_ode` for any velocity field
* exponential  DDIM, DPM-Solver-2, DPM-Solver-2M, DPM-Solver++(2M, 3M): exponential integrators in lambda
* deis         tAB-DEIS (Zhang & Chen 2023): exponential integrator in sigma / alpha, Adams–Bashforth order 1-8
* edm          EDM's stochastic Heun sampler (Alg. 2, churn) on any path, and EDM preconditioning
* sde          Euler–Maruyama and predictor–corrector on the reverse SDE, Langevin, the forward SDE
* evodiff      EVODiff (Li et al. 2025), order 2 with variance gates, from the authors' code
* methods      `sample`, the registry of methods, `SampleResult`
* time_shift   the Time-Shift sampler (Li et al. 2024) on the discrete DDPM chain
* dmcmc        Denoising MCMC / Denoising Langevin Gibbs (Kim & Ye 2022): noise-level classifier, chain, solve
"""
from . import studies  # noqa: F401  (dl.sampling.studies: the measuring tools of the fast-samplers chapter)
from .dmcmc import (
    ChainResult,
    NoiseLevelClassifier,
    denoising_mcmc,
    langevin_move,
    langevin_stationary_variance,
    noise_level_chain,
    noise_levels,
    train_noise_classifier,
)
from .edm import EDMPreconditioned, edm_scalings
from .evodiff import projection_coefficient
from .exponential import ddim_noise_scale
from .grids import GRID_KINDS, time_at_lambda, time_grid
from .methods import METHODS, SampleResult, register_method, sample
from .ode import ODE_METHODS, euler_step, heun_step, pf_velocity, rk4_step, sample_ode
from .prediction import Prediction
from .sde import (
    SDE_METHODS,
    euler_maruyama_step,
    langevin,
    reverse_drift,
    sample_sde,
    simulate_forward_sde,
)
from .time_shift import (
    exposure_bias_demo,
    time_shift_grid,
    time_shift_sample,
    time_shift_step,
)

__all__ = [
    "GRID_KINDS",
    "METHODS",
    "ODE_METHODS",
    "SDE_METHODS",
    "ChainResult",
    "EDMPreconditioned",
    "NoiseLevelClassifier",
    "Prediction",
    "SampleResult",
    "ddim_noise_scale",
    "denoising_mcmc",
    "edm_scalings",
    "euler_maruyama_step",
    "euler_step",
    "exposure_bias_demo",
    "heun_step",
    "langevin",
    "langevin_move",
    "langevin_stationary_variance",
    "noise_level_chain",
    "noise_levels",
    "pf_velocity",
    "projection_coefficient",
    "register_method",
    "reverse_drift",
    "rk4_step",
    "sample",
    "sample_ode",
    "sample_sde",
    "simulate_forward_sde",
    "time_at_lambda",
    "time_grid",
    "time_shift_grid",
    "time_shift_sample",
    "time_shift_step",
    "train_noise_classifier",
]
