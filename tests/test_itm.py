"""ITM with hard negatives: ALBEF's distribution, never the positive or a duplicate of it, sampling
that follows the softmax, clear behaviour when no negative exists, and the ITM pairs and loss."""
import pytest
import torch
import torch.nn.functional as F

from mmcourse.models import itm_scores
from mmcourse.objectives import (build_itm_pairs, hard_negative_weights, itm_loss_fn, same_caption_mask,
                                 sample_hard_negatives)

CAPTIONS = ["a red circle.", "a blue square.", "a red circle.", "a cyan cross.", "a green triangle."]


def albef_weights(sim, same):
    """ALBEF's recipe, in float64: softmax over the whole row, zero the forbidden entries,
    renormalise (what torch.multinomial does implicitly)."""
    w = torch.softmax(sim.double(), dim=1).masked_fill(same, 0)
    return w / w.sum(1, keepdim=True)


def test_same_caption_mask_from_strings_and_ids():
    same = same_caption_mask(CAPTIONS)
    expected = torch.tensor([[a == b for b in CAPTIONS] for a in CAPTIONS])
    assert torch.equal(same, expected)
    ids = torch.tensor([[2, 5, 9, 3], [2, 6, 9, 3], [2, 5, 9, 3]])
    assert torch.equal(same_caption_mask(ids), torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 1]]).bool())
    with pytest.raises(ValueError, match="empty"):
        same_caption_mask([])


def test_weights_equal_albefs_recipe_and_skip_duplicates():
    g = torch.Generator().manual_seed(0)
    sim = 5 * torch.randn(5, 5, generator=g)
    same = same_caption_mask(CAPTIONS)
    w = hard_negative_weights(sim, same)
    torch.testing.assert_close(w.double(), albef_weights(sim, same), atol=1e-6, rtol=1e-5)
    assert (w[same] == 0).all() and torch.allclose(w.sum(1), torch.ones(5))
    # default mask: the diagonal only
    torch.testing.assert_close(hard_negative_weights(sim).double(), albef_weights(sim, torch.eye(5).bool()),
                               atol=1e-6, rtol=1e-5)


def test_sampling_never_draws_the_positive_or_a_duplicate():
    g = torch.Generator().manual_seed(1)
    sim = torch.randn(5, 5, generator=g) + 10 * torch.eye(5)  # the positive is by far the most similar
    same = same_caption_mask(CAPTIONS)
    draws = torch.stack([sample_hard_negatives(sim, same, g) for _ in range(2000)])  # (2000, 5)
    assert not same[torch.arange(5).expand_as(draws), draws].any()
    assert (draws[:, 0] != 2).all() and (draws[:, 2] != 0).all()  # "a red circle." twice: never each other's negative


def test_sampling_follows_the_softmax():
    g = torch.Generator().manual_seed(2)
    sim = torch.tensor([[9.0, 2.0, 1.0, 0.0], [0.0, 9.0, 0.0, 0.0], [3.0, 1.0, 9.0, 2.0], [1.0, 1.0, 1.5, 9.0]])
    n = 6000
    draws = torch.stack([sample_hard_negatives(sim, generator=g) for _ in range(n)])  # (n, 4)
    freq = torch.stack([torch.bincount(draws[:, i], minlength=4) for i in range(4)]).double() / n
    expected = albef_weights(sim, torch.eye(4).bool())
    # binomial standard error <= sqrt(0.25 / 6000) = 0.0065: 4 sigma
    assert (freq - expected).abs().max() < 0.026, (freq, expected)
    # rows are drawn independently: row 1's uniform choice is uncorrelated with row 0's
    agree = (draws[:, 0] == draws[:, 1]).double().mean()
    assert abs(agree - (expected[0] * expected[1]).sum()) < 0.03


def test_random_negatives_are_uniform_over_allowed_captions():
    g = torch.Generator().manual_seed(3)
    sim = torch.randn(5, 5, generator=g) * 10
    same = same_caption_mask(CAPTIONS)
    draws = torch.stack([sample_hard_negatives(sim, same, g, hard=False) for _ in range(4000)])
    freq = torch.bincount(draws[:, 0], minlength=5).double() / 4000  # allowed for row 0: 1, 3, 4
    torch.testing.assert_close(freq, torch.tensor([0, 1 / 3, 0, 1 / 3, 1 / 3], dtype=torch.float64), atol=0.03, rtol=0)


def test_no_valid_negative_is_a_clear_error_or_a_skip():
    sim = torch.randn(3, 3)
    same = same_caption_mask(["a red circle."] * 3)
    with pytest.raises(ValueError, match=r"rows \[0, 1, 2\] have no allowed negative"):
        sample_hard_negatives(sim, same)
    assert sample_hard_negatives(sim, same, on_empty="skip").tolist() == [-1, -1, -1]
    assert (hard_negative_weights(sim, same) == 0).all()
    mixed = same_caption_mask(["x", "x", "y"])  # every row has an allowed entry
    assert sample_hard_negatives(sim, mixed).tolist()[:2] == [2, 2]
    with pytest.raises(ValueError, match="on_empty"):
        sample_hard_negatives(sim, same, on_empty="ignore")


