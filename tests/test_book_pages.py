"""The book's own pages stay current: the intro links every chapter in the table of contents, and no file
outside the chapters refers to files readers do not have (the design and math notes the course was
built from; the book cites the papers, or its Checks page, instead)."""
import re
import subprocess
from pathlib import Path as FilePath

import pytest

REPO = FilePath(__file__).resolve().parent.parent
NOT_SHIPPED = re.compile(r"\b(MATH(-2)?|DESIGN|REVIEW-1-9|STYLE)\.md\b")


def _toc_chapters() -> list[str]:
    toc = (REPO / "_toc.yml").read_text()
    return re.findall(r"^\s*- file:\s*notebooks/(\S+?)\s*$", toc, flags=re.MULTILINE)


def test_the_intro_links_every_chapter_and_calls_none_planned():
    intro = (REPO / "book" / "intro.md").read_text()
    linked = set(re.findall(r"\{doc\}`[^`<]*<\.\./notebooks/([^>]+)>`", intro))
    missing = [c for c in _toc_chapters() if c not in linked]
    assert not missing, f"book/intro.md does not link {missing} (a {{doc}} link in its chapter table)"
    assert "planned" not in intro.lower()
    assert "only through the notation page" not in intro


def _tracked_files() -> list[FilePath]:
    try:
        names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [REPO / n for n in names.splitlines()]


def test_nothing_outside_the_chapters_cites_the_private_notes():
    """Chapters are the review's (they are checked once their references are replaced); everything else here."""
    offenders = []
    for file in _tracked_files():
        if file.suffix in (".ipynb", ".pt", ".png", ".svg") or not file.is_file() or file.name == "test_book_pages.py":
            continue
        for number, line in enumerate(file.read_text(errors="replace").splitlines(), 1):
            if NOT_SHIPPED.search(line):
                offenders.append(f"{file.relative_to(REPO)}:{number}: {line.strip()[:80]}")
    assert not offenders, "cite the paper or a check ID instead:\n" + "\n".join(offenders)


@pytest.mark.parametrize("chapter", _toc_chapters())
def test_every_chapter_is_a_valid_notebook_with_cell_ids(chapter):
    """nbformat 4.5: every cell has an id, unique in its notebook (a cell written by hand without one only warns
    today, and will fail in a later nbformat)."""
    import json

    import nbformat

    raw = json.loads((REPO / "notebooks" / f"{chapter}.ipynb").read_text())  # nbformat.read fills missing ids in
    ids = [cell.get("id") for cell in raw["cells"]]
    assert (raw["nbformat"], raw["nbformat_minor"]) >= (4, 5) and all(ids) and len(set(ids)) == len(ids), chapter
    nbformat.validate(raw)


@pytest.mark.parametrize("chapter", _toc_chapters())
def test_no_cell_shows_a_glued_value_as_a_stray_output(chapter):
    """dl.glue returns its value, so a cell whose last statement is a bare dl.glue(...) prints that value under the
    cell on the page, a number with no label; such a line ends with ';'."""
    import ast
    import json

    raw = json.loads((REPO / "notebooks" / f"{chapter}.ipynb").read_text())
    offenders = []
    for index, cell in enumerate(raw["cells"]):
        source = "".join(cell["source"])
        if cell["cell_type"] != "code" or not source.strip() or source.lstrip().startswith(("%", "!")):
            continue
        last = ast.parse(source).body[-1]
        is_glue = (isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)
                   and ast.unparse(last.value.func) in ("dl.glue", "glue"))
        if is_glue and not source.rstrip().endswith(";"):
            offenders.append(f"cell {index}: {source.rstrip().splitlines()[-1][:60]}")
    assert not offenders, f"{chapter}: end these lines with ';' " + "; ".join(offenders)
