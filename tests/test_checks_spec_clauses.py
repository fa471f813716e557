"""Which clause of its exercise's spec each case of a check exercises, and what breaks it.

For each check of assignments 07-11 (and InfoNCE's, where issue 23 found a misnamed mistake),
`SPEC` lists the clauses of the exercise text; for each clause, the labels of the check's cases that
exercise it (a fragment of `Case.label`), and a way of breaking exactly that clause: the message of
one of the check's `Variant`s, or a wrong function written here when no Variant names it. The tests
assert that every listed case exists and that every breaker fails the check: a check that passes
some way of breaking its own spec is a defect (issue 23 found two: a fresh `tensor(0.)` as the MLM
loss of an empty batch, and `Counter.most_common`'s first-seen tie-break).
The statistical checks (`mask_tokens`, `hard_negatives`) and the number checks are tested in
their own files.
"""
from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from mmcourse.classroom import checks
from mmcourse.classroom.checks import captioning, core, mlm
from test_checks_named_mistakes import RECORDED

ALL = ""  # a fragment every case label contains: the clause is exercised by every case


# -- wrong functions for clauses no Variant names ------------------------------------------------

def _pll_without_image(model, input_ids, attention_mask, special_ids, image=None):
    return mlm.reference_pseudo_log_likelihood(model, input_ids, attention_mask, special_ids, image=None)


def _caption_loss_without_eot(logits, input_ids, attention_mask, prefix_length):
    mask = attention_mask.clone()
    mask[input_ids == captioning.EOT] = 0
    return captioning.reference_caption_loss(logits, input_ids, mask, prefix_length)


def _beam_normalised_scores(scores, lengths, finished, log_probs, beam_width, pad_token_id=0, length_penalty=1.0):
    beam, token, new = captioning.reference_beam_step(scores, lengths, finished, log_probs, beam_width, pad_token_id,
                                                      length_penalty)
    grow = (~finished).long().gather(1, beam)
    return beam, token, new / (lengths.gather(1, beam) + grow).double().clamp(min=1) ** length_penalty


def _prior_float(q, a, t):
    from mmcourse.classroom.checks.fusion import reference_question_prior

    return reference_question_prior(q, a, t).float()


def _prior_most_common(train_q, train_a, test_q):
    by_q = {}
    for q, a in zip(train_q, train_a.tolist()):
        by_q.setdefault(q, Counter())[a] += 1
    overall = Counter(train_a.tolist())
    return torch.tensor([by_q.get(q, overall).most_common(1)[0][0] for q in test_q])


def _mlm_loss_fresh_zero(logits, labels):
    if (labels != -100).sum() == 0:
        return torch.tensor(0.0, dtype=logits.dtype)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def _mlm_loss_float(logits, labels):
    return float(_mlm_loss_fresh_zero(logits, labels))


def _mask_long(attention_mask, prefix_length):
    return captioning.reference_decoder_mask(attention_mask, prefix_length).long()


def _labels_float(n, r):
    return (torch.arange(n) + n * r).float()


