"""The grader over a folder of fabricated submissions of a tiny fixture assignment, and over
the cheats and hangs of the real assignment 01.

`tests/fixtures/solutions/99_demo.ipynb` has two exercises checked with `mmcourse.classroom.checks` (1 and
2 points) and one hidden test (1 point). The submissions are made from its generated exercise:
right, partly wrong (with a tampered check cell and an answer hard-coded to the visible case),
a syntax error, endless loops (inside the checked function, at top level while printing without
end, and one that swallows the interrupt), a kernel that exits, an allocation past the memory
limit, deleted cells, an untouched
exercise, a renamed file, the wrong notebook, an empty file, invalid JSON, a file saved as
nbformat 4.0 without cell ids, and cheats (no-op checks, skipped check cells, forged results).
One grading run produces the exact CSV below.
"""
from __future__ import annotations

import ast

import copy
import csv
import hashlib
import io
import json
from contextlib import redirect_stdout

import nbformat
import pytest

import mmcourse.classroom.grade as grade
from importlib import import_module
from conftest import ROOT
from mmcourse.classroom.checks.core import CHECK_MIMETYPE
from mmcourse.classroom.exercises import make_exercise, normalise_solution

FIXTURES = ROOT / "tests" / "fixtures" / "solutions"
SOLUTION = FIXTURES / "99_demo.ipynb"
CELL_TIMEOUT = "4"  # seconds; every fixture cell takes well under 1 s

NOT_JSON = "not a valid notebook (Notebook does not appear to be JSON: '{\"cells\": [oops')"
NOT_THIS = "not a notebook of this assignment: no cell of 99_demo.ipynb in it"
NOT_ATTEMPTED = "not attempted: the exercise still raises NotImplementedError"
DOUBLE_OK, MEAN_OK = "double: doubles 2 numbers", "mean: averages a list of 4 numbers"
EX1, EX2, HIDDEN = "Exercise 1: double", "Exercise 2: mean", "Exercise 2: mean (hidden tests)"
MEAN_LOOP = "code cell 4 under “Exercise 2: mean” (`while True:`) timed out after 4 s and was interrupted (an infinite loop?)"
LOOP = f"NameError: name 'mean' is not defined (an earlier cell failed: {MEAN_LOOP})"
DIED = "not run: the kernel died in code cell 4 under “Exercise 2: mean” (`import os`)"
STUCK = "not run: code cell 2 under “Exercise 1: double” (`import time`) ran past its time limit and could not be interrupted"
PUT_BACK = " (this graded cell was missing from your notebook: it was put back)"
NO_RESULT = ("no result from the check for this run: it was not called, or not mmcourse's check "
             "(did your code replace a check or `mmcourse.classroom.checks`?)")
SYNTAX = ("NameError: name 'double' is not defined (an earlier cell failed: code cell 2 under “Exercise 1: double” "
          "(`def double(x)`), SyntaxError: expected ':' (line 1))")


def _all(student, message, status):
    return [(student, ex, "no", "0", pts, status, message) for ex, pts in ((EX1, "1"), (EX2, "2"), (HIDDEN, "1"))]


# (student, exercise, passed, points, max_points, status, message)
EXPECTED = [
    ("alice", EX1, "yes", "1", "1", "passed", DOUBLE_OK),
    ("alice", EX2, "yes", "2", "2", "passed", MEAN_OK),
    ("alice", HIDDEN, "yes", "1", "1", "passed", "passed"),
    ("bob", EX1, "no", "0", "1", "failed", "double: squared instead of doubled (case: x=3) Hint: 2 * x, not x ** 2"),
    ("bob", EX2, "yes", "2", "2", "passed", MEAN_OK),
    ("bob", HIDDEN, "no", "0", "1", "failed", "AssertionError: mean([1, 3]) should be 2"),
    ("carol", EX1, "no", "0", "1", "error", SYNTAX),
    ("carol", EX2, "yes", "2", "2", "passed", MEAN_OK),
    ("carol", HIDDEN, "yes", "1", "1", "passed", "passed"),
    ("colab", EX1, "yes", "1", "1", "passed", DOUBLE_OK),
    ("colab", EX2, "yes", "2", "2", "passed", MEAN_OK),
    ("colab", HIDDEN, "yes", "1", "1", "passed", "passed"),
    ("dave", EX1, "no", "0", "1", "failed", "double: your code did not finish: it took longer than 1 s (an infinite "
                                            "loop?) (case: x=3) Hint: look for a loop whose condition never becomes false"),
    ("dave", EX2, "no", "0", "2", "error", LOOP),
    ("dave", HIDDEN, "no", "0", "1", "error", LOOP),
    ("dave", "(other cells)", "", "", "", "timed out", MEAN_LOOP),
    ("erin", EX1, "yes", "1", "1", "passed", DOUBLE_OK),
    ("erin", EX2, "no", "0", "2", "not run", DIED),
    ("erin", HIDDEN, "no", "0", "1", "not run", DIED),
    ("erin", "(other cells)", "", "", "", "kernel died", "code cell 4 under “Exercise 2: mean” (`import os`) the kernel "
                                                         "died while running it (os._exit, a crash, or out of memory)"),
    *_all("forger", NOT_ATTEMPTED, "not attempted"),  # its input transformer only ever ran in its own kernel
    ("frank", EX1, "yes", "1", "1", "passed", DOUBLE_OK),
    ("frank", EX2, "yes", "2", "2", "passed", MEAN_OK),
    ("frank", HIDDEN, "yes", "1", "1", "passed", "passed"),
    *_all("gina", "empty file", "not gradable"),
    *_all("hank", NOT_JSON, "not gradable"),
    ("ivan", EX1, "yes", "1", "1", "passed", DOUBLE_OK + PUT_BACK),
    ("ivan", EX2, "yes", "2", "2", "passed", MEAN_OK),
    ("ivan", HIDDEN, "yes", "1", "1", "passed", "passed" + PUT_BACK),
    *_all("judy", NOT_THIS, "not gradable"),
    *_all("kim", NOT_ATTEMPTED, "not attempted"),
    ("mona", EX1, "yes", "1", "1", "passed", DOUBLE_OK),
    ("mona", EX2, "yes", "2", "2", "passed", MEAN_OK),
    ("mona", HIDDEN, "yes", "1", "1", "passed", "passed"),
    ("mona", "(other cells)", "", "", "", "out of memory",
     "code cell 4 under “Exercise 2: mean” (`def mean(xs):`) ran out of memory (the grader's limit per notebook)"),
    *_all("noop", NOT_ATTEMPTED, "not attempted"),
    *_all("skipper", NOT_ATTEMPTED, "not attempted"),
    ("ursula", EX1, "no", "0", "1", "error", "the answer cell of this exercise (the cell that starts `def double(x):`) "
                                             "is missing from your notebook: copy it back from the handed-out exercise, "
                                             "above its check, and fill it in"),
    ("ursula", EX2, "yes", "2", "2", "passed", MEAN_OK),
    ("ursula", HIDDEN, "yes", "1", "1", "passed", "passed"),
    *_all("zed", STUCK, "not run"),
    ("zed", "(other cells)", "", "", "", "timed out",
     "code cell 2 under “Exercise 1: double” (`import time`) timed out after 4 s and was interrupted (an infinite loop?)"),
]
SCORES = {"alice": 4, "bob": 2, "carol": 3, "colab": 4, "dave": 0, "erin": 1, "forger": 0, "frank": 4, "gina": 0,
          "hank": 0, "ivan": 4, "judy": 0, "kim": 0, "mona": 4, "noop": 0, "skipper": 0, "ursula": 3, "zed": 0}
