"""Checks for assignment 04 (training CLIP).

* `check_clip_logits`: the two logit matrices from raw head outputs and the stored logit scale;
* `check_training_step`: one training step (forward, symmetric loss, zero_grad/backward/step,
  schedule, clamp), run twice on a tiny model and compared with the reference step;
* `check_loss_floor`: the false-negative floor of a batch, mean over pairs of ln n_{y_i}.

Each names the usual mistakes: no normalisation, the log scale used as a multiplier, a missing
transpose, gradients that accumulate, a schedule that never moves, a missing clamp, ...
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import torch
import torch.nn.functional as F

from mmcourse.classroom.checks.core import Case, CheckResult, Property, Variant, run_check

__all__ = ["check_clip_logits", "check_training_step", "check_loss_floor"]

MAX_LOGIT_SCALE = math.log(100)


# ----------------------------------------------------------------------------- exercise 1: the logits

def reference_clip_logits(image_features: torch.Tensor, text_features: torch.Tensor,
                          logit_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits_per_image (B_img, B_txt), logits_per_text (B_txt, B_img)) from raw head outputs
    and the stored (log) logit scale."""
    image = F.normalize(image_features, dim=-1)  # (B_img, D)
    text = F.normalize(text_features, dim=-1)  # (B_txt, D)
    logits_per_image = logit_scale.exp() * image @ text.T  # (B_img, B_txt)
    return logits_per_image, logits_per_image.T


def _logits_with(normalize=lambda x: F.normalize(x, dim=-1), scale=lambda s: s.exp(), transpose=True, swap=False):
    def wrong(i, t, s):
        logits = scale(s) * normalize(i) @ normalize(t).T
        pair = (logits, logits.T if transpose else logits)
        return pair[::-1] if swap else pair
    return wrong


def _logit_cases() -> list[Case]:
    g = torch.Generator().manual_seed(40)
    out = []
    for b_img, b_txt, d, scale in [(3, 3, 4, 1 / 0.07), (4, 6, 5, 10.0), (5, 2, 3, 100.0)]:
        image = 3 * torch.randn(b_img, d, generator=g, dtype=torch.float64)  # deliberately not unit length
        text = 0.5 * torch.randn(b_txt, d, generator=g, dtype=torch.float64)
        out.append(Case((image, text, torch.tensor(math.log(scale), dtype=torch.float64)), {},
                        f"{b_img} images, {b_txt} texts, D={d}, logit_scale=ln({scale:.3g})"))
    return out


