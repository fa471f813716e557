"""Grade a folder of submitted exercise notebooks, the way nbgrader's autograder does.

    python -m mmcourse.grade SUBMISSIONS_DIR --assignment 01 [--solutions solutions]
                             [--out results.csv] [--timeout 120] [--total-timeout 900]
                             [--jobs 1] [--feedback DIR] [--answers FILE] [--executed DIR]

For each student (one sub-folder per student, or one `<name>.ipynb` per student at the top):

1. the notebook is copied into a temporary folder (the submission is never modified);
2. every graded cell (a cell tagged `check` or holding hidden tests in `solutions/NN_*.ipynb`)
   is put back from the solution by its nbgrader `grade_id` (= cell id), hidden tests
   included, so a student cannot edit or delete a check;
3. the notebook runs in a fresh kernel, every cell, errors allowed, with a time limit per
   cell and for the whole notebook;
4. each graded cell passes when it ran without an error: a `CheckFailed` error gives the
   check's sentence; any other error its name and message; a deleted cell is a "missing cell".

One row per (student, graded cell) goes to a CSV (`student, exercise, passed, points, message`),
and a summary is printed: the score of each student and the pass rate of each exercise. A
broken submission (invalid JSON, an empty file, a syntax error, an endless loop, a kernel that
dies, the wrong notebook) gets its reason in every row and never stops the batch. Exit code 0
means the grading ran, whatever the students scored.

Student code runs with your permissions: grade untrusted submissions in a container or VM.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

from mmcourse.checks.core import CHECK_MIMETYPE
from mmcourse.exercises import normalise_solution

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CELL_TIMEOUT = 120.0  # seconds per cell: a lesson-sized cell takes seconds
DEFAULT_TOTAL_TIMEOUT = 900.0  # seconds per notebook
DEFAULT_CHECK_TIMEOUT = 10.0  # seconds per call of student code inside a check
PROBE_TIMEOUT = 10  # seconds a kernel may take to answer after an interrupted cell
IOPUB_TIMEOUT = 10  # seconds a cell's last outputs may trail its reply (a backlog after a flood)
MAX_OUTPUT_CHARS = 100_000  # output kept per cell; a print in an endless loop makes gigabytes
CSV_FIELDS = ("student", "exercise", "passed", "points", "message")
_MESSAGE_CHARS = 300


@dataclass(frozen=True)
class GradeCell:
    """A graded cell of the assignment, as the solution defines it."""

    grade_id: str
    points: int
    source: str  # with hidden tests
    label: str = ""  # the name in the CSV and summary (readable; see `_label`)


@dataclass
class Row:
    """One line of the results: how one student did on one graded cell."""

    student: str
    exercise: str
    passed: bool
    points: int
    message: str


@dataclass
class Submission:
    """The notebook graded for one student, or why there is none."""

    student: str
    path: Path | None
    problem: str = ""  # non-empty: not gradable, this is why
    ignored: list[Path] = field(default_factory=list)  # other notebooks of the same student


@dataclass
class CellRun:
    """What happened when one cell was (or was not) executed."""

    status: str = "not run"  # "ran", "timeout", "incomplete" (outputs lost), "dead", "not run"
    reason: str = ""  # for "not run" / "dead": why


# --------------------------------------------------------------------------- the assignment


def find_solution(solutions_dir: Path, assignment: str) -> Path:
    """`solutions_dir/NN_*.ipynb` for `assignment` "NN", "N" or a full stem "NN_topic"."""
    pattern = f"{int(assignment):02d}_*.ipynb" if assignment.isdigit() else f"{assignment}.ipynb"
    matches = sorted(solutions_dir.glob(pattern))
    if len(matches) != 1:
        found = ", ".join(p.name for p in matches) or "nothing"
        raise ValueError(f"expected one solution notebook {pattern} in {solutions_dir}, found {found}")
    return matches[0]


def grade_cells(solution: nbformat.NotebookNode) -> list[GradeCell]:
    """The graded cells of a solution notebook, in order (nbgrader metadata is derived from the
    markers and tags if the solution has not been normalised yet)."""
    cells = []
    for cell in normalise_solution(solution).cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade") and not meta.get("solution"):
            cells.append(GradeCell(meta["grade_id"], int(meta.get("points", 1)), cell.source,
                                   _label(meta["grade_id"], cell.source)))
    seen: dict[str, int] = {}
    for c in cells:
        seen[c.label] = seen.get(c.label, 0) + 1
    return [c if seen[c.label] == 1 else GradeCell(c.grade_id, c.points, c.source, f"{c.label} [{c.grade_id}]")
            for c in cells]


_AUTO_ID = re.compile(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}|[0-9a-f]{8,32}")


def _label(grade_id: str, source: str) -> str:
    """A graded cell's name for people: its id if an author chose it (`check-info-nce`), else,
    for a generated id like `3fc37749`, the cell's `# Check: ...` title or the check it calls."""
    if not _AUTO_ID.fullmatch(grade_id):
        return grade_id
    title = re.search(r"^#\s*Check:\s*(.+?)\s*$", source, re.MULTILINE)
    if title:
        return title.group(1)
    call = re.search(r"\b(check_\w+)\s*\(", source)
    return call.group(1) if call else grade_id


