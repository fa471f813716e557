"""Stage 5, report: the detailed CSV, the gradebook (optionally keyed by a roster), an LMS export
(Canvas or Moodle), each student's feedback page, the written answers to mark, the summary."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import nbformat

from mmcourse.classroom.exercises import normalise_solution
from mmcourse.classroom.grade.prepare import CSV_FIELDS, GradeCell, Row, Submission, _cell_key, _read_notebook

def _yes_no(value: bool | None) -> str:
    return "" if value is None else "yes" if value else "no"


def write_csv(rows: list[Row], path: Path) -> None:
    """The detailed results: one row per (student, graded cell), and one per other cell that
    hung or was killed (`exercise` = "(other cells)"), in UTF-8 with a BOM (spreadsheets)."""
    with open(path, "w", newline="", encoding="utf-8-sig") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for r in rows:
            writer.writerow([r.student, r.exercise, _yes_no(r.passed), "" if r.points is None else r.points,
                             "" if r.max_points is None else r.max_points, r.status, r.message, r.cell, r.grade_id,
                             r.isolation])


def gradebook_columns(cells: list[GradeCell]) -> list[str]:
    """The gradebook's header: student, total, maximum, one column per exercise ("title (N pt)"),
    written answers still to mark, notes."""
    return ["student", "total", "maximum", *(f"{c.label} ({c.points} pt)" for c in cells),
            "written answers to mark", "notes"]


def read_roster(path: Path) -> dict[str, dict[str, str]]:
    """`--roster`: {submission name: {"id", "email", "name"}} from a CSV with a `submission` column
    (the student's folder or file name as the grader names them) and an `id` column (optional
    `email`, `name`). Raises ValueError naming what is missing."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            table = list(csv.DictReader(f))
    except OSError as err:
        raise ValueError(f"--roster {path}: unreadable ({err.strerror})") from None
    if not table or not {"submission", "id"} <= set(table[0]):
        raise ValueError(f"--roster {path}: needs the columns `submission` and `id` (and optionally `email`, `name`)")
    return {row["submission"].strip(): {k: (row.get(k) or "").strip() for k in ("id", "email", "name")}
            for row in table if (row.get("submission") or "").strip()}


def write_lms(rows: list[Row], cells: list[GradeCell], submissions: list[Submission], kind: str, assignment: str,
              path: Path, students: dict[str, dict[str, str]] | None = None) -> None:
    """An import file for the LMS gradebook: Canvas (`Student, ID, SIS User ID, Section,
    <assignment>`, a "Points Possible" row first) or Moodle (`Email address, ID number, <assignment>`),
    one row per student with their total. The roster supplies ids and emails (else the
    submission's name is used)."""
    maximum = sum(c.points for c in cells)
    with open(path, "w", newline="", encoding="utf-8-sig") as f:
        writer = csv.writer(f)
        if kind == "canvas":
            writer.writerow(["Student", "ID", "SIS User ID", "Section", assignment])
            writer.writerow(["    Points Possible", "", "", "", maximum])
        else:
            writer.writerow(["Email address", "ID number", assignment])
        for sub in submissions:
            total = sum(r.points or 0 for r in rows if r.student == sub.student)
            who = (students or {}).get(sub.student, {})
            if kind == "canvas":
                writer.writerow([who.get("name") or sub.student, "", who.get("id", ""), "", total])
            else:
                writer.writerow([who.get("email", ""), who.get("id") or sub.student, total])


def write_gradebook(rows: list[Row], cells: list[GradeCell], submissions: list[Submission],
                    written: dict[str, int], path: Path, students: dict[str, dict[str, str]] | None = None) -> None:
    """One row per student: total, maximum, the points of each exercise, how many written
    answers a person still has to mark (not in the total), and notes (an ungradable notebook,
    cells that hung or were killed). UTF-8 with a BOM and commas: it opens right in Excel,
    LibreOffice, Numbers and Google Sheets, and `pandas.read_csv` reads it."""
    maximum = sum(c.points for c in cells)
    with open(path, "w", newline="", encoding="utf-8-sig") as f:
        writer = csv.writer(f)
        roster = ["id", "email"] if students is not None else []
        writer.writerow(gradebook_columns(cells)[:1] + roster + gradebook_columns(cells)[1:])
        for sub in submissions:
            mine = [r for r in rows if r.student == sub.student]
            by_id = {r.grade_id: r for r in mine if r.passed is not None}
            notes = [sub.problem] if sub.problem else []
            notes += [f"{r.status}: {r.cell}" for r in mine if r.passed is None]
            if students is not None and sub.student not in students:
                notes.append("not in the roster")
            who = [students.get(sub.student, {}).get(k, "") for k in ("id", "email")] if students is not None else []
            writer.writerow([sub.student, *who, sum(r.points or 0 for r in mine), maximum,
                             *(by_id[c.grade_id].points if c.grade_id in by_id else 0 for c in cells),
                             written.get(sub.student, 0), "; ".join(notes)])


