import os
import sys

import pytest
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


@pytest.fixture(scope="module")
def float64_default():
    """Checks against float64 references: float64 as the default dtype for the module, restored afterwards.
    Use with `pytestmark = pytest.mark.usefixtures("float64_default")`."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture(scope="module")
def one_thread():
    """Many tiny tensor ops: on a shared 2-core machine a second intra-op thread only slows them down."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_thread_and_a_private_cache(tmp_path, monkeypatch):
    """Tiny models run fastest on one thread; every test gets an empty model cache of its own.
    Use with `pytestmark = pytest.mark.usefixtures("one_thread_and_a_private_cache")`."""
    monkeypatch.setenv("DIFFUSION_LESSONS_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def close_figures():
    """Every test leaves no matplotlib figure open (only where pyplot was imported at all)."""
    yield
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