def _cell_key(cell: nbformat.NotebookNode) -> str | None:
    """A cell's nbgrader `grade_id`, else its id (None if it has neither)."""
    meta = cell.get("metadata")
    nbgrader = meta.get("nbgrader") if isinstance(meta, dict) else None
    key = nbgrader.get("grade_id") if isinstance(nbgrader, dict) else None
    key = key or cell.get("id")
    return key if isinstance(key, str) else None


# --------------------------------------------------------------------------- finding submissions


def _read_notebook(path: Path) -> tuple[nbformat.NotebookNode | None, str]:
    """(notebook, "") or (None, why it is not a notebook)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None, "not a valid notebook (not UTF-8 text)"
    except OSError as err:
        return None, f"unreadable file ({type(err).__name__})"
    if not text.strip():
        return None, "empty file"
    try:
        nb = nbformat.reads(text, as_version=4)
    except Exception as err:  # noqa: BLE001 - any broken file is reported, not raised
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return None, f"not a valid notebook ({_short(first, 120)})"
    if not isinstance(nb.get("cells"), list):
        return None, "not a valid notebook (no cells)"
    for index, cell in enumerate(nb.cells):  # what the grader relies on; nbformat's schema is stricter
        if not (isinstance(cell, dict) and cell.get("cell_type") in ("code", "markdown", "raw")
                and isinstance(cell.get("source"), str)):
            return None, f"not a valid notebook (cell {index} is malformed)"
        if not isinstance(cell.get("metadata"), dict):
            cell["metadata"] = nbformat.NotebookNode()
    return nb, ""


def _student_name(rel: Path, stem: str) -> str:
    if len(rel.parts) > 1:
        return rel.parts[0]
    name = rel.stem.replace(stem, "")
    name = re.sub(r"^[\s_.-]+|[\s_.-]+$", "", name)
    return name or rel.stem


def find_submissions(root: Path, solution_path: Path, solution_ids: set[str]) -> list[Submission]:
    """One `Submission` per student under `root`, sorted by student.

    A student is a top-level sub-folder (all notebooks below it are theirs) or a top-level
    notebook (named after the student). When a student has several notebooks, the one named
    like the assignment wins, then one whose cells come from the solution. A notebook that is
    neither is reported, not graded.
    """
    stem = solution_path.stem
    by_student: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*.ipynb")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue  # .ipynb_checkpoints, hidden files
        by_student.setdefault(_student_name(rel, stem), []).append(path)

    submissions = []
    for student, paths in sorted(by_student.items(), key=lambda item: (item[0].casefold(), item[0])):
        ranked = []
        for path in paths:
            nb, problem = _read_notebook(path)
            named = stem in path.stem
            shares_cells = nb is not None and any(_cell_key(c) in solution_ids for c in nb.cells)
            rank = 0 if path.name == solution_path.name else 1 if named else 2 if shares_cells else 3
            if nb is not None and not nb.cells:
                problem = "empty notebook (no cells)"
            elif nb is not None and not shares_cells:  # whatever its name: not this assignment
                problem = f"not a notebook of this assignment: no cell of {solution_path.name} in it"
            # a gradable file beats a broken one; then the best name; then the newest
            ranked.append((bool(problem), rank, -path.stat().st_mtime, str(path), path, problem))
        ranked.sort()
        *_, path, problem = ranked[0]
        submissions.append(Submission(student, path, problem, [r[4] for r in ranked[1:]]))
    return submissions


# --------------------------------------------------------------------------- running a notebook


def prepare(nb: nbformat.NotebookNode, cells: list[GradeCell]) -> set[str]:
    """Put every graded cell's source back from the solution; returns the grade ids missing."""
    wanted = {c.grade_id: c for c in cells}
    found: set[str] = set()
    for cell in nb.cells:
        key = _cell_key(cell)
        if key in wanted and key not in found:
            if cell.cell_type != "code":  # a student may have turned it into markdown
                cell.cell_type = "code"
                cell.pop("attachments", None)
            cell.setdefault("outputs", [])
            cell.setdefault("execution_count", None)
            cell.source = wanted[key].source
            found.add(key)
    return set(wanted) - found


