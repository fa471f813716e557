"""What a check found, and where it goes: `CheckResult` (a sentence and tiers of hints),
`CheckFailed`, `publish` (to Jupyter with the grader's mimetype, or printed), `finish` (publish
or raise), `hint()` (one closer tier of the last failure), and the grader's token for one cell
(`_arm`, `_disarm`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

CHECK_MIMETYPE = "application/vnd.mmcourse.check+json"

# Set by the grader around each graded cell (see `_arm`); never by a notebook.
_GRADING: dict[str, Any] = {"token": None}


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
