"""Checks for assignment 09 (image captioning).

* `check_decoder_mask`: the self-attention mask of [prefix, caption] (causal, padding never a key);
* `check_caption_loss`: teacher-forced cross-entropy on caption tokens only (shift by one, -100
  on prefix, [SOT] and padding, a real token with id 0 counted);
* `check_greedy_decode`: greedy decoding from [SOT] until [EOT] or the length limit;
* `check_beam_step`: one beam-search step (top-k over beam x vocabulary, finished beams kept,
  length normalisation);
* `check_brevity_penalty`: BLEU's brevity penalty, against sacrebleu;
* `check_metric_choice`: which score cannot see a binding swap.

Each names the usual mistakes: no causal mask, the future visible instead of the past, loss on the
prefix outputs, an off-by-one shift, padding found by its id, decoding past [EOT], feeding only
the last token, top-k per beam, finished beams extended, length normalisation forgotten, ...
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from mmcourse.classroom.checks.core import Case, CheckResult, Variant, check_value, run_check

__all__ = ["check_decoder_mask", "check_caption_loss", "check_greedy_decode", "check_beam_step",
           "check_brevity_penalty", "check_metric_choice"]

PAD, SOT, EOT = 0, 2, 3


# ----------------------------------------------------------------------------- exercise 1: the mask

def reference_decoder_mask(attention_mask: torch.Tensor, prefix_length: int) -> torch.Tensor:
    """(B, L) 0/1 caption mask -> (B, 1, k + L, k + L) bool, True = may attend: causal over the
    whole [prefix, caption] sequence, padding never a key."""
    from mmcourse.models.clip import text_attention_mask

    full = torch.cat([attention_mask.new_ones(attention_mask.shape[0], prefix_length), attention_mask], 1)
    return text_attention_mask(full, causal=True)


def _mask_variant(causal="lower", padding=True, prefix=True):
    def wrong(attention_mask, prefix_length):
        B = attention_mask.shape[0]
        k = prefix_length if prefix else 0
        full = torch.cat([attention_mask.new_ones(B, k), attention_mask], 1)
        n = full.shape[1]
        keys = full.bool()[:, None, None, :] if padding else torch.ones(B, 1, 1, n, dtype=torch.bool)
        tri = {"lower": torch.ones(n, n, dtype=torch.bool).tril(), "none": torch.ones(n, n, dtype=torch.bool),
               "upper": torch.ones(n, n, dtype=torch.bool).triu(), "strict": torch.ones(n, n, dtype=torch.bool).tril(-1)}
        return (keys & tri[causal]).expand(B, 1, n, n)
    return wrong


def _mask_cases() -> list[Case]:
    return [Case((torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]), 2), {}, "2 captions of 5 tokens (one padded), k=2"),
            Case((torch.tensor([[1, 1, 1, 1, 0, 0, 0]]), 3), {}, "1 caption of 7 tokens, k=3")]


def check_decoder_mask(decoder_mask: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 09.1: `decoder_mask(attention_mask (B, L), prefix_length k) -> (B, 1, k + L, k + L)` bool."""
    diagnoses = [
        Variant(_mask_variant(causal="none"), "no causal mask: position t can see t+1, so the decoder learns to "
                "copy the next token instead of predicting it", "keep only keys at or before the query: a lower triangle"),
        Variant(_mask_variant(causal="upper"), "the triangle is the wrong way round: each position sees the future "
                "and not the past", "query row i may attend to key columns j <= i (torch.tril)"),
        Variant(_mask_variant(causal="strict"), "each position must also see itself (the diagonal)",
                "use tril() with the diagonal included"),
        Variant(_mask_variant(padding=False), "padding is attended to: a padded key must be False in every row",
                "combine the causal triangle with the (prefix + caption) attention mask as keys"),
        Variant(_mask_variant(prefix=False), "the mask covers the caption only: the decoder's sequence is the k "
                "prefix tokens followed by the caption", "prepend k ones (prefix positions are always real)"),
    ]
    return run_check("decoder_mask", decoder_mask, reference_decoder_mask, _mask_cases(), diagnoses,
                     success="causal over prefix and caption, padding never a key, on {n} cases",
                     raise_on_fail=raise_on_fail)


