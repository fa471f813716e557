"""Caption metrics: BLEU against a hand computation, CIDEr-D against pycocoevalcap called directly,
CLIPScore and RefCLIPScore against the CLIP model's own logits."""
from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from mmcourse.evaluation import clip_score, cider, coco_tokenize, corpus_bleu, ref_clip_score

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

    score, per_image = cider(HYPS, REFS)
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