def check_clip_logits(clip_logits: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 04.1: `clip_logits(image_features, text_features, logit_scale) -> (logits_per_image,
    logits_per_text)` where the features are raw (not normalised) head outputs and `logit_scale`
    is the model's stored parameter, log(1/τ)."""
    diagnoses = [
        Variant(_logits_with(normalize=lambda x: x), "the features were not L2-normalised: the logits must be scaled "
                "cosine similarities", ('the logits are scaled COSINE similarities', 'every row of the features must have length 1 before the product')),
        Variant(_logits_with(normalize=lambda x: F.normalize(x, dim=0)), "normalised along the wrong dimension: "
                "each embedding (a row) must have length 1, not each column", ('each embedding is a ROW of the (B, D) features', 'which axis holds one embedding?')),
        Variant(_logits_with(scale=lambda s: s), "the stored logit_scale is a logarithm: you multiplied by log(1/τ) "
                "instead of 1/τ", ('the stored logit_scale is ln(1/τ); the multiplier is 1/τ', 'undo the logarithm')),
        Variant(_logits_with(scale=lambda s: 1 / s.exp()), "you divided by the logit scale: it is 1/τ, so it multiplies",
                ('1/τ multiplies the similarities', 'dividing by 1/τ is multiplying by τ')),
        Variant(_logits_with(scale=lambda s: 1.0), "the logit scale is missing: these are plain cosine similarities",
                ('the stored logit_scale is ln(1/τ); the multiplier is 1/τ', 'undo the logarithm')),
        Variant(_logits_with(transpose=False), "logits_per_text must be the transpose of logits_per_image "
                "(one row per text), you returned the same matrix twice", ('logits_per_text has one ROW per text', 'the same scores, rows and columns exchanged')),
        Variant(_logits_with(swap=True), "the two matrices are swapped: logits_per_image has one row per image",
                ('logits_per_image has one row per image and comes first', 'check the order of the pair you return')),
    ]
    return run_check("clip_logits", clip_logits, reference_clip_logits, _logit_cases(), diagnoses,
                     success="both logit matrices match on {n} cases, with more texts than images and vice versa",
                     raise_on_fail=raise_on_fail)


# ----------------------------------------------------------------------------- exercise 2: one training step

def reference_training_step(model, batch, optimizer, scheduler, max_logit_scale: float = MAX_LOGIT_SCALE) -> float:
    """The step of `mmcourse.training.loop.fit`, built from the same library pieces: forward and
    symmetric CLIP loss (`clip_loss_fn`), zero_grad, backward, AdamW step, schedule step, clamp of
    the stored logit scale (`clamp_logit_scale`). Returns the loss."""
    from mmcourse.training.loop import clamp_logit_scale, clip_loss_fn

    loss = clip_loss_fn(model, batch)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    clamp_logit_scale(model, max_logit_scale)
    return loss.item()


def _step_variant(one_direction=False, unnormalised=False, raw_scale=False, zero_grad=True, schedule=True,
                  clamp=True, no_update=False, schedule_first=False):
    def step(model, batch, optimizer, scheduler, max_logit_scale=MAX_LOGIT_SCALE):
        if unnormalised:
            image = model.encode_image(batch["image"])
            text = model.encode_text(batch["input_ids"], batch["attention_mask"])
        else:
            out = model(image=batch["image"], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            image, text = out.image_embeds, out.text_embeds
        scale = model.logit_scale if raw_scale else model.logit_scale.exp()
        logits = scale * image @ text.T
        labels = torch.arange(len(logits))
        loss = F.cross_entropy(logits, labels) if one_direction else \
            (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        if zero_grad:
            optimizer.zero_grad()
        loss.backward()
        if no_update:
            optimizer.zero_grad()  # e.g. zero_grad between backward and step
        if schedule_first:
            with warnings.catch_warnings():  # PyTorch warns about exactly this order
                warnings.simplefilter("ignore", UserWarning)
                scheduler.step()
        optimizer.step()
        if schedule and not schedule_first:
            scheduler.step()
        if clamp:
            with torch.no_grad():
                model.logit_scale.clamp_(0, max_logit_scale)
        return loss.item()
    return step


def simulate_steps(step_fn: Callable[..., Any], steps: int = 2, seed: int = 0) -> dict[str, Any]:
    """Run `step_fn` `steps` times on a tiny CLIP with the course's optimizer and schedule.
    Returns the losses, every parameter (flattened), the stored logit scale and the final
    learning rate. Global random state is left untouched."""
    from mmcourse.models.clip import CLIP, CLIPConfig
    from mmcourse.training.types import TrainConfig
    from mmcourse.training.loop import make_optimizer, make_scheduler

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = CLIPConfig(image_width=16, text_width=16, embed_dim=8, cnn_channels=(4, 8), text_heads=2,
                            text_layers=1, vocab_size=20, context_length=6)
        model = CLIP(config).train()
        with torch.no_grad():
            model.logit_scale.fill_(5.0)  # above ln 100 = 4.61: a step without the clamp leaves it there
        train_config = TrainConfig(lr=1e-2, warmup_steps=2)
        optimizer = make_optimizer(model, train_config)
        scheduler = make_scheduler(optimizer, warmup_steps=2, total_steps=4)  # lr: 0.5, 1, 1, 0.5 of the peak
        losses = []
        for k in range(steps):
            g = torch.Generator().manual_seed(seed * 100 + k)
            mask = (torch.arange(6) < torch.randint(2, 7, (8, 1), generator=g)).long()  # (8, 6) right-padded
            batch = {"image": torch.randn(8, 1, 8, 8, generator=g),
                     "input_ids": torch.randint(3, 20, (8, 6), generator=g) * mask, "attention_mask": mask}
            loss = step_fn(model, batch, optimizer, scheduler)
            losses.append(float(loss.item() if isinstance(loss, torch.Tensor) else loss))
        params = torch.cat([p.detach().flatten() for p in model.parameters()])
        return {"losses": torch.tensor(losses, dtype=torch.float64), "params": params.double(),
                "logit_scale": model.logit_scale.detach().double(), "lr": optimizer.param_groups[0]["lr"]}


def check_training_step(training_step: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 04.2: `training_step(model, batch, optimizer, scheduler, max_logit_scale=ln 100) -> loss`.

    The student's step runs twice on a tiny CLIP (logit scale starting above the clamp) and its
    losses, parameters, logit scale and learning rate are compared with the reference step's."""
    if not callable(training_step):
        return run_check("training_step", training_step, reference_training_step, [], raise_on_fail=raise_on_fail)
    student = lambda seed: simulate_steps(training_step, seed=seed)  # noqa: E731
    reference = lambda seed: simulate_steps(reference_training_step, seed=seed)  # noqa: E731
    sim = lambda **wrong: (lambda seed: simulate_steps(_step_variant(**wrong), seed=seed))  # noqa: E731
    diagnoses = [
        Variant(sim(no_update=True), "your step never changed the parameters: when the optimizer steps, the gradients "
                "it needs are gone or not computed yet",
                "think about the order: clear old gradients, compute new ones, then use them"),
        Variant(sim(zero_grad=False), "gradients accumulate from one step to the next: backward ADDS to .grad",
                "old gradients must be cleared once in every step, before the new ones are computed"),
        Variant(sim(schedule=False), "the learning rate never changes: the schedule is never advanced",
                "a scheduler only moves the learning rate when you tell it a step has been taken"),
        Variant(sim(schedule_first=True), "the schedule is advanced before the optimizer step, so every step uses the "
                "NEXT step's learning rate (the first warm-up step is skipped)",
                "PyTorch expects the optimizer to step first, then the scheduler"),
        Variant(sim(clamp=False), "the logit scale is above ln 100 after your step. Two mistakes give exactly this: the "
                "clamp is missing (or clamps a copy such as logit_scale.exp()), or it clamps at 100 — the stored value "
                "is a logarithm, so its bound is ln 100 ≈ 4.61, which `max_logit_scale` already holds",
                "clamp the stored parameter itself, in place and without recording gradients, using the bound you "
                "are given"),
        Variant(sim(one_direction=True), "your loss is not symmetric: it is the image→text direction only",
                "CLIP's loss also asks each caption to pick its image: the columns of the logit matrix count too"),
        Variant(sim(unnormalised=True), "the embeddings were not normalised: the logits must be scaled cosine "
                "similarities", "the model can return unit-length embeddings for you: look at what its forward gives"),
        Variant(sim(raw_scale=True), "the stored logit_scale is a logarithm: you multiplied by log(1/τ)",
                "the multiplier is 1/τ; how do you get it back from log(1/τ)?"),
        Property(lambda fn: fn(0)["logit_scale"].item() > MAX_LOGIT_SCALE + 1e-6,
                 "the logit scale is above ln 100 after your step: the clamp is missing, clamps a copy, or uses 100 "
                 "as the bound of a value stored as a logarithm",
                 "clamp the stored parameter itself, in place, to [0, max_logit_scale]"),
    ]
    cases = [Case((0,), {}, "2 steps on a tiny CLIP"), Case((1,), {}, "2 steps, another seed")]
    return run_check("training_step", student, reference, cases, diagnoses, rtol=1e-4, atol=1e-6, timeout=60,
                     fallback_hint=("go through the step in order: forward, symmetric loss, clear gradients, backward, "
                                    "optimizer, schedule, clamp — each exactly once",
                                    "print the loss and optimizer.param_groups[0]['lr'] after each of two calls and "
                                    "compare them with the lesson's training loop"),
                     success="same losses, parameters, logit scale and learning rate as the reference after "
                             "2 steps, on {n} runs", raise_on_fail=raise_on_fail)


# ----------------------------------------------------------------------------- exercise 3: the loss floor

def reference_loss_floor(labels: torch.Tensor) -> torch.Tensor:
    """Mean over the pairs of a batch of ln n_{y_i}, n_c = number of items of class c in the batch."""
    counts = torch.bincount(labels)  # (C,)
    return counts[labels].double().log().mean()


def check_loss_floor(loss_floor: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 04.3: `loss_floor(labels) -> scalar`, the false-negative floor of the CLIP loss."""
    def cases():
        g = torch.Generator().manual_seed(43)
        return [Case((torch.tensor([0, 0, 1, 1]),), {}, "labels [0, 0, 1, 1]"),
                Case((torch.tensor([0, 0, 0, 1]),), {}, "labels [0, 0, 0, 1]"),
                Case((torch.tensor([3, 3, 7, 3, 9, 9]),), {}, "labels [3, 3, 7, 3, 9, 9]"),
                Case((torch.randint(0, 10, (256,), generator=g),), {}, "256 random digits")]

    def per_class_mean(y):
        counts = torch.bincount(y)
        return counts[counts > 0].double().log().mean()

    diagnoses = [
        Variant(per_class_mean, "you averaged ln n_c over the classes; average over the pairs instead: a class with "
                "more images has more rows in the loss", "each pair i contributes ln of the size of ITS class"),
        Variant(lambda y: torch.bincount(y)[y].double().log().sum(), "you summed over the pairs: the CLIP loss is a "
                "MEAN over the batch, so its floor is too", "the loss averages over the B rows"),
        Variant(lambda y: torch.tensor(math.log(len(y) / len(torch.unique(y))), dtype=torch.float64),
                "you used the average class size ln(B / C); the floor averages ln n_{y_i} over the pairs",
                "with uneven classes the mean of the logs is not the log of the mean size"),
        Variant(lambda y: torch.bincount(y)[y].double().log2().mean(), "that is in bits: the loss uses the natural log "
                "(nats)", "cross-entropy in PyTorch uses the natural logarithm"),
        Variant(lambda y: (torch.bincount(y)[y].double() - 1).clamp(min=1).log().mean(),
                "you counted only the other same-class captions: the true caption is one of the n_c equal choices",
                "n_c includes the pair itself"),
        Variant(lambda y: torch.tensor(math.log(len(y)), dtype=torch.float64), "ln B is the loss at chance level (all B "
                "captions equally likely), not the floor", "only the n_{y_i} captions of the same class are tied"),
    ]
    return run_check("loss_floor", loss_floor, reference_loss_floor, cases(), diagnoses,
                     success="matches the floor on {n} batches, including uneven classes",
                     raise_on_fail=raise_on_fail)