class _GradingClient(NotebookClient):
    """A notebook client that keeps at most MAX_OUTPUT_CHARS of output per cell (errors and
    check results always kept), so a flood of printing cannot exhaust the grader's memory."""

    def __init__(self, nb: nbformat.NotebookNode, **kw):
        super().__init__(nb, **kw)
        self._output_chars: dict[int, int] = {}  # cell index -> characters of output seen

    def output(self, outs, msg, display_id, cell_index):
        content = msg.get("content", {})
        data = content.get("data") or {}
        if msg["msg_type"] == "error" or CHECK_MIMETYPE in data:
            return super().output(outs, msg, display_id, cell_index)
        size = len(content.get("text", "")) + sum(len(str(v)) for v in data.values())
        used = self._output_chars.get(cell_index, 0)
        self._output_chars[cell_index] = used + size
        if used + size <= MAX_OUTPUT_CHARS:
            return super().output(outs, msg, display_id, cell_index)
        out = None
        if used < MAX_OUTPUT_CHARS and msg["msg_type"] == "stream":  # keep the start of the flood
            head = {**content, "text": content["text"][: MAX_OUTPUT_CHARS - used]}
            out = super().output(outs, {**msg, "content": head}, display_id, cell_index)
        if used <= MAX_OUTPUT_CHARS:  # the first output over the limit: say so, once
            outs.append(nbformat.v4.new_output(
                "stream", name="stderr", text=f"\n[mmcourse.grade: output cut after {MAX_OUTPUT_CHARS} characters]\n"))
        return out


