"""Caption metrics: the COCO tokenisation against pycocoevalcap's Java PTBTokenizer (and, without
Java, against its committed outputs), BLEU against a hand computation, CIDEr-D against
pycocoevalcap's own pipeline, METEOR against pycocoevalcap's Meteor, CLIPScore and RefCLIPScore
against the CLIP model's own logits."""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from mmcourse.evaluation import caption_metrics
from mmcourse.evaluation.caption_metrics import (clip_score, cider, coco_tokenize, corpus_bleu, java_available, meteor,
                                      ref_clip_score, tokenize_captions)
from mmcourse.evaluation.ptb_tokenizer import PUNCTUATIONS, ptb_tokenize

needs_java = pytest.mark.skipif(not java_available(), reason="no `java` on the PATH: the Java comparison is skipped "
                                "(the Python tokenizer is still checked against the committed Java outputs)")
FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "ptb_captions.json").read_text())
CASES = FIXTURE["captions"] + FIXTURE["beyond"]

# The issue's kind of input: COCO-style captions whose tokens PTB keeps whole or splits
ISSUE_HYPS = [
    "A man in a t-shirt doesn't smile.",
    "Two hot-dogs on a paper plate.",
    "A red double-decker bus on a city street.",
    "The cat's tail hangs off the couch.",
    "A phone with a 3.5 inch screen.",
    "A dog can't catch the frisbee.",
    "A close-up of a pizza with pepperoni.",
    "They're sitting on a bench by the water.",
    "A 12-year-old boy flies a kite.",
    "A bowl of soup (with noodles) on a table.",
    "It's a sunny day at the beach.",
    "A clock tower reading 10:45.",
    "The women's restroom has a blue door.",
    "A sign that says \"STOP\" at a corner.",
    "A black-and-white photo of an old train.",
]
ISSUE_REFS = [
    ["A man in a t-shirt who doesn't smile.", "A man wearing a white t-shirt.", "A serious man in a t-shirt."],
    ["Two hot-dogs with mustard on a plate.", "Hot-dogs on a paper plate.", "A plate holding two hot-dogs."],
    ["A double-decker bus driving down a street.", "A red double-decker bus in the city.", "A bus on a street."],
    ["A cat's tail hanging off a couch.", "The cat's tail is on the couch.", "A cat lying on a couch."],
    ["A small phone with a 3.5 inch screen.", "A 3.5 inch phone screen.", "A phone on a table."],
    ["A dog that can't catch a frisbee.", "A dog jumping for a frisbee.", "The dog can't reach the frisbee."],
    ["A close-up of a pepperoni pizza.", "A pizza with pepperoni and cheese.", "A close-up of a pizza."],
    ["They're sitting on a bench near the water.", "Two people on a bench by the lake.", "A couple on a bench."],
    ["A 12-year-old boy flying a kite.", "A boy flies a kite in a field.", "A kid with a kite."],
    ["A bowl of soup with noodles.", "A bowl of noodle soup (hot) on a table.", "Soup (with noodles) in a bowl."],
    ["It's a sunny day on the beach.", "A sunny beach with people.", "People at the beach on a sunny day."],
    ["A clock tower that reads 10:45.", "A tall clock tower.", "The clock on the tower says 10:45."],
    ["The women's restroom door is blue.", "A blue door to the women's restroom.", "A blue restroom door."],
    ["A \"STOP\" sign at a corner.", "A stop sign at an intersection.", "A sign that says \"STOP\"."],
    ["A black-and-white photo of a train.", "An old train in black-and-white.", "A photo of an old steam train."],
]


def _quotes_alike(tokens: str) -> str:
    """Opening and closing quotes as one kind: PTB's choice of ` or ' is dropped with the punctuation."""
    return tokens.replace("``", "''").replace("`", "'")


def test_the_fixture_is_a_real_caption_test_set():
    texts = [c["text"] for c in FIXTURE["captions"]]
    assert len(texts) >= 40 and len(set(texts)) == len(texts)
    for needle in ("n't", "-", "'s", "3.5", "(", '"', ",", "?", "30,000", "'"):
        assert any(needle in t for t in texts), needle
    assert sum(c["coco"] != " ".join(re.findall(r"\w+", c["text"].lower())) for c in FIXTURE["captions"]) > 40


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["text"][:40])
def test_python_tokenizer_equals_the_committed_java_outputs(case):
    assert coco_tokenize(case["text"]) == case["coco"]
    assert _quotes_alike(" ".join(ptb_tokenize(case["text"]))) == _quotes_alike(case["ptb"])


