"""diffusion_lessons: the package behind the course.

One Gaussian path x_t = alpha_t x0 + sigma_t eps (t = 0 data, t = 1 noise), one conversion between
the four prediction targets, exact references for Gaussian mixtures, one model signature
model(x, t), one trainer and solvers that take any field. See DESIGN.md for the map.
"""
__version__ = "0.1.0"

from . import budget, objectives, widgets  # noqa: F401  (used as dl.budget.pick, dl.objectives.loss, ...)
from .distributions import *  # noqa: F401,F403
from .nets import *  # noqa: F401,F403
from .paths import *  # noqa: F401,F403
from .training import *  # noqa: F401,F403
from .plotting import *  # noqa: F401,F403
from .solvers import *  # noqa: F401,F403
from .interpolants import *  # noqa: F401,F403
from .likelihood import *  # noqa: F401,F403
from .closed_form import *  # noqa: F401,F403
from .diagnostics import *  # noqa: F401,F403
from .gauge import *  # noqa: F401,F403
from .ddpm import *  # noqa: F401,F403
