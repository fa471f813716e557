"""A correct submission scores full marks on a cold machine: assignments 07, 09 and 11 (which train
or load models) graded with an empty `MMCOURSE_CACHE`, one student each. The grader's reference
run fills the cache before the student's kernel starts, so the kernel only loads the models.
Each takes about one run of the solution twice (training once), so they run one at a time.

The suite runs 11, the cheapest (about 55 s: it trains lesson 04's digits CLIP from nothing, the
mechanism end to end); 07 and 09 train more models (two MLMs; three CLIPs and three captioners, about
2 minutes) and run with `MMCOURSE_COLD_GRADING=all` (or `make test-grader`)."""
from __future__ import annotations

import csv
import io
import shutil
from contextlib import redirect_stdout

import pytest

import os

import mmcourse.classroom.grade as grade
from conftest import ROOT

ASSIGNMENTS = ["07", "09", "11"] if os.environ.get("MMCOURSE_COLD_GRADING") == "all" else ["11"]


@pytest.mark.slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_a_correct_submission_scores_full_marks_on_a_cold_cache(assignment, tmp_path, monkeypatch):
    monkeypatch.setenv("MMCOURSE_CACHE", str(tmp_path / "empty-cache"))
    (tmp_path / "empty-cache").mkdir()
    solution = next((ROOT / "solutions").glob(f"{assignment}_*.ipynb"))
    (tmp_path / "subs" / "ann").mkdir(parents=True)
    shutil.copyfile(solution, tmp_path / "subs" / "ann" / solution.name)  # the solution, handed in as is
    log = io.StringIO()
    with redirect_stdout(log):
        code = grade.main([str(tmp_path / "subs"), "--assignment", assignment, "--solutions", str(ROOT / "solutions"),
                           "--out", str(tmp_path / "results.csv")])
    with open(tmp_path / "results.csv", newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    assert code == 0
    assert rows and all(r["passed"] == "yes" for r in rows), [(r["exercise"], r["message"]) for r in rows
                                                               if r["passed"] != "yes"]
    assert sum(int(r["points"]) for r in rows) == sum(int(r["max_points"]) for r in rows)
    assert "reference run of" in log.getvalue()
