"""Grade a folder of submitted exercise notebooks, the way nbgrader's autograder does.

    python -m mmcourse.classroom.grade SUBMISSIONS_DIR --assignment 01 [--solutions solutions]
                             [--out results.csv] [--gradebook gradebook.csv] [--timeout 30]
                             [--total-timeout 900] [--memory 4000] [--jobs 1]
                             [--feedback DIR] [--answers FILE] [--executed DIR]

For each student (one sub-folder per student, or one `<name>.ipynb` per student at the top):

1. the notebook is read (older nbformat 4 files, e.g. from Colab, are normalised) and copied
   into a temporary folder (the submission is never modified);
2. every graded cell (a cell tagged `check` or holding hidden tests in `solutions/NN_*.ipynb`)
   is put back whole from the solution by its nbgrader `grade_id` (= cell id): source, cell
   type, metadata (tags included) and position under its exercise, hidden tests included; a
   deleted one is put back too;
3. the notebook runs in a fresh kernel with a memory limit (RLIMIT_DATA), every cell, errors allowed, with a
   time limit per cell (`--timeout`, more for a cell the solution tags `timeout=N`) and for the
   whole notebook; right before a graded cell the grader arms the checks with a token made for
   that cell and binds the check names it uses again from `mmcourse.classroom.checks`;
4. a graded cell passes only when the kernel replied "ok" for it, it has no error, and (if it
   calls a check) a check result carrying that cell's token says "passed". A cell that did not
   run is "not run"; a check that reported nothing for this run, a `CheckFailed`, any other error
   or a hang each get their sentence.

Two CSV files (UTF-8 with a byte-order mark, so spreadsheets show τ and → right): `--out`, one
row per (student, graded cell) plus one per cell that hung or was killed, and `--gradebook`, one
row per student (total, maximum, one column per exercise, written answers still to mark). A
broken submission (invalid JSON, an empty file, a syntax error, an endless loop, a kernel that
dies, the wrong notebook) gets its reason in every row and never stops the batch. Exit code 0
means the grading ran, whatever the students scored; 2 means bad arguments or an unreadable
solution notebook.

Student code runs with your permissions, in the same process as the checks: grade untrusted
submissions in a container or VM (see the teacher guide for what a determined student can still do).
"""
from __future__ import annotations

import argparse
import copy
import csv
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

from mmcourse.classroom.checks.core import CHECK_MIMETYPE
from mmcourse.classroom.exercises import normalise_solution
from mmcourse.classroom.notebooks import NotebookFormatError
from mmcourse.classroom.notebooks import read as read_notebook_file