# ----------------------------------------------------------------------------- exercise 2: the loss

def reference_caption_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           prefix_length: int) -> torch.Tensor:
    """Mean cross-entropy of the caption tokens after [SOT]: logits (B, k + L, V) at position
    k + t - 1 predict input_ids[:, t] for every real t >= 1."""
    from mmcourse.models.captioner import caption_labels

    labels = caption_labels(input_ids, attention_mask, prefix_length)  # (B, k + L)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


def _loss_variant(shift="right", ignore="mask", sot=False):
    def wrong(logits, input_ids, attention_mask, prefix_length):
        k, L = prefix_length, input_ids.shape[1]
        start = {"right": k - 1, "none": k, "prefix": 0}[shift]
        picked = logits[:, start : start + L]  # (B, L, V) the positions scored against the L tokens
        if picked.shape[1] < L:  # no shift: the last token has no logits after it
            picked = torch.cat([picked, logits[:, -1:].expand(-1, L - picked.shape[1], -1)], 1)
        labels = input_ids.clone()
        if ignore == "mask":
            labels[attention_mask == 0] = -100
        elif ignore == "id0":
            labels[labels == 0] = -100
        if not sot:
            labels[:, 0] = -100
        return F.cross_entropy(picked.reshape(-1, picked.shape[-1]), labels.reshape(-1), ignore_index=-100)
    return wrong


def _loss_cases() -> list[Case]:
    g = torch.Generator().manual_seed(9)
    out = []
    for B, L, k, V in [(2, 5, 2, 7), (3, 6, 3, 9)]:
        ids = torch.randint(5, V, (B, L), generator=g)
        ids[:, 0] = SOT
        mask = torch.ones(B, L, dtype=torch.long)
        ids[0, L - 2], ids[0, L - 1], mask[0, L - 1] = EOT, PAD, 0  # the first caption is padded
        ids[-1, 1] = 0  # a real token whose id is 0 (mask 1)
        ids[-1, L - 1] = EOT
        logits = torch.randn(B, k + L, V, generator=g, dtype=torch.float64)
        out.append(Case((logits, ids, mask, k), {}, f"B={B}, L={L}, k={k}, V={V}, one caption padded, a real token 0"))
    return out


