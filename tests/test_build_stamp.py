"""`make book` rebuilds every page when the settings of the last build differ (book/build_stamp.py).

The Makefile's own `book` rule runs in a copy of the repository's Makefile, stamp script and package,
with a fake virtual environment whose `jupyter-book` only records its arguments: a change of budget,
of the weights setting or of the package must give `--all`, an unchanged one must not, a failed build
must not leave a stamp behind, and an unknown budget must stop the rule before anything is built.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path as FilePath

import pytest

REPO = FilePath(__file__).resolve().parent.parent
MAKE = shutil.which("make")


@pytest.fixture
def sandbox(tmp_path):
    """A directory with the Makefile, book/build_stamp.py, the package and a fake .venv; returns run(env) ->
    (exit status, the jupyter-book arguments of that run or None when it was not called)."""
    shutil.copy(REPO / "Makefile", tmp_path)
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    (tmp_path / "book").mkdir()
    for name in ("build_stamp.py", "vendor_assets.py"):
        shutil.copy(REPO / "book" / name, tmp_path / "book")
    shutil.copytree(REPO / "diffusion_lessons", tmp_path / "diffusion_lessons",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pt"))
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    calls = tmp_path / "calls.txt"
    fake = bin_dir / "jupyter-book"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexit "${{FAKE_BUILD_STATUS:-0}}"\n')
    fake.chmod(0o755)
    pretrain = bin_dir / "diffusion-lessons"  # records what make book asked it to train first
    pretrain.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "pretrain.txt"}\n')
    pretrain.chmod(0o755)
    # the parallel execution of the chapters (book/execute_chapters.py) only records that it ran
    (tmp_path / "book" / "execute_chapters.py").write_text(
        f'import sys\nopen({str(tmp_path / "executed.txt")!r}, "a").write(" ".join(sys.argv[1:]) + "\\n")\n'
        'import os\nsys.exit(int(os.environ.get("FAKE_EXECUTE_STATUS", "0")))\n')
    (tmp_path / ".vendor").mkdir()
    for made in (tmp_path / ".venv" / ".installed", tmp_path / ".vendor" / "MANIFEST.json"):
        made.touch()  # newer than pyproject.toml and vendor_assets.py: neither install nor vendor runs

    def run(**env):
        calls.unlink(missing_ok=True)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("DIFFUSION_LESSONS_", "MAKE"))}
        base.pop("PYTHONPATH", None)
        done = subprocess.run([MAKE, "-s", "book"], check=False, cwd=tmp_path, env={**base, **env}, capture_output=True,
                              text=True, timeout=120)
        args = calls.read_text().strip() if calls.exists() else None
        return done.returncode, args, done.stdout + done.stderr

    run.root = tmp_path
    return run


@pytest.mark.skipif(MAKE is None, reason="needs make")
def test_make_book_rebuilds_every_page_when_the_settings_change(sandbox):
    smoke = {"DIFFUSION_LESSONS_BUDGET": "smoke"}
    status, args, out = sandbox(**smoke)
    assert status == 0 and args.endswith("--all"), out  # no stamp yet: a full build
    assert "no record of the settings" in out
    assert sandbox(**smoke)[:2] == (0, "build . -W -n --keep-going"), "same settings: Sphinx's incremental build"
    status, args, out = sandbox(DIFFUSION_LESSONS_BUDGET="laptop")
    assert args.endswith("--all") and "budget 'smoke' -> 'laptop'" in out, out
    status, args, out = sandbox(DIFFUSION_LESSONS_BUDGET="laptop", DIFFUSION_LESSONS_WEIGHTS="train")
    assert args.endswith("--all") and "weights 'shipped' -> 'train'" in out, out
    # training from scratch: every model the chapters load is trained into the cache first, outside the notebooks'
    # cell timeout (--book: the shipped set, not the recipes no chapter uses)
    assert (sandbox.root / "pretrain.txt").read_text().split() == ["pretrain", "--book"]
    assert sandbox(DIFFUSION_LESSONS_BUDGET="laptop", DIFFUSION_LESSONS_WEIGHTS="train")[1].endswith("keep-going")
    with open(sandbox.root / "diffusion_lessons" / "budget.py", "a") as f:
        f.write("\n# an edit to the package\n")
    status, args, out = sandbox(DIFFUSION_LESSONS_BUDGET="laptop", DIFFUSION_LESSONS_WEIGHTS="train")
    assert args.endswith("--all") and "package" in out, out


@pytest.mark.skipif(MAKE is None, reason="needs make")
def test_a_failed_build_leaves_no_stamp_and_a_bad_budget_builds_nothing(sandbox):
    assert sandbox(DIFFUSION_LESSONS_BUDGET="smoke")[0] == 0
    status, args, _ = sandbox(DIFFUSION_LESSONS_BUDGET="laptop", FAKE_BUILD_STATUS="1")
    assert status != 0 and args.endswith("--all")
    status, args, _ = sandbox(DIFFUSION_LESSONS_BUDGET="laptop")
    assert status == 0 and args.endswith("--all"), "after a failed build the next one is a full one again"
    status, args, out = sandbox(DIFFUSION_LESSONS_BUDGET="huge")
    assert status != 0 and args is None, out
    assert "unknown budget 'huge'" in out and "valid budgets: smoke, laptop, gpu" in out


@pytest.mark.skipif(MAKE is None, reason="needs make")
def test_chapters_are_executed_first_and_a_failed_chapter_stops_the_build(sandbox):
    """make book runs book/execute_chapters.py before Sphinx; when a chapter fails there, Sphinx does not
    run and no stamp is written. A change of settings empties the execution cache, so every chapter runs again."""
    executed = sandbox.root / "executed.txt"
    assert sandbox(DIFFUSION_LESSONS_BUDGET="smoke")[0] == 0
    assert executed.read_text().split() == ["_build", "--workers", "2"]
    cached = sandbox.root / "_build" / ".jupyter_cache" / "executed"
    cached.mkdir(parents=True)
    assert sandbox(DIFFUSION_LESSONS_BUDGET="smoke")[0] == 0 and cached.is_dir(), "same settings: the cache is kept"
    status, args, out = sandbox(DIFFUSION_LESSONS_BUDGET="laptop", FAKE_EXECUTE_STATUS="1")
    assert status != 0 and args is None, out
    assert not cached.exists(), "new settings: the chapters executed with the old ones are forgotten"
    assert not (sandbox.root / "_build" / ".book-settings.json").exists()
    status, args, out = sandbox(DIFFUSION_LESSONS_BUDGET="laptop")
    assert status == 0 and args.endswith("--all"), out
