"""Hints teach, they do not hand out the answer.

* No message or hint of any check contains a line of a solution (compared without spaces, for
  lines long enough to be an answer), nor any answer *expression*: every expression inside a
  solution region, as normalised tokens (module prefixes such as `torch.` dropped, plain variable
  names replaced by a placeholder, so `torch.arange(n_local) + n_local * rank` and
  `arange(n) + n*rank` are the same), long enough to carry an answer.
* No exercise markdown (the solutions' markdown outside solution regions: what the generated
  exercises show) contains an answer expression of its own assignment, nor a numeric answer
  (a number a solution region assigns, also written as a percentage or in GiB/MiB).
* `hint()`, which failure messages offer, is defined in every exercise that runs a check.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

import mmcourse.classroom.checks
from conftest import ROOT

CHECKS = sorted(Path(mmcourse.classroom.checks.__file__).parent.glob("*.py"))  # wherever the package puts them
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
EXERCISES = sorted((ROOT / "exercises").glob("[0-9][0-9]_*.ipynb"))

# Expressions an exercise's text gives on purpose (the spec or an API it hands over), with why.
GIVEN_IN_THE_TEXT = {
    ("01_infonce.ipynb", "logit_scale * image_emb @ text_emb.T"): "the spec defines the logit matrix",
    ("07_masked_language_modeling.ipynb", "model(ids, attention_mask, image=image)"): "the API the exercise hands over",
    ("10_scaling.ipynb", "logit_scale * all_images @ all_texts.T"): "exercise 3 defines the matrices it asks about",
    ("13_audio_and_video.ipynb", "1 + f / 700"): "the spec defines the HTK mel scale (inverting it is the exercise)",
}


def test_the_scan_has_something_to_scan():
    """A moved folder must not turn this file into a test of nothing."""
    assert len(CHECKS) >= 10 and len(SOLUTIONS) >= 11, (CHECKS, SOLUTIONS)


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


# -- answer expressions as normalised tokens -----------------------------------------------------

_PREFIXES = ("torch.nn.functional.", "torch.", "F.", "nn.", "np.", "math.")
_TOKEN = re.compile(r"'[^'\s]*'|\"[^\"\s]*\"|\d+(?:\.\d+)?|\w+|\*\*|//|->|!=|==|<=|>=|[^\w\s]")
_KEYWORDS = {"for", "in", "if", "else", "not", "and", "or", "None", "True", "False", "lambda", "is"}
_PUNCTUATION = set("()[],.:_")


def normalised_tokens(text: str) -> list[str]:
    """Tokens of code or prose: module prefixes dropped, names that are neither called, nor an
    attribute, nor a keyword argument replaced by `_`; a quoted word without spaces is one token
    (so the apostrophes of prose do not swallow a sentence)."""
    text = text.replace("`", " ")
    for prefix in _PREFIXES:
        text = text.replace(prefix, "")
    tokens = _TOKEN.findall(text)
    out = []
    for i, t in enumerate(tokens):
        if re.fullmatch(r"[A-Za-z_]\w*", t):
            before = tokens[i - 1] if i else ""
            after = tokens[i + 1] if i + 1 < len(tokens) else ""
            if before != "." and after not in ("(", "=") and t not in _KEYWORDS:
                t = "_"
        elif t[0] in "'\"":
            t = "'" + t[1:-1].replace(" ", "") + "'"
        out.append(t)
    return out


def _weight(tokens: list[str]) -> int:
    """How much of an answer the tokens carry: a named function or attribute, or a string, counts
    2, an operator or a number 1, placeholders and brackets 0."""
    return sum(0 if t in _PUNCTUATION else 2 if re.fullmatch(r"[A-Za-z_]\w*|'.*'", t) else 1 for t in tokens)


def _is_answer(tokens: list[str]) -> bool:
    only_data = all(t in _PUNCTUATION or re.fullmatch(r"-|\d+(\.\d+)?", t) for t in tokens)
    return len(tokens) >= 5 and _weight(tokens) >= 4 and not only_data


def _solution_line_numbers(source: str) -> set[int]:
    inside, numbers = False, set()
    for number, line in enumerate(source.split("\n"), start=1):
        if "### BEGIN SOLUTION" in line:
            inside = True
        elif "### END SOLUTION" in line:
            inside = False
        elif inside:
            numbers.add(number)
    return numbers


def answer_expressions(path: Path) -> dict[str, str]:
    """{normalised tokens joined by spaces: the expression as written} for every expression (call,
    operation, subscript, ...) on a line of a solution region of `path` that is long enough to
    carry an answer."""
    nb = nbformat.read(str(path), as_version=4)
    found = {}
    for cell in nb.cells:
        lines = _solution_line_numbers(cell.source) if cell.cell_type == "code" else set()
        if not lines:
            continue
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            if (isinstance(node, ast.expr) and not isinstance(node, (ast.Name, ast.Constant, ast.Attribute))
                    and getattr(node, "lineno", 0) in lines):
                text = ast.get_source_segment(cell.source, node) or ""
                tokens = normalised_tokens(text)
                if _is_answer(tokens):
                    found[" ".join(tokens)] = text
    return found


def numeric_answers(path: Path) -> dict[str, float]:
    """{name: value} of every `name = <arithmetic on numbers>` in a solution region of `path`
    (but small integers such as a counter's start)."""
    nb = nbformat.read(str(path), as_version=4)
    found = {}
    for cell in nb.cells:
        lines = _solution_line_numbers(cell.source) if cell.cell_type == "code" else set()
        if not lines:
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Assign) and node.lineno in lines and isinstance(node.targets[0], ast.Name):
                try:
                    value = eval(compile(ast.Expression(node.value), "<answer>", "eval"), {"__builtins__": {}})
                except Exception:  # noqa: BLE001 - not arithmetic on numbers
                    continue
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                if not (float(value).is_integer() and abs(value) < 10):  # a counter's start is no answer
                    found[node.targets[0].id] = float(value)
    return found


