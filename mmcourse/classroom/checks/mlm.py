"""Checks for assignment 07 (masked language modelling).

* `check_mask_tokens`: BERT's 80/10/10 masking. A random function cannot be compared value by
  value, so the student's function runs on a large batch (about 23,000 maskable positions, plus
  padding and special tokens) and its *statistics* are checked against binomial tolerances:
  nothing special or padded chosen, labels -100 off the chosen positions and the original id on
  them, unchosen positions untouched, ~15% chosen, ~80% [MASK] / ~10% random / ~10% unchanged;
* `check_mlm_loss`: cross-entropy over the chosen positions only, 0 (not NaN) when none;
* `check_masked_accuracy`: argmax accuracy over the chosen positions only;
* `check_pseudo_log_likelihood`: a caption's score under an MLM, one token masked at a time
  (Salazar et al., 2020), on a tiny seeded model;
* `check_mask_fraction`, `check_text_only_answer`: the written questions' checkable parts.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from mmcourse.objectives.losses import masked_token_accuracy, mlm_loss
from mmcourse.classroom.checks.core import (Case, CheckResult, Property, Variant, call_safely, check_value, finish,
                                            run_check)

__all__ = ["check_mask_tokens", "check_mlm_loss", "check_masked_accuracy", "check_pseudo_log_likelihood",
           "check_mask_fraction", "check_text_only_answer"]

IGNORE = -100


# ----------------------------------------------------------------------------- exercise 1: masking

def _masking_batch():
    """(input_ids, attention_mask, special_ids, vocab_size, mask_token_id): 3,000 captions of the
    course's tokenizer, padded to 20, with special ids 0..4 ([PAD]=0, [MASK]=4)."""
    from mmcourse.data.tokenizer import default_tokenizer

    tok = default_tokenizer()
    captions = ["a small red circle in the top left.", "a blue square.", "the number 7.",
                "a picture of a small red circle to the left of a cyan cross.", "there is a large green triangle."]
    enc = tok(captions * 600)
    return enc["input_ids"], enc["attention_mask"], [0, 1, 2, 3, 4], tok.vocab_size, tok.mask_token_id


