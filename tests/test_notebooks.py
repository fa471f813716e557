"""Every notebook runs top to bottom: lessons and solutions clean, exercises stop at a blank.

A failing cell fails the test with the notebook, the cell number, its first line and the error
(`mmcourse.notebooks.NotebookCellError`). Notebooks assert their own key results in check cells,
so nothing here compares outputs (which vary with the platform and the seed of plots).
"""
from __future__ import annotations

import time

import nbformat
import pytest

from conftest import ROOT
from mmcourse.exercises import CODE_STUB
from mmcourse.notebooks import NotebookCellError, execute_notebook

LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
EXERCISES = sorted((ROOT / "exercises").glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT = 300


def _id(path):
    return f"{path.parent.name}/{path.name}"


def test_there_are_notebooks():
    assert LESSONS, "no lesson notebooks found in notebooks/"
    assert [p.name for p in EXERCISES] == [p.name for p in SOLUTIONS]


@pytest.mark.notebook
@pytest.mark.parametrize("path", LESSONS + SOLUTIONS, ids=_id)
def test_notebook_runs_clean(path):
    t0 = time.perf_counter()
    report = execute_notebook(path, timeout=CELL_TIMEOUT, name=_id(path))
    slowest = max(range(len(report.cell_seconds)), key=report.cell_seconds.__getitem__)
    print(f"{_id(path)}: {report.seconds:.1f} s (slowest cell {slowest}: {report.cell_seconds[slowest]:.1f} s)")
    assert time.perf_counter() - t0 > 0


def first_blank(nb) -> int:
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and CODE_STUB[1] in cell.source:
            return index
    raise AssertionError("exercise notebook has no blank")


@pytest.mark.notebook
@pytest.mark.parametrize("path", EXERCISES, ids=_id)
def test_exercise_fails_first_at_a_blank(path):
    """As shipped, an exercise runs until the first blank is used, and fails there with the
    blank's NotImplementedError — never earlier, with some other error."""
    nb = nbformat.read(str(path), as_version=4)
    blank = first_blank(nb)
    with pytest.raises(NotebookCellError) as info:
        execute_notebook(path, timeout=CELL_TIMEOUT, name=_id(path))
    err = info.value
    assert err.ename == "NotImplementedError", f"{_id(path)} failed before any blank: {err}"
    assert err.index >= blank, f"{_id(path)}: cell {err.index} raised before the first blank (cell {blank})"