def _spellings(value: float) -> list[str]:
    """Ways a text may write `value`: as it is (rounded), as a percentage, in GiB or MiB."""
    out = [f"{value:g}", f"{value:,.0f}" if value >= 1000 else f"{value:g}"]
    if 0 < value < 1:
        out += [f"{100 * value:g}%", f"{100 * value:g} %", f"{100 * value:g} percent"]
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20)):
        if value >= size and (value / size) == int(value / size):
            out += [f"{value / size:g} {unit}", f"{value / size:g}{unit}"]
    return out


def _contains(haystack: list[str], needle: str) -> bool:
    return f" {needle} " in " " + " ".join(haystack) + " "


def check_strings(path: Path) -> list[str]:
    """The string literals of a check module (messages and hints are literals or f-strings), not
    its docstrings (which describe the reference, not what a learner is told)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and ast.get_docstring(node, clean=False):
            docstrings.add(id(node.body[0].value))
    out = []
    for node in ast.walk(tree):
        if id(node) in docstrings:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append(node.value)
        elif isinstance(node, ast.JoinedStr):
            out.append("".join(v.value for v in node.values if isinstance(v, ast.Constant)))
    return out


def exercise_markdown(path: Path) -> list[str]:
    """The markdown cells of a solution that its exercise shows (outside solution regions)."""
    nb = nbformat.read(str(path), as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "markdown" and "### BEGIN SOLUTION" not in c.source]


def test_there_are_solution_lines_to_compare():
    assert len(solution_lines()) > 20


def test_the_scan_finds_answer_expressions_written_another_way():
    # the summaries of 07 and 10 once said `arange(n) + n*rank`; the solution writes it otherwise
    tokens = normalised_tokens("labels are `arange(n) + n*rank`.")
    assert _contains(tokens, " ".join(normalised_tokens("torch.arange(n_local) + n_local * rank")))
    assert _is_answer(normalised_tokens("z * h_v + (1 - z) * h_t"))
    assert _is_answer(normalised_tokens("torch.einsum('bi,bj->bij', x1, y1)"))
    assert not _is_answer(normalised_tokens("[0, 0, 0, 1, 2, 2]"))  # data, not an answer
    assert "12%" in _spellings(0.15 * 0.8) and "64 MiB" in _spellings(2 * 4 * 256 * 32768)
    assert sum(len(answer_expressions(p)) for p in SOLUTIONS) > 150


@pytest.mark.parametrize("path", CHECKS, ids=lambda p: p.name)
def test_no_hint_contains_a_solution_line(path):
    answers = solution_lines()
    strings = [_squash(s) for s in check_strings(path)]
    # implicit concatenation already joined adjacent literals; also look across neighbours
    leaks = sorted({where for squashed, where in answers.items() if any(squashed in s for s in strings)})
    assert not leaks, f"{path.name} prints solution lines in a message or hint: {leaks}"


@pytest.mark.parametrize("path", CHECKS, ids=lambda p: p.name)
def test_no_message_or_hint_contains_an_answer_expression(path):
    answers = {}
    for solution in SOLUTIONS:
        answers.update({k: f"{solution.name}: {v}" for k, v in answer_expressions(solution).items()})
    strings = [normalised_tokens(s) for s in check_strings(path)]
    leaks = sorted({where for key, where in answers.items() if any(_contains(s, key) for s in strings)})
    assert not leaks, f"{path.name} prints answer expressions in a message or hint: {leaks}"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_no_exercise_markdown_contains_an_answer(path):
    answers = answer_expressions(path)
    given = {" ".join(normalised_tokens(e)) for (name, e) in GIVEN_IN_THE_TEXT if name == path.name}
    numbers = numeric_answers(path)
    leaks = []
    for text in exercise_markdown(path):
        tokens = normalised_tokens(text)
        leaks += [f"expression {v!r}" for k, v in answers.items() if k not in given and _contains(tokens, k)]
        plain = " ".join(text.split())
        leaks += [f"the value of {name} ({spelling})" for name, value in numbers.items() for spelling in _spellings(value)
                  if re.search(rf"(?<![\w.,]){re.escape(spelling)}(?![\w%]|[.,]\d)", plain)]
    assert not leaks, f"the exercise text of {path.name} gives away: {sorted(set(leaks))}"


def _imports_hint(nb) -> bool:
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("checks") and any(
                    a.name in ("hint", "*") and a.asname in (None, "hint") for a in node.names):
                return True
            if isinstance(node, (ast.FunctionDef, ast.Assign)) and "hint" in (
                    [node.name] if isinstance(node, ast.FunctionDef) else [getattr(t, "id", "") for t in node.targets]):
                return True
    return False


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.name)
def test_hint_is_defined_wherever_a_check_can_offer_it(path):
    # A failing check with closer tiers ends with "run hint() for a closer hint": the exercise must
    # define `hint` (imported from mmcourse.classroom.checks) before its first check cell.
    nb = nbformat.read(str(path), as_version=4)
    checks = [i for i, c in enumerate(nb.cells) if "check" in c.metadata.get("tags", [])]
    assert checks, f"{path.name} has no check cell"
    assert _imports_hint(nbformat.v4.new_notebook(cells=nb.cells[: checks[0]])), \
        f"{path.name} offers hint() in its messages but does not import it before its first check"


def test_hint_is_what_the_messages_offer():
    from mmcourse.classroom.checks import CheckResult

    text = CheckResult("x", False, "wrong", ("idea", "closer")).text()
    assert "hint()" in text  # if the wording changes, the test above must follow it


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