def _within(count: float, n: float, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(max(n * p * (1 - p), 1e-12)) + 1


def check_mask_tokens(mask_tokens: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 07.1: `mask_tokens(input_ids, attention_mask, special_ids, vocab_size, mask_token_id,
    mlm_probability=0.15) -> (masked_input_ids, labels)` with BERT's 80/10/10 rule."""
    name = "mask_tokens"

    def fail(message: str, hint: str) -> CheckResult:
        return finish(CheckResult(name, False, message, hint), raise_on_fail)

    if not callable(mask_tokens):
        return fail("expected a function", "pass the function itself: check_mask_tokens(mask_tokens)")
    ids, attn, special, V, mask_id = _masking_batch()
    torch.manual_seed(0)
    got = call_safely(mask_tokens, ids, attn, special, V, mask_id, 0.15)
    if isinstance(got.error, NotImplementedError) and raise_on_fail:
        raise got.error
    if not got.ok:
        return fail(got.describe_error(), "run your function on a small batch in a cell of its own")
    out = got.value
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
        return fail("expected a pair of tensors (masked_input_ids, labels)", "return masked, labels")
    masked, labels = out
    if masked.shape != ids.shape or labels.shape != ids.shape:
        return fail(f"both tensors must have the shape of input_ids {tuple(ids.shape)}, got {tuple(masked.shape)} "
                    f"and {tuple(labels.shape)}", "work on a copy of input_ids: masked = input_ids.clone()")
    if masked.is_floating_point() or labels.is_floating_point():
        return fail("the results must be integer token ids, got a float tensor",
                    "keep the dtype of input_ids (use torch.where or indexing, not arithmetic with floats)")
    if got.mutated:
        return fail("your function changed input_ids in place: the caller still needs the original ids",
                    "start from masked = input_ids.clone()")
    masked, labels = masked.long(), labels.long()
    real = attn.bool()
    can = real & ~torch.isin(ids, torch.tensor(special))  # (B, L) positions that may be chosen
    special_real = real & ~can
    chosen = labels != IGNORE
    if chosen[~can].float().mean() > 0.5 or chosen[can].float().mean() > 0.5:
        return fail("labels are not -100 off the chosen positions: every position that is not a target must be "
                    "-100, so the loss ignores it", "labels = input_ids.clone(); labels[~chosen] = -100")
    if (chosen & ~real).any():
        return fail("padding positions were chosen: only real tokens (attention_mask 1) may be masked",
                    "set the probability of padding positions to 0 (use attention_mask)")
    if (chosen & special_real).any():
        return fail("special tokens ([SOT], [EOT], ...) were chosen: they are never prediction targets",
                    "set the probability of positions whose id is in special_ids to 0 (torch.isin)")
    if chosen.any() and (masked[chosen] == mask_id).all() and ((masked != ids) & ~chosen & can).any():
        return fail("only the [MASK] positions are labelled: choose 15% first, then corrupt 80/10/10 of THOSE; "
                    "the positions that got a random token or kept theirs are targets too",
                    "labels come from the chosen positions, before any replacement")
    off = ~chosen
    if (masked[off] != ids[off]).any():
        share = (masked[off] != ids[off]).float().mean().item()
        where = " (padding and special tokens included)" if (masked[~can] != ids[~can]).any() else ""
        return fail(f"{share:.1%} of the UNCHOSEN positions{where} were changed: the 10% random replacement was "
                    f"drawn from all positions; it must come from the chosen ones that did not become [MASK]",
                    "combine the random draw with `& chosen & ~replaced`")
    n_can = int(can.sum())
    n_chosen = int(chosen.sum())
    if n_chosen == 0:
        return fail("no position was chosen: about 15% of the real, non-special tokens must be",
                    "draw torch.bernoulli of a (B, L) tensor of mlm_probability")
    if not torch.equal(labels[chosen], ids[chosen]):
        if torch.equal(labels[chosen], masked[chosen]):
            return fail("labels hold the corrupted ids ([MASK] or the random token): they must hold the ORIGINAL "
                        "token the model has to recover", "take labels from input_ids, before replacing anything")
        return fail("labels at the chosen positions are not the original token ids",
                    "labels[chosen] must equal input_ids[chosen]")
    is_mask = chosen & (masked == mask_id)
    same = chosen & (masked == ids)
    other = chosen & ~is_mask & ~same
    rate = n_chosen / n_can
    m, r, u = int(is_mask.sum()), int(other.sum()), int(same.sum())
    shares = f"(chosen {rate:.1%} of {n_can} maskable tokens; of them [MASK] {m / n_chosen:.0%}, random " \
             f"{r / n_chosen:.0%}, unchanged {u / n_chosen:.0%})"
    if not _within(n_chosen, n_can, 0.15):
        return fail(f"the masking rate is far from 15% {shares}",
                    "choose each real, non-special position with probability mlm_probability")
    if not _within(m, n_chosen, 0.8 + 0.1 / V):
        if _within(m, n_chosen, 0.72):
            return fail(f"some [MASK] positions were overwritten by random tokens {shares}: the random draw must "
                        "exclude the positions that already became [MASK]", "use `& ~replaced` in the random draw")
        return fail(f"the share of [MASK] among the chosen positions is far from 80% {shares}",
                    "replace a chosen position by [MASK] with probability mask_replace_prob = 0.8")
    if _within(r, n_chosen, 0.02):
        return fail(f"only about 2% of the chosen positions got a random token {shares}: of the 20% left after "
                    "[MASK], HALF must be random (probability 0.1 / 0.2 = 0.5), not 10%",
                    "random_replace_prob is a share of ALL chosen positions")
    if not _within(r, n_chosen, 0.1 * (1 - 2 / V)) or not _within(u, n_chosen, 0.1 + 0.1 / V):
        return fail(f"the random / unchanged shares are far from 10% / 10% {shares}",
                    "of the chosen positions not made [MASK], half get a random token, half keep theirs")
    random_ids = masked[other]
    if random_ids.min() < 0 or random_ids.max() >= V:
        return fail("random replacements must be token ids in [0, vocab_size)",
                    "torch.randint(vocab_size, shape)")
    return finish(CheckResult(name, True, f"BERT's rule {shares}; padding, special tokens and unchosen positions "
                              "untouched; labels -100 off the targets"), raise_on_fail)


# ----------------------------------------------------------------------------- exercise 2: the loss

def _loss_cases() -> list[Case]:
    g = torch.Generator().manual_seed(70)
    cases = []
    for B, L, V, p in [(2, 5, 7, 0.4), (4, 9, 13, 0.2), (3, 6, 76, 0.15)]:
        logits = torch.randn(B, L, V, generator=g, dtype=torch.float64)
        labels = torch.randint(0, V, (B, L), generator=g)
        labels[torch.rand(B, L, generator=g) > p] = IGNORE
        labels[0, 1] = 2
        cases.append(Case((logits, labels), {}, f"B={B}, L={L}, V={V}, about {p:.0%} of positions chosen"))
    cases.append(Case((torch.randn(2, 4, 5, generator=g, dtype=torch.float64), torch.full((2, 4), IGNORE)), {},
                      "a batch with no chosen position"))
    return cases


def _ce_all(logits, labels):  # every position is a target: -100 replaced by token 0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).clamp(min=0))


def _ce_over_all_positions(logits, labels):  # summed over targets, divided by every position
    per = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    return per.sum() / labels.numel()


def _ce_sum(logits, labels):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum")


def _ce_wrong_dim(logits, labels):
    logp = logits.log_softmax(dim=1)  # over positions, not over the vocabulary
    t = labels != IGNORE
    return -logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)[t].mean()


def _ce_plain(logits, labels):  # right, except NaN with no target
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def check_mlm_loss(mlm_loss_fn: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 07.2: `mlm_loss(logits (B, L, V), labels (B, L)) -> scalar`, cross-entropy over the
    positions whose label is not -100, averaged over them; 0 when there are none."""
    cases = _loss_cases()

    def nan_on_empty(fn):  # right where something is chosen, NaN where nothing is
        out = fn(torch.randn(2, 3, 5, dtype=torch.float64), torch.full((2, 3), IGNORE))
        logits, labels = cases[0].args
        right = fn(logits.clone(), labels.clone())
        return (isinstance(out, torch.Tensor) and bool(torch.isnan(out).any()) and isinstance(right, torch.Tensor)
                and torch.allclose(right.double(), mlm_loss(logits, labels), rtol=1e-5))

    diagnoses = [
        Property(nan_on_empty, "a batch with no chosen position gives NaN (0 / 0): return 0 instead, still "
                 "connected to the graph", ("count the chosen positions first; with none, there is nothing to average",
                                            "a zero that still belongs to the graph: multiply something computed "
                                            "from the logits by 0")),
        Variant(_ce_all, "the -100 positions were counted as targets (of token 0): only the chosen positions have a "
                "label", "leave -100 in the labels and let F.cross_entropy skip it (ignore_index=-100)"),
        Variant(_ce_over_all_positions, "the sum over the chosen positions was divided by ALL positions: average "
                "over the chosen ones only", "F.cross_entropy(..., ignore_index=-100) averages over the targets"),
        Variant(_ce_sum, "the loss is summed, not averaged over the chosen positions",
                "use the mean (F.cross_entropy's default reduction)"),
        Variant(_ce_wrong_dim, "the softmax runs over the positions (dim 1), not over the vocabulary",
                "flatten to (B*L, V) logits and (B*L,) labels, or use dim=-1"),
    ]
    return run_check("mlm_loss", mlm_loss_fn, mlm_loss, cases, diagnoses, rtol=1e-5, atol=1e-7,
                     success="matches cross-entropy over the chosen positions on {n} batches, 0 when none is chosen",
                     raise_on_fail=raise_on_fail)


# ----------------------------------------------------------------------------- exercise 3: accuracy

def check_masked_accuracy(masked_accuracy: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 07.3: `masked_accuracy(logits (B, L, V), labels (B, L)) -> float`, the share of
    chosen positions (label != -100) whose argmax is the label."""
    g = torch.Generator().manual_seed(71)
    cases = []
    for B, L, V in [(3, 6, 5), (8, 12, 9), (2, 20, 76)]:
        labels = torch.randint(0, V, (B, L), generator=g)
        logits = torch.randn(B, L, V, generator=g)
        logits.scatter_add_(-1, labels.unsqueeze(-1), 1.5 * torch.ones(B, L, 1))  # right about half the time
        labels[torch.rand(B, L, generator=g) > 0.3] = IGNORE
        labels[0, 0] = 1
        cases.append(Case((logits, labels), {}, f"B={B}, L={L}, V={V}"))

    def over_all(logits, labels):
        return (logits.argmax(-1) == labels).float().mean().item()

    def over_all_clamped(logits, labels):
        return (logits.argmax(-1) == labels.clamp(min=0)).float().mean().item()

    def count(logits, labels):
        t = labels != IGNORE
        return int((logits.argmax(-1)[t] == labels[t]).sum())

    def reference(logits, labels):
        return masked_token_accuracy(logits, labels)

    diagnoses = [
        Variant(over_all, "averaged over ALL positions: an unchosen position (label -100) is never right, so the "
                "accuracy is too low", "keep only the positions with labels != -100"),
        Variant(over_all_clamped, "the -100 positions were counted (as token 0): only chosen positions count",
                "select t = labels != -100 first"),
        Variant(count, "that is the NUMBER of right predictions; return the fraction",
                "divide by the number of chosen positions (or use .float().mean())"),
    ]
    return run_check("masked_accuracy", masked_accuracy, reference, cases, diagnoses, rtol=1e-5, atol=1e-6,
                     success="counts exactly the chosen positions on {n} batches",
                     raise_on_fail=raise_on_fail)


# ----------------------------------------------------------------------------- exercise 4: PLL

def reference_pseudo_log_likelihood(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                    special_ids, image: torch.Tensor | None = None) -> torch.Tensor:
    """Σ over the real, non-special positions t of log p(x_t | the caption with only t masked)
    (Salazar et al., 2020): (B,) log-likelihoods in nats."""
    mask_id = _mask_id()
    can = attention_mask.bool() & ~torch.isin(input_ids, torch.tensor(list(special_ids)))
    total = torch.zeros(input_ids.shape[0], dtype=torch.float64)
    with torch.no_grad():
        for t in range(input_ids.shape[1]):
            rows = can[:, t]
            if not rows.any():
                continue
            ids = input_ids.clone()
            ids[:, t] = mask_id
            logp = model(ids, attention_mask, image=image).logits[:, t].log_softmax(-1).double()  # (B, V)
            total += torch.where(rows, logp.gather(1, input_ids[:, t:t + 1]).squeeze(1), 0.0)
    return total


def _mask_id() -> int:
    from mmcourse.data.tokenizer import default_tokenizer

    return default_tokenizer().mask_token_id


def _pll_setup(image_conditioned: bool, seed: int):
    from mmcourse.models.mlm import MLMConfig, MaskedLanguageModel
    from mmcourse.data.tokenizer import default_tokenizer

    tok = default_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MaskedLanguageModel(MLMConfig(vocab_size=tok.vocab_size, context_length=tok.context_length, width=16,
                                              text_layers=1, fusion_layers=1, heads=2, cnn_channels=(4, 8),
                                              image_conditioned=image_conditioned)).eval()
        for p in model.parameters():  # larger weights: sharper, more distinct predictions
            p.data.mul_(8.0)
        image = torch.rand(3, 3, 32, 32) if image_conditioned else None
    enc = tok(["a small red circle in the top left.", "a blue square.", "the cross in the center is cyan."])
    L = int(enc["attention_mask"].sum(1).max()) + 2  # keep two padding columns
    return model, enc["input_ids"][:, :L], enc["attention_mask"][:, :L], [0, 1, 2, 3, 4], image


def check_pseudo_log_likelihood(pll: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 07.4: `pseudo_log_likelihood(model, input_ids, attention_mask, special_ids, image=None)
    -> (B,)`, each caption's sum of log p(token | the rest), one real non-special token masked at a time."""
    cases = [Case(_pll_setup(False, 0), {}, "a tiny text-only MLM, 3 captions with padding"),
             Case(_pll_setup(True, 1), {}, "a tiny image-conditioned MLM, 3 captions and images")]

    def variant(include_special=False, include_pad=False, all_at_once=False, prob=False, mean=False):
        def wrong(model, input_ids, attention_mask, special_ids, image=None):
            mask_id = _mask_id()
            can = torch.ones_like(attention_mask, dtype=torch.bool) if include_pad else attention_mask.bool()
            if not include_special:
                can = can & ~torch.isin(input_ids, torch.tensor(list(special_ids)))
            with torch.no_grad():
                if all_at_once:
                    ids = input_ids.masked_fill(can, mask_id)
                    logp = model(ids, attention_mask, image=image).logits.log_softmax(-1).double()
                    per = logp.gather(-1, input_ids.unsqueeze(-1)).squeeze(-1)  # (B, L)
                else:
                    per = torch.zeros(input_ids.shape, dtype=torch.float64)
                    for t in range(input_ids.shape[1]):
                        ids = input_ids.clone()
                        ids[:, t] = mask_id
                        out = model(ids, attention_mask, image=image).logits[:, t]
                        vals = out.softmax(-1) if prob else out.log_softmax(-1)
                        per[:, t] = vals.double().gather(1, input_ids[:, t:t + 1]).squeeze(1)
            per = torch.where(can, per, 0.0)
            return per.sum(1) / can.sum(1) if mean else per.sum(1)
        return wrong

    diagnoses = [
        Variant(variant(all_at_once=True), "every word was masked at once: the pseudo-log-likelihood masks ONE token "
                "at a time and reads its probability given all the others", "loop over the positions t"),
        Variant(variant(include_special=True), "[SOT] and [EOT] were scored too: only real, non-special tokens count",
                "skip positions whose id is in special_ids"),
        Variant(variant(include_pad=True, include_special=True), "padding positions were scored: only real tokens count",
                "use attention_mask"),
        Variant(variant(prob=True), "probabilities were summed: sum their LOGARITHMS (log_softmax)",
                "log p(caption) ≈ Σ_t log p(x_t | rest)"),
        Variant(variant(mean=True), "that is the mean per token; the pseudo-log-likelihood is the SUM",
                "sum over the scored positions"),
    ]
    return run_check("pseudo_log_likelihood", pll, reference_pseudo_log_likelihood, cases, diagnoses,
                     rtol=1e-4, atol=1e-4, timeout=60,
                     success="matches the one-token-at-a-time score on {n} cases, text-only and image-conditioned",
                     raise_on_fail=raise_on_fail)


# ----------------------------------------------------------------------------- written questions

def check_mask_fraction(answer: Any, raise_on_fail: bool = True) -> CheckResult:
    """Question 07.A: with mlm_probability 0.15 and the 80/10/10 rule, what fraction of all real,
    non-special tokens does the model see as [MASK]? (0.12)"""
    return check_value("mask_fraction", answer, 0.12, "0.15 × 0.8 = 0.12 of the tokens are shown as [MASK]",
                       hint="multiply the chance of being chosen by the chance of becoming [MASK]", atol=2e-3,
                       wrong_values=[(0.15, "0.15 is the share chosen as targets; only 80% of those become [MASK]"),
                                     (0.8, "0.8 is the share of the CHOSEN positions, not of all tokens"),
                                     (0.135, "0.15 × 0.9 counts the random replacements too; only 80% are [MASK]")],
                       raise_on_fail=raise_on_fail)


TEXT_ONLY_CHOICES = {
    "a": "the model is too small to learn colour words",
    "b": "nothing else in a caption depends on the colour, so the text leaves all colours equally likely",
    "c": "[MASK] hides the colour from the image tower",
    "d": "15% masking is too rare for colour words to be learned",
}


def check_text_only_answer(answer: Any, raise_on_fail: bool = True) -> CheckResult:
    """Question 07.B (multiple choice): why does the text-only model sit at chance on colour words?"""
    if isinstance(answer, str):
        answer = answer.strip().lower().strip("()")
    return check_value("text_only_answer", answer, "b",
                       "right: colours are drawn independently of every other word, so only the image can tell",
                       hint="what in the rest of the caption could tell 'red' from 'blue'?",
                       wrong_values=[("a", "the same model predicts template words almost perfectly: size is not "
                                      "the limit"),
                                     ("c", "the text-only model has no image tower at all"),
                                     ("d", "more masking would not help: the captions carry no information about "
                                      "the colour")],
                       raise_on_fail=raise_on_fail)
