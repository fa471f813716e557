"""Lesson 12's library: noisy pairs, rule and CLIP-score filters, deduplication, the multi-positive loss and
its recipe. Compared against naive loops, `clip_loss`, scikit-learn-free references and hand-made cases."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmcourse.data.noisy_pairs import (BOILERPLATE, DUPLICATES_PER_SOURCE, NOISE_KINDS, WEB_MIX, Pairs, clean_pairs,
                                       corrupt, mix_noise, rule_filter, trusted_and_pool)
from mmcourse.data.tokenizer import default_tokenizer
from mmcourse.data import zero_shot_metadata as meta
from mmcourse.evaluation.data_filtering import (choose_threshold, clip_scores, near_duplicates, top_fraction)
from mmcourse.objectives.losses import clip_loss
from mmcourse.objectives.multi_positive import (false_negative_stats, multi_positive_clip_loss,
                                                positives_from_captions, positives_from_labels)


@pytest.fixture(scope="module")
def clean():
    return clean_pairs("train")


# ------------------------------------------------------------------------------ noisy pairs
def test_clean_pairs_have_right_captions(clean):
    assert len(clean) == 1259 and clean.noise_rate() == 0.0
    for i in range(0, len(clean), 97):
        label = int(clean.labels[i])
        words = clean.captions[i].replace(".", " ").split()
        assert meta.DIGIT_CLASSNAMES[label] in words or meta.DIGIT_NUMERALS[label] in words


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_corrupt_changes_exactly_the_rate_and_is_deterministic(clean, kind):
    noisy = corrupt(clean, kind, 0.3, seed=0)
    assert noisy.noise.count(kind) == round(0.3 * len(clean)) and noisy.noise_rate() == pytest.approx(0.3, abs=1e-3)
    again = corrupt(clean, kind, 0.3, seed=0)
    assert again.captions == noisy.captions and torch.equal(again.images, noisy.images)
    assert clean.noise_rate() == 0.0  # the input is not modified
    untouched = ~noisy.is_noisy
    assert [c for c, k in zip(noisy.captions, untouched) if k] == [c for c, k in zip(clean.captions, untouched) if k]


def test_each_kind_does_what_it_says(clean):
    mis = corrupt(clean, "misaligned", 0.5, seed=1)
    idx = mis.is_noisy.nonzero().flatten().tolist()
    assert all(mis.captions[i] in clean.captions for i in idx)  # a real caption, of another image
    assert all(c in BOILERPLATE for c, k in zip(corrupt(clean, "boilerplate", 0.2).captions,
                                                 corrupt(clean, "boilerplate", 0.2).noise) if k == "boilerplate")
    shapes_words = set(" ".join(meta.COLOUR_NAMES + meta.SHAPE_NAMES).split())
    wrong = corrupt(clean, "wrong_vocabulary", 0.2)
    assert all(shapes_words & set(c.replace(".", " ").split()) for c, k in zip(wrong.captions, wrong.noise) if k != "clean")
    cut = corrupt(clean, "truncated", 0.2)
    for c, orig, k in zip(cut.captions, clean.captions, cut.noise):
        if k == "truncated":
            assert orig.startswith(c) and len(c.split()) < len(orig.rstrip(".").split())


def test_duplicates_copy_few_images_with_one_caption(clean):
    dup = corrupt(clean, "duplicates", 0.2, seed=0)
    sel = dup.is_noisy
    groups = dup.source[sel].unique()
    assert len(groups) == round(sel.sum().item() / DUPLICATES_PER_SOURCE)
    for g in groups.tolist():
        members = (dup.source == g).nonzero().flatten()
        assert len({dup.captions[i] for i in members}) == 1  # one caption repeated
        assert (dup.labels[members] == clean.labels[g]).all()
        assert (dup.images[members] - clean.images[g]).abs().max() < 0.2  # near-copies


def test_mix_noise_disjoint_and_order_free(clean):
    a = mix_noise(clean, {"misaligned": 0.1, "truncated": 0.2}, seed=3)
    b = mix_noise(clean, {"truncated": 0.2, "misaligned": 0.1}, seed=3)
    assert a.captions == b.captions and a.noise.count("misaligned") == 126 and a.noise.count("truncated") == 252


@pytest.mark.parametrize("rates, error", [({"typo": 0.1}, ValueError), ({"misaligned": 1.5}, ValueError),
                                          ({"misaligned": -0.1}, ValueError), ({"misaligned": True}, ValueError),
                                          ({"misaligned": 0.6, "boilerplate": 0.5}, ValueError),
                                          ([("misaligned", 0.1)], TypeError)])
def test_mix_noise_rejects_bad_rates(clean, rates, error):
    with pytest.raises(error):
        mix_noise(clean, rates)


def test_pairs_validate_and_subset(clean):
    with pytest.raises(ValueError, match="captions"):
        Pairs(clean.images, clean.captions[:-1], clean.labels, clean.noise, clean.source)
    with pytest.raises(ValueError, match="unknown noise"):
        Pairs(clean.images[:1], ["a"], clean.labels[:1], ["dirty"], clean.source[:1])
    sub = clean.subset([5, 2])
    assert sub.captions == [clean.captions[5], clean.captions[2]]
    with pytest.raises(ValueError):
        clean.subset([len(clean)])
    with pytest.raises(ValueError):
        clean.subset(torch.ones(3, dtype=torch.bool))


def test_trusted_and_pool_split_the_clean_pairs():
    trusted, pool = trusted_and_pool(200)
    assert len(trusted) == 200 and len(pool) == 1059 and trusted.noise_rate() == 0
    assert pool.noise_rate() == pytest.approx(sum(WEB_MIX.values()), abs=0.01)
    with pytest.raises(ValueError):
        trusted_and_pool(0)


def test_rule_filter_against_a_loop():
    vocab = default_tokenizer().hf.get_vocab()
    captions = ["a handwritten 7.", "image", "click here", "a photo of the", "a yellow square.", "a blurry zorp 7."]
    keep = rule_filter(captions, vocab)
    assert keep.tolist() == [True, False, False, True, True, False]
    assert rule_filter(["a 7."], vocab, min_words=3).tolist() == [False]
    with pytest.raises(TypeError):
        rule_filter("a handwritten 7.", vocab)


# ------------------------------------------------------------------------------ filters
def test_clip_scores_equal_a_loop_over_pairs(clean):
    from mmcourse.models.clip import CLIP
    from mmcourse.recipes.data_cleaning import cleaning_clip_config

    tok = default_tokenizer()
    torch.manual_seed(0)
    model = CLIP(cleaning_clip_config(tok)).eval()
    sub = clean.subset(range(6))
    scores = clip_scores(model, tok, sub.images, sub.captions)
    with torch.no_grad():
        loop = [F.cosine_similarity(model.encode_image(sub.images[i:i + 1]),
                                    model.encode_text(**tok([sub.captions[i]])), dim=-1).item() for i in range(6)]
    torch.testing.assert_close(scores, torch.tensor(loop), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        clip_scores(model, tok, sub.images, sub.captions[:5])


def test_top_fraction_keeps_the_best_with_stable_ties():
    s = torch.tensor([0.1, 0.9, 0.5, 0.5, 0.3])
    assert top_fraction(s, 0.4).tolist() == [False, True, True, False, False]
    assert top_fraction(s, 0.01).sum() == 1 and top_fraction(s, 1.0).all()
    for bad in (0, 1.5, -0.1, True):
        with pytest.raises(ValueError):
            top_fraction(s, bad)
    with pytest.raises(ValueError):
        top_fraction(torch.tensor([0.1, float("nan")]), 0.5)


def _threshold_loop(scores, noisy, max_noise):
    best = math.inf
    for t in scores.tolist():
        kept = scores >= t
        if noisy[kept].float().mean().item() <= max_noise + 1e-6:
            best = min(best, t)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_choose_threshold_equals_a_loop_over_thresholds(seed):
    g = torch.Generator().manual_seed(seed)
    scores = (torch.rand(30, generator=g) * 5).round() / 5  # many ties
    noisy = torch.rand(30, generator=g) > scores
    for max_noise in (0.0, 0.1, 0.3, 0.6):
        assert choose_threshold(scores, noisy, max_noise) == pytest.approx(_threshold_loop(scores, noisy, max_noise))


def test_choose_threshold_edge_cases():
    assert choose_threshold(torch.tensor([0.9, 0.1]), torch.tensor([True, False]), 0.1) == math.inf
    with pytest.raises(ValueError):
        choose_threshold(torch.tensor([0.9, 0.1]), torch.tensor([1, 0]), 0.1)
    with pytest.raises(ValueError):
        choose_threshold(torch.tensor([0.9, 0.1]), torch.tensor([True, False]), 1.0)


def test_near_duplicates_finds_chains_and_keeps_the_first():
    theta = 0.1
    angles = torch.tensor([0.0, 2 * theta, theta, 1.5, 3.0, 1.5 + theta / 2])
    x = torch.stack([angles.cos(), angles.sin()], dim=1) * torch.tensor([[1.0], [3.0], [0.5], [2.0], [1.0], [4.0]])
    dups = near_duplicates(x, 1 - math.cos(1.2 * theta))
    assert dups.keep.tolist() == [True, False, False, True, True, False]
    assert dups.n_groups == 2 and dups.group[0] == dups.group[1] == dups.group[2]
    assert near_duplicates(x, 0.0).keep.all()
    with pytest.raises(ValueError):
        near_duplicates(torch.zeros(2, 2), 0.1)
    with pytest.raises(ValueError):
        near_duplicates(x, 3.0)


# ------------------------------------------------------------------------------ multi-positive loss
def _unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(torch.randn(n, d, generator=g), dim=-1)


def test_identity_positives_give_the_clip_loss():
    a, b = _unit(9, 5, 0)
    torch.testing.assert_close(multi_positive_clip_loss(a, b, 7.0, torch.eye(9, dtype=torch.bool)), clip_loss(a, b, 7.0))


def test_multi_positive_equals_a_naive_loop():
    a, b = _unit(8, 4, 1)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2])
    pos = positives_from_labels(labels)
    logits = 5.0 * a @ b.T
    total = 0.0
    for i in range(8):  # image -> text, then text -> image
        js = [j for j in range(8) if labels[j] == labels[i]]
        total += -sum(logits[i].log_softmax(0)[j] for j in js) / len(js) / 16
        total += -sum(logits[:, i].log_softmax(0)[j] for j in js) / len(js) / 16
    torch.testing.assert_close(multi_positive_clip_loss(a, b, 5.0, pos), torch.as_tensor(total))


def test_positives_from_captions_and_errors():
    ids = torch.tensor([[2, 5, 3, 0], [2, 5, 3, 0], [2, 6, 3, 0]])
    assert positives_from_captions(ids).tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    a, b = _unit(3, 4, 2)
    with pytest.raises(ValueError, match="diagonal"):
        multi_positive_clip_loss(a, b, 1.0, torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(TypeError):
        multi_positive_clip_loss(a, b, 1.0, torch.eye(3))
    with pytest.raises(ValueError):
        multi_positive_clip_loss(a, b, 1.0, torch.eye(4, dtype=torch.bool))
    with pytest.raises(ValueError):
        positives_from_labels(torch.tensor([0.0, 1.0]))


def test_false_negative_stats_by_hand():
    logits = torch.tensor([[2.0, 2.0, 0.0], [1.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    pos = positives_from_labels(torch.tensor([0, 0, 1]))
    s = false_negative_stats(logits, pos)
    assert s["per_row"] == pytest.approx(2 / 3) and s["fraction"] == pytest.approx(2 / 6)
    p = logits.softmax(1)
    assert s["softmax_mass"] == pytest.approx(float((p[0, 1] + p[1, 0]) / 3))
    assert s["loss"] == pytest.approx(float(F.cross_entropy(logits, torch.arange(3))))
    masked = logits.clone()
    masked[0, 1] = masked[1, 0] = -math.inf
    assert s["loss_without"] == pytest.approx(float(F.cross_entropy(masked, torch.arange(3))))


# ------------------------------------------------------------------------------ the recipe
def test_recipe_keys_depend_on_the_data_and_validate(clean, tmp_path):
    from mmcourse.recipes.data_cleaning import pairs_recipe, train_on_pairs

    tok = default_tokenizer()
    noisy = corrupt(clean, "misaligned", 0.3)
    assert pairs_recipe(clean, tokenizer=tok).key() != pairs_recipe(noisy, tokenizer=tok).key()
    assert pairs_recipe(clean, tokenizer=tok).key() != pairs_recipe(clean, multi_positive=True, tokenizer=tok).key()
    assert pairs_recipe(clean, tokenizer=tok).key() == pairs_recipe(clean_pairs("train"), tokenizer=tok).key()
    with pytest.raises(ValueError, match="batch"):
        train_on_pairs(clean.subset(range(50)), cache_dir=tmp_path)
    with pytest.raises(TypeError):
        train_on_pairs(list(clean), cache_dir=tmp_path)


def test_a_short_training_run_learns_and_caches(clean, tmp_path):
    from mmcourse.evaluation.data_filtering import downstream_scores
    from mmcourse.recipes.data_cleaning import train_on_pairs

    model, tok, history = train_on_pairs(clean, steps=20, multi_positive=True, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("pairs_clip_*.pt"))) == 1 and history.loss[-1] < history.loss[0]
    test = clean_pairs("test")
    assert downstream_scores(model, tok, test.images, test.labels)["zero_shot_top1"] > 0.3  # chance is 0.1
    again, _, _ = train_on_pairs(clean, steps=20, multi_positive=True, cache_dir=tmp_path)
    torch.testing.assert_close(again.state_dict(), model.state_dict())
