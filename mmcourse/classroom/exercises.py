"""Generate the exercise notebooks from the solution notebooks.

`solutions/NN_topic.ipynb` are the sources (nbgrader-style markers); `exercises/NN_topic.ipynb`
are generated and never edited by hand::

    python -m mmcourse.classroom.exercises            # write exercises/ (and normalise solutions' metadata)
    python -m mmcourse.classroom.exercises --check    # fail, naming the files, if anything is stale

Rules, the same as nbgrader's:
- a code region between `### BEGIN SOLUTION` and `### END SOLUTION` becomes
  `# YOUR CODE HERE` + `raise NotImplementedError()` at the region's indentation;
- a markdown region between the same markers becomes `YOUR ANSWER HERE`;
- a region between `### BEGIN HIDDEN TESTS` and `### END HIDDEN TESTS` is removed (the cell
  stays, so the grader can put the tests back by its `grade_id`);
- outputs and execution counts are cleared; cell ids are kept; a cell without markers is
  copied byte for byte (sources are split on "\n" only: a form feed or a Unicode line
  separator inside a string is not a line break, in Python or in nbformat);
- graded cells (checks, hidden tests) are locked in the exercise (`deletable: false`,
  `editable: false`, nbgrader's `locked`); the grader restores them from the solution anyway;
- every cell with a solution region, and every cell tagged `check` or holding hidden tests, gets
  nbgrader metadata (`grade_id` = cell id; graded cells are worth 1 point, or N with a tag
  `points=N`), written into both the solution and the exercise so the solutions are valid
  nbgrader source notebooks.

Solutions are read with `mmcourse.classroom.notebooks.read`, so a notebook saved by Colab or an older tool
(nbformat 4.0–4.4, no cell ids) is accepted (ids are derived from each cell's position and
source); a file that is not a notebook is one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

from mmcourse.classroom.notebooks import NotebookFormatError, read

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
MARKDOWN_STUB = "YOUR ANSWER HERE"
CHECK_TAG = "check"
NBGRADER_SCHEMA = 3
ROOT = Path(__file__).resolve().parents[2]  # the repository (mmcourse/classroom/this.py)


class MarkerError(ValueError):
    """Markers are unbalanced or nested."""


@dataclass(frozen=True)
class Paths:
    solutions: Path = ROOT / "solutions"
    exercises: Path = ROOT / "exercises"


def _strip_region(lines: list[str], begin: str, end: str, replacement: tuple[str, ...] | None,
                  where: str) -> tuple[list[str], int]:
    """Replace (or drop, if `replacement` is None) each begin..end region; returns new lines and
    the number of regions."""
    out: list[str] = []
    inside, indent, count = False, "", 0
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped == begin:
            if inside:
                raise MarkerError(f"{where}, line {number}: {begin!r} inside another region")
            inside, count = True, count + 1
            indent = line[: len(line) - len(line.lstrip())]
            if replacement is not None:
                out.extend(indent + r for r in replacement)
        elif stripped == end:
            if not inside:
                raise MarkerError(f"{where}, line {number}: {end!r} without {begin!r}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise MarkerError(f"{where}: {begin!r} is never closed by {end!r}")
    return out, count


def _points(cell: nbformat.NotebookNode) -> int:
    for tag in cell.metadata.get("tags", []):
        m = re.fullmatch(r"points=(\d+)", tag)
        if m:
            return int(m.group(1))
    return 1


def _nbgrader_metadata(cell: nbformat.NotebookNode, solution: bool, graded: bool) -> dict | None:
    if not (solution or graded):
        return None
    meta = {"grade": graded, "grade_id": cell.id, "locked": not solution, "schema_version": NBGRADER_SCHEMA,
            "solution": solution, "task": False}
    if graded:
        meta["points"] = _points(cell)
    return meta


def normalise_solution(nb: nbformat.NotebookNode, name: str = "<solution>") -> nbformat.NotebookNode:
    """The solution notebook with outputs cleared and nbgrader metadata set (a copy)."""
    nb = copy.deepcopy(nb)
    for index, cell in enumerate(nb.cells):
        where = f"{name}, cell {index}"
        lines = cell.source.split("\n")
        _, n_solution = _strip_region(lines, BEGIN_SOLUTION, END_SOLUTION, (), where)
        _, n_hidden = _strip_region(lines, BEGIN_HIDDEN, END_HIDDEN, None, where)
        if n_hidden and cell.cell_type != "code":
            raise MarkerError(f"{where}: hidden tests must be in a code cell")
        graded = cell.cell_type == "code" and (n_hidden > 0 or CHECK_TAG in cell.metadata.get("tags", []))
        meta = _nbgrader_metadata(cell, solution=n_solution > 0, graded=graded)
        cell.metadata.pop("nbgrader", None)
        if meta:
            cell.metadata["nbgrader"] = meta
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def make_exercise(solution: nbformat.NotebookNode, name: str = "<solution>") -> nbformat.NotebookNode:
    """The exercise notebook generated from a (normalised) solution notebook."""
    nb = normalise_solution(solution, name)
    n_regions = 0
    for index, cell in enumerate(nb.cells):
        where = f"{name}, cell {index}"
        lines = cell.source.split("\n")  # only "\n" ends a line (not \f, \v, \x85, \u2028, ...)
        stub = CODE_STUB if cell.cell_type == "code" else (MARKDOWN_STUB,)
        lines, n = _strip_region(lines, BEGIN_SOLUTION, END_SOLUTION, stub, where)
        lines, n_hidden = _strip_region(lines, BEGIN_HIDDEN, END_HIDDEN, None, where)
        n_regions += n
        if n or n_hidden:  # a cell without markers stays byte-identical
            cell.source = "\n".join(lines).rstrip("\n") if n_hidden else "\n".join(lines)
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade") and not meta.get("solution"):  # a check or hidden tests: locked
            cell.metadata["deletable"] = False
            cell.metadata["editable"] = False
    if n_regions == 0:
        raise MarkerError(f"{name}: no {BEGIN_SOLUTION!r} region, so there is no exercise")
    nb.metadata.setdefault("mmcourse", {})["generated_from"] = f"solutions/{name}"
    return nb


def _dumps(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def generate(paths: Paths = Paths(), check: bool = False, out=sys.stdout) -> list[str]:
    """Write (or, with `check`, compare) every exercise notebook and normalised solution.

    Returns:
        The files that were stale (with `check`) or written.

    Raises:
        MarkerError: unbalanced markers (the message names the file and cell).
        NotebookFormatError: a solution file is not a readable notebook.
        FileNotFoundError: the solutions folder does not exist or holds no notebook (nothing to generate
            from is an error, not "up to date").
    """
    changed: list[str] = []
    sources = sorted(paths.solutions.glob("*.ipynb"))
    if not sources:
        raise FileNotFoundError(f"no solution notebooks in {paths.solutions} (is it the course's solutions/ folder?)")
    expected: dict[Path, str] = {}
    for src in sources:
        solution = read(src)
        expected[src] = _dumps(normalise_solution(solution, src.name))
        expected[paths.exercises / src.name] = _dumps(make_exercise(solution, src.name))
    for target, text in expected.items():
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current == text:
            continue
        changed.append(str(target.relative_to(paths.solutions.parent)))
        if not check:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
    if paths.exercises.exists():  # an exercise whose solution is gone is stale too
        for orphan in sorted(paths.exercises.glob("*.ipynb")):
            if paths.exercises / orphan.name not in expected:
                changed.append(str(orphan.relative_to(paths.solutions.parent)))
                if not check:
                    orphan.unlink()
    verb = "stale" if check else "written"
    for name in changed:
        print(f"{verb}: {name}", file=out)
    if check and changed:
        print("Run `python -m mmcourse.classroom.exercises` to regenerate.", file=out)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmcourse.classroom.exercises", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if any generated file is stale")
    parser.add_argument("--solutions", type=Path, default=Paths.solutions)
    parser.add_argument("--exercises", type=Path, default=Paths.exercises)
    args = parser.parse_args(argv)
    try:
        changed = generate(Paths(args.solutions, args.exercises), check=args.check)
    except (MarkerError, NotebookFormatError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.check:
        if not changed:
            print("exercises are up to date")
        return 1 if changed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
