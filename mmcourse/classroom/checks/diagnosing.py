"""Diagnosing a wrong answer: the cases a check tries (`Case`), the known mistakes (`Variant`, a
wrong implementation named only when it reproduces the learner's output on every case; `Property`,
a feature of the learner's function, whose message says what was observed), and the checks built
from them (`run_check`, `make_check`, `check_value`). While the student's function runs, a call of
the library's own answer (`LIBRARY_ANSWERS`) is reported.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .comparing import compare
from .results import CheckResult, finish
from .running import DEFAULT_TIMEOUT, Outcome, StudentTimeout, _clone, _describe_type, _is_tensor, call_safely

# The library's own answers to exercises, by the check's name (the part before " (" or ","): calling
# one of them from the student's function while its check runs is reported. A reference that is
# itself an `mmcourse` function outside `mmcourse.classroom.checks` is added automatically.
LIBRARY_ANSWERS: dict[str, tuple[str, ...]] = {
    "info_nce": ("mmcourse.objectives.losses.info_nce",),
    "clip_loss": ("mmcourse.objectives.losses.clip_loss", "mmcourse.objectives.losses.ClipLoss.forward"),
    "gradient_weights": ("mmcourse.viz.temperature.similarity_gradient",),
    "zero_shot_classifier": ("mmcourse.evaluation.zero_shot.build_zero_shot_classifier",),
    "recall_at_k": ("mmcourse.evaluation.retrieval.retrieval_ranks", "mmcourse.evaluation.retrieval.retrieval_metrics"),
    "modality_gap": ("mmcourse.evaluation.analysis.modality_gap",),
    "caption_ranks": ("mmcourse.evaluation.retrieval.retrieval_ranks", "mmcourse.evaluation.retrieval.retrieval_metrics"),
    "rank_summary": ("mmcourse.evaluation.retrieval.retrieval_metrics",),
    "sentence_embedding": ("mmcourse.models.minilm.mean_pool",),
}

@dataclass
class Case:
    """One input to try: positional args, keyword args and a label a student understands."""

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    label: str = ""


@dataclass
class Variant:
    """A known wrong answer: if the student's output equals `wrong(*args, **kwargs)` on the
    failing case, the student most likely made this mistake. `hint`: one string, or a tuple of
    tiers (the idea first, then closer; never the fixing line)."""

    wrong: Callable[..., Any]
    message: str
    hint: str | tuple[str, ...] = ""


@dataclass
class Property:
    """A property the student's function breaks: `test(student_fn)` returns True when the
    mistake is present (it is called safely; an exception counts as "not present")."""

    test: Callable[[Callable[..., Any]], bool]
    message: str
    hint: str | tuple[str, ...] = ""


Diagnosis = Variant | Property


# --------------------------------------------------------------------------- checks


def diagnose(student: Callable[..., Any], case: Case, diagnoses: Sequence[Diagnosis],
             rtol: float = 1e-4, atol: float = 1e-5, timeout: float | None = DEFAULT_TIMEOUT,
             got: Outcome | None = None, others: Sequence[Case] = ()) -> Diagnosis | None:
    """The diagnosis that explains how `student` fails on `case`, or None.

    A known wrong answer (`Variant`) is named only when it reproduces the student's output on
    `case` AND on every one of `others` where both run: naming a mistake the learner did not
    make is worse than saying nothing specific. When several different mistakes reproduce it
    everywhere, the result says so and names them all. Properties are tried in order after
    the variants. `got` is the student's outcome on `case` if already known.
    """
    if got is None:
        got = call_safely(student, *case.args, timeout=timeout, **case.kwargs)
    student_on: dict[int, Outcome] = {}

    def reproduces(d: Variant) -> bool:
        wrong = call_safely(d.wrong, *case.args, timeout=timeout, **case.kwargs)
        if not (wrong.ok and compare(wrong.value, got.value, rtol, atol) is None):
            return False
        for k, other in enumerate(others):
            if k not in student_on:
                student_on[k] = call_safely(student, *other.args, timeout=timeout, **other.kwargs)
            mine = student_on[k]
            theirs = call_safely(d.wrong, *other.args, timeout=timeout, **other.kwargs)
            if mine.ok and theirs.ok and compare(theirs.value, mine.value, rtol, atol) is not None:
                return False
        return True

    found: list[Variant] = []
    if got.ok:
        for d in diagnoses:
            if isinstance(d, Variant) and d.message not in {f.message for f in found} and reproduces(d):
                found.append(d)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        message = "more than one mistake gives exactly your output: " + "; or ".join(
            f"({i}) {d.message}" for i, d in enumerate(found, start=1))
        return Variant(found[0].wrong, message, found[0].hint)
    for d in diagnoses:
        if isinstance(d, Property):
            present = call_safely(d.test, student, timeout=timeout)
            try:
                if present.ok and bool(present.value):
                    return d
            except Exception:  # noqa: BLE001 - e.g. a tensor with several values
                continue
    return None


def run_check(
    name: str,
    student: Any,
    reference: Callable[..., Any],
    cases: Sequence[Case],
    diagnoses: Sequence[Diagnosis] = (),
    success: str = "matches the reference on {n} cases",
    rtol: float = 1e-4,
    atol: float = 1e-5,
    timeout: float | None = DEFAULT_TIMEOUT,
    raise_on_fail: bool = True,
    allow_mutation: bool = False,
    fallback_hint: str | tuple[str, ...] = ("the message names the case and where your result differs: work that "
                                            "case out by hand and compare it with yours, step by step"),
    forbid: Sequence[Callable[..., Any]] | None = None,
) -> CheckResult:
    """Run `student` on every case and compare with `reference`.

    Args:
        name: what is checked, as the student knows it (e.g. "info_nce").
        student: the student's function.
        reference: the correct function, same signature.
        cases: inputs to try, easiest first.
        diagnoses: known mistakes, most specific first; the first that explains the failing
            case names the mistake.
        success: message on success; `{n}` is replaced by the number of cases.
        rtol, atol: tolerance of the comparison.
        timeout: seconds allowed per call of student code (None: no limit).
        raise_on_fail: raise `CheckFailed` on failure (the default in notebooks).
        allow_mutation: accept a function that changes its input tensors in place.
        fallback_hint: the hint when the answer is wrong in a way no diagnosis names (say
            something true for this exercise: not every exercise has a formula above it).
        forbid: library functions the student's code must not call (it is asked to write
            them); default: the reference if it is an `mmcourse` function outside
            `mmcourse.classroom.checks`, plus `LIBRARY_ANSWERS[name]`. A call is a failure that says so.

    Returns:
        The `CheckResult` (also published).

    Raises:
        CheckFailed: the answer is wrong (if `raise_on_fail`).
        NotImplementedError: the student's own, when the blank is untouched (if `raise_on_fail`).
    """
    if not callable(student):
        return finish(CheckResult(name, False, f"expected a function, got {_describe_type(student)}",
                                  "pass the function itself, e.g. check(my_fn), not check(my_fn())"), raise_on_fail)
    forbidden = _forbidden(name, reference, forbid)
    for case in cases:
        with _watch_calls(forbidden) as called:
            got = call_safely(student, *case.args, timeout=timeout, **case.kwargs)
        where = f" (case: {case.label})" if case.label else ""
        if called:
            return finish(CheckResult(
                name, False, f"you called mmcourse's {called[0]}; this exercise asks you to write it{where}",
                "write it yourself with torch operations, as the lesson does; the library's version is what "
                "the check compares against"), raise_on_fail)
        if isinstance(got.error, NotImplementedError):
            # An untouched blank: fail the cell with the student's own NotImplementedError, as
            # nbgrader does, so "not attempted" is not reported as a wrong answer.
            if raise_on_fail:
                raise got.error
            return finish(CheckResult(name, False, got.describe_error()), raise_on_fail)
        if not got.ok:
            if not isinstance(got.error, StudentTimeout):  # do not wait for an endless loop again
                properties = [d for d in diagnoses if isinstance(d, Property)]
                found = diagnose(student, case, properties, rtol, atol, timeout, got=got)
                if found is not None:
                    return finish(CheckResult(name, False, found.message + where, found.hint), raise_on_fail)
            return finish(CheckResult(name, False, got.describe_error() + where, _error_hint(got.error)),
                          raise_on_fail)
        expected = reference(*(_clone(a) for a in case.args), **{k: _clone(v) for k, v in case.kwargs.items()})
        why = compare(expected, got.value, rtol, atol)
        if why is None:
            if got.mutated and not allow_mutation:
                names = ", ".join(f"`{n}`" for n in got.mutated)
                return finish(CheckResult(
                    name, False, f"the result is right, but your function changed its input {names} in place{where}",
                    "work on a new tensor (`x = x / n`) instead of changing the caller's (`x /= n`, `x.div_(n)`)"),
                    raise_on_fail)
            continue
        others = [c for c in cases if c is not case]
        found = diagnose(student, case, diagnoses, rtol, atol, timeout, got=got, others=others)
        if found is not None:
            return finish(CheckResult(name, False, found.message + where, found.hint), raise_on_fail)
        return finish(CheckResult(name, False, why + where, fallback_hint), raise_on_fail)
    return finish(CheckResult(name, True, success.format(n=len(cases))), raise_on_fail)


def _forbidden(name: str, reference: Any, forbid: Sequence[Callable[..., Any]] | None) -> list[Callable[..., Any]]:
    """The library functions a student's answer to check `name` must not call."""
    if forbid is not None:
        return list(forbid)
    found = []
    module = getattr(reference, "__module__", None) or ""
    if module.startswith("mmcourse.") and not module.startswith("mmcourse.classroom.checks"):
        found.append(reference)
    for dotted in LIBRARY_ANSWERS.get(name.split(" (")[0].split(",")[0].strip(), ()):  # "info_nce (stable)" -> info_nce
        parts = dotted.split(".")
        for cut in range(len(parts) - 1, 0, -1):  # the longest importable module, then attributes
            module_name = ".".join(parts[:cut])
            if module_name not in sys.modules:  # never import a module for this: not loaded, not called
                continue
            obj: Any = sys.modules[module_name]
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                break
            found.append(obj)
            break
    return found


