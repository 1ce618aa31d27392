#!/usr/bin/env python3
"""What the last `make book` was built with, so that a change of settings rebuilds every page.

Sphinx re-executes a chapter only when its notebook changed, so without this a book built at the
smoke budget would be served again, unchanged, after `DIFFUSION_LESSONS_BUDGET=laptop make book`.
The stamp `_build/.book-settings.json` records the settings a build used:

* the budget (`DIFFUSION_LESSONS_BUDGET`, resolved as the chapters resolve it: gpu with CUDA, else laptop),
* the weights setting (`DIFFUSION_LESSONS_WEIGHTS`: shipped or train),
* the SHA-256 of the shipped weights' manifest (a re-ship changes the models on the pages),
* the SHA-256 of the package's source (the chapters' outputs depend on it).

    python book/build_stamp.py check [BUILD]    # exit 0 when BUILD's stamp matches today's settings, else 1 (says why)
    python book/build_stamp.py forget [BUILD]   # delete the stamp and the executed chapters (before a full rebuild)
    python book/build_stamp.py write [BUILD]    # record today's settings (after a successful build)

`make book` runs `check`; when it says 1 it forgets the stamp (and empties the execution cache, so every
chapter is executed again by book/execute_chapters.py) and builds with `jupyter-book build --all`,
then writes the stamp once the build has passed; 2 (an unknown budget or weights setting, named on
stderr) stops it. BUILD defaults to _build.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAMP = ".book-settings.json"


def _budget_module(repo: Path):
    """diffusion_lessons/budget.py loaded on its own (not the package, which takes seconds to import)."""
    spec = importlib.util.spec_from_file_location("_book_budget", repo / "diffusion_lessons" / "budget.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settings(repo: Path = REPO) -> dict:
    """Today's settings: budget, weights, manifest and package hashes."""
    budget = _budget_module(repo)

    package = hashlib.sha256()
    for source in sorted((repo / "diffusion_lessons").rglob("*.py")):
        package.update(source.relative_to(repo).as_posix().encode() + b"\0" + source.read_bytes())
    manifest = repo / "diffusion_lessons" / "weights" / "MANIFEST.json"
    return {
        "budget": budget.resolve(),
        "weights": budget.weights_mode(),
        "manifest": hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None,
        "package": package.hexdigest(),
    }


def check(build: Path, now: dict) -> str | None:
    """Why the book in `build` must be rebuilt in full (None: it was built with these settings)."""
    file = build / STAMP
    if not file.is_file():
        return "no record of the settings of the last build"
    try:
        before = json.loads(file.read_text())
    except ValueError:
        return f"{file} is unreadable"
    changed = [f"{key} {before.get(key)!r} -> {value!r}" for key, value in now.items() if before.get(key) != value]
    return None if not changed else "settings changed since the last build: " + "; ".join(
        c if not c.startswith(("manifest", "package")) else c.split(" ")[0] for c in changed)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("check", "forget", "write") or len(argv) > 2:
        print("usage: python book/build_stamp.py check|forget|write [BUILD]", file=sys.stderr)
        return 2
    build = Path(argv[1]) if len(argv) > 1 else REPO / "_build"
    if argv[0] == "forget":  # and the executed chapters of those settings (book/execute_chapters.py)
        (build / STAMP).unlink(missing_ok=True)
        shutil.rmtree(build / ".jupyter_cache", ignore_errors=True)
        return 0
    try:
        now = settings()
    except ValueError as err:  # an unknown budget or weights setting: say so, and stop the build
        print(f"book/build_stamp.py: error: {err}", file=sys.stderr)
        return 2
    if argv[0] == "write":
        build.mkdir(parents=True, exist_ok=True)
        (build / STAMP).write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
        return 0
    why = check(build, now)
    if why is None:
        print(f"book settings unchanged ({now['budget']} budget, {now['weights']} weights)")
        return 0
    print(f"rebuilding every page: {why}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
