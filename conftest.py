"""pytest's settings for the whole repository: the unit tests (tests/) and the chapters run as tests (notebooks/,
nbval). The tests' fixtures are in tests/conftest.py."""
import os

import torch

# `make test` and `make notebooks` run two pytest-xdist workers on a 2-core machine: each worker (and the notebook
# kernels and subprocesses it starts, which inherit OMP_NUM_THREADS) computes on one thread, so that the two never
# fight for a core. (Here, not in tests/conftest.py: `pytest notebooks` alone does not read that one.)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
