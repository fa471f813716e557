"""Checks for assignment 08 (fusion, image–text matching, VQA).

* `check_hard_negatives`: ALBEF's hard-negative sampling, `sample(sim, same, generator) -> (B,)`,
  checked statistically (thousands of draws against the softmax over the allowed captions);
  names the positive drawn, duplicates drawn, the softmax over the wrong axis, one distribution
  for the whole batch, rows drawn without replacement, and the argmax instead of a draw;
* `check_gated_fusion`: the GMU h = z * tanh(W_v x_v) + (1 - z) * tanh(W_t x_t);
* `check_question_prior`: the question-only baseline (most frequent training answer per question);
* `check_tensor_fusion`: tensor fusion [x; 1] ⊗ [y; 1] (Zadeh et al., 2017), the transfer task;
* `check_colour_chance`, `check_prior_answer`, `check_xor_answer`: a predicted number and two
  multiple-choice questions.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from mmcourse.classroom.checks.core import (Case, CheckResult, Property, Variant, call_safely, check_value, finish,
                                            run_check)

__all__ = ["check_hard_negatives", "check_gated_fusion", "check_question_prior", "check_tensor_fusion",
           "check_colour_chance", "check_prior_answer", "check_xor_answer"]

N_DRAWS = 3000
TOLERANCE = 0.045  # > 4 binomial standard errors (sqrt(0.25 / 3000) = 0.009)


# ----------------------------------------------------------------------------- exercise 1: hard negatives

def hard_negative_case() -> tuple[torch.Tensor, torch.Tensor]:
    """A 5x5 similarity matrix (rows: images, columns: captions) whose captions 0 and 2 are equal,
    built so that each typical mistake gives a clearly different distribution."""
    sim = torch.tensor([[6.0, 1.0, 5.0, 2.5, 0.0],
                        [0.5, 6.0, 3.0, 0.0, 1.0],
                        [4.0, 2.0, 6.0, 0.5, 2.5],
                        [3.0, 0.0, 0.0, 6.0, 1.5],
                        [0.0, 2.0, 1.0, 3.0, 6.0]])
    captions = ["a red circle.", "a blue square.", "a red circle.", "a cyan cross.", "a green triangle."]
    same = torch.tensor([[a == b for b in captions] for a in captions])
    return sim, same


def _masked_softmax(logits: torch.Tensor, same: torch.Tensor, dim: int = 1) -> torch.Tensor:
    w = torch.softmax(logits.masked_fill(same, float("-inf")), dim=dim).nan_to_num(0.0)
    w = w.masked_fill(same, 0.0)
    return w / w.sum(1, keepdim=True)


def reference_hard_negative_weights(sim: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """Row i: softmax_j(sim_ij) over the j with same[i, j] False (zero elsewhere)."""
    return _masked_softmax(sim.double(), same)


def _frequencies(draws: torch.Tensor, B: int) -> torch.Tensor:
    return torch.stack([torch.bincount(draws[:, i], minlength=B)[:B] for i in range(B)]).double() / len(draws)


def check_hard_negatives(sample: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 08.1: `sample(sim, same, generator) -> (B,) long`, one negative caption per image
    drawn with probability softmax_j(sim_ij) over the captions j that are neither the positive
    nor equal to it (`same[i, j]` False), every row independently. Checked on 3,000 draws."""
    name = "hard_negatives"
    sim, same = hard_negative_case()
    B = len(sim)
    if not callable(sample):
        return run_check(name, sample, lambda *a: None, [], raise_on_fail=raise_on_fail)
    first = call_safely(sample, sim, same, torch.Generator().manual_seed(0))
    if isinstance(first.error, NotImplementedError) and raise_on_fail:
        raise first.error
    if not first.ok:
        return finish(CheckResult(name, False, first.describe_error(), "try your function on the 5x5 example above"),
                      raise_on_fail)
    out = first.value
    if not isinstance(out, torch.Tensor) or out.shape != (B,):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return finish(CheckResult(name, False, f"expected a (B,) = ({B},) tensor of caption indices, one per image, "
                                  f"got {got}", "torch.multinomial(weights, 1) gives (B, 1): squeeze it"),
                      raise_on_fail)
    if out.is_floating_point() or out.dtype == torch.bool:
        return finish(CheckResult(name, False, f"the indices must be integers (torch.long), got {out.dtype}",
                                  "torch.multinomial returns long indices"), raise_on_fail)
    if ((out < 0) | (out >= B)).any():
        return finish(CheckResult(name, False, f"indices must be caption numbers in [0, {B}), got {out.tolist()}: "
                                  f"did you sample from the flattened (B*B) matrix?",
                                  "sample each row of the (B, B) weights: torch.multinomial(weights, 1)"),
                      raise_on_fail)
    generator = torch.Generator().manual_seed(1)
    many = call_safely(lambda: torch.stack([sample(sim.clone(), same.clone(), generator) for _ in range(N_DRAWS)]),
                       timeout=60)
    if not many.ok:
        return finish(CheckResult(name, False, many.describe_error(), "call it several times in a loop to see"),
                      raise_on_fail)
    draws = many.value.long()  # (N_DRAWS, B)
    freq = _frequencies(draws, B)
    eye = torch.eye(B, dtype=torch.bool)
    if (draws.unique(dim=0).shape[0] == 1) and not (freq.max(1).values < 1).any():
        return finish(CheckResult(name, False, "every call returns the same negatives: you take the most similar "
                                  "caption (argmax) instead of drawing one", "ALBEF samples: torch.multinomial(weights, 1)"),
                      raise_on_fail)
    if freq[eye].max() > 0:
        return finish(CheckResult(name, False, f"the positive caption was drawn as a negative (row {int(freq[eye].argmax())} "
                                  f"drew its own caption in {freq[eye].max():.0%} of the draws)",
                                  "give the positive weight 0 before sampling"), raise_on_fail)
    dup = same & ~eye
    if freq[dup].max() > 0:
        return finish(CheckResult(name, False, "a caption equal to the positive (captions 0 and 2 are both "
                                  "'a red circle.') was drawn as a negative: it is a false negative",
                                  "mask every j with same[i, j], not only the diagonal"), raise_on_fail)
    expected = reference_hard_negative_weights(sim, same)
    if (freq - expected).abs().max() < TOLERANCE:
        # rows independent: row 0 and row 1 share a negative as often as independence predicts
        agree = (draws[:, 0] == draws[:, 1]).double().mean().item()
        if abs(agree - (expected[0] * expected[1]).sum().item()) > 0.05:
            return finish(CheckResult(name, False, "each row follows the right distribution, but the rows are not "
                                      "drawn independently (two images get the same negative too rarely or too often)",
                                      "one independent draw per row: torch.multinomial(weights, 1)"), raise_on_fail)
        return finish(CheckResult(name, True, f"never the positive nor a duplicate; {N_DRAWS} draws follow the "
                                  f"softmax over the allowed captions (largest gap {(freq - expected).abs().max():.3f})"),
                      raise_on_fail)
    wrong = {
        "the softmax ran over the wrong axis (over the images of each caption, dim=0): each image's weights must be "
        "a softmax over the captions in its row": _masked_softmax(sim.double(), same, dim=0),
        "every row follows the same distribution: you drew all negatives from one pooled distribution instead of "
        "one per image": expected.mean(0, keepdim=True).expand(B, B),
        "these are uniform (random) negatives: weight each allowed caption by softmax(sim)":
            (~same).double() / (~same).sum(1, keepdim=True),
    }
    for message, w in wrong.items():
        if (freq - w).abs().max() < TOLERANCE:
            return finish(CheckResult(name, False, message, "weights = softmax of sim with forbidden entries at -inf, "
                                      "dim=1; then one draw per row"), raise_on_fail)
    distinct = (draws.sort(1).values.diff(dim=1) != 0).all(1).double().mean().item()
    if distinct > 0.99:
        return finish(CheckResult(name, False, "no two images ever get the same negative: the draws were made without "
                                  "replacement across rows; each image's draw must be independent of the others'",
                                  "torch.multinomial(weights, 1): one draw from each row"), raise_on_fail)
    gap = (freq - expected).abs().max().item()
    return finish(CheckResult(name, False, f"the frequencies of your negatives do not follow softmax(sim) over the "
                              f"allowed captions (largest gap {gap:.2f})",
                              "weights[i, j] ∝ exp(sim[i, j]) for allowed j, 0 otherwise"), raise_on_fail)


