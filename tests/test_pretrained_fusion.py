"""Lesson 08's cached models: the extended tokenizer keeps the course's ids, models train once and
then load from the cache, and the loaders build what they promise."""
import pytest
import torch

import mmcourse.recipes.fusion as pf
from mmcourse.data import faces_corpus, vqa_corpus
from mmcourse.models import FUSIONS, FusionModel
from mmcourse.data.tokenizer import default_tokenizer, caption_corpus
from conftest import link_shared_models

FAST = dict(epochs=1, progress=False, device="cpu")


def test_fusion_tokenizer_keeps_the_course_ids_and_knows_every_new_word():
    base, tok = default_tokenizer(), pf.fusion_tokenizer()
    assert tok.vocab_size > base.vocab_size
    for word, i in base.get_vocab().items():
        assert tok.get_vocab()[word] == i
    sample = caption_corpus()[::50]
    torch.testing.assert_close(tok(sample)["input_ids"], base(sample)["input_ids"])
    ids = tok(vqa_corpus() + faces_corpus())["input_ids"]
    assert not (ids == tok.unk_token_id).any()
    assert (base(["is there a red circle?"])["input_ids"] == base.unk_token_id).any()  # "?" was unknown before


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(2, 2)

    def forward(self, x):
        return self.w(x)


def test_a_recipe_trains_once(tmp_path, monkeypatch):
    """Any nn.Module with its own loss_fn goes through the one Recipe / train_or_load convention."""
    from mmcourse.recipes import Recipe, train_or_load

    data = [(torch.randn(4, 2), torch.randint(0, 2, (4,))) for _ in range(3)]
    loss = lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1])  # noqa: E731
    recipe = Recipe("tiny", Tiny, {"width": 2}, pf.TrainConfig(**FAST), lambda: data, {"n": 3}, loss_fn=loss)
    model, history, path = train_or_load(recipe, cache=tmp_path)
    assert len(history.loss) == 3 and not model.training
    assert path == recipe.path(tmp_path) and path.exists() and not list(tmp_path.glob("*.partial.pt"))
    import mmcourse.recipes.cache as cache  # the one train-once mechanism

    monkeypatch.setattr(cache, "fit", lambda *a, **k: pytest.fail("should have loaded from the cache"))
    again, history2, _ = train_or_load(recipe, cache=tmp_path)
    assert history2.loss == history.loss
    torch.testing.assert_close(again.w.weight, model.w.weight)
    with pytest.raises(pytest.fail.Exception):  # another model key trains again
        train_or_load(Recipe("tiny", Tiny, {"width": 3}, pf.TrainConfig(**FAST), lambda: data, {"n": 3}, loss_fn=loss),
                      cache=tmp_path)
    with pytest.raises(TypeError, match="takes a Recipe"):
        train_or_load("tiny", cache=tmp_path)


@pytest.mark.parametrize("fusion", ["text", "film"])
def test_load_sentiment_and_vqa_models(tmp_path, fusion):
    model, history = pf.load_sentiment_model(fusion, n_train=64, train_config=pf.sentiment_train_config(**FAST),
                                             cache=tmp_path)
    assert isinstance(model, FusionModel) and model.config.fusion == fusion and model.config.num_classes == 2
    assert len(history.loss) == 1
    model, history = pf.load_vqa_model(fusion, from_clip=False, freeze_towers=False, n_train=64,
                                       train_config=pf.vqa_train_config(**FAST), cache=tmp_path)
    assert model.config.num_classes == 15 and model.config.towers.vocab_size == pf.fusion_tokenizer().vocab_size
    assert len(list(tmp_path.glob("*.pt"))) == 2
    assert fusion in FUSIONS
    with pytest.raises(ValueError, match="needs from_clip=True"):
        pf.load_vqa_model(fusion, from_clip=False, cache=tmp_path)


def test_image_features_replace_the_images_of_a_dataset():
    items = [{"image": torch.full((1, 2, 2), float(i)), "caption": f"c{i}", "label": i, "index": i} for i in range(3)]

    class Data(list):
        images = torch.stack([it["image"] for it in items])

    data = pf._with_image_features(Data(items), {"image_features": lambda x: x.flatten(1) * 2}, batch_size=2)
    assert len(data) == 3 and "image" not in data[1] and data[1]["caption"] == "c1"
    assert data[2]["image_features"].tolist() == [4.0] * 4
    with pytest.raises(ValueError, match="features for"):
        pf._WithImageFeatures(Data(items), {"image_features": torch.zeros(2, 4)})


@pytest.mark.slow
def test_itm_and_vqa_from_clip_start_from_lesson_06s_towers(tmp_path):
    from mmcourse.recipes import load_shapes_clip

    link_shared_models(tmp_path, lambda: load_shapes_clip(two_objects=True), "shapes_clip")
    clip = load_shapes_clip(two_objects=True, cache_dir=tmp_path).model.cpu()
    model, history = pf.load_itm_model(hard=True, n_train=128, train_config=pf.itm_train_config(**FAST), cache=tmp_path)
    assert model.config.num_classes == 2 and len(history.loss) == 128 // 64  # one epoch of batches of 64
    assert not any(p.requires_grad for p in model.visual.parameters())  # frozen towers by default
    for name, value in clip.visual.state_dict().items():  # untouched, BatchNorm statistics included
        assert torch.equal(model.visual.state_dict()[name], value), name
    fresh, _ = pf.load_vqa_model("cross_attention", from_clip=True, freeze_towers=False, n_train=64,
                                 train_config=pf.vqa_train_config(**FAST, lr=1e-12), cache=tmp_path)
    # a learning rate of ~0 leaves the image tower where the CLIP's was (BatchNorm statistics aside)
    torch.testing.assert_close(fresh.visual.convs[0].weight, clip.visual.convs[0].weight, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_vqa_models_share_their_scenes_and_frozen_features(tmp_path):
    """The five VQA models of lesson 08 render their training scenes once and compute the frozen image tower's
    output once per kind of input; what they train on is exactly what each would compute alone."""
    from mmcourse.recipes import load_shapes_clip

    link_shared_models(tmp_path, lambda: load_shapes_clip(two_objects=True), "shapes_clip")
    pf._vqa_train_set.cache_clear()
    pf._FROZEN_FEATURES.clear()
    first = pf._vqa_train_set(64, 0, True)
    assert pf._vqa_train_set(64, 0, True) is first and pf._vqa_train_set(64, 1, True) is not first
    model = pf.load_vqa_model("late", n_train=64, train_config=pf.vqa_train_config(**FAST), cache=tmp_path)[0]
    features = pf._frozen_image_features(model, first)["image_features"]
    assert pf._frozen_image_features(model, first)["image_features"] is features  # computed once
    with torch.no_grad():
        torch.testing.assert_close(features, model.eval().encode_image(first.images))
    film = pf.load_vqa_model("film", n_train=64, train_config=pf.vqa_train_config(**FAST), cache=tmp_path)[0]
    tokens = pf._frozen_image_features(film, first)["image_features"]
    assert tokens.dim() == 3 and features.dim() == 2  # tokens for FiLM, pooled for late fusion
