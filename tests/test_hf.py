"""The course's CLIP in Hugging Face Transformers: the same loss, the same pooling, the adapter
that lets `fit`, zero-shot and retrieval use a `CLIPModel`, and a save/load round trip offline."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mmcourse.data import zero_shot_metadata as meta
from mmcourse.evaluation import build_zero_shot_classifier, retrieval_metrics
from mmcourse.models import (HFCLIPAdapter, HFCLIPSettings, as_features, build_hf_clip, hf_clip_config, hf_loss_fn,
                             load_hf_clip, save_hf_clip)
from mmcourse.recipes import load_digits_hf_clip
from mmcourse.objectives import clip_loss
from mmcourse.models import eot_positions
from mmcourse.data.tokenizer import default_tokenizer
from mmcourse.training import TrainConfig, clip_loss_fn, fit

SMALL = HFCLIPSettings(width=32, layers=1, heads=2, embed_dim=16)


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


@pytest.fixture()
def adapter(tokenizer):
    torch.manual_seed(0)
    return build_hf_clip(tokenizer, SMALL).eval()


def _batch(tokenizer, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    captions = [t.format(c) for t, c in zip(meta.DIGIT_TEMPLATES_TRAIN, meta.DIGIT_CLASSNAMES)][:n]
    tokens = tokenizer(captions)
    return {"image": torch.rand(n, 1, 16, 16, generator=g), **tokens}


def test_config_is_the_course_model_in_transformers_names(tokenizer):
    config = hf_clip_config(tokenizer)
    model = CLIPModel(config)
    vocab = tokenizer.get_vocab()
    assert (config.text_config.eos_token_id, config.text_config.pad_token_id) == (vocab["[EOT]"], vocab["[PAD]"])
    assert config.text_config.max_position_embeddings == tokenizer.context_length
    v = config.vision_config
    assert (v.image_size, v.patch_size, v.num_channels, v.hidden_size, v.num_hidden_layers) == (16, 4, 1, 64, 2)
    # logit_scale starts at ln(1/0.07), as the course's CLIP and open_clip
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07), abs=1e-4)
    assert model.visual_projection.bias is None and model.text_projection.bias is None
    assert tuple(model.visual_projection.weight.shape) == (64, 64)


def test_return_loss_equals_the_course_clip_loss(adapter, tokenizer):
    batch = _batch(tokenizer)
    with torch.no_grad():
        adapter.model.logit_scale.fill_(1.3)  # a scale away from the initial one
        out = adapter.model(input_ids=batch["input_ids"], pixel_values=batch["image"],
                            attention_mask=batch["attention_mask"], return_loss=True)
        ours = clip_loss(out.image_embeds, out.text_embeds, adapter.model.logit_scale.exp())
        torch.testing.assert_close(out.loss, ours, rtol=1e-6, atol=1e-6)
        # the adapter's forward gives the same embeddings, so fit's default loss is HF's loss
        mine = adapter(image=batch["image"], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        torch.testing.assert_close(mine.image_embeds, out.image_embeds, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mine.text_embeds, out.text_embeds, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mine.logits_per_image, out.logits_per_image, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(clip_loss_fn(adapter, batch), hf_loss_fn(adapter, batch), rtol=1e-5, atol=1e-6)
    assert out.loss.item() != pytest.approx(math.log(len(batch["image"])), abs=1e-3)  # not a chance-level constant


def test_text_features_pool_at_the_end_of_text_token(adapter, tokenizer):
    batch = _batch(tokenizer)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        hidden = adapter.model.text_model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, E)
        at_eot = hidden[torch.arange(len(ids)), eot_positions(mask)]  # the course's pooling rule
        expected = adapter.model.text_projection(at_eot)
        torch.testing.assert_close(adapter.encode_text(ids, mask), expected, rtol=1e-5, atol=1e-6)
        # dropping all-padding columns changes nothing (causal attention + EOS pooling)
        full = as_features(adapter.model.get_text_features(input_ids=ids, attention_mask=mask))
        torch.testing.assert_close(adapter.encode_text(ids, mask), full, rtol=1e-5, atol=1e-6)
        # and the mask defaults to ids != [PAD]
        torch.testing.assert_close(adapter.encode_text(ids), full, rtol=1e-5, atol=1e-6)


def test_image_features_are_the_projected_cls_token(adapter, tokenizer):
    image = _batch(tokenizer)["image"]
    with torch.no_grad():
        vision = adapter.model.vision_model(pixel_values=image)
        cls = adapter.model.vision_model.post_layernorm(vision.last_hidden_state[:, 0])
        torch.testing.assert_close(adapter.encode_image(image), adapter.model.visual_projection(cls))
        torch.testing.assert_close(adapter.encode_image(image, normalize=True).norm(dim=-1), torch.ones(len(image)))


def test_as_features_accepts_every_version():
    x = torch.randn(3, 4)
    assert as_features(x) is x  # transformers 4.x: a tensor
    assert as_features(BaseModelOutputWithPooling(last_hidden_state=torch.randn(3, 5, 8), pooler_output=x)) is x  # 5.x
    assert as_features((torch.randn(3, 5, 8), x)) is x  # return_dict=False
    with pytest.raises(ValueError, match="pooler_output"):
        as_features({"logits": x})


@pytest.mark.parametrize("call, message", [
    (lambda a, b: a.encode_image(torch.rand(2, 1, 8, 8)), "expects"),
    (lambda a, b: a.encode_image(torch.zeros(2, 16, 16)), r"\(B, C, H, W\)"),
    (lambda a, b: a.encode_text(b["input_ids"] + 1000), "vocab_size"),
    (lambda a, b: a.encode_text(b["input_ids"].float()), "integer"),
    (lambda a, b: a.encode_text(torch.ones(2, 40, dtype=torch.long)), "max_position_embeddings"),
    (lambda a, b: a.encode_text(torch.full((2, 5), 7)), "end-of-text"),
    (lambda a, b: a(), "image, input_ids, or both"),
])
def test_bad_input_is_named(adapter, tokenizer, call, message):
    with pytest.raises(ValueError, match=message):
        call(adapter, _batch(tokenizer))


def test_adapter_rejects_a_non_clip_model():
    with pytest.raises(ValueError, match="CLIPModel"):
        HFCLIPAdapter(torch.nn.Linear(2, 2))


def test_fit_trains_it_and_clamps_the_logit_scale_hf_never_clamps(adapter, tokenizer):
    loader = [_batch(tokenizer, seed=s) for s in range(3)]
    with torch.no_grad():
        adapter.model.logit_scale.fill_(6.0)  # above ln 100 = 4.605: HF itself would leave it there
    before = {k: v.clone() for k, v in adapter.state_dict().items()}
    history = fit(adapter, loader, TrainConfig(epochs=2, lr=1e-3, progress=False, device="cpu"))
    assert adapter.model.logit_scale.item() <= math.log(100) + 1e-6
    assert history.logit_scale[0] == pytest.approx(100.0)  # recorded exponentiated, after the clamp
    assert len(history.loss) == 6 and all(math.isfinite(x) for x in history.loss)
    changed = [k for k, v in adapter.state_dict().items() if not torch.equal(v, before[k])]
    assert any("vision_model" in k for k in changed) and any("text_model" in k for k in changed)


def test_zero_shot_and_retrieval_work_unchanged(adapter, tokenizer):
    weights = build_zero_shot_classifier(adapter, tokenizer, meta.DIGIT_CLASSNAMES, meta.DIGIT_TEMPLATES_HELDOUT)
    assert weights.shape == (SMALL.embed_dim, 10)
    torch.testing.assert_close(weights.norm(dim=0), torch.ones(10))
    batch = _batch(tokenizer)
    with torch.no_grad():
        out = adapter(**batch)
    metrics = retrieval_metrics(out.image_embeds, out.text_embeds)
    assert 0 <= metrics["image_to_text_R@1"] <= 1 and metrics["text_to_image_mean_rank"] >= 1


def test_save_and_load_round_trip_offline(adapter, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = save_hf_clip(adapter, tokenizer, tmp_path / "digits_clip")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    loaded, tok = load_hf_clip(folder)
    assert isinstance(loaded.model, CLIPModel) and not loaded.training
    for key, value in adapter.model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[key], value, rtol=0, atol=0, msg=key)
    batch = _batch(tokenizer)
    torch.testing.assert_close(tok(["a blurry seven."])["input_ids"], tokenizer(["a blurry seven."])["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits_per_image, adapter(**batch).logits_per_image)


def test_load_names_a_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(ValueError, match="model.safetensors"):
        load_hf_clip(tmp_path)


def test_cached_digits_model_trains_once(tmp_path):
    config = TrainConfig(epochs=1, lr=2e-3, progress=False, device="cpu")
    model, tokenizer, history = load_digits_hf_clip(settings=SMALL, train_config=config, cache_dir=tmp_path)
    assert isinstance(model, HFCLIPAdapter) and len(history.val) == 1 and "zero_shot_top1" in history.val[0]
    files = list(tmp_path.glob("digits_hf_clip_*.pt"))
    assert len(files) == 1 and not list(tmp_path.glob("*.partial.pt"))
    again, _, history2 = load_digits_hf_clip(settings=SMALL, train_config=config, cache_dir=tmp_path)
    assert history2.loss == history.loss
    for key, value in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, rtol=0, atol=0, msg=key)
    image = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(F.normalize(again.encode_image(image), dim=-1), model.encode_image(image, normalize=True))
