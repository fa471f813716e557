"""Fusion modules: one interface, the formulas they claim, masks respected, what each can
represent (additive late fusion cannot fit XOR, concatenation + MLP can), and the model around them."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from mmcourse.models import (FUSIONS, ConcatFusion, CrossAttentionFusion, FiLMFusion, FusionConfig, FusionModel,
                             GatedFusion, LateFusion, classification_loss_fn, predict_logits)
from mmcourse.models import CLIP, CLIPConfig
from mmcourse.training import TrainConfig, fit

TOWERS = CLIPConfig(image_size=8, in_channels=3, cnn_channels=(4, 8), image_width=16, text_width=16, text_layers=1,
                    vocab_size=12, context_length=6)


def batch(B=4, L=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([6, 3, 4, 2])[:B]
    mask = (torch.arange(L) < lengths[:, None]).long()  # right-padded
    ids = torch.randint(5, 12, (B, L), generator=g) * mask
    return torch.rand(B, 3, 8, 8, generator=g), ids, mask


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_fusion_gives_class_logits(fusion):
    torch.manual_seed(0)
    model = FusionModel(FusionConfig(fusion, num_classes=5, towers=TOWERS, dim=16)).eval()
    image, ids, mask = batch()
    assert model.features(image, ids, mask).shape == (4, 16)
    logits = model(image, ids, mask)
    assert logits.shape == (4, 5) and torch.isfinite(logits).all()
    torch.testing.assert_close(model(image, ids), logits)  # mask defaults to input_ids != pad
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("fusion", FUSIONS)
def test_padding_never_changes_the_output(fusion):
    """Other token ids in padded positions, or extra padding columns, change nothing."""
    torch.manual_seed(0)
    model = FusionModel(FusionConfig(fusion, num_classes=3, towers=TOWERS, dim=16)).eval()
    image, ids, mask = batch(L=5)
    out = model(image, ids, mask)
    noisy = ids + (1 - mask) * 7  # garbage where the mask is 0
    torch.testing.assert_close(model(image, noisy, mask), out)
    wider = F.pad(ids, (0, 1)), F.pad(mask, (0, 1))
    torch.testing.assert_close(model(image, *wider), out)


@pytest.mark.parametrize("fusion", ["text", "late", "cross_attention"])
def test_repeated_texts_encoded_once_equal_encoding_each(fusion):
    """The model encodes each distinct text of a batch once: values and gradients equal the plain computation."""
    torch.manual_seed(0)
    model = FusionModel(FusionConfig(fusion, num_classes=3, towers=TOWERS, dim=16)).eval()
    image, ids, mask = batch()
    ids, mask = torch.cat([ids, ids[:2]]), torch.cat([mask, mask[:2]])
    image = torch.cat([image, image[2:]])
    f = model.fusion
    text = [model.text.forward_tokens(i[None], m[None]) if f.text_input == "tokens" else model.text(i[None], m[None])
            for i, m in zip(ids, mask)]
    image_features = model.visual.forward_tokens(image) if f.image_input == "tokens" else model.visual(image)
    if f.text_input == "tokens":
        plain = [f(image_features[k:k + 1], t, mask[k:k + 1]) for k, t in enumerate(text)]
    else:
        plain = [f(image_features[k:k + 1], t) for k, t in enumerate(text)]
    torch.testing.assert_close(model.features(image, ids, mask), torch.cat(plain), atol=1e-5, rtol=1e-4)


def test_gated_fusion_is_the_gmu_formula():
    torch.manual_seed(0)
    gmu = GatedFusion(5, 3, 4)
    x_v, x_t = torch.randn(6, 5), torch.randn(6, 3)
    h_v, h_t = torch.tanh(x_v @ gmu.image_proj.weight.T + gmu.image_proj.bias), torch.tanh(gmu.text_proj(x_t))
    z = torch.sigmoid(torch.cat([x_v, x_t], 1) @ gmu.gate.weight.T + gmu.gate.bias)
    h = z * h_v + (1 - z) * h_t
    torch.testing.assert_close(gmu.gmu(x_v, x_t), h)
    torch.testing.assert_close(gmu(x_v, x_t), gmu.out(h))
    with torch.no_grad():  # a gate saturated at 1 passes the image only
        gmu.gate.bias.fill_(50.0)
    torch.testing.assert_close(gmu.gmu(x_v, x_t), h_v, atol=1e-6, rtol=0)


def test_film_modulates_each_channel_by_the_text():
    torch.manual_seed(0)
    film = FiLMFusion(4, 3, 8, n_image_tokens=5)
    tokens, text = torch.randn(2, 5, 4), torch.randn(2, 3)
    gamma, beta = (text @ film.film.weight.T + film.film.bias).chunk(2, dim=-1)  # (2, 4) each
    expected = F.relu((1 + gamma[:, None]) * F.layer_norm(tokens, (4,)) + beta[:, None])
    torch.testing.assert_close(film(tokens, text), film.out(expected.flatten(1)))
    assert not torch.allclose(film(tokens, text), film(tokens, -text))  # the text changes the output
    with torch.no_grad():
        film.film.weight.zero_()
        film.film.bias.copy_(torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0.5]))  # gamma_0 = 1, beta_3 = 0.5
    scaled = F.layer_norm(tokens, (4,)) * torch.tensor([2.0, 1, 1, 1]) + torch.tensor([0, 0, 0, 0.5])
    torch.testing.assert_close(film(tokens, text), film.out(F.relu(scaled).flatten(1)))


def test_cross_attention_reads_the_image_and_ignores_padding_keys():
    torch.manual_seed(0)
    fusion = CrossAttentionFusion(6, 4, 8, n_image_tokens=3, layers=2, heads=2).eval()
    image, text = torch.randn(2, 3, 6), torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = fusion(image, text, mask)
    text2 = text.clone()
    text2[0, 3:] = 100.0  # padded positions of item 0
    torch.testing.assert_close(fusion(image, text2, mask)[0], out[0])
    assert not torch.allclose(fusion(image.flip(0), text, mask), out)  # a different image changes the output


def xor_loader(n=256):
    """Two 1-d 'modalities' (+-1) whose label is their XOR, as pooled features."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 2, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)
    x_img = (2 * a - 1).float()[:, None] + 0.05 * torch.randn(n, 1, generator=g)
    x_txt = (2 * b - 1).float()[:, None] + 0.05 * torch.randn(n, 1, generator=g)
    return DataLoader(TensorDataset(x_img, x_txt, a ^ b), batch_size=64, shuffle=True,
                      generator=torch.Generator().manual_seed(0))


