"""Notebooks that run: lessons and solutions under nbval, exercises stop at their first blank.

Lessons (`notebooks/`) and solutions (`solutions/`) are collected by nbval itself (`--nbval-lax`
in pyproject.toml): every cell runs in one kernel per notebook, a failing cell fails as
`notebooks/NN_x.ipynb::Cell K`, and the output of every cell marked `# NBVAL_CHECK_OUTPUT` must
equal the committed one. Check one lesson with `pytest notebooks/04_training_clip.ipynb`.

Here: the exercise notebooks (which must fail, so nbval cannot run them), and tests that show
nbval and the staleness check catch what they are meant to catch.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import nbformat
import pytest

from conftest import ROOT
from mmcourse.classroom.course import execute_lesson, stale_cells
from mmcourse.classroom.exercises import CODE_STUB
from mmcourse.classroom.notebooks import NotebookCellError, execute_notebook

LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
EXERCISES = sorted((ROOT / "exercises").glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT = 300


def _id(path):
    return f"{path.parent.name}/{path.name}"


def test_there_are_notebooks():
    assert LESSONS, "no lesson notebooks found in notebooks/"
    assert [p.name for p in EXERCISES] == [p.name for p in SOLUTIONS]


def test_nbval_collects_every_lesson_and_solution():
    """`make test` (plain `pytest`) reaches every lesson and solution through nbval."""
    config = (ROOT / "pyproject.toml").read_text()
    assert '"notebooks", "solutions"' in config and "--nbval-lax" in config
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          "notebooks", "solutions"], cwd=ROOT, capture_output=True, text=True, timeout=300).stdout
    for path in LESSONS + SOLUTIONS:
        assert f"{path.parent.name}/{path.name}::Cell 0" in out, f"nbval does not collect {_id(path)}"


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


# ------------------------------------------------------------------ the checks catch what they should

def _lesson(tmp_path):
    """A two-cell lesson whose quoted figure comes from library code (here a settings file, as a
    lesson's number comes from `mmcourse`): executed and stamped as `make course` does."""
    (tmp_path / "settings.json").write_text(json.dumps({"epochs": 30}))
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [
        nbformat.v4.new_markdown_cell("# 99 · A lesson\n\nThe loss after training is about 0.03 nats."),
        nbformat.v4.new_code_cell('import json\nepochs = json.load(open("settings.json"))["epochs"]'),
        nbformat.v4.new_code_cell(f'# NBVAL_CHECK_OUTPUT\nprint(f"loss after {{epochs}} epochs: {{1 / epochs:.3f}} nats")'),
        nbformat.v4.new_code_cell('import time\nprint(f"took {time.perf_counter() % 1:.3f} s")  # unmarked: not compared'),
    ]
    path = tmp_path / "99_lesson.ipynb"
    nbformat.write(nb, str(path))
    execute_lesson(path, cache=tmp_path / "cache")
    return path


def _nbval(path):
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--rootdir", str(path.parent),
                           "-c", str(ROOT / "pyproject.toml"), str(path)],
                          cwd=path.parent, capture_output=True, text=True, timeout=600)


@pytest.mark.notebook
@pytest.mark.slow
def test_nbval_fails_when_a_quoted_figure_changes(tmp_path):
    """One more training epoch (a change outside the notebook) changes a figure the prose quotes:
    nbval fails naming the notebook and the cell; unmarked output (a time) may change freely."""
    path = _lesson(tmp_path)
    assert not stale_cells(nbformat.read(str(path), as_version=4))
    ok = _nbval(path)
    assert ok.returncode == 0, ok.stdout[-3000:]
    (tmp_path / "settings.json").write_text(json.dumps({"epochs": 31}))
    changed = _nbval(path)
    assert changed.returncode != 0
    assert "99_lesson.ipynb::Cell 1" in changed.stdout, changed.stdout[-3000:]
    assert "0.033 nats" in changed.stdout and "0.032 nats" in changed.stdout  # expected and got


def test_staleness_check_names_an_edited_cell():
    """A lesson cell edited without re-running is named (lesson 04 here; every lesson is checked in
    test_notebook_structure.py)."""
    nb = nbformat.read(str(ROOT / "notebooks" / "04_training_clip.ipynb"), as_version=4)
    assert stale_cells(nb) == []
    code = [c for c in nb.cells if c.cell_type == "code"]
    k = next(i for i, c in enumerate(code) if "digits_dataloaders(tokenizer, batch_size=128)" in c.source)
    code[k].source = code[k].source.replace("batch_size=128", "batch_size=256")  # edited, not re-run
    problems = stale_cells(nb)
    assert len(problems) == 1 and problems[0].startswith(f"Cell {k} (`") and "edited after it was run" in problems[0], problems
    nb.cells.insert(0, nbformat.v4.new_code_cell("print('new')"))  # a cell added, not run
    assert stale_cells(nb)[0] == "Cell 0 (`print('new')`) was never executed by `make course`", stale_cells(nb)


def test_course_cli_check_reports_stale_lessons(tmp_path):
    nb = nbformat.read(str(ROOT / "notebooks" / "00_welcome.ipynb"), as_version=4)
    next(c for c in nb.cells if c.cell_type == "code").source += "\n# edited"
    path = tmp_path / "00_welcome.ipynb"
    nbformat.write(nb, str(path))
    run = subprocess.run([sys.executable, "-m", "mmcourse.classroom.course", "--check", str(path)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 1 and "00_welcome.ipynb" in run.stdout and "Cell 0" in run.stdout, run.stdout
    ok = subprocess.run([sys.executable, "-m", "mmcourse.classroom.course", "--check", *map(str, LESSONS)],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout
