"""Assignment 11's checks: right answers pass; typical wrong answers, written as a student would
write them, fail with the message that names the mistake."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import fails_with

from mmcourse.classroom.checks import hf as checks
from mmcourse.classroom.checks.core import CheckFailed


# ------------------------------------------------------------------ exercise 1: CLIPModel's parts
def logits_right(model, pixel_values, input_ids, attention_mask):
    image = model.visual_projection(model.vision_model(pixel_values=pixel_values).pooler_output)
    text = model.text_projection(model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output)
    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    return model.logit_scale.exp() * image @ text.T


def logits_per_text(model, pixel_values, input_ids, attention_mask):
    return logits_right(model, pixel_values, input_ids, attention_mask).T


def logits_log_scale(model, pixel_values, input_ids, attention_mask):
    image = model.visual_projection(model.vision_model(pixel_values=pixel_values).pooler_output)
    text = model.text_projection(model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output)
    return model.logit_scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T


def logits_unnormalised(model, pixel_values, input_ids, attention_mask):
    image = model.visual_projection(model.vision_model(pixel_values=pixel_values).pooler_output)
    text = model.text_projection(model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output)
    return model.logit_scale.exp() * image @ text.T


def logits_last_token(model, pixel_values, input_ids, attention_mask):
    image = model.visual_projection(model.vision_model(pixel_values=pixel_values).pooler_output)
    hidden = model.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    text = model.text_projection(hidden[:, -1])
    return model.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T


def logits_no_projection(model, pixel_values, input_ids, attention_mask):
    image = model.vision_model(pixel_values=pixel_values).pooler_output
    text = model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
    return model.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T


def logits_raw_cls(model, pixel_values, input_ids, attention_mask):
    image = model.visual_projection(model.vision_model(pixel_values=pixel_values).last_hidden_state[:, 0])
    text = model.text_projection(model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output)
    return model.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T


def test_hf_clip_logits_right_answer_passes():
    result = checks.check_hf_clip_logits(logits_right, raise_on_fail=False)
    assert result.passed, result.text()


@pytest.mark.parametrize("wrong, fragment", [
    (logits_per_text, "logits_per_text"),
    (logits_log_scale, "logit_scale.exp()"),
    (logits_unnormalised, "not L2-normalised"),
    (logits_last_token, "last position"),
    (logits_no_projection, "not projected"),
    (logits_raw_cls, "post_layernorm"),
])
def test_hf_clip_logits_mistakes_are_named(wrong, fragment):
    fails_with(checks.check_hf_clip_logits, wrong, fragment)


def test_the_check_model_is_not_at_its_initial_scale():
    model = checks.tiny_clip_model()
    assert model.logit_scale.exp().item() == pytest.approx(20.0)
    assert model.visual_projection.weight.shape == (16, 32)


# ------------------------------------------------------------ exercise 2: sentence embedding
def sentence_right(last_hidden_state, attention_mask, normalize=True):
    m = attention_mask.unsqueeze(-1).float()
    mean = (last_hidden_state * m).sum(dim=1) / m.sum(dim=1)
    return F.normalize(mean, dim=-1) if normalize else mean


def sentence_loop(last_hidden_state, attention_mask, normalize=True):  # a different, also right, way
    rows = []
    for x, mask in zip(last_hidden_state, attention_mask):
        v = x[mask.bool()].mean(0)
        rows.append(v / v.norm() if normalize else v)
    return torch.stack(rows)


def sentence_padding_included(last_hidden_state, attention_mask, normalize=True):
    mean = last_hidden_state.mean(dim=1)
    return F.normalize(mean, dim=-1) if normalize else mean


def sentence_padded_length(last_hidden_state, attention_mask, normalize=True):
    m = attention_mask.unsqueeze(-1).float()
    mean = (last_hidden_state * m).sum(1) / last_hidden_state.shape[1]
    return F.normalize(mean, dim=-1) if normalize else mean


def sentence_not_normalised(last_hidden_state, attention_mask, normalize=True):
    m = attention_mask.unsqueeze(-1).float()
    return (last_hidden_state * m).sum(1) / m.sum(1)


def sentence_always_normalised(last_hidden_state, attention_mask, normalize=True):
    m = attention_mask.unsqueeze(-1).float()
    return F.normalize((last_hidden_state * m).sum(1) / m.sum(1), dim=-1)


def sentence_cls(last_hidden_state, attention_mask, normalize=True):
    return F.normalize(last_hidden_state[:, 0], dim=-1) if normalize else last_hidden_state[:, 0]


def sentence_token_norm(last_hidden_state, attention_mask, normalize=True):
    m = attention_mask.unsqueeze(-1).float()
    x = F.normalize(last_hidden_state, dim=-1) if normalize else last_hidden_state
    return (x * m).sum(1) / m.sum(1)


def sentence_batch_norm(last_hidden_state, attention_mask, normalize=True):
    m = attention_mask.unsqueeze(-1).float()
    mean = (last_hidden_state * m).sum(1) / m.sum(1)
    return F.normalize(mean, dim=0) if normalize else mean


@pytest.mark.parametrize("right", [sentence_right, sentence_loop])
def test_sentence_embedding_right_answers_pass(right):
    result = checks.check_sentence_embedding(right, raise_on_fail=False)
    assert result.passed, result.text()


@pytest.mark.parametrize("wrong, fragment", [
    (sentence_padding_included, "padding included"),
    (sentence_padded_length, "padded length"),
    (sentence_not_normalised, "forgot to normalise"),
    (sentence_always_normalised, "although normalize=False"),
    (sentence_cls, "[CLS]"),
    (sentence_token_norm, "normalised every token before pooling"),
    (sentence_batch_norm, "batch dimension"),
])
def test_sentence_embedding_mistakes_are_named(wrong, fragment):
    fails_with(checks.check_sentence_embedding, wrong, fragment)


# -------------------------------------------------------------------- exercise 3: EOS pooling
def eos_right(last_hidden_state, input_ids, eos_token_id):
    first = (input_ids == eos_token_id).int().argmax(dim=-1)
    return last_hidden_state[torch.arange(len(input_ids)), first]


def eos_loop(last_hidden_state, input_ids, eos_token_id):
    rows = []
    for x, ids in zip(last_hidden_state, input_ids):
        rows.append(x[ids.tolist().index(eos_token_id)])
    return torch.stack(rows)


def eos_last(last_hidden_state, input_ids, eos_token_id):
    positions = [max(i for i, t in enumerate(ids.tolist()) if t == eos_token_id) for ids in input_ids]
    return last_hidden_state[torch.arange(len(input_ids)), torch.tensor(positions)]


def eos_argmax(last_hidden_state, input_ids, eos_token_id):
    return last_hidden_state[torch.arange(len(input_ids)), input_ids.argmax(dim=-1)]


def eos_final_position(last_hidden_state, input_ids, eos_token_id):
    return last_hidden_state[:, -1]


def eos_nonzero_count(last_hidden_state, input_ids, eos_token_id):
    return last_hidden_state[torch.arange(len(input_ids)), (input_ids != 0).sum(-1) - 1]


@pytest.mark.parametrize("right", [eos_right, eos_loop])
def test_eos_pool_right_answers_pass(right):
    result = checks.check_eos_pool(right, raise_on_fail=False)
    assert result.passed, result.text()


@pytest.mark.parametrize("wrong, fragment", [
    (eos_last, "LAST end-of-text"),
    (eos_argmax, "largest id"),
    (eos_final_position, "last position"),
    (eos_nonzero_count, "LAST end-of-text"),  # with EOS as padding, the last non-zero id is the last EOS
])
def test_eos_pool_mistakes_are_named(wrong, fragment):
    fails_with(checks.check_eos_pool, wrong, fragment)


# ------------------------------------------------------------------ question: unknown words
@pytest.mark.parametrize("answer", ["a", "A", "(a)", " a "])
def test_unk_prediction_right(answer):
    assert checks.check_unk_prediction(answer, raise_on_fail=False).passed


@pytest.mark.parametrize("answer, fragment", [("b", "token ids"), ("c", "same token ids"), ("d", "one letter"),
                                              (None, "one letter"), (0.9, "one letter")])
def test_unk_prediction_wrong(answer, fragment):
    with pytest.raises(CheckFailed, match=fragment):
        checks.check_unk_prediction(answer)


def test_the_unk_premise_holds_for_the_course_tokenizer():
    """The question's premise: both captions really are the same ids for the course tokenizer."""
    from mmcourse.data.tokenizer import default_tokenizer

    tok = default_tokenizer()
    a, b = tok(["a crimson disc."]), tok(["a scarlet disc."])
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert tok.tokenize("a crimson disc.") == ["[SOT]", "a", "[UNK]", "[UNK]", ".", "[EOT]"]
