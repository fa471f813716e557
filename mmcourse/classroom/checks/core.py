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
"""
from __future__ import annotations

import contextlib
import inspect
import io
import math
import os
import signal
import sys
import sysconfig
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

CHECK_MIMETYPE = "application/vnd.mmcourse.check+json"
# Seconds one call of student code may take. The grader lowers it through the environment.
DEFAULT_TIMEOUT = float(os.environ.get("MMCOURSE_CHECK_TIMEOUT", "10"))
MAX_CAPTURED_CHARS = 10_000  # what we keep of the student's printing during a check
_MAX_MESSAGE_CHARS = 300  # an error message quoted in a sentence is cut here

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
}

# Set by the grader around each graded cell (see `_arm`); never by a notebook.
_GRADING: dict[str, Any] = {"token": None}

# Frames from these files are not the student's: a traceback points at the student's line.
_NOT_STUDENT_PATHS = tuple(sorted(
    os.path.join(os.path.abspath(p), "") for p in {
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),  # mmcourse/
        sys.prefix, sys.base_prefix, os.path.dirname(os.__file__),  # the environment, the stdlib
        *(sysconfig.get_paths().get(k, "") for k in ("purelib", "platlib")),  # site-packages (torch)
    } if p and os.path.abspath(p) != os.path.abspath(os.sep)
))


def _torch():
    """The torch module if it is loaded, else None. A value can only be a tensor if torch has
    been imported, so the framework never pays for importing it."""
    return sys.modules.get("torch")


def _is_tensor(x: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


def _is_ndarray(x: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(x, np.ndarray)


def _short(text: str, limit: int = _MAX_MESSAGE_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe_type(x: Any) -> str:
    if x is None:
        return "None"
    if _is_tensor(x):
        return f"a tensor of shape {tuple(x.shape)}"
    if inspect.isfunction(x) or inspect.ismethod(x) or inspect.isbuiltin(x):
        return "a function"
    return type(x).__name__


def _safe_repr(x: Any, limit: int = 60) -> str:
    try:
        return _short(repr(x), limit)
    except Exception:  # noqa: BLE001 - a student object's __repr__ may raise
        return f"<{type(x).__name__}>"


class CheckFailed(AssertionError):
    """A check found a mistake. The message says what is wrong and how to fix it."""

    def __init__(self, result: "CheckResult | str"):
        if isinstance(result, str):  # e.g. when unpickled
            result = CheckResult("check", False, result)
        super().__init__(result.text())
        self.result = result

    def __reduce__(self):
        return (CheckFailed, (self.result,))

    def _render_traceback_(self) -> list[str]:  # IPython: show the message, not a traceback
        return ["\x1b[31m" + self.result.text() + "\x1b[0m"]


class StudentTimeout(BaseException):
    """Student code ran longer than the check allows (likely an infinite loop).

    A `BaseException`, so a student's `except Exception:` cannot swallow it.
    """


@dataclass
class CheckResult:
    """What a check found.

    Hints come in tiers: `hint` names the idea, each of `more` gets closer (never the fixing
    line itself). A diagnosis may give its hint as a tuple of tiers; the first becomes `hint`.
    `level` is how many tiers are shown: it grows when the same mistake fails again, or when the
    learner asks with `hint()`.
    """

    name: str
    passed: bool
    message: str
    hint: str | tuple[str, ...] = ""
    more: tuple[str, ...] = ()
    level: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.hint, (tuple, list)):
            tiers = [h for h in self.hint if h]
            self.hint = tiers[0] if tiers else ""
            self.more = tuple(tiers[1:]) + tuple(self.more)

    def hints(self) -> list[str]:
        """The tiers shown at the current level."""
        return ([self.hint] if self.hint else []) + list(self.more[:max(self.level - 1, 0)])

    def text(self) -> str:
        mark = "✓" if self.passed else "✗"
        lines = [f"{mark} {self.name}: {self.message}"]
        for i, h in enumerate(self.hints(), start=1):
            lines.append(f"  Hint{'' if i == 1 else f' {i}'}: {h}")
        if not self.passed and len(self.more) >= self.level:
            lines.append("  (stuck? run hint() for a closer hint)")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        record = {"name": self.name, "passed": self.passed, "message": self.message, "hint": self.hint}
        if self.more:
            record["more_hints"] = list(self.more)
        return record

    def __str__(self) -> str:
        return self.text()

    def __bool__(self) -> bool:
        return self.passed

    def _ipython_display_(self) -> None:
        """A check cell ending in `check_x(fn)` shows the result once (it was published when
        the check ran), not again as the cell's value."""


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