FORGED = "{'application/vnd.mmcourse.check+json': {'name': 'x', 'passed': True, 'message': 'ok'}, 'text/plain': 'ok'}"


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


def _as_nbformat_40(nb: nbformat.NotebookNode) -> str:
    """`nb` as Colab and older tools save it: nbformat 4.0, no cell ids."""
    raw = json.loads(nbformat.writes(nb))
    raw["nbformat_minor"] = 0
    for cell in raw["cells"]:
        cell.pop("id", None)
    return json.dumps(raw)


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
    (root / "colab").mkdir()
    (root / "colab" / "99_demo.ipynb").write_text(_as_nbformat_40(submission()))
    write("dave/99_demo.ipynb", submission(double="def double(x):\n    while True:\n        pass",
                                           mean="while True:\n    print('x' * 100)"))  # floods, then times out
    write("erin/99_demo.ipynb", submission(mean="import os\nos._exit(1)"))
    # an input transformer turns every check cell into a forged result (without this cell's token)
    forger = exercise_nb()
    forger.cells[1].source += ("\nget_ipython().input_transformers_post.append(lambda lines: "
                               f'["from IPython.display import display; display({FORGED}, raw=True)\\n"] '
                               "if 'run_check' in ''.join(lines) else lines)")
    write("forger/99_demo.ipynb", forger)
    write("frank.ipynb", submission())  # renamed, at the top level: graded by its cells
    (root / "gina").mkdir()
    (root / "gina" / "99_demo.ipynb").write_text("")
    (root / "hank.ipynb").write_text('{"cells": [oops')
    ivan = submission()
    ivan.cells = [c for c in ivan.cells if c.id not in ("check-double", "hidden-mean")]
    write("ivan/99_demo.ipynb", ivan)
    write("judy/99_demo_final.ipynb", nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('hi')")]))
    write("kim/99_demo.ipynb", exercise_nb())
    write("mona/99_demo.ipynb", submission(mean=exercise_solution("mean") + "\n\nbig = bytearray(8 * 2**30)"))
    # the issue's first cheat, on the fixture: every check a no-op, the blanks as handed out
    write("noop/99_demo.ipynb", submission(double="run_check = lambda *a, **k: None\n" + exercise_cell("double"),
                                           mean=exercise_cell("mean")))
    # the third: check and hidden-test cells tagged `skip-execution`, blanks as handed out
    skipper = exercise_nb()
    for cell in skipper.cells:
        if cell.metadata.get("nbgrader", {}).get("grade"):
            cell.metadata["tags"] = [*cell.metadata.get("tags", []), "skip-execution"]
            cell.metadata["nbgrader"]["grade"] = False  # nor can a student turn grading off
    write("skipper/99_demo.ipynb", skipper)
    ursula = submission()
    ursula.cells = [c for c in ursula.cells if c.id != "double"]  # the answer cell itself deleted
    write("ursula/99_demo.ipynb", ursula)
    write("zed/99_demo.ipynb", submission(double="import time\nwhile True:\n    try:\n        time.sleep(0.1)\n"
                                                 "    except:\n        pass"))


def exercise_cell(cell_id: str) -> str:
    return next(c.source for c in exercise_nb().cells if c.id == cell_id)


def exercise_solution(cell_id: str) -> str:
    return next(c.source for c in nbformat.read(str(SOLUTION), as_version=4).cells if c.id == cell_id)


def digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Grade the fabricated class once, three at a time (about 40 s: a kernel per gradable submission)."""
    root = tmp_path_factory.mktemp("submissions")
    out_dir = tmp_path_factory.mktemp("out")
    write_submissions(root)
    before = digest(root)
    mp = pytest.MonkeyPatch()
    mp.setattr(import_module("mmcourse.classroom.grade.execute"), "PROBE_TIMEOUT", 2)  # zed's kernel ignores interrupts
    mp.setattr(import_module("mmcourse.classroom.grade.execute"), "IOPUB_TIMEOUT", 4)  # (and on its idle message)
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
    with open(out_dir / "results.csv", newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    return {"code": code, "rows": rows, "log": log.getvalue(), "before": before, "after": digest(root),
            "executed": out_dir / "executed", "feedback": out_dir / "feedback", "answers": out_dir / "answers.md",
            "results": out_dir / "results.csv", "gradebook": out_dir / "gradebook.csv"}


@pytest.mark.slow
def test_csv_rows_are_exactly_as_expected(graded):
    assert graded["code"] == 0
    assert graded["rows"][0] == list(grade.CSV_FIELDS)
    got = [tuple(row[:7]) for row in graded["rows"][1:]]
    for got_row, want in zip(got, EXPECTED):
        assert got_row == want
    assert len(got) == len(EXPECTED)


@pytest.mark.slow
def test_rows_say_where_the_cell_is_and_its_id(graded):
    by = {(r[0], r[1]): r for r in graded["rows"][1:]}
    assert by["alice", EX1][7:9] == ["code cell 3 under “Exercise 1: double” (`# Check: double`)", "check-double"]
    assert by["alice", EX1][9] == grade.isolation("auto")[1]  # how the kernel was isolated, in every row
    assert by["alice", HIDDEN][7:9] == ["code cell 6 under “Exercise 2: mean” (`### BEGIN HIDDEN TESTS`)", "hidden-mean"]


@pytest.mark.slow
def test_cheats_score_nothing(graded):
    """The issue's cheats on the fixture: no-op checks, skipped check cells, forged results."""
    score = {}
    for row in graded["rows"][1:]:
        score[row[0]] = score.get(row[0], 0) + int(row[3] or 0)
    assert score == SCORES
    assert score["noop"] == score["skipper"] == score["forger"] == 0


@pytest.mark.slow
def test_submissions_are_never_modified(graded):
    assert graded["after"] == graded["before"]


@pytest.mark.slow
def test_summary_table(graded):
    log = graded["log"]
    assert "Grading 18 submission(s) of 99_demo.ipynb: 3 graded cells, 4 points" in log
    table = log[log.index("student "):log.index("exercise ")]
    score = {parts[0]: parts[1] for parts in map(str.split, table.splitlines()[1:]) if parts}
    assert score == {name: f"{points}/4" for name, points in SCORES.items()}
    assert "dave         0/4     1 cell(s) hung or were killed" in table
    assert "Exercise 1: double                    1  6/18 (33%)" in log
    assert "Exercise 2: mean                      2  8/18 (44%)" in log
    assert "Exercise 2: mean (hidden tests)       1  7/18 (39%)" in log


@pytest.mark.slow
def test_executed_notebooks_keep_the_check_results(graded):
    alice = nbformat.read(str(graded["executed"] / "alice.ipynb"), as_version=4)
    check = next(c for c in alice.cells if c.id == "check-double")
    results = [o["data"][CHECK_MIMETYPE] for o in check.outputs if CHECK_MIMETYPE in o.get("data", {})]
    assert len(results) == 1 and len(results[0].pop("token")) == 32  # this cell's token, made by the grader
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
    ivan = nbformat.read(str(graded["executed"] / "ivan.ipynb"), as_version=4)
    assert [c.id for c in ivan.cells][3:7] == ["double", "check-double", "task-mean", "mean"]  # put back in place
    skipper = nbformat.read(str(graded["executed"] / "skipper.ipynb"), as_version=4)
    restored = next(c for c in skipper.cells if c.id == "check-double")
    assert restored.metadata["tags"] == ["check"] and restored.metadata["nbgrader"]["grade"] is True


@pytest.mark.slow
def test_feedback_files_to_hand_back(graded):
    assert (graded["feedback"] / "bob.md").read_text(encoding="utf-8").splitlines() == [
        "# 99 · Demo assignment (grader test fixture): bob", "",
        "**2 / 4 points** from the automatic checks; your answer to the 1 written question is marked by your "
        "teacher (not in this score)", "",
        "| exercise | points | result |", "|---|---|---|",
        "| Exercise 1: double | 0/1 | ✗ double: squared instead of doubled (case: x=3) Hint: 2 * x, not x ** 2 |",
        "| Exercise 2: mean | 2/2 | ✓ mean: averages a list of 4 numbers |",
        "| Exercise 2: mean (hidden tests) | 0/1 | ✗ AssertionError: mean([1, 3]) should be 2 |"]
    alice = (graded["feedback"] / "alice.md").read_text(encoding="utf-8")
    assert "**4 / 4 points** from the automatic checks; your answer to the 1 written question is marked" in alice
    dave = (graded["feedback"] / "dave.md").read_text(encoding="utf-8")
    assert f"Problems while running your notebook (the cells after them still ran):\n\n- {MEAN_LOOP}\n" in dave
    gina = (graded["feedback"] / "gina.md").read_text(encoding="utf-8")
    assert "Your notebook could not be graded: empty file." in gina and "**0 / 4 points**" in gina
    assert sorted(p.stem for p in graded["feedback"].iterdir()) == sorted({row[0] for row in graded["rows"][1:]})


@pytest.mark.slow
def test_gradebook_opens_in_spreadsheets(graded):
    raw = graded["gradebook"].read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # UTF-8 with a BOM: Excel shows τ, → and ✓ right
    assert graded["results"].read_bytes().startswith(b"\xef\xbb\xbf")
    with open(graded["gradebook"], newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    header = ["student", "total", "maximum", "Exercise 1: double (1 pt)", "Exercise 2: mean (2 pt)",
              "Exercise 2: mean (hidden tests) (1 pt)", "written answers to mark", "notes"]
    assert list(rows[0]) == header
    assert {r["student"]: int(r["total"]) for r in rows} == SCORES
    bob = next(r for r in rows if r["student"] == "bob")
    assert [bob[h] for h in header[1:7]] == ["2", "4", "0", "2", "0", "0"]
    assert next(r for r in rows if r["student"] == "alice")["written answers to mark"] == "1"
    assert next(r for r in rows if r["student"] == "gina")["notes"] == "empty file"
    assert next(r for r in rows if r["student"] == "dave")["notes"].startswith("timed out: code cell 4")
    pd = pytest.importorskip("pandas")
    book = pd.read_csv(graded["gradebook"], encoding="utf-8-sig")
    assert list(book.columns) == header and len(book) == len(SCORES)
    assert book["total"].sum() == sum(SCORES.values()) and (book["maximum"] == 4).all()
    assert str(book["total"].dtype).startswith("int")
    detail = pd.read_csv(graded["results"], encoding="utf-8-sig")
    assert list(detail.columns) == list(grade.CSV_FIELDS)
    assert detail.groupby("student")["points"].sum().to_dict() == SCORES


@pytest.mark.slow
def test_written_answers_collected_for_reading(graded):
    page = (graded["answers"]).read_text(encoding="utf-8")
    assert page.startswith("# Written answers: 99_demo\n\n## Question 1: Why divide by `len(xs)` and not by a fixed number?")
    assert "### alice\n\n> Because the number of items changes.\n" in page
    assert "### bob\n\n> (no answer)\n" in page and "### gina\n\n> (no notebook)\n" in page
    assert "### ivan\n\n> (no answer)\n" in page
    assert "1 written answer(s) per student are not graded automatically: collected in" in graded["log"]


# --------------------------------------------------------------------------- the issue's inputs, assignment 01


def _assignment_01_submissions(root):
    """The issue's three cheats and two hangs, on the handed-out exercise of assignment 01."""
    from mmcourse.classroom.notebooks import read

    ex, sol = read(ROOT / "exercises" / "01_infonce.ipynb"), read(ROOT / "solutions" / "01_infonce.ipynb")
    answers = {c.id: c.source for c in sol.cells if c.metadata.get("nbgrader", {}).get("solution")}

    def variant(**sources):
        nb = copy.deepcopy(ex)
        for cell in nb.cells:
            if cell.id in sources:
                cell.source = sources[cell.id]
        return nb

    noop = variant(**{"83661cc0": "check_info_nce_naive = check_clip_loss = check_info_nce = check_info_nce_grad = "
                                  "lambda *a, **k: None\n" + next(c.source for c in ex.cells if c.id == "83661cc0")})
    libref = variant(**{**answers, "99a74327": "def info_nce(z, z_pos, temperature=0.07):\n"
                                              "    from mmcourse.objectives.losses import info_nce as _ref\n"
                                              "    return _ref(z, z_pos, temperature)"})
    skip = variant()
    for cell in skip.cells:
        if cell.metadata.get("nbgrader", {}).get("grade"):
            cell.metadata["tags"] = [*cell.metadata.get("tags", []), "skip-execution"]
    hang = variant(**{**answers, "1cf29abb": "def clip_loss(image_emb, text_emb, logit_scale):\n    i = 0\n"
                                           "    while i < 3:\n        pass\n    return 0",
                      "99a74327": answers["99a74327"] + "\n\nwhile True:\n    pass"})
    after = next(i for i, c in enumerate(hang.cells) if c.id == "2cbef668") + 1
    hang.cells.insert(after, nbformat.v4.new_code_cell("clip_loss(torch.randn(4, 3), torch.randn(4, 3), 10.0)"))
    for name, nb in [("hang", hang), ("libref", libref), ("noop", noop), ("skip", skip)]:
        nbformat.write(nb, str(root / f"{name}.ipynb"))
    first = next(c.source for c in ex.cells if c.id == "83661cc0")
    for name, code in CHEATS_01.items():
        nbformat.write(variant(**{"83661cc0": code + "\n" + first}), str(root / f"{name}.ipynb"))


# The issue's cheats and their siblings: each on the handed-out exercise, every answer left blank
# or wrong, so an honest grader gives 0.
_SUBCLASS = """import torch
class Liar(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, '__name__', '') in ('allclose', 'equal', 'isclose', '__eq__', 'eq'):
            return True
        return super().__torch_function__(func, types, args, kwargs or {})
class Zero(float):
    def __sub__(self, other): return 0.0
    def __rsub__(self, other): return 0.0
    def __eq__(self, other): return True
    __hash__ = float.__hash__
"""
CHEATS_01 = {
    "allclose": "import torch\ntorch.allclose = lambda *a, **k: True\ntorch.testing.assert_close = lambda *a, **k: None\n"
                "torch.isclose = lambda a, b, *x, **k: torch.ones_like(torch.as_tensor(a), dtype=torch.bool)",
    "sysmodules": "import sys, mmcourse.classroom.checks, mmcourse.classroom.checks.core as _c\n_ok = lambda *a, **k: _c.CheckResult('x', True, 'ok')\n"
                  "for _m in list(sys.modules.values()):\n    for _n in dir(_m) if getattr(_m, '__name__', '').startswith('mmcourse.classroom.checks') else []:\n"
                  "        if _n.startswith('check_') or _n in ('run_check', 'compare', 'check_value'):\n            setattr(_m, _n, _ok)\n"
                  "_c.compare = lambda *a, **k: None",
    "transformer": "get_ipython().input_transformers_post.append(lambda lines: ['pass\\n'] if any('check_' in l for l in lines) "
                   "else lines)",
    "solutions_file": "import json, os, pathlib, mmcourse\n_roots = [pathlib.Path(mmcourse.__file__).parents[1], "
                      "pathlib.Path(os.path.realpath(f'/proc/{os.getppid()}/cwd')), pathlib.Path(os.getcwd()).parent]\n"
                      "for _r in _roots:\n    for _p in list(_r.glob('solutions/01_*.ipynb')) + list(_r.glob('**/solutions/01_*.ipynb'))[:1]:\n"
                      "        for _cell in json.load(open(_p))['cells']:\n            if _cell['cell_type'] == 'code' and 'BEGIN SOLUTION' in ''.join(_cell['source']):\n"
                      "                exec(''.join(_cell['source']))",
    "subclass": _SUBCLASS + "info_nce_formula = clip_loss = info_nce = siglip_loss = lambda *a, **k: Liar(torch.zeros(()))\n"
                "info_nce_grad = lambda sim, temperature: Liar(torch.zeros_like(sim))\nrow_sums_answer = Zero(0.0)",
    "library": "from mmcourse.objectives.losses import info_nce as _i, clip_loss as _c, siglip_loss as _s\n"
               "info_nce_formula = info_nce = _i\nclip_loss = _c\nsiglip_loss = _s\n"
               "from mmcourse.classroom.checks import infonce as _ci\ninfo_nce_grad = getattr(_ci, 'reference_info_nce_grad', None)",
}


# The cell limit for assignment 01's class: its slowest honest cell (the imports) takes 2-5 s on a busy
# 2-core machine; each of the two hangs spins a core until the limit.
HANG_LIMIT = 12


@pytest.fixture(scope="module")
def graded_01(tmp_path_factory):
    """Assignment 01 graded as a teacher would: ten submissions, two at a time (about a minute on two cores:
    the reference run, then a kernel with torch per submission; the hangs take 2 x HANG_LIMIT)."""
    root, out = tmp_path_factory.mktemp("subs01"), tmp_path_factory.mktemp("out01")
    _assignment_01_submissions(root)
    log = io.StringIO()
    with redirect_stdout(log):
        code = grade.main([str(root), "--assignment", "01", "--solutions", str(ROOT / "solutions"),
                           "--out", str(out / "results.csv"), "--feedback", str(out / "feedback"),
                           "--timeout", str(HANG_LIMIT), "--jobs", "2"])
    with open(out / "results.csv", newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    return {"code": code, "rows": rows, "log": log.getvalue(), "feedback": out / "feedback"}


def _graded_cells(assignment: str) -> int:
    """How many graded cells the assignment's solution has (each is one row per student)."""
    path = next((ROOT / "solutions").glob(f"{assignment}_*.ipynb"))
    nb = nbformat.read(str(path), as_version=4)
    return sum(bool(c.metadata.get("nbgrader", {}).get("grade")) for c in nb.cells)


@pytest.mark.slow
def test_issue_cheats_on_assignment_01_get_no_points(graded_01):
    assert graded_01["code"] == 0
    points = {}
    for r in graded_01["rows"]:
        points[r["student"]] = points.get(r["student"], 0) + int(r["points"] or 0)
    graded = _graded_cells("01")
    assert points["noop"] == 0 and points["skip"] == 0
    cheats = [name for name in CHEATS_01 if name != "solutions_file" or grade.isolation("auto")[0]]
    assert {name: points[name] for name in cheats} == dict.fromkeys(cheats, 0)  # only a sandbox hides the solutions
    assert points["libref"] == graded - 1  # every exercise solved by hand passes, the library call does not
    noop = [r for r in graded_01["rows"] if r["student"] == "noop"]
    assert len(noop) == graded and all(r["passed"] == "no" for r in noop)
    assert [r["status"] for r in noop if r["exercise"].startswith("Exercise 1 ")] == ["not attempted"]
    skip = [r for r in graded_01["rows"] if r["student"] == "skip"]
    assert len(skip) == graded and all(r["passed"] == "no" for r in skip)
    lib = next(r for r in graded_01["rows"] if r["student"] == "libref" and r["exercise"] == "Exercise 3 · Make it stable")
    assert lib["passed"] == "no"
    assert lib["message"] == "you called mmcourse's info_nce; this exercise asks you to write it"


@pytest.mark.slow
def test_issue_hangs_on_assignment_01_are_reported(graded_01):
    hang = [r for r in graded_01["rows"] if r["student"] == "hang"]
    by_exercise = {r["exercise"]: r for r in hang}
    clip = by_exercise["Exercise 2 · Make it symmetric: the CLIP loss"]
    assert clip["passed"] == "no" and "your code did not finish" in clip["message"]
    hung = [r for r in hang if r["exercise"] == "(other cells)"]
    assert [r["status"] for r in hung] == ["timed out", "timed out"]
    assert hung[0]["message"].startswith("code cell 6 under “Exercise 2 · Make it symmetric: the CLIP loss” "
                                         f"(`clip_loss(torch.randn(4, 3), torch.randn(4, 3), 1…`) timed out after {HANG_LIMIT} s")
    assert hung[1]["message"].startswith("code cell 8 under “Exercise 3 · Make it stable” "
                                         f"(`def info_nce(z, z_pos, temperature=0.07):`) timed out after {HANG_LIMIT} s")
    assert by_exercise["Exercise 1 · InfoNCE from the formula"]["passed"] == "yes"
    feedback = (graded_01["feedback"] / "hang.md").read_text(encoding="utf-8")
    assert "Problems while running your notebook" in feedback and "code cell 6" in feedback and "code cell 8" in feedback


# --------------------------------------------------------------------------- fast parts, no kernel


def test_grade_cells_of_the_fixture():
    cells = grade.grade_cells(nbformat.read(str(SOLUTION), as_version=4))
    assert [(c.grade_id, c.points, c.label, c.calls_check, c.answers) for c in cells] == [
        ("check-double", 1, EX1, True, ("double",)), ("check-mean", 2, EX2, True, ("mean",)),
        ("hidden-mean", 1, HIDDEN, False, ())]
    assert "### BEGIN HIDDEN TESTS" in cells[2].source
    assert cells[0].cell.metadata["tags"] == ["check"] and cells[0].answer_start == "def double(x):"


def test_graded_cells_without_a_heading_get_readable_labels():
    cells = [nbformat.v4.new_code_cell("# Check: the attention mask\ncheck_attention_mask(attention_mask)"),
             nbformat.v4.new_code_cell("check_pool_eot(pool_eot)"),
             nbformat.v4.new_code_cell("check_pool_eot(pool_eot)"),
             nbformat.v4.new_code_cell("assert 1 + 1 == 2")]
    for cell, cell_id in zip(cells, ["3fc37749", "27746048", "0f9e6c2a-8a33-4b5e-9d2c-1c7b8a3f5e21", "5a375c8f"]):
        cell.id, cell.metadata["tags"] = cell_id, ["check"]
    labels = [c.label for c in grade.grade_cells(nbformat.v4.new_notebook(cells=cells))]
    assert labels == ["the attention mask", "check_pool_eot [27746048]",
                      "check_pool_eot [0f9e6c2a-8a33-4b5e-9d2c-1c7b8a3f5e21]", "5a375c8f"]


def test_real_assignments_name_exercises_by_their_titles():
    from mmcourse.classroom.notebooks import read

    cells = grade.grade_cells(read(ROOT / "solutions" / "04_training_clip.ipynb"))
    assert [c.label for c in cells][:2] == ["Exercise 1 · The logits", "Exercise 2 · One training step"]
    for path in sorted((ROOT / "solutions").glob("0[1-6]_*.ipynb")):  # every assignment has hidden tests
        assert any("### BEGIN HIDDEN TESTS" in c.source for c in grade.grade_cells(read(path))), path.name


def _keys(solution):
    return [grade._cell_key(c) for c in normalise_solution(solution).cells]


def test_prepare_restores_graded_cells_whole_and_in_place():
    solution = nbformat.read(str(SOLUTION), as_version=4)
    cells = grade.grade_cells(solution)
    nb = submission(check_double="pass")
    nb.cells = [c for c in nb.cells if c.id != "check-mean"]
    hidden = next(c for c in nb.cells if c.id == "hidden-mean")
    hidden.cell_type = "markdown"  # a student turned the (empty) hidden-test cell into markdown
    hidden.metadata = {"tags": ["skip-execution", "raises-exception"], "nbgrader": {"grade_id": "hidden-mean"}}
    nb.cells.insert(4, nbformat.v4.new_code_cell("print('my own test')"))  # below the answer, above its check
    prepared = grade.prepare(nb, cells, _keys(solution))
    assert prepared.restored == {"check-mean": "missing"}
    assert [c.id for c in nb.cells][:5] == ["title", "setup", "task-double", "double", nb.cells[4].id]
    assert nb.cells[4].source == "print('my own test')" and nb.cells[5].id == "check-double"
    assert [c.id for c in nb.cells][6:] == ["task-mean", "mean", "check-mean", "hidden-mean", "why-len"]
    by_id = {c.id: c for c in nb.cells}
    assert by_id["check-double"].source == cells[0].source and by_id["hidden-mean"].source == "# Hidden tests"[:0] + \
        import_module("mmcourse.classroom.grade.prepare")._visible_part(cells[2].source)
    assert by_id["hidden-mean"].cell_type == "code" and by_id["hidden-mean"].metadata == cells[2].cell.metadata
    assert prepared.inserted == {id(by_id["check-mean"])}


def test_prepare_moves_a_graded_cell_back_under_its_exercise():
    solution = nbformat.read(str(SOLUTION), as_version=4)
    nb = submission()
    check = next(c for c in nb.cells if c.id == "check-mean")
    nb.cells.remove(check)
    nb.cells.insert(1, check)  # above the setup: it would fail, or test something else
    nb.cells.append(copy.deepcopy(check))  # a second copy: dropped
    prepared = grade.prepare(nb, grade.grade_cells(solution), _keys(solution))
    assert prepared.restored == {"check-mean": "moved"}
    assert [c.id for c in nb.cells] == _keys(solution)


def test_the_grader_reads_nbformat_40_notebooks(tmp_path):
    path = tmp_path / "old.ipynb"
    path.write_text(_as_nbformat_40(submission()))
    nb, problem = grade._read_notebook(path)
    assert problem == "" and nb.nbformat_minor == 5 and all(len(c.id) == 8 for c in nb.cells)
    assert [grade._cell_key(c) for c in nb.cells if c.metadata.get("nbgrader")][:2] == ["double", "check-double"]


def test_an_unreadable_solution_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "sol").mkdir()
    (tmp_path / "sol" / "98_broken.ipynb").write_text('{"cells": [')
    (tmp_path / "subs").mkdir()
    assert grade.main([str(tmp_path / "subs"), "--assignment", "98", "--solutions", str(tmp_path / "sol")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "98_broken.ipynb: not a valid notebook" in err and err.count("\n") == 1


def test_kernel_env_shares_the_cores_and_honours_the_standard_variable(monkeypatch):
    monkeypatch.delenv("MMCOURSE_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(__import__("os"), "cpu_count", lambda: 4)
    env = grade.kernel_env(jobs=2, cell_timeout=30)
    assert (env["MMCOURSE_NUM_THREADS"], env["OMP_NUM_THREADS"], env["MMCOURSE_CHECK_TIMEOUT"]) == ("2", "2", "7.5")
    assert grade.kernel_env(jobs=8, cell_timeout=120)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert grade.kernel_env(jobs=1, cell_timeout=30)["MMCOURSE_NUM_THREADS"] == "1"


def test_setup_threads_follow_omp_num_threads(monkeypatch):
    import torch

    from mmcourse.utils import set_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("MMCOURSE_NUM_THREADS", raising=False)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert set_threads() == 1
        monkeypatch.setenv("MMCOURSE_NUM_THREADS", "2")  # the course's own variable wins
        assert set_threads() == 2
        monkeypatch.setenv("MMCOURSE_NUM_THREADS", "two")
        with pytest.raises(ValueError, match="MMCOURSE_NUM_THREADS must be a whole number of threads, got 'two'"):
            set_threads()
    finally:
        torch.set_num_threads(before)


def test_cell_timeouts_come_from_the_solutions_tags():
    from mmcourse.classroom.notebooks import read

    timeouts = grade.cell_timeouts(read(ROOT / "solutions" / "04_training_clip.ipynb"))
    assert list(timeouts.values()) == [120.0]
    assert grade.cell_timeouts(nbformat.read(str(SOLUTION), as_version=4)) == {}


def test_the_memory_limit_wraps_the_kernel_command():
    km = grade.kernel_manager_class(1000)(kernel_name="python3")
    cmd = km.format_kernel_cmd()
    assert cmd[:4] == [__import__("sys").executable, "-c", grade._LIMIT_LAUNCHER, str(1000 * 2**20)]
    assert "ipykernel_launcher" in " ".join(cmd[4:])
    assert grade.kernel_manager_class(None)(kernel_name="python3").format_kernel_cmd() == cmd[4:]


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
    assert out.read_text(encoding="utf-8-sig").splitlines() == [",".join(grade.CSV_FIELDS)]
    assert "Grading 0 submission(s) of 99_demo.ipynb" in capsys.readouterr().out


@pytest.mark.slow
def test_total_time_limit_stops_the_notebook(tmp_path):
    path = tmp_path / "slow" / "99_demo.ipynb"
    path.parent.mkdir()
    nbformat.write(submission(double="import time\ntime.sleep(30)"), str(path))
    cells = grade.grade_cells(nbformat.read(str(SOLUTION), as_version=4))
    judge = import_module("mmcourse.classroom.grade.reference").Judge(SOLUTION, cells, 20, {}, {})
    try:
        judge.start()
        rows = grade.grade_submission(grade.Submission("slow", path), cells, judge, cell_timeout=20, total_timeout=1.5)
    finally:
        judge.close()
    assert [(r.exercise, r.passed, r.status, r.message) for r in rows[:3]] == [
        (c.label, False, "not run", "not run: the notebook used up its 1.5 s time limit") for c in cells]
    assert [(r.exercise, r.status) for r in rows[3:]] == [("(other cells)", "timed out")]


@pytest.mark.parametrize("error, earlier, message", [
    ({"ename": "CheckFailed", "evalue": "✗ mean: returns the sum\n  Hint: divide"}, None, "mean: returns the sum Hint: divide"),
    ({"ename": "NameError", "evalue": "name 'tau' is not defined"}, ("NotImplementedError", "cell 5, NotImplementedError"),
     "not attempted: the exercise still raises NotImplementedError"),
    ({"ename": "NameError", "evalue": "name 'f' is not defined"}, ("ZeroDivisionError", "cell 2, ZeroDivisionError: x"),
     "NameError: name 'f' is not defined (an earlier cell failed: cell 2, ZeroDivisionError: x)"),
    ({"ename": "SyntaxError", "evalue": "invalid syntax (3046216412.py, line 3)"}, None, "SyntaxError: invalid syntax (line 3)"),
    ({"ename": "ValueError", "evalue": "x" * 400}, None, "ValueError: " + "x" * 287 + "…"),
    ({"ename": "MemoryError", "evalue": ""}, None, "ran out of memory (the grader's limit per notebook): MemoryError"),
    ({"ename": "RuntimeError", "evalue": "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"},
     None, "ran out of memory (the grader's limit per notebook): RuntimeError: [enforce fail at alloc_cpu.cpp:117] "
           "DefaultCPUAllocator: can't allocate memory"),
])
def test_error_messages(error, earlier, message):
    assert grade._error_message(error, earlier) == message


def test_roster_and_lms_exports(tmp_path):
    """`--roster` adds ids and emails to the gradebook; `--lms` writes Canvas's and Moodle's layouts."""
    cells = grade.grade_cells(nbformat.read(str(SOLUTION), as_version=4))
    subs = [grade.Submission("alice", tmp_path / "a.ipynb"), grade.Submission("zoe", tmp_path / "z.ipynb")]
    rows = [grade.Row("alice", c.label, True, c.points, "ok", c.points, "passed", "", c.grade_id) for c in cells]
    rows += [grade.Row("zoe", c.label, False, 0, "no", c.points, "failed", "", c.grade_id) for c in cells]
    (tmp_path / "roster.csv").write_text("submission,id,email,name\nalice,s001,alice@example.org,Alice A.\n",
                                         encoding="utf-8")
    students = grade.read_roster(tmp_path / "roster.csv")
    grade.write_gradebook(rows, cells, subs, {}, tmp_path / "gb.csv", students)
    with open(tmp_path / "gb.csv", newline="", encoding="utf-8-sig") as f:
        book = list(csv.DictReader(f))
    assert [(r["student"], r["id"], r["email"], r["total"], r["notes"]) for r in book] == [
        ("alice", "s001", "alice@example.org", "4", ""), ("zoe", "", "", "0", "not in the roster")]
    grade.write_lms(rows, cells, subs, "canvas", "99_demo", tmp_path / "canvas.csv", students)
    assert (tmp_path / "canvas.csv").read_text(encoding="utf-8-sig").splitlines() == [
        "Student,ID,SIS User ID,Section,99_demo", "    Points Possible,,,,4", "Alice A.,,s001,,4", "zoe,,,,0"]
    grade.write_lms(rows, cells, subs, "moodle", "99_demo", tmp_path / "moodle.csv", students)
    assert (tmp_path / "moodle.csv").read_text(encoding="utf-8-sig").splitlines() == [
        "Email address,ID number,99_demo", "alice@example.org,s001,4", ",zoe,0"]
    (tmp_path / "bad.csv").write_text("name,email\nx,y\n", encoding="utf-8")
    with pytest.raises(ValueError, match="needs the columns `submission` and `id`"):
        grade.read_roster(tmp_path / "bad.csv")


def test_plain_data_protocol_reads_back_no_subclass_and_no_pickle(tmp_path):
    """What a student's kernel writes back is decoded as plain values only."""
    import torch

    from mmcourse.classroom.grade import protocol

    class Liar(torch.Tensor):
        pass

    class Zero(float):
        def __sub__(self, other):
            return 0.0

    value = (torch.ones(2).as_subclass(Liar), Zero(2.5), [1, "a", None], {"k": torch.arange(3)}, torch.float64)
    tensors = {}
    tree = protocol.encode(value, tensors)
    protocol.write_answer(str(tmp_path / "a.bin"), tree, tensors)
    back = protocol.decode(*protocol.read_answer(str(tmp_path / "a.bin")))
    assert type(back[0]) is torch.Tensor and torch.equal(back[0], torch.ones(2))
    assert type(back[1]) is float and back[1] == 2.5 and back[1] - 1 == 1.5
    assert back[2] == [1, "a", None] and torch.equal(back[3]["k"], torch.arange(3)) and back[4] is torch.float64
    assert repr(protocol.decode({"other": "a function"}, {})).startswith("<a function, which the grader cannot")
    for forged in ({"pickle": "cos\nsystem\n"}, {"tensor": "t9"}, {"dtype": "os.system"}, [1, 2]):
        with pytest.raises(ValueError):
            protocol.decode(forged, {})
    (tmp_path / "b.bin").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(ValueError, match="unreadable answer"):
        protocol.read_answer(str(tmp_path / "b.bin"))


def test_graded_names_come_from_the_conventions():
    """The names an exercise's answer cells define that its graded cell passes to a check or calls."""
    from mmcourse.classroom.notebooks import read

    by_id = {c.grade_id: c.names for c in grade.grade_cells(nbformat.read(str(SOLUTION), as_version=4))}
    assert by_id == {"check-double": ("double",), "check-mean": ("mean",), "hidden-mean": ("mean",)}
    names = [c.names for c in grade.grade_cells(read(ROOT / "solutions" / "05_zero_shot_and_retrieval.ipynb"))]
    assert names[-1] == ("my_templates",)  # the model, tokenizer and embeddings come from the reference run
    for path in sorted((ROOT / "solutions").glob("[01][0-9]_*.ipynb")):
        assert all(c.names for c in grade.grade_cells(read(path))), path.name


def test_library_answers_are_listed_for_every_assignment():
    """Every assignment 01-11 has a library answer or a check module reference the grader trips."""
    from mmcourse.classroom.grade.reference import library_answers
    from mmcourse.classroom.notebooks import read

    for path in sorted((ROOT / "solutions").glob("[01][0-9]_*.ipynb")):
        listed = {n: library_answers(n) for c in grade.grade_cells(read(path)) for n in c.names}
        assert any(listed.values()), path.name
    assert "mmcourse.classroom.checks.fusion.reference_tensor_fusion" in library_answers("tensor_fusion")
    assert "mmcourse.objectives.itm.sample_hard_negatives" in library_answers("sample_hard_negatives")


def test_without_bubblewrap_the_grader_says_so(monkeypatch):
    sandbox = import_module("mmcourse.classroom.grade.sandbox")
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    isolated, note = sandbox.isolation.__wrapped__("auto")
    assert not isolated and note.startswith("none: bubblewrap (bwrap) is not installed")
    with pytest.raises(ValueError, match="--isolation bwrap: bubblewrap"):
        sandbox.isolation.__wrapped__("bwrap")


def test_the_sandbox_hides_the_solutions_and_the_grader(tmp_path):
    """What a sandboxed kernel's file system holds (bubblewrap only)."""
    import subprocess
    import sys

    sandbox = import_module("mmcourse.classroom.grade.sandbox")
    if not sandbox.isolation("auto")[0]:
        pytest.skip("bubblewrap cannot run here")
    (tmp_path / "work").mkdir()
    (tmp_path / "private").mkdir()
    probe = ("import os, mmcourse; root = os.path.dirname(os.path.dirname(mmcourse.__file__)); "
             "print(sorted(os.listdir(root)), os.listdir(os.path.join(root, 'mmcourse', 'classroom', 'grade')), "
             "os.path.exists('/proc/%d/cwd/solutions' % os.getppid()), os.getpid())")
    out = subprocess.run([*sandbox.bwrap_command(tmp_path / "work", tmp_path / "private"), sys.executable, "-c", probe],
                         capture_output=True, text=True, timeout=60)
    listing, grader, solutions_via_parent, pid = out.stdout.rsplit(maxsplit=3)
    # The repository root shows the package and, where they live inside the repository (as in CI and the tests),
    # the venv that runs the kernel and the model cache under build/: never solutions/, tests/, exercises/, notebooks/.
    shown = set(ast.literal_eval(listing))
    assert "mmcourse" in shown and shown <= {"mmcourse", ".venv", "build"}, (out.stdout, out.stderr)
    assert (grader, solutions_via_parent, pid) == ("[]", "False", "2"), (out.stdout, out.stderr)