def test_a_dominant_positive_cannot_underflow_the_row():
    """ALBEF's softmax over the whole row underflows to all zeros after zeroing the positive
    when the positive dominates (torch.multinomial then raises); ours never does."""
    sim = torch.tensor([[200.0, 0.0, -5.0], [0.0, 200.0, 0.0], [0.0, 0.0, 200.0]], dtype=torch.float16)
    albef = torch.softmax(sim.float(), 1).half().masked_fill(torch.eye(3).bool(), 0)
    assert (albef[0] == 0).all()  # the crash ALBEF's code runs into
    draws = sample_hard_negatives(sim, generator=torch.Generator().manual_seed(0))
    assert draws.tolist()[0] in (1, 2) and (draws != torch.arange(3)).all()
    w = hard_negative_weights(sim)
    assert torch.isfinite(w).all() and torch.allclose(w.sum(1), torch.ones(3))


@pytest.mark.parametrize("sim, same, match", [
    (torch.randn(3, 4), None, "square"), (torch.randn(3, 3), torch.eye(2).bool(), "bool mask"),
    (torch.tensor([[0.0, float("nan")], [0.0, 0.0]]), None, "NaN"),
])
def test_bad_inputs_are_named(sim, same, match):
    with pytest.raises(ValueError, match=match):
        sample_hard_negatives(sim, same)


def _batch(captions, B=None):
    B = len(captions)
    g = torch.Generator().manual_seed(4)
    return {"image": torch.randn(B, 3, 8, 8, generator=g), "input_ids": torch.arange(B)[:, None].repeat(1, 4),
            "attention_mask": torch.ones(B, 4, dtype=torch.long), "caption": captions}


def test_itm_pairs_are_positives_then_negatives():
    batch = _batch(CAPTIONS)
    sim = torch.randn(5, 5)
    pairs = build_itm_pairs(batch, sim, torch.Generator().manual_seed(0))
    assert pairs["image"].shape == (15, 3, 8, 8) and pairs["input_ids"].shape == (15, 4)
    assert pairs["label"].tolist() == [1] * 5 + [0] * 10
    img_id = lambda x: next(i for i in range(5) if torch.equal(x, batch["image"][i]))  # noqa: E731
    for k in range(15):
        i, t = img_id(pairs["image"][k]), int(pairs["input_ids"][k, 0])
        assert (CAPTIONS[i] == CAPTIONS[t]) == bool(pairs["label"][k])  # negatives never match
    # one caption repeated: every row still has a negative ("other" for the three, any of them for it)
    pairs = build_itm_pairs(_batch(["same"] * 3 + ["other"]), torch.randn(4, 4))
    assert pairs["label"].tolist() == [1] * 4 + [0] * 8
    # every caption the same: no negative exists, the rows are dropped (on_empty="skip"), not a crash
    assert build_itm_pairs(_batch(["same"] * 3), torch.randn(3, 3))["label"].tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="no allowed negative"):
        build_itm_pairs(_batch(["same"] * 3), torch.randn(3, 3), on_empty="error")
    # features computed in advance pair up exactly as the images they came from
    batch = _batch(CAPTIONS)
    with_features = {**{k: v for k, v in batch.items() if k != "image"}, "image_features": batch["image"].flatten(1)}
    sim = torch.randn(5, 5)
    a = build_itm_pairs(batch, sim, torch.Generator().manual_seed(1))
    b = build_itm_pairs(with_features, sim, torch.Generator().manual_seed(1))
    torch.testing.assert_close(b["image_features"], a["image"].flatten(1))
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["label"], b["label"])
    with pytest.raises(ValueError, match="neither 'image' nor 'image_features'"):
        build_itm_pairs({k: v for k, v in batch.items() if k != "image"}, sim)


def test_itm_loss_trains_a_matcher_and_scores_are_probabilities():
    from mmcourse.models import FusionConfig, FusionModel
    from mmcourse.models import CLIPConfig

    towers = CLIPConfig(image_size=8, in_channels=3, cnn_channels=(4, 8), image_width=16, text_width=16,
                        text_layers=1, vocab_size=8, context_length=4)
    torch.manual_seed(0)
    model = FusionModel(FusionConfig("cross_attention", 2, towers, dim=16))
    batch = _batch(CAPTIONS)
    loss = itm_loss_fn(lambda b: b["image"].flatten(1)[:, :5] @ torch.eye(5), hard=True)(model, batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.head.weight.grad.abs().sum() > 0
    p = itm_scores(model, batch["image"], batch["input_ids"], batch["attention_mask"], batch_size=2)
    assert p.shape == (5,) and ((0 <= p) & (p <= 1)).all()
    model.eval()  # BatchNorm: itm_scores uses the running statistics
    full = F.softmax(model(batch["image"], batch["input_ids"], batch["attention_mask"]), -1)[:, 1]
    torch.testing.assert_close(p, full.detach())


def test_itm_loss_on_image_features_equals_the_loss_on_images():
    """A matcher with frozen towers trains on the image tower's output computed once: same pairs, same loss."""
    from mmcourse.models import CLIPConfig, FusionConfig, FusionModel

    towers = CLIPConfig(image_size=8, in_channels=3, cnn_channels=(4, 8), image_width=16, text_width=16,
                        text_layers=1, vocab_size=8, context_length=4)
    torch.manual_seed(0)
    model = FusionModel(FusionConfig("cross_attention", 2, towers, dim=16, freeze_towers=True)).train()
    batch = _batch(CAPTIONS)
    similarity = lambda b: torch.eye(5) * 3  # noqa: E731
    on_images = itm_loss_fn(similarity, hard=True, seed=3)(model, batch)
    cached = {**{k: v for k, v in batch.items() if k != "image"}, "image_features": model.encode_image(batch["image"])}
    on_features = itm_loss_fn(similarity, hard=True, seed=3)(model, cached)
    torch.testing.assert_close(on_features, on_images)