SPEC = {
    "mlm_loss": [
        ("cross-entropy over the vocabulary", ["chosen"], "the softmax runs over the positions"),
        ("only the positions whose label is not -100", ["chosen"], "counted as targets"),
        ("averaged over the chosen positions", ["chosen"], "divided by ALL positions"),
        ("a mean, not a sum", ["chosen"], "summed, not averaged"),
        ("no chosen position: 0, not NaN", ["no chosen position"], "NEW zero tensor"),
        ("that 0 is connected to the logits (backward works)", ["no chosen position"], _mlm_loss_fresh_zero),
        ("a tensor, on the graph, on every batch", ["chosen"], _mlm_loss_float),
    ],
    "masked_accuracy": [
        ("a share of the chosen positions only", ["B=3", "B=8", "B=2"], "averaged over ALL positions"),
        ("-100 is not a token", ["B=3"], "counted (as token 0)"),
        ("a fraction, not a count", ["B=3"], "NUMBER of right predictions"),
    ],
    "pseudo_log_likelihood": [
        ("one token masked at a time", ["text-only", "image-conditioned"], "masked at once"),
        ("special tokens are not scored", ["text-only"], "[SOT] and [EOT] were scored"),
        ("padding is not scored", ["with padding"], "padding positions were scored"),
        ("log-probabilities, summed", ["text-only"], "probabilities were summed"),
        ("a sum, not a mean", ["text-only"], "mean per token"),
        ("the image is passed on to the model", ["image-conditioned"], _pll_without_image),
    ],
    "gated_fusion": [
        ("h_v, h_t through tanh", [ALL], "the tanh is missing"),
        ("z = sigmoid(...), one gate per feature", [ALL], "the gate is not squashed"),
        ("z weighs the image term", [ALL], "the gate weighs the wrong modality"),
        ("the weights z and 1 - z sum to 1", [ALL], "both terms use z"),
        ("elementwise gates, not a softmax", [ALL], "softmax makes the gates"),
        ("h itself, not the module's output", [ALL], "returned the module's output"),
        ("a batch of one", ["B=1"], "the tanh is missing"),
    ],
    "question_prior": [
        ("count each exact question separately", ["12 training questions", "300 random"], "most frequent answer overall"),
        ("the largest count wins", ["12 training questions"], "first answer seen"),
        ("ties: the smallest index, whatever came first", ["tie, the larger index seen first"], _prior_most_common),
        ("ties: the smallest index, not the largest", ["tie, the larger index seen first"], "towards the larger"),
        ("unseen question: the most frequent answer overall", ["unseen test question"], "got answer 0"),
        ("unseen question: not the first training answer", ["unseen"], "got the first training answer"),
        ("(N_test,) long", [ALL], _prior_float),
    ],
    "tensor_fusion": [
        ("append a 1 to each vector", [ALL], "appended 1s are missing"),
        ("the 1 at the end", [ALL], "the 1 goes at the end"),
        ("image index first", [ALL], "text-major"),
        ("one outer product per example", ["B=3"], "summed the outer products over the batch"),
    ],
    "decoder_mask": [
        ("causal", [ALL], "no causal mask"),
        ("j <= i, not j >= i", [ALL], "the wrong way round"),
        ("the diagonal included", [ALL], "must also see itself"),
        ("padding never a key", ["one padded", "1 caption of 7"], "padding is attended to"),
        ("padding query rows filled like any other row", ["one padded"], "rows of padding queries are all False"),
        ("over [prefix, caption]", [ALL], "covers the caption only"),
        ("a bool mask", [ALL], _mask_long),
    ],
    "caption_loss": [
        ("the output at i predicts the token at i + 1", [ALL], "off by one"),
        ("the caption's outputs, not the prefix's", [ALL], "reads the prefix positions"),
        ("padding found by the mask, not the id", ["a real token 0"], "padding was found by its id"),
        ("padding not scored", ["one caption padded"], "padding is in the loss"),
        ("[SOT] not scored", [ALL], "[SOT] is scored"),
        ("[EOT] scored", [ALL], _caption_loss_without_eot),
    ],
    "greedy_decode": [
        ("pad after [EOT]", ["max_new_tokens=6", "max_new_tokens=9"], "goes on after its [EOT]"),
        ("the model sees the whole sequence so far", [ALL], "only the last token"),
        ("[SOT] first", [ALL], "[SOT] column is missing"),
    ],
    "beam_step": [
        ("rank by sum / length ** length_penalty", ["length_penalty=1.0", "length_penalty=0.7"], "normalisation forgotten"),
        ("a live candidate's length is one more", ["length_penalty=1.0"], "normalised by the old length"),
        ("all K x V candidates ranked together", [ALL], "top-k was taken per beam"),
        ("a finished beam kept as it is", ["one finished beam"], "a finished beam was extended"),
        ("beam = index // V, token = index % V", [ALL], "indices are mixed up"),
        ("new_scores are sums of log-probs, not ranking values", ["length_penalty=1.0"], _beam_normalised_scores),
    ],
    "brevity_penalty": [
        ("the closest reference length", ["shorter than their references"], "the shortest reference was used"),
        ("closest, not the mean", ["shorter than their references"], "mean reference length"),
        ("ties: the shorter", ["ties"], "ties go to the shorter"),
        ("corpus totals, not per caption", ["shorter than their references"], "a penalty per caption"),
        ("1 when c > r", ["longer than their closest"], "long captions were penalised"),
        ("exp(1 - r / c)", ["shorter than their references"], "the ratio is upside down"),
    ],
    "local_loss_labels": [
        ("shifted by the rows of the ranks before", ["rank 1", "rank 2", "rank 7"], "every rank got labels 0..n-1"),
        ("the shift counts rows, not ranks", ["rank 2"], "the offset is the rank itself"),
        ("ranks count from 0", ["rank 0"], "off by one rank"),
        ("a shift, not a product", ["rank 2"], "multiplies the labels"),
        ("class indices (long)", [ALL], _labels_float),
    ],
    "grad_cache_step": [
        ("logit_scale gets its cached gradient", ["chunks of 4"], "logit_scale got no gradient"),
        ("... exactly once", ["chunks of 4"], "counted once per chunk"),
        ("the cached gradients of the full-batch loss, not each chunk's loss", [ALL], "naive accu"),
        ("the same dropout masks in both passes", ["dropout 0.2"], "random state was not restored"),
        ("a last chunk shorter than the others", ["chunks of 5, 5, 2"], "naive accu"),
    ],
    "siglip_ring": [
        ("the rank's own texts: positives on the diagonal", [ALL], "the visitors' diagonal"),
        ("... and negatives off it", ["one rank"], "own texts gave only the positives"),
        ("every other rank visits once", ["2 ranks", "4 ranks", "3 ranks"], "only the rank's own texts were scored"),
        ("... and only once", ["2 ranks", "4 ranks"], "counted twice"),
        ("divided by the rank's n", ["2 ranks"], "divided by the global N"),
        ("summed over the texts", ["one rank"], "mean over the rank's n × N pairs"),
        ("the bias in every logit", [ALL], "logit_bias is missing"),
        ("labels ±1 inside the log-sigmoid", [ALL], "labels inside the log-sigmoid are 1 and 0"),
    ],
    "hf_clip_logits": [
        ("one row per image", [ALL], "you returned logits_per_text"),
        ("logit_scale is a log", [ALL], "stored as a log"),
        ("cosine similarities", [ALL], "not L2-normalised"),
        ("text pooled at end-of-text", ["with padding"], "pooled at the last position"),
        ("not mean-pooled", [ALL], "mean-pooled"),
        ("image feature after post_layernorm", [ALL], "post_layernorm"),
        ("projected into the joint space", [ALL], "not projected"),
    ],
    "sentence_embedding": [
        ("mean over real tokens only", ["lengths"], "padding included"),
        ("divided by each sentence's count", ["lengths"], "divided by the padded length"),
        ("normalised when normalize=True", ["normalize=True"], "forgot to normalise"),
        ("not normalised when normalize=False", ["normalize=False"], "normalised although"),
        ("mean pooling, not [CLS]", [ALL], "first ([CLS]) token"),
        ("normalise the mean, not the tokens", ["normalize=True"], "normalised every token"),
        ("each sentence to length 1", ["normalize=True"], "along the batch dimension"),
    ],
    "eos_pool": [
        ("the FIRST end-of-text token", ["padded with the end-of-text id"], "the LAST end-of-text"),
        ("found by its id, not as the largest id", ["words with larger ids"], "position of the largest id"),
        ("not the last position", [ALL], "the last position"),
    ],
    "info_nce (formula)": [
        ("similarity / τ", [ALL], "temperature multiplied instead of divided"),
        ("τ once", [ALL], "divided by τ twice"),
        ("cosine similarity", ["not normalised"], "not normalised"),
        ("a mean over anchors", [ALL], "returns a sum, not a mean"),
        ("a scalar", [ALL], "wrong shape returned"),
        ("positive i in column i", [ALL], "every row used column 0"),
        ("softmax over each row", [ALL], "softmax over the wrong axis"),
        ("minus the log-probability", [ALL], "the sign is flipped"),
        ("the denominator includes the positive", [ALL], "denominator leaves out the positive"),
    ],
}


