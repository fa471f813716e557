"""Grade a folder of submitted exercise notebooks: the command line and the pipeline.

    python -m mmcourse.classroom.grade SUBMISSIONS_DIR --assignment 01 [--solutions solutions]
                             [--out results.csv] [--gradebook gradebook.csv] [--roster roster.csv]
                             [--lms canvas|moodle] [--timeout 30] [--total-timeout 900] [--memory 4000]
                             [--jobs 1] [--isolation auto|bwrap|none] [--seed N]
                             [--feedback DIR] [--answers FILE] [--executed DIR]

The stages, one module each:

1. `prepare`: the graded cells and graded names from the solution; the submissions; each
   notebook copied, its graded cells put back as handed out;
2. `reference`: the solution runs once in a trusted judge kernel (models trained or loaded into
   the cache, each cell timed, every call of a graded function recorded);
3. `execute`: each submission runs in a fresh kernel (in a bubblewrap sandbox on Linux,
   `sandbox`); after each graded cell the kernel computes the graded values on the recorded
   inputs and writes them back as plain data (`protocol`);
4. the judge runs each graded cell, hidden tests included, on those values; `collect` turns its
   verdicts and what happened in the student's kernel into rows;
5. `report`: CSV, gradebook, LMS export, feedback, written answers, summary.

Exit code 0 means the grading ran, whatever the students scored; 2 means bad arguments, an
unreadable solution notebook or a solution that fails its own cells.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat

from mmcourse.classroom.exercises import normalise_solution
from mmcourse.classroom.grade.collect import collect
from mmcourse.classroom.grade.execute import _short, collect_values, execute
from mmcourse.classroom.grade.prepare import (DEFAULT_CELL_TIMEOUT, DEFAULT_CHECK_TIMEOUT, DEFAULT_MEMORY_MB,
                                    DEFAULT_TOTAL_TIMEOUT, ROOT, CellRun, GradeCell, Row, Submission, _cell_key,
                                    _heading, _read_notebook, cell_timeouts, find_solution, find_submissions,
                                    grade_cells, prepare)
from mmcourse.classroom.grade.reference import Judge, SolutionFailed
from mmcourse.classroom.grade.report import (read_roster, summary, write_csv, write_feedback, write_gradebook, write_lms,
                                   written_answers)
from mmcourse.classroom.grade.sandbox import isolation
from mmcourse.classroom.notebooks import read as read_notebook_file

LIBRARY_MESSAGE = "you called mmcourse's {name}; this exercise asks you to write it"


def grade_submission(sub: Submission, cells: list[GradeCell], judge: Judge, cell_timeout: float = DEFAULT_CELL_TIMEOUT,
                     total_timeout: float = DEFAULT_TOTAL_TIMEOUT, env: dict[str, str] | None = None,
                     executed_dir: Path | None = None, solution_keys: list[str] | None = None,
                     timeouts: dict[str, float] | None = None, memory_mb: float | None = DEFAULT_MEMORY_MB,
                     isolated: bool = False, isolation_note: str = "") -> list[Row]:
    """Grade one submission; never raises for anything the submission contains."""
    def all_failed(message: str) -> list[Row]:
        return [Row(sub.student, c.label, False, 0, message, c.points, "not gradable", "", c.grade_id, isolation_note)
                for c in cells]

    if sub.problem or sub.path is None:
        return all_failed(sub.problem or "no notebook")
    check_timeout = float((env or {}).get("MMCOURSE_CHECK_TIMEOUT", DEFAULT_CHECK_TIMEOUT))
    with tempfile.TemporaryDirectory(prefix="mmcourse-grade-") as tmp:
        work, private = Path(tmp) / "work", Path(tmp) / "private"
        work.mkdir()
        private.mkdir()
        copy_path = work / sub.path.name
        shutil.copyfile(sub.path, copy_path)  # the kernel works on (and may scribble next to) a copy
        nb, problem = _read_notebook(copy_path)
        if nb is None:
            return all_failed(problem)
        prepared = prepare(nb, cells, solution_keys or [c.grade_id for c in cells])
        answers: dict[str, tuple[Path | None, str]] = {}

        def after_graded(client, key: str, left: float) -> None:
            request = judge.request(key)
            if request is None:
                return
            local = private / f"request-{key}.pt"
            shutil.copyfile(request, local)
            answer = private / f"answer-{key}.bin"
            per_call = max(check_timeout, 3 * judge.cell_seconds.get(key, 0.0))
            per_call = float(round(per_call)) if per_call >= 1 else per_call
            problem = collect_values(client, local, answer, per_call, min(left, 30 + 20 * per_call))
            answers[key] = (None if problem else answer, problem)

        # the student's own cells get the solution's time (with room) when it needed more than the limit
        limits = {**{k: 3 * s + 10 for k, s in judge.cell_seconds.items() if 3 * s > cell_timeout},
                  **(timeouts or {})}
        try:
            runs = execute(nb, work, cell_timeout, total_timeout, env, {c.grade_id: c for c in cells},
                           limits, memory_mb, prepared.inserted, (work, private) if isolated else None, after_graded,
                           private / "usage")
        except Exception as err:  # noqa: BLE001 - e.g. the kernel cannot start: report, go on
            return all_failed(_short(f"grader error: {type(err).__name__}: {err}"))
        for index, cell in enumerate(nb.cells):  # a time-out in a cell the student did not write is not theirs
            if runs[index].status == "timeout" and judge.teacher_sources.get(_cell_key(cell)) == cell.source:
                runs[index].reason += (" — in a cell you did not write (the course's own code ran slower on the "
                                       "grading machine): not your mistake, tell your teacher")
        where = {_cell_key(c): i for i, c in enumerate(nb.cells)}
        notes: dict[str, tuple[list[str], str]] = {}
        for gc in cells:
            index = where[gc.grade_id]
            if runs[index].status in ("not run", "dead") and gc.grade_id not in answers:
                continue  # the student's kernel never got there: `collect` says why
            answer, problem = answers.get(gc.grade_id, (None, "your kernel did not answer the grader"))
            try:
                judged, reply, token, hits, unreadable = judge.judge(gc, answer)
            except Exception as err:  # noqa: BLE001 - the judge must go on with the next student
                nb.cells[index].outputs = [nbformat.v4.new_output(
                    "error", ename="GraderError", evalue=f"grader error while judging: {type(err).__name__}: {err}",
                    traceback=[])]
                runs[index] = CellRun("ran", reply="error", token="")
                continue
            nb.cells[index].source, nb.cells[index].outputs = gc.source, judged.outputs
            runs[index] = CellRun("ran", reply=reply, token=token)
            notes[gc.grade_id] = (hits, problem or unreadable)
        if executed_dir is not None:
            executed_dir.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, str(executed_dir / f"{sub.student}.ipynb"))
        rows = collect(sub.student, nb, cells, runs, prepared)
        try:
            sub.kernel_cpu = float((private / "usage").read_text()[:30])
        except (OSError, ValueError):
            pass
    for row in rows:
        row.isolation = isolation_note
        hits, problem = notes.get(row.grade_id, ([], "")) if row.passed is not None else ([], "")
        if hits:
            row.passed, row.points, row.status = False, 0, "failed"
            row.message = LIBRARY_MESSAGE.format(name=hits[0].rsplit(".", 1)[-1])
        elif problem and not row.passed and row.message.startswith("NameError"):
            row.message = _short(problem)
    return rows


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
                 gradebook: Path | None = None, memory_mb: float | None = DEFAULT_MEMORY_MB,
                 isolation_mode: str = "auto", seed: int | None = None, roster: Path | None = None,
                 lms: str | None = None) -> list[Row]:
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
    isolated, note = isolation(isolation_mode)
    students = read_roster(roster) if roster is not None else None
    print(f"Grading {len(submissions)} submission(s) of {solution_path.name}: {len(cells)} graded cells, "
          f"{points} points", file=log)
    print(f"Isolation of the students' kernels: {note}", file=log)
    if not isolated:
        print("warning: the students' kernels are not isolated: grade untrusted submissions in a container or VM",
              file=log)
    judge = Judge(solution_path, cells, cell_timeout, timeouts, kernel_env(1, cell_timeout), seed, log)
    try:
        if submissions and any(not s.problem for s in submissions):
            judge.start()  # the reference run: also fills the model cache before any student's kernel starts
        rows = _grade_all(submissions, cells, judge, cell_timeout, total_timeout, env, executed_dir, solution_keys,
                          timeouts, memory_mb, isolated, note, jobs, points, log)
    finally:
        judge.close()
    _report(rows, cells, submissions, solution, solution_path, title, out, gradebook, feedback_dir, answers, log,
            students, lms)
    return rows


def _grade_all(submissions, cells, judge, cell_timeout, total_timeout, env, executed_dir, solution_keys, timeouts,
               memory_mb, isolated, note, jobs, points, log) -> list[Row]:
    def one(sub: Submission) -> list[Row]:
        t0 = time.monotonic()
        mine = grade_submission(sub, cells, judge, cell_timeout, total_timeout, env, executed_dir, solution_keys,
                                timeouts, memory_mb, isolated, note)
        cpu = f", kernel CPU {sub.kernel_cpu:.1f} s" if sub.kernel_cpu is not None else ""
        print(f"  {sub.student}: {sum(r.points or 0 for r in mine)}/{points} ({time.monotonic() - t0:.1f} s{cpu})", file=log)
        return mine

    if jobs <= 1:  # in the main thread: Ctrl-C stops at once
        rows = [row for sub in submissions for row in one(sub)]
    else:  # threads are enough: the work happens in each submission's kernel process
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            rows = [row for mine in pool.map(one, submissions) for row in mine]
    return rows


def _report(rows, cells, submissions, solution, solution_path, title, out, gradebook, feedback_dir, answers, log,
            students, lms) -> None:
    n_questions, page, given = written_answers(solution, submissions)  # given: answers to mark
    if out is not None:
        write_csv(rows, out)
    if gradebook is not None:
        write_gradebook(rows, cells, submissions, given, gradebook, students)
    lms_path = None
    if lms is not None and out is not None:
        lms_path = out.with_name(f"{lms}.csv")
        write_lms(rows, cells, submissions, lms, solution_path.stem, lms_path, students)
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
        print(f"\nResults: {out}" + (f"; gradebook: {gradebook}" if gradebook is not None else "")
              + (f"; {lms} import: {lms_path}" if lms_path is not None else ""), file=log)


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
    parser.add_argument("--roster", type=Path, default=None,
                        help="CSV mapping submission names to students: columns `submission` (folder or file name) "
                             "and `id` (and optional `email`, `name`); the gradebook and the LMS export use them")
    parser.add_argument("--lms", choices=("canvas", "moodle"), default=None,
                        help="also write an import file for Canvas or Moodle next to --out (canvas.csv, moodle.csv)")
    parser.add_argument("--isolation", choices=("auto", "bwrap", "none"), default="auto",
                        help="auto (default): run each student's kernel in a bubblewrap sandbox when it works, "
                             "else warn; bwrap: fail when it does not; none: no sandbox")
    parser.add_argument("--seed", type=int, default=None,
                        help="the run's seed (default: a secret one, drawn per run); for re-running a grading exactly")
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
                     memory_mb=args.memory or None, isolation_mode=args.isolation, seed=args.seed,
                     roster=args.roster, lms=args.lms)
    except ValueError as err:  # SolutionFailed included  # NotebookFormatError included: one line, exit 2
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