# ----------------------------------------------------------------------------- exercise 2: the GMU

def reference_gated_fusion(image_features: torch.Tensor, text_features: torch.Tensor, fusion) -> torch.Tensor:
    """The GMU output (B, D) with the weights of a `GatedFusion` module."""
    return fusion.gmu(image_features, text_features)


def _gmu_variant(gate="sigmoid", tanh=True, swap=False, one_minus=True, mlp=False):
    def wrong(x_v, x_t, m):
        if mlp:
            return m(x_v, x_t)
        act = torch.tanh if tanh else (lambda x: x)
        h_v, h_t = act(m.image_proj(x_v)), act(m.text_proj(x_t))
        g = m.gate(torch.cat([x_v, x_t], -1))
        z = {"sigmoid": torch.sigmoid, "none": lambda x: x, "softmax": lambda x: torch.softmax(x, -1)}[gate](g)
        if swap:
            h_v, h_t = h_t, h_v
        return z * h_v + ((1 - z) if one_minus else z) * h_t
    return wrong


def check_gated_fusion(gated_fusion: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 08.2: `gated_fusion(image_features (B, E_v), text_features (B, E_t), fusion) -> (B, D)`
    with `fusion.image_proj` (W_v), `fusion.text_proj` (W_t) and `fusion.gate` (W_z)."""
    from mmcourse.models.fusion import GatedFusion

    def cases():
        out = []
        for seed, (b, e_v, e_t, d) in enumerate([(4, 6, 3, 5), (1, 2, 2, 3), (8, 5, 7, 4)]):
            g = torch.Generator().manual_seed(80 + seed)
            torch.manual_seed(80 + seed)
            module = GatedFusion(e_v, e_t, d)
            out.append(Case((torch.randn(b, e_v, generator=g), torch.randn(b, e_t, generator=g), module), {},
                            f"B={b}, E_v={e_v}, E_t={e_t}, D={d}"))
        return out

    diagnoses = [
        Variant(_gmu_variant(swap=True), "the gate weighs the wrong modality: z multiplies the image term h_v and "
                "(1 - z) the text term", "h = z * h_v + (1 - z) * h_t"),
        Variant(_gmu_variant(tanh=False), "the tanh is missing: h_v = tanh(W_v x_v), h_t = tanh(W_t x_t)",
                "wrap each projection in torch.tanh"),
        Variant(_gmu_variant(gate="none"), "the gate is not squashed: z = sigmoid(W_z [x_v; x_t]) lies in (0, 1)",
                "apply torch.sigmoid to fusion.gate(...)"),
        Variant(_gmu_variant(gate="softmax"), "softmax makes the gates of all features compete; each feature has its "
                "own gate in (0, 1)", "use torch.sigmoid, elementwise"),
        Variant(_gmu_variant(one_minus=False), "both terms use z: the text term must be weighted by (1 - z), so the "
                "two weights sum to 1", "h = z * h_v + (1 - z) * h_t"),
        Variant(_gmu_variant(mlp=True), "you returned the module's output, which adds an MLP after the GMU: return h "
                "itself, computed from fusion.image_proj, fusion.text_proj and fusion.gate", "write out the three lines"),
    ]
    return run_check("gated_fusion", gated_fusion, reference_gated_fusion, cases(), diagnoses,
                     success="the GMU matches on {n} cases, including a batch of 1", raise_on_fail=raise_on_fail)


# ----------------------------------------------------------------------------- exercise 3: question only

def reference_question_prior(train_questions, train_answers, test_questions) -> torch.Tensor:
    """Most frequent training answer per exact question (ties: smallest index; unseen: overall)."""
    from mmcourse.data import question_prior_predictions

    return question_prior_predictions(train_questions, train_answers, test_questions)


def _prior_global(train_q, train_a, test_q):
    return torch.full((len(test_q),), int(torch.bincount(train_a).argmax()), dtype=torch.long)


def _prior_first_seen(train_q, train_a, test_q):
    first = {}
    for q, a in zip(train_q, train_a.tolist()):
        first.setdefault(q, a)
    overall = int(torch.bincount(train_a).argmax())
    return torch.tensor([first.get(q, overall) for q in test_q], dtype=torch.long)


def _prior_ties_high(train_q, train_a, test_q):
    from collections import Counter
    counts: dict = {}
    for q, a in zip(train_q, train_a.tolist()):
        counts.setdefault(q, Counter())[a] += 1
    best = lambda c: max(a for a, n in c.items() if n == max(c.values()))  # noqa: E731
    overall = Counter(train_a.tolist())
    return torch.tensor([best(counts.get(q, overall)) for q in test_q], dtype=torch.long)


def check_question_prior(question_prior: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 08.3: `question_prior(train_questions, train_answers, test_questions) -> (N_test,) long`,
    the most frequent training answer for each exact question (ties: the smallest answer index;
    a question never seen in training: the most frequent training answer overall)."""
    train_q = ["is there a red circle?"] * 5 + ["how many shapes are there?"] * 4 + ["what colour is the cross?"] * 3
    train_a = torch.tensor([10, 11, 11, 10, 10, 12, 13, 13, 14, 2, 2, 0])
    test_q = ["how many shapes are there?", "is there a red circle?", "what colour is the cross?", "what is above the cross?"]
    g = torch.Generator().manual_seed(83)
    big_q = [f"question {int(k)}?" for k in torch.randint(0, 6, (300,), generator=g)]
    big_a = torch.randint(0, 4, (300,), generator=g)
    cases = [Case((train_q, train_a, test_q), {}, "12 training questions, an unseen test question"),
             Case((big_q, big_a, big_q[:50]), {}, "300 random questions")]
    diagnoses = [
        Variant(_prior_global, "you predicted the most frequent answer overall for every question: the baseline reads "
                "the question, so count the answers of each question separately", "a Counter per question string"),
        Variant(_prior_first_seen, "you took the first answer seen for each question, not the most frequent one",
                "count every answer of the question, then take the most common"),
        Variant(_prior_ties_high, "ties are broken towards the larger answer index; take the smallest, as the reference",
                "among the answers with the top count, min(...)"),
    ]
    return run_check("question_prior", question_prior, reference_question_prior, cases, diagnoses,
                     success="matches the question-only baseline on {n} cases, ties and unseen questions included",
                     raise_on_fail=raise_on_fail)


def check_colour_chance(value: Any, raise_on_fail: bool = True) -> CheckResult:
    """Predicted question-only accuracy on balanced "what colour is the ...?" questions (1/6)."""
    return check_value("colour_chance", value, 1 / 6, "right: six colours, each equally likely given the question",
                       hint="how many answers can a colour question have, and how likely is each?", atol=0.01,
                       wrong_values=[(1 / 4, "1/4 counts shapes; the answer to a colour question is one of 6 colours"),
                                     (1 / 15, "1/15 spreads over the whole answer vocabulary, but a question-only model "
                                      "knows a colour question needs a colour"),
                                     (1 / 2, "1/2 is the chance of a yes/no question")], raise_on_fail=raise_on_fail)


def check_prior_answer(choice: Any, raise_on_fail: bool = True) -> CheckResult:
    """Multiple choice: why report a question-only baseline? (answer "b")."""
    return check_value("prior_answer", str(choice).strip().lower(), "b",
                       "right: the gap to the question-only model is what the image contributes",
                       hint="what could a VQA model score without looking at the image?",
                       wrong_values=[("a", "the baseline is not a stronger model; it usually scores far below a VQA model"),
                                     ("c", "it does not need to be trained longer: it measures the answers' priors"),
                                     ("d", "balancing removes the priors, but only the baseline shows that it did")],
                       raise_on_fail=raise_on_fail)


# ----------------------------------------------------------------------------- exercise 4: tensor fusion

def reference_tensor_fusion(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """[x; 1] ⊗ [y; 1] flattened: (B, E_v), (B, E_t) -> (B, (E_v + 1)(E_t + 1)), image index first."""
    one = image_features.new_ones(len(image_features), 1)
    x, y = torch.cat([image_features, one], 1), torch.cat([text_features, one], 1)
    return torch.einsum("bi,bj->bij", x, y).flatten(1)


def check_tensor_fusion(tensor_fusion: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 08.4: `tensor_fusion(image_features (B, E_v), text_features (B, E_t))` ->
    (B, (E_v + 1)(E_t + 1)), the flattened outer product of [x; 1] and [y; 1]."""
    def cases():
        g = torch.Generator().manual_seed(84)
        return [Case((torch.randn(3, 2, generator=g), torch.randn(3, 3, generator=g)), {}, "B=3, E_v=2, E_t=3"),
                Case((torch.randn(1, 4, generator=g), torch.randn(1, 1, generator=g)), {}, "B=1, E_v=4, E_t=1")]

    def prepend(x, y):
        one = x.new_ones(len(x), 1)
        return torch.einsum("bi,bj->bij", torch.cat([one, x], 1), torch.cat([one, y], 1)).flatten(1)

    diagnoses = [
        Variant(lambda x, y: torch.einsum("bi,bj->bij", x, y).flatten(1), "the appended 1s are missing: without them "
                "the unimodal terms x_i and y_j (and the constant) are lost", "x1 = torch.cat([x, ones], dim=1)"),
        Variant(lambda x, y: reference_tensor_fusion(y, x), "the order is text-major: put the image index first, "
                "z[b, i, j] = x1[b, i] * y1[b, j]", "torch.einsum('bi,bj->bij', x1, y1)"),
        Variant(prepend, "the 1 goes at the end, [x; 1] as in Zadeh et al.: you have the same numbers in another order",
                "torch.cat([x, ones], dim=1)"),
        Variant(lambda x, y: torch.einsum("bi,bj->ij", torch.cat([x, x.new_ones(len(x), 1)], 1),
                                          torch.cat([y, y.new_ones(len(y), 1)], 1)).flatten()[None].expand(len(x), -1),
                "you summed the outer products over the batch: each example gets its own", "keep the batch index b"),
        Property(lambda fn: fn(torch.ones(2, 2), torch.ones(2, 3)).shape == (2, 6),
                 "the result has E_v * E_t columns: append a 1 to each feature vector first", "(E_v + 1)(E_t + 1) columns"),
    ]
    return run_check("tensor_fusion", tensor_fusion, reference_tensor_fusion, cases(), diagnoses,
                     success="matches [x; 1] ⊗ [y; 1] on {n} cases", raise_on_fail=raise_on_fail)


def check_xor_answer(choice: Any, raise_on_fail: bool = True) -> CheckResult:
    """Multiple choice: can tensor fusion + a linear head fit XOR of two ±1 modalities? (answer "b")."""
    return check_value("xor_answer", str(choice).strip().lower(), "b",
                       "right: the product x·y is +1 when the two agree and -1 when they differ, so one weight on it "
                       "separates XOR",
                       hint="look at the term x_1 * y_1 of the outer product for inputs ±1",
                       wrong_values=[("a", "no: the outer product has a term x·y that additive fusion lacks"),
                                     ("c", "no MLP is needed: the product term is already linear in the fused vector")],
                       raise_on_fail=raise_on_fail)
