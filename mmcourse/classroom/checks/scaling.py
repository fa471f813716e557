"""Checks for assignment 10 (compute cost).

* `check_local_loss_labels`: the labels of rank r's rows in open_clip's local loss;
* `check_grad_cache_step`: one step of gradient caching on a small CLIP with dropout, compared
  parameter by parameter (logit_scale included) with `mmcourse.training.gradcache.grad_cache_step`;
* `check_logit_memory`: the bytes of one process's logits with and without the local loss.

Each names the usual mistakes: the offset of the labels, forgetting `logit_scale`'s gradient,
backpropagating each chunk's own loss instead of the cached gradients, not restoring the random
state before the second pass, counting the shared scale once per chunk, a transposed view
counted as memory.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from mmcourse.classroom.checks.core import Case, CheckResult, Property, Variant, finish, run_check

__all__ = ["check_local_loss_labels", "check_grad_cache_step", "check_logit_memory", "reference_local_loss_labels",
           "reference_grad_cache_step", "grad_cache_outcome", "LOGIT_MEMORY_SETTING"]


# ----------------------------------------------------------------------------- exercise 1: labels

def reference_local_loss_labels(n_local: int, rank: int) -> torch.Tensor:
    """Row i of rank r is global pair n_local * r + i: (n_local,) long."""
    return torch.arange(n_local) + n_local * rank


def check_local_loss_labels(local_loss_labels: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 10.1: `local_loss_labels(n_local, rank) -> (n_local,) long tensor`."""
    cases = [Case((4, 0), {}, "n_local=4, rank 0"), Case((4, 1), {}, "n_local=4, rank 1"),
             Case((3, 2), {}, "n_local=3, rank 2"), Case((5, 7), {}, "n_local=5, rank 7")]
    diagnoses = [
        Variant(lambda n, r: torch.arange(n), "every rank got labels 0..n-1: rank r's rows are pairs n·r … n·r + n - 1 "
                "of the gathered batch, so its labels must be shifted", "add the offset of the rank's block of rows"),
        Variant(lambda n, r: torch.arange(n) + r, "the offset is the rank itself; it must be the number of rows of "
                "all ranks before this one", "each rank holds n_local rows"),
        Variant(lambda n, r: torch.arange(n) + n * (r + 1), "off by one rank: ranks count from 0, and rank 0's "
                "labels start at 0", "rank r is preceded by r ranks"),
        Variant(lambda n, r: torch.arange(n) * (r + 1), "the rank multiplies the labels instead of shifting them",
                "shift arange(n_local) by a constant"),
        Property(lambda fn: fn(3, 1).dtype != torch.long, "the labels are not integers (torch.long): "
                 "F.cross_entropy takes class indices", "torch.arange of ints gives torch.long"),
    ]
    return run_check("local_loss_labels", local_loss_labels, reference_local_loss_labels, cases, diagnoses,
                     success="labels right for {n} (n_local, rank) pairs, rank 0 included",
                     raise_on_fail=raise_on_fail)


# ----------------------------------------------------------------------------- exercise 2: gradient caching

def _clip_out(model, chunk):
    return model(image=chunk["image"], input_ids=chunk["input_ids"], attention_mask=chunk["attention_mask"])


def _chunks(batch, size):
    return [{k: v[i:i + size] for k, v in batch.items()} for i in range(0, len(batch["image"]), size)]


