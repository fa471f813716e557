"""Written questions that give feedback: a checkable part and a model answer to reveal.

Each written question of an assignment keeps its prose answer (collected for the teacher) and
gets a checkable part (a multiple choice or a number to predict), checked by
`check_answer(question_id, answer)`: the learner is told whether it is right and why, for the
option they chose. `reveal(question_id)` then shows the model answer — it refuses until the
checkable part has been answered in this session, so the answer is the learner's own first.
The questions and answers are data, in `question_bank.py`.
"""
from __future__ import annotations

import math
from typing import Any

from mmcourse.classroom.checks.core import CheckResult, finish
from mmcourse.classroom.checks.question_bank import QUESTIONS

__all__ = ["check_answer", "reveal"]

_answered: set[str] = set()  # question ids answered in this kernel


def _question(question_id: str) -> dict:
    if question_id not in QUESTIONS:
        raise ValueError(f"no question {question_id!r}; the questions are {sorted(QUESTIONS)}")
    return QUESTIONS[question_id]


def _blank(answer: Any) -> bool:
    return answer is None or answer is Ellipsis or (isinstance(answer, str) and answer.strip() in ("", "?"))


def check_answer(question_id: str, answer: Any, raise_on_fail: bool = True) -> CheckResult:
    """Check the checkable part of a written question.

    Args:
        question_id: e.g. "04.4" (assignment.exercise), as the notebook names it.
        answer: a letter ("a".."d") for a multiple choice, a number for a prediction.

    Returns:
        The `CheckResult`; its message explains the option chosen, right or wrong.

    Raises:
        CheckFailed: the answer is wrong (if `raise_on_fail`).
        NotImplementedError: the answer is still blank (`None`), as an untouched exercise.
    """
    q = _question(question_id)
    name = f"question {question_id}"
    if _blank(answer):
        raise NotImplementedError(f"answer question {question_id} first: replace None with your answer")
    if "options" in q:
        letter = str(answer).strip().lower().strip("().")
        if letter not in q["options"]:
            return finish(CheckResult(name, False, f"{answer!r} is not one of the options "
                                      f"{', '.join(sorted(q['options']))}", "answer with the option's letter, "
                                      "e.g. \"b\""), raise_on_fail)
        _answered.add(question_id)
        text, why = q["options"][letter]
        ok = letter == q["correct"]
        return finish(CheckResult(name, ok, f"({letter}) {text}: {why}",
                                  "" if ok else "read the explanation, then try another option"), raise_on_fail)
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return finish(CheckResult(name, False, f"expected a number, got {type(answer).__name__}",
                                  "write the number itself, e.g. 0.25"), raise_on_fail)
    if not math.isfinite(value):
        return finish(CheckResult(name, False, f"expected a finite number, got {value}"), raise_on_fail)
    _answered.add(question_id)
    if abs(value - q["number"]) <= q["tolerance"]:
        return finish(CheckResult(name, True, f"{value:g} is right ({q['number']:.4g})"), raise_on_fail)
    for wrong, why in q.get("wrong_numbers", {}).items():
        if abs(value - wrong) <= q["tolerance"]:
            return finish(CheckResult(name, False, f"{value:g}: {why}", "draw the two vectors and their sum"),
                          raise_on_fail)
    return finish(CheckResult(name, False, f"{value:g} is not it", "draw the vectors and their mean"), raise_on_fail)


def reveal(question_id: str) -> str:
    """The model answer of a written question, once its checkable part has been answered.

    Returns:
        The model answer as text (also printed).

    Raises:
        ValueError: unknown question, or not answered yet in this session.
    """
    q = _question(question_id)
    if question_id not in _answered:
        raise ValueError(f"answer question {question_id} first (write your answer, then run its "
                         f"check_answer cell); the model answer is shown after that")
    print(f"Model answer to {question_id}: {q['model_answer']}")
    return q["model_answer"]
