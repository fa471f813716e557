"""The check framework: student code that raises, loops, prints, mutates or returns the wrong
thing is reported in one sentence, never crashes the check; right answers say what was verified."""
from __future__ import annotations

import pickle
import signal
import time

import pytest
import torch
import torch.nn.functional as F

import mmcourse.classroom.checks as checks
from conftest import fails_with
from mmcourse.classroom.checks.core import (CHECK_MIMETYPE, Case, CheckFailed, CheckResult, Property, StudentTimeout,
                                            Variant, call_safely, check_value, compare, make_check, publish,
                                            run_check, time_limit)

torch.manual_seed(0)
Z = torch.randn(6, 4)
Z_POS = torch.randn(6, 4)


def softmax_ref(x):
    return torch.softmax(x, dim=-1)


def softmax_check(student, **kw):
    """A small but complete check: a reference, two cases, two known mistakes and a property."""
    big = torch.tensor([[1000.0, 0.0, -1000.0]])
    return run_check(
        "softmax", student, softmax_ref,
        cases=[Case(args=(Z,), label="6×4"), Case(args=(big,), label="logits of ±1000")],
        diagnoses=[
            Variant(wrong=lambda x: torch.softmax(x, dim=0), message="normalised over the wrong dimension",
                    hint="each row must sum to 1: use dim=-1"),
            Variant(wrong=torch.exp, message="the exponentials are not divided by their sum",
                    hint="divide by x.exp().sum(dim=-1, keepdim=True)"),
            Property(test=lambda fn: not torch.isfinite(fn(big)).all(), message="overflows for large logits",
                     hint="subtract the row maximum before exp"),
        ],
        success="matches torch.softmax on {n} cases, including logits of ±1000", **kw)


def naive_softmax(x):
    e = x.exp()
    return e / e.sum(dim=-1, keepdim=True)


def message_of(student, **kw) -> str:
    with pytest.raises(CheckFailed) as info:
        softmax_check(student, **kw)
    return str(info.value)


# --------------------------------------------------------------------------- right and wrong answers


def test_correct_answer_passes_and_says_what_was_verified(capsys):
    result = softmax_check(lambda x: torch.softmax(x, -1))
    assert result.passed and bool(result)
    assert result.message == "matches torch.softmax on 2 cases, including logits of ±1000"
    assert capsys.readouterr().out.strip() == "✓ softmax: matches torch.softmax on 2 cases, including logits of ±1000"


def test_known_mistakes_are_named():
    assert message_of(lambda x: torch.softmax(x, dim=0)).startswith(
        "✗ softmax: normalised over the wrong dimension (case: 6×4)\n  Hint: each row must sum to 1")
    assert "the exponentials are not divided by their sum" in message_of(torch.exp)


def test_nan_from_overflow_is_diagnosed_by_property():
    # naive_softmax is right on the first case and gives NaN on the second: the property names it.
    assert message_of(naive_softmax) == ("✗ softmax: overflows for large logits (case: logits of ±1000)\n"
                                         "  Hint: subtract the row maximum before exp")


def test_nan_without_diagnosis_is_reported_as_nan():
    def nan_softmax(x):
        return torch.full_like(x, float("nan"))

    plain = make_check("softmax", softmax_ref, [Case(args=(Z,), label="6×4")])  # no diagnoses to explain it
    assert str(pytest.raises(CheckFailed, plain, nan_softmax).value) == (
        "✗ softmax: the result contains NaN (case: 6×4)\n  Hint: compare your code with the formula above, one term at a time")
    assert compare(1.0, float("nan")) == "the result is NaN"
    assert compare(1.0, float("inf")) == "the result is inf (an overflow?)"
    assert compare(torch.ones(2), torch.tensor([1.0, float("inf")])) == "the result contains inf (an overflow?)"


def test_unexplained_wrong_values_show_where_they_differ():
    bump = torch.zeros(6, 4)
    bump[2, 1] = 0.5
    msg = message_of(lambda x: torch.softmax(x, -1) + bump)
    expected = torch.softmax(Z, -1)[2, 1].item()
    assert (f"values differ from the reference (largest difference 0.5 at index [2, 1]: expected {expected:.6g}, "
            f"got {expected + 0.5:.6g}) (case: 6×4)") in msg
    assert "Hint: compare your code with the formula" in msg