def _grad_cache(model, batch, chunk_size, scale_grad="once", restore_rng=True, cached=True):
    """Gradient caching and its usual mistakes (for the diagnoses)."""
    from mmcourse.objectives.losses import clip_loss

    chunks = _chunks(batch, chunk_size)
    if not cached:  # each chunk's own loss, backpropagated: naive accumulation
        total = 0.0
        for chunk in chunks:
            out = _clip_out(model, chunk)
            loss = clip_loss(out["image_embeds"], out["text_embeds"], out["logit_scale"]) / len(chunks)
            loss.backward()
            total = total + loss.detach()
        return total
    states, images, texts = [], [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(torch.get_rng_state())
            out = _clip_out(model, chunk)
            images.append(out["image_embeds"])
            texts.append(out["text_embeds"])
    image_embeds = torch.cat(images).requires_grad_()
    text_embeds = torch.cat(texts).requires_grad_()
    scale = out["logit_scale"].detach().requires_grad_()
    loss = clip_loss(image_embeds, text_embeds, scale)
    loss.backward()
    start = 0
    for i, chunk in enumerate(chunks):
        if restore_rng:
            torch.set_rng_state(states[i])
        out = _clip_out(model, chunk)
        rows = slice(start, start + len(chunk["image"]))
        start += len(chunk["image"])
        tensors = [out["image_embeds"], out["text_embeds"]]
        grads = [image_embeds.grad[rows], text_embeds.grad[rows]]
        if scale_grad == "every" or (scale_grad == "once" and i == 0):
            tensors.append(out["logit_scale"])
            grads.append(scale.grad)
        torch.autograd.backward(tensors, grads)
    return loss.detach()


def reference_grad_cache_step(model, batch, chunk_size):
    """`mmcourse.training.gradcache.grad_cache_step` (the library's version)."""
    from mmcourse.training.gradcache import grad_cache_step

    return grad_cache_step(model, batch, chunk_size)


def _setting(seed: int):
    from mmcourse.models.clip import CLIP, CLIPConfig

    torch.manual_seed(seed)
    model = CLIP(CLIPConfig(image_encoder="vit", image_width=16, vit_layers=1, vit_heads=2, text_width=16,
                            text_heads=2, text_layers=1, embed_dim=8, vocab_size=16, context_length=6,
                            dropout=0.2)).double().train()
    g = torch.Generator().manual_seed(100 + seed)
    ids = torch.randint(3, 16, (12, 6), generator=g)
    mask = (torch.arange(6) < torch.randint(2, 7, (12, 1), generator=g)).long()
    batch = {"image": torch.randn(12, 1, 8, 8, generator=g, dtype=torch.float64), "input_ids": ids * mask,
             "attention_mask": mask}
    return model, batch


def grad_cache_outcome(step: Callable[..., Any]) -> Callable[[int, int], tuple]:
    """Wrap `step(model, batch, chunk_size)` into `outcome(seed, chunk_size) -> (loss, gradients of every
    parameter, logit_scale's gradient)` on a small CLIP with dropout 0.2 (float64): what the check compares."""
    def outcome(seed: int, chunk_size: int) -> tuple:
        model, batch = _setting(seed)
        model.zero_grad()
        torch.manual_seed(1000 + seed)  # the dropout masks
        loss = step(model, batch, chunk_size)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
        flat = torch.cat([g.reshape(-1) for g in grads])
        scale_grad = model.logit_scale.grad if model.logit_scale.grad is not None else torch.zeros(())
        return torch.as_tensor(loss, dtype=torch.float64).reshape(()), flat, scale_grad.reshape(())
    return outcome


def check_grad_cache_step(grad_cache_step: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 10.2: `grad_cache_step(model, batch, chunk_size) -> loss`, accumulating into the
    parameters' `.grad` the gradient of the full batch's CLIP loss with each chunk's dropout masks."""
    if not callable(grad_cache_step):
        return run_check("grad_cache_step", grad_cache_step, reference_grad_cache_step, [], raise_on_fail=raise_on_fail)
    cases = [Case((0, 4), {}, "12 pairs in chunks of 4, dropout 0.2"), Case((1, 5), {}, "12 pairs in chunks of 5, 5, 2")]

    def wrong(**kw):
        return grad_cache_outcome(lambda m, b, c: _grad_cache(m, b, c, **kw))

    diagnoses = [
        Variant(wrong(scale_grad="never"), "logit_scale got no gradient: the loss depends on it too, and the second "
                "pass must backpropagate its cached gradient", "the scale is an output of the "
                "model like the embeddings"),
        Variant(wrong(scale_grad="every"), "logit_scale's gradient is counted once per chunk: it is shared by all "
                "chunks, so its cached gradient must be backpropagated once", "add it for the first chunk only"),
        Variant(wrong(cached=False), "each chunk's own loss was backpropagated: that is naive accumulation, whose "
                "negatives are only the chunk's; the second pass must backpropagate the cached gradients of the "
                "full-batch loss", "the second pass backpropagates gradients you already have, not a loss"),
        Variant(wrong(restore_rng=False), "the random state was not restored before the second pass: dropout drew "
                "other masks than in the first, so the cached gradients belong to other embeddings",
                "dropout draws from torch's generator: both passes over a chunk must start from the same state"),
    ]
    return run_check("grad_cache_step", grad_cache_outcome(grad_cache_step), grad_cache_outcome(reference_grad_cache_step),
                     cases, diagnoses, rtol=1e-7, atol=1e-10, timeout=30,
                     success="loss and the gradient of every parameter (logit_scale included) equal the library's "
                             "on {n} batches with dropout")


# ----------------------------------------------------------------------------- exercise 3: memory

# 32,768 pairs on 128 processes, float32
LOGIT_MEMORY_SETTING = {"global_batch": 32768, "world_size": 128, "bytes_per_float": 4}


def _judge(value: Any, expected: float, wrong_values: list[tuple[float, str]], hint: str) -> tuple[str, str] | None:
    """None if `value` is right, else (message, hint)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not (
            isinstance(value, torch.Tensor) and value.numel() == 1):
        return f"expected a number of bytes, got {type(value).__name__}", "give an int or a float"
    value = float(value)
    if abs(value - expected) <= max(0.5, 1e-9 * expected):
        return None
    for wrong, message in wrong_values:
        if abs(value - wrong) <= max(0.5, 1e-9 * wrong):
            return message, hint
    return f"{value:.4g} bytes is not it (not a known mistake either)", hint


def check_logit_memory(global_loss_bytes: Any, local_loss_bytes: Any, raise_on_fail: bool = True) -> CheckResult:
    """Exercise 10.3: bytes of one process's logits (`logits_per_image` and `logits_per_text`) for
    `LOGIT_MEMORY_SETTING`, without and with open_clip's local loss."""
    n_all, world, b = (LOGIT_MEMORY_SETTING[k] for k in ("global_batch", "world_size", "bytes_per_float"))
    n = n_all // world
    problems = [
        ("global_loss_bytes", _judge(global_loss_bytes, b * n_all * n_all, [
            (2 * b * n_all * n_all, "logits_per_text is logits_per_image.T, a view of the same memory: count one "
                                    "N×N matrix"),
            (b * n * n_all, "without the local loss each process computes all N rows, not only its own"),
            (8 * n_all * n_all, "float32 takes 4 bytes, not 8")], "count the (N, N) matrices that really exist")),
        ("local_loss_bytes", _judge(local_loss_bytes, 2 * b * n * n_all, [
            (b * n * n_all, "with the local loss the two directions are different matrices: my images against all "
                            "texts, and my texts against all images; count both"),
            (2 * b * n * n, "the local loss keeps all N columns (every negative), only the rows are local"),
            (b * n * n, "the local loss keeps all N columns, and has two matrices"),
            (16 * n * n_all, "float32 takes 4 bytes, not 8")], "n = N / world_size rows, against how many columns?")),
    ]
    for name, problem in problems:
        if problem is not None:
            return finish(CheckResult("logit_memory", False, f"{name}: {problem[0]}", problem[1]), raise_on_fail)
    return finish(CheckResult("logit_memory", True, f"{b * n_all ** 2 / 2**30:.0f} GiB per process for the global loss, "
                              f"{2 * b * n * n_all / 2**20:.0f} MiB with the local loss ({n_all // (2 * n)}x less)"),
                  raise_on_fail)
