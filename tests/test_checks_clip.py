"""Tests for mmcourse.classroom.checks.clip: the right answers pass, typical wrong answers are named."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import fails_with
from mmcourse.classroom.checks.clip import (check_clip_logits, check_loss_floor, check_training_step,
                                            reference_clip_logits, reference_loss_floor, reference_training_step,
                                            simulate_steps)


# -- exercise 1: logits --------------------------------------------------------------------------

def good_logits(image_features, text_features, logit_scale):
    image = image_features / image_features.norm(dim=1, keepdim=True)
    text = text_features / text_features.norm(dim=1, keepdim=True)
    logits_per_image = logit_scale.exp() * image @ text.T
    return logits_per_image, logits_per_image.T


def test_clip_logits_right_answers_pass(capsys):
    assert check_clip_logits(good_logits).passed
    assert check_clip_logits(reference_clip_logits).passed
    assert "both logit matrices match" in capsys.readouterr().out


def test_reference_logits_equal_the_model_forward():
    from mmcourse.models import CLIP, CLIPConfig
    torch.manual_seed(0)
    model = CLIP(CLIPConfig(image_width=16, text_width=16, embed_dim=8, vocab_size=20, context_length=6))
    image, ids = torch.randn(3, 1, 8, 8), torch.randint(1, 20, (3, 6))
    out = model(image, ids)
    mine = reference_clip_logits(model.encode_image(image), model.encode_text(ids), model.logit_scale)
    torch.testing.assert_close(mine[0], out.logits_per_image)
    torch.testing.assert_close(mine[1], out.logits_per_text)


@pytest.mark.parametrize("wrong, fragment", [
    (lambda i, t, s: (s.exp() * i @ t.T, (s.exp() * i @ t.T).T), "not L2-normalised"),
    (lambda i, t, s: (s * F.normalize(i, dim=-1) @ F.normalize(t, dim=-1).T,
                      (s * F.normalize(i, dim=-1) @ F.normalize(t, dim=-1).T).T), "is a logarithm"),
    (lambda i, t, s: (F.normalize(i, dim=-1) @ F.normalize(t, dim=-1).T / s.exp(),
                      (F.normalize(i, dim=-1) @ F.normalize(t, dim=-1).T / s.exp()).T), "divided by the logit scale"),
    (lambda i, t, s: (s.exp() * F.normalize(i, dim=-1) @ F.normalize(t, dim=-1).T,) * 2, "transpose"),
    (lambda i, t, s: (s.exp() * F.normalize(i, dim=0) @ F.normalize(t, dim=0).T,
                      (s.exp() * F.normalize(i, dim=0) @ F.normalize(t, dim=0).T).T), "wrong dimension"),
    (lambda i, t, s: reference_clip_logits(i, t, s)[::-1], "swapped"),
])
def test_clip_logits_wrong_answers_are_named(wrong, fragment):
    fails_with(check_clip_logits, wrong, fragment)


def test_untouched_blanks_raise_the_students_not_implemented_error():
    def blank(*args, **kwargs):
        raise NotImplementedError()
    for check in (check_clip_logits, check_training_step, check_loss_floor):
        with pytest.raises(NotImplementedError):
            check(blank)
        assert not check(blank, raise_on_fail=False).passed


# -- exercise 2: the training step ---------------------------------------------------------------

def good_step(model, batch, optimizer, scheduler, max_logit_scale=math.log(100)):
    out = model(image=batch["image"], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    labels = torch.arange(len(out.logits_per_image))
    loss = (F.cross_entropy(out.logits_per_image, labels) + F.cross_entropy(out.logits_per_text, labels)) / 2
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, max_logit_scale)
    return loss  # a tensor is fine too


def test_training_step_right_answers_pass():
    assert check_training_step(good_step).passed
    assert check_training_step(reference_training_step).passed


def test_reference_step_equals_fit():
    # The reference is the step of mmcourse.training.loop.fit: same parameters after two steps.
    from torch.utils.data import DataLoader
    from mmcourse.models import CLIP, CLIPConfig
    from mmcourse.training import Callback, TrainConfig, fit

    class Stop(Callback):
        def on_step_end(self, state):
            state.stop = state.global_step >= 2

    batches = []
    for k in range(2):
        g = torch.Generator().manual_seed(k)
        mask = (torch.arange(6) < torch.randint(2, 7, (8, 1), generator=g)).long()
        batches.append({"image": torch.randn(8, 1, 8, 8, generator=g),
                        "input_ids": torch.randint(3, 20, (8, 6), generator=g) * mask, "attention_mask": mask})
    cfg = CLIPConfig(image_width=16, text_width=16, embed_dim=8, cnn_channels=(4, 8), text_heads=2, text_layers=1,
                     vocab_size=20, context_length=6)
    torch.manual_seed(0)
    a = CLIP(cfg)
    b = CLIP(cfg)
    b.load_state_dict(a.state_dict())
    tc = TrainConfig(lr=1e-2, warmup_steps=2, epochs=2, progress=False, device="cpu")
    fit(a, DataLoader(batches, batch_size=None), tc, callbacks=[Stop()])
    from mmcourse.training import make_optimizer, make_scheduler
    opt = make_optimizer(b, tc)
    sched = make_scheduler(opt, 2, 4)
    b.train()
    for batch in batches:
        reference_training_step(b, batch, opt, sched)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def _step(**wrong):
    def step(model, batch, optimizer, scheduler, max_logit_scale=math.log(100)):
        if wrong.get("unnormalised"):
            image, text = model.encode_image(batch["image"]), model.encode_text(batch["input_ids"], batch["attention_mask"])
            logits = model.logit_scale.exp() * image @ text.T
        else:
            logits = model(batch["image"], batch["input_ids"], batch["attention_mask"]).logits_per_image
        labels = torch.arange(len(logits))
        loss = F.cross_entropy(logits, labels)
        if not wrong.get("one_direction"):
            loss = (loss + F.cross_entropy(logits.T, labels)) / 2
        if wrong.get("schedule_first"):
            optimizer.zero_grad()
            loss.backward()
            scheduler.step()
            optimizer.step()
        elif wrong.get("step_first"):
            optimizer.zero_grad()
            optimizer.step()
            loss.backward()
        else:
            if not wrong.get("no_zero_grad"):
                optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if not wrong.get("no_schedule") and not wrong.get("schedule_first"):
            scheduler.step()
        if wrong.get("clamp_exp"):
            model.logit_scale.exp().clamp(1, 100)  # clamps a copy: no effect
        elif wrong.get("clamp_100"):
            with torch.no_grad():
                model.logit_scale.clamp_(0, 100)  # the bound of exp(logit_scale), used on the logarithm
        elif not wrong.get("no_clamp"):
            with torch.no_grad():
                model.logit_scale.clamp_(0, max_logit_scale)
        return loss.item()
    return step


@pytest.mark.parametrize("wrong, fragment", [
    (dict(no_zero_grad=True), "gradients accumulate"),
    (dict(no_schedule=True), "schedule is never advanced"),
    (dict(schedule_first=True), "advanced before the optimizer step"),
    (dict(no_clamp=True), "clamp is missing"),
    (dict(clamp_exp=True), "clamp is missing"),
    (dict(clamp_100=True), "clamps at 100"),
    (dict(one_direction=True), "not symmetric"),
    (dict(unnormalised=True), "not normalised"),
    (dict(step_first=True), "never changed the parameters"),
])
def test_training_step_wrong_answers_are_named(wrong, fragment):
    fails_with(check_training_step, _step(**wrong), fragment)


def test_simulation_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    simulate_steps(reference_training_step)
    torch.testing.assert_close(torch.rand(3), expected)


# -- exercise 3: the loss floor ------------------------------------------------------------------

def test_loss_floor_right_answer_and_value():
    def good(labels):
        counts = torch.bincount(labels)
        return counts[labels].float().log().mean()
    assert check_loss_floor(good).passed
    # [0, 0, 0, 1]: three pairs tied among 3, one alone -> (3 ln 3 + ln 1) / 4
    assert reference_loss_floor(torch.tensor([0, 0, 0, 1])).item() == pytest.approx(3 * math.log(3) / 4)


@pytest.mark.parametrize("wrong, fragment", [
    (lambda y: torch.bincount(y)[torch.bincount(y) > 0].float().log().mean(), "averaged ln n_c over the classes"),
    (lambda y: torch.tensor(math.log(len(y) / len(set(y.tolist())))), "average class size"),
    (lambda y: torch.bincount(y)[y].float().log2().mean(), "natural log"),
    (lambda y: torch.tensor(math.log(len(y))), "chance level"),
    (lambda y: (torch.bincount(y)[y].float() - 1).clamp(min=1).log().mean(), "other same-class captions"),
    (lambda y: torch.bincount(y)[y].float().log().sum(), "summed over the pairs"),
])
def test_loss_floor_wrong_answers_are_named(wrong, fragment):
    fails_with(check_loss_floor, wrong, fragment)
