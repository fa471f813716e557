"""The grader over a folder of fabricated submissions of a tiny fixture assignment.

`tests/fixtures/solutions/99_demo.ipynb` has two exercises checked with `mmcourse.checks` (1 and
2 points) and one hidden test (1 point). The submissions are made from its generated exercise:
right, partly wrong (with a tampered check cell and an answer hard-coded to the visible case),
a syntax error, endless loops (inside the checked function, at top level while printing without
end, and one that swallows the interrupt), a kernel that exits, deleted cells, an untouched exercise, a renamed file, the
wrong notebook, an empty file and invalid JSON. One grading run produces the exact CSV below.
"""
from __future__ import annotations

import csv
import hashlib
import io
from contextlib import redirect_stdout

import nbformat
import pytest

import mmcourse.grade as grade
from conftest import ROOT
from mmcourse.checks.core import CHECK_MIMETYPE
from mmcourse.exercises import make_exercise

FIXTURES = ROOT / "tests" / "fixtures" / "solutions"
SOLUTION = FIXTURES / "99_demo.ipynb"
CELL_TIMEOUT = "4"  # seconds; every fixture cell takes well under 1 s

NOT_JSON = "not a valid notebook (Notebook does not appear to be JSON: '{\"cells\": [oops')"
NOT_THIS = "not a notebook of this assignment: no cell of 99_demo.ipynb in it"
NOT_ATTEMPTED = "not attempted: the exercise still raises NotImplementedError"
DOUBLE_OK, MEAN_OK = "double: doubles 2 numbers", "mean: averages a list of 4 numbers"
LOOP = "NameError: name 'mean' is not defined (an earlier cell failed: cell 6 timed out after 4 s (an infinite loop?))"
STUCK = "not run: cell 3 ran past its time limit and could not be interrupted"
EXPECTED = [
    ("alice", "check-double", "True", "1", DOUBLE_OK),
    ("alice", "check-mean", "True", "2", MEAN_OK),
    ("alice", "hidden-mean", "True", "1", "passed"),
    ("bob", "check-double", "False", "0", "double: squared instead of doubled (case: x=3) Hint: 2 * x, not x ** 2"),
    ("bob", "check-mean", "True", "2", MEAN_OK),
    ("bob", "hidden-mean", "False", "0", "AssertionError: mean([1, 3]) should be 2"),
    ("carol", "check-double", "False", "0", "NameError: name 'double' is not defined "
                                            "(an earlier cell failed: cell 3, SyntaxError: expected ':' (line 1))"),
    ("carol", "check-mean", "True", "2", MEAN_OK),
    ("carol", "hidden-mean", "True", "1", "passed"),
    ("dave", "check-double", "False", "0", "double: your code did not finish: it took longer than 1 s (an infinite "
                                           "loop?) (case: x=3) Hint: look for a loop whose condition never becomes false"),
    ("dave", "check-mean", "False", "0", LOOP),
    ("dave", "hidden-mean", "False", "0", LOOP),
    ("erin", "check-double", "True", "1", DOUBLE_OK),
    ("erin", "check-mean", "False", "0", "not run: the kernel died in cell 6"),
    ("erin", "hidden-mean", "False", "0", "not run: the kernel died in cell 6"),
    ("frank", "check-double", "True", "1", DOUBLE_OK),
    ("frank", "check-mean", "True", "2", MEAN_OK),
    ("frank", "hidden-mean", "True", "1", "passed"),
    ("gina", "check-double", "False", "0", "empty file"),
    ("gina", "check-mean", "False", "0", "empty file"),
    ("gina", "hidden-mean", "False", "0", "empty file"),
    ("hank", "check-double", "False", "0", NOT_JSON),
    ("hank", "check-mean", "False", "0", NOT_JSON),
    ("hank", "hidden-mean", "False", "0", NOT_JSON),
    ("ivan", "check-double", "False", "0", "missing cell"),
    ("ivan", "check-mean", "True", "2", MEAN_OK),
    ("ivan", "hidden-mean", "False", "0", "missing cell"),
    ("judy", "check-double", "False", "0", NOT_THIS),
    ("judy", "check-mean", "False", "0", NOT_THIS),
    ("judy", "hidden-mean", "False", "0", NOT_THIS),
    ("kim", "check-double", "False", "0", NOT_ATTEMPTED),
    ("kim", "check-mean", "False", "0", NOT_ATTEMPTED),
    ("kim", "hidden-mean", "False", "0", NOT_ATTEMPTED),
    ("zed", "check-double", "False", "0", STUCK),
    ("zed", "check-mean", "False", "0", STUCK),
    ("zed", "hidden-mean", "False", "0", STUCK),
]


