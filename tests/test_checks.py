"""The checks registry (diffusion_lessons/checks.py) and the Checks page it generates (book/checks.md).

Fails when an ID used in a chapter, a test, the package or a book page has no entry, when an entry is
used nowhere, when an ID-shaped word has an unregistered prefix, when the committed page is not what
the generator writes today, or when the page is missing from the table of contents.
"""
import json
import re
from pathlib import Path as FilePath

import pytest

from diffusion_lessons import checks

REPO = FilePath(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def used():
    return checks.usages()


def test_every_id_used_has_an_entry(used):
    missing = sorted(set(used) - set(checks.CHECKS), key=checks._sort_key)
    assert not missing, (f"check IDs used without an entry in diffusion_lessons/checks.py: {missing} "
                         f"(used in {[used[i] for i in missing]}); add one line each")


def test_every_entry_is_used_somewhere(used):
    unused = sorted(set(checks.CHECKS) - set(used), key=checks._sort_key)
    assert not unused, f"entries in diffusion_lessons/checks.py that nothing uses: {unused}; remove them"


def test_every_entry_is_asserted_in_a_chapter_or_a_test(used):
    idle = [i for i in checks.CHECKS if not (used[i]["chapters"] or used[i]["tests"])]
    assert not idle, f"checks named only in docstrings or pages, asserted nowhere: {idle}"


def test_no_unregistered_id_family():
    assert not checks.unknown_shapes(), (f"words shaped like check IDs with a prefix not in checks.PREFIXES: "
                                         f"{sorted(checks.unknown_shapes())}; add the prefix (or to NOT_CHECKS)")


def test_entries_are_sorted_complete_and_cite_known_sources():
    assert list(checks.CHECKS) == sorted(checks.CHECKS, key=checks._sort_key), "keep CHECKS sorted by ID"
    keys = checks._bib_keys()
    for check_id, c in checks.CHECKS.items():
        assert c.statement and c.reference and c.source, check_id
        assert "|" not in c.statement + c.reference + c.source, f"{check_id}: a '|' breaks the page's table"
        assert c.statement.count("$") % 2 == 0 and c.reference.count("$") % 2 == 0, f"{check_id}: unbalanced $"
        words = [w.strip() for w in c.source.replace(";", ",").split(",")]
        bibish = [w for w in words if re.fullmatch(r"[a-z]+\d{4}[a-z]*", w)]
        assert set(bibish) <= keys, f"{check_id}: {set(bibish) - keys} not in book/references.bib"


def test_the_committed_page_is_current():
    page = REPO / checks.PAGE
    assert page.is_file(), f"{checks.PAGE} is missing: python -m diffusion_lessons.checks --write {checks.PAGE}"
    assert page.read_text() == checks.render_page(), (f"{checks.PAGE} is stale: "
                                                       f"python -m diffusion_lessons.checks --write {checks.PAGE}")
    assert re.search(r"^\s*- file: book/checks\s*$", (REPO / "_toc.yml").read_text(), flags=re.MULTILINE), \
        "book/checks is not listed in _toc.yml"


def test_usages_finds_ids_in_each_kind_of_file(tmp_path):
    """A toy repository: a chapter cell, a test function, a module docstring and a page each name an ID."""
    for folder in ("notebooks", "tests", "diffusion_lessons", "book"):
        (tmp_path / folder).mkdir()
    cell = {"cell_type": "code", "source": ["print('check WV-2: ok')\n"], "metadata": {}, "outputs": [],
            "execution_count": None}
    (tmp_path / "notebooks" / "06_x.ipynb").write_text(json.dumps({"cells": [cell]}))
    (tmp_path / "tests" / "test_x.py").write_text('"""GF-1 at module level."""\n\ndef test_a():\n    """Check TK-5."""\n')
    (tmp_path / "diffusion_lessons" / "m.py").write_text('"""See check SDE-4; not SHA-256 nor BSD-3."""\n')
    (tmp_path / "book" / "p.md").write_text("PR-1 and the generated page is skipped\n")
    (tmp_path / "book" / "checks.md").write_text("WV-8\n")
    found = checks.usages(tmp_path)
    assert found["WV-2"]["chapters"] == ["06_x"]
    assert found["TK-5"]["tests"] == ["tests/test_x.py::test_a"]
    assert found["GF-1"]["tests"] == ["tests/test_x.py"]
    assert found["SDE-4"]["modules"] == ["diffusion_lessons/m.py"]
    assert found["PR-1"]["pages"] == ["book/p.md"]
    assert set(found) == {"WV-2", "TK-5", "GF-1", "SDE-4", "PR-1"}


def test_command_line_writes_and_checks(tmp_path, capsys):
    page = tmp_path / "checks.md"
    assert checks.main(["--check", str(page)]) == 1  # missing
    assert checks.main(["--write", str(page)]) == 0
    assert checks.main(["--check", str(page)]) == 0
    page.write_text(page.read_text() + "edited\n")
    assert checks.main(["--check", str(page)]) == 1
    assert "stale" in capsys.readouterr().err


def test_the_page_names_each_chapter_by_its_number_and_part():
    where = checks._where({"chapters": ["05_probability_flow", "11a_guidance", "11b_inverse_problems"], "tests": []})
    assert where == ("{doc}`ch. 5 <../notebooks/05_probability_flow>`, {doc}`ch. 11a <../notebooks/11a_guidance>`, "
                     "{doc}`ch. 11b <../notebooks/11b_inverse_problems>`")