@needs_java
def test_java_tokenizer_still_gives_the_committed_outputs_and_equals_pycocoevalcap_s_class():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    texts = [c["text"] for c in CASES]
    ours, name = tokenize_captions(texts, "java")
    assert name == "ptb-java" and ours == [c["coco"] for c in CASES]
    library = PTBTokenizer().tokenize({i: [{"caption": t}] for i, t in enumerate(texts)})
    assert ours == [library[i][0] for i in range(len(texts))]
    python, name = tokenize_captions(texts, "python")
    assert name == "ptb-python" and python == ours
    assert sum(a == b for a, b in zip(python, ours)) == len(CASES)


def test_coco_tokenize():
    assert coco_tokenize("A Red circle, in the TOP left.") == "a red circle in the top left"
    assert coco_tokenize("A man in a t-shirt doesn't smile.") == "a man in a t-shirt does n't smile"
    # pycocoevalcap lower-cases before filtering with its upper-case list: brackets survive
    assert coco_tokenize("A bowl (of soup).") == "a bowl -lrb- of soup -rrb-"
    assert "-LRB-" in PUNCTUATIONS and coco_tokenize("") == ""
    with pytest.raises(ValueError, match="str"):
        coco_tokenize(3)
    with pytest.raises(ValueError, match="position 1"):
        tokenize_captions(["a", None])
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        tokenize_captions(["a"], "nltk")


def test_without_java_auto_falls_back_to_python_and_says_so(monkeypatch):
    monkeypatch.setattr(caption_metrics, "java_available", lambda: False)
    tokens, name = tokenize_captions(ISSUE_HYPS)
    assert name == "ptb-python" and tokens[0] == "a man in a t-shirt does n't smile"
    assert cider(ISSUE_HYPS, ISSUE_REFS).tokenizer == "ptb-python"
    assert corpus_bleu(ISSUE_HYPS, ISSUE_REFS).tokenizer == "ptb-python"
    with pytest.raises(RuntimeError, match="needs a `java`"):
        tokenize_captions(["a"], "java")
    with pytest.raises(RuntimeError, match="METEOR is unavailable"):
        meteor(ISSUE_HYPS, ISSUE_REFS)


def test_a_caption_with_line_breaks_stays_one_caption():
    texts = ["a dog\non a sofa.", "a cat\r\nasleep", "a bird\u2028flying"]
    assert tokenize_captions(texts, "python")[0] == ["a dog on a sofa", "a cat asleep", "a bird flying"]
    if java_available():
        assert tokenize_captions(texts, "java")[0] == ["a dog on a sofa", "a cat asleep", "a bird flying"]


def _pycocoevalcap_cider(hyps, refs):
    """pycocoevalcap's own pipeline, as its COCOEvalCap runs it: PTBTokenizer, then Cider."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": r} for r in rs] for i, rs in enumerate(refs)})
    res = tok.tokenize({i: [{"caption": h}] for i, h in enumerate(hyps)})
    return Cider().compute_score(gts, res)


@needs_java
def test_cider_equals_pycocoevalcap_s_own_pipeline_on_the_issue_s_example():
    score, per_image = _pycocoevalcap_cider(ISSUE_HYPS, ISSUE_REFS)
    for tokenizer in ("java", "python", "auto"):
        ours = cider(ISSUE_HYPS, ISSUE_REFS, tokenizer)
        assert ours.score == pytest.approx(score, rel=1e-12) and ours.per_image.tolist() == pytest.approx(list(per_image))
    assert cider(ISSUE_HYPS, ISSUE_REFS).tokenizer == "ptb-java"
    # the words-only tokenisation the course used before scores these captions differently
    from pycocoevalcap.cider.cider import Cider

    words = lambda t: " ".join(re.findall(r"\w+", t.lower()))  # noqa: E731
    before = Cider().compute_score({i: [words(r) for r in rs] for i, rs in enumerate(ISSUE_REFS)},
                                   {i: [words(h)] for i, h in enumerate(ISSUE_HYPS)})[0]
    assert abs(before - score) > 0.1, (before, score)


def test_cider_on_the_issue_s_example_without_java():
    """The same figure from the Python tokenizer: pycocoevalcap's pipeline gives 3.8939 (measured with Java)."""
    ours = cider(ISSUE_HYPS, ISSUE_REFS, "python")
    assert ours.score == pytest.approx(3.8938549366, abs=1e-9) and ours.tokenizer == "ptb-python"