class Head(torch.nn.Module):
    def __init__(self, fusion):
        super().__init__()
        self.fusion, self.head = fusion, torch.nn.Linear(16, 2)

    def forward(self, x_img, x_txt):
        return self.head(self.fusion(x_img, x_txt))


@pytest.mark.parametrize("module, best", [(LateFusion, 0.76), (ConcatFusion, 1.0)])
def test_additive_fusion_cannot_fit_xor_concat_can(module, best):
    torch.manual_seed(0)
    model = Head(module(1, 1, 16))
    loader = xor_loader()
    fit(model, loader, TrainConfig(epochs=60, lr=1e-2, weight_decay=0.0, progress=False, device="cpu"),
        loss_fn=lambda m, b: F.cross_entropy(m(b[0], b[1]), b[2]))
    x_img, x_txt, y = loader.dataset.tensors
    acc = (model(x_img, x_txt).argmax(-1) == y).float().mean().item()
    if best < 1:
        assert acc <= best  # f(a) + g(b) gets at most 3 of the 4 XOR cells right
    else:
        assert acc == 1.0


def test_from_clip_copies_the_towers_and_grows_the_vocabulary():
    torch.manual_seed(0)
    clip = CLIP(TOWERS)
    model = FusionModel.from_clip(clip, "film", num_classes=4, vocab_size=20)
    assert model.config.towers.vocab_size == 20 and model.text.token_embedding.num_embeddings == 20
    torch.testing.assert_close(model.text.token_embedding.weight[:12], clip.text.token_embedding.weight)
    for name, p in clip.visual.state_dict().items():
        torch.testing.assert_close(model.visual.state_dict()[name], p)
    image, ids, mask = batch()
    torch.testing.assert_close(model.text(ids, mask), clip.text(ids, mask))
    with pytest.raises(ValueError, match="smaller"):
        FusionModel.from_clip(clip, vocab_size=5)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_frozen_towers_learn_nothing_and_take_features_computed_in_advance(fusion):
    torch.manual_seed(0)
    clip = CLIP(TOWERS)
    model = FusionModel.from_clip(clip, fusion, num_classes=3, dim=16, freeze_towers=True)
    assert not any(p.requires_grad for p in [*model.visual.parameters(), *model.text.parameters()])
    assert all(p.requires_grad for p in [*model.fusion.parameters(), *model.head.parameters()])
    model.train()
    assert model.training and model.fusion.training and not model.visual.training and not model.text.training
    image, ids, mask = batch()
    features = model.encode_image(image)
    if model.fusion.image_input is None:
        assert features is None
    else:
        assert not features.requires_grad
        assert features.shape[0] == 4 and features.dim() == (3 if model.fusion.image_input == "tokens" else 2)
    torch.testing.assert_close(model(None, ids, mask, image_features=features), model(image, ids, mask))
    visual = {k: v.clone() for k, v in model.visual.state_dict().items()}  # BatchNorm statistics included
    text = {k: v.clone() for k, v in model.text.state_dict().items()}
    head = model.head.weight.clone()
    labels = torch.tensor([0, 1, 2, 0])
    loader = [{"image": image, "input_ids": ids, "attention_mask": mask, "label": labels}] * 3
    fit(model, loader, TrainConfig(epochs=1, lr=1e-2, warmup_fraction=0.0), loss_fn=classification_loss_fn)
    for k, v in model.visual.state_dict().items():
        assert torch.equal(v, visual[k]), k
    for k, v in model.text.state_dict().items():
        assert torch.equal(v, text[k]), k
    assert not torch.equal(model.head.weight, head)


