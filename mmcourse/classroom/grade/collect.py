"""Stage 4, collect the verdicts: one row per student and graded cell, from the cells the judge
ran (check results carrying the cell's token, error outputs) and from what the student's kernel
did (time-outs, crashes, cells that never ran)."""
from __future__ import annotations

import re

import nbformat

from mmcourse.classroom.checks.core import CHECK_MIMETYPE
from mmcourse.classroom.grade.execute import _Locator, _short
from mmcourse.classroom.grade.prepare import OTHER_CELLS, CellRun, GradeCell, Prepared, Row, _cell_key


def _error_text(error: dict) -> str:
    """"Name: message" of an error output, without the kernel's temporary file names."""
    ename, evalue = error.get("ename", "Error"), error.get("evalue", "")
    evalue = re.sub(r"\([^()]*\.py, line (\d+)\)", r"(line \1)", evalue)  # SyntaxError: (8831.py, line 3)
    return f"{ename}: {evalue}" if evalue else ename


def _is_memory_error(error: dict) -> bool:
    return error.get("ename") == "MemoryError" or "can't allocate memory" in str(error.get("evalue", ""))


def _error_message(error: dict, earlier: tuple[str, str] | None) -> str:
    """The CSV message for a graded cell's error; `earlier` = (ename, text) of the last
    non-graded cell before it that failed, which explains a NameError."""
    ename, evalue = error.get("ename", "Error"), error.get("evalue", "")
    if ename == "CheckFailed":
        return _short(evalue.lstrip("✗ "))
    if ename == "NotImplementedError" or (ename == "NameError" and earlier and earlier[0] == "NotImplementedError"):
        return "not attempted: the exercise still raises NotImplementedError"
    if ename == "KeyboardInterrupt":
        return "interrupted"
    if _is_memory_error(error):
        return "ran out of memory (the grader's limit per notebook): " + _short(_error_text(error), 120)
    message = _error_text(error)
    if ename == "NameError" and earlier:
        message += f" (an earlier cell failed: {earlier[1]})"
    return _short(message)


def _status(message: str, error: dict | None) -> str:
    if message.startswith("not attempted"):
        return "not attempted"
    if error is not None and error.get("ename") not in ("CheckFailed", "AssertionError"):
        return "error"
    return "failed"


def collect(student: str, nb: nbformat.NotebookNode, cells: list[GradeCell], runs: list[CellRun],
            prepared: Prepared | set | None = None) -> list[Row]:
    """One `Row` per graded cell from an executed notebook, then one per other cell that timed
    out, lost its output, was killed, or ran out of memory."""
    prepared = prepared if isinstance(prepared, Prepared) else Prepared()
    locate = _Locator(nb, prepared.inserted)
    where: dict[str, int] = {}
    for i, c in enumerate(nb.cells):
        where.setdefault(_cell_key(c), i)
    graded_ids = {c.grade_id for c in cells}
    last_error: tuple[str, str] | None = None
    earlier: dict[int, tuple[str, str] | None] = {}
    problems: list[Row] = []
    for index, cell in enumerate(nb.cells):  # the last failed student cell before each cell
        earlier[index] = last_error
        if _cell_key(cell) in graded_ids:
            continue
        run = runs[index]
        if run.status in ("timeout", "dead", "incomplete"):
            last_error = (run.status, f"{locate(index)} {run.reason}")
            status = {"timeout": "timed out", "dead": "kernel died", "incomplete": "output lost"}[run.status]
            problems.append(Row(student, OTHER_CELLS, None, None, _short(f"{locate(index)} {run.reason}"),
                                status=status, cell=locate(index)))
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                last_error = (out.get("ename", ""), _short(f"{locate(index)}, {_error_text(out)}", 160))
                if _is_memory_error(out):
                    problems.append(Row(student, OTHER_CELLS, None, None, _short(
                        f"{locate(index)} ran out of memory (the grader's limit per notebook)"), status="out of memory",
                        cell=locate(index)))
                break

    rows = []
    for gc in cells:
        index = where[gc.grade_id]
        run, outputs = runs[index], nb.cells[index].get("outputs", [])
        errors = [o for o in outputs if o.get("output_type") == "error"]
        records = [o["data"][CHECK_MIMETYPE] for o in outputs
                   if o.get("output_type") in ("display_data", "execute_result") and CHECK_MIMETYPE in o.get("data", {})]
        mine = [r for r in records if isinstance(r, dict) and run.token and r.get("token") == run.token]
        failed = [r for r in mine if r.get("passed") is not True]
        error = errors[0] if errors else None
        status = "failed"
        if run.status in ("timeout", "incomplete"):
            message, status = run.reason, "timed out" if run.status == "timeout" else "error"
        elif run.status == "dead":
            message, status = run.reason, "kernel died"
        elif run.status == "not run" or not run.reply:
            message, status = run.reason or "not run: the cell was not executed", "not run"
        elif error is not None:
            message = _error_message(error, earlier[index])
            missing = [k for k in gc.answers if k in prepared.missing_answers]
            if error.get("ename") == "NameError" and missing and not message.startswith("not attempted"):
                start = f" (the cell that starts `{_short(gc.answer_start, 60)}`)" if gc.answer_start else ""
                message = (f"the answer cell of this exercise{start} is missing from your notebook: copy it back from "
                           f"the handed-out exercise, above its check, and fill it in")
            status = _status(message, error)
        elif run.reply != "ok":
            message = f"the kernel reported `{run.reply}` for this cell"
        elif not run.token:
            message = "the grader could not arm the checks before this cell (did your code change `mmcourse`?)"
        elif failed:
            message = _short(f"{failed[0].get('name', '')}: {failed[0].get('message', '')}")
        elif gc.calls_check and not mine:
            message = ("no result from the check for this run: it was not called, or not mmcourse's check "
                       "(did your code replace a check or `mmcourse.classroom.checks`?)")
        else:
            message = _short("; ".join(f"{r.get('name')}: {r.get('message')}" for r in mine) or "passed")
            if prepared.restored.get(gc.grade_id) == "missing":
                message = _short(message + " (this graded cell was missing from your notebook: it was put back)")
            rows.append(Row(student, gc.label, True, gc.points, message, gc.points, "passed", locate(index), gc.grade_id))
            continue
        if prepared.restored.get(gc.grade_id) == "missing":
            message = _short(message + " (this graded cell was missing from your notebook: it was put back)")
        rows.append(Row(student, gc.label, False, 0, message, gc.points, status, locate(index), gc.grade_id))
    return rows + problems


