"""Tests for mmcourse.checks.assistant: the right answers pass, each named mistake is named."""
import pytest
import torch
import torch.nn.functional as F

from conftest import fails_with
from mmcourse.classroom.checks.assistant import (_labels_cases, _labels_variant, _merge_variant, check_assistant_labels,
                                       check_merge_image_features, check_projector,
                                       check_where_turns, reference_assistant_labels)


def good_labels(input_ids, attention_mask, assistant_token_id, end_token_id):
    out = torch.full_like(input_ids, -100)
    for b in range(input_ids.shape[0]):
        inside = False
        for t in range(input_ids.shape[1]):
            if attention_mask[b, t] == 0:
                continue
            if input_ids[b, t] == assistant_token_id:
                inside = True
            elif inside:
                out[b, t] = input_ids[b, t]
                inside = input_ids[b, t] != end_token_id
    return out


def test_labels_right_answers_pass():
    assert check_assistant_labels(good_labels).passed
    assert check_assistant_labels(reference_assistant_labels).passed


def test_label_cases_hold_what_the_variants_need():
    ids, mask = _labels_cases()[1].args
    assert ((ids == 0) & (mask == 1)).any()  # a real token with id 0
    labels = good_labels(ids, mask, 12, 13)
    assert (labels == 0).any()


@pytest.mark.parametrize("kind, fragment", [
    ("everything", "every token is scored"), ("user", "wrong way round"), ("role", "<|assistant|> token itself"),
    ("no_end", "never learns to stop"), ("first", "only the first"), ("last", "only the last"),
    ("pad_by_id", "found by its id"),
])
def test_label_mistakes_are_named(kind, fragment):
    fails_with(check_assistant_labels, _labels_variant(kind), fragment)


def good_projector(x, w1, b1, w2, b2):
    return F.gelu(x @ w1.T + b1) @ w2.T + b2


def test_projector_right_answer_passes_and_mistakes_are_named():
    assert check_projector(good_projector).passed
    fails_with(check_projector, lambda x, w1, b1, w2, b2: F.relu(x @ w1.T + b1) @ w2.T + b2, "ReLU instead of GELU")
    fails_with(check_projector, lambda x, w1, b1, w2, b2: (x @ w1.T + b1) @ w2.T + b2, "no activation")
    fails_with(check_projector, lambda x, w1, b1, w2, b2: F.gelu(x @ w1.T) @ w2.T, "biases are missing")
    fails_with(check_projector, lambda x, w1, b1, w2, b2: F.gelu(F.gelu(x @ w1.T + b1) @ w2.T + b2), "second layer")


def good_merge(inputs_embeds, input_ids, image_features, image_token_id):
    out = inputs_embeds.clone()
    for b in range(len(input_ids)):
        out[b, input_ids[b] == image_token_id] = image_features[b]
    return out


@pytest.mark.parametrize("kind, fragment", [("reverse", "reverse order"), ("first_image", "first image"),
                                            ("first_token", "one image token")])
def test_merge_right_answer_passes_and_mistakes_are_named(kind, fragment):
    assert check_merge_image_features(good_merge).passed
    fails_with(check_merge_image_features, _merge_variant(kind), fragment)


def test_where_turns():
    assert check_where_turns(lambda objs: [(f"where is the {o[1]}?", o[2]) for o in objs]).passed
    fails_with(check_where_turns, lambda objs: [(f"where is the {o[1]}?", f"in the {o[2]}") for o in objs], "phrase")
    fails_with(check_where_turns, lambda objs: [(f"where is the {o[0]} {o[1]}?", o[2]) for o in objs], "colour")