def exercise_nb() -> nbformat.NotebookNode:
    return make_exercise(nbformat.read(str(SOLUTION), as_version=4), SOLUTION.name)


def submission(**sources: str) -> nbformat.NotebookNode:
    """The generated exercise with the solution filled in, then `sources` (by cell id, `-` as `_`) on top."""
    solution = {c.id: c.source for c in nbformat.read(str(SOLUTION), as_version=4).cells}
    nb = exercise_nb()
    for cell in nb.cells:
        key = cell.id.replace("-", "_")
        if key in sources:
            cell.source = sources[key]
        elif cell.id in ("double", "mean"):
            cell.source = solution[cell.id]
    return nb


def write_submissions(root):
    def write(rel, nb):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(path))

    write("alice/99_demo.ipynb", submission(why_len="Why divide by `len(xs)` and not by a fixed number?\n\n"
                                                    "Because the number of items changes."))
    (root / "alice" / ".ipynb_checkpoints").mkdir()
    (root / "alice" / ".ipynb_checkpoints" / "99_demo-checkpoint.ipynb").write_text("not even JSON")
    write("bob/99_demo.ipynb", submission(double="def double(x):\n    return x ** 2",
                                          check_double="print('looks fine to me')",  # the grader restores it
                                          mean="def mean(xs):\n    return 3.0"))  # right only on the visible case
    write("carol/99_demo.ipynb", submission(double="def double(x)\n    return 2 * x"))
    write("dave/99_demo.ipynb", submission(double="def double(x):\n    while True:\n        pass",
                                           mean="while True:\n    print('x' * 100)"))  # floods, then times out
    write("erin/99_demo.ipynb", submission(mean="import os\nos._exit(1)"))
    write("frank.ipynb", submission())  # renamed, at the top level: graded by its cells
    (root / "gina").mkdir()
    (root / "gina" / "99_demo.ipynb").write_text("")
    (root / "hank.ipynb").write_text('{"cells": [oops')
    ivan = submission()
    ivan.cells = [c for c in ivan.cells if c.id not in ("check-double", "hidden-mean")]
    write("ivan/99_demo.ipynb", ivan)
    write("judy/99_demo_final.ipynb", nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('hi')")]))
    write("kim/99_demo.ipynb", exercise_nb())
    write("zed/99_demo.ipynb", submission(double="import time\nwhile True:\n    try:\n        time.sleep(0.1)\n"
                                                 "    except:\n        pass"))


def digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Grade the fabricated class once, three at a time (about 20 s: a kernel per gradable submission)."""
    root = tmp_path_factory.mktemp("submissions")
    out_dir = tmp_path_factory.mktemp("out")
    write_submissions(root)
    before = digest(root)
    mp = pytest.MonkeyPatch()
    mp.setattr(grade, "PROBE_TIMEOUT", 2)  # zed's kernel ignores interrupts: give up on it quickly
    mp.setattr(grade, "IOPUB_TIMEOUT", 4)  # (and on its idle message)
    mp.delenv("MMCOURSE_CHECK_TIMEOUT", raising=False)
    log = io.StringIO()
    try:
        with redirect_stdout(log):
            code = grade.main([str(root), "--assignment", "99", "--solutions", str(FIXTURES),
                               "--out", str(out_dir / "results.csv"), "--timeout", CELL_TIMEOUT, "--jobs", "3",
                               "--executed", str(out_dir / "executed"), "--feedback", str(out_dir / "feedback"),
                               "--answers", str(out_dir / "answers.md")])
    finally:
        mp.undo()
    with open(out_dir / "results.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return {"code": code, "rows": rows, "log": log.getvalue(), "before": before, "after": digest(root),
            "executed": out_dir / "executed", "feedback": out_dir / "feedback", "answers": out_dir / "answers.md"}


@pytest.mark.slow
def test_csv_rows_are_exactly_as_expected(graded):
    assert graded["code"] == 0
    assert graded["rows"][0] == ["student", "exercise", "passed", "points", "message"]
    for got, want in zip(graded["rows"][1:], EXPECTED):
        assert tuple(got) == want
    assert len(graded["rows"]) == len(EXPECTED) + 1


@pytest.mark.slow
def test_submissions_are_never_modified(graded):
    assert graded["after"] == graded["before"]


@pytest.mark.slow
def test_summary_table(graded):
    log = graded["log"]
    assert "Grading 12 submission(s) of 99_demo.ipynb: 3 graded cells, 4 points" in log
    table = log[log.index("student "):log.index("exercise ")]
    score = {parts[0]: parts[1] for parts in map(str.split, table.splitlines()[1:]) if parts}
    assert score == {"alice": "4/4", "bob": "2/4", "carol": "3/4", "dave": "0/4", "erin": "1/4", "frank": "4/4",
                     "gina": "0/4", "hank": "0/4", "ivan": "2/4", "judy": "0/4", "kim": "0/4", "zed": "0/4"}
    assert "check-double       1  3/12 (25%)" in log
    assert "check-mean         2  5/12 (42%)" in log
    assert "hidden-mean        1  3/12 (25%)" in log


@pytest.mark.slow
def test_executed_notebooks_keep_the_check_results(graded):
    alice = nbformat.read(str(graded["executed"] / "alice.ipynb"), as_version=4)
    check = next(c for c in alice.cells if c.id == "check-double")
    results = [o["data"][CHECK_MIMETYPE] for o in check.outputs if CHECK_MIMETYPE in o.get("data", {})]
    assert results == [{"name": "double", "passed": True, "message": "doubles 2 numbers", "hint": ""}]
    assert len(check.outputs) == 1  # the returned CheckResult is not shown a second time
    hidden = next(c for c in alice.cells if c.id == "hidden-mean")
    assert "assert mean([1, 3]) == 2" in hidden.source  # restored from the solution
    assert not (graded["executed"] / "gina.ipynb").exists()
    dave = nbformat.read(str(graded["executed"] / "dave.ipynb"), as_version=4)
    flood = next(c for c in dave.cells if c.id == "mean").outputs
    assert [(o.output_type, len(o.get("text", ""))) for o in flood[:2]] == [("stream", grade.MAX_OUTPUT_CHARS),
                                                                           ("stream", 54)]
    assert flood[0].text.startswith("x" * 100 + "\n") and "output cut after 100000 characters" in flood[1].text


@pytest.mark.slow
def test_feedback_files_to_hand_back(graded):
    assert (graded["feedback"] / "bob.md").read_text(encoding="utf-8").splitlines() == [
        "# 99_demo: bob", "", "**2 / 4 points**", "",
        "| exercise | points | result |", "|---|---|---|",
        "| check-double | 0/1 | ✗ double: squared instead of doubled (case: x=3) Hint: 2 * x, not x ** 2 |",
        "| check-mean | 2/2 | ✓ mean: averages a list of 4 numbers |",
        "| hidden-mean | 0/1 | ✗ AssertionError: mean([1, 3]) should be 2 |"]
    gina = (graded["feedback"] / "gina.md").read_text(encoding="utf-8")
    assert "Your notebook could not be graded: empty file." in gina and "**0 / 4 points**" in gina
    assert sorted(p.stem for p in graded["feedback"].iterdir()) == sorted({row[0] for row in graded["rows"][1:]})


@pytest.mark.slow
def test_written_answers_collected_for_reading(graded):
    page = (graded["answers"]).read_text(encoding="utf-8")
    assert page.startswith("# Written answers: 99_demo\n\n## Question 1: Why divide by `len(xs)` and not by a fixed number?")
    assert "### alice\n\n> Because the number of items changes.\n" in page
    assert "### bob\n\n> (no answer)\n" in page and "### gina\n\n> (no notebook)\n" in page
    assert "### ivan\n\n> (no answer)\n" in page
    assert "1 written answer(s) per student are not graded automatically: collected in" in graded["log"]


# --------------------------------------------------------------------------- fast parts, no kernel


def test_grade_cells_of_the_fixture():
    cells = grade.grade_cells(nbformat.read(str(SOLUTION), as_version=4))
    assert [(c.grade_id, c.points, c.label) for c in cells] == [
        ("check-double", 1, "check-double"), ("check-mean", 2, "check-mean"), ("hidden-mean", 1, "hidden-mean")]
    assert "### BEGIN HIDDEN TESTS" in cells[2].source


def test_generated_cell_ids_get_readable_labels():
    cells = [nbformat.v4.new_code_cell("# Check: the attention mask\ncheck_attention_mask(attention_mask)"),
             nbformat.v4.new_code_cell("check_pool_eot(pool_eot)"),
             nbformat.v4.new_code_cell("check_pool_eot(pool_eot)"),
             nbformat.v4.new_code_cell("assert 1 + 1 == 2")]
    for cell, cell_id in zip(cells, ["3fc37749", "27746048", "0f9e6c2a-8a33-4b5e-9d2c-1c7b8a3f5e21", "5a375c8f"]):
        cell.id, cell.metadata["tags"] = cell_id, ["check"]
    labels = [c.label for c in grade.grade_cells(nbformat.v4.new_notebook(cells=cells))]
    assert labels == ["the attention mask", "check_pool_eot [27746048]",
                      "check_pool_eot [0f9e6c2a-8a33-4b5e-9d2c-1c7b8a3f5e21]", "5a375c8f"]


def test_prepare_restores_checks_and_hidden_tests_and_names_missing_cells():
    cells = grade.grade_cells(nbformat.read(str(SOLUTION), as_version=4))
    nb = submission(check_double="pass")
    nb.cells = [c for c in nb.cells if c.id != "check-mean"]
    hidden = next(c for c in nb.cells if c.id == "hidden-mean")
    hidden.cell_type = "markdown"  # a student turned the (empty) hidden-test cell into markdown
    missing = grade.prepare(nb, cells)
    assert missing == {"check-mean"}
    by_id = {c.id: c.source for c in nb.cells}
    assert by_id["check-double"] == cells[0].source and by_id["hidden-mean"] == cells[2].source
    assert hidden.cell_type == "code"


@pytest.mark.parametrize("content, problem", [
    (b"", "empty file"),
    (b"  \n", "empty file"),
    (b"\x89PNG\x00\xff", "not a valid notebook (not UTF-8 text)"),
    (b"[]", "not a valid notebook ('list' object has no attribute 'get')"),
    (b'{"cells": ["x"], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}', "not a valid notebook ("),
    (b'{"cells": [{"id": "a", "cell_type": "code", "source": 1, "metadata": {}, "outputs": []}], "metadata": {}, '
     b'"nbformat": 4, "nbformat_minor": 5}', "not a valid notebook (cell 0 is malformed)"),
])
def test_broken_files_are_named(tmp_path, content, problem):
    path = tmp_path / "x.ipynb"
    path.write_bytes(content)
    nb, why = grade._read_notebook(path)
    assert nb is None and why.startswith(problem)


def test_find_solution(tmp_path):
    assert grade.find_solution(FIXTURES, "99") == SOLUTION
    assert grade.find_solution(FIXTURES, "99_demo") == SOLUTION
    with pytest.raises(ValueError, match=r"expected one solution notebook 07_\*.ipynb .* found nothing"):
        grade.find_solution(FIXTURES, "7")


def test_student_names_and_choice_of_notebook(tmp_path):
    (tmp_path / "ann").mkdir()
    nbformat.write(submission(), str(tmp_path / "ann" / "scratch.ipynb"))  # renamed copy: also hers
    nbformat.write(submission(), str(tmp_path / "ann" / "99_demo.ipynb"))
    nbformat.write(submission(), str(tmp_path / "ben_99_demo.ipynb"))
    ids = {c.id for c in nbformat.read(str(SOLUTION), as_version=4).cells}
    subs = grade.find_submissions(tmp_path, SOLUTION, ids)
    assert [(s.student, s.path.name, s.problem, [p.name for p in s.ignored]) for s in subs] == [
        ("ann", "99_demo.ipynb", "", ["scratch.ipynb"]), ("ben", "ben_99_demo.ipynb", "", [])]


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert grade.main([str(tmp_path / "nope"), "--assignment", "99", "--solutions", str(FIXTURES)]) == 2
    assert grade.main([str(tmp_path), "--assignment", "42", "--solutions", str(FIXTURES)]) == 2
    assert "42_*.ipynb" in capsys.readouterr().err


def test_a_folder_with_no_submission_grades_nothing(tmp_path, capsys):
    out = tmp_path / "r.csv"
    (tmp_path / "subs").mkdir()
    assert grade.main([str(tmp_path / "subs"), "--assignment", "99", "--solutions", str(FIXTURES),
                       "--out", str(out)]) == 0
    assert out.read_text().splitlines() == ["student,exercise,passed,points,message"]
    assert "Grading 0 submission(s) of 99_demo.ipynb" in capsys.readouterr().out


@pytest.mark.slow
def test_total_time_limit_stops_the_notebook(tmp_path):
    path = tmp_path / "slow" / "99_demo.ipynb"
    path.parent.mkdir()
    nbformat.write(submission(double="import time\ntime.sleep(30)"), str(path))
    cells = grade.grade_cells(nbformat.read(str(SOLUTION), as_version=4))
    rows = grade.grade_submission(grade.Submission("slow", path), cells, cell_timeout=20, total_timeout=1.5)
    assert [(r.exercise, r.passed, r.message) for r in rows] == [
        (c.grade_id, False, "not run: the notebook used up its 1.5 s time limit") for c in cells]


@pytest.mark.parametrize("error, earlier, message", [
    ({"ename": "CheckFailed", "evalue": "✗ mean: returns the sum\n  Hint: divide"}, None, "mean: returns the sum Hint: divide"),
    ({"ename": "NameError", "evalue": "name 'tau' is not defined"}, ("NotImplementedError", "cell 5, NotImplementedError"),
     "not attempted: the exercise still raises NotImplementedError"),
    ({"ename": "NameError", "evalue": "name 'f' is not defined"}, ("ZeroDivisionError", "cell 2, ZeroDivisionError: x"),
     "NameError: name 'f' is not defined (an earlier cell failed: cell 2, ZeroDivisionError: x)"),
    ({"ename": "SyntaxError", "evalue": "invalid syntax (3046216412.py, line 3)"}, None, "SyntaxError: invalid syntax (line 3)"),
    ({"ename": "ValueError", "evalue": "x" * 400}, None, "ValueError: " + "x" * 287 + "…"),
])
def test_error_messages(error, earlier, message):
    assert grade._error_message(error, earlier) == message
