"""Same seed, same numbers: a chapter executed twice at the smoke budget prints the same numbers.

The two executions run side by side in two fresh kernels (nbclient), each with an empty model cache
of its own, so a chapter that trains a model really trains it twice. Then every printed output
(stdout, stderr, the text form of every result) is compared after a sanitizer has removed what may
legitimately differ between two runs: timings, memory addresses, progress bars and widget ids.
Any other difference, a Monte-Carlo estimate or a trained model's loss in the fourth digit, fails.

To cover another chapter, add its notebook name to CHAPTERS (marked slow if two runs of it take
more than a few tens of seconds: `pytest -m slow` runs those).
"""
import asyncio
import difflib
import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

# executes chapter notebooks in Jupyter kernels: select with -m notebooks, skip with -m "not notebooks"
pytestmark = pytest.mark.notebooks

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CHAPTERS = [
    "01_forward_process",  # seeded Monte-Carlo estimates and forward-SDE simulations, no training
    "02_variational_view",  # trains two TimeMLPs with fit and samples them (about 20 s per run on 2 idle cores)
]
WIDGET = "application/vnd.jupyter.widget-view+json"
CELL_TIMEOUT = 1200  # seconds per cell: generous, for a loaded machine

# what may differ between two runs of the same notebook, and what it becomes
SANITIZE = [
    (re.compile(r"\x1b\[[0-9;]*[A-Za-z]"), ""),  # terminal colours
    (re.compile(r"^.*\r(?=[^\n])", re.M), ""),  # text overwritten with carriage returns (progress bars)
    (re.compile(r"^.*\d+%\|.*\|.*(it/s|s/it|\?it/s).*$", re.M), "<progress bar>"),  # tqdm lines
    (re.compile(r"\b0x[0-9a-fA-F]{6,}\b"), "0x<address>"),
    (re.compile(r"\b\d+(\.\d+)?(e[+-]?\d+)?\s?(s|sec|seconds|ms|us|µs|min)\b"), "<time>"),
    (re.compile(r"\b\d{1,2}:\d{2}(:\d{2})?\b"), "<clock>"),  # elapsed times such as 00:03
]
NUMBER = re.compile(r"[-+]?\d+\.?\d*(?:[eE][-+]?\d+)?")


def sanitize(text: str) -> str:
    for pattern, replacement in SANITIZE:
        text = pattern.sub(replacement, text)
    return text


def _texts(cell) -> list[tuple[str, str]]:
    """(kind, text) of each output of a cell; consecutive stream outputs of one stream are joined,
    since a kernel may split the same printed text into chunks differently from run to run."""
    texts = []
    for output in cell.get("outputs", []):
        kind = output.output_type
        if kind == "stream":
            if texts and texts[-1][0] == output.name:
                texts[-1] = (output.name, texts[-1][1] + output.text)
                continue
            kind, text = output.name, output.text
        elif kind in ("execute_result", "display_data"):
            if WIDGET in output.get("data", {}):
                continue  # widgets (tqdm bars in a notebook, explorers) carry random model ids
            text = output.get("data", {}).get("text/plain", "")
        else:  # an error would already have stopped the execution
            text = "".join(output.get("traceback", []))
        texts.append((kind, text))
    return texts


def printed(nb) -> list[str]:
    """Every output of every code cell as sanitized lines, labelled with the cell's number and the output's kind."""
    lines = []
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    for number, cell in enumerate(code_cells, start=1):
        for kind, text in _texts(cell):
            lines += [f"[cell {number}, {kind}] {line}" for line in sanitize(text).splitlines()]
    return lines


async def _execute_twice(name: str, env_a: dict, env_b: dict):
    """The notebook executed in two kernels at once, one per environment; the first error is raised
    once both have stopped (so that no kernel is left running)."""
    runs = []
    for env in (env_a, env_b):
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                         resources={"metadata": {"path": str(NOTEBOOKS)}})
        runs.append((nb, client.async_execute(env=env)))
    for outcome in await asyncio.gather(*(run for _, run in runs), return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome
    return [nb for nb, _ in runs]


@pytest.mark.parametrize("name", CHAPTERS)
def test_a_chapter_prints_the_same_numbers_twice(name, tmp_path):
    """Execute the chapter twice at DIFFUSION_LESSONS_BUDGET=smoke (two kernels, two empty model caches);
    after sanitizing, every printed line, and so every printed number, must be the same."""
    envs = [{**os.environ, "DIFFUSION_LESSONS_BUDGET": "smoke", "DIFFUSION_LESSONS_CACHE": str(tmp_path / run),
             "PYTHONHASHSEED": "0",
             # the two kernels run at once: one torch thread each, or their threads fight for the cores (10x slower)
             "OMP_NUM_THREADS": "1"} for run in ("first", "second")]
    first, second = (printed(nb) for nb in asyncio.run(_execute_twice(name, *envs)))
    numbers = sum(len(NUMBER.findall(line)) for line in first)
    assert numbers >= 10, f"{name} printed only {numbers} numbers: nothing to compare"
    diff = "\n".join(difflib.unified_diff(first, second, "first run", "second run", lineterm="", n=1))
    assert first == second, f"{name} printed different output in two runs with the same seeds:\n{diff}"
