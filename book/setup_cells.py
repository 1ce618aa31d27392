#!/usr/bin/env python3
"""The setup cell every chapter starts with, so that its Colab and Binder launch buttons work.

On Colab (and anywhere else `import diffusion_lessons` fails) the cell installs the package from the
repository with pip; where the package is importable (a local checkout, Binder, the book build) it
does nothing. The cell is the first code cell of each chapter, tagged `remove-cell`, so the book's
pages do not show it. The repository URL and branch come from `repository.url` and
`repository.branch` in _config.yml, the same setting the launch buttons use. Standard library only:

    python3 book/setup_cells.py --check [notebooks ...]   # exit 1 if a chapter lacks the current cell
    python3 book/setup_cells.py --fix [notebooks ...]     # insert or update the cell in place
    python3 book/setup_cells.py --print                   # show the cell
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MARKER = "# Setup for Colab and Binder"
TAGS = ["remove-cell"]
CELL_ID = "colab-binder-setup"  # nbformat 4.5 cells need an id
TEMPLATE = '''{marker} (not shown in the book): install the package where it is missing.
import importlib
import importlib.util
import subprocess
import sys

REQUIREMENT = "{requirement}"
if importlib.util.find_spec("diffusion_lessons") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", REQUIREMENT], check=True)
    importlib.invalidate_caches()'''


def repository(config: Path | None = None) -> tuple[str, str]:
    """(url, branch) of `repository:` in _config.yml (branch default main), read without a YAML parser."""
    text = (config or REPO / "_config.yml").read_text()
    block = re.search(r"^repository:\s*\n((?:[ \t]+.*\n?)+)", text, flags=re.MULTILINE)
    if block is None:
        raise SystemExit("_config.yml has no `repository:` section with the repository's url")
    fields = dict(re.findall(r"^[ \t]+(\w+):[ \t]*\"?([^\"#\s]*)\"?", block.group(1), flags=re.MULTILINE))
    if not fields.get("url"):
        raise SystemExit("_config.yml: `repository.url` is empty; set it to the repository's URL")
    return fields["url"].rstrip("/"), fields.get("branch") or "main"


def cell_source(config: Path | None = None) -> str:
    url, branch = repository(config)
    return TEMPLATE.format(marker=MARKER, requirement=f"git+{url}@{branch}")


def is_setup_cell(cell: dict) -> bool:
    source = "".join(cell.get("source", ""))
    return cell.get("cell_type") == "code" and source.startswith(MARKER)


def _new_cell(source: str) -> dict:
    lines = source.splitlines(keepends=True)
    return {"cell_type": "code", "execution_count": None, "id": CELL_ID, "metadata": {"tags": list(TAGS)},
            "outputs": [], "source": lines}


def problem(nb: dict, source: str) -> str | None:
    """Why the notebook does not start with the current setup cell (None when it does)."""
    code = [cell for cell in nb.get("cells", []) if cell.get("cell_type") == "code"]
    setups = [cell for cell in code if is_setup_cell(cell)]
    if not setups:
        return "no setup cell"
    if len(setups) > 1:
        return f"{len(setups)} setup cells"
    if code[0] is not setups[0]:
        return "the setup cell is not the first code cell"
    if "".join(setups[0]["source"]) != source:
        return "the setup cell is out of date (_config.yml's repository or this script changed)"
    if setups[0].get("id") != CELL_ID:
        return f"the setup cell's id is not {CELL_ID!r}"
    if setups[0].get("metadata", {}).get("tags") != TAGS:
        return f"the setup cell's tags are not {TAGS}"
    return None


def fix(nb: dict, source: str) -> None:
    """Put the current setup cell just before the first other code cell (after the title), in place."""
    cells = [cell for cell in nb["cells"] if not is_setup_cell(cell)]
    first_code = next((i for i, cell in enumerate(cells) if cell.get("cell_type") == "code"), len(cells))
    cells.insert(first_code, _new_cell(source))
    nb["cells"] = cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Insert or check the Colab/Binder setup cell of every chapter.")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 if a chapter lacks the current cell")
    mode.add_argument("--fix", action="store_true", help="insert or update the cell in place")
    mode.add_argument("--print", action="store_true", help="print the cell")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/[0-9][0-9]_*.ipynb")
    args = parser.parse_args(argv)
    source = cell_source()
    if args.print:
        print(source)
        return 0
    bad = 0
    for path in args.notebooks or sorted((REPO / "notebooks").glob("[0-9][0-9]*_*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        why = problem(nb, source)
        if why is None:
            continue
        if args.fix:
            fix(nb, source)
            path.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
            print(f"fixed {path.name}: {why}")
        else:
            print(f"{path.name}: {why} (run python3 book/setup_cells.py --fix)", file=sys.stderr)
            bad = 1
    return bad


if __name__ == "__main__":
    sys.exit(main())