def test_image_features_and_bad_input_are_named():
    torch.manual_seed(0)
    model = FusionModel(FusionConfig("film", num_classes=3, towers=TOWERS, dim=16)).eval()
    image, ids, mask = batch()
    with pytest.raises(ValueError, match="image_features"):
        model(None, ids, mask)
    with pytest.raises(ValueError, match="freeze_towers"):
        FusionConfig("film", towers=TOWERS, freeze_towers="yes")
    labels = torch.tensor([0, 1, 2, 0])
    on_features = classification_loss_fn(model, {"image_features": model.encode_image(image), "input_ids": ids,
                                                 "attention_mask": mask, "label": labels})
    torch.testing.assert_close(on_features, classification_loss_fn(
        model, {"image": image, "input_ids": ids, "attention_mask": mask, "label": labels}))
    with pytest.raises(ValueError, match=r"lacks \['image'\]"):
        classification_loss_fn(model, {"input_ids": ids, "label": labels})


def test_loss_and_batched_prediction():
    torch.manual_seed(0)
    model = FusionModel(FusionConfig("concat", num_classes=3, towers=TOWERS, dim=16)).eval()
    image, ids, mask = batch()
    label = torch.tensor([0, 2, 1, 1])
    loss = classification_loss_fn(model, {"image": image, "input_ids": ids, "attention_mask": mask, "label": label})
    torch.testing.assert_close(loss, F.cross_entropy(model(image, ids, mask), label))
    torch.testing.assert_close(predict_logits(model, image, ids, mask, batch_size=3), model(image, ids, mask))
    with pytest.raises(ValueError, match="lacks"):
        classification_loss_fn(model, {"image": image, "input_ids": ids})
    with pytest.raises(ValueError, match="texts"):
        predict_logits(model, image, ids[:2])


@pytest.mark.parametrize("kwargs, match", [({"fusion": "sum"}, "fusion must"), ({"num_classes": 1}, "num_classes"),
                                            ({"dim": 10, "heads": 4}, "divisible"),
                                            ({"towers": CLIPConfig(text_encoder="bow")}, "Transformer")])
def test_bad_configs_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FusionConfig(**kwargs)
