import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/reference.py
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_collection_finish(session):
    # A test module that changes the default dtype at import time changes it for every other
    # module too; float64 checks must use a fixture that restores the default instead.
    if torch.get_default_dtype() != torch.float32:
        raise RuntimeError(
            "a test module set torch's default dtype at import time; "
            "use a fixture that sets it and restores it (see tests/test_paths.py)"
        )
