"""Hints teach, they do not hand out the answer: no message or hint of any check contains a line
of a solution (compared without spaces, for lines long enough to be an answer)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT

CHECKS = sorted((ROOT / "mmcourse" / "checks").glob("*.py"))
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def solution_lines() -> dict[str, str]:
    """Every code line inside a solution region, squashed, that is long enough to give an answer
    away (short lines such as `return x` or `n = len(x)` teach nothing on their own)."""
    lines = {}
    for path in SOLUTIONS:
        nb = nbformat.read(str(path), as_version=4)
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            inside = False
            for line in cell.source.split("\n"):
                if "### BEGIN SOLUTION" in line:
                    inside = True
                elif "### END SOLUTION" in line:
                    inside = False
                elif inside:
                    code = line.split("#", 1)[0].strip()
                    if len(_squash(code)) >= 24 and not code.startswith(("def ", "import ", "from ")):
                        lines[_squash(code)] = f"{path.name}: {code}"
    return lines


def check_strings(path: Path) -> list[str]:
    """The string literals of a check module (messages and hints are literals or f-strings)."""
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append(node.value)
        elif isinstance(node, ast.JoinedStr):
            out.append("".join(v.value for v in node.values if isinstance(v, ast.Constant)))
    return out


def test_there_are_solution_lines_to_compare():
    assert len(solution_lines()) > 20


@pytest.mark.parametrize("path", CHECKS, ids=lambda p: p.name)
def test_no_hint_contains_a_solution_line(path):
    answers = solution_lines()
    strings = [_squash(s) for s in check_strings(path)]
    # implicit concatenation already joined adjacent literals; also look across neighbours
    leaks = sorted({where for squashed, where in answers.items() if any(squashed in s for s in strings)})
    assert not leaks, f"{path.name} prints solution lines in a message or hint: {leaks}"


# -- tiered hints ----------------------------------------------------------------------------------

from mmcourse.classroom.checks import CheckFailed, Variant, hint, run_check  # noqa: E402
from mmcourse.classroom.checks import core  # noqa: E402


@pytest.fixture()
def fresh():
    core._FAILURES.clear()
    core._LAST_FAILURE["result"] = None
    yield
    core._FAILURES.clear()
    core._LAST_FAILURE["result"] = None


def _check(fn):
    return run_check("double", fn, lambda x: 2 * x, [core.Case((3,), {}, "x=3")],
                     [Variant(lambda x: 3 * x, "you tripled", ("first: the idea", "second: closer", "third: closest"))])


def test_first_failure_shows_the_first_tier_only(fresh):
    with pytest.raises(CheckFailed) as info:
        _check(lambda x: 3 * x)
    text = str(info.value)
    assert "Hint: first: the idea" in text and "second" not in text and "run hint()" in text


def test_the_same_mistake_again_shows_the_next_tier(fresh):
    for _ in range(2):
        with pytest.raises(CheckFailed) as info:
            _check(lambda x: 3 * x)
    assert "Hint 2: second: closer" in str(info.value) and "third" not in str(info.value)


def test_hint_asks_for_more_and_stops_at_the_last_tier(fresh, capsys):
    assert hint() is None and "no failed check" in capsys.readouterr().out
    with pytest.raises(CheckFailed):
        _check(lambda x: 3 * x)
    hint()
    out = capsys.readouterr().out
    assert "Hint 2: second: closer" in out and "third" not in out
    hint()
    hint()
    out = capsys.readouterr().out
    assert "Hint 3: third: closest" in out and "last hint there is" in out


def test_a_pass_resets_the_tiers(fresh):
    with pytest.raises(CheckFailed):
        _check(lambda x: 3 * x)
    assert _check(lambda x: 2 * x).passed
    with pytest.raises(CheckFailed) as info:
        _check(lambda x: 3 * x)
    assert "Hint 2" not in str(info.value)


def test_a_plain_string_hint_is_one_tier(fresh):
    result = core.CheckResult("x", False, "wrong", "only hint")
    assert result.hint == "only hint" and result.more == () and "run hint()" not in result.text()


# -- a diagnosis is named only when it reproduces the learner's output on every case ------------

def _double_check(fn, diagnoses):
    cases = [core.Case((3,), {}, "x=3"), core.Case((0,), {}, "x=0"), core.Case((-2,), {}, "x=-2")]
    return run_check("double", fn, lambda x: 2 * x, cases, diagnoses)


def test_a_variant_that_fits_one_case_only_is_not_named(fresh):
    # "plus 3" equals the learner's "times 3" at x = 3, but not at x = -2: no false accusation
    diagnoses = [Variant(lambda x: x + 3, "you added 3")]
    with pytest.raises(CheckFailed) as info:
        _double_check(lambda x: 3 * x, diagnoses)
    assert "added 3" not in str(info.value) and "expected" in str(info.value)


def test_two_mistakes_that_fit_everywhere_are_both_named(fresh):
    diagnoses = [Variant(lambda x: 3 * x, "you multiplied by 3"), Variant(lambda x: x + x + x, "you added x three times")]
    with pytest.raises(CheckFailed) as info:
        _double_check(lambda x: 3 * x, diagnoses)
    text = str(info.value)
    assert "more than one mistake" in text and "multiplied by 3" in text and "added x three times" in text


def test_hint_after_a_pass_does_not_bring_back_the_fixed_mistake(fresh, capsys):
    with pytest.raises(CheckFailed):
        _check(lambda x: 3 * x)
    assert _check(lambda x: 2 * x).passed
    assert hint() is None and "your last attempt passed" in capsys.readouterr().out