ROOT = Path(__file__).resolve().parents[2]  # the repository (mmcourse/classroom/this.py)
DEFAULT_CELL_TIMEOUT = 30.0  # seconds per cell; a solution cell tagged `timeout=N` gets N (training cells)
DEFAULT_TOTAL_TIMEOUT = 900.0  # seconds per notebook
DEFAULT_CHECK_TIMEOUT = 10.0  # seconds per call of student code inside a check
DEFAULT_MEMORY_MB = 4000  # data memory per kernel (RLIMIT_DATA); the assignments use well under 2 GB
PROBE_TIMEOUT = 10  # seconds a kernel may take to answer after an interrupted cell (and to arm a check)
IOPUB_TIMEOUT = 10  # seconds a cell's last outputs may trail its reply (a backlog after a flood)
MAX_OUTPUT_CHARS = 100_000  # output kept per cell; a print in an endless loop makes gigabytes
CSV_FIELDS = ("student", "exercise", "passed", "points", "max_points", "status", "message", "cell", "grade_id")
OTHER_CELLS = "(other cells)"  # the `exercise` of a row about a cell that hung or was killed
_MESSAGE_CHARS = 300
_CHECK_CALL = re.compile(r"\b(check_\w+|run_check|check_value)\s*\(")
_TIMEOUT_TAG = re.compile(r"timeout=(\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class GradeCell:
    """A graded cell of the assignment, as the solution defines it."""

    grade_id: str
    points: int
    source: str  # with hidden tests
    label: str = ""  # the exercise's name as the notebook gives it (see `grade_cells`)
    cell: nbformat.NotebookNode | None = None  # the whole solution cell, restored as it is
    calls_check: bool = False  # then a check must report a pass for this run
    answers: tuple[str, ...] = ()  # keys of the exercise's answer cells above it
    answer_start: str = ""  # first line of the first answer cell (`def info_nce(...)`)


@dataclass
class Row:
    """One line of the results: how one student did on one graded cell (or a cell that hung)."""

    student: str
    exercise: str
    passed: bool | None  # None: a row about a cell that is not graded
    points: int | None
    message: str
    max_points: int | None = None
    status: str = ""  # passed, failed, not attempted, error, not run, timed out, kernel died, not gradable
    cell: str = ""  # where the student finds the cell
    grade_id: str = ""


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
    reply: str = ""  # the kernel's execute_reply status ("ok", "error", "aborted"), "" if none
    token: str = ""  # graded cells: the token the checks were armed with ("" if arming failed)


@dataclass
class Prepared:
    """What `prepare` did to a submission before running it."""

    restored: dict[str, str] = field(default_factory=dict)  # grade_id -> "missing" or "moved"
    inserted: set[int] = field(default_factory=set)  # ids (id()) of cells that were not in the notebook
    missing_answers: set[str] = field(default_factory=set)  # answer cells of the solution not found


# --------------------------------------------------------------------------- the assignment


def find_solution(solutions_dir: Path, assignment: str) -> Path:
    """`solutions_dir/NN_*.ipynb` for `assignment` "NN", "N" or a full stem "NN_topic"."""
    pattern = f"{int(assignment):02d}_*.ipynb" if assignment.isdigit() else f"{assignment}.ipynb"
    matches = sorted(solutions_dir.glob(pattern))
    if len(matches) != 1:
        found = ", ".join(p.name for p in matches) or "nothing"
        raise ValueError(f"expected one solution notebook {pattern} in {solutions_dir}, found {found}")
    return matches[0]


def _heading(cell: nbformat.NotebookNode) -> str:
    """The first Markdown heading line of a markdown cell, without the #s ("" if none)."""
    if cell.cell_type != "markdown":
        return ""
    for line in cell.source.split("\n"):
        m = re.match(r"^\s*#{1,6}\s+(.+?)\s*#*\s*$", line)
        if m and not re.fullmatch(r"(BEGIN|END) (SOLUTION|HIDDEN TESTS)", m.group(1)):  # not a marker
            return m.group(1)
    return ""


def _section(cells: list, index: int) -> str:
    """The heading of the section holding cell `index` (the last heading above it)."""
    return next((h for h in (_heading(c) for c in reversed(cells[:index])) if h), "")


def grade_cells(solution: nbformat.NotebookNode) -> list[GradeCell]:
    """The graded cells of a solution notebook, in order (nbgrader metadata is derived from the
    markers and tags if the solution has not been normalised yet).

    Each is named after its exercise as the notebook titles it (the heading above it); a second
    graded cell under the same heading is "<title> (hidden tests)" if it holds only hidden tests,
    else "<title> (check 2)". Without a heading: an id an author chose (`check-info-nce`), the
    cell's `# Check: ...` title, the check it calls, or its id.
    """
    nb = normalise_solution(solution)
    cells, answers, first_answer = [], [], ""
    headed: dict[str, bool] = {}
    for index, cell in enumerate(nb.cells):
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            answers.append(meta["grade_id"])
            first_answer = first_answer or next((ln for ln in cell.source.split("\n") if ln.strip()), "")
        if meta.get("grade") and not meta.get("solution"):
            title = _section(nb.cells, index)
            headed[meta["grade_id"]] = bool(title)
            title = title or _label(meta["grade_id"], cell.source)
            restored = copy.deepcopy(cell)
            cells.append(GradeCell(meta["grade_id"], int(meta.get("points", 1)), cell.source, title, restored,
                                   bool(_CHECK_CALL.search(cell.source)), tuple(answers), first_answer))
            answers, first_answer = [], ""
    count: dict[str, int] = {}
    named = []
    for c in cells:
        count[c.label] = count.get(c.label, 0) + 1
        if count[c.label] > 1 and headed[c.grade_id]:
            hidden_only = "### BEGIN HIDDEN TESTS" in c.source and not c.calls_check
            suffix = "hidden tests" if hidden_only else f"check {count[c.label]}"
            c = GradeCell(c.grade_id, c.points, c.source, f"{c.label} ({suffix})", c.cell, c.calls_check, c.answers,
                          c.answer_start)
        named.append(c)
    labels = [c.label for c in named]
    return [c if labels.count(c.label) == 1 else GradeCell(c.grade_id, c.points, c.source, f"{c.label} [{c.grade_id}]",
                                                            c.cell, c.calls_check, c.answers, c.answer_start)
            for c in named]


_AUTO_ID = re.compile(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}|[0-9a-f]{8,32}")


def _label(grade_id: str, source: str) -> str:
    """A graded cell's name when no heading names its exercise: its id if an author chose it
    (`check-info-nce`), else, for a generated id like `3fc37749`, the cell's `# Check: ...` title
    or the check it calls."""
    if not _AUTO_ID.fullmatch(grade_id):
        return grade_id
    title = re.search(r"^#\s*Check:\s*(.+?)\s*$", source, re.MULTILINE)
    if title:
        return title.group(1)
    call = re.search(r"\b(check_\w+)\s*\(", source)
    return call.group(1) if call else grade_id


def cell_timeouts(solution: nbformat.NotebookNode) -> dict[str, float]:
    """Seconds allowed for the cells a solution tags `timeout=N` (e.g. a training cell), by cell key."""
    out = {}
    for cell in solution.cells:
        for tag in cell.get("metadata", {}).get("tags", []):
            m = _TIMEOUT_TAG.fullmatch(str(tag))
            if m and _cell_key(cell):
                out[_cell_key(cell)] = float(m.group(1))
    return out


def _cell_key(cell: nbformat.NotebookNode) -> str | None:
    """A cell's nbgrader `grade_id`, else its id (None if it has neither)."""
    meta = cell.get("metadata")
    nbgrader = meta.get("nbgrader") if isinstance(meta, dict) else None
    key = nbgrader.get("grade_id") if isinstance(nbgrader, dict) else None
    key = key or cell.get("id")
    return key if isinstance(key, str) else None


# --------------------------------------------------------------------------- finding submissions


def _read_notebook(path: Path) -> tuple[nbformat.NotebookNode | None, str]:
    """(notebook, "") or (None, why it is not a notebook). Older nbformat 4 files are normalised."""
    try:
        return read_notebook_file(path), ""
    except NotebookFormatError as err:
        return None, err.reason


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


# --------------------------------------------------------------------------- restoring graded cells


def prepare(nb: nbformat.NotebookNode, cells: list[GradeCell], solution_keys: list[str] | None = None) -> Prepared:
    """Put every graded cell back whole from the solution (in place), as nbgrader does.

    The student's copy of a graded cell is replaced by the solution's cell: source (hidden tests
    included), cell type and metadata (so a `skip-execution` or `raises-exception` tag a student
    added is gone), outputs cleared. It stays where the student has it if that is still between
    the solution cells around it (`solution_keys`: the solution's cell keys in order); a graded
    cell that was deleted or moved out of its exercise is inserted right before the next solution
    cell (after any cells the student added below the answer). Extra copies are dropped, and
    the outputs the student saved are cleared from every code cell.
    """
    wanted = {c.grade_id: c for c in cells}
    order = [k for k in (solution_keys or []) if k not in wanted]
    result = Prepared()
    kept: list = []
    was_at: dict[str, int] = {}
    for cell in nb.cells:
        key = _cell_key(cell)
        if key in wanted:
            was_at.setdefault(key, len(kept))  # it sat right before kept[len(kept)]
            continue
        if cell.cell_type == "code":  # outputs saved by the student are never read as results
            cell.outputs, cell.execution_count = [], None
        kept.append(cell)
    where = {}
    for i, cell in enumerate(kept):
        where.setdefault(_cell_key(cell), i)
    answer_keys = {k for c in cells for k in c.answers}
    result.missing_answers = {k for k in answer_keys if k not in where}
    inserts: dict[int, list] = {}
    for gc in cells:  # solution order
        position = (solution_keys or []).index(gc.grade_id) if gc.grade_id in (solution_keys or []) else None
        before = [k for k in order if position is not None and (solution_keys.index(k) < position) and k in where]
        after = [k for k in order if position is not None and (solution_keys.index(k) > position) and k in where]
        low = where[before[-1]] if before else -1
        high = where[after[0]] if after else len(kept)
        at = was_at.get(gc.grade_id)
        if at is None:
            result.restored[gc.grade_id] = "missing"
            at = high
        elif not low < at <= high:
            result.restored[gc.grade_id] = "moved"
            at = high
        restored = copy.deepcopy(gc.cell) if gc.cell is not None else nbformat.v4.new_code_cell(gc.source)
        restored.cell_type, restored.outputs, restored.execution_count = "code", [], None
        restored.pop("attachments", None)
        if gc.cell is None:
            restored.id = gc.grade_id
        if result.restored.get(gc.grade_id) == "missing":
            result.inserted.add(id(restored))
        inserts.setdefault(at, []).append(restored)
    cells_out = []
    for i in range(len(kept) + 1):
        cells_out.extend(inserts.get(i, []))
        if i < len(kept):
            cells_out.append(kept[i])
    nb.cells = cells_out
    return result


# --------------------------------------------------------------------------- running a notebook


class _GradingClient(NotebookClient):
    """A notebook client that keeps at most MAX_OUTPUT_CHARS of output per cell (errors and
    check results always kept), so a flood of printing cannot exhaust the grader's memory, and
    that records the kernel's reply status for each cell it ran."""

    def __init__(self, nb: nbformat.NotebookNode, **kw):
        super().__init__(nb, **kw)
        self._output_chars: dict[int, int] = {}  # cell index -> characters of output seen
        self.replies: dict[int, str] = {}  # cell index -> execute_reply status

    async def _check_raise_for_error(self, cell, cell_index, exec_reply):
        if exec_reply is not None:
            self.replies[cell_index] = str(exec_reply.get("content", {}).get("status", ""))
        return await super()._check_raise_for_error(cell, cell_index, exec_reply)

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
                "stream", name="stderr", text=f"\n[mmcourse.classroom.grade: output cut after {MAX_OUTPUT_CHARS} characters]\n"))
        return out