# --------------------------------------------------------------------------- code that misbehaves


def test_student_code_that_raises_is_reported_with_its_line():
    def broken(x):
        y = x @ x  # (6, 4) @ (6, 4): shapes do not match
        return y

    msg = message_of(broken)
    assert msg.startswith("✗ softmax: your code raised RuntimeError: mat1 and mat2 shapes cannot be multiplied")
    assert "(line " in msg and "`y = x @ x" in msg  # points at the student's line, not torch's
    assert "(case: 6×4)" in msg


@pytest.mark.parametrize("returned, expected_message", [
    ([[0.5, 0.5]], "expected a torch.Tensor, got list"),
    (None, "expected a torch.Tensor, got None"),
    (torch.ones(6), "wrong shape: expected (6, 4), got (6,)"),
    ("softmax", "expected a torch.Tensor, got str"),
])
def test_wrong_type_or_shape_is_named(returned, expected_message):
    assert message_of(lambda x: returned).startswith(f"✗ softmax: {expected_message} (case: 6×4)")


def test_returning_a_numpy_array_gets_its_own_hint():
    assert "got a numpy array" in message_of(lambda x: torch.softmax(x, -1).numpy())


def test_system_exit_and_keyboard_interrupt():
    outcome = call_safely(lambda: exit(3))
    assert isinstance(outcome.error, SystemExit) and not outcome.ok

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # the user pressing stop must still stop
        call_safely(interrupted)


def test_infinite_loop_is_stopped_and_reported():
    def forever(x):
        while True:
            pass

    t0 = time.monotonic()
    msg = message_of(forever, timeout=0.3)
    assert msg.startswith("✗ softmax: your code did not finish: it took longer than 0.3 s (an infinite loop?)")
    assert "Hint: look for a loop" in msg
    assert time.monotonic() - t0 < 5  # not re-run for each diagnosis
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # no alarm left behind


def test_loop_with_bare_except_cannot_swallow_the_timeout():
    def stubborn(x):
        while True:
            try:
                time.sleep(0.05)
            except Exception:  # noqa: BLE001 - what a student might write
                pass

    assert "did not finish" in message_of(stubborn, timeout=0.2)
    assert issubclass(StudentTimeout, BaseException) and not issubclass(StudentTimeout, Exception)


def test_slow_but_correct_code_passes():
    def slow(x):
        time.sleep(0.3)
        return torch.softmax(x, -1)

    assert softmax_check(slow, timeout=3).passed


def test_nested_time_limits_keep_the_outer_one():
    with pytest.raises(StudentTimeout):
        with time_limit(0.3):
            with time_limit(5):  # may not extend the outer 0.3 s
                time.sleep(2)
    with pytest.raises(StudentTimeout):
        with time_limit(0.4):
            with time_limit(0.05):
                pass  # the inner one ends at once; the outer one must still fire
            time.sleep(2)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_inputs_are_copies_and_in_place_changes_are_reported():
    z = Z.clone()

    def in_place(x):
        x -= x.max(dim=-1, keepdim=True).values  # right result, but changes the caller's tensor
        return torch.softmax(x, -1)

    msg = message_of(in_place)
    assert msg.startswith("✗ softmax: the result is right, but your function changed its input `x` in place")
    torch.testing.assert_close(Z, z, rtol=0, atol=0)  # the check's own tensor is untouched
    assert softmax_check(in_place, allow_mutation=True).passed


def test_mutation_of_nested_inputs_does_not_leak():
    data = {"x": torch.zeros(3), "xs": [torch.zeros(2)]}

    def scribble(d):
        d["x"].add_(1)
        d["xs"][0].fill_(7)
        d["new"] = 1
        return 0

    outcome = call_safely(scribble, data)
    assert outcome.ok and outcome.mutated == ["d"]
    assert data == {"x": data["x"], "xs": data["xs"]} and data["x"].sum() == 0 and data["xs"][0].sum() == 0


def test_printing_is_captured_not_flooding(capsys):
    def chatty(x):
        for i in range(20_000):
            print("step", i)
        return torch.softmax(x, -1)

    result = softmax_check(chatty)
    out = capsys.readouterr().out
    assert result.passed and out.count("\n") == 1 and "step" not in out
    outcome = call_safely(chatty, Z)
    assert outcome.output.startswith("step 0\nstep 1\n") and len(outcome.output) == 10_000
    assert outcome.output_chars > 200_000


