"""Every named mistake of every check (assignments 01-11) is failed and named when it is made.

Each check that is built on `run_check` lists its known wrong answers as `Variant`s, and each
check built on `check_value` lists its known wrong values. This test records those lists (by
running every check once with `run_check`/`check_value` replaced by a recorder), then feeds each
wrong answer to the real check and asserts that the check fails with that mistake's own message
(or, where two mistakes give exactly the same output everywhere, a message naming both). A
Variant that the check does not fail, or names as something else, is a defect of the check: a
false accusation or a mistake that passes.

The two answers issue 23 found passing are here too, with the messages they must get.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections import Counter

import pytest
import torch

import mmcourse.classroom.checks as checks_package
from mmcourse.classroom.checks import core

MODULES = sorted(m.name for m in pkgutil.iter_modules(checks_package.__path__) if m.name not in ("core",)
                 and not m.name.startswith("_") and m.name not in checks_package.FRAMEWORK_MODULES
                 and m.name not in ("question_bank", "questions"))


def _recorded() -> list[tuple[str, str, dict]]:
    """[(check function, kind, its recorded call)] for every check of every module."""
    found = []
    for module_name in MODULES:
        module = importlib.import_module(f"mmcourse.classroom.checks.{module_name}")
        for name in sorted(dir(module)):
            fn = getattr(module, name)
            if not (name.startswith("check_") and callable(fn) and getattr(fn, "__module__", "") == module.__name__):
                continue
            calls = []

            def record_run(*args, **kwargs):
                calls.append(("run_check", inspect.signature(core.run_check).bind(*args, **kwargs).arguments))
                return core.CheckResult(args[0] if args else "x", True, "recorded")

            def record_value(*args, **kwargs):
                calls.append(("check_value", inspect.signature(core.check_value).bind(*args, **kwargs).arguments))
                return core.CheckResult(args[0] if args else "x", True, "recorded")

            saved = {k: getattr(module, k, None) for k in ("run_check", "check_value")}
            module.run_check, module.check_value = record_run, record_value
            try:
                n_args = len([p for p in inspect.signature(fn).parameters.values()
                              if p.default is inspect.Parameter.empty])
                fn(*([lambda *a, **k: None] + [0] * (n_args - 1)), raise_on_fail=False)
            except Exception:  # noqa: BLE001 - a check that is not built on the two (e.g. statistics)
                pass
            finally:
                for k, v in saved.items():
                    if v is not None:
                        setattr(module, k, v)
            for kind, call in calls:
                found.append((f"{module_name}.{name}", kind, call))
    return found


RECORDED = _recorded()


def _variant_cases():
    out = []
    for where, kind, call in RECORDED:
        if kind != "run_check":
            continue
        for i, d in enumerate(call.get("diagnoses", ())):
            if isinstance(d, core.Variant):
                out.append(pytest.param(call, d, id=f"{where}[{i}]"))
    return out


def _value_cases():
    out = []
    for where, kind, call in RECORDED:
        if kind == "check_value":
            for i, (wrong, message) in enumerate(call.get("wrong_values", ())):
                out.append(pytest.param(call, wrong, message, id=f"{where}[{i}]"))
    return out


def test_the_recorder_sees_the_checks_of_01_to_11():
    names = {where.split(".")[1] for where, _, _ in RECORDED}
    for expected in ["check_info_nce", "check_clip_loss", "check_gradient_weights", "check_make_caption",
                     "check_clip_logits", "check_zero_shot_classifier", "check_modality_gap", "check_mlm_loss",
                     "check_pseudo_log_likelihood", "check_gated_fusion", "check_question_prior",
                     "check_tensor_fusion", "check_decoder_mask", "check_caption_loss", "check_beam_step",
                     "check_brevity_penalty", "check_local_loss_labels", "check_grad_cache_step",
                     "check_siglip_ring", "check_hf_clip_logits", "check_sentence_embedding", "check_eos_pool"]:
        assert expected in names, expected
    assert len(_variant_cases()) > 100


@pytest.fixture(autouse=True)
def _fresh_tiers():
    core._FAILURES.clear()
    core._LAST_FAILURE["result"] = None
    yield
    core._FAILURES.clear()
    core._LAST_FAILURE["result"] = None


@pytest.mark.parametrize("call, variant", _variant_cases())
def test_every_named_mistake_is_failed_and_named(call, variant):
    arguments = dict(call)
    arguments["student"] = variant.wrong
    arguments["raise_on_fail"] = False
    arguments["forbid"] = ()  # a Variant may call the library; what is tested here is the diagnosis
    result = core.run_check(**arguments)
    assert not result.passed, f"the mistake {variant.message!r} passes the check"
    named = variant.message in result.message
    assert named, f"made {variant.message!r}, told {result.message!r}"


@pytest.mark.parametrize("call, wrong, message", _value_cases())
def test_every_named_wrong_value_is_failed_and_named(call, wrong, message):
    arguments = dict(call)
    arguments["value"] = wrong
    arguments["raise_on_fail"] = False
    result = core.check_value(**arguments)
    assert not result.passed and message in result.message, result.message


# -- the two answers issue 23 found passing ------------------------------------------------------

def test_mlm_loss_with_a_fresh_zero_fails_and_is_named():
    from mmcourse.classroom.checks import check_mlm_loss

    def fresh_zero(logits, labels):
        if (labels != -100).sum() == 0:
            return torch.tensor(0.0)  # not connected to the logits: backward() cannot reach the model
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)

    result = check_mlm_loss(fresh_zero, raise_on_fail=False)
    assert not result.passed and "NEW zero tensor" in result.message, result.message


def test_question_prior_with_most_common_fails_and_is_named():
    from mmcourse.classroom.checks import check_question_prior

    def prior(train_q, train_a, test_q):
        by_q = {}
        for q, a in zip(train_q, train_a.tolist()):
            by_q.setdefault(q, Counter())[a] += 1
        overall = Counter(train_a.tolist())
        return torch.tensor([by_q.get(q, overall).most_common(1)[0][0] for q in test_q])

    result = check_question_prior(prior, raise_on_fail=False)
    assert not result.passed and "ties are broken by the order the answers were seen" in result.message


def test_info_nce_mistakes_of_the_issue_are_named_rightly():
    from mmcourse.classroom.checks import check_info_nce_naive

    def sign_flipped(z, z_pos, temperature=0.07):
        z, z_pos = torch.nn.functional.normalize(z, dim=-1), torch.nn.functional.normalize(z_pos, dim=-1)
        logits = z @ z_pos.T / temperature
        return (logits.diagonal() - torch.logsumexp(logits, dim=1)).mean()

    def no_positive(z, z_pos, temperature=0.07):
        z, z_pos = torch.nn.functional.normalize(z, dim=-1), torch.nn.functional.normalize(z_pos, dim=-1)
        e = torch.exp(z @ z_pos.T / temperature)
        return (-(e.diagonal().log()) + (e.sum(1) - e.diagonal()).log()).mean()

    told = check_info_nce_naive(sign_flipped, raise_on_fail=False).message
    assert "sign is flipped" in told and "temperature multiplied" not in told, told
    told = check_info_nce_naive(no_positive, raise_on_fail=False).message
    assert "denominator leaves out the positive" in told, told
