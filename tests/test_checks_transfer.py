"""Transfer tasks of assignments 01-06: each reference against a trusted one, right answers pass
(written the way a learner would), and every typical mistake is named."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import fails_with
from mmcourse.evaluation import analysis
from mmcourse.evaluation import retrieval as evaluate
from mmcourse.objectives import losses
from mmcourse.classroom.checks import transfer as T
from mmcourse.models import TinyViT


# -- 01: SigLIP ------------------------------------------------------------------------------------

def siglip_loop(image_emb, text_emb, logit_scale, logit_bias):
    n = image_emb.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            logit = logit_scale * image_emb[i] @ text_emb[j] + logit_bias
            total = total - F.logsigmoid(z * logit)
    return total / n


def siglip_bce(image_emb, text_emb, logit_scale, logit_bias):  # 0/1 targets with BCE: the same loss
    logits = logit_scale * image_emb @ text_emb.T + logit_bias
    return F.binary_cross_entropy_with_logits(logits, torch.eye(len(logits), dtype=logits.dtype),
                                              reduction="sum") / len(logits)


@pytest.mark.parametrize("good", [siglip_loop, siglip_bce])
def test_siglip_right_answers_pass(good):
    assert T.check_siglip_loss(good).passed


def test_siglip_reference_is_open_clip():
    from open_clip.loss import SigLipLoss
    a, b = T._unit_pairs(7, 5, 0)
    expected = SigLipLoss()(a, b, torch.tensor(10.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64))
    torch.testing.assert_close(losses.siglip_loss(a, b, 10.0, -3.0), expected)


@pytest.mark.parametrize("wrong, fragment", [
    (T._siglip_with(labels="01"), "0 and 1"),
    (T._siglip_with(reduce="mean"), "all N² pairs"),
    (T._siglip_with(reduce="sum"), "without dividing by N"),
    (T._siglip_with(bias="scaled"), "bias is multiplied"),
    (T._siglip_with(bias="missing"), "bias is missing"),
    (lambda i, t, s, b: losses.clip_loss(i, t, s), "softmax loss"),
])
def test_siglip_mistakes_are_named(wrong, fragment):
    fails_with(T.check_siglip_loss, wrong, fragment)


# -- 02: the simplex floor ---------------------------------------------------------------------

def simplex(n):
    """n unit vectors in R^n with pairwise similarity -1/(n-1): centred one-hot vectors."""
    return F.normalize(torch.eye(n, dtype=torch.float64) - 1 / n, dim=-1)


@pytest.mark.parametrize("n, tau", [(2, 1.0), (5, 0.5), (128, 1.0), (30, 0.07)])
def test_simplex_floor_equals_info_nce_on_a_simplex(n, tau):
    z = simplex(n)
    assert T.reference_simplex_floor(n, tau) == pytest.approx(losses.info_nce(z, z, tau).item(), rel=1e-9)


def test_simplex_floor_is_below_random_and_optimised_arrangements():
    torch.manual_seed(0)
    n, tau = 8, 0.5
    floor = T.reference_simplex_floor(n, tau)
    for _ in range(20):
        z = F.normalize(torch.randn(n, n - 1, dtype=torch.float64), dim=-1)
        assert losses.info_nce(z, z, tau).item() >= floor
    z = torch.randn(n, n - 1, dtype=torch.float64, requires_grad=True)  # gradient descent finds the floor
    opt = torch.optim.Adam([z], lr=0.05)
    for _ in range(1500):
        opt.zero_grad()
        loss = losses.info_nce(F.normalize(z, dim=-1), F.normalize(z, dim=-1), tau)
        loss.backward()
        opt.step()
    assert loss.item() == pytest.approx(floor, abs=1e-4)
    assert T.reference_simplex_floor(128, 1.0) == pytest.approx(3.8576, abs=1e-4)


def test_simplex_floor_right_answer_passes():
    def good(n, temperature):
        s_neg = -1 / (n - 1) if n > 1 else 0.0
        return -math.log(math.exp(1 / temperature) / (math.exp(1 / temperature)
                                                      + (n - 1) * math.exp(s_neg / temperature)))
    assert T.check_simplex_floor(good).passed


@pytest.mark.parametrize("wrong, fragment", [
    (lambda n, t: math.log1p((n - 1) * math.exp(-2 / t)), "similarity -1"),
    (lambda n, t: math.log1p((n - 1) * math.exp(-1 / t)), "similarity 0"),
    (lambda n, t: math.log(n - 1) - (1 + 1 / (n - 1)) / t if n > 1 else 0.0, "positive's own term"),
    (lambda n, t: math.log(n), "chance"),
    (lambda n, t: math.log1p((n - 1) * math.exp(-(1 + 1 / (n - 1)) * t)), "multiplies"),
])
def test_simplex_floor_mistakes_are_named(wrong, fragment):
    fails_with(T.check_simplex_floor, wrong, fragment)


# -- 03: patchify ------------------------------------------------------------------------------

def test_patchify_then_linear_equals_tinyvit_conv():
    torch.manual_seed(0)
    vit = TinyViT(in_channels=3, image_size=8, patch_size=2, width=5, layers=1, heads=1)
    images = torch.randn(2, 3, 8, 8)
    conv = vit.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N, E)
    linear = T._reference_patchify(images, 2) @ vit.patch_embed.weight.reshape(5, -1).T
    torch.testing.assert_close(linear, conv)


def test_patchify_right_answers_pass():
    def loops(images, p):
        B, C, H, W = images.shape
        rows = [images[:, :, r:r + p, c:c + p].reshape(B, -1) for r in range(0, H, p) for c in range(0, W, p)]
        return torch.stack(rows, dim=1)
    assert T.check_patchify(loops).passed
    assert T.check_patchify(lambda x, p: F.unfold(x, p, stride=p).transpose(1, 2)).passed


@pytest.mark.parametrize("wrong, fragment", [
    (lambda x, p: F.unfold(x, p, stride=p), "in the columns"),
    (lambda x, p: x.reshape(x.shape[0], -1, x.shape[1] * p * p), "strips of pixels"),
    (lambda x, p: x.reshape(x.shape[0], x.shape[1], x.shape[2] // p, p, x.shape[3] // p, p)
     .permute(0, 4, 2, 1, 3, 5).reshape(x.shape[0], -1, x.shape[1] * p * p), "column order"),
    (lambda x, p: x.reshape(x.shape[0], x.shape[1], x.shape[2] // p, p, x.shape[3] // p, p)
     .permute(0, 2, 4, 3, 5, 1).reshape(x.shape[0], -1, x.shape[1] * p * p), "channel last"),
])
def test_patchify_mistakes_are_named(wrong, fragment):
    fails_with(T.check_patchify, wrong, fragment)


# -- 04: soft-target CLIP loss ----------------------------------------------------------------

def soft_loop(image_emb, text_emb, logit_scale, labels):
    logits = logit_scale * image_emb @ text_emb.T
    n = len(labels)
    total = 0.0
    for lg in (logits, logits.T):
        logp = lg.log_softmax(dim=1)
        for i in range(n):
            same = [j for j in range(n) if labels[j] == labels[i]]
            total = total - sum(logp[i, j] for j in same) / len(same)
    return total / (2 * n)


def test_soft_clip_loss_reference_against_a_loop_and_clip_loss():
    a, b = T._unit_pairs(6, 4, 0)
    y = torch.tensor([0, 1, 0, 2, 1, 0])
    torch.testing.assert_close(T.reference_soft_clip_loss(a, b, 7.0, y), soft_loop(a, b, 7.0, y))
    torch.testing.assert_close(T.reference_soft_clip_loss(a, b, 7.0, torch.arange(6)), losses.clip_loss(a, b, 7.0))


def test_soft_clip_loss_minimum_is_the_loss_floor():
    # the minimum of a cross-entropy is the target's entropy: mean ln n_{y_i}, exercise 3's floor
    y = torch.tensor([0, 0, 0, 1, 2, 2])
    protos = simplex(3)
    emb = protos[y]
    value = T.reference_soft_clip_loss(emb, emb, 1e3, y).item()
    floor = torch.bincount(y)[y].double().log().mean().item()
    assert value == pytest.approx(floor, abs=1e-6)


def test_soft_clip_loss_right_answer_passes():
    assert T.check_soft_clip_loss(soft_loop).passed


@pytest.mark.parametrize("wrong, fragment", [
    (lambda i, t, s, y: losses.clip_loss(i, t, s), "hard labels"),
    (lambda i, t, s, y: (F.cross_entropy(s * i @ t.T, (y[:, None] == y).to(i.dtype))
                         + F.cross_entropy(s * t @ i.T, (y[:, None] == y).to(i.dtype))) / 2, "do not sum to 1"),
    (lambda i, t, s, y: F.cross_entropy(s * i @ t.T, (y[:, None] == y).to(i.dtype)
                                        / (y[:, None] == y).sum(1, keepdim=True)), "only the image→text"),
])
def test_soft_clip_loss_mistakes_are_named(wrong, fragment):
    fails_with(T.check_soft_clip_loss, wrong, fragment)


# -- 05: several captions per image, mean and median rank ------------------------------------

def test_caption_ranks_reference_equals_the_library():
    for case in T._caption_cases():
        lg, idx = case.args
        n, t = lg.shape
        # retrieval_ranks takes embeddings: pass logits as image_emb @ I
        expected, _ = evaluate.retrieval_ranks(lg, torch.eye(t), text_to_image_index=idx)
        torch.testing.assert_close(T._reference_caption_ranks(lg, idx), expected)


def caption_ranks_loop(logits_per_image, text_to_image):
    n, t = logits_per_image.shape
    out = []
    for i in range(n):
        order = sorted(range(t), key=lambda j: (-logits_per_image[i, j].item(), j))
        out.append(min(order.index(j) for j in range(t) if text_to_image[j] == i))
    return torch.tensor(out)


def test_caption_ranks_right_answer_passes():
    assert T.check_caption_ranks(caption_ranks_loop).passed


@pytest.mark.parametrize("mistake, fragment", [
    ("first", "FIRST caption"), ("mean", "averaged the ranks"), ("worst", "WORST-ranked"),
    ("diag", "not the match of image i"), ("strict", "strictly better"),
])
def test_caption_ranks_mistakes_are_named(mistake, fragment):
    def wrong(lg, idx):
        n, t = lg.shape
        ranks = []
        for i in range(n):
            order = sorted(range(t), key=lambda j: (-lg[i, j].item(), j))
            mine = [order.index(j) for j in range(t) if idx[j] == i]
            if mistake == "first":
                ranks.append(order.index(int((idx == i).nonzero()[0, 0])))
            elif mistake == "mean":
                ranks.append(sum(mine) // len(mine))
            elif mistake == "worst":
                ranks.append(max(mine))
            elif mistake == "diag":
                ranks.append(order.index(i))
            else:
                ranks.append(min(int((lg[i] > lg[i, j]).sum()) for j in range(t) if idx[j] == i))
        return torch.tensor(ranks)
    fails_with(T.check_caption_ranks, wrong, fragment)


def test_rank_summary_reference_equals_retrieval_metrics():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(9, 4, generator=g), torch.randn(9, 4, generator=g)
    ranks, _ = evaluate.retrieval_ranks(img, txt)
    m = evaluate.retrieval_metrics(img, txt)
    assert T._reference_rank_summary(ranks) == (m["image_to_text_mean_rank"], m["image_to_text_median_rank"])


def test_rank_summary_right_answer_passes():
    assert T.check_rank_summary(lambda r: (float(r.float().mean() + 1), math.floor(np.median(r.numpy())) + 1)).passed


@pytest.mark.parametrize("wrong, fragment", [
    (lambda r: (r.float().mean().item(), float(np.median(r.numpy()))), "0-based"),
    (lambda r: (r.float().mean().item() + 1, float(np.median(r.numpy())) + 1), "not floored"),
    (lambda r: (r.float().mean().item() + 1, r.median().item() + 1.0), "LOWER of"),
    (lambda r: (math.floor(np.median(r.numpy())) + 1, r.float().mean().item() + 1), "swapped"),
])
def test_rank_summary_mistakes_are_named(wrong, fragment):
    fails_with(T.check_rank_summary, wrong, fragment)


# -- 06: closing the modality gap ------------------------------------------------------------

def test_shift_gap_closes_the_gap_and_keeps_unit_norm():
    img, txt, _ = T._gap_cases()[0].args
    before = analysis.modality_gap(img, txt)
    i2, t2 = T.reference_shift_gap(img, txt, 1.0)
    torch.testing.assert_close(i2.norm(dim=-1), torch.ones(len(i2), dtype=i2.dtype))
    after = analysis.modality_gap(i2, t2)
    assert before > 0.5 and after < 0.25 * before
    i0, t0 = T.reference_shift_gap(img, txt, 0.0)
    assert analysis.modality_gap(i0, t0) == pytest.approx(before, rel=1e-6)


def test_shift_gap_right_answer_passes():
    def good(image_emb, text_emb, lam):
        i = image_emb / image_emb.norm(dim=1, keepdim=True)
        t = text_emb / text_emb.norm(dim=1, keepdim=True)
        gap = i.mean(0) - t.mean(0)
        i, t = i - lam * gap / 2, t + lam * gap / 2
        return i / i.norm(dim=1, keepdim=True), t / t.norm(dim=1, keepdim=True)
    assert T.check_shift_gap(good).passed


@pytest.mark.parametrize("wrong, fragment", [
    (lambda i, t, lam: tuple(x * 1.0 for x in T.reference_shift_gap(i, t, lam * 0)) if False else
     (F.normalize(i, dim=-1) - lam / 2 * (F.normalize(i, dim=-1).mean(0) - F.normalize(t, dim=-1).mean(0)),
      F.normalize(t, dim=-1) + lam / 2 * (F.normalize(i, dim=-1).mean(0) - F.normalize(t, dim=-1).mean(0))),
     "not unit length"),
    (lambda i, t, lam: T.reference_shift_gap(i, t, -lam), "WIDENS"),
    (lambda i, t, lam: T.reference_shift_gap(i, t, 2 * lam), "overshoot"),
    (lambda i, t, lam: (T.reference_shift_gap(i, t, 2 * lam)[0], F.normalize(t, dim=-1)), "only the images"),
])
def test_shift_gap_mistakes_are_named(wrong, fragment):
    fails_with(T.check_shift_gap, wrong, fragment)


# -- first attempts a learner made while trying the tasks, each named -----------------------------

@pytest.mark.parametrize("check, wrong, fragment", [
    (T.check_siglip_loss, T._siglip_with(labels="none"), "label sign is missing"),
    (T.check_simplex_floor, lambda n, t: math.log1p((n - 1) * math.exp(-(1 + 1 / n) / t)), "not −1/n"),
    (T.check_soft_clip_loss, lambda i, t, s, y: 2 * T.reference_soft_clip_loss(i, t, s, y), "added the two directions"),
    (T.check_caption_ranks, lambda lg, idx: T._reference_caption_ranks(lg, idx) + 1, "1-based"),
    (T.check_rank_summary, lambda r: (r.float().mean().item(), math.floor(np.median(r.numpy()))), "0-based"),
    (T.check_shift_gap, lambda i, t, lam: (
        F.normalize(i - lam / 2 * (F.normalize(i, dim=-1).mean(0) - F.normalize(t, dim=-1).mean(0)), dim=-1),
        F.normalize(t + lam / 2 * (F.normalize(i, dim=-1).mean(0) - F.normalize(t, dim=-1).mean(0)), dim=-1)),
     "RAW embeddings"),
])
def test_learners_first_attempts_are_named(check, wrong, fragment):
    message = fails_with(check, wrong, fragment)
    assert "Hint:" in message


def test_root_two_is_named_in_question_05_1():
    from mmcourse.classroom.checks import CheckFailed
    from mmcourse.classroom.checks.questions import check_answer
    with pytest.raises(CheckFailed, match="SUM"):
        check_answer("05.1", 2 ** 0.5)
    assert check_answer("04.4", "(a)").passed
