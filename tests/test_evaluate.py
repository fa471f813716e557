"""mmcourse.evaluation.zero_shot against references: open_clip's own functions (imported from the
installed `open_clip` / `open_clip_train`), naive loops and scikit-learn."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmcourse import evaluation as ev
from mmcourse.norms import l2_normalize

open_clip = pytest.importorskip("open_clip")
open_clip_train = pytest.importorskip("open_clip_train.train")
get_clip_metrics = open_clip_train.get_clip_metrics  # the reference, imported, not transcribed


# ----------------------------------------------------------------------------- stubs
class WordTokenizer:
    """Whitespace tokenizer over a growing vocabulary; pads with 0 and returns a mask."""

    def __init__(self, as_tensor: bool = False):
        self.vocab: dict[str, int] = {}
        self.as_tensor = as_tensor

    def __call__(self, texts):
        ids = [[self.vocab.setdefault(w, len(self.vocab) + 1) for w in t.split()] for t in texts]
        length = max(len(i) for i in ids)
        input_ids = torch.zeros(len(texts), length, dtype=torch.long)
        mask = torch.zeros(len(texts), length, dtype=torch.long)
        for row, i in enumerate(ids):
            input_ids[row, : len(i)] = torch.tensor(i)
            mask[row, : len(i)] = 1
        if self.as_tensor:
            return input_ids
        return {"input_ids": input_ids, "attention_mask": mask}


class StubCLIP(torch.nn.Module):
    """Mean of word embeddings (unnormalised, so norms differ) and a linear image tower."""

    def __init__(self, dim: int = 6, vocab: int = 200, pixels: int = 12):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.words = torch.nn.Parameter(torch.randn(vocab, dim, generator=g) * torch.rand(vocab, 1, generator=g) * 3)
        self.image = torch.nn.Linear(pixels, dim)

    def encode_text(self, input_ids, attention_mask=None, normalize=False):
        mask = (input_ids > 0).float() if attention_mask is None else attention_mask.float()
        x = (self.words[input_ids] * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_image(self, image, normalize=False):
        x = self.image(image.flatten(1))
        return F.normalize(x, dim=-1) if normalize else x


CLASSNAMES = ["zero", "one", "two", "three", "four", "five", "six"]
TEMPLATES = ["a photo of the digit {}.", "a handwritten {}", "{} written badly", "the number {} again"]


# ------------------------------------------------------------------ zero-shot classifier
def test_classifier_shape_unit_columns_and_naive_loop():
    model, tok = StubCLIP(), WordTokenizer()
    w = ev.build_zero_shot_classifier(model, tok, CLASSNAMES, TEMPLATES, num_classes_per_batch=3)
    assert w.shape == (6, len(CLASSNAMES))
    torch.testing.assert_close(w.norm(dim=0), torch.ones(len(CLASSNAMES)))
    for c, name in enumerate(CLASSNAMES):  # naive: one class, one template at a time
        embs = []
        for t in TEMPLATES:
            tokens = tok([t.format(name)])
            embs.append(F.normalize(model.encode_text(**tokens)[0], dim=0))
        mean = torch.stack(embs).mean(0)
        torch.testing.assert_close(w[:, c], (mean / mean.norm()).detach())


def test_classifier_equals_open_clip_with_strings_and_callables():
    model, tok = StubCLIP(), WordTokenizer(as_tensor=True)  # open_clip's tokenizers return a tensor
    ours = ev.build_zero_shot_classifier(model, tok, CLASSNAMES, TEMPLATES)
    theirs = open_clip.build_zero_shot_classifier(model, tok, CLASSNAMES, TEMPLATES, num_classes_per_batch=4)
    torch.testing.assert_close(ours, theirs)
    callables = [lambda c, t=t: t.format(c) for t in TEMPLATES]
    torch.testing.assert_close(ev.build_zero_shot_classifier(model, tok, CLASSNAMES, callables), theirs)
    # Ensembling matters: a single template gives a different classifier.
    single = ev.build_zero_shot_classifier(model, tok, CLASSNAMES, TEMPLATES[:1])
    assert (single - ours).abs().max() > 1e-2


def test_classifier_bad_input():
    model, tok = StubCLIP(), WordTokenizer()
    with pytest.raises(ValueError, match="templates must be a non-empty"):
        ev.build_zero_shot_classifier(model, tok, CLASSNAMES, [])
    with pytest.raises(ValueError, match="classnames must be a non-empty"):
        ev.build_zero_shot_classifier(model, tok, [], TEMPLATES)
    with pytest.raises(ValueError, match="ignores the class name"):
        ev.build_zero_shot_classifier(model, tok, CLASSNAMES, ["a photo of a digit."])
    with pytest.raises(ValueError, match="one positional"):
        ev.build_zero_shot_classifier(model, tok, CLASSNAMES, ["a {colour} thing"])
    with pytest.raises(ValueError, match="duplicate class names"):
        ev.build_zero_shot_classifier(model, tok, ["one", "two", "one"], TEMPLATES)


def test_classifier_nan_model_raises():
    model, tok = StubCLIP(), WordTokenizer()
    with torch.no_grad():
        model.words.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        ev.build_zero_shot_classifier(model, tok, CLASSNAMES, TEMPLATES)


def test_class_embedding_by_name():
    model, tok = StubCLIP(), WordTokenizer()
    w = ev.build_zero_shot_classifier(model, tok, CLASSNAMES, TEMPLATES)
    torch.testing.assert_close(ev.class_embedding(w, CLASSNAMES, "three"), w[:, 3])
    with pytest.raises(ValueError, match="unknown class name 'sevn'"):
        ev.class_embedding(w, CLASSNAMES, "sevn")


def test_zero_shot_logits_and_errors():
    g = torch.Generator().manual_seed(1)
    img, w = torch.randn(5, 4, generator=g), F.normalize(torch.randn(4, 3, generator=g), dim=0)
    expected = 100 * torch.stack([torch.stack([F.cosine_similarity(img[i], w[:, c], dim=0) for c in range(3)])
                                  for i in range(5)])
    torch.testing.assert_close(ev.zero_shot_logits(img, w), expected)
    with pytest.raises(ValueError, match=r"\(C, D\) matrix needs .T"):
        ev.zero_shot_logits(img, w.T)
    with pytest.raises(ValueError, match="NaN"):
        ev.zero_shot_logits(torch.full((2, 4), float("nan")), w)


# --------------------------------------------------------------------------- accuracy
def test_accuracy_matches_manual_topk_and_open_clip():
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(50, 10, generator=g), torch.randint(0, 10, (50,), generator=g)
    got = ev.accuracy(logits, target, topk=(1, 3, 5))
    for k in (1, 3, 5):
        manual = np.mean([target[i].item() in logits[i].argsort(descending=True)[:k].tolist() for i in range(50)])
        assert got[f"top{k}"] == pytest.approx(manual)
    # open_clip_train.zero_shot.accuracy, transcribed: its float(ndarray of shape (1,)) fails
    # on NumPy >= 2.4. It returns counts, not fractions.
    pred = logits.topk(5, 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    counts = [correct[:k].reshape(-1).float().sum().item() for k in (1, 5)]
    assert [got["top1"] * 50, got["top5"] * 50] == pytest.approx(counts)
    assert ev.accuracy(torch.eye(4), torch.arange(4), topk=(1,)) == {"top1": 1.0}


def test_accuracy_bad_input():
    with pytest.raises(ValueError, match="target must have shape"):
        ev.accuracy(torch.randn(4, 3), torch.zeros(5, dtype=torch.long), topk=(1,))
    with pytest.raises(ValueError, match=r"every k in topk must be in \[1, 3\]"):
        ev.accuracy(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), topk=(1, 5))
    with pytest.raises(ValueError, match="outside"):
        ev.accuracy(torch.randn(4, 3), torch.tensor([0, 1, 2, 3]), topk=(1,))


# --------------------------------------------------------------------------- retrieval
def _random_pairs(n, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    txt = F.normalize(img + 0.8 * torch.randn(n, d, generator=g), dim=-1)  # noisy partners
    return img, txt


def _tied_pairs(n, d=4, levels=2, seed=0):
    """Raw embeddings with few distinct directions, so many cosine similarities tie exactly (an
    all-zero row stays zero when normalised: cosine 0 with everything)."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, levels, (n, d), generator=g).float()
    txt = torch.randint(0, levels, (n, d), generator=g).float()
    return img, txt