def test_not_implemented_blank_fails_with_the_students_error():
    def blank(x):
        # YOUR CODE HERE
        raise NotImplementedError()

    with pytest.raises(NotImplementedError):
        softmax_check(blank)
    result = softmax_check(blank, raise_on_fail=False)
    assert not result.passed and result.message.startswith("not implemented yet")


def test_an_exception_that_cannot_be_printed_is_still_reported():
    class Nasty(Exception):
        def __str__(self):
            raise RuntimeError("no")

    def student(x):
        raise Nasty()

    assert message_of(student).startswith("✗ softmax: your code raised Nasty (line ")


def test_passing_a_value_instead_of_a_function():
    msg = message_of(torch.softmax(Z, -1))
    assert msg == ("✗ softmax: expected a function, got a tensor of shape (6, 4)\n"
                   "  Hint: pass the function itself, e.g. check(my_fn), not check(my_fn())")


def test_results_that_break_comparison_do_not_crash():
    class Weird:
        def __eq__(self, other):
            raise ValueError("no")

        def __repr__(self):
            raise ValueError("no repr either")

    assert compare(Weird(), 1) == "could not compare your result (int) with the expected one: no"
    assert compare(1.0, Weird()) == "expected a number, got Weird"
    assert compare({"a": 1}, Weird()) == "expected a dict, got Weird"
    assert compare(torch.ones(2), Weird()) == "expected a torch.Tensor, got Weird"


def test_property_that_raises_counts_as_absent():
    check = make_check("softmax", softmax_ref, [Case(args=(Z,))],
                       diagnoses=[Property(test=lambda fn: 1 / 0, message="never")])
    assert "never" not in pytest.raises(CheckFailed, check, torch.exp).value.result.message


# --------------------------------------------------------------------------- comparisons


@pytest.mark.parametrize("expected, actual, why", [
    (torch.arange(3), torch.arange(3).float(), "wrong dtype: expected an integer tensor (torch.int64), got torch.float32"),
    (torch.ones(2, dtype=torch.bool), torch.ones(2), "wrong dtype: expected a boolean tensor (torch.bool), got torch.float32"),
    (torch.zeros(2, 3), torch.zeros(3, 2), "wrong shape: expected (2, 3), got (3, 2)"),
    (torch.tensor(2.0), 3.0, "expected 2, got 3"),
    (2.0, torch.tensor(2.5), "expected 2, got 2.5"),
    (2.0, "2", "expected a number, got str"),
    (2, True, "expected a number, got bool"),
    ({"loss": 1.0, "acc": 0.5}, {"loss": 1.0}, "missing keys: ['acc']"),
    ({"loss": 1.0}, {"loss": 2.0}, "['loss'] expected 1, got 2"),
    ((1, 2), [1, 2, 3], "expected a sequence of length 2, got length 3"),
    ((1, 2), (1, 5), "item 1: expected 2, got 5"),
    ("cat", "dog", "expected 'cat', got 'dog'"),
    (None, 0, "expected None, got 0"),
])
def test_compare_names_the_difference(expected, actual, why):
    assert compare(expected, actual) == why


@pytest.mark.parametrize("expected, actual", [
    (torch.tensor(2.0), 2.0),
    (torch.tensor([1.0]), 1.0),
    (torch.ones(3), torch.ones(3, dtype=torch.float64, requires_grad=True)),
    (2.0, torch.tensor(2.0)),
    (3, 3.0000001),
    ({"a": [1, torch.zeros(2)]}, {"a": (1, torch.zeros(2)), "extra": 1}),
    (True, torch.tensor(True)),
])
def test_compare_accepts_equal_values(expected, actual):
    assert compare(expected, actual) is None


def test_compare_matches_torch_allclose_tolerances():
    e = torch.tensor([1.0, 100.0])
    assert compare(e, e + torch.tensor([0.0, 0.009])) is None  # within rtol 1e-4 of 100
    assert compare(e, e + torch.tensor([0.0, 0.02])) is not None


# --------------------------------------------------------------------------- values


