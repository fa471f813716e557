"""The grader, one module per stage: `prepare` (what is graded, the submissions), `reference`
(the solution's trusted run and the judge), `sandbox` and `execute` (the students' kernels),
`protocol` (values as plain data), `collect` (rows), `report` (CSV, gradebook, LMS, feedback);
`cli` ties them together (`python -m mmcourse.classroom.grade`, `mmcourse-grade`)."""
from mmcourse.classroom.grade.cli import grade_folder, grade_submission, kernel_env, main
from mmcourse.classroom.grade.collect import _error_message, collect
from mmcourse.classroom.grade.execute import MAX_OUTPUT_CHARS, execute
from mmcourse.classroom.grade.prepare import (CSV_FIELDS, DEFAULT_CELL_TIMEOUT, OTHER_CELLS, CellRun, GradeCell, Prepared, Row,
                                    Submission, _cell_key, _read_notebook, cell_timeouts, find_solution,
                                    find_submissions, grade_cells, prepare)
from mmcourse.classroom.grade.report import gradebook_columns, read_roster, write_csv, write_gradebook, write_lms
from mmcourse.classroom.grade.sandbox import _LIMIT_LAUNCHER, isolation, kernel_manager_class

__all__ = ["CSV_FIELDS", "CellRun", "GradeCell", "OTHER_CELLS", "Prepared", "Row", "Submission", "cell_timeouts",
           "collect", "execute", "find_solution", "find_submissions", "grade_cells", "grade_folder",
           "grade_submission", "gradebook_columns", "isolation", "kernel_env", "main", "prepare", "read_roster",
           "write_csv", "write_gradebook", "write_lms"]