@needs_java
@pytest.mark.slow
def test_meteor_equals_pycocoevalcap_s_meteor_on_ptb_tokens(monkeypatch):
    import pycocoevalcap.meteor.meteor as pycoco_meteor

    # One METEOR JVM for both (loading its paraphrase table takes ~10 s of CPU): pycocoevalcap's scorer
    # answers the reference call, then `meteor` gets the same scorer instead of starting its own.
    scorer = pycoco_meteor.Meteor()
    calls = []

    class SameJVM:
        def compute_score(self, gts, res):
            calls.append(len(res))
            return scorer.compute_score(gts, res)

        def __del__(self):  # `meteor` stops its scorer when done; this one is stopped below
            pass

    try:
        tokens = {i: [coco_tokenize(r) for r in rs] for i, rs in enumerate(ISSUE_REFS)}
        score, scores = scorer.compute_score(tokens, {i: [coco_tokenize(h)] for i, h in enumerate(ISSUE_HYPS)})
        monkeypatch.setattr(pycoco_meteor, "Meteor", SameJVM)
        ours = meteor(ISSUE_HYPS, ISSUE_REFS)
    finally:
        scorer.__del__()
    assert calls == [len(ISSUE_HYPS)], "meteor did not score through pycocoevalcap's Meteor"
    assert ours.tokenizer == "ptb-java" and ours.score == pytest.approx(score)
    assert ours.per_image.tolist() == pytest.approx(list(scores)) and 0 < ours.score < 1

HYPS = ["a red circle in the top left.", "a blue square.", "a small green cross coloured green .",
        "there is a large yellow triangle"]
REFS = [["a red circle in the top left.", "a small red circle.", "the circle in the top left is red."],
        ["a large blue square in the center.", "a picture of a blue square."],
        ["a small cross coloured green.", "a green cross."],
        ["there is a large yellow triangle.", "a yellow triangle in the bottom right.", "a triangle."]]


