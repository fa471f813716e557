"""Running student code safely: copies of the inputs, captured printing, a time limit, and a
sentence for whatever it raises (the first part of the check framework, see `core`).

`call_safely(fn, *args, timeout=..., **kwargs) -> Outcome` never raises (except a real
KeyboardInterrupt); `time_limit(seconds)` stops an endless loop with `StudentTimeout`. The small
helpers that describe values (`_describe_type`, `_short`, ...) live here too: every other part of
the framework uses them. `torch` is only touched when a value is a tensor.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import os
import signal
import sys
import sysconfig
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

# Seconds one call of student code may take. The grader lowers it through the environment.
DEFAULT_TIMEOUT = float(os.environ.get("MMCOURSE_CHECK_TIMEOUT", "10"))
MAX_CAPTURED_CHARS = 10_000  # what we keep of the student's printing during a check
_MAX_MESSAGE_CHARS = 300  # an error message quoted in a sentence is cut here


# Frames from these files are not the student's: a traceback points at the student's line.
_PACKAGE_DIR = os.path.dirname(os.path.abspath(importlib.import_module(__name__.split(".")[0]).__file__))
_NOT_STUDENT_PATHS = tuple(sorted(
    os.path.join(os.path.abspath(p), "") for p in {
        _PACKAGE_DIR,  # mmcourse/, wherever the checks live in it
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


class StudentTimeout(BaseException):
    """Student code ran longer than the check allows (likely an infinite loop).

    A `BaseException`, so a student's `except Exception:` cannot swallow it.
    """



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