# --------------------------------------------------------------------------- time limit


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise `StudentTimeout` if the body runs longer than `seconds`.

    Uses SIGALRM, so it works in the main thread on Unix (where Jupyter runs cells); elsewhere
    it does not limit time rather than fail. Nests: an inner limit never extends an outer one,
    and the outer one is re-armed when the inner one ends. Once expired, the alarm repeats
    every 0.1 s, so a bare `except:` in a student's loop cannot hold it off.
    """
    usable = (
        seconds is not None
        and seconds > 0
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    start = time.monotonic()
    outer_remaining, _ = signal.getitimer(signal.ITIMER_REAL)
    limit = min(seconds, outer_remaining) if outer_remaining > 0 else seconds
    active = [True]

    def _raise(signum, frame):
        if active[0]:
            raise StudentTimeout(f"took longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, limit, 0.1)
    try:
        yield
    finally:
        while True:  # a late alarm may interrupt the clean-up itself: then do it again
            try:
                active[0] = False
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
                break
            except StudentTimeout:
                continue
        if outer_remaining > 0:  # give the enclosing limit back what is left of it
            left = outer_remaining - (time.monotonic() - start)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), 0.1)


# --------------------------------------------------------------------------- calling student code


class _Capture(io.TextIOBase):
    """A text stream that keeps the first `limit` characters and counts the rest."""

    def __init__(self, limit: int = MAX_CAPTURED_CHARS):
        self.limit, self.parts, self.kept, self.total = limit, [], 0, 0

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        s = str(s)
        self.total += len(s)
        if self.kept < self.limit:
            piece = s[: self.limit - self.kept]
            self.parts.append(piece)
            self.kept += len(piece)
        return len(s)

    def getvalue(self) -> str:
        return "".join(self.parts)


@dataclass
class Outcome:
    """The result of calling student code: a value, or the error it raised."""

    value: Any = None
    error: BaseException | None = None
    output: str = ""  # what the call printed (first MAX_CAPTURED_CHARS characters)
    output_chars: int = 0  # how much it printed in total
    mutated: list[str] = field(default_factory=list)  # names of inputs it changed in place
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def describe_error(self) -> str:
        err = self.error
        if err is None:
            return "no error"
        if isinstance(err, StudentTimeout):
            return f"your code did not finish: it {err} (an infinite loop?)"
        if isinstance(err, NotImplementedError):
            return "not implemented yet: replace `raise NotImplementedError()` with your code"
        if isinstance(err, RecursionError):
            return "your code called itself without end (RecursionError)"
        where = _student_line(err)
        try:
            text = _short(str(err))
        except Exception:  # noqa: BLE001 - a student's exception class may break even str()
            text = ""
        return f"your code raised {type(err).__name__}" + (f": {text}" if text else "") + where


def _student_line(err: BaseException) -> str:
    """" (line N: `code`)" for the last traceback frame in the student's code, or ""."""
    try:
        frames = traceback.extract_tb(err.__traceback__)
    except Exception:  # noqa: BLE001
        return ""
    for frame in reversed(frames):
        path = os.path.abspath(frame.filename) if not frame.filename.startswith("<") else frame.filename
        if path.startswith(_NOT_STUDENT_PATHS):
            continue
        return f" (line {frame.lineno}: `{_short(frame.line, 80)}`)" if frame.line else f" (line {frame.lineno})"
    return ""


