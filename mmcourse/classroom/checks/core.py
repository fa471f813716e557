"""The framework behind every exercise check: run the student's code safely, compare with
the reference, and when it differs, name the likely misconception.

A check is a small function that calls `run_check` (or `check_value` for a value)::

    def check_info_nce(student_fn):
        z, z_pos = torch.randn(8, 4), torch.randn(8, 4)
        return run_check(
            "info_nce", student_fn, reference=losses.info_nce,
            cases=[Case(args=(z, z_pos), kwargs={"temperature": 0.1}, label="N=8, D=4, τ=0.1")],
            diagnoses=[
                Variant(wrong=lambda z, p, temperature: ..., message="temperature multiplied instead of divided",
                        hint="logits are similarities / τ"),
                Property(test=lambda fn: not torch.isfinite(fn(z_big, z_big, temperature=0.01)),
                         message="not stable at τ=0.01", hint="use torch.logsumexp or F.cross_entropy"),
            ],
            success="matches the reference on {n} cases, including τ=0.01 and a batch of 1",
        )

(`make_check(name, reference, cases, ...)` builds the same function in one expression.)

Calling `check_info_nce(student_fn)` shows one line saying what was verified and returns a
`CheckResult` when the answer is right; when it is wrong it raises `CheckFailed` whose message
is one sentence and a hint (shown without a traceback in Jupyter). An untouched blank re-raises
the student's own `NotImplementedError`, as nbgrader does.

Student code is called through `call_safely`: its inputs are copies (it cannot change the
caller's tensors), its printing is captured (a `print` in a loop does not flood the notebook),
it runs under a time limit (an infinite loop is reported, not waited for), and whatever it
raises is caught and described. A wrong type, a wrong shape, NaN or a value off by a known
mistake each get their own sentence.

Every passing result is published as a display with the mimetype
`application/vnd.mmcourse.check+json` so the grader can read it from an executed notebook; a
failure is the `CheckFailed` error output of the cell. When the grader runs a graded cell it
first arms the checks with a token made for that cell alone (`_arm`); every result published
until it disarms them carries the token, and the grader counts a cell as passed only when such
a record says so: a cell that printed nothing, skipped its check or forged a record gets no
points. While a check runs the student's function, a call of the library's own answer to the
exercise (the reference when it lives in `mmcourse`, or `LIBRARY_ANSWERS`) is reported as a
failure. `torch` is only touched when a check uses tensors, so importing this module is cheap.

The framework is split by idea; this module gathers its public (and grader-facing) names:

* `running`: calling student code safely (`call_safely`, `Outcome`, `time_limit`, `StudentTimeout`);
* `comparing`: `compare`, one sentence for how two values differ;
* `diagnosing`: `Case`, `Variant`, `Property`, `diagnose`, `run_check`, `make_check`, `check_value`,
  `LIBRARY_ANSWERS`;
* `results`: `CheckResult`, `CheckFailed`, `publish`, `finish`, `hint`, the grader's `_arm`/`_disarm`.
"""
from __future__ import annotations

from .comparing import _compare, _compare_tensor, compare
from .diagnosing import (LIBRARY_ANSWERS, Case, Diagnosis, Property, Variant, _error_hint, _forbidden, _watch_calls,
                         check_value, diagnose, make_check, run_check)
from .results import (CHECK_MIMETYPE, _FAILURES, _GRADING, _LAST_FAILURE, CheckFailed, CheckResult, _arm, _disarm,
                      finish, hint, publish)
from .running import (_MAX_MESSAGE_CHARS, _NOT_STUDENT_PATHS, DEFAULT_TIMEOUT, MAX_CAPTURED_CHARS, Outcome,
                      StudentTimeout, _argument_names, _Capture, _changed, _clone, _describe_type, _is_ndarray,
                      _is_tensor, _safe_repr, _short, _student_line, _torch, call_safely, time_limit)

__all__ = ["CHECK_MIMETYPE", "DEFAULT_TIMEOUT", "LIBRARY_ANSWERS", "MAX_CAPTURED_CHARS", "Case", "CheckFailed",
           "CheckResult", "Diagnosis", "Outcome", "Property", "StudentTimeout", "Variant", "call_safely",
           "check_value", "compare", "diagnose", "finish", "hint", "make_check", "publish", "run_check",
           "time_limit"]