def test_check_value_with_wrong_values(capsys):
    def check_temperature(value):
        return check_value("best τ", value, 0.1, message_ok="τ = 0.1 gives the lowest validation loss",
                           hint="read the τ at the minimum of the curve",
                           wrong_values=[(10.0, "that is the logit scale 1/τ, not τ"),
                                         (1.0, "τ = 1 is the untuned default")])

    assert check_temperature(0.1).passed
    assert "✓ best τ: τ = 0.1 gives the lowest validation loss" in capsys.readouterr().out
    with pytest.raises(CheckFailed, match="that is the logit scale 1/τ, not τ"):
        check_temperature(10)
    with pytest.raises(CheckFailed, match="τ = 1 is the untuned default"):
        check_temperature(torch.tensor(1.0))
    err = pytest.raises(CheckFailed, check_temperature, 0.5).value
    assert err.result.message == "expected 0.1, got 0.5" and err.result.hint == "read the τ at the minimum of the curve"
    err = pytest.raises(CheckFailed, check_temperature, lambda: 0.1).value
    assert err.result.message == "expected a value, got a function"
    assert check_value("x", 2, 3, raise_on_fail=False).passed is False


# --------------------------------------------------------------------------- how results are shown


def test_check_failed_message_and_render_traceback():
    err = CheckFailed(CheckResult("info_nce", False, "only one direction", "average both directions"))
    assert isinstance(err, AssertionError)
    assert str(err) == "✗ info_nce: only one direction\n  Hint: average both directions"
    rendered = err._render_traceback_()
    assert isinstance(rendered, list) and all(isinstance(line, str) for line in rendered)
    text = "\n".join(rendered)
    assert "only one direction" in text and "average both directions" in text and "Traceback" not in text
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, CheckFailed) and again.result == err.result


def test_published_with_the_check_mimetype(monkeypatch):
    import IPython
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython, "get_ipython", lambda: object())
    monkeypatch.setattr(IPython.display, "display", lambda obj, raw=False: shown.append((obj, raw)))
    publish(CheckResult("double", True, "matches on 3 cases"))
    assert shown == [({CHECK_MIMETYPE: {"name": "double", "passed": True, "message": "matches on 3 cases", "hint": ""},
                       "text/plain": "✓ double: matches on 3 cases"}, True)]
    assert CHECK_MIMETYPE == "application/vnd.mmcourse.check+json"


def test_package_lookup():
    assert checks.run_check is run_check and checks.make_check is make_check
    with pytest.raises(AttributeError, match="no check named 'check_does_not_exist'"):
        checks.check_does_not_exist  # noqa: B018
    with pytest.raises(AttributeError):
        checks._ipython_canary_method_should_not_exist_  # noqa: B018


def test_make_check_builds_a_named_check():
    check = make_check("softmax", softmax_ref, [Case(args=(Z,))], success="ok on {n} case")
    assert check.__name__ == "check_softmax"
    assert check(lambda x: F.softmax(x, -1)).message == "ok on 1 case"
    assert not check(torch.exp, raise_on_fail=False).passed


def test_models_are_passed_as_they_are_so_a_training_step_can_change_them():
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.weight.detach().clone()

    def train_step(m, opt, x):
        opt.zero_grad()
        loss = m(x).pow(2).mean()
        loss.backward()
        opt.step()
        return loss.detach()

    outcome = call_safely(train_step, model, optimizer, torch.ones(4, 2))
    assert outcome.ok and outcome.mutated == []
    assert not torch.equal(model.weight, before)  # the optimizer updated the caller's model