def execute(nb: nbformat.NotebookNode, cwd: Path, cell_timeout: float, total_timeout: float,
            env: dict[str, str] | None = None) -> list[CellRun]:
    """Run every code cell of `nb` (in place) in a fresh kernel; never raises for what the
    notebook does. Returns what happened to each cell.

    A cell past `cell_timeout` is interrupted and the next cell runs; if the kernel does not
    come back from the interrupt, or dies, or the total time runs out, the remaining cells
    are not run and say why.
    """
    runs = [CellRun() for _ in nb.cells]
    cell_timeout_s = max(1, math.ceil(cell_timeout))
    client = _GradingClient(
        nb, timeout=cell_timeout_s, kernel_name="python3", allow_errors=True, interrupt_on_timeout=True,
        error_on_timeout={"ename": "TimeoutError", "evalue": "cell timed out", "traceback": []},
        resources={"metadata": {"path": str(cwd)}}, startup_timeout=60, iopub_timeout=IOPUB_TIMEOUT,
        raise_on_iopub_timeout=True,  # a cell whose outputs did not all arrive must not look clean
        record_timing=False, shell_timeout_interval=1, shutdown_kernel="immediate",
    )
    kernel_env = {**os.environ, **(env or {})}
    stop_reason = ""
    # The kernel's own stderr holds only its start-up chatter; the student's output comes via Jupyter.
    with client.setup_kernel(env=kernel_env, cwd=str(cwd), stderr=subprocess.DEVNULL):
        start = time.monotonic()  # the student's time starts when the kernel is up
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            if stop_reason:
                runs[index].reason = stop_reason
                continue
            left = total_timeout - (time.monotonic() - start)
            if left <= 0:
                stop_reason = runs[index].reason = f"not run: the notebook used up its {total_timeout:g} s time limit"
                continue
            client.timeout = max(1, math.ceil(min(cell_timeout_s, left)))
            t0 = time.monotonic()
            try:
                client.execute_cell(cell, index)
            except CellTimeoutError:
                if time.monotonic() - t0 < client.timeout - 0.05:  # replied, but its outputs never came
                    runs[index] = CellRun("incomplete", "its output did not arrive in time (after a flood of printing?)")
                    continue
                # else: timed out and interrupted, and the kernel did not even report idle: as below
            except DeadKernelError:
                runs[index] = CellRun("dead", "the kernel died while running this cell (os._exit, a crash, "
                                              "or out of memory)")
                stop_reason = f"not run: the kernel died in cell {index}"
                continue
            except Exception as err:  # noqa: BLE001 - whatever goes wrong, keep the cells already run
                runs[index] = CellRun("dead", _short(f"the grader could not run this cell ({type(err).__name__}: {err})"))
                stop_reason = f"not run: the grader could not run cell {index}"
                continue
            if time.monotonic() - t0 >= client.timeout - 0.05:
                runs[index] = CellRun("timeout", f"timed out after {client.timeout} s (an infinite loop?)")
                if not _responsive(client):
                    stop_reason = f"not run: cell {index} ran past its time limit and could not be interrupted"
                continue
            runs[index] = CellRun("ran")
    return runs


def _responsive(client) -> bool:
    """After an interrupted cell: does the kernel run a trivial cell again?"""
    client.timeout = PROBE_TIMEOUT
    try:
        msg_id = client.kc.execute("pass", store_history=False)
        return client.wait_for_reply(msg_id) is not None  # None: timed out (and interrupted again)
    except DeadKernelError:
        return False


# --------------------------------------------------------------------------- reading the results


