"""The solvers under their first names: this module re-exports `diffusion_lessons.sampling`.

Sampling code lives in the `sampling` subpackage (grids, ODE and SDE integrators, exponential
integrators, EDM) behind one front door, `dl.sample`; `from diffusion_lessons.solvers import sample_ode,
time_grid, pf_velocity` keeps working.
"""
from .sampling import *  # noqa: F401,F403
from .sampling import __all__  # noqa: F401
from .sampling.grids import as_times as _as_times  # noqa: F401  (interpolants' sample_sde_family)
