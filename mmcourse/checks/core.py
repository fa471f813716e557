"""The framework behind every exercise check: run the student's code safely, compare with
the reference, and when it differs, name the likely misconception.

A check is declared, not hand-written::

    check_info_nce = make_check(
        name="info_nce",
        reference=losses.info_nce,
        cases=[Case(args=(z, z_pos), kwargs={"temperature": 0.1}, label="N=8, D=4, τ=0.1")],
        diagnoses=[
            Variant(wrong=lambda z, p, temperature: ..., message="temperature multiplied instead of divided",
                    hint="logits are similarities / τ"),
            Property(test=lambda fn: not torch.isfinite(fn(z_big, z_big, temperature=0.01)),
                     message="not stable at τ=0.01", hint="use torch.logsumexp or F.cross_entropy"),
        ],
        success="matches the reference on {n} cases, including τ=0.01 and a batch of 1",
    )

Calling `check_info_nce(student_fn)` prints one line and returns a `CheckResult` when the
answer is right; when it is wrong it raises `CheckFailed` whose message is one sentence and a
hint (shown without a traceback in Jupyter). Every result is also published as a
`application/vnd.mmcourse.check+json` display so the grader can read it from an executed
notebook.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

CHECK_MIMETYPE = "application/vnd.mmcourse.check+json"
DEFAULT_TIMEOUT = 10.0  # seconds one call to student code may take


class CheckFailed(AssertionError):
    """A check found a mistake. The message says what is wrong and how to fix it."""

    def __init__(self, result: "CheckResult"):
        super().__init__(result.text())
        self.result = result

    def _render_traceback_(self) -> list[str]:  # IPython: show the message, not a traceback
        return ["\x1b[31m✗ " + self.result.text().replace("\n", "\n  ") + "\x1b[0m"]


class StudentTimeout(Exception):
    """Student code ran longer than the check allows (likely an infinite loop)."""


@dataclass
class CheckResult:
    """What a check found."""

    name: str
    passed: bool
    message: str
    hint: str = ""

    def text(self) -> str:
        mark = "✓" if self.passed else "✗"
        head = f"{mark} {self.name}: {self.message}"
        return head + (f"\n  Hint: {self.hint}" if self.hint else "")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "message": self.message, "hint": self.hint}

    def __str__(self) -> str:
        return self.text()

    def __bool__(self) -> bool:
        return self.passed


@dataclass
class Case:
    """One input to try: positional args, keyword args and a label a student understands."""

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    label: str = ""


@dataclass
class Variant:
    """A known wrong answer: if the student's output equals `wrong(*args, **kwargs)` on the
    failing case, the student most likely made this mistake."""

    wrong: Callable[..., Any]
    message: str
    hint: str = ""


@dataclass
class Property:
    """A property the student's function breaks: `test(student_fn)` returns True when the
    mistake is present (it is called safely; an exception counts as "not present")."""

    test: Callable[[Callable[..., Any]], bool]
    message: str
    hint: str = ""


Diagnosis = Variant | Property


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise `StudentTimeout` if the body runs longer than `seconds`.

    Uses SIGALRM, so it works in the main thread on Unix (where Jupyter runs cells); elsewhere
    it does not limit time rather than fail.
    """
    usable = (
        seconds is not None
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def _raise(signum, frame):
        raise StudentTimeout(f"took longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Outcome:
    """The result of calling student code: a value, or the error it raised."""

    value: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def describe_error(self) -> str:
        err = self.error
        if isinstance(err, StudentTimeout):
            return f"your code did not finish: it {err} (an infinite loop?)"
        if isinstance(err, NotImplementedError):
            return "not implemented yet: replace `raise NotImplementedError()` with your code"
        tb = traceback.extract_tb(err.__traceback__) if err is not None else []
        where = f" (line {tb[-1].lineno}: `{tb[-1].line}`)" if tb and tb[-1].line else ""
        return f"your code raised {type(err).__name__}: {err}{where}"


def call_safely(fn: Callable[..., Any], *args, timeout: float | None = DEFAULT_TIMEOUT, **kwargs) -> Outcome:
    """Call student code; never raise. Inputs are cloned so the student cannot modify them."""
    args = tuple(_clone(a) for a in args)
    kwargs = {k: _clone(v) for k, v in kwargs.items()}
    try:
        with time_limit(timeout):
            return Outcome(value=fn(*args, **kwargs))
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001 - student code may raise anything, even SystemExit
        return Outcome(error=err)


def _clone(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().clone().requires_grad_(x.requires_grad)
    return x


def compare(expected: Any, actual: Any, rtol: float = 1e-4, atol: float = 1e-5) -> str | None:
    """None if `actual` equals `expected` (tensors, numbers, sequences, dicts), else a sentence
    saying how it differs: type, shape, dtype, NaN, or values."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(actual, torch.Tensor):
            if isinstance(actual, (int, float)) and expected.numel() == 1:
                actual = torch.tensor(float(actual), dtype=expected.dtype)
            else:
                return f"expected a torch.Tensor, got {type(actual).__name__}"
        if tuple(actual.shape) != tuple(expected.shape):
            return f"wrong shape: expected {tuple(expected.shape)}, got {tuple(actual.shape)}"
        if not torch.isfinite(actual).all() and torch.isfinite(expected).all():
            return "the result contains NaN or inf"
        a, e = actual.detach().to(torch.float64).cpu(), expected.detach().to(torch.float64).cpu()
        if not torch.allclose(a, e, rtol=rtol, atol=atol, equal_nan=True):
            if e.numel() == 1:
                return f"expected {e.item():.6g}, got {a.item():.6g}"
            diff = (a - e).abs().max().item()
            return f"values differ from the reference (largest difference {diff:.3g})"
        return None
    if isinstance(expected, bool) or expected is None or isinstance(expected, str):
        return None if actual == expected else f"expected {expected!r}, got {actual!r}"
    if isinstance(expected, (int, float)):
        if isinstance(actual, torch.Tensor) and actual.numel() == 1:
            actual = actual.item()
        if not isinstance(actual, (int, float)):
            return f"expected a number, got {type(actual).__name__}"
        if abs(actual - expected) > atol + rtol * abs(expected):
            return f"expected {expected:.6g}, got {actual:.6g}"
        return None
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return f"expected a dict, got {type(actual).__name__}"
        missing = set(expected) - set(actual)
        if missing:
            return f"missing keys: {sorted(missing)}"
        for k in expected:
            why = compare(expected[k], actual[k], rtol, atol)
            if why:
                return f"[{k!r}] {why}"
        return None
    if isinstance(expected, (list, tuple)):
        if not isinstance(actual, (list, tuple)) or len(actual) != len(expected):
            return f"expected a sequence of length {len(expected)}, got {actual!r:.60}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            why = compare(e, a, rtol, atol)
            if why:
                return f"item {i}: {why}"
        return None
    return None if actual == expected else f"expected {expected!r}, got {actual!r}"


def publish(result: CheckResult) -> None:
    """Show a result in Jupyter (rich) or print it, and expose it to the grader."""
    try:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            display({CHECK_MIMETYPE: result.to_json(), "text/plain": result.text()}, raw=True)
            return
    except ImportError:  # pragma: no cover
        pass
    print(result.text())


def finish(result: CheckResult, raise_on_fail: bool = True) -> CheckResult:
    """Publish a result; raise `CheckFailed` if it failed (and `raise_on_fail`)."""
    if result.passed:
        publish(result)
        return result
    # On failure the message travels with the exception (rendered without traceback);
    # publishing it too would print it twice. The grader reads it from the error output.
    if raise_on_fail:
        raise CheckFailed(result)
    publish(result)
    return result


def diagnose(student: Callable[..., Any], case: Case, diagnoses: Sequence[Diagnosis],
             rtol: float = 1e-4, atol: float = 1e-5, timeout: float | None = DEFAULT_TIMEOUT) -> Diagnosis | None:
    """The first diagnosis that explains how `student` fails on `case`, or None."""
    got = call_safely(student, *case.args, timeout=timeout, **case.kwargs)
    for d in diagnoses:
        if isinstance(d, Variant):
            if not got.ok:
                continue
            wrong = call_safely(d.wrong, *case.args, timeout=timeout, **case.kwargs)
            if wrong.ok and compare(wrong.value, got.value, rtol, atol) is None:
                return d
        else:
            present = call_safely(d.test, student, timeout=timeout)
            if present.ok and bool(present.value):
                return d
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
        timeout: seconds allowed per call of student code.
        raise_on_fail: raise `CheckFailed` on failure (the default in notebooks).

    Returns:
        The `CheckResult` (also published).
    """
    if not callable(student):
        return finish(CheckResult(name, False, f"expected a function, got {type(student).__name__}",
                                  "pass the function itself, e.g. check(my_fn), not check(my_fn())"), raise_on_fail)
    for case in cases:
        got = call_safely(student, *case.args, timeout=timeout, **case.kwargs)
        where = f" (case: {case.label})" if case.label else ""
        if isinstance(got.error, NotImplementedError):
            # An untouched blank: fail the cell with the student's own NotImplementedError, as
            # nbgrader does, so "not attempted" is not reported as a wrong answer.
            raise got.error
        if not got.ok:
            found = diagnose(student, case, [d for d in diagnoses if isinstance(d, Property)], rtol, atol, timeout)
            if found and not isinstance(got.error, NotImplementedError):
                return finish(CheckResult(name, False, found.message + where, found.hint), raise_on_fail)
            return finish(CheckResult(name, False, got.describe_error() + where), raise_on_fail)
        expected = reference(*case.args, **case.kwargs)
        why = compare(expected, got.value, rtol, atol)
        if why is None:
            continue
        found = diagnose(student, case, diagnoses, rtol, atol, timeout)
        if found is not None:
            return finish(CheckResult(name, False, found.message + where, found.hint), raise_on_fail)
        return finish(CheckResult(name, False, why + where,
                                  "compare your code with the formula above, one term at a time"), raise_on_fail)
    return finish(CheckResult(name, True, success.format(n=len(cases))), raise_on_fail)


def check_value(name: str, value: Any, expected: Any, message_ok: str = "correct",
                hint: str = "", rtol: float = 1e-4, atol: float = 1e-5,
                wrong_values: Sequence[tuple[Any, str]] = (), raise_on_fail: bool = True) -> CheckResult:
    """Check a value (not a function). `wrong_values` pairs known wrong answers with the
    sentence that explains them."""
    why = compare(expected, value, rtol, atol)
    if why is None:
        return finish(CheckResult(name, True, message_ok), raise_on_fail)
    for wrong, message in wrong_values:
        if compare(wrong, value, rtol, atol) is None:
            return finish(CheckResult(name, False, message, hint), raise_on_fail)
    return finish(CheckResult(name, False, why, hint), raise_on_fail)