@contextlib.contextmanager
def _watch_calls(functions: Sequence[Callable[..., Any]]):
    """Yield a list that receives the names of those of `functions` (Python functions or
    methods) called inside the body, at any depth, in this thread (a `sys.setprofile` hook)."""
    codes = {}
    for fn in functions:
        code = getattr(getattr(fn, "__func__", fn), "__code__", None)
        if code is not None:
            codes[code] = getattr(fn, "__name__", "a library function")
    called: list[str] = []
    if not codes:
        yield called
        return

    def hook(frame, event, arg):
        if event == "call" and frame.f_code in codes and codes[frame.f_code] not in called:
            called.append(codes[frame.f_code])

    previous = sys.getprofile()
    sys.setprofile(hook)
    try:
        yield called
    finally:
        sys.setprofile(previous)


def _error_hint(err: BaseException | None) -> str:
    if isinstance(err, StudentTimeout):
        return "look for a loop whose condition never becomes false"
    if isinstance(err, RuntimeError) and "shape" in str(err) or isinstance(err, IndexError):
        return "print the shapes of your tensors (`x.shape`) at each step"
    return "run your function on a small input in a cell of its own to see where it fails"


def make_check(name: str, reference: Callable[..., Any], cases: Sequence[Case],
               diagnoses: Sequence[Diagnosis] = (), success: str = "matches the reference on {n} cases",
               **options: Any) -> Callable[..., CheckResult]:
    """A check function `check(student_fn, raise_on_fail=True) -> CheckResult` built from its
    parts; `options` are passed on to `run_check` (rtol, atol, timeout, allow_mutation, forbid)."""

    def check(student: Any, raise_on_fail: bool = True) -> CheckResult:
        return run_check(name, student, reference, cases, diagnoses, success,
                         raise_on_fail=raise_on_fail, **options)

    check.__name__ = check.__qualname__ = f"check_{name}"
    check.__doc__ = f"Check a student's `{name}` against the reference on {len(cases)} cases."
    return check


def check_value(name: str, value: Any, expected: Any, message_ok: str = "correct",
                hint: str = "", rtol: float = 1e-4, atol: float = 1e-5,
                wrong_values: Sequence[tuple[Any, str]] = (), raise_on_fail: bool = True) -> CheckResult:
    """Check a value (not a function). `wrong_values` pairs known wrong answers with the
    sentence that explains them; the first that matches `value` is reported."""
    if callable(value) and not callable(expected) and not _is_tensor(value):
        return finish(CheckResult(name, False, "expected a value, got a function",
                                  "call your function and pass its result"), raise_on_fail)
    why = compare(expected, value, rtol, atol)
    if why is None:
        return finish(CheckResult(name, True, message_ok), raise_on_fail)
    for wrong, message in wrong_values:
        if compare(wrong, value, rtol, atol) is None:
            return finish(CheckResult(name, False, message, hint), raise_on_fail)
    return finish(CheckResult(name, False, why, hint), raise_on_fail)