def _clone(x: Any) -> Any:
    """A copy of `x` the student may change freely: tensors, arrays, and lists/tuples/dicts of them."""
    if _is_tensor(x):
        return x.detach().clone().requires_grad_(x.requires_grad)
    if _is_ndarray(x):
        return x.copy()
    if isinstance(x, list):
        return [_clone(v) for v in x]
    if isinstance(x, tuple):
        items = [_clone(v) for v in x]
        return type(x)(*items) if hasattr(x, "_fields") else tuple(items)
    if isinstance(x, dict):
        return {k: _clone(v) for k, v in x.items()}
    # Anything else (a model, an optimizer, a tokenizer) is passed as it is: an exercise may be
    # meant to change it (a training step), and a check that needs a fresh one builds it per call.
    return x


def _changed(original: Any, after: Any) -> bool:
    """True if `after` (a clone handed to student code) no longer equals `original`."""
    try:
        if _is_tensor(original):
            if not _is_tensor(after) or after.shape != original.shape:
                return True
            a, o = after.detach(), original.detach()
            same = (a == o) | (a.isnan() & o.isnan()) if (o.is_floating_point() or o.is_complex()) else (a == o)
            return not bool(same.all())
        if _is_ndarray(original):
            np = sys.modules["numpy"]
            return not np.array_equal(original, after, equal_nan=original.dtype.kind in "fc")
        if isinstance(original, (list, tuple)):
            return len(original) != len(after) or any(_changed(o, a) for o, a in zip(original, after))
        if isinstance(original, dict):
            return set(original) != set(after) or any(_changed(original[k], after[k]) for k in original)
    except Exception:  # noqa: BLE001 - cannot tell: assume unchanged
        return False
    return False


def _argument_names(fn: Callable[..., Any], n_args: int) -> list[str]:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    names = []
    for i in range(n_args):
        if i < len(params) and params[i].kind in (params[i].POSITIONAL_ONLY, params[i].POSITIONAL_OR_KEYWORD):
            names.append(params[i].name)
        else:
            names.append(f"argument {i + 1}")
    return names


def call_safely(fn: Callable[..., Any], *args, timeout: float | None = DEFAULT_TIMEOUT, **kwargs) -> Outcome:
    """Call student code; never raise (except on a real KeyboardInterrupt).

    Inputs are cloned, so the student cannot modify the caller's values; the names of inputs
    the code changed in place are listed in `Outcome.mutated`. Printing is captured into
    `Outcome.output`. `timeout` seconds (None: no limit) stop an endless loop.
    """
    call_args = tuple(_clone(a) for a in args)
    call_kwargs = {k: _clone(v) for k, v in kwargs.items()}
    capture = _Capture()
    start = time.monotonic()
    try:
        with contextlib.redirect_stdout(capture), contextlib.redirect_stderr(capture):
            with time_limit(timeout):
                value = fn(*call_args, **call_kwargs)
        outcome = Outcome(value=value)
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001 - student code may raise anything, even SystemExit
        outcome = Outcome(error=err)
    outcome.seconds = time.monotonic() - start
    outcome.output, outcome.output_chars = capture.getvalue(), capture.total
    names = _argument_names(fn, len(args))
    outcome.mutated = [names[i] for i, (a, c) in enumerate(zip(args, call_args)) if _changed(a, c)]
    outcome.mutated += [k for k, v in kwargs.items() if _changed(v, call_kwargs[k])]
    return outcome


# --------------------------------------------------------------------------- comparing results


def compare(expected: Any, actual: Any, rtol: float = 1e-4, atol: float = 1e-5) -> str | None:
    """None if `actual` equals `expected` (tensors, arrays, numbers, sequences, dicts), else a
    sentence saying how it differs: type, shape, dtype, NaN, or values. Never raises."""
    try:
        return _compare(expected, actual, rtol, atol)
    except Exception as err:  # noqa: BLE001 - a student's object may break any operation
        return f"could not compare your result ({_describe_type(actual)}) with the expected one: {_short(err, 80)}"