def check_caption_loss(caption_loss: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 09.2: `caption_loss(logits (B, k+L, V), input_ids (B, L), attention_mask (B, L), k) -> ()`."""
    diagnoses = [
        Variant(_loss_variant(shift="none"), "off by one: the logits at position k + t predict token t + 1, so "
                "token t is scored by the logits one position earlier", "score input_ids[:, t] with logits[:, k + t - 1]"),
        Variant(_loss_variant(shift="prefix"), "the loss reads the prefix positions' outputs: the first L logits are "
                "the prefix's, not the caption's", "the caption's predictions start at position k - 1"),
        Variant(_loss_variant(ignore="id0"), "padding was found by its id (ignore_index=0, as ClipCap does): a real "
                "token whose id is 0 is ignored too", "find padding with attention_mask == 0 and label it -100"),
        Variant(_loss_variant(ignore="none"), "padding is in the loss: the model is trained to predict [PAD] after [EOT]",
                "label padding positions -100"),
        Variant(_loss_variant(sot=True), "[SOT] is scored: it is always given as the first input, never predicted",
                "label position 0 of every caption -100"),
    ]
    return run_check("caption_loss", caption_loss, reference_caption_loss, _loss_cases(), diagnoses,
                     success="equals the reference on {n} cases, with padding and a real token of id 0",
                     rtol=1e-5, atol=1e-6, raise_on_fail=raise_on_fail)


# ----------------------------------------------------------------------------- exercise 3: greedy decoding

def toy_step(vocab: int = 8, seed: int = 3) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A next-token model for the checks: logits depend on the context row, the position and every
    token so far. Ids: [PAD]=0, [SOT]=2, [EOT]=3. Some rows end early, some run to the limit."""
    g = torch.Generator().manual_seed(seed)
    table = 2.0 * torch.randn(6, 12, 101, vocab, generator=g, dtype=torch.float64)
    table[..., PAD] = -30.0  # a model that has learned never to produce [PAD] or [SOT]
    table[..., SOT] = -30.0

    def step(context: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        h = (input_ids * torch.tensor([5 ** i for i in range(t)])).sum(1) % 101
        return table[context[:, 0] % 6, t, h]  # (N, V)
    return step


def reference_greedy_decode(step, context, sot_token_id, eot_token_id, pad_token_id, max_new_tokens):
    from mmcourse.models.decoding import greedy_search

    return greedy_search(step, context, sot_token_id=sot_token_id, eot_token_id=eot_token_id,
                         pad_token_id=pad_token_id, max_new_tokens=max_new_tokens).sequences


def _greedy_variant(stop=True, last_only=False):
    def wrong(step, context, sot_token_id, eot_token_id, pad_token_id, max_new_tokens):
        B = context.shape[0]
        seqs = torch.full((B, 1 + max_new_tokens), pad_token_id, dtype=torch.long)
        seqs[:, 0] = sot_token_id
        done = torch.zeros(B, dtype=torch.bool)
        for t in range(max_new_tokens):
            inputs = seqs[:, t : t + 1] if last_only else seqs[:, : t + 1]
            token = step(context, inputs).argmax(-1)
            seqs[:, t + 1] = torch.where(done, pad_token_id, token) if stop else token
            done |= token == eot_token_id
        return seqs
    return wrong


def _greedy_cases() -> list[Case]:
    step = toy_step()
    ids = {"sot_token_id": SOT, "eot_token_id": EOT, "pad_token_id": PAD}
    return [Case((step, torch.arange(4)[:, None]), {**ids, "max_new_tokens": 6}, "4 contexts, max_new_tokens=6"),
            Case((step, torch.arange(6)[:, None]), {**ids, "max_new_tokens": 9}, "6 contexts, max_new_tokens=9")]


def check_greedy_decode(greedy_decode: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 09.3: `greedy_decode(step, context, sot_token_id, eot_token_id, pad_token_id, max_new_tokens)
    -> (B, 1 + max_new_tokens)` long: [SOT], the tokens, [PAD] after [EOT]."""
    diagnoses = [
        Variant(_greedy_variant(stop=False), "a caption goes on after its [EOT]: once a row has produced [EOT], "
                "the rest of it must be pad_token_id", "keep a (B,) bool `done` and write pad where it is True"),
        Variant(_greedy_variant(last_only=True), "only the last token was given to the model: it must see the whole "
                "sequence so far (position t attends to 0..t)", "call step(context, seqs[:, :t + 1])"),
        Variant(lambda *args, **kwargs: reference_greedy_decode(*args, **kwargs)[:, 1:], "the [SOT] column is "
                "missing: return (B, 1 + max_new_tokens) ids that start with [SOT]", "keep the start token in the result"),
    ]
    return run_check("greedy_decode", greedy_decode, reference_greedy_decode, _greedy_cases(), diagnoses,
                     success="same captions as greedy_search on {n} cases, stopping at [EOT] or the length limit",
                     raise_on_fail=raise_on_fail)


# ----------------------------------------------------------------------------- exercise 4: one beam step

def reference_beam_step(scores, lengths, finished, log_probs, beam_width, pad_token_id=0, length_penalty=1.0):
    from mmcourse.models.decoding import beam_search_step

    return beam_search_step(scores, lengths, finished, log_probs, beam_width, pad_token_id, length_penalty)


def _beam_variant(per_beam=False, extend_finished=False, normalise=True, swap=False, old_length=False):
    def wrong(scores, lengths, finished, log_probs, beam_width, pad_token_id=0, length_penalty=1.0):
        B, K, V = log_probs.shape
        extend = log_probs.clone()
        if not extend_finished:
            extend = extend.masked_fill(finished[:, :, None], float("-inf"))
            extend[:, :, pad_token_id] = torch.where(finished, 0.0, log_probs[:, :, pad_token_id])
        total = scores[:, :, None] + extend
        grow = torch.ones_like(finished) if extend_finished else ~finished
        n = (lengths + (0 if old_length else grow.long()))[:, :, None].float().clamp(min=1)
        rank = total / n ** length_penalty if normalise else total
        if per_beam:  # each beam keeps its own best token, then the beams are sorted
            best = rank.argmax(-1)  # (B, K)
            value = rank.gather(2, best[:, :, None])[:, :, 0]
            order = value.argsort(dim=1, descending=True)[:, :beam_width]
            flat = order * V + best.gather(1, order)
        else:
            flat = rank.reshape(B, K * V).topk(beam_width, dim=-1).indices
        beam, token = (flat % K, flat // K) if swap else (flat // V, flat % V)
        new = total.reshape(B, K * V).gather(1, (beam * V + token).clamp(max=K * V - 1))
        return beam, token, new
    return wrong


def _beam_cases() -> list[Case]:
    g = torch.Generator().manual_seed(12)
    out = []
    for B, K, V, penalty in [(2, 3, 6, 1.0), (2, 4, 7, 0.7), (1, 3, 5, 0.0)]:
        scores = -torch.rand(B, K, generator=g, dtype=torch.float64) * 4
        lengths = torch.randint(1, 5, (B, K), generator=g)
        finished = torch.zeros(B, K, dtype=torch.bool)
        finished[0, 1] = True  # one finished beam per case
        log_probs = torch.log_softmax(torch.randn(B, K, V, generator=g, dtype=torch.float64) * 2, -1)
        out.append(Case((scores, lengths, finished, log_probs, K), {"pad_token_id": 0, "length_penalty": penalty},
                        f"B={B}, beams={K}, V={V}, length_penalty={penalty}, one finished beam"))
    return out


def check_beam_step(beam_step: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 09.4: `beam_step(scores, lengths, finished, log_probs, beam_width, pad_token_id, length_penalty)
    -> (beam_index, token, new_scores)`, each (B, beam_width), best first."""
    diagnoses = [
        Variant(_beam_variant(normalise=False), "length normalisation forgotten: candidates must be ranked by "
                "score / length ** length_penalty", "divide each candidate's sum by its new length ** length_penalty"),
        Variant(_beam_variant(old_length=True), "normalised by the old length: a live candidate has one token more",
                "a live beam's new length is lengths + 1; a finished beam's stays"),
        Variant(_beam_variant(per_beam=True), "the top-k was taken per beam: one beam may supply several of the best "
                "candidates, so rank all beam x vocabulary candidates together", "reshape to (B, K * V), then topk"),
        Variant(_beam_variant(extend_finished=True), "a finished beam was extended with new tokens: it must be kept "
                "as it is (extended only by padding, at no cost)", "mask a finished beam's log-probs to -inf except "
                "pad_token_id, which costs 0"),
        Variant(_beam_variant(swap=True), "beam and token indices are mixed up: in the flattened (K * V) index, "
                "beam = index // V and token = index % V", "divide and take the remainder by the vocabulary size V"),
    ]
    return run_check("beam_step", beam_step, reference_beam_step, _beam_cases(), diagnoses,
                     success="the same beams, tokens and scores as the reference on {n} cases, finished beams kept",
                     raise_on_fail=raise_on_fail)


# ----------------------------------------------------------------------------- exercise 5: brevity penalty

def reference_brevity_penalty(hyp_lengths, ref_lengths) -> float:
    """sacrebleu's brevity penalty for hypotheses and references of these lengths (in tokens)."""
    from sacrebleu.metrics import BLEU

    most = max(len(r) for r in ref_lengths)
    streams = [[" ".join(["y"] * r[j]) if j < len(r) else None for r in ref_lengths] for j in range(most)]
    return float(BLEU(tokenize="none").corpus_score([" ".join(["x"] * n) for n in hyp_lengths], streams).bp)


def _bp(choose_ref, formula="standard", per_sentence=False):
    def wrong(hyp_lengths, ref_lengths):
        rs = [choose_ref(h, refs) for h, refs in zip(hyp_lengths, ref_lengths)]
        def one(c, r):
            if formula == "inverted":
                return 1.0 if c > r else math.exp(1 - c / r)
            if formula == "always":
                return math.exp(1 - r / c)
            return 1.0 if c > r else math.exp(1 - r / c)
        if per_sentence:
            return sum(one(c, r) for c, r in zip(hyp_lengths, rs)) / len(rs)
        return one(sum(hyp_lengths), sum(rs))
    return wrong


def _closest(h, refs):
    return min(refs, key=lambda r: (abs(r - h), r))


def _bp_cases() -> list[Case]:
    return [Case(([5, 7, 3], [[9, 6], [8, 12], [4, 1, 7]]), {}, "3 captions shorter than their references"),
            Case(([9, 12], [[7, 11], [10]]), {}, "2 captions longer than their closest references"),
            Case(([4, 6, 3], [[3, 5], [10, 2], [9, 12]]), {}, "closest reference lengths with ties")]


def check_brevity_penalty(brevity_penalty: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 09.5: `brevity_penalty(hyp_lengths, ref_lengths) -> float`, equal to sacrebleu's `bp`."""
    diagnoses = [
        Variant(_bp(lambda h, refs: min(refs)), "the shortest reference was used: BLEU uses the reference length "
                "closest to the hypothesis's", "for each caption pick the reference length nearest its length "
                "(ties: the shorter)"),
        Variant(_bp(lambda h, refs: sum(refs) / len(refs)), "the mean reference length was used: BLEU uses the "
                "closest one", "pick the reference length nearest the caption's length"),
        Variant(_bp(lambda h, refs: min(refs, key=lambda r: (abs(r - h), -r))), "ties go to the shorter reference "
                "length", "sort candidates by (distance, length)"),
        Variant(_bp(_closest, per_sentence=True), "a penalty per caption, then averaged: BLEU's brevity penalty is "
                "computed once, from the corpus totals c and r", "sum the lengths first, then apply the formula"),
        Variant(_bp(_closest, formula="always"), "long captions were penalised too (or rewarded above 1): the "
                "penalty is 1 when c > r", "return 1.0 when the hypotheses are longer"),
        Variant(_bp(_closest, formula="inverted"), "the ratio is upside down: BP = exp(1 - r / c) for c <= r",
                "r is the reference length, c the hypothesis length"),
    ]
    return run_check("brevity_penalty", brevity_penalty, reference_brevity_penalty, _bp_cases(), diagnoses,
                     success="equals sacrebleu's brevity penalty on {n} corpora", raise_on_fail=raise_on_fail)


# ----------------------------------------------------------------------------- exercise 6: a choice

METRIC_CHOICES = {"a": "BLEU", "b": "CIDEr", "c": "CLIPScore with the lesson's two-object CLIP",
                  "d": "colour accuracy read back from the caption"}


def check_metric_choice(answer: Any, raise_on_fail: bool = True) -> CheckResult:
    """Exercise 09.6: which score gives "a red circle to the left of a blue square." about the same value
    when the image shows a blue circle to the left of a red square? One letter of `METRIC_CHOICES`."""
    if isinstance(answer, str):
        answer = answer.strip().lower()
    wrong = [("a", "BLEU compares n-grams: 'red circle' and 'blue square' are bigrams the reference lacks, so it "
                   "drops"), ("b", "CIDEr weighs exactly those rare bigrams most, so it drops"),
             ("d", "the colour read back for the first object is wrong, so colour accuracy drops")]
    if answer not in METRIC_CHOICES:
        return check_value("metric_choice", answer, "c", hint=f"answer with one letter of {sorted(METRIC_CHOICES)}",
                           raise_on_fail=raise_on_fail)
    return check_value("metric_choice", answer, "c", "right: a CLIP that binds colours to shapes poorly sees the "
                       "same bag of attributes in both captions", hint="which score never looks at word order?",
                       wrong_values=wrong, raise_on_fail=raise_on_fail)