# The kernel command runs under this: it sets the address-space limit, then becomes the kernel.
_LIMIT_LAUNCHER = ("import os, resource, sys; n = int(sys.argv[1]); "
                   "resource.setrlimit(resource.RLIMIT_DATA, (n, n)); os.execvp(sys.argv[2], sys.argv[2:])")


class _LimitedKernelManager(AsyncKernelManager):
    """A kernel manager whose kernel process cannot allocate more than `memory_bytes` of data
    (RLIMIT_DATA, Unix: heap and private writable mappings, which is what tensors and Python
    objects use): an allocation past it fails in the kernel (MemoryError) instead of swapping the
    machine. Not RLIMIT_AS: the address space also counts what every OpenMP thread and malloc
    arena only reserves, so a limit on it fails a 2-thread training step that uses little memory."""

    memory_bytes: int | None = None

    def format_kernel_cmd(self, extra_arguments=None):
        cmd = super().format_kernel_cmd(extra_arguments)
        if not self.memory_bytes or sys.platform == "win32":
            return cmd
        return [sys.executable, "-c", _LIMIT_LAUNCHER, str(int(self.memory_bytes)), *cmd]


def _kernel_manager_class(memory_mb: float | None) -> type:
    return type("_Limited", (_LimitedKernelManager,), {"memory_bytes": int(memory_mb * 2**20) if memory_mb else None})


