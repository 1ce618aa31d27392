"""Flow maps: learning the map Phi_{t -> r} of the probability-flow ODE, to generate in one or a few steps.

* `exact`        -- the oracle: Phi_{t -> r} in closed form for Gaussian data, DOP853 for mixtures;
* `samplers`     -- few-step sampling with any flow map; the average-velocity parameterisation;
* `consistency`  -- consistency models: parameterisation, distillation and training objectives, sampler;
* `shortcut`     -- shortcut models: self-consistency targets on a dyadic grid of step sizes;
* `meanflow`     -- MeanFlow: the average velocity through the MeanFlow identity (a JVP target);
* `progressive`  -- progressive distillation: a DDIM student that halves its teacher's steps;
* `compare`      -- every method as a generator gen(z, nfe), for the quality-against-NFE table;
* `figures`      -- chapter 12's sample grids and tables.
"""
from .compare import *
from .consistency import *
from .exact import *
from .figures import *
from .meanflow import *
from .progressive import *
from .samplers import *
from .shortcut import *