def _open_clip_metrics(img, txt, logit_scale=1.0):
    """open_clip's `get_clip_metrics` on the features it expects: L2-normalised (by the same
    function retrieval_metrics uses, so that exact ties stay exact)."""
    return get_clip_metrics(l2_normalize(img), l2_normalize(txt), logit_scale=torch.tensor(logit_scale))


def _assert_same_metrics(ours, theirs):
    assert set(ours) == set(theirs)
    for key in theirs:
        assert ours[key] == pytest.approx(float(theirs[key]), abs=1e-12), key


@pytest.mark.parametrize("n", [1, 7, 64, 300])
def test_retrieval_equals_open_clip_on_random_inputs(n):
    img, txt = _random_pairs(n, seed=n)
    theirs = get_clip_metrics(img, txt, logit_scale=torch.tensor(14.3))
    _assert_same_metrics(ev.retrieval_metrics(img, txt, logit_scale=14.3), theirs)
    _assert_same_metrics(ev.retrieval_metrics(img, txt), theirs)  # scale does not change ranks
    assert 0 < theirs["image_to_text_R@1"] < 1 or n == 1  # a non-trivial case


@pytest.mark.parametrize("seed", range(5))
def test_retrieval_equals_open_clip_on_tied_inputs(seed):
    # open_clip sorts with torch.argsort(descending=True), which orders ties by index for rows
    # of up to 16 candidates on CPU (insertion sort); mmcourse always does (stable=True).
    img, txt = _tied_pairs(16, seed=seed)
    sims = l2_normalize(img) @ l2_normalize(txt).T
    assert (sims.unsqueeze(-1) == sims.unsqueeze(-2)).sum() > 16 * 16 * 2  # many exact ties
    _assert_same_metrics(ev.retrieval_metrics(img, txt, logit_scale=1.0), _open_clip_metrics(img, txt))