def _arm_code(token: str, source: str) -> str:
    names = sorted(set(re.findall(r"\b([A-Za-z_]\w*)\b", source)))
    return f"__import__('mmcourse.classroom.checks.core', fromlist=['_arm'])._arm({token!r}, {names!r})"


def _silent(client, code: str) -> str:
    """Run `code` in the kernel without output or history; the reply's status ("" if none came)."""
    client.timeout = PROBE_TIMEOUT
    try:
        msg_id = client.kc.execute(code, silent=True, store_history=False)
        reply = client.wait_for_reply(msg_id)
    except (DeadKernelError, CellTimeoutError, RuntimeError):
        return ""
    return str(reply.get("content", {}).get("status", "")) if reply else ""


def execute(nb: nbformat.NotebookNode, cwd: Path, cell_timeout: float, total_timeout: float,
            env: dict[str, str] | None = None, graded: dict[str, GradeCell] | None = None,
            timeouts: dict[str, float] | None = None, memory_mb: float | None = DEFAULT_MEMORY_MB,
            inserted: set[int] | None = None) -> list[CellRun]:
    """Run every code cell of `nb` (in place) in a fresh kernel; never raises for what the
    notebook does. Returns what happened to each cell.

    `graded` (grade_id -> cell): before each of these cells the checks are armed with a fresh
    token (kept in its `CellRun`) and its check names are bound again from the package; after
    it they are disarmed. `timeouts` (cell key -> seconds) raise the limit of a tagged cell.
    `memory_mb` limits each kernel's data memory (None: no limit). `inserted` (ids of cells
    the grader put back) are left out of the code-cell numbers messages give.

    A cell past its time limit is interrupted and the next cell runs; if the kernel does not
    come back from the interrupt, or dies, or the total time runs out, the remaining cells
    are not run and say why.
    """
    graded, timeouts = graded or {}, timeouts or {}
    runs = [CellRun() for _ in nb.cells]
    cell_timeout_s = max(1, math.ceil(cell_timeout))
    client = _GradingClient(
        nb, timeout=cell_timeout_s, kernel_name="python3", allow_errors=True, interrupt_on_timeout=True,
        error_on_timeout={"ename": "TimeoutError", "evalue": "cell timed out", "traceback": []},
        resources={"metadata": {"path": str(cwd)}}, startup_timeout=60, iopub_timeout=IOPUB_TIMEOUT,
        raise_on_iopub_timeout=True,  # a cell whose outputs did not all arrive must not look clean
        record_timing=False, shell_timeout_interval=1, shutdown_kernel="immediate",
        kernel_manager_class=_kernel_manager_class(memory_mb),
        skip_cells_with_tag="mmcourse-grader-never-skips",  # restored cells carry the solution's tags anyway
    )
    kernel_env = {**os.environ, **(env or {})}
    stop_reason = ""
    where = _Locator(nb, inserted)
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
            key = _cell_key(cell)
            limit = max(cell_timeout_s, math.ceil(timeouts.get(key, 0)))
            token = ""
            if key in graded:
                token = secrets.token_hex(16)
                if _silent(client, _arm_code(token, cell.source)) != "ok":
                    token = ""  # the checks could not be armed: no result can count
            client.timeout = max(1, math.ceil(min(limit, left)))
            t0 = time.monotonic()
            try:
                client.execute_cell(cell, index)
            except CellTimeoutError:
                if time.monotonic() - t0 < client.timeout - 0.05:  # replied, but its outputs never came
                    runs[index] = CellRun("incomplete", "its output did not arrive in time (after a flood of printing?)",
                                          client.replies.get(index, ""), token)
                    continue
                # else: timed out and interrupted, and the kernel did not even report idle: as below
            except DeadKernelError:
                runs[index] = CellRun("dead", "the kernel died while running it (os._exit, a crash, or out of memory)",
                                      token=token)
                stop_reason = f"not run: the kernel died in {where(index)}"
                continue
            except Exception as err:  # noqa: BLE001 - whatever goes wrong, keep the cells already run
                runs[index] = CellRun("dead", _short(f"the grader could not run it ({type(err).__name__}: {err})"),
                                      token=token)
                stop_reason = f"not run: the grader could not run {where(index)}"
                continue
            if time.monotonic() - t0 >= client.timeout - 0.05:
                runs[index] = CellRun("timeout", f"timed out after {client.timeout} s and was interrupted "
                                                 "(an infinite loop?)", client.replies.get(index, ""), token)
                if not _responsive(client):
                    stop_reason = f"not run: {where(index)} ran past its time limit and could not be interrupted"
                continue
            runs[index] = CellRun("ran", reply=client.replies.get(index, ""), token=token)
            if key in graded:
                _silent(client, "__import__('mmcourse.classroom.checks.core', fromlist=['_disarm'])._disarm()")
    return runs