def _compare(expected: Any, actual: Any, rtol: float, atol: float) -> str | None:
    if _is_tensor(expected):
        return _compare_tensor(expected, actual, rtol, atol)
    if _is_ndarray(expected):
        torch = _torch()
        if torch is not None:
            actual = actual.numpy() if _is_tensor(actual) else actual
        np = sys.modules["numpy"]
        if not _is_ndarray(actual):
            return f"expected a numpy array, got {_describe_type(actual)}"
        if actual.shape != expected.shape:
            return f"wrong shape: expected {expected.shape}, got {actual.shape}"
        if expected.dtype.kind in "fc" and not np.isfinite(actual).all() and np.isfinite(expected).all():
            return "the result contains NaN or inf"
        if not np.allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=expected.dtype.kind in "fc"):
            return f"values differ from the reference (largest difference {np.abs(actual - expected).max():.3g})"
        return None
    if isinstance(expected, bool) or expected is None or isinstance(expected, str):
        if _is_tensor(actual) and actual.numel() == 1 and isinstance(expected, bool):
            actual = bool(actual.item())
        return None if type(actual) is type(expected) and actual == expected else \
            f"expected {expected!r}, got {_safe_repr(actual)}"
    if isinstance(expected, (int, float)):
        if _is_tensor(actual) and actual.numel() == 1:
            actual = actual.item()
        np = sys.modules.get("numpy")
        if np is not None and isinstance(actual, np.generic):
            actual = actual.item()
        if isinstance(actual, bool) or not isinstance(actual, (int, float)):
            return f"expected a number, got {_describe_type(actual)}"
        if math.isnan(actual) and not math.isnan(expected):
            return "the result is NaN"
        if math.isinf(actual) and not math.isinf(expected):
            return "the result is inf (an overflow?)"
        if math.isnan(expected) and math.isnan(actual):
            return None
        if not abs(actual - expected) <= atol + rtol * abs(expected):
            return f"expected {expected:.6g}, got {actual:.6g}"
        return None
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return f"expected a dict, got {_describe_type(actual)}"
        missing = [k for k in expected if k not in actual]
        if missing:
            return f"missing keys: {missing}"
        for k in expected:
            why = _compare(expected[k], actual[k], rtol, atol)
            if why:
                return f"[{k!r}] {why}"
        return None
    if isinstance(expected, (list, tuple)):
        if not isinstance(actual, (list, tuple)):
            return f"expected a {type(expected).__name__} of length {len(expected)}, got {_describe_type(actual)}"
        if len(actual) != len(expected):
            return f"expected a sequence of length {len(expected)}, got length {len(actual)}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            why = _compare(e, a, rtol, atol)
            if why:
                return f"item {i}: {why}"
        return None
    return None if bool(actual == expected) else f"expected {_safe_repr(expected)}, got {_safe_repr(actual)}"


def _compare_tensor(expected: Any, actual: Any, rtol: float, atol: float) -> str | None:
    torch = _torch()
    if not _is_tensor(actual):
        if isinstance(actual, (int, float)) and not isinstance(actual, bool) and expected.numel() == 1:
            actual = torch.tensor(float(actual), dtype=torch.float64).reshape(expected.shape)
        elif _is_ndarray(actual):
            return "expected a torch.Tensor, got a numpy array (use torch functions, or torch.from_numpy)"
        else:
            return f"expected a torch.Tensor, got {_describe_type(actual)}"
    if tuple(actual.shape) != tuple(expected.shape):
        return f"wrong shape: expected {tuple(expected.shape)}, got {tuple(actual.shape)}"
    if actual.is_complex() != expected.is_complex():
        return f"wrong dtype: expected {expected.dtype}, got {actual.dtype}"
    if not expected.is_floating_point() and not expected.is_complex() and actual.is_floating_point():
        kind = "a boolean" if expected.dtype == torch.bool else "an integer"
        return f"wrong dtype: expected {kind} tensor ({expected.dtype}), got {actual.dtype}"
    a, e = actual.detach().cpu(), expected.detach().cpu()
    a = a.to(torch.complex128) if a.is_complex() else a.to(torch.float64)
    e = e.to(torch.complex128) if e.is_complex() else e.to(torch.float64)
    if torch.isfinite(e).all():
        if torch.isnan(a).any():
            return "the result contains NaN"
        if not torch.isfinite(a).all():
            return "the result contains inf (an overflow?)"
    if not torch.allclose(a, e, rtol=rtol, atol=atol, equal_nan=True):
        if e.numel() == 1:
            return f"expected {e.item():.6g}, got {a.item():.6g}"
        diff = (a - e).abs().nan_to_num(nan=float("inf"))
        import numpy as np  # a dependency of torch's tensor printing anyway

        index = tuple(int(i) for i in np.unravel_index(int(diff.argmax()), tuple(diff.shape)))
        return (f"values differ from the reference (largest difference {diff.max().item():.3g} at index "
                f"{list(index)}: expected {e[index].item():.6g}, got {a[index].item():.6g})")
    return None