def test_teacher_guide_example_check_works():
    """The worked example in docs/teaching.md runs and diagnoses the mistakes it claims."""
    import re

    from conftest import ROOT

    text = (ROOT / "docs" / "teaching.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    module = next(b for b in blocks if "def check_similarity_matrix" in b)
    namespace: dict = {}
    exec(module.replace("from .core import", "from mmcourse.classroom.checks.core import"), namespace)  # noqa: S102
    check = namespace["check_similarity_matrix"]

    def solution(image_emb, text_emb):
        return F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T

    assert check(solution).message == "cosine similarities match on 2 cases: shape (N, M), row i = image i"
    for wrong, mistake in [(lambda a, b: a @ b.T, "not normalised"), (lambda a, b: solution(a, b).T, "transposed"),
                           (lambda a, b: F.normalize(a, dim=0) @ F.normalize(b, dim=0).T, "normalised over the batch")]:
        assert pytest.raises(CheckFailed, check, wrong).value.result.message.startswith(mistake)


# --------------------------------------------------------------------------- the library's own answers, grading tokens


def test_calling_the_librarys_reference_is_reported():
    from mmcourse.objectives import losses
    from mmcourse.classroom.checks import core

    def info_nce(z, z_pos, temperature=0.07):  # the answer: the library under another name
        from mmcourse.objectives import info_nce as _ref
        return _ref(z, z_pos, temperature)

    z, p = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(CheckFailed) as info:
        core.run_check("info_nce (stable)", info_nce, losses.info_nce, [Case((z, p), {"temperature": 0.1}, "N=4")])
    assert str(info.value).startswith(
        "✗ info_nce (stable): you called mmcourse's info_nce; this exercise asks you to write it (case: N=4)")
    # the same numbers written by hand pass
    def by_hand(z, z_pos, temperature=0.07):
        logits = F.normalize(z, dim=-1) @ F.normalize(z_pos, dim=-1).T / temperature
        return F.cross_entropy(logits, torch.arange(len(z)))
    assert core.run_check("info_nce (stable)", by_hand, losses.info_nce, [Case((z, p), {"temperature": 0.1})])


def test_library_answers_by_check_name_and_forbid_override():
    from mmcourse.evaluation import retrieval as evaluate
    from mmcourse.classroom.checks import core

    def ranks_by_library(logits, k):
        ranks, _ = evaluate.retrieval_ranks(logits.float(), torch.eye(len(logits)))
        return (ranks < k).float().mean().item()

    reference = lambda logits, k: ranks_by_library(logits, k)  # noqa: E731 - a reference outside mmcourse
    case = [Case((torch.randn(5, 5), 2), {}, "N=5")]
    fails_with(lambda fn: core.run_check("recall_at_k", fn, reference, case), ranks_by_library,
               "you called mmcourse's retrieval_ranks")
    fails_with(lambda fn: core.run_check("recall_at_k, hidden tests", fn, reference, case), ranks_by_library,
               "you called mmcourse's retrieval_ranks")
    assert core.run_check("recall_at_k", ranks_by_library, reference, case, forbid=[])  # allowed explicitly
    check = core.make_check("clip_loss", reference=lambda a, b, s: a.sum(), cases=[Case((torch.ones(2), 1, 1))],
                            forbid=[torch.Tensor.sum])  # not a Python function: nothing to watch, no error
    assert check(lambda a, b, s: a.sum())


def test_watching_calls_restores_the_previous_profiler():
    import sys

    from mmcourse.classroom.checks import core

    seen = []
    previous = lambda frame, event, arg: seen.append(event)  # noqa: E731
    sys.setprofile(previous)
    try:
        with core._watch_calls([softmax_ref]) as called:
            softmax_ref(torch.zeros(2))
        assert sys.getprofile() is previous and called == ["softmax_ref"]
    finally:
        sys.setprofile(None)
    with core._watch_calls([]) as called:
        softmax_ref(torch.zeros(2))
    assert called == []


class _Shell:
    """A stand-in for IPython's shell: a namespace and a display that records what it shows."""

    def __init__(self):
        self.user_ns, self.shown = {}, []


def test_arm_tags_results_with_the_token_and_rebinds_check_names(monkeypatch):
    import IPython
    import IPython.display

    from mmcourse.classroom.checks import core

    shell = _Shell()
    shell.user_ns["check_info_nce"] = lambda *a, **k: None  # the first cheat
    shell.user_ns["run_check"] = lambda *a, **k: None
    shell.user_ns["info_nce"] = "the student's own answer"
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    monkeypatch.setattr(IPython.display, "display", lambda obj, raw=False: shell.shown.append(obj))
    try:
        core._arm("abc123", ["check_info_nce", "run_check", "info_nce", "torch", "check_no_such_thing"])
        assert shell.user_ns["check_info_nce"] is checks.check_info_nce
        assert shell.user_ns["run_check"] is core.run_check
        assert shell.user_ns["info_nce"] == "the student's own answer"  # not a check: left alone
        assert "torch" not in shell.user_ns and "check_no_such_thing" not in shell.user_ns
        core.publish(CheckResult("x", True, "fine"))
        core._disarm()
        core.publish(CheckResult("x", True, "fine"))
    finally:
        core._disarm()
    assert [s[CHECK_MIMETYPE].get("token") for s in shell.shown] == ["abc123", None]
