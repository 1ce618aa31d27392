#!/usr/bin/env python3
"""Fail if a chapter notebook is committed with outputs or execution counts.

The book executes every notebook when it is built, so stored outputs are dead weight in git and
can hide a chapter that no longer runs. Standard library only (runs before any virtualenv exists):

    python3 book/check_no_outputs.py                  # check notebooks/*.ipynb
    python3 book/check_no_outputs.py a.ipynb b.ipynb  # check the given files
    python3 book/check_no_outputs.py --fix [files]    # clear outputs and counts in place

Exit status 0 when every notebook is clean (or was cleaned by --fix), 1 otherwise, after naming
each offending notebook.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def code_cells(nb: dict) -> list[dict]:
    return [cell for cell in nb.get("cells", []) if cell.get("cell_type") == "code"]


def problems(nb: dict) -> list[str]:
    """What is wrong with one parsed notebook, as short phrases; empty when it is clean."""
    with_outputs = sum(1 for cell in code_cells(nb) if cell.get("outputs"))
    with_counts = sum(1 for cell in code_cells(nb) if cell.get("execution_count") is not None)
    found = []
    if with_outputs:
        found.append(f"{with_outputs} code cell(s) with outputs")
    if with_counts:
        found.append(f"{with_counts} code cell(s) with an execution count")
    return found


def clear(path: Path, nb: dict) -> None:
    """Remove outputs and execution counts, writing the file the way Jupyter does."""
    for cell in code_cells(nb):
        cell["outputs"] = []
        cell["execution_count"] = None
    text = json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    path.write_text(text, encoding="utf-8")


def shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def main(argv: list[str]) -> int:
    fix = "--fix" in argv
    args = [a for a in argv if a != "--fix"]
    paths = [Path(a) for a in args] or sorted((REPO / "notebooks").glob("*.ipynb"))
    bad: dict[Path, list[str]] = {}
    for path in paths:
        try:
            nb = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            bad[path] = [f"cannot be read as a JSON notebook ({err})"]
            continue
        found = problems(nb)
        if found and fix:
            clear(path, nb)
            print(f"check_no_outputs: cleared {shown(path)} ({'; '.join(found)})")
        elif found:
            bad[path] = found
    if not bad:
        print(f"check_no_outputs: {len(paths)} notebook(s) without outputs")
        return 0
    print("check_no_outputs: notebooks must be committed without outputs:", file=sys.stderr)
    for path, found in bad.items():
        print(f"  {shown(path)}: {'; '.join(found)}", file=sys.stderr)
    print("Clear them with: python3 book/check_no_outputs.py --fix", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