def test_retrieval_ties_large_match_open_clip_with_a_stable_sort(monkeypatch):
    # For longer rows torch's default sort leaves the order of ties unspecified, so open_clip's
    # numbers on tied inputs depend on the sort algorithm. With the sort made stable (the only
    # change) the two agree exactly; our result is also between the optimistic and pessimistic
    # tie conventions.
    img, txt = _tied_pairs(200, d=3, levels=3)
    ours = ev.retrieval_metrics(img, txt)
    stable_argsort = functools.partial(torch.argsort, stable=True)
    monkeypatch.setattr(torch, "argsort", stable_argsort)
    _assert_same_metrics(ours, _open_clip_metrics(img, txt))
    monkeypatch.undo()
    sims = l2_normalize(img) @ l2_normalize(txt).T
    pos = sims.diag().unsqueeze(1)
    optimistic = (sims > pos).sum(1)  # ties counted in our favour
    pessimistic = (sims >= pos).sum(1) - 1  # ties counted against us
    assert (optimistic != pessimistic).any()
    ranks, _ = ev.retrieval_ranks(img, txt)
    assert ((optimistic <= ranks) & (ranks <= pessimistic)).all()
    for k in (1, 5, 10):
        assert (optimistic < k).float().mean() >= ours[f"image_to_text_R@{k}"] >= (pessimistic < k).float().mean()