def _short(text: str, limit: int = _MESSAGE_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_text(error: dict) -> str:
    """"Name: message" of an error output, without the kernel's temporary file names."""
    ename, evalue = error.get("ename", "Error"), error.get("evalue", "")
    evalue = re.sub(r"\([^()]*\.py, line (\d+)\)", r"(line \1)", evalue)  # SyntaxError: (8831.py, line 3)
    return f"{ename}: {evalue}" if evalue else ename


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
    message = _error_text(error)
    if ename == "NameError" and earlier:
        message += f" (an earlier cell failed: {earlier[1]})"
    return _short(message)


def collect(student: str, nb: nbformat.NotebookNode, cells: list[GradeCell], runs: list[CellRun],
            missing: set[str]) -> list[Row]:
    """One `Row` per graded cell from an executed notebook."""
    where: dict[str, int] = {}
    for i, c in enumerate(nb.cells):
        where.setdefault(_cell_key(c), i)  # the first copy is the one `prepare` restored
    graded_ids = {c.grade_id for c in cells}
    last_error: tuple[str, str] | None = None
    earlier: dict[int, tuple[str, str] | None] = {}
    for index, cell in enumerate(nb.cells):  # the last failed student cell before each cell
        earlier[index] = last_error
        if _cell_key(cell) in graded_ids:
            continue
        if runs[index].status in ("timeout", "dead", "incomplete"):
            last_error = (runs[index].status, f"cell {index} {runs[index].reason}")
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                last_error = (out.get("ename", ""), _short(f"cell {index}, {_error_text(out)}", 120))
                break

    rows = []
    for gc in cells:
        if gc.grade_id in missing:
            rows.append(Row(student, gc.label, False, 0, "missing cell"))
            continue
        index = where[gc.grade_id]
        run, outputs = runs[index], nb.cells[index].get("outputs", [])
        errors = [o for o in outputs if o.get("output_type") == "error"]
        results = [o["data"][CHECK_MIMETYPE] for o in outputs
                   if o.get("output_type") in ("display_data", "execute_result") and CHECK_MIMETYPE in o.get("data", {})]
        results = [r if isinstance(r, dict) else {} for r in results]
        failed = [r for r in results if not r.get("passed")]
        if run.status in ("timeout", "incomplete"):
            message = run.reason
        elif run.status in ("dead", "not run"):
            message = run.reason or "not run"
        elif errors:
            message = _error_message(errors[0], earlier[index])
        elif failed:
            message = _short(f"{failed[0].get('name', '')}: {failed[0].get('message', '')}")
        else:
            message = _short("; ".join(f"{r.get('name')}: {r.get('message')}" for r in results) or "passed")
            rows.append(Row(student, gc.label, True, gc.points, message))
            continue
        rows.append(Row(student, gc.label, False, 0, message))
    return rows


# --------------------------------------------------------------------------- one submission, a folder


def grade_submission(sub: Submission, cells: list[GradeCell], cell_timeout: float = DEFAULT_CELL_TIMEOUT,
                     total_timeout: float = DEFAULT_TOTAL_TIMEOUT, env: dict[str, str] | None = None,
                     executed_dir: Path | None = None) -> list[Row]:
    """Grade one submission; never raises for anything the submission contains."""
    def all_failed(message: str) -> list[Row]:
        return [Row(sub.student, c.label, False, 0, message) for c in cells]

    if sub.problem or sub.path is None:
        return all_failed(sub.problem or "no notebook")
    with tempfile.TemporaryDirectory(prefix="mmcourse-grade-") as tmp:
        copy = Path(tmp) / sub.path.name
        shutil.copyfile(sub.path, copy)  # the kernel works on (and may scribble next to) a copy
        nb, problem = _read_notebook(copy)
        if nb is None:
            return all_failed(problem)
        missing = prepare(nb, cells)
        try:
            runs = execute(nb, Path(tmp), cell_timeout, total_timeout, env)
        except Exception as err:  # noqa: BLE001 - e.g. the kernel cannot start: report, go on
            return all_failed(_short(f"grader error: {type(err).__name__}: {err}"))
        if executed_dir is not None:
            executed_dir.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, str(executed_dir / f"{sub.student}.ipynb"))
        return collect(sub.student, nb, cells, runs, missing)


