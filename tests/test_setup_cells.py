"""The Colab/Binder setup cell (book/setup_cells.py) and the Binder configuration.

Every chapter starts with the current cell (its URL from _config.yml); --fix inserts or updates it; and
in a fresh virtual environment without the package the cell installs it, shipped weights included,
while where the package is importable it does nothing. The fresh-venv test is marked slow: it builds
the package from a copy of this checkout (no network: the dependencies come from the running
environment, through a folder of links that leaves this package out).
"""
import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path as FilePath

import pytest

REPO = FilePath(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("setup_cells", REPO / "book" / "setup_cells.py")
setup_cells = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(setup_cells)
CHAPTERS = sorted((REPO / "notebooks").glob("[0-9][0-9]*_*.ipynb"))


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.stem.split("_")[0])
def test_every_chapter_starts_with_the_current_setup_cell(notebook):
    why = setup_cells.problem(json.loads(notebook.read_text()), setup_cells.cell_source())
    assert why is None, f"{notebook.name}: {why}; run python3 book/setup_cells.py --fix"


def test_the_cell_follows_the_repository_setting(tmp_path):
    url, branch = setup_cells.repository()
    assert url.startswith("https://") and f'"git+{url}@{branch}"' in setup_cells.cell_source()
    config = tmp_path / "_config.yml"
    config.write_text("title: x\nrepository:\n  url: https://example.org/me/fork/  # a fork\n  branch: dev\nlatex: {}\n")
    assert setup_cells.repository(config) == ("https://example.org/me/fork", "dev")
    assert '"git+https://example.org/me/fork@dev"' in setup_cells.cell_source(config)
    config.write_text("title: x\n")
    with pytest.raises(SystemExit, match="no `repository:` section"):
        setup_cells.repository(config)


def test_fix_inserts_before_the_first_code_cell_and_updates_a_stale_one():
    title = {"cell_type": "markdown", "metadata": {}, "source": ["# Chapter\n"]}
    code = {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": ["x = 1\n"]}
    nb = {"cells": [title, code]}
    assert setup_cells.problem(nb, "SRC") == "no setup cell"
    setup_cells.fix(nb, setup_cells.MARKER + " old\n")
    assert [c["cell_type"] for c in nb["cells"]] == ["markdown", "code", "code"]
    assert nb["cells"][1]["metadata"]["tags"] == ["remove-cell"] and nb["cells"][2] is code
    current = setup_cells.cell_source()
    assert "out of date" in setup_cells.problem(nb, current)
    setup_cells.fix(nb, current)
    assert setup_cells.problem(nb, current) is None and len(nb["cells"]) == 3
    nb["cells"] = [nb["cells"][0], code, nb["cells"][1]]
    assert setup_cells.problem(nb, current) == "the setup cell is not the first code cell"


def test_binder_installs_the_cpu_wheel_and_the_package():
    requirements = (REPO / "binder" / "requirements.txt").read_text()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirements
    assert "torch==2.13.0+cpu" in requirements.split()  # the local version: only PyTorch's CPU index has it
    post = REPO / "binder" / "postBuild"
    assert os.access(post, os.X_OK) and "pip install --no-cache-dir ." in post.read_text()


def _dependencies_without_this_package(folder: FilePath) -> FilePath:
    """A folder of links to everything in this environment's site-packages except diffusion_lessons."""
    folder.mkdir()
    for packages in site.getsitepackages():
        for entry in FilePath(packages).iterdir():
            if "diffusion_lessons" in entry.name or entry.suffix == ".pth" or (folder / entry.name).exists():
                continue
            (folder / entry.name).symlink_to(entry)
    return folder


@pytest.mark.slow
def test_the_setup_cell_installs_the_package_in_a_fresh_venv(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    packages = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
    deps = _dependencies_without_this_package(tmp_path / "deps")
    (FilePath(packages) / "dependencies.pth").write_text(f"{deps}\n")
    # the venv's own (older) setuptools would hide the environment's, which torch's metadata requires
    subprocess.run([python, "-m", "pip", "uninstall", "--yes", "--quiet", "setuptools"], check=True, timeout=300)
    source = tmp_path / "source"  # a copy: pip builds in the source tree, and must not write into the checkout
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "_build", ".cache", "__pycache__",
                                                               "*.egg-info", "notebooks", ".vendor", "build"))
    cell = setup_cells.cell_source().replace(setup_cells.repository()[0], "URL")
    cell = cell.replace('"git+URL@main"', repr(str(source)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPATH", "DIFFUSION_LESSONS_", "PIP_"))}
    env.update(PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0", PIP_DISABLE_PIP_VERSION_CHECK="1")
    check = ("import diffusion_lessons as dl, sys\n"
             "assert dl.__file__.startswith(sys.prefix), dl.__file__\n"
             "m = dl.shipped.read_manifest()\n"
             "assert m and all((dl.shipped.WEIGHTS_DIR / e['file']).is_file() for e in m.values())\n"
             "r = dl.pretrained('ch07-free')\n"
             "print(r.source, r.describe())\n")
    first = subprocess.run([python, "-c", cell + "\n" + check], check=False, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.startswith("shipped ch07-free: shipped weights"), first.stdout
    # where the package is importable the cell must not call pip: a subprocess.run that fails proves it
    stub = "import subprocess\ndef refuse(*a, **k):\n    raise AssertionError('pip was called')\nsubprocess.run = refuse\n"
    second = subprocess.run([python, "-c", stub + cell + "\nimport diffusion_lessons"], check=False, cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
