#!/usr/bin/env python3
"""Execute the book's chapters side by side before Sphinx renders them (`make book` runs this first).

Jupyter Book executes notebooks one after the other. On a 2-core machine two chapters running at once,
each on one thread, finish sooner than one at a time on two threads: most of a chapter is small tensor
operations that a second thread does not speed up. This script executes every chapter whose executed
copy is missing from myst-nb's execution cache (`BUILD/.jupyter_cache`, `execute_notebooks: cache` in
_config.yml) in WORKERS parallel kernels, then stores each executed notebook there, where the Sphinx
build finds it ("Using cached notebook") instead of executing it again. `book/build_stamp.py forget`
empties that cache whenever the settings change, so every chapter is executed again then, as before.

    python book/execute_chapters.py [BUILD] [--workers N] [--root BOOK]

A chapter that fails (a raising cell, or one running longer than _config.yml's `timeout`) is reported
with the cell's traceback; the others still run; the exit status is then 1 and nothing of that chapter
is cached.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = ".jupyter_cache"


GPU_BUDGET_ON_CPU = 12  # the timeout's factor when the gpu budget runs without CUDA


def cell_timeout(repo: Path = REPO) -> int:
    """Seconds a cell may run: _config.yml's execute.timeout, which is sized for the smoke and laptop budgets
    (and for the gpu budget on a GPU), times GPU_BUDGET_ON_CPU at the gpu budget on a machine without CUDA,
    where its cells are honest work sized for a GPU (chapter 10's 2000 digits per sampler and NFE: about 20
    minutes on a 2-core CPU), not hung."""
    import yaml

    from diffusion_lessons import budget

    seconds = int(yaml.safe_load((repo / "_config.yml").read_text())["execute"]["timeout"])
    if budget.current() == "gpu" and not _cuda_available():
        return seconds * GPU_BUDGET_ON_CPU
    return seconds


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _execute(path: str, timeout: int):
    """Run one notebook in a fresh kernel in its own folder: (path, executed notebook, seconds, error text)."""
    import nbformat
    from jupyter_cache.executors.utils import single_nb_execution

    nb = nbformat.read(path, as_version=4)
    result = single_nb_execution(nb, cwd=str(Path(path).parent), timeout=timeout, allow_errors=False)
    error = None if result.err is None else (result.exc_string or repr(result.err))
    return path, nb, result.time, error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("build", nargs="?", default=str(REPO / "_build"))
    parser.add_argument("--workers", type=int, default=2, help="chapters at once (make book: BOOK_WORKERS)")
    parser.add_argument("--root", default=str(REPO), help="the book's folder (_toc.yml, _config.yml)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        print(f"execute_chapters.py: --workers must be at least 1, got {args.workers}", file=sys.stderr)
        return 2

    import nbformat
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    from diffusion_lessons.bench import chapters  # the notebooks of _toc.yml, as `make bench` times them

    cache, root, todo = get_cache(str(Path(args.build) / CACHE)), Path(args.root).resolve(), []
    for path in chapters(root):
        try:
            cache.match_cache_notebook(nbformat.read(path, as_version=4))
        except KeyError:
            todo.append(path)
    if not todo:
        print("every chapter's executed copy is in the cache: nothing to execute")
        return 0
    if args.workers > 1:
        # each kernel (started by a worker, inheriting this environment) computes on one thread
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    timeout = cell_timeout(root)
    # the longest chapters (11 and 13) are near the end of the table: start from there, so that no long
    # chapter runs alone at the end
    todo.sort(key=lambda p: p.name, reverse=True)
    print(f"executing {len(todo)} chapter(s) in {args.workers} parallel kernel(s), at most {timeout} s a cell")
    started, failed = time.perf_counter(), []
    with ProcessPoolExecutor(max_workers=min(args.workers, len(todo))) as pool:
        futures = [pool.submit(_execute, str(p), timeout) for p in todo]
        for future in as_completed(futures):
            path, nb, seconds, error = future.result()
            name = Path(path).relative_to(root)
            if error is not None:
                failed.append(str(name))
                print(f"{name}: FAILED after {seconds:.0f} s\n{error}", file=sys.stderr)
                continue
            record = cache.add_nb_to_project(path)
            cache.cache_notebook_bundle(CacheBundleIn(nb, record.uri, data={"execution_seconds": seconds}),
                                        check_validity=False, overwrite=True)
            print(f"{name}: executed in {seconds:.1f} s", flush=True)
    print(f"executed {len(todo) - len(failed)} of {len(todo)} chapter(s) in {time.perf_counter() - started:.0f} s")
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