# --------------------------------------------------------------------------- showing results


def publish(result: CheckResult) -> None:
    """Show a result in Jupyter (rich) or print it, and expose it to the grader (with the
    grader's token for this cell when it is grading)."""
    try:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            record = result.to_json()
            if _GRADING["token"]:
                record["token"] = _GRADING["token"]
            display({CHECK_MIMETYPE: record, "text/plain": result.text()}, raw=True)
            return
    except ImportError:  # pragma: no cover
        pass
    print(result.text())


# Tiered hints: how often each (check, message) failed in this session, and the last failure.
_FAILURES: dict[tuple[str, str], int] = {}
_LAST_FAILURE: dict[str, CheckResult | None] = {"result": None}


def hint(level: int | None = None) -> CheckResult | None:
    """Show a closer hint for the last failed check of this session.

    Args:
        level: the tier to show up to (default: one more than shown so far).

    Returns:
        The last failed `CheckResult` (None if no check has failed yet).
    """
    result = _LAST_FAILURE["result"]
    if result is None:
        print("no failed check to hint at: none has failed yet, or your last attempt passed")
        return None
    most = 1 + len(result.more)
    result.level = min(most, level if level is not None else result.level + 1)
    lines = [f"{result.name}: {result.message}"]
    lines += [f"  Hint{'' if i == 1 else f' {i}'}: {h}" for i, h in enumerate(result.hints(), start=1)]
    if result.level >= most:
        lines.append("  (that is the last hint there is: go through your answer step by step against it)")
    print("\n".join(lines))
    return result


def finish(result: CheckResult, raise_on_fail: bool = True) -> CheckResult:
    """Publish a result; raise `CheckFailed` if it failed (and `raise_on_fail`).

    A failure that repeats the previous one (same check, same message) shows one more hint tier.
    """
    if result.passed:
        for key in [k for k in _FAILURES if k[0] == result.name]:  # solved: start afresh next time
            del _FAILURES[key]
        last = _LAST_FAILURE["result"]
        if last is not None and last.name == result.name:
            _LAST_FAILURE["result"] = None  # hint() must not bring back a mistake already fixed
        publish(result)
        return result
    key = (result.name, result.message)
    _FAILURES[key] = _FAILURES.get(key, 0) + 1
    result.level = min(1 + len(result.more), _FAILURES[key])
    _LAST_FAILURE["result"] = result
    # On failure the message travels with the exception (rendered without traceback);
    # publishing it too would print it twice. The grader reads it from the error output.
    if raise_on_fail:
        raise CheckFailed(result)
    publish(result)
    return result


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
    fallback_hint: str | tuple[str, ...] = "compare your code with the formula above, one term at a time",
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


# --------------------------------------------------------------------------- grading


def _arm(token: str, names: Sequence[str] = ()) -> None:
    """Called by `mmcourse.classroom.grade` (never by a notebook) just before it runs a graded cell.

    Results published from now on carry `token`, which the grader made for this cell alone, so
    a record printed by other code does not count. The names of `names` that `mmcourse.classroom.checks`
    exports (its `__all__` and every `check_*`) are bound again in the notebook's namespace, so
    the cell calls the package's checks even if the student assigned `check_x = ...`.
    """
    import importlib

    checks = importlib.import_module("mmcourse.classroom.checks")
    namespace: dict[str, Any] = {}
    try:
        from IPython import get_ipython

        shell = get_ipython()
        namespace = shell.user_ns if shell is not None else {}
    except ImportError:  # pragma: no cover
        pass
    for name in names:
        if name in checks.__all__ or name.startswith("check_"):
            try:
                namespace[name] = getattr(checks, name)
            except AttributeError:  # not a check of the package: leave the student's name alone
                pass
    _GRADING["token"] = token


def _disarm() -> None:
    """Called by the grader after a graded cell: results no longer carry its token."""
    _GRADING["token"] = None
