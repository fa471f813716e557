"""Tests for mmcourse.models: shapes, pooling, padding, normalisation, logits, projections, errors."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmcourse.models import CLIP, BagOfWords, CLIPConfig, TextTransformer, TinyViT, eot_positions

SMALL = dict(image_width=32, text_width=32, embed_dim=16, cnn_channels=(8, 16), vit_heads=2, text_heads=2,
             vocab_size=20, context_length=10, vit_layers=1, text_layers=1)


def small_config(**kw) -> CLIPConfig:
    return CLIPConfig(**{**SMALL, **kw})


def batch(B=5, L=7, vocab=20, lengths=(7, 3, 5, 1, 6), seed=0, channels=1, size=8):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(B, channels, size, size, generator=g)
    ids = torch.randint(3, vocab, (B, L), generator=g)
    mask = torch.zeros(B, L, dtype=torch.long)
    for i, n in enumerate(lengths[:B]):
        mask[i, :n] = 1
        ids[i, n:] = 0  # pad id
    return image, ids, mask


@pytest.mark.parametrize("image_encoder", ["cnn", "vit"])
@pytest.mark.parametrize("text_encoder", ["transformer", "bow"])
def test_shapes_all_encoder_combinations(image_encoder, text_encoder):
    torch.manual_seed(0)
    model = CLIP(small_config(image_encoder=image_encoder, text_encoder=text_encoder)).eval()
    image, ids, mask = batch()
    assert model.encode_image(image).shape == (5, 16)
    assert model.encode_text(ids, mask).shape == (5, 16)
    out = model(image=image[:3], input_ids=ids, attention_mask=mask)
    assert out.logits_per_image.shape == (3, 5)
    assert out.logits_per_text.shape == (5, 3)
    assert out["image_embeds"].shape == (3, 16) and out["text_embeds"].shape == (5, 16)


def test_vit_mean_pool_and_rgb_32px():
    torch.manual_seed(0)
    cfg = small_config(image_encoder="vit", vit_pool="mean", image_size=32, in_channels=3, vit_patch_size=8)
    model = CLIP(cfg).eval()
    assert model.visual.positional_embedding.shape == (16, 32)  # 4x4 patches, no CLS
    image, _, _ = batch(channels=3, size=32)
    assert model.encode_image(image).shape == (5, 16)
    vit = TinyViT(3, 32, 8, 32, 1, 2, pool="cls")
    assert vit.positional_embedding.shape == (17, 32)


def test_eot_pooling_picks_last_real_token():
    torch.manual_seed(0)
    model = CLIP(small_config()).eval()
    _, ids, mask = batch()
    text = model.text
    assert eot_positions(mask).tolist() == [6, 2, 4, 0, 5]
    # Manual forward, then gather the hidden state at the EOT position by hand.
    captured = {}
    handle = text.ln_final.register_forward_hook(lambda m, i, o: captured.setdefault("h", o))
    pooled = text(ids, mask)
    handle.remove()
    hidden = captured["h"]  # (B, L, E)
    manual = torch.stack([hidden[i, n - 1] for i, n in enumerate([7, 3, 5, 1, 6])])
    torch.testing.assert_close(pooled, manual)
    assert not torch.allclose(pooled, hidden[:, -1])  # not simply the last position


def test_causal_eot_equals_unpadded_run():
    # With causal attention, the embedding of a caption equals that of the caption alone.
    torch.manual_seed(0)
    model = CLIP(small_config()).eval()
    _, ids, mask = batch()
    full = model.encode_text(ids, mask)
    for i, n in enumerate([7, 3, 5, 1, 6]):
        alone = model.encode_text(ids[i:i + 1, :n], torch.ones(1, n, dtype=torch.long))
        torch.testing.assert_close(full[i:i + 1], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw", [dict(), dict(text_causal=False), dict(text_pool="mean"), dict(text_encoder="bow")])
def test_more_padding_does_not_change_text_embedding(kw):
    torch.manual_seed(0)
    model = CLIP(small_config(**kw)).eval()
    _, ids, mask = batch()
    emb = model.encode_text(ids, mask)
    ids_more = torch.cat([ids, torch.full((5, 3), 7)], dim=1)  # 3 more padding positions, arbitrary ids
    mask_more = torch.cat([mask, torch.zeros(5, 3, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model.encode_text(ids_more, mask_more), emb, rtol=1e-5, atol=1e-6)
    # ...while a change in a real token does change it
    ids_changed = ids.clone()
    ids_changed[0, 0] = 4 if ids[0, 0] != 4 else 5
    assert not torch.allclose(model.encode_text(ids_changed, mask)[0], emb[0])


def test_full_attention_lets_early_tokens_see_later_ones():
    torch.manual_seed(0)
    causal = TextTransformer(20, 10, 32, 1, 2, causal=True, pool="mean").eval()
    full = TextTransformer(20, 10, 32, 1, 2, causal=False, pool="mean").eval()
    full.load_state_dict(causal.state_dict())
    ids = torch.tensor([[3, 4, 5, 6]])
    mask = torch.ones(1, 4, dtype=torch.long)
    assert not torch.allclose(causal(ids, mask), full(ids, mask))


def test_pad_token_id_builds_the_mask():
    torch.manual_seed(0)
    model = CLIP(small_config(pad_token_id=0)).eval()
    _, ids, mask = batch()
    torch.testing.assert_close(model.encode_text(ids), model.encode_text(ids, mask))


def test_bag_of_words_ignores_order():
    torch.manual_seed(0)
    bow = BagOfWords(20, 32)
    a = torch.tensor([[3, 4, 5]])
    m = torch.ones(1, 3, dtype=torch.long)
    torch.testing.assert_close(bow(a, m), bow(a.flip(1), m))
    expected = F.layer_norm(bow.token_embedding.weight[[3, 4, 5]].mean(0), (32,), bow.ln_final.weight, bow.ln_final.bias)
    torch.testing.assert_close(bow(a, m)[0], expected)


def test_normalised_outputs_have_unit_norm():
    torch.manual_seed(0)
    model = CLIP(small_config()).eval()
    image, ids, mask = batch()
    ones = torch.ones(5)
    torch.testing.assert_close(model.encode_image(image, normalize=True).norm(dim=-1), ones)
    torch.testing.assert_close(model.encode_text(ids, mask, normalize=True).norm(dim=-1), ones)
    out = model(image, ids, mask)
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), ones)
    torch.testing.assert_close(out.text_embeds.norm(dim=-1), ones)
    assert not torch.allclose(model.encode_image(image).norm(dim=-1), ones)


def test_logits_are_scaled_cosine_similarities():
    torch.manual_seed(0)
    model = CLIP(small_config()).eval()
    image, ids, mask = batch()
    out = model(image, ids, mask)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.T)
    cos = F.cosine_similarity(model.encode_image(image)[:, None], model.encode_text(ids, mask)[None], dim=-1)
    torch.testing.assert_close(out.logits_per_image, cos / 0.07, rtol=1e-5, atol=1e-5)


def test_logit_scale_init_and_bias():
    model = CLIP(small_config())
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert model(image=batch()[0]).logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-6)
    assert model.logit_bias is None
    siglip = CLIP(small_config(init_logit_bias=-10.0, init_logit_scale=math.log(10))).eval()
    image, ids, mask = batch()
    out = siglip(image, ids, mask)
    cos = siglip.encode_image(image, True) @ siglip.encode_text(ids, mask, True).T
    torch.testing.assert_close(out.logits_per_image, 10 * cos - 10, rtol=1e-5, atol=1e-5)


def test_forward_with_one_modality():
    model = CLIP(small_config()).eval()
    image, ids, mask = batch()
    out = model(image=image)
    assert out.text_embeds is None and out.logits_per_image is None and out.image_embeds.shape == (5, 16)
    out = model(input_ids=ids, attention_mask=mask)
    assert out.image_embeds is None and out.text_embeds.shape == (5, 16)
    assert "logits_per_image" not in out.keys()


def test_shared_vs_separate_projection_parameter_counts():
    separate = CLIP(small_config())
    shared = CLIP(small_config(shared_projection=True))
    assert separate.text_projection is not separate.image_projection
    assert shared.text_projection is shared.image_projection
    assert separate.num_parameters() - shared.num_parameters() == 32 * 16  # one E x D matrix fewer
    names = [n for n, _ in shared.named_parameters()]
    assert "image_projection.weight" in names and "text_projection.weight" not in names
    with pytest.raises(ValueError, match="equal tower widths"):
        CLIPConfig(shared_projection=True, image_width=64, text_width=32)


def test_projection_init_scale():
    torch.manual_seed(0)
    model = CLIP(CLIPConfig(image_width=256))
    assert model.image_projection.weight.std().item() == pytest.approx(256 ** -0.5, rel=0.05)


@pytest.mark.parametrize("make, match", [
    (lambda: torch.randn(2, 3, 8, 8), "3 channels"),
    (lambda: torch.randn(2, 1, 16, 16), "image_size=8"),
    (lambda: torch.randn(1, 8, 8), r"\(B, C, H, W\)"),
    (lambda: torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "float"),
])
def test_bad_images_raise(make, match):
    model = CLIP(small_config())
    with pytest.raises(ValueError, match=match):
        model.encode_image(make())


def test_bad_text_raises():
    model = CLIP(small_config())
    ok = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="longer than context_length=10"):
        model.encode_text(torch.ones(2, 11, dtype=torch.long))
    with pytest.raises(ValueError, match=r"vocab_size=20"):
        model.encode_text(torch.tensor([[1, 2, 20]]))
    with pytest.raises(ValueError, match=r"vocab_size=20"):
        model.encode_text(torch.tensor([[1, -1]]))
    with pytest.raises(ValueError, match="integer"):
        model.encode_text(torch.ones(2, 4))
    with pytest.raises(ValueError, match="shape"):
        model.encode_text(ok, torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="pad on the right"):
        model.encode_text(ok, torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="no tokens"):
        model.encode_text(ok, torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="only 0"):
        model.encode_text(ok, torch.full((2, 4), 2))
    with pytest.raises(ValueError, match="needs image, input_ids"):
        model()


@pytest.mark.parametrize("kw, match", [
    (dict(image_encoder="resnet"), "image_encoder"),
    (dict(text_encoder="lstm"), "text_encoder"),
    (dict(image_encoder="vit", vit_patch_size=3), "multiple of vit_patch_size"),
    (dict(text_width=30, text_heads=4), "divisible"),
    (dict(embed_dim=0), "embed_dim"),
])
def test_bad_configs_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        CLIPConfig(**kw)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    for kw in (dict(), dict(image_encoder="vit", text_encoder="bow"), dict(shared_projection=True)):
        model = CLIP(small_config(**kw))
        image, ids, mask = batch()
        out = model(image, ids, mask)
        labels = torch.arange(5)
        (F.cross_entropy(out.logits_per_image, labels) + F.cross_entropy(out.logits_per_text, labels)).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_cnn_stem_stride_on_32px_rgb():
    torch.manual_seed(0)
    model = CLIP(small_config(image_size=32, in_channels=3, cnn_channels=(8, 16, 16), cnn_stem_stride=2)).eval()
    assert model.visual.fc.in_features == 16 * 4 * 4  # 32 -> 16 -> 8 -> 4
    x = model.visual.convs(torch.zeros(2, 3, 32, 32))
    assert x.shape == (2, 16, 4, 4)
    assert model.encode_image(batch(channels=3, size=32)[0]).shape == (5, 16)


def test_cnn_stores_images_pixel_by_pixel_and_computes_the_same_function():
    """SmallCNN runs its convolutions on a channels-last copy of the image (faster on a CPU): same
    values and gradients as the layers applied one by one to the image as it was given."""
    torch.manual_seed(0)
    cnn = SmallCNN(3, 32, (8, 16, 16), 24, stem_stride=2).train()
    x = torch.randn(6, 3, 32, 32)
    assert x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    ref = x
    for layer in cnn.convs:
        ref = layer(ref)
    ref = F.relu(cnn.fc(ref.reshape(6, -1)))
    out = cnn(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    assert x.is_contiguous()  # the caller's tensor is untouched
    grad_ref = torch.autograd.grad(ref.square().sum(), cnn.fc.weight)[0]
    grad = torch.autograd.grad(cnn(x).square().sum(), cnn.fc.weight)[0]
    torch.testing.assert_close(grad, grad_ref, atol=1e-4, rtol=1e-4)
    tokens = cnn.forward_tokens(x)  # (B, 4*4, 16), row-major
    torch.testing.assert_close(tokens, cnn.convs(x).reshape(6, 16, 16).transpose(1, 2), atol=1e-5, rtol=1e-4)


# -- shared Transformer pieces used by lessons 07-09 (cross-attention, causal masks, token outputs)

from mmcourse.models import Block, CrossAttention, SmallCNN, text_attention_mask  # noqa: E402


def test_causal_text_mask_never_lets_t_see_later_positions():
    mask = text_attention_mask(torch.tensor([[1, 1, 1, 0]]), causal=True)[0, 0]  # (L, L)
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    full = text_attention_mask(torch.tensor([[1, 1, 0]]), causal=False)[0, 0]
    assert torch.equal(full, torch.tensor([[1, 1, 0]] * 3, dtype=torch.bool))


def test_causal_block_output_at_t_ignores_later_tokens():
    torch.manual_seed(0)
    block = Block(16, 4).eval()
    x = torch.randn(1, 5, 16)
    mask = text_attention_mask(torch.ones(1, 5), causal=True)
    y = block(x, mask)
    x2 = x.clone()
    x2[:, 3:] = torch.randn(1, 2, 16)  # change the future
    y2 = block(x2, mask)
    torch.testing.assert_close(y[:, :3], y2[:, :3])
    assert not torch.allclose(y[:, 3:], y2[:, 3:])


def test_cross_attention_never_attends_to_padded_context():
    torch.manual_seed(0)
    attn = CrossAttention(16, 4, context_width=8).eval()
    x, ctx = torch.randn(2, 3, 16), torch.randn(2, 6, 8)
    ctx_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    y = attn(x, ctx, ctx_mask)
    ctx2 = ctx.clone()
    ctx2[0, 4:] = 1e3 * torch.randn(2, 8)  # garbage in the padding of sample 0
    torch.testing.assert_close(attn(x, ctx2, ctx_mask), y)
    # equals attention over the unpadded context alone
    torch.testing.assert_close(attn(x[:1], ctx[:1, :4]), y[:1])


def test_cross_attention_equals_a_naive_softmax_loop():
    torch.manual_seed(1)
    attn = CrossAttention(8, 2, context_width=4).double().eval()
    x, ctx = torch.randn(1, 3, 8, dtype=torch.float64), torch.randn(1, 5, 4, dtype=torch.float64)
    q = attn.q(x)[0]  # (3, 8)
    k, v = attn.kv(ctx)[0].split(8, dim=1)  # (5, 8) each
    heads = []
    for h in range(2):
        sl = slice(4 * h, 4 * h + 4)
        w = torch.softmax(q[:, sl] @ k[:, sl].T / math.sqrt(4), dim=1)  # (3, 5)
        heads.append(w @ v[:, sl])
    expected = attn.proj(torch.cat(heads, dim=1))[None]
    torch.testing.assert_close(attn(x, ctx), expected)


def test_block_cross_attention_needs_context_and_plain_block_refuses_it():
    b = Block(16, 4, cross_attention=True, context_width=8)
    with pytest.raises(ValueError, match="pass context"):
        b(torch.randn(1, 2, 16))
    with pytest.raises(ValueError, match="without cross_attention"):
        Block(16, 4)(torch.randn(1, 2, 16), context=torch.randn(1, 3, 16))
    assert b(torch.randn(1, 2, 16), context=torch.randn(1, 3, 8)).shape == (1, 2, 16)


def test_token_outputs_match_pooled_outputs():
    torch.manual_seed(0)
    vit = TinyViT(1, 8, 2, 16, 1, 4).eval()
    img = torch.randn(2, 1, 8, 8)
    tokens = vit.forward_tokens(img)
    assert tokens.shape == (2, 17, 16)
    torch.testing.assert_close(tokens[:, 0], vit(img))
    text = TextTransformer(20, 7, 16, 1, 4).eval()
    ids, mask = torch.randint(1, 20, (2, 7)), torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    h = text.forward_tokens(ids, mask)
    assert h.shape == (2, 7, 16)
    torch.testing.assert_close(h[torch.arange(2), eot_positions(mask)], text(ids, mask))
    cnn = SmallCNN(1, 8, (4, 6), 16)
    assert cnn.forward_tokens(img).shape == (2, 16, 6)  # 8x8 -> 4x4 map of 6 channels


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_normalised_outputs_in_low_precision_are_unit_or_zero_never_nan(dtype):
    torch.manual_seed(0)
    model = CLIP(small_config()).eval()
    image, ids, mask = batch()
    ref_img = model.encode_image(image, normalize=True)
    ref_txt = model.encode_text(ids, mask, normalize=True)
    low = model.to(dtype)
    img, txt = low.encode_image(image.to(dtype), normalize=True), low.encode_text(ids, mask, normalize=True)
    assert img.dtype == txt.dtype == dtype
    tol = 0.01 if dtype == torch.float16 else 0.05  # the whole tower runs in low precision
    torch.testing.assert_close(img.float(), ref_img, rtol=0, atol=tol)
    torch.testing.assert_close(txt.float(), ref_txt, rtol=0, atol=tol)
    torch.testing.assert_close(img.float().norm(dim=-1), torch.ones(5), rtol=0, atol=5e-3)
    # a dead tower (a zero projection) gives zero embeddings: F.normalize made them 0/0 = NaN in float16
    with torch.no_grad():
        low.image_projection.weight.zero_()
        if low.image_projection.bias is not None:
            low.image_projection.bias.zero_()
    out = low(image.to(dtype), ids, mask)
    assert torch.equal(out.image_embeds, torch.zeros(5, low.config.embed_dim, dtype=dtype))
    assert torch.isfinite(out.logits_per_image).all() and (out.logits_per_image == 0).all()
    torch.testing.assert_close(out.text_embeds.float().norm(dim=-1), torch.ones(5), rtol=0, atol=5e-3)
