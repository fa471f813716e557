"""Every committed notebook meets the course's bar for shape: objectives, one setup cell, visible
checks, summary/exercises/references; committed without outputs, small, valid."""
from __future__ import annotations

import re

import nbformat
import pytest

from conftest import ROOT

LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
ALL = LESSONS + sorted((ROOT / "solutions").glob("*.ipynb")) + sorted((ROOT / "exercises").glob("*.ipynb"))
MAX_BYTES = 150_000


def _id(path):
    return f"{path.parent.name}/{path.name}"


def _read(path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    return nb


@pytest.mark.parametrize("path", ALL, ids=_id)
def test_committed_without_outputs_and_small(path):
    nb = _read(path)
    with_outputs = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not with_outputs, f"{_id(path)}: cells {with_outputs} have outputs; clear them before committing"
    assert path.stat().st_size < MAX_BYTES, f"{_id(path)} is {path.stat().st_size} bytes"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


def test_names_are_numbered_snake_case_and_stems_match():
    for path in ALL:
        assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), path.name
    lesson_stems = {p.name for p in LESSONS}
    for path in (ROOT / "solutions").glob("*.ipynb"):
        assert path.name in lesson_stems, f"solutions/{path.name} has no lesson of the same name"


@pytest.mark.parametrize("path", LESSONS, ids=_id)
def test_lesson_has_the_course_shape(path):
    nb = _read(path)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "starts with a title"
    assert re.search(r"(?i)learning objectives|in this (notebook|lesson) you will", nb.cells[0].source), \
        f"{_id(path)}: the first cell states learning objectives"
    setup = [s for s in code if "setup_notebook(" in s]
    assert len(setup) == 1, f"{_id(path)}: exactly one setup cell calls setup_notebook()"
    assert any(s.lstrip().startswith("# Check") for s in code), f"{_id(path)}: has visible '# Check' cells"
    for heading in ("## Summary", "## Exercises", "## References"):
        assert heading in markdown, f"{_id(path)}: missing '{heading}'"
    assert markdown.rfind("## Summary") > len(markdown) * 0.6, f"{_id(path)}: the summary comes at the end"
    # no pasted training loops: optimisation steps happen in mmcourse.train.fit
    for s in code:
        assert not re.search(r"\.step\(\)", s) or "def " in s or "# inline once" in s, \
            f"{_id(path)}: an optimiser step outside mmcourse.train.fit:\n{s[:200]}"


@pytest.mark.parametrize("path", sorted((ROOT / "solutions").glob("*.ipynb")), ids=_id)
def test_every_exercise_is_followed_by_a_check(path):
    nb = _read(path)
    cells = nb.cells
    for i, cell in enumerate(cells):
        if cell.cell_type == "code" and "### BEGIN SOLUTION" in cell.source:
            following = cells[i + 1: i + 4]
            assert any("check" in c.metadata.get("tags", []) for c in following), \
                f"{_id(path)}: the exercise in cell {i} has no check cell (tagged 'check') right after it"