def _responsive(client) -> bool:
    """After an interrupted cell: does the kernel run a trivial cell again?"""
    client.timeout = PROBE_TIMEOUT
    try:
        msg_id = client.kc.execute("pass", store_history=False)
        return client.wait_for_reply(msg_id) is not None  # None: timed out (and interrupted again)
    except DeadKernelError:
        return False


class _Locator:
    """Names a cell so a student can find it: JupyterLab shows no numbers, so the section
    heading above it, its number among the code cells, and its first line."""

    def __init__(self, nb: nbformat.NotebookNode, inserted: set[int] | None = None):
        self.nb, self.inserted = nb, inserted or set()

    def __call__(self, index: int) -> str:
        cells = self.nb.cells
        number = sum(1 for c in cells[: index + 1] if c.cell_type == "code" and id(c) not in self.inserted)
        section = _section(cells, index)
        first = next((ln.strip() for ln in cells[index].source.split("\n") if ln.strip()), "")
        text = f"code cell {number}" + (f" under “{section}”" if section else "")
        return text + (f" (`{_short(first, 50)}`)" if first else "")


# --------------------------------------------------------------------------- reading the results


def _short(text: str, limit: int = _MESSAGE_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


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


# --------------------------------------------------------------------------- one submission, a folder


def grade_submission(sub: Submission, cells: list[GradeCell], cell_timeout: float = DEFAULT_CELL_TIMEOUT,
                     total_timeout: float = DEFAULT_TOTAL_TIMEOUT, env: dict[str, str] | None = None,
                     executed_dir: Path | None = None, solution_keys: list[str] | None = None,
                     timeouts: dict[str, float] | None = None, memory_mb: float | None = DEFAULT_MEMORY_MB) -> list[Row]:
    """Grade one submission; never raises for anything the submission contains."""
    def all_failed(message: str) -> list[Row]:
        return [Row(sub.student, c.label, False, 0, message, c.points, "not gradable", "", c.grade_id) for c in cells]

    if sub.problem or sub.path is None:
        return all_failed(sub.problem or "no notebook")
    with tempfile.TemporaryDirectory(prefix="mmcourse-grade-") as tmp:
        copy_path = Path(tmp) / sub.path.name
        shutil.copyfile(sub.path, copy_path)  # the kernel works on (and may scribble next to) a copy
        nb, problem = _read_notebook(copy_path)
        if nb is None:
            return all_failed(problem)
        prepared = prepare(nb, cells, solution_keys or [c.grade_id for c in cells])
        try:
            runs = execute(nb, Path(tmp), cell_timeout, total_timeout, env, {c.grade_id: c for c in cells},
                           timeouts, memory_mb, prepared.inserted)
        except Exception as err:  # noqa: BLE001 - e.g. the kernel cannot start: report, go on
            return all_failed(_short(f"grader error: {type(err).__name__}: {err}"))
        if executed_dir is not None:
            executed_dir.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, str(executed_dir / f"{sub.student}.ipynb"))
        return collect(sub.student, nb, cells, runs, prepared)


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
                             "" if r.max_points is None else r.max_points, r.status, r.message, r.cell, r.grade_id])