def test_retrieval_ranks_by_hand():
    # 3 images x 3 captions; correct pairs on the diagonal.
    sims = torch.tensor([[0.9, 0.1, 0.0],   # image 0: caption 0 first -> rank 0
                         [0.8, 0.5, 0.7],   # image 1: caption 1 third -> rank 2
                         [0.2, 0.3, 0.1]]) / 2  # image 2: caption 2 third -> rank 2
    # unit rows whose cosine similarities are sims: a 4th coordinate the captions do not use
    img = torch.cat([sims, (1 - sims.pow(2).sum(1, keepdim=True)).sqrt()], dim=1)  # (3, 4)
    txt = torch.eye(3, 4)  # img @ txt.T == sims
    i2t, t2i = ev.retrieval_ranks(img, txt)
    assert i2t.tolist() == [0, 2, 2]
    assert t2i.tolist() == [0, 0, 1]  # columns: (.9,.8,.2), (.1,.5,.3), (0,.7,.1)
    m = ev.retrieval_metrics(img, txt)
    assert m["image_to_text_R@1"] == pytest.approx(1 / 3)
    assert m["image_to_text_mean_rank"] == pytest.approx((1 + 3 + 3) / 3)
    assert m["image_to_text_median_rank"] == 3
    assert m["text_to_image_mean_rank"] == pytest.approx((1 + 1 + 2) / 3)
    assert m["text_to_image_R@1"] == pytest.approx(2 / 3)


def _naive_multi_caption(img, txt, index, k):
    sims = l2_normalize(img) @ l2_normalize(txt).T  # cosine similarities
    n, t = sims.shape
    i2t_hits = 0
    for i in range(n):
        top = sorted(range(t), key=lambda j: (-sims[i, j].item(), j))[:k]
        i2t_hits += any(index[j] == i for j in top)
    t2i_hits = 0
    for j in range(t):
        top = sorted(range(n), key=lambda i: (-sims[i, j].item(), i))[:k]
        t2i_hits += index[j] in top
    return i2t_hits / n, t2i_hits / t


@pytest.mark.parametrize("tied", [False, True])
def test_several_captions_per_image_against_naive_loops(tied):
    n, per = 20, 5  # COCO-style: five captions per image, shuffled
    g = torch.Generator().manual_seed(3)
    index = torch.arange(n).repeat_interleave(per)[torch.randperm(n * per, generator=g)]
    if tied:
        img, txt = _tied_pairs(n, d=3, levels=3)[0], torch.randint(0, 3, (n * per, 3), generator=g).float()
    else:
        img = F.normalize(torch.randn(n, 8, generator=g), dim=-1)
        txt = F.normalize(img[index] + 1.0 * torch.randn(n * per, 8, generator=g), dim=-1)
    m = ev.retrieval_metrics(img, txt, text_to_image_index=index)
    for k in (1, 5, 10):
        i2t, t2i = _naive_multi_caption(img, txt, index.tolist(), k)
        assert m[f"image_to_text_R@{k}"] == pytest.approx(i2t)
        assert m[f"text_to_image_R@{k}"] == pytest.approx(t2i)
    k = 5 if tied else 1  # ties by the dozen push every image's own captions past rank 1
    assert 0 < m[f"image_to_text_R@{k}"] < 1 and 0 < m["text_to_image_R@5"] < 1  # a non-trivial case


def test_several_captions_reduces_to_open_clip_when_one_each():
    img, txt = _random_pairs(30, seed=5)
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(0))
    ours = ev.retrieval_metrics(img, txt[perm], text_to_image_index=perm)  # caption j describes image perm[j]
    theirs = get_clip_metrics(img, txt, 1.0)
    for key in theirs:
        assert ours[key] == pytest.approx(float(theirs[key])), key


def test_retrieval_bad_input():
    img, txt = _random_pairs(4)
    with pytest.raises(ValueError, match="got 4 images and 3 captions"):
        ev.retrieval_metrics(img, txt[:3])
    with pytest.raises(ValueError, match="same embedding size"):
        ev.retrieval_metrics(img, txt[:, :5])
    with pytest.raises(ValueError, match="NaN"):
        ev.retrieval_metrics(img, torch.full_like(txt, float("nan")))
    with pytest.raises(ValueError, match=r"images \[3\] have no caption"):
        ev.retrieval_metrics(img, txt, text_to_image_index=[0, 1, 2, 2])
    with pytest.raises(ValueError, match="outside"):
        ev.retrieval_metrics(img, txt, text_to_image_index=[0, 1, 2, 4])
    with pytest.raises(ValueError, match="logit_scale must be positive"):
        ev.retrieval_metrics(img, txt, logit_scale=-1.0)