def _call(name: str) -> dict:
    calls = [call for _, kind, call in RECORDED if kind == "run_check" and call["name"] == name]
    assert calls, f"no check named {name!r} was recorded"
    return calls[0]


CLAUSES = [pytest.param(name, clause, fragments, breaker, id=f"{name}: {clause}")
           for name, rows in SPEC.items() for clause, fragments, breaker in rows]


@pytest.mark.parametrize("name, clause, fragments, breaker", CLAUSES)
def test_every_clause_is_exercised_and_its_breaking_fails(name, clause, fragments, breaker):
    call = _call(name)
    labels = [case.label for case in call["cases"]]
    for fragment in fragments:
        assert any(fragment in label for label in labels), f"{name}: no case {fragment!r} for {clause!r}: {labels}"
    arguments = {**call, "raise_on_fail": False, "forbid": ()}
    if isinstance(breaker, str):
        variants = [d for d in call["diagnoses"] if isinstance(d, core.Variant) and breaker in d.message]
        assert variants, f"{name}: no named mistake {breaker!r}"
        arguments["student"] = variants[0].wrong
    else:  # a plain student function: through the public check, which may wrap it
        check = getattr(checks, f"check_{name.split(' ')[0]}")
        core._FAILURES.clear()
        result = check(breaker, raise_on_fail=False)
        assert not result.passed, f"{name} passes a function that breaks {clause!r}"
        return
    core._FAILURES.clear()
    result = core.run_check(**arguments)
    assert not result.passed, f"{name} passes a function that breaks {clause!r}"
