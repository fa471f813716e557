"""Tests for mmcourse.training.gradcache and fit's grad_cache_chunk / precision options: gradient caching
gives the full batch's gradients (every parameter, logit_scale included)."""
import pytest
import torch
from torch.utils.data import DataLoader

from mmcourse.training import contrastive_loss, grad_cache_step, split_batch
from mmcourse.models import CLIP, CLIPConfig
from mmcourse.training import TrainConfig, clip_loss_fn, fit

VIT = dict(image_encoder="vit", image_width=16, vit_layers=1, vit_heads=2, text_width=16, text_heads=2,
           text_layers=1, embed_dim=8, vocab_size=16, context_length=6)


def _batch(n=10, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 16, (n, 6), generator=g)
    lengths = torch.randint(2, 7, (n,), generator=g)
    mask = (torch.arange(6) < lengths[:, None]).long()
    return {"image": torch.randn(n, 1, 8, 8, generator=g, dtype=dtype), "input_ids": ids * mask, "attention_mask": mask}


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return CLIP(CLIPConfig(**{**VIT, **kw})).double().train()


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _full_batch_grads(model, batch):
    model.zero_grad()
    loss = clip_loss_fn(model, batch)
    loss.backward()
    return loss.detach(), _grads(model)


@pytest.mark.parametrize("chunk", [1, 3, 4, 10])
@pytest.mark.parametrize("siglip", [False, True])
def test_grad_cache_equals_full_batch(chunk, siglip):
    model = _model(init_logit_bias=-10.0 if siglip else None)
    batch = _batch()
    loss_ref, ref = _full_batch_grads(model, batch)
    model.zero_grad()
    loss = grad_cache_step(model, batch, chunk)
    got = _grads(model)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-12, atol=1e-12)
    assert set(got) == set(ref) and "logit_scale" in got and ("logit_bias" in got) == siglip
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-9, atol=1e-12, msg=name)


def _chunked_reference(model, batch, chunk):
    """The whole batch with every chunk's graph alive and each chunk's own dropout draw."""
    model.zero_grad()
    outs = [model(**c) for c in split_batch(batch, chunk)]
    loss = contrastive_loss(torch.cat([o["image_embeds"] for o in outs]), torch.cat([o["text_embeds"] for o in outs]),
                            outs[0]["logit_scale"])
    loss.backward()
    return _grads(model)


def test_grad_cache_with_dropout_restores_each_chunks_rng():
    model = _model(dropout=0.2)
    batch = _batch()
    torch.manual_seed(7)
    ref = _chunked_reference(model, batch, 4)
    after_ref = torch.rand(1)
    torch.manual_seed(7)
    model.zero_grad()
    grad_cache_step(model, batch, 4)
    after = torch.rand(1)
    for name, g in _grads(model).items():
        torch.testing.assert_close(g, ref[name], rtol=1e-9, atol=1e-12, msg=name)
    assert after == after_ref  # the generator advanced as for one pass of forwards
    # without restoring the RNG, pass 2 draws other masks: the gradients are wrong
    import mmcourse.training.gradcache as gc

    original = gc._set_rng
    try:
        gc._set_rng = lambda state, device: None
        torch.manual_seed(7)
        model.zero_grad()
        grad_cache_step(model, batch, 4)
    finally:
        gc._set_rng = original
    assert not torch.allclose(_grads(model)["image_projection.weight"], ref["image_projection.weight"], rtol=1e-3)


def test_batchnorm_makes_the_gradients_differ():
    # a CNN tower normalises with each chunk's statistics: not the full batch's gradient
    torch.manual_seed(0)
    model = CLIP(CLIPConfig(**{**VIT, "image_encoder": "cnn", "cnn_channels": (4, 8)})).double().train()
    batch = _batch()
    _, ref = _full_batch_grads(model, batch)
    model.zero_grad()
    grad_cache_step(model, batch, 5)
    assert not torch.allclose(model.image_projection.weight.grad, ref["image_projection.weight"], rtol=1e-3)


def test_naive_accumulation_changes_the_loss():
    # each chunk's own loss sees only its own negatives: the mean of chunk losses is not the loss
    model = _model()
    batch = _batch(12)
    with torch.no_grad():
        full = clip_loss_fn(model, batch)
        naive = sum(clip_loss_fn(model, c) for c in split_batch(batch, 4)) / 3
    assert naive < full - 0.1  # fewer negatives: an easier task


def test_split_batch_and_bad_input():
    chunks = split_batch({**_batch(10), "note": "x"}, 4)
    assert [len(c["image"]) for c in chunks] == [4, 4, 2] and chunks[2]["note"] == "x"
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        split_batch(_batch(), 0)
    with pytest.raises(ValueError, match="batch dict"):
        split_batch((torch.zeros(2), torch.zeros(2)), 1)


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, n=48):
        self.b = _batch(n, dtype=torch.float32)

    def __len__(self):
        return len(self.b["image"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.b.items()}


CFG = dict(epochs=2, lr=3e-3, progress=False, device="cpu", warmup_steps=1)


def _fit(**kw):
    torch.manual_seed(0)
    model = CLIP(CLIPConfig(**VIT))
    loader = DataLoader(_Pairs(), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    return model, fit(model, loader, TrainConfig(**{**CFG, **kw}))


def test_fit_with_grad_cache_trains_like_the_full_batch():
    m_ref, h_ref = _fit()
    m, h = _fit(grad_cache_chunk=5)
    assert h.loss == pytest.approx(h_ref.loss, rel=1e-4)
    for (name, p), q in zip(m.named_parameters(), m_ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4, msg=name)


def test_fit_bf16_autocast_keeps_the_loss_in_float32():
    _, h_ref = _fit()
    seen = []

    def loss_fn(model, batch):
        loss = clip_loss_fn(model, batch)
        seen.append((torch.is_autocast_enabled("cpu"), loss.dtype))
        return loss

    torch.manual_seed(0)
    model = CLIP(CLIPConfig(**VIT))
    loader = DataLoader(_Pairs(), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    h = fit(model, loader, TrainConfig(**CFG, precision="bf16"), loss_fn=loss_fn)
    assert seen[0] == (True, torch.float32)
    assert h.loss == pytest.approx(h_ref.loss, rel=0.05)  # bfloat16 keeps ~3 significant digits
    assert h.loss != h_ref.loss
    _, h_gc = _fit(precision="bf16", grad_cache_chunk=8)
    assert h_gc.loss == pytest.approx(h_ref.loss, rel=0.05)


def test_bad_options_raise():
    with pytest.raises(ValueError, match="grad_cache_chunk must be a positive int"):
        TrainConfig(grad_cache_chunk=0)
    with pytest.raises(ValueError, match=r"precision must be one of \['bf16', 'fp16', 'fp32'\]"):
        TrainConfig(precision="float16")
    model = CLIP(CLIPConfig(**VIT))
    loader = DataLoader(_Pairs(), batch_size=16)
    with pytest.raises(ValueError, match="cannot split a custom loss_fn"):
        fit(model, loader, TrainConfig(**CFG, grad_cache_chunk=4), loss_fn=lambda m, b: clip_loss_fn(m, b))
    with pytest.raises(ValueError, match="precision='fp16' needs a CUDA device"):
        fit(model, loader, TrainConfig(**CFG, precision="fp16"))
