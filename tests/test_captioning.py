"""The prefix captioner: causal and padding masks, labels -100, the loss against a naive loop,
frozen vs fine-tuned image tower, decoding, and the train-once cache."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmcourse.models import IGNORE_INDEX, CaptionerConfig, PrefixCaptioner, caption_labels, caption_loss
from mmcourse.recipes import captioner_train_config, load_captioner
from mmcourse.models import greedy_search
from mmcourse.models import CLIP, CLIPConfig

V, L, K = 12, 7, 3


def tiny(freeze=True, seed=0):
    torch.manual_seed(seed)
    clip = CLIP(CLIPConfig(image_width=16, text_width=16, embed_dim=8, cnn_channels=(4, 8), text_heads=2,
                           text_layers=1, vocab_size=V, context_length=L)).eval()
    config = CaptionerConfig(vocab_size=V, context_length=L, embed_dim=8, prefix_length=K, width=16, layers=2,
                             heads=2, freeze_image_tower=freeze)
    return PrefixCaptioner(clip, config)


def batch(B=3):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, V, (B, L), generator=g)
    ids[:, 0] = 2  # [SOT]
    mask = torch.ones(B, L, dtype=torch.long)
    for b, n in enumerate([L, 4, 5][:B]):
        ids[b, n - 1] = 3  # [EOT]
        ids[b, n:] = 0
        mask[b, n:] = 0
    return {"image": torch.rand(B, 1, 8, 8, generator=g), "input_ids": ids, "attention_mask": mask}


def test_causal_mask_position_t_never_sees_t_plus_1():
    model = tiny().eval()
    b = batch()
    prefix = model.image_prefix(b["image"])
    base = model.decode(prefix, b["input_ids"])  # (B, K + L, V)
    for t in range(1, L):
        changed = b["input_ids"].clone()
        changed[:, t] = (changed[:, t] + 1) % V
        out = model.decode(prefix, changed)
        torch.testing.assert_close(out[:, : K + t], base[:, : K + t])  # positions before token t: unchanged
        assert not torch.allclose(out[:, K + t], base[:, K + t])  # position of token t itself: changed


def test_padding_never_changes_real_positions_and_prefix_reaches_every_token():
    model = tiny().eval()
    b = batch()
    prefix = model.image_prefix(b["image"])
    base = model.decode(prefix, b["input_ids"], b["attention_mask"])
    noisy = b["input_ids"].masked_fill(b["attention_mask"] == 0, 7)  # other ids in the padding
    out = model.decode(prefix, noisy, b["attention_mask"])
    real = torch.cat([torch.ones(3, K, dtype=torch.bool), b["attention_mask"].bool()], 1)
    torch.testing.assert_close(out[real], base[real])
    other = model.decode(prefix.flip(0), b["input_ids"], b["attention_mask"])  # other images
    assert not torch.allclose(other[:, -1], base.flip(0)[:, -1])


def test_labels_are_minus_100_on_prefix_sot_and_padding_and_keep_a_real_token_0():
    ids = torch.tensor([[2, 0, 5, 3, 0, 0]])  # a real token with id 0 at position 1
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    labels = caption_labels(ids, mask, prefix_length=2)
    assert labels.tolist() == [[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 0, 5, 3, IGNORE_INDEX, IGNORE_INDEX]]
    with pytest.raises(ValueError, match="same"):
        caption_labels(ids, mask[:, :3], 2)


def naive_loss(model, b):
    """Token by token: the logits at position K + t - 1 predict caption token t, for t >= 1 real."""
    logits = model(b["image"], b["input_ids"], b["attention_mask"])
    terms = []
    for i in range(len(b["input_ids"])):
        for t in range(1, L):
            if b["attention_mask"][i, t]:
                terms.append(F.cross_entropy(logits[i, K + t - 1][None], b["input_ids"][i, t][None]))
    return torch.stack(terms).mean()


def test_loss_equals_a_naive_loop_and_counts_a_real_token_0():
    model = tiny()
    b = batch()
    torch.testing.assert_close(caption_loss(model, b), naive_loss(model, b))
    b["input_ids"][1, 1] = 0  # a real word whose id is 0 (inside the caption, mask 1)
    ours = caption_loss(model, b)
    torch.testing.assert_close(ours, naive_loss(model, b))
    # ClipCap's ignore_index=0 would silently drop it:
    logits = model(b["image"], b["input_ids"], b["attention_mask"])
    target = torch.cat([torch.zeros(3, K, dtype=torch.long), b["input_ids"]], 1)
    clipcap = F.cross_entropy(logits[:, :-1].reshape(-1, V), target[:, 1:].reshape(-1), ignore_index=0)
    assert not torch.allclose(ours, clipcap)
    with pytest.raises(ValueError, match="lacks"):
        caption_loss(model, {"image": b["image"]})


def test_frozen_tower_stays_fixed_and_in_eval_mode_fine_tuned_tower_learns():
    for freeze in (True, False):
        model = tiny(freeze)
        before = {k: v.clone() for k, v in model.clip.state_dict().items()}
        model.train()
        assert model.clip.training is (not freeze)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        for _ in range(2):
            opt.zero_grad()
            caption_loss(model, batch()).backward()
            opt.step()
        visual_changed = any(not torch.equal(before[k], v) for k, v in model.clip.state_dict().items()
                             if k.startswith("visual") or k.startswith("image_projection"))
        text_changed = any(not torch.equal(before[k], v) for k, v in model.clip.state_dict().items()
                           if k.startswith("text") or k == "logit_scale")
        assert visual_changed is (not freeze)
        assert not text_changed


def test_building_a_captioner_never_changes_the_clip_it_copies():
    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(image_width=16, text_width=16, embed_dim=8, cnn_channels=(4, 8), vocab_size=V,
                           context_length=L))
    weights = {k: v.clone() for k, v in clip.state_dict().items()}
    model = PrefixCaptioner(clip, CaptionerConfig(vocab_size=V, context_length=L, embed_dim=8, width=16, heads=2,
                                                  freeze_image_tower=False))
    with torch.no_grad():
        next(model.clip.parameters()).add_(1.0)
    assert all(torch.equal(weights[k], v) for k, v in clip.state_dict().items())


def test_generate_matches_greedy_search_on_the_prefix_and_never_emits_pad_or_sot():
    model = tiny().eval()
    images = batch()["image"]
    out = model.generate(images, max_new_tokens=5)
    ref = greedy_search(model.next_token_logits, model.image_prefix(images), sot_token_id=2, eot_token_id=3,
                        pad_token_id=0, max_new_tokens=5, suppress_tokens=[0, 2])
    assert torch.equal(out.sequences, ref.sequences)
    for seq, n in zip(out.sequences.tolist(), out.lengths.tolist()):
        assert 0 not in seq[1 : n + 1] and 2 not in seq[1 : n + 1]
    beam = model.generate(images, method="beam", beam_width=3, max_new_tokens=5)
    assert beam.sequences.shape == (3, 6)
    assert model.generate(images, method="sample", generator=torch.Generator().manual_seed(0)).sequences.shape == (3, L)
    with pytest.raises(ValueError, match="method"):
        model.generate(images, method="nucleus")


def test_config_errors_are_named():
    with pytest.raises(ValueError, match="prefix_length"):
        CaptionerConfig(prefix_length=0)
    with pytest.raises(ValueError, match="divisible"):
        CaptionerConfig(width=10, heads=4)
    with pytest.raises(ValueError, match="eot_token_id"):
        CaptionerConfig(vocab_size=3, eot_token_id=3)
    clip = CLIP(CLIPConfig(embed_dim=8))
    with pytest.raises(ValueError, match="embed_dim"):
        PrefixCaptioner(clip, CaptionerConfig(embed_dim=16))
    model = tiny()
    with pytest.raises(ValueError, match="context_length"):
        model.decode(torch.zeros(1, K, 16), torch.zeros(1, L + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="dataset"):
        load_captioner("cifar")


@pytest.mark.slow
def test_load_captioner_trains_once_then_loads_the_same_weights(tmp_path):
    from mmcourse.data.tokenizer import default_tokenizer

    tok = default_tokenizer()
    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(image_width=16, text_width=16, embed_dim=8, cnn_channels=(4, 8), vocab_size=tok.vocab_size,
                           context_length=tok.context_length)).eval()
    config = CaptionerConfig.for_clip(clip, tok, width=16, heads=2, layers=1, prefix_length=2)
    tc = captioner_train_config(epochs=1, progress=False, device="cpu")
    first = load_captioner("digits", config=config, train_config=tc, clip=clip, cache_dir=tmp_path)
    assert len(first.history.loss) == 10 and first.history.loss[-1] < first.history.loss[0]
    second = load_captioner("digits", config=config, train_config=tc, clip=clip, cache_dir=tmp_path)
    assert second.history.loss == first.history.loss
    for (k, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert len(list(tmp_path.glob("captioner_digits_*.pt"))) == 1
