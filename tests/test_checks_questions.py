"""Written questions: every option explained, right and wrong answers reported, and the model
answer revealed only after answering."""
from __future__ import annotations

import math

import pytest

from mmcourse.classroom.checks import CheckFailed
from mmcourse.classroom.checks import questions as Q
from mmcourse.classroom.checks.question_bank import QUESTIONS


@pytest.fixture(autouse=True)
def fresh_session():
    Q._answered.clear()
    yield
    Q._answered.clear()


def test_every_question_is_complete():
    assert len(QUESTIONS) >= 6
    for qid, q in QUESTIONS.items():
        assert q["prompt"] and len(q["model_answer"]) > 100, qid
        if "options" in q:
            assert q["correct"] in q["options"] and len(q["options"]) >= 3, qid
            assert all(text and len(why) > 20 for text, why in q["options"].values()), qid
        else:
            assert math.isfinite(q["number"]) and q["tolerance"] > 0, qid
            assert all(abs(w - q["number"]) > q["tolerance"] for w in q["wrong_numbers"]), qid


@pytest.mark.parametrize("qid", sorted(QUESTIONS))
def test_right_answer_passes_and_wrong_ones_explain(qid):
    q = QUESTIONS[qid]
    right = q["correct"] if "options" in q else q["number"]
    assert Q.check_answer(qid, right).passed
    wrongs = [k for k in q.get("options", {}) if k != q.get("correct")] or list(q["wrong_numbers"])
    for wrong in wrongs:
        with pytest.raises(CheckFailed) as info:
            Q.check_answer(qid, wrong)
        expected = q["options"][wrong][1] if "options" in q else q["wrong_numbers"][wrong]
        assert expected[:40] in str(info.value)


def test_blank_and_malformed_answers():
    with pytest.raises(NotImplementedError):
        Q.check_answer("04.4", None)
    with pytest.raises(CheckFailed, match="not one of the options"):
        Q.check_answer("04.4", "z")
    with pytest.raises(CheckFailed, match="expected a number"):
        Q.check_answer("05.1", "about a half")
    with pytest.raises(ValueError, match="no question"):
        Q.check_answer("99.9", "a")
    assert Q.check_answer("04.4", " A) ").passed  # letters are forgiving about case and punctuation


def test_05_1_number_is_root_two_over_two():
    assert QUESTIONS["05.1"]["number"] == pytest.approx(0.70710678)
    with pytest.raises(CheckFailed, match="Pythagoras"):
        Q.check_answer("05.1", 0.5)


def test_reveal_refuses_until_answered_then_shows_the_model_answer(capsys):
    with pytest.raises(ValueError, match="answer question 06.1 first"):
        Q.reveal("06.1")
    with pytest.raises(CheckFailed):
        Q.check_answer("06.1", "a")  # a wrong answer is still an answer
    text = Q.reveal("06.1")
    assert "calibration" in text and "Model answer to 06.1" in capsys.readouterr().out
