"""Stage 1, prepare: the assignment's graded cells (from the teacher's solution), the students'
submissions in a folder, and each submission made ready to run (graded cells put back whole).

What is graded is derived from the course's conventions, with no table to keep: a graded cell is
a cell tagged `check` (or holding hidden tests); the exercise's answer cells are the solution
cells above it with `### BEGIN SOLUTION` markers; the *graded names* are the names those answer
cells define that the graded cell passes to a call (`check_info_nce(info_nce)` grades
`info_nce`; `check_templates_beat_default(my_templates, shapes_model, ...)` grades
`my_templates` and takes `shapes_model` from the trusted reference run).
"""
from __future__ import annotations

import ast
import copy
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import nbformat

from mmcourse.classroom.exercises import normalise_solution
from mmcourse.classroom.notebooks import NotebookFormatError
from mmcourse.classroom.notebooks import read as read_notebook_file

ROOT = Path(__file__).resolve().parents[3]  # the repository (mmcourse/classroom/grade/this.py)
DEFAULT_CELL_TIMEOUT = 30.0  # seconds per cell; a solution cell tagged `timeout=N` gets N (training cells)
DEFAULT_TOTAL_TIMEOUT = 900.0  # seconds per notebook
DEFAULT_CHECK_TIMEOUT = 10.0  # seconds per call of student code inside a check
DEFAULT_MEMORY_MB = 4000  # data memory per kernel (RLIMIT_DATA); the assignments use well under 2 GB
CSV_FIELDS = ("student", "exercise", "passed", "points", "max_points", "status", "message", "cell", "grade_id",
              "isolation")
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
    names: tuple[str, ...] = ()  # the graded names: defined by the answer cells, passed to a call here


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
    isolation: str = ""  # how the student's kernel was isolated (see `sandbox.isolation`)


@dataclass
class Submission:
    """The notebook graded for one student, or why there is none."""

    student: str
    path: Path | None
    problem: str = ""  # non-empty: not gradable, this is why
    ignored: list[Path] = field(default_factory=list)  # other notebooks of the same student
    kernel_cpu: float | None = None  # CPU seconds the student's kernel reported (after grading; informative)


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
    else "<title> (<its `# Check:` title or the check it calls>)". Without a heading: an id an
    author chose (`check-info-nce`), the cell's `# Check: ...` title, the check it calls, or its id.
    """
    nb = normalise_solution(solution)
    cells, answers, first_answer, defined = [], [], "", set()
    headed: dict[str, bool] = {}
    for index, cell in enumerate(nb.cells):
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            answers.append(meta["grade_id"])
            first_answer = first_answer or next((ln for ln in cell.source.split("\n") if ln.strip()), "")
            if cell.cell_type == "code":
                defined |= _defined_names(cell.source)
        if meta.get("grade") and not meta.get("solution"):
            title = _section(nb.cells, index)
            headed[meta["grade_id"]] = bool(title)
            title = title or _label(meta["grade_id"], cell.source)
            names = tuple(n for n in _passed_names(cell.source) if n in defined)
            cells.append(GradeCell(meta["grade_id"], int(meta.get("points", 1)), cell.source, title,
                                   copy.deepcopy(cell), bool(_CHECK_CALL.search(cell.source)), tuple(answers),
                                   first_answer, names))
            answers, first_answer = [], ""
    count: dict[str, int] = {}
    named = []
    for c in cells:
        count[c.label] = count.get(c.label, 0) + 1
        if count[c.label] > 1 and headed[c.grade_id]:
            hidden_only = "### BEGIN HIDDEN TESTS" in c.source and not c.calls_check
            own = _label("0" * 8, c.source)  # its `# Check:` title or the check it calls
            suffix = "hidden tests" if hidden_only else own if own != "0" * 8 else f"check {count[c.label]}"
            c = replace(c, label=f"{c.label} ({suffix})")
        named.append(c)
    labels = [c.label for c in named]
    return [c if labels.count(c.label) == 1 else replace(c, label=f"{c.label} [{c.grade_id}]") for c in named]


def _visible_part(source: str) -> str:
    """A graded cell's source without its hidden tests (what the student was handed)."""
    return re.sub(r"\n?[ \t]*### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS[ \t]*", "", source, flags=re.S)


def _defined_names(source: str) -> set[str]:
    """Names a code cell defines at its top level (def, class, assignment, import)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    out: set[str] = set()
    for node in tree.body:
        for sub in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else [node]:
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out.add(sub.name)
            elif isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                out.add(sub.id)
            elif isinstance(sub, (ast.Import, ast.ImportFrom)):
                out |= {(a.asname or a.name).split(".")[0] for a in sub.names}
    return out


def _passed_names(source: str) -> list[str]:
    """Names a graded cell passes to a call or calls (`check_x(fn, value)` -> fn, value;
    `assert mean([1, 3]) == 2` -> mean), in order."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for arg in [node.func, *node.args, *(k.value for k in node.keywords)]:
                if isinstance(arg, ast.Name) and arg.id not in found:
                    found.append(arg.id)
    return found


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

    The student's copy of a graded cell is replaced by the solution's cell: source (as handed
    out: its hidden tests run only in the trusted judge), cell type and metadata (so a `skip-execution` or `raises-exception` tag a student
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
        restored.source = _visible_part(gc.source)  # the hidden tests run in the judge only
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


