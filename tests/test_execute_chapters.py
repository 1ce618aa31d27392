"""book/execute_chapters.py: `make book` executes the chapters in parallel kernels into myst-nb's execution
cache before Sphinx renders them. A small book of two notebooks, one of which raises: the good one is executed
and cached with its outputs, the failing one is reported with its error and the exit status is 1, and a second
run executes only what is not cached yet."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
jupyter_cache = pytest.importorskip("jupyter_cache")

SCRIPT = Path(__file__).resolve().parent.parent / "book" / "execute_chapters.py"


def _notebook(path: Path, *sources: str):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def book(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: notebooks/good\n"
                                       "  - file: notebooks/bad\n")
    (tmp_path / "intro.md").write_text("# intro\n")
    (tmp_path / "_config.yml").write_text("execute:\n  execute_notebooks: cache\n  timeout: 60\n")
    _notebook(tmp_path / "notebooks" / "good.ipynb", "x = 6 * 7", "print(x)")
    _notebook(tmp_path / "notebooks" / "bad.ipynb", "print('before')", "raise ValueError('boom in a cell')")
    return tmp_path


def _run(book, *extra):
    return subprocess.run([sys.executable, str(SCRIPT), str(book / "_build"), "--root", str(book), *extra],
                          capture_output=True, text=True, timeout=300)


def test_a_failing_chapter_is_reported_and_the_others_are_cached(book):
    done = _run(book, "--workers", "2")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "notebooks/bad.ipynb: FAILED" in done.stderr and "boom in a cell" in done.stderr
    assert "notebooks/good.ipynb: executed in" in done.stdout
    cache = jupyter_cache.get_cache(str(book / "_build" / ".jupyter_cache"))
    good = cache.match_cache_notebook(nbformat.read(book / "notebooks" / "good.ipynb", as_version=4))
    outputs = [c.outputs for c in cache.get_cache_bundle(good.pk).nb.cells]
    assert outputs[1][0]["text"] == "42\n", json.dumps(outputs)
    with pytest.raises(KeyError):
        cache.match_cache_notebook(nbformat.read(book / "notebooks" / "bad.ipynb", as_version=4))
    # fixed: only the chapter that is not in the cache is executed again
    _notebook(book / "notebooks" / "bad.ipynb", "print('fixed')")
    again = _run(book, "--workers", "1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "executing 1 chapter(s)" in again.stdout and "notebooks/bad.ipynb: executed in" in again.stdout
    assert "nothing to execute" in _run(book).stdout


def test_workers_must_be_positive(book):
    done = _run(book, "--workers", "0")
    assert done.returncode == 2 and "--workers must be at least 1" in done.stderr


def test_the_cell_timeout_grows_only_for_the_gpu_budget_without_cuda(book, monkeypatch):
    """_config.yml's timeout (60 s in this book) holds at smoke and laptop and for the gpu budget with CUDA; the gpu
    budget on a CPU gets GPU_BUDGET_ON_CPU times as long (its cells are sized for a GPU)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import execute_chapters
    finally:
        sys.path.remove(str(SCRIPT.parent))
    for name, cuda, expected in (("smoke", False, 60), ("laptop", False, 60), ("gpu", True, 60),
                                 ("gpu", False, 60 * execute_chapters.GPU_BUDGET_ON_CPU)):
        monkeypatch.setenv("DIFFUSION_LESSONS_BUDGET", name)
        monkeypatch.setattr(execute_chapters, "_cuda_available", lambda cuda=cuda: cuda)
        assert execute_chapters.cell_timeout(book) == expected, (name, cuda)
    assert execute_chapters.GPU_BUDGET_ON_CPU > 1
