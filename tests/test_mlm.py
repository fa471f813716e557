"""The MLM loss and accuracy against F.cross_entropy and a naive loop; the masked language model
(tied head, bidirectional attention, cross-attention to the image); training with `fit`."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmcourse.objectives.losses import masked_token_accuracy, mlm_loss
from mmcourse.data.masking import IGNORE_INDEX, MaskingCollator, mask_tokens
from mmcourse.models import (MLMConfig, MaskedLanguageModel, cross_attention_weights, mlm_loss_fn, predict_masked,
                             word_class_ids)
from mmcourse.data.tokenizer import default_tokenizer

TOK = default_tokenizer()


def _logits_labels(B=4, L=7, V=11, seed=0, p=0.3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, L, V, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (B, L), generator=g)
    labels[torch.rand(B, L, generator=g) > p] = IGNORE_INDEX
    labels[0, 0] = 3  # at least one target
    return logits, labels


# ---------------------------------------------------------------------------- the loss
def test_mlm_loss_is_cross_entropy_over_the_chosen_positions():
    logits, labels = _logits_labels()
    chosen = labels != IGNORE_INDEX
    naive = torch.stack([-F.log_softmax(logits[b, t], -1)[labels[b, t]] for b, t in chosen.nonzero()]).mean()
    torch.testing.assert_close(mlm_loss(logits, labels), naive)
    torch.testing.assert_close(mlm_loss(logits, labels), F.cross_entropy(logits.transpose(1, 2), labels))


def test_mlm_loss_ignores_whatever_sits_at_unchosen_positions():
    logits, labels = _logits_labels()
    other = logits.clone()
    other[labels == IGNORE_INDEX] = 1e6 * torch.randn_like(other[labels == IGNORE_INDEX])
    torch.testing.assert_close(mlm_loss(other, labels), mlm_loss(logits, labels))


def test_mlm_loss_without_targets_is_a_differentiable_zero_not_nan():
    logits = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.full((2, 5), IGNORE_INDEX)
    assert F.cross_entropy(logits.transpose(1, 2), labels).isnan()  # what the plain call gives
    loss = mlm_loss(logits, labels)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_mlm_loss_upcasts_half_precision():
    logits, labels = _logits_labels()
    loss = mlm_loss(logits.to(torch.bfloat16), labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, mlm_loss(logits.float(), labels), atol=0.05, rtol=0.02)


@pytest.mark.parametrize("change, match", [
    (lambda lo, la: (lo[0], la), "labels must have the shape"),
    (lambda lo, la: (lo, la.float()), "integer"),
    (lambda lo, la: (lo.long(), la), "floating-point"),
    (lambda lo, la: (lo, torch.where(la == 3, 11, la)), r"\[0, 11\)"),
    (lambda lo, la: (lo, torch.where(la == 3, -1, la)), "or -100"),
    (lambda lo, la: (lo.index_put((torch.tensor(0), torch.tensor(0)), torch.tensor(float("nan"), dtype=lo.dtype)), la), "NaN"),
])
def test_mlm_loss_bad_input_names_the_problem(change, match):
    logits, labels = _logits_labels()
    with pytest.raises(ValueError, match=match):
        mlm_loss(*change(logits, labels))
    with pytest.raises(ValueError, match=match):
        masked_token_accuracy(*change(logits, labels))


def test_masked_token_accuracy_counts_only_chosen_positions():
    logits, labels = _logits_labels(B=6, L=9, seed=1)
    pred = logits.argmax(-1)
    hits = [pred[b, t] == labels[b, t] for b in range(6) for t in range(9) if labels[b, t] != IGNORE_INDEX]
    assert masked_token_accuracy(logits, labels) == pytest.approx(sum(hits).item() / len(hits))
    # perfect at the targets, wrong everywhere else: accuracy 1
    perfect = F.one_hot(labels.clamp(min=0), 11).double()
    perfect[labels == IGNORE_INDEX] = F.one_hot(torch.tensor(0), 11).double()
    assert masked_token_accuracy(perfect, labels) == 1.0
    n = int((labels != IGNORE_INDEX).sum())
    one_wrong = labels.clone()
    one_wrong[0, 0] = (labels[0, 0] + 1) % 11
    assert masked_token_accuracy(perfect, one_wrong) == pytest.approx((n - 1) / n)
    with pytest.raises(ValueError, match="no chosen position"):
        masked_token_accuracy(logits, torch.full_like(labels, IGNORE_INDEX))


# ---------------------------------------------------------------------------- the model
def tiny(image_conditioned=False, **kw):
    torch.manual_seed(0)
    cfg = MLMConfig(vocab_size=TOK.vocab_size, context_length=TOK.context_length, width=16, text_layers=1,
                    fusion_layers=1, heads=2, image_conditioned=image_conditioned, cnn_channels=(4, 8), **kw)
    return MaskedLanguageModel(cfg).eval()


def _captions(n=3):
    enc = TOK(["a small red circle in the top left.", "a blue square.", "the cross in the center is cyan."][:n])
    return enc["input_ids"], enc["attention_mask"]


def test_the_decoder_is_tied_to_the_token_embedding():
    model = tiny()
    assert model.head.decoder.weight is model.text.token_embedding.weight
    with torch.no_grad():
        model.text.token_embedding.weight[7] += 1.0
    assert torch.equal(model.head.decoder.weight[7], model.text.token_embedding.weight[7])
    untied = sum(p.numel() for p in model.parameters()) + model.head.decoder.weight.numel()
    assert model.num_parameters() == untied - TOK.vocab_size * 16


def test_shapes_and_bidirectional_attention():
    model = tiny()
    ids, mask = _captions()
    out = model(ids, mask)
    assert out.logits.shape == (3, ids.shape[1], TOK.vocab_size) and out["hidden_states"].shape == (3, ids.shape[1], 16)
    # bidirectional: changing the LAST word changes the FIRST position's output (causal would not)
    changed = ids.clone()
    changed[0, 8] = TOK.get_vocab()["right"]
    with torch.no_grad():
        assert not torch.allclose(model(changed, mask).logits[0, 1], out.logits[0, 1])
    # padding never influences real tokens: the same logits with the padding columns cut off
    keep = int(mask.sum(1).max())
    assert keep < ids.shape[1]
    with torch.no_grad():
        torch.testing.assert_close(model(ids[:, :keep], mask[:, :keep]).logits, out.logits[:, :keep],
                                   atol=1e-5, rtol=1e-4)


def test_the_image_conditioned_model_reads_the_image():
    model = tiny(image_conditioned=True)
    ids, mask = _captions()
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        a = model(ids, mask, image=images).logits
        b = model(ids, mask, image=images.flip(0)).logits
    assert a.shape == (3, ids.shape[1], TOK.vocab_size)
    assert not torch.allclose(a[0], b[0])  # another image, other predictions
    assert torch.allclose(a[1], b[1], atol=1e-5)  # batch item 1 kept its image (the flip's middle)
    assert all(block.cross_attn is not None for block in model.fusion)
    assert all(block.cross_attn is None for block in tiny().fusion)


def test_cross_attention_weights_reproduce_the_attention_output():
    model = tiny(image_conditioned=True)
    ids, mask = _captions()
    images = torch.rand(3, 3, 32, 32)
    w = cross_attention_weights(model, ids, mask, images)  # (B, layers, h, L, N)
    n = model.config.image_grid ** 2
    assert w.shape == (3, 1, 2, ids.shape[1], n) and model.config.image_grid == 8
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
    # weights @ values, projected, is exactly what the CrossAttention module returned
    attn = model.fusion[0].cross_attn
    got = {}
    attn.register_forward_hook(lambda m, args, out: got.update(x=args[0], ctx=args[1], out=out))
    with torch.no_grad():
        model(ids, mask, image=images)
        _, v = attn.kv(got["ctx"]).split(16, dim=2)  # (B, N, E)
        v = v.view(3, n, 2, 8).transpose(1, 2)  # (B, h, N, d)
        y = (w[:, 0] @ v).transpose(1, 2).reshape(3, -1, 16)
        torch.testing.assert_close(attn.proj(y), got["out"], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="no cross-attention"):
        cross_attention_weights(tiny(), ids, mask, images)


def test_bad_inputs_name_the_problem():
    ids, mask = _captions()
    with pytest.raises(ValueError, match="image-conditioned"):
        tiny(image_conditioned=True)(ids, mask)
    with pytest.raises(ValueError, match="text-only"):
        tiny()(ids, mask, image=torch.rand(3, 3, 32, 32))
    with pytest.raises(ValueError, match=r"shape \(3, 3, 32, 32\)"):
        tiny(image_conditioned=True)(ids, mask, image=torch.rand(3, 3, 16, 16))
    with pytest.raises(ValueError, match="vocab_size"):
        tiny()(ids + 100, mask)
    with pytest.raises(ValueError, match="no tokens"):
        tiny()(ids, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="divisible"):
        MLMConfig(width=10, heads=4)
    with pytest.raises(ValueError, match="fusion_layers"):
        MLMConfig(image_conditioned=True, fusion_layers=0)


def test_the_text_tower_loads_into_a_clip_text_tower():
    from mmcourse.models import CLIP, CLIPConfig

    mlm = tiny()
    clip = CLIP(CLIPConfig(vocab_size=TOK.vocab_size, context_length=TOK.context_length, text_width=16,
                           text_layers=1, text_heads=2, text_causal=False, text_pool="mean"))
    clip.text.load_state_dict(mlm.text.state_dict())
    ids, mask = _captions()
    with torch.no_grad():
        torch.testing.assert_close(clip.text(ids, mask), mlm.text(ids, mask))


def test_word_classes_partition_the_vocabulary():
    classes = word_class_ids(TOK)
    assert len(classes["colour"]) == 6 and len(classes["shape"]) == 4 and len(classes["size"]) == 2
    assert set(TOK.decode(classes["position"]).split()) == {"top", "left", "right", "bottom", "center"}
    every = torch.cat(list(classes.values()))
    assert len(every) == len(set(every.tolist())) == TOK.vocab_size - 5  # every non-special id, once


def test_fit_trains_a_text_mlm_and_the_loss_falls():
    from torch.utils.data import DataLoader

    from mmcourse.training import TrainConfig, fit

    model = tiny().train()
    captions = [f"a {s} {c} {h}." for s in ("small", "large") for c in ("red", "blue") for h in ("circle", "cross")]
    loader = DataLoader(captions * 16, batch_size=32, shuffle=True, collate_fn=MaskingCollator(TOK, mlm_probability=0.3))
    history = fit(model, loader, TrainConfig(epochs=8, lr=1e-2, progress=False, device="cpu"), loss_fn=mlm_loss_fn)
    assert history.loss[0] > 4.0  # about ln 76 = 4.3 at the start
    assert sum(history.loss[-4:]) / 4 < 2.0
    enc = TOK(captions)
    masked, labels = mask_tokens(enc["input_ids"], enc["attention_mask"], [0, 1, 2, 3, 4], TOK.vocab_size,
                                 TOK.mask_token_id, mlm_probability=0.3, generator=torch.Generator().manual_seed(0))
    logits = predict_masked(model, masked, enc["attention_mask"])
    assert logits.shape == (8, enc["input_ids"].shape[1], TOK.vocab_size)
    with pytest.raises(ValueError, match="MaskingCollator"):
        mlm_loss_fn(model, {"input_ids": enc["input_ids"]})


# ---------------------------------------------------------------------------- cached training
def _tiny_mlm_config(image_conditioned=False):
    return MLMConfig(vocab_size=TOK.vocab_size, context_length=TOK.context_length, width=16, text_layers=1,
                     fusion_layers=1, heads=2, image_conditioned=image_conditioned, cnn_channels=(4, 8))


def test_default_schedules_are_the_ones_the_lesson_describes(tmp_path, monkeypatch):
    """Lesson 07 quotes these schedules (steps, peak rates, epochs): a changed default must change it too."""
    import mmcourse.recipes.cache as cache
    import mmcourse.recipes.mlm as mp

    image, text, few = mp.mlm_train_config(), mp.text_mlm_train_config(), mp.few_pair_train_config()
    assert (image.epochs, image.lr, image.warmup_fraction, image.weight_decay) == (14, 6e-3, 0.1, 0.01)
    assert (text.epochs, text.lr, text.warmup_fraction, text.weight_decay) == (5, 4e-3, 0.05, 0.01)
    assert (few.epochs, few.lr) == (20, 4e-3)
    assert mp.text_mlm_train_config(epochs=2).epochs == 2 and mp.text_mlm_train_config(epochs=2).lr == 4e-3
    # the loaders use them when given none
    used = []

    def fit(model, loader, config, **kwargs):  # record the schedule, train nothing
        used.append(config)
        raise RuntimeError("stop")

    monkeypatch.setattr(cache, "fit", fit)
    monkeypatch.setenv("MMCOURSE_SHIPPED_WEIGHTS", "0")  # train (a shipped model would only be loaded)
    for load in (mp.load_text_mlm, mp.load_image_mlm):
        with pytest.raises(RuntimeError, match="stop"):
            load(cache_dir=tmp_path)
    assert [c.epochs for c in used] == [5, 14] and [c.lr for c in used] == [4e-3, 6e-3]


@pytest.mark.slow
def test_text_and_image_mlm_train_once_then_load(tmp_path, monkeypatch):
    import mmcourse.recipes.mlm as mp
    from mmcourse.training import TrainConfig

    fast = TrainConfig(epochs=1, lr=4e-3, progress=False, device="cpu")
    model, tok, history = mp.load_text_mlm(_tiny_mlm_config(), fast, cache_dir=tmp_path)
    assert not model.training and len(history.loss) == 49  # (5,000 + 1,259) captions / 128
    assert 0.0 < history.val[-1]["masked_accuracy"] <= 1.0
    image_model, _, image_history = mp.load_image_mlm(_tiny_mlm_config(True), fast, cache_dir=tmp_path)
    assert image_model.config.image_conditioned and len(image_history.loss) == 40  # 5,000 scenes / 128
    files = sorted(p.name for p in tmp_path.glob("*.pt"))
    assert len(files) == 2 and files[0].startswith("image_mlm_") and files[1].startswith("text_mlm_")

    import mmcourse.recipes.cache as pretrained  # the one train-once mechanism

    monkeypatch.setattr(pretrained, "fit", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    again, _, history2 = mp.load_text_mlm(_tiny_mlm_config(), fast, cache_dir=tmp_path)
    assert history2.loss == history.loss
    for k, v in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v)
    with pytest.raises(AssertionError, match="retrained"):  # another masking rate is another model
        mp.load_text_mlm(_tiny_mlm_config(), fast, mlm_probability=0.15, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="load_image_mlm"):
        mp.load_text_mlm(_tiny_mlm_config(True), fast, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="load_text_mlm"):
        mp.load_image_mlm(_tiny_mlm_config(False), fast, cache_dir=tmp_path)


@pytest.mark.slow
def test_few_pair_clip_starts_from_the_mlm_text_tower(tmp_path):
    import mmcourse.recipes.mlm as mp
    from mmcourse.models import CLIPConfig
    from mmcourse.training import TrainConfig

    mlm_cfg, fast = _tiny_mlm_config(), TrainConfig(epochs=1, lr=4e-3, progress=False, device="cpu")
    clip_cfg = CLIPConfig(image_size=32, in_channels=3, cnn_channels=(4, 8), cnn_stem_stride=2, image_width=16,
                          vocab_size=TOK.vocab_size, context_length=TOK.context_length, text_width=16, text_layers=1,
                          text_heads=2, text_causal=False, text_pool="mean", embed_dim=8)
    one_step = TrainConfig(epochs=1, lr=1e-9, warmup_steps=0, progress=False, device="cpu")  # (almost) no change
    runs = {init: mp.load_few_pair_clip(init, n_train=50, config=clip_cfg, train_config=one_step, batch_size=50,
                                        mlm=(mlm_cfg, fast), cache_dir=tmp_path) for init in mp.TEXT_INITS}
    mlm, _, _ = mp.load_text_mlm(mlm_cfg, fast, cache_dir=tmp_path)
    for k, v in mlm.text.state_dict().items():
        torch.testing.assert_close(runs["mlm"].model.text.state_dict()[k], v, atol=1e-6, rtol=1e-5)
        assert not torch.allclose(runs["scratch"].model.text.state_dict()[k], v) or v.numel() <= 16
    for k, v in runs["scratch"].model.visual.state_dict().items():  # same image tower start
        torch.testing.assert_close(runs["mlm"].model.visual.state_dict()[k], v, atol=1e-6, rtol=1e-5)
    assert "zero_shot_top1" in runs["mlm"].history.val[-1]
    with pytest.raises(ValueError, match="text_init"):
        mp.load_few_pair_clip("bert", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="bidirectional"):
        mp.load_few_pair_clip("mlm", config=CLIPConfig(), cache_dir=tmp_path)
