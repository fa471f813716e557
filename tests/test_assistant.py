"""Tests for the visual assistant (lesson 14): the labels against a naive loop and against
transformers' `apply_chat_template(return_assistant_tokens_mask=True)`, the splice, the causal
language model, the losses against `F.cross_entropy`, what each stage trains, and the data."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmcourse.data.conversations import (ASSISTANT_TOKEN, END_TOKEN, IMAGE_TOKEN, TURN_TYPES, ShapesConversations,
                                         absent_objects, assistant_tokenizer, chat_collate, chat_template_messages,
                                         chat_text, scene_caption, where_turns, CHAT_TEMPLATE)
from mmcourse.models import CLIP, CLIPConfig
from mmcourse.models.assistant import (AssistantConfig, DecoderLM, Projector, VisualAssistant, answer_questions,
                                       assistant_labels, assistant_loss, caption_loss, expand_image_tokens,
                                       merge_image_features, set_trainable)


@pytest.fixture(scope="module")
def tok():
    return assistant_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(image_encoder="cnn", image_size=32, in_channels=3, cnn_channels=(8, 8, 16, 16),
                           cnn_stem_stride=2))
    return VisualAssistant(clip, AssistantConfig.for_tokenizer(tok, clip, width=32, heads=4)).eval()


def naive_labels(ids, mask, a, e):
    out = torch.full_like(ids, -100)
    for b in range(ids.shape[0]):
        inside = False
        for t in range(ids.shape[1]):
            if not mask[b, t]:
                continue
            if ids[b, t] == a:
                inside = True
                continue
            if inside:
                out[b, t] = ids[b, t]
            if ids[b, t] == e:
                inside = False
    return out


def test_labels_equal_a_naive_loop_and_transformers_assistant_mask(tok):
    data = ShapesConversations("val", n=40, seed=3)
    enc = tok([chat_text(t) for t in data.conversations])
    v = tok.get_vocab()
    labels = assistant_labels(enc["input_ids"], enc["attention_mask"], v[ASSISTANT_TOKEN], v[END_TOKEN])
    assert torch.equal(labels, naive_labels(enc["input_ids"], enc["attention_mask"], v[ASSISTANT_TOKEN], v[END_TOKEN]))
    hf = tok.hf
    hf.chat_template = CHAT_TEMPLATE
    for i, turns in enumerate(data.conversations[:10]):
        out = hf.apply_chat_template(chat_template_messages(turns), tokenize=True, return_dict=True,
                                     return_assistant_tokens_mask=True)
        n = len(out["input_ids"])
        assert out["input_ids"] == enc["input_ids"][i, :n].tolist()
        assert out["assistant_masks"] == (labels[i, :n] != -100).long().tolist()
    # every answer word and every <|end|> is labelled; nothing else
    n_turns = sum(len(t) for t in data.conversations)
    assert (labels == v[END_TOKEN]).sum() == n_turns


def test_labels_reject_bad_shapes():
    with pytest.raises(ValueError, match="same"):
        assistant_labels(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4), 1, 2)


def test_expand_and_merge_place_image_tokens_in_order():
    ids = torch.tensor([[2, 9, 5, 6, 3], [2, 9, 7, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    eids, emask = expand_image_tokens(ids, mask, 9, 3)
    assert eids.tolist() == [[2, 9, 9, 9, 5, 6, 3], [2, 9, 9, 9, 7, 3, 0]]
    assert emask[1].tolist() == [1, 1, 1, 1, 1, 1, 0]
    embeds = torch.randn(2, 7, 4)
    feats = torch.randn(2, 3, 4)
    out = merge_image_features(embeds, eids, feats, 9)
    loop = embeds.clone()
    for b in range(2):
        loop[b, 1:4] = feats[b]
    torch.testing.assert_close(out, loop)
    with pytest.raises(ValueError, match="exactly one"):
        expand_image_tokens(torch.tensor([[2, 5, 3]]), torch.ones(1, 3, dtype=torch.long), 9, 3)
    with pytest.raises(ValueError, match="do not match"):
        merge_image_features(embeds, eids, torch.randn(2, 2, 4), 9)


def test_decoder_lm_is_causal_and_ignores_padding():
    torch.manual_seed(0)
    lm = DecoderLM(20, 10, 16, 2, 2).eval()
    ids = torch.randint(5, 20, (2, 8))
    base = lm(ids)
    changed = ids.clone()
    changed[:, 5] = 7
    torch.testing.assert_close(lm(changed)[:, :5], base[:, :5])  # the past never sees the future
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    padded = ids.clone()
    padded[0, 6:] = 0
    torch.testing.assert_close(lm(padded, mask)[0, :6], base[0, :6])
    assert lm.lm_head.weight is lm.token_embedding.weight
    with pytest.raises(ValueError, match="exactly one"):
        lm()
    with pytest.raises(ValueError, match="max_positions"):
        lm(torch.zeros(1, 11, dtype=torch.long))


def test_projector_is_linear_gelu_linear():
    p = Projector(6, 5, "mlp")
    x = torch.randn(2, 4, 6)
    ref = F.linear(F.gelu(F.linear(x, p.linear_1.weight, p.linear_1.bias)), p.linear_2.weight, p.linear_2.bias)
    torch.testing.assert_close(p(x), ref)
    lin = Projector(6, 5, "linear")
    torch.testing.assert_close(lin(x), F.linear(x, lin.linear_1.weight, lin.linear_1.bias))
    with pytest.raises(ValueError, match="projector|kind"):
        Projector(6, 5, "conv")


def test_losses_equal_cross_entropy_on_the_labelled_positions(model, tok):
    data = ShapesConversations("val", n=6, seed=1)
    batch = chat_collate(tok, "chat")([data[i] for i in range(6)])
    c = model.config
    ids, mask = expand_image_tokens(batch["input_ids"], batch["attention_mask"], c.image_token_id, c.num_image_tokens)
    with torch.no_grad():
        logits = model(batch["image"], ids, mask)
        labels = naive_labels(ids, mask, c.assistant_token_id, c.end_token_id)
        terms = [F.cross_entropy(logits[b, t - 1][None], labels[b, t][None])
                 for b in range(len(ids)) for t in range(1, ids.shape[1]) if labels[b, t] != -100]
        torch.testing.assert_close(assistant_loss(model, batch), torch.stack(terms).mean())
        cap = chat_collate(tok, "caption")([data[i] for i in range(6)])
        ids, mask = expand_image_tokens(cap["input_ids"], cap["attention_mask"], c.image_token_id, c.num_image_tokens)
        logits = model(cap["image"], ids, mask)
        terms = [F.cross_entropy(logits[b, t - 1][None], ids[b, t][None]) for b in range(len(ids))
                 for t in range(1 + c.num_image_tokens, ids.shape[1]) if mask[b, t]]
        torch.testing.assert_close(caption_loss(model, cap), torch.stack(terms).mean())


def test_stages_train_what_llava_trains(model):
    counts = set_trainable(model, "align")
    assert counts["vision_tower"] == 0 and counts["language_model"] == 0 and counts["multi_modal_projector"] > 0
    counts = set_trainable(model, "instruct")
    assert counts["vision_tower"] == 0 and counts["language_model"] > 0
    counts = set_trainable(model, "pretrain")
    assert counts["multi_modal_projector"] == 0 and counts["language_model"] > 0
    model.train()
    assert not model.vision_tower.training  # BatchNorm statistics stay CLIP's
    model.eval()
    with pytest.raises(ValueError, match="stage"):
        set_trainable(model, "finetune")


def test_answers_equal_one_question_at_a_time(model, tok):
    data = ShapesConversations("val", n=5, seed=2)
    questions = ["how many shapes are there?", "what colour is the circle?", "is there a red square?",
                 "what is to the left of the cross?", "how many shapes are there?"]
    together = answer_questions(model, tok, data.images, questions, max_new_tokens=3)
    alone = [answer_questions(model, tok, data.images[i : i + 1], [q], max_new_tokens=3)[0]
             for i, q in enumerate(questions)]
    assert together == alone
    with pytest.raises(ValueError, match="questions"):
        answer_questions(model, tok, data.images, questions[:2])


def test_conversations_answer_the_scene_and_respect_the_holdout():
    data = ShapesConversations("train", n=300, seed=0, holdout=("red circle",))
    for objs, turns in zip(data.objects, data.conversations):
        assert ("red", "circle") not in {(o[0], o[1]) for o in objs}
        for q, a in turns:
            assert "red circle" not in q
            if q.startswith("is there"):
                present = q[len("is there a "):-1] in {f"{o[0]} {o[1]}" for o in objs}
                assert a == ("yes" if present else "no")
            if q.startswith("what colour is the"):
                assert a == [o[0] for o in objs if o[1] == q.split()[-1][:-1]][0]
    assert any(a == "no" for t in data.conversations for _, a in t)
    positive = ShapesConversations("train", n=300, seed=0, negatives=False)
    assert not any(a == "no" for t in positive.conversations for _, a in t)
    assert scene_caption([("red", "circle", "bottom right", "small"), ("blue", "cross", "top left", "large")]) == \
        "a large blue cross in the top left and a small red circle in the bottom right."
    assert where_turns([("red", "circle", "bottom right", "small")]) == [("where is the circle?", "bottom right")]
    adversarial = absent_objects([("red", "circle", "top left", "small"), ("blue", "cross", "top right", "small")], True)
    assert sorted(adversarial) == [("blue", "circle"), ("red", "cross")]
    with pytest.raises(ValueError, match="turn types"):
        ShapesConversations("train", n=5, types=("colour", "size"))
    with pytest.raises(ValueError, match="turns"):
        ShapesConversations("train", n=5, turns=0)


def test_tokenizer_keeps_chat_tokens_whole(tok):
    ids = tok.encode(chat_text([("how many shapes are there?", "two")]))
    tokens = tok.hf.convert_ids_to_tokens(ids)
    assert tokens[:3] == ["[SOT]", IMAGE_TOKEN, "<|user|>"] and tokens[-3:] == ["two", END_TOKEN, "[EOT]"]
    assert tok.decode(ids) == "how many shapes are there ? two"
    with pytest.raises(ValueError, match="longer"):
        chat_collate(tok, "text")([{"text": " ".join(["circle"] * 60)}])


def test_answers_equal_greedy_decoding_by_hand(model, tok, monkeypatch):
    """answer_questions = argmax next token after the full prompt `... question ? <|assistant|>`, repeated;
    the prompt handed to decoding ends at '?' (decoding starts from <|assistant|>, so it is never doubled)."""
    data = ShapesConversations("val", n=3, seed=4)
    questions = ["what colour is the circle?", "how many shapes are there?", "is there a red square?"]
    c = model.config
    expected = []
    for i, q in enumerate(questions):
        ids = torch.tensor([tok.encode(chat_text([(q, None)]))[:-1]])  # ends with <|assistant|>
        ids, mask = expand_image_tokens(ids, torch.ones_like(ids), c.image_token_id, c.num_image_tokens)
        out = []
        with torch.no_grad():
            for _ in range(4):
                logits = model(data.images[i : i + 1], ids)[0, -1]
                logits[[c.pad_token_id, c.sot_token_id, c.image_token_id, c.user_token_id, c.assistant_token_id]] = -1e9
                nxt = int(logits.argmax())
                if nxt == c.end_token_id:
                    break
                out.append(nxt)
                ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
        expected.append(tok.decode(out))
    prompts = []
    original = model.generate_answers
    monkeypatch.setattr(model, "generate_answers", lambda image, prompt, n: prompts.append(prompt) or original(image, prompt, n))
    assert answer_questions(model, tok, data.images, questions, max_new_tokens=4) == expected
    for prompt in prompts:
        assert prompt[0, -1] == tok.get_vocab()["?"] and (prompt == c.assistant_token_id).sum() == 0