def write_csv(rows: list[Row], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for r in rows:
            writer.writerow([r.student, r.exercise, r.passed, r.points, r.message])


def write_feedback(rows: list[Row], cells: list[GradeCell], sub: Submission, assignment: str, folder: Path) -> Path:
    """`folder/<student>.md`: the student's score and one line per exercise, to hand back
    (unlike the executed notebook, it does not show the hidden tests' code)."""
    total, mine = sum(c.points for c in cells), [r for r in rows if r.student == sub.student]
    points = {c.label: c.points for c in cells}
    lines = [f"# {assignment}: {sub.student}", "", f"**{sum(r.points for r in mine)} / {total} points**", ""]
    if sub.problem:
        lines += [f"Your notebook could not be graded: {sub.problem}.", ""]
    lines += ["| exercise | points | result |", "|---|---|---|"]
    for r in mine:
        mark = "✓" if r.passed else "✗"
        lines.append(f"| {r.exercise} | {r.points}/{points[r.exercise]} | {mark} {r.message.replace('|', '/')} |")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sub.student}.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def written_answers(solution: nbformat.NotebookNode, submissions: list[Submission]) -> tuple[int, str]:
    """(number of questions, a Markdown page with every student's written answers, question by
    question) — the markdown answer cells are for a person to read, not for the grader."""
    cells = normalise_solution(solution).cells
    markers = ("### BEGIN SOLUTION", "### END SOLUTION")
    lines, n_questions = [], 0
    for index, question in enumerate(cells):
        if question.cell_type != "markdown" or not question.metadata.get("nbgrader", {}).get("solution"):
            continue
        n_questions += 1
        source = question.source.splitlines()
        before = source[: next((i for i, line in enumerate(source) if line.strip() == markers[0]), 0)]
        context = before or next((c.source.splitlines() for c in reversed(cells[:index]) if c.cell_type == "markdown"), [])
        prompt = next((line.lstrip("#").strip() for line in context if line.strip()), _cell_key(question))
        lines += [f"## Question {n_questions}: {prompt}", ""]
        for sub in submissions:
            nb = _read_notebook(sub.path)[0] if sub.path is not None and not sub.problem else None
            cell = next((c for c in nb.cells if _cell_key(c) == _cell_key(question)), None) if nb is not None else None
            if cell is None:
                text = "(no notebook)" if nb is None else "(cell missing)"
            else:
                answer = cell.source.splitlines()
                answer = answer[len(before):] if answer[: len(before)] == before else answer  # drop the question
                text = "\n".join(line for line in answer if line.strip() not in markers).strip()
                text = "(no answer)" if text in ("", "YOUR ANSWER HERE") else text
            lines += [f"### {sub.student}", "", *(f"> {line}" for line in text.splitlines()), ""]
    return n_questions, "\n".join(lines)


def summary(rows: list[Row], cells: list[GradeCell], submissions: list[Submission]) -> str:
    """A plain-text table: each student's score, then each exercise's pass rate."""
    total = sum(c.points for c in cells)
    students = [s.student for s in submissions]
    width = max([len("student"), *map(len, students)]) + 2
    lines = [f"{'student':<{width}}{'score':>9}   note"]
    for sub in submissions:
        mine = [r for r in rows if r.student == sub.student]
        score = sum(r.points for r in mine)
        note = sub.problem
        if sub.ignored:
            note = (note + "; " if note else "") + "also found, not graded: " + ", ".join(p.name for p in sub.ignored)
        lines.append(f"{sub.student:<{width}}{score:>5}/{total:<3}   {note}".rstrip())
    lines.append("")
    ex_width = max([len("exercise"), *(len(c.label) for c in cells)]) + 2
    lines.append(f"{'exercise':<{ex_width}}{'points':>6}  passed")
    for c in cells:
        mine = [r for r in rows if r.exercise == c.label]
        n_pass = sum(r.passed for r in mine)
        rate = f"{100 * n_pass / len(mine):.0f}%" if mine else "-"
        lines.append(f"{c.label:<{ex_width}}{c.points:>6}  {n_pass}/{len(mine)} ({rate})")
    return "\n".join(lines)


