"""diffusion_lessons: the package behind the course.

One Gaussian path x_t = alpha_t x0 + sigma_t eps (t = 0 data, t = 1 noise), one conversion between
the four prediction targets, exact references for Gaussian mixtures, one model signature
model(x, t), one trainer and solvers that take any field. The book's Checks page lists what the tests assert.
"""
__version__ = "0.1.0"

from . import baselines, budget, objectives, widgets  # noqa: F401  (used as dl.budget.pick, dl.baselines..., ...)
from .distributions import *  # noqa: F401,F403
from .nets import *  # noqa: F401,F403
from .paths import *  # noqa: F401,F403
from .training import *  # noqa: F401,F403
from .plotting import *  # noqa: F401,F403
from .sampling import *  # noqa: F401,F403
from .chapter_figures import *  # noqa: F401,F403
from .interpolants import *  # noqa: F401,F403
from .likelihood import *  # noqa: F401,F403
from .closed_form import *  # noqa: F401,F403
from .diagnostics import *  # noqa: F401,F403
from .gauge import *  # noqa: F401,F403
from .ddpm import *  # noqa: F401,F403
from .fields import *  # noqa: F401,F403
from .pages import *  # noqa: F401,F403
from .processes import *  # noqa: F401,F403
from .sgmse import *  # noqa: F401,F403
from .multiplicative import *  # noqa: F401,F403
from .mrs import *  # noqa: F401,F403
from .flow_maps import *  # noqa: F401,F403
from .posterior import *  # noqa: F401,F403
from .guidance import *  # noqa: F401,F403
from .inverse import *  # noqa: F401,F403
from .resfusion import *  # noqa: F401,F403
from .classifiers import *  # noqa: F401,F403
from .timeseries import *  # noqa: F401,F403
from .jko import *  # noqa: F401,F403
from . import recipes, shipped  # noqa: F401,E402  (dl.recipes.names(), dl.shipped.read_manifest(), ...)
from .shipped import Pretrained, pretrained  # noqa: F401,E402
