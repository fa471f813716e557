"""The exercise generator: markers, metadata, staleness, and that exercises/ is up to date."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from conftest import ROOT
from mmcourse.classroom.exercises import MarkerError, Paths, generate, make_exercise, normalise_solution

SOLUTION_CODE = '''def double(x):
    """Return 2x."""
    ### BEGIN SOLUTION
    y = x + x
    return y
    ### END SOLUTION'''


def _solution_nb():
    check = new_code_cell("### BEGIN HIDDEN TESTS\nassert double(2) == 4\n### END HIDDEN TESTS\nassert double(1) == 2",
                          metadata={"tags": ["check", "points=3"]})
    answer = new_markdown_cell("Why?\n\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION")
    code = new_code_cell(SOLUTION_CODE, outputs=[], execution_count=7)
    nb = new_notebook(cells=[new_markdown_cell("# Demo"), code, check, answer])
    return nb


def test_code_region_becomes_stub_at_its_indentation():
    ex = make_exercise(_solution_nb(), "demo.ipynb")
    assert ex.cells[1].source == 'def double(x):\n    """Return 2x."""\n    # YOUR CODE HERE\n    raise NotImplementedError()'


def test_hidden_tests_removed_visible_kept():
    ex = make_exercise(_solution_nb(), "demo.ipynb")
    assert ex.cells[2].source == "assert double(1) == 2"


def test_markdown_region_becomes_answer_here():
    ex = make_exercise(_solution_nb(), "demo.ipynb")
    assert ex.cells[3].source == "Why?\n\nYOUR ANSWER HERE"


def test_nbgrader_metadata_and_ids_kept():
    sol = _solution_nb()
    ex = make_exercise(sol, "demo.ipynb")
    assert [c.id for c in ex.cells] == [c.id for c in sol.cells]
    assert "nbgrader" not in ex.cells[0].metadata
    assert ex.cells[1].metadata["nbgrader"] == {"grade": False, "grade_id": sol.cells[1].id, "locked": False,
                                                "schema_version": 3, "solution": True, "task": False}
    grade = ex.cells[2].metadata["nbgrader"]
    assert grade["grade"] and grade["locked"] and grade["points"] == 3 and not grade["solution"]
    assert normalise_solution(sol).cells[2].metadata["nbgrader"] == grade


def test_outputs_cleared():
    sol = _solution_nb()
    sol.cells[1].outputs = [nbformat.v4.new_output("stream", text="hi")]
    ex = make_exercise(sol)
    assert ex.cells[1].outputs == [] and ex.cells[1].execution_count is None


def test_exercise_runs_to_not_implemented():
    ex = make_exercise(_solution_nb())
    namespace: dict = {}
    exec(ex.cells[1].source, namespace)
    with pytest.raises(NotImplementedError):
        namespace["double"](2)


@pytest.mark.parametrize("source, problem", [
    ("### BEGIN SOLUTION\nx = 1", "never closed"),
    ("x = 1\n### END SOLUTION", "without"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "inside another region"),
])
def test_unbalanced_markers_name_the_cell(source, problem):
    nb = new_notebook(cells=[new_code_cell("pass"), new_code_cell(source)])
    with pytest.raises(MarkerError, match=rf"bad\.ipynb, cell 1.*{problem}"):
        make_exercise(nb, "bad.ipynb")


def test_a_solution_without_exercises_is_an_error():
    with pytest.raises(MarkerError, match="no '### BEGIN SOLUTION' region"):
        make_exercise(new_notebook(cells=[new_code_cell("x = 1")]), "empty.ipynb")


def _tree(tmp_path):
    paths = Paths(tmp_path / "solutions", tmp_path / "exercises")
    paths.solutions.mkdir()
    nbformat.write(_solution_nb(), str(paths.solutions / "01_demo.ipynb"))
    return paths


def test_check_mode_names_stale_files_and_writes_nothing(tmp_path):
    paths = _tree(tmp_path)
    out = io.StringIO()
    stale = generate(paths, check=True, out=out)
    assert stale == ["solutions/01_demo.ipynb", "exercises/01_demo.ipynb"]
    assert not paths.exercises.exists()
    assert "stale: exercises/01_demo.ipynb" in out.getvalue()


def test_generate_then_check_is_clean_and_edits_are_caught(tmp_path):
    paths = _tree(tmp_path)
    generate(paths, out=io.StringIO())
    assert generate(paths, check=True, out=io.StringIO()) == []
    # a hand edit of an exercise is caught
    ex = paths.exercises / "01_demo.ipynb"
    ex.write_text(ex.read_text().replace("YOUR ANSWER HERE", "my answer"))
    assert generate(paths, check=True, out=io.StringIO()) == ["exercises/01_demo.ipynb"]
    # an exercise whose solution was deleted is stale
    generate(paths, out=io.StringIO())
    (paths.exercises / "02_orphan.ipynb").write_text("{}")
    assert generate(paths, check=True, out=io.StringIO()) == ["exercises/02_orphan.ipynb"]


def test_repository_exercises_are_up_to_date():
    """exercises/ must be regenerated (`python -m mmcourse.classroom.exercises`) after editing solutions/."""
    proc = subprocess.run([sys.executable, "-m", "mmcourse.classroom.exercises", "--check"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- notebooks from other tools, exact copies


def test_cells_without_markers_are_copied_byte_for_byte():
    sol = _solution_nb()
    odd = "s = 'page\x0cbreak'\nt = 'a\x0bb\x1cc\x1dd\x1ee\x85f\u2028g\u2029h'\r\nprint(s)\n"
    sol.cells.insert(1, new_code_cell(odd))
    sol.cells.insert(2, new_markdown_cell("ends with a newline\n"))
    ex = make_exercise(sol, "demo.ipynb")
    assert ex.cells[1].source == odd and ex.cells[2].source == "ends with a newline\n"
    namespace: dict = {}
    exec(ex.cells[1].source, namespace)  # still valid Python (splitlines made it a SyntaxError)
    assert namespace["s"] == "page\x0cbreak"


def test_marker_cells_split_on_newline_only():
    sol = new_notebook(cells=[new_code_cell("def f():\n    ### BEGIN SOLUTION\n    return 'x\x0cy'\n    ### END SOLUTION\n"
                                            "g = 'p\u2028q'")])
    ex = make_exercise(sol, "demo.ipynb")
    assert ex.cells[0].source == "def f():\n    # YOUR CODE HERE\n    raise NotImplementedError()\ng = 'p\u2028q'"


def test_graded_cells_are_locked_in_the_exercise_only():
    sol = _solution_nb()
    ex = make_exercise(sol, "demo.ipynb")
    assert ex.cells[2].metadata["deletable"] is False and ex.cells[2].metadata["editable"] is False
    assert "deletable" not in ex.cells[1].metadata  # the answer cell stays editable
    assert "deletable" not in normalise_solution(sol).cells[2].metadata  # authors edit solutions


def test_repository_exercises_lock_every_check_and_hidden_test_cell():
    for path in sorted((ROOT / "exercises").glob("*.ipynb")):
        for cell in nbformat.read(str(path), as_version=4).cells:
            if cell.metadata.get("nbgrader", {}).get("grade"):
                assert cell.metadata["deletable"] is False and cell.metadata["editable"] is False, (path.name, cell.id)
                assert "BEGIN HIDDEN TESTS" not in cell.source


def _as_nbformat_40(nb) -> str:
    raw = json.loads(nbformat.writes(nb))
    raw["nbformat_minor"] = 0
    for cell in raw["cells"]:
        cell.pop("id", None)
    return json.dumps(raw)


def test_a_solution_saved_as_nbformat_40_is_accepted(tmp_path):
    paths = Paths(tmp_path / "solutions", tmp_path / "exercises")
    paths.solutions.mkdir()
    (paths.solutions / "01_demo.ipynb").write_text(_as_nbformat_40(_solution_nb()))
    assert generate(paths, out=io.StringIO()) == ["solutions/01_demo.ipynb", "exercises/01_demo.ipynb"]
    ex = nbformat.read(str(paths.exercises / "01_demo.ipynb"), as_version=4)
    nbformat.validate(ex)
    ids = [c.id for c in ex.cells]
    assert len(set(ids)) == 4 and ex.cells[2].metadata["nbgrader"]["grade_id"] == ids[2]
    assert generate(paths, check=True, out=io.StringIO()) == []  # the ids are stable: nothing is stale


def test_an_unreadable_solution_is_one_line_and_exit_2(tmp_path):
    solutions = tmp_path / "solutions"
    solutions.mkdir()
    (solutions / "01_demo.ipynb").write_text('{"cells": [')
    proc = subprocess.run([sys.executable, "-m", "mmcourse.classroom.exercises", "--solutions", str(solutions),
                           "--exercises", str(tmp_path / "exercises")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and "01_demo.ipynb: not a valid notebook" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