def hand_bleu(hyps, refs, n_max=4):
    """Papineni et al.: clipped n-gram precisions over the corpus, geometric mean, brevity penalty
    against the closest reference length (ties: the shorter)."""
    hyps = [coco_tokenize(h).split() for h in hyps]
    refs = [[coco_tokenize(r).split() for r in rs] for rs in refs]
    matches, totals, c, r = [0] * n_max, [0] * n_max, 0, 0
    for h, rs in zip(hyps, refs):
        c += len(h)
        r += min((abs(len(x) - len(h)), len(x)) for x in rs)[1]
        for n in range(1, n_max + 1):
            counts = Counter(tuple(h[i : i + n]) for i in range(len(h) - n + 1))
            most = Counter()
            for x in rs:
                for g, k in Counter(tuple(x[i : i + n]) for i in range(len(x) - n + 1)).items():
                    most[g] = max(most[g], k)
            matches[n - 1] += sum(min(k, most[g]) for g, k in counts.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    precisions = [m / t for m, t in zip(matches, totals)]
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return 100 * bp * math.exp(sum(math.log(p) for p in precisions) / n_max), bp, precisions


def test_coco_tokenize():
    assert coco_tokenize("A Red circle, in the TOP left.") == "a red circle in the top left"
    with pytest.raises(ValueError, match="str"):
        coco_tokenize(3)


def test_bleu_equals_a_hand_computation():
    score, bp, precisions = hand_bleu(HYPS, REFS)
    lib = corpus_bleu(HYPS, REFS)
    assert lib.score == pytest.approx(score, rel=1e-9)
    assert lib.bp == pytest.approx(bp)
    assert [p / 100 for p in lib.precisions] == pytest.approx(precisions)
    short = corpus_bleu(["a circle", "a square"], [["a red circle in the top left"], ["a blue square"]])
    assert short.bp == pytest.approx(math.exp(1 - 10 / 4)) and short.bp == pytest.approx(hand_bleu(
        ["a circle", "a square"], [["a red circle in the top left"], ["a blue square"]], n_max=1)[1])
    assert corpus_bleu([r[0] for r in REFS], REFS).score == pytest.approx(100.0)


def test_cider_equals_pycocoevalcap_on_coco_tokens_and_rewards_the_right_caption():
    from pycocoevalcap.cider.cider import Cider

    score, per_image, _ = cider(HYPS, REFS)
    direct = Cider().compute_score({i: [coco_tokenize(r) for r in rs] for i, rs in enumerate(REFS)},
                                   {i: [coco_tokenize(h)] for i, h in enumerate(HYPS)})
    assert score == pytest.approx(direct[0]) and per_image.tolist() == pytest.approx(list(direct[1]))
    assert score == pytest.approx(per_image.mean())
    swapped = cider([HYPS[1], HYPS[0], HYPS[2], HYPS[3]], REFS)[1]
    assert swapped[0] < per_image[0] and swapped[1] < per_image[1]
    # an n-gram every image's references share carries no information: idf 0
    same = cider(["a picture of a", "a picture of a"], [["a picture of a red circle"], ["a picture of a blue square"]])
    assert same[0] == pytest.approx(0.0)


def test_metric_inputs_are_checked():
    with pytest.raises(ValueError, match="one list of reference captions per hypothesis"):
        corpus_bleu(HYPS, REFS[:2])
    with pytest.raises(ValueError, match="non-empty"):
        corpus_bleu(["a"], [[]])
    with pytest.raises(ValueError, match="at least 2 images"):
        cider(HYPS[:1], REFS[:1])
    with pytest.raises(ValueError, match="non-empty list"):
        cider("a red circle", REFS)


@pytest.fixture(scope="module")
def judge():
    from mmcourse.models import CLIP, CLIPConfig
    from mmcourse.data.tokenizer import default_tokenizer

    tok = default_tokenizer()
    torch.manual_seed(0)
    model = CLIP(CLIPConfig(image_size=16, in_channels=3, image_width=16, text_width=16, embed_dim=8,
                            cnn_channels=(4, 8), vocab_size=tok.vocab_size, context_length=tok.context_length)).eval()
    return model, tok


def test_clip_score_is_w_times_positive_cosine_from_the_models_logits(judge):
    model, tok = judge
    images = torch.rand(4, 3, 16, 16)
    captions = [r[0] for r in REFS]
    tokens = tok(captions)
    with torch.no_grad():
        out = model(images, tokens["input_ids"], tokens["attention_mask"])
    cos = out.logits_per_image.diag() / out.logit_scale  # (4,)
    ours = clip_score(model, tok, images, captions)
    torch.testing.assert_close(ours, 2.5 * cos.clamp(min=0))
    assert (cos < 0).any() or (cos > 0).all()
    torch.testing.assert_close(clip_score(model, tok, images, captions, w=1.0), cos.clamp(min=0))
    with pytest.raises(ValueError, match="N captions"):
        clip_score(model, tok, images, captions[:3])


def test_ref_clip_score_is_the_harmonic_mean(judge):
    model, tok = judge
    images = torch.rand(4, 3, 16, 16)
    ours = ref_clip_score(model, tok, images, HYPS, REFS)
    s = clip_score(model, tok, images, HYPS)
    for i in range(4):
        with torch.no_grad():
            h = model.encode_text(**{k: v for k, v in tok([HYPS[i]]).items()}, normalize=True)
            r = model.encode_text(**{k: v for k, v in tok(REFS[i]).items()}, normalize=True)
        best = max(float((h @ r.T).max()), 0.0)
        expected = 0.0 if s[i] == 0 or best == 0 else 2 * s[i] * best / (s[i] + best)
        assert float(ours[i]) == pytest.approx(float(expected), abs=1e-6)
    with pytest.raises(ValueError, match="reference"):
        ref_clip_score(model, tok, images, HYPS, REFS[:3])