# ------------------------------------------------------------------- datasets and probes
def test_encode_dataset_concatenates_normalises_and_restores_mode():
    model, tok = StubCLIP(pixels=3 * 2 * 2), WordTokenizer()
    g = torch.Generator().manual_seed(0)
    batches = []
    for b in range(3):
        tokens = tok([f"caption {b} {i}" for i in range(4)])
        batches.append({"image": torch.randn(4, 3, 2, 2, generator=g), **tokens, "label": torch.arange(4) + b})
    model.train()
    img, txt, labels = ev.encode_dataset(model, batches)
    assert model.training
    assert img.shape == (12, 6) and txt.shape == (12, 6) and labels.tolist() == [0, 1, 2, 3, 1, 2, 3, 4, 2, 3, 4, 5]
    expected = F.normalize(model.encode_image(torch.cat([b["image"] for b in batches])), dim=-1).detach()
    torch.testing.assert_close(img, expected)
    torch.testing.assert_close(txt[4], F.normalize(model.encode_text(**tok(["caption 1 0"]))[0], dim=0).detach())
    with pytest.raises(ValueError, match="no batches"):
        ev.encode_dataset(model, [])


def test_linear_probe_matches_sklearn_directly():
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g)
    y_train, y_test = torch.randint(0, 4, (200,), generator=g), torch.randint(0, 4, (100,), generator=g)
    x_train = centres[y_train] + 1.5 * torch.randn(200, 16, generator=g)
    x_test = centres[y_test] + 1.5 * torch.randn(100, 16, generator=g)
    result = ev.linear_probe(x_train, y_train, x_test, y_test, C=0.5)
    ref = LogisticRegression(C=0.5, max_iter=1000).fit(F.normalize(x_train, dim=-1).double().numpy(), y_train.numpy())
    expected = ref.score(F.normalize(x_test, dim=-1).double().numpy(), y_test.numpy())
    assert result.accuracy == pytest.approx(expected)
    assert 0.6 < result.accuracy < 1.0  # learnable but not trivial
    np.testing.assert_allclose(result.classifier.coef_, ref.coef_, rtol=1e-6, atol=1e-8)
    acc, clf = result  # unpacks like a tuple
    assert acc == result.accuracy and clf is result.classifier


def test_linear_probe_bad_input():
    x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    with pytest.raises(ValueError, match="labels have shape"):
        ev.linear_probe(x, y[:9], x, y)
    with pytest.raises(ValueError, match="differ in size"):
        ev.linear_probe(x, y, x[:, :2], y)
    with pytest.raises(ValueError, match="NaN"):
        ev.linear_probe(x, y, torch.full_like(x, float("nan")), y)


# --------------------------------------------------------------- supervised / fine-tuning
def _tiny_clip():
    from mmcourse.models import CLIP, CLIPConfig

    torch.manual_seed(0)
    return CLIP(CLIPConfig(image_size=8, in_channels=1, image_width=16, cnn_channels=(4, 8), vocab_size=20,
                           context_length=6, text_width=16, text_layers=1, text_heads=2, embed_dim=8))


def test_image_classifier_starts_at_zero_shot_logits():
    clip = _tiny_clip()
    weights = F.normalize(torch.randn(8, 3), dim=0)  # (D, C)
    model = ev.ImageClassifier(clip, zero_shot_weights=weights, logit_scale=50.0).eval()
    images = torch.rand(5, 1, 8, 8)
    expected = ev.zero_shot_logits(clip.encode_image(images).detach(), weights, logit_scale=50.0)
    torch.testing.assert_close(model(images).detach(), expected)
    labels = torch.tensor([0, 1, 2, 0, 1])
    batch = {"image": images, "label": labels}
    torch.testing.assert_close(ev.classification_loss(model, batch), F.cross_entropy(model(images), labels))
    loader = [batch, {"image": images[:2], "label": labels[:2]}]
    manual = ((model(images).argmax(1) == labels).sum() + (model(images[:2]).argmax(1) == labels[:2]).sum()) / 7
    assert ev.classifier_accuracy(model, loader) == pytest.approx(manual.item())