def write_feedback(rows: list[Row], cells: list[GradeCell], sub: Submission, assignment: str, folder: Path,
                   written: int = 0, title: str = "") -> Path:
    """`folder/<student>.md`: the student's score and one line per exercise, to hand back
    (unlike the executed notebook, it does not show the hidden tests' code). `written`: the
    number of written questions, which a person marks (said next to the score)."""
    total, mine = sum(c.points for c in cells), [r for r in rows if r.student == sub.student]
    lines = [f"# {title or assignment}: {sub.student}", ""]
    score = f"**{sum(r.points or 0 for r in mine)} / {total} points** from the automatic checks"
    if written:
        score += (f"; {'your answers to the' if written > 1 else 'your answer to the'} {written} written "
                  f"question{'s' if written > 1 else ''} {'are' if written > 1 else 'is'} marked by your teacher "
                  f"(not in this score)")
    lines += [score, ""]
    if sub.problem:
        lines += [f"Your notebook could not be graded: {sub.problem}.", ""]
    lines += ["| exercise | points | result |", "|---|---|---|"]
    for r in mine:
        if r.passed is None:
            continue
        mark = "✓" if r.passed else "✗"
        lines.append(f"| {r.exercise} | {r.points}/{r.max_points} | {mark} {r.message.replace('|', '/')} |")
    trouble = [r for r in mine if r.passed is None]
    if trouble:
        lines += ["", "Problems while running your notebook (the cells after them still ran):", ""]
        lines += [f"- {r.message}" for r in trouble]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sub.student}.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def written_answers(solution: nbformat.NotebookNode, submissions: list[Submission]) -> tuple[int, str, dict[str, int]]:
    """(number of questions, a Markdown page with every student's written answers, question by
    question, {student: answers given}) — the markdown answer cells are for a person to read,
    not for the grader."""
    cells = normalise_solution(solution).cells
    markers = ("### BEGIN SOLUTION", "### END SOLUTION")
    lines, n_questions = [], 0
    given: dict[str, int] = {s.student: 0 for s in submissions}
    notebooks = {s.student: (_read_notebook(s.path)[0] if s.path is not None and not s.problem else None)
                 for s in submissions}
    for index, question in enumerate(cells):
        if question.cell_type != "markdown" or not question.metadata.get("nbgrader", {}).get("solution"):
            continue
        n_questions += 1
        source = question.source.split("\n")
        before = source[: next((i for i, line in enumerate(source) if line.strip() == markers[0]), 0)]
        context = before or next((c.source.split("\n") for c in reversed(cells[:index]) if c.cell_type == "markdown"), [])
        prompt = next((line.lstrip("#").strip() for line in context if line.strip()), _cell_key(question))
        lines += [f"## Question {n_questions}: {prompt}", ""]
        for sub in submissions:
            nb = notebooks[sub.student]
            cell = next((c for c in nb.cells if _cell_key(c) == _cell_key(question)), None) if nb is not None else None
            if cell is None:
                text = "(no notebook)" if nb is None else "(cell missing)"
            else:
                answer = cell.source.split("\n")
                answer = answer[len(before):] if answer[: len(before)] == before else answer  # drop the question
                text = "\n".join(line for line in answer if line.strip() not in markers).strip()
                text = "(no answer)" if text in ("", "YOUR ANSWER HERE") else text
                if text != "(no answer)":
                    given[sub.student] += 1
            lines += [f"### {sub.student}", "", *(f"> {line}" for line in text.split("\n")), ""]
    return n_questions, "\n".join(lines), given


def summary(rows: list[Row], cells: list[GradeCell], submissions: list[Submission]) -> str:
    """A plain-text table: each student's score, then each exercise's pass rate."""
    total = sum(c.points for c in cells)
    students = [s.student for s in submissions]
    width = max([len("student"), *map(len, students)]) + 2
    lines = [f"{'student':<{width}}{'score':>9}   note"]
    for sub in submissions:
        mine = [r for r in rows if r.student == sub.student]
        score = sum(r.points or 0 for r in mine)
        notes = [sub.problem] if sub.problem else []
        hung = [r for r in mine if r.passed is None]
        if hung:
            notes.append(f"{len(hung)} cell(s) hung or were killed")
        if sub.ignored:
            notes.append("also found, not graded: " + ", ".join(p.name for p in sub.ignored))
        lines.append(f"{sub.student:<{width}}{score:>5}/{total:<3}   {'; '.join(notes)}".rstrip())
    lines.append("")
    ex_width = max([len("exercise"), *(len(c.label) for c in cells)]) + 2
    lines.append(f"{'exercise':<{ex_width}}{'points':>6}  passed")
    for c in cells:
        mine = [r for r in rows if r.grade_id == c.grade_id and r.passed is not None]
        n_pass = sum(bool(r.passed) for r in mine)
        rate = f"{100 * n_pass / len(mine):.0f}%" if mine else "-"
        lines.append(f"{c.label:<{ex_width}}{c.points:>6}  {n_pass}/{len(mine)} ({rate})")
    return "\n".join(lines)