def gradebook_columns(cells: list[GradeCell]) -> list[str]:
    """The gradebook's header: student, total, maximum, one column per exercise ("title (N pt)"),
    written answers still to mark, notes."""
    return ["student", "total", "maximum", *(f"{c.label} ({c.points} pt)" for c in cells),
            "written answers to mark", "notes"]


def write_gradebook(rows: list[Row], cells: list[GradeCell], submissions: list[Submission],
                    written: dict[str, int], path: Path) -> None:
    """One row per student: total, maximum, the points of each exercise, how many written
    answers a person still has to mark (not in the total), and notes (an ungradable notebook,
    cells that hung or were killed). UTF-8 with a BOM and commas: it opens right in Excel,
    LibreOffice, Numbers and Google Sheets, and `pandas.read_csv` reads it."""
    maximum = sum(c.points for c in cells)
    with open(path, "w", newline="", encoding="utf-8-sig") as f:
        writer = csv.writer(f)
        writer.writerow(gradebook_columns(cells))
        for sub in submissions:
            mine = [r for r in rows if r.student == sub.student]
            by_id = {r.grade_id: r for r in mine if r.passed is not None}
            notes = [sub.problem] if sub.problem else []
            notes += [f"{r.status}: {r.cell}" for r in mine if r.passed is None]
            writer.writerow([sub.student, sum(r.points or 0 for r in mine), maximum,
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


def kernel_env(jobs: int, cell_timeout: float) -> dict[str, str]:
    """Environment for the students' kernels: the checks' time limit, and threads per kernel.

    Threads: `MMCOURSE_NUM_THREADS` or `OMP_NUM_THREADS` if you set one (both are passed on),
    else the machine's cores shared among the `jobs` kernels, at least 1 each.
    """
    env = {"MMCOURSE_CHECK_TIMEOUT": os.environ.get(
        "MMCOURSE_CHECK_TIMEOUT", f"{min(DEFAULT_CHECK_TIMEOUT, max(1.0, cell_timeout / 4)):g}")}
    threads = os.environ.get("MMCOURSE_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    if not threads:
        threads = str(max(1, (os.cpu_count() or 1) // max(1, jobs)))
    env.setdefault("MMCOURSE_NUM_THREADS", os.environ.get("MMCOURSE_NUM_THREADS", threads))
    env.setdefault("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", threads))
    return env


def grade_folder(submissions_dir: Path, solution_path: Path, out: Path | None = None,
                 cell_timeout: float = DEFAULT_CELL_TIMEOUT, total_timeout: float = DEFAULT_TOTAL_TIMEOUT,
                 executed_dir: Path | None = None, log=None, jobs: int = 1,
                 feedback_dir: Path | None = None, answers: Path | None = None,
                 gradebook: Path | None = None, memory_mb: float | None = DEFAULT_MEMORY_MB) -> list[Row]:
    """Grade every submission under `submissions_dir` against `solution_path`; write the
    detailed CSV to `out` and the per-student gradebook to `gradebook` (if given), and print
    progress and the summary to `log` (default: stdout). `jobs` submissions run at the same
    time, each in its own kernel.

    Raises:
        ValueError: the solution has no graded cell; NotebookFormatError (a ValueError): the
            solution is not a readable notebook.
    """
    log = log or sys.stdout
    solution = read_notebook_file(solution_path)
    cells = grade_cells(solution)
    if not cells:
        raise ValueError(f"{solution_path} has no graded cell (tag a cell `check` or add hidden tests)")
    solution_keys = [k for k in (_cell_key(c) for c in normalise_solution(solution).cells) if k]
    solution_ids = set(solution_keys)
    timeouts = cell_timeouts(solution)
    submissions = find_submissions(submissions_dir, solution_path, solution_ids)
    env = kernel_env(jobs, cell_timeout)
    points = sum(c.points for c in cells)
    title = next((h for h in map(_heading, solution.cells) if h), solution_path.stem)
    print(f"Grading {len(submissions)} submission(s) of {solution_path.name}: {len(cells)} graded cells, "
          f"{points} points", file=log)

    def one(sub: Submission) -> list[Row]:
        t0 = time.monotonic()
        mine = grade_submission(sub, cells, cell_timeout, total_timeout, env, executed_dir, solution_keys,
                                timeouts, memory_mb)
        print(f"  {sub.student}: {sum(r.points or 0 for r in mine)}/{points} ({time.monotonic() - t0:.1f} s)", file=log)
        return mine

    if jobs <= 1:  # in the main thread: Ctrl-C stops at once
        rows = [row for sub in submissions for row in one(sub)]
    else:  # threads are enough: the work happens in each submission's kernel process
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            rows = [row for mine in pool.map(one, submissions) for row in mine]
    n_questions, page, given = written_answers(solution, submissions)  # given: answers to mark
    if out is not None:
        write_csv(rows, out)
    if gradebook is not None:
        write_gradebook(rows, cells, submissions, given, gradebook)
    if feedback_dir is not None:
        for sub in submissions:
            write_feedback(rows, cells, sub, solution_path.stem, feedback_dir, n_questions, title)
    if answers is not None:
        answers.write_text(f"# Written answers: {solution_path.stem}\n\n{page}", encoding="utf-8")
    print("", file=log)
    print(summary(rows, cells, submissions), file=log)
    if n_questions:
        where = f"collected in {answers}" if answers is not None else "collect them with --answers FILE"
        print(f"\n{n_questions} written answer(s) per student are not graded automatically: {where}", file=log)
    if out is not None:
        print(f"\nResults: {out}" + (f"; gradebook: {gradebook}" if gradebook is not None else ""), file=log)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmcourse.classroom.grade", description="Grade a folder of submitted exercise notebooks.",
        epilog="Exit code 0 means the grading ran (whatever the scores); 2 means bad arguments or an "
               "unreadable solution notebook.")
    parser.add_argument("submissions", type=Path, help="folder with one sub-folder or notebook per student")
    parser.add_argument("--assignment", required=True, help="assignment number (01) or stem (01_infonce)")
    parser.add_argument("--solutions", type=Path, default=None,
                        help="folder of solution notebooks (default: ./solutions, else the course's)")
    parser.add_argument("--out", type=Path, default=Path("results.csv"),
                        help="detailed CSV to write, one row per student and graded cell (default: results.csv)")
    parser.add_argument("--gradebook", type=Path, default=None,
                        help="per-student CSV: total, maximum, one column per exercise "
                             "(default: gradebook.csv next to --out)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_CELL_TIMEOUT,
                        help=f"seconds per cell (default {DEFAULT_CELL_TIMEOUT:g}; cells the solution tags "
                             "timeout=N get N)")
    parser.add_argument("--total-timeout", type=float, default=DEFAULT_TOTAL_TIMEOUT, help="seconds per notebook")
    parser.add_argument("--memory", type=float, default=DEFAULT_MEMORY_MB,
                        help=f"MB of memory per kernel (RLIMIT_DATA; default {DEFAULT_MEMORY_MB}; 0: no limit)")
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
    if args.jobs < 1 or args.timeout <= 0 or args.total_timeout <= 0 or args.memory < 0:
        print("error: --jobs must be >= 1, --timeout and --total-timeout > 0, --memory >= 0", file=sys.stderr)
        return 2
    gradebook = args.gradebook or args.out.with_name("gradebook.csv")
    try:
        solution_path = find_solution(solutions, args.assignment)
        grade_folder(args.submissions, solution_path, args.out, args.timeout, args.total_timeout, args.executed,
                     jobs=args.jobs, feedback_dir=args.feedback, answers=args.answers, gradebook=gradebook,
                     memory_mb=args.memory or None)
    except ValueError as err:  # NotebookFormatError included: one line, exit 2
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