def test_image_classifier_random_head_and_errors():
    model = ev.ImageClassifier(_tiny_clip(), num_classes=4)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 4)
    with pytest.raises(ValueError, match="exactly one of"):
        ev.ImageClassifier(_tiny_clip())
    with pytest.raises(ValueError, match="no batches"):
        ev.classifier_accuracy(model, [])


# --------------------------------------------------- raw (not unit) and low-precision embeddings
def test_retrieval_with_raw_embeddings_ranks_by_cosine():
    # Two pairs; image 0 is raw encoder output of norm 20, image 1 of norm 1. By cosine each
    # caption's own image is first; by raw dot product image 0's length wins caption 1 (R@1 0.5).
    img = torch.tensor([[0.8, 0.6], [0.6, 0.8]]) * torch.tensor([[20.0], [1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert (img @ txt.T).argmax(dim=0).tolist() == [0, 0]  # the silent wrong answer of raw dot products
    m = ev.retrieval_metrics(img, txt)
    assert m["text_to_image_R@1"] == 1.0 and m["image_to_text_R@1"] == 1.0
    assert m["text_to_image_mean_rank"] == 1.0
    _assert_same_metrics(m, get_clip_metrics(F.normalize(img, dim=-1), txt, torch.tensor(1.0)))
    i2t, t2i = ev.retrieval_ranks(img, txt * 7)
    assert i2t.tolist() == [0, 0] and t2i.tolist() == [0, 0]


def test_retrieval_raw_equals_normalised_on_random_inputs():
    img, txt = _random_pairs(50, seed=7)
    g = torch.Generator().manual_seed(1)
    scale_i, scale_t = torch.rand(50, 1, generator=g) * 30 + 0.01, torch.rand(50, 1, generator=g) * 30 + 0.01
    ranks = ev.retrieval_ranks(img * scale_i, txt * scale_t)
    ref = ev.retrieval_ranks(img, txt)
    assert torch.equal(ranks[0], ref[0]) and torch.equal(ranks[1], ref[1])
    assert not torch.equal(ev.retrieval_ranks(img, txt)[1],
                           torch.argsort(torch.argsort((img * scale_i @ txt.T).T, dim=1, descending=True), dim=1)
                           .diagonal())  # raw dot products would rank differently


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_retrieval_and_zero_shot_low_precision_with_a_zero_row(dtype):
    img, txt = _random_pairs(40, seed=8)
    img, txt = img * 3, txt.clone()
    img[4] = 0  # a dead image tower: cosine 0 with every caption, never NaN
    low_img, low_txt = img.to(dtype), txt.to(dtype)
    ranks = ev.retrieval_ranks(low_img, low_txt)
    ref = ev.retrieval_ranks(low_img.float(), low_txt.float())  # same rounded values, float32 arithmetic
    assert torch.equal(ranks[0], ref[0]) and torch.equal(ranks[1], ref[1])
    m = ev.retrieval_metrics(low_img, low_txt)
    assert all(np.isfinite(v) for v in m.values())
    w = F.normalize(torch.randn(8, 5, generator=torch.Generator().manual_seed(0)), dim=0)
    logits = ev.zero_shot_logits(low_img, w.to(dtype))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert (logits[4] == 0).all()
    torch.testing.assert_close(logits, ev.zero_shot_logits(low_img.float(), w.to(dtype).float()))


def test_zero_shot_logits_normalise_the_classifier_columns_too():
    g = torch.Generator().manual_seed(2)
    img, w = torch.randn(6, 4, generator=g), F.normalize(torch.randn(4, 3, generator=g), dim=0)
    raw = w * torch.tensor([[0.5, 3.0, 40.0]])  # class embeddings of different lengths
    torch.testing.assert_close(ev.zero_shot_logits(img * 9, raw), ev.zero_shot_logits(img, w))
    assert ev.zero_shot_logits(img, raw).abs().max() <= 100 + 1e-4  # cosine scale: at most logit_scale


def test_linear_probe_raw_scale_does_not_matter():
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(3, 8, generator=g)
    y = torch.randint(0, 3, (90,), generator=g)
    x = centres[y] + torch.randn(90, 8, generator=g)
    scaled = x * (torch.rand(90, 1, generator=g) * 50 + 0.1)
    a, b = ev.linear_probe(x[:60], y[:60], x[60:], y[60:]), ev.linear_probe(scaled[:60], y[:60], scaled[60:], y[60:])
    assert a.accuracy == b.accuracy
    np.testing.assert_allclose(a.classifier.coef_, b.classifier.coef_, rtol=1e-4, atol=1e-6)
    half = ev.linear_probe(x[:60].half(), y[:60], x[60:].half(), y[60:])
    assert 0 < half.accuracy <= 1


class _PositionNoise(torch.nn.Module):
    """A text model whose output depends, in the last bits, on where in the batch a text sits (as a
    multi-threaded matmul's blocking can make it); real in every other way (a bag of embeddings)."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(64, 8)

    def encode_text(self, input_ids, attention_mask=None, normalize=False):
        out = self.emb(input_ids).sum(1)  # (B, D)
        return out * (1 + 1e-6 * torch.arange(len(out)).unsqueeze(1))


class _UnknownWords:
    """Maps every word outside a small vocabulary to one [UNK] id, as the course tokenizer does."""

    vocab = {"a": 1, "photo": 2, "of": 3, "six": 4}

    def __call__(self, texts):
        ids = torch.tensor([[self.vocab.get(w, 9) for w in t.split()] for t in texts])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.mark.parametrize("as_tensor", [False, True])
def test_texts_with_the_same_tokens_get_bit_identical_embeddings(as_tensor):
    """Prompts whose class words are all [UNK] tie exactly, wherever they sit in the batch: a zero-shot
    argmax between them never depends on the thread count (lesson 11's French digit names)."""
    torch.manual_seed(0)
    model, tok = _PositionNoise(), _UnknownWords()
    if as_tensor:
        tok = lambda texts, _t=_UnknownWords(): _t(texts)["input_ids"]  # noqa: E731
    names = ["zéro", "un", "deux", "six", "sept"]
    emb = ev.encode_texts(model, tok, [f"a photo of {n}" for n in names])  # (5, 8)
    for i in (1, 2, 4):
        assert torch.equal(emb[i], emb[0])  # all three [UNK]: one embedding
    assert not torch.equal(emb[3], emb[0])  # "six" is a known word
    noisy = l2_normalize(model.encode_text(tok([f"a photo of {n}" for n in names])["input_ids"]
                                           if not as_tensor else tok([f"a photo of {n}" for n in names])))
    assert not torch.equal(noisy[1], noisy[0])  # without the rule they would differ
    torch.testing.assert_close(emb, noisy, rtol=1e-5, atol=1e-6)  # and otherwise the same embeddings
    classifier = ev.build_zero_shot_classifier(model, tok, names, ["a photo of {}"])
    pred = ev.zero_shot_logits(emb[[0, 3]], classifier).argmax(1)
    assert pred.tolist() == [0, 3]  # a tie goes to the first class, always


def test_classes_with_the_same_weights_get_bit_identical_logits(monkeypatch):
    """However the matmul sums (here a stand-in that perturbs each column's last bits by its position),
    equal class columns score equally, so the first of them wins every tie."""
    g = torch.Generator().manual_seed(0)
    image = l2_normalize(torch.randn(6, 8, generator=g))
    distinct = l2_normalize(torch.randn(8, 3, generator=g), dim=0)
    classifier = distinct[:, [0, 1, 1, 2, 1]]  # classes 1, 2 and 4 share one vector
    real_matmul = torch.Tensor.__matmul__

    def position_dependent(a, b):
        out = real_matmul(a, b)
        return out * (1 + 1e-6 * torch.arange(out.shape[1]))

    monkeypatch.setattr(torch.Tensor, "__matmul__", position_dependent)
    logits = ev.zero_shot_logits(image, classifier)
    monkeypatch.undo()
    assert torch.equal(logits[:, 1], logits[:, 2]) and torch.equal(logits[:, 1], logits[:, 4])
    torch.testing.assert_close(logits, 100 * image @ classifier, rtol=1e-5, atol=1e-5)
    assert set(logits.argmax(1).tolist()) <= {0, 1, 3}  # a tied class is always the first of its group