def grade_folder(submissions_dir: Path, solution_path: Path, out: Path | None = None,
                 cell_timeout: float = DEFAULT_CELL_TIMEOUT, total_timeout: float = DEFAULT_TOTAL_TIMEOUT,
                 executed_dir: Path | None = None, log=None, jobs: int = 1,
                 feedback_dir: Path | None = None, answers: Path | None = None) -> list[Row]:
    """Grade every submission under `submissions_dir` against `solution_path`; write the CSV
    to `out` (if given) and print progress and the summary to `log` (default: stdout).
    `jobs` submissions run at the same time, each in its own kernel."""
    log = log or sys.stdout
    solution = nbformat.read(str(solution_path), as_version=4)
    cells = grade_cells(solution)
    if not cells:
        raise ValueError(f"{solution_path} has no graded cell (tag a cell `check` or add hidden tests)")
    solution_ids = {_cell_key(c) for c in solution.cells} - {None}
    submissions = find_submissions(submissions_dir, solution_path, solution_ids)
    env = {"MMCOURSE_CHECK_TIMEOUT": os.environ.get(
        "MMCOURSE_CHECK_TIMEOUT", f"{min(DEFAULT_CHECK_TIMEOUT, max(1.0, cell_timeout / 4)):g}")}
    points = sum(c.points for c in cells)
    print(f"Grading {len(submissions)} submission(s) of {solution_path.name}: {len(cells)} graded cells, "
          f"{points} points", file=log)

    def one(sub: Submission) -> list[Row]:
        t0 = time.monotonic()
        mine = grade_submission(sub, cells, cell_timeout, total_timeout, env, executed_dir)
        print(f"  {sub.student}: {sum(r.points for r in mine)}/{points} ({time.monotonic() - t0:.1f} s)", file=log)
        return mine

    if jobs <= 1:  # in the main thread: Ctrl-C stops at once
        rows = [row for sub in submissions for row in one(sub)]
    else:  # threads are enough: the work happens in each submission's kernel process
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            rows = [row for mine in pool.map(one, submissions) for row in mine]
    if out is not None:
        write_csv(rows, out)
    if feedback_dir is not None:
        for sub in submissions:
            write_feedback(rows, cells, sub, solution_path.stem, feedback_dir)
    n_questions, page = written_answers(solution, submissions)
    if answers is not None:
        answers.write_text(f"# Written answers: {solution_path.stem}\n\n{page}", encoding="utf-8")
    print("", file=log)
    print(summary(rows, cells, submissions), file=log)
    if n_questions:
        where = f"collected in {answers}" if answers is not None else "collect them with --answers FILE"
        print(f"\n{n_questions} written answer(s) per student are not graded automatically: {where}", file=log)
    if out is not None:
        print(f"\nResults: {out}", file=log)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmcourse.grade", description="Grade a folder of submitted exercise notebooks.",
        epilog="Exit code 0 means the grading ran (whatever the scores); 2 means bad arguments.")
    parser.add_argument("submissions", type=Path, help="folder with one sub-folder or notebook per student")
    parser.add_argument("--assignment", required=True, help="assignment number (01) or stem (01_infonce)")
    parser.add_argument("--solutions", type=Path, default=None,
                        help="folder of solution notebooks (default: ./solutions, else the course's)")
    parser.add_argument("--out", type=Path, default=Path("results.csv"), help="CSV to write (default: results.csv)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_CELL_TIMEOUT, help="seconds per cell")
    parser.add_argument("--total-timeout", type=float, default=DEFAULT_TOTAL_TIMEOUT, help="seconds per notebook")
    parser.add_argument("--jobs", type=int, default=1, help="submissions graded at the same time (default 1)")
    parser.add_argument("--feedback", type=Path, default=None,
                        help="also write each student's results as <student>.md here, to hand back")
    parser.add_argument("--answers", type=Path, default=None,
                        help="also collect the written (markdown) answers of every student into this .md file")
    parser.add_argument("--executed", type=Path, default=None,
                        help="also save each executed notebook here (<student>.ipynb), e.g. to return feedback")
    args = parser.parse_args(argv)

    solutions = args.solutions or (Path("solutions") if Path("solutions").is_dir() else ROOT / "solutions")
    if not args.submissions.is_dir():
        print(f"error: {args.submissions} is not a folder", file=sys.stderr)
        return 2
    try:
        solution_path = find_solution(solutions, args.assignment)
        grade_folder(args.submissions, solution_path, args.out, args.timeout, args.total_timeout, args.executed,
                     jobs=args.jobs, feedback_dir=args.feedback, answers=args.answers)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
