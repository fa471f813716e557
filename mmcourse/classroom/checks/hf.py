"""Checks for assignment 11 (Hugging Face Transformers and a pre-trained text tower).

* `check_hf_clip_logits(fn)`: `fn(model, pixel_values, input_ids, attention_mask) -> logits_per_image`
  built from a `transformers.CLIPModel`'s named parts, compared with `CLIPModel(...)` itself;
* `check_sentence_embedding(fn)`: `fn(last_hidden_state, attention_mask, normalize=True) -> (B, E)`,
  mean pooling over the real tokens, then L2-normalised (all-MiniLM-L6-v2's sentence embedding);
* `check_eos_pool(fn)`: `fn(last_hidden_state, input_ids, eos_token_id) -> (B, E)`, the hidden state
  at the FIRST end-of-text token, as `CLIPTextModel` pools, also when padding uses that same id;
* `check_unk_prediction(answer)`: the predicted similarity of two captions whose differing words
  are all unknown to the course tokenizer.

Each names the usual mistakes: padding counted in the mean, dividing by the padded length,
forgetting to normalise, `logit_scale` not exponentiated, pooling at the last position, ...
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from mmcourse.classroom.checks.core import Case, CheckResult, Variant, finish, run_check

__all__ = ["check_hf_clip_logits", "check_sentence_embedding", "check_eos_pool", "check_unk_prediction"]

EOS, PAD = 3, 0  # the ids of the tiny model's tokenizer-free inputs below


# --------------------------------------------------------------- exercise 1: CLIPModel's parts

def tiny_clip_model(seed: int = 0):
    """A random `transformers.CLIPModel`: towers of width 32, a 16-dim joint space (so skipping a
    projection changes the answer), `logit_scale` = ln 20 (not the initial value)."""
    from transformers import CLIPConfig, CLIPModel

    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(text_config=dict(tower, vocab_size=40, max_position_embeddings=12, pad_token_id=PAD,
                                         bos_token_id=2, eos_token_id=EOS),
                        vision_config=dict(tower, image_size=8, patch_size=4, num_channels=1), projection_dim=16)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(float(torch.tensor(20.0).log()))
    return model


def _clip_inputs(b_img: int, lengths: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pixel_values = torch.rand(b_img, 1, 8, 8, generator=g)
    L = max(lengths) + 2  # always some padding after the longest caption too
    input_ids = torch.full((len(lengths), L), PAD)
    for row, n in enumerate(lengths):  # [SOT] words [EOT] [PAD]...
        input_ids[row, 0] = 2
        input_ids[row, 1:n - 1] = torch.randint(5, 40, (n - 2,), generator=g)
        input_ids[row, n - 1] = EOS
    return pixel_values, input_ids, (input_ids != PAD).long()


def _reference_hf_logits(model, pixel_values, input_ids, attention_mask):
    with torch.no_grad():
        return model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask).logits_per_image


def _parts(model, pixel_values, input_ids, attention_mask, *, text_pool="eos", vision_post_ln=True, project=True):
    with torch.no_grad():
        vision = model.vision_model(pixel_values=pixel_values)
        image = vision.pooler_output if vision_post_ln else vision.last_hidden_state[:, 0]
        text_out = model.text_model(input_ids=input_ids, attention_mask=attention_mask)
        hidden = text_out.last_hidden_state  # (B, L, E)
        if text_pool == "eos":
            text = text_out.pooler_output
        elif text_pool == "last":
            text = hidden[:, -1]
        else:  # mean over real tokens
            m = attention_mask.unsqueeze(-1).float()
            text = (hidden * m).sum(1) / m.sum(1)
        if project:
            image, text = model.visual_projection(image), model.text_projection(text)
        return image, text


def _hf_variant(normalize=True, exp=True, transpose=False, **parts):
    def wrong(model, pixel_values, input_ids, attention_mask):
        image, text = _parts(model, pixel_values, input_ids, attention_mask, **parts)
        if normalize:
            image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        scale = model.logit_scale.exp() if exp else model.logit_scale
        logits = scale * image @ text.T  # (B_img, B_txt)
        return logits.T if transpose else logits
    return wrong


def check_hf_clip_logits(fn: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 11.1: `fn(model, pixel_values, input_ids, attention_mask) -> logits_per_image`
    (B_img, B_txt) from `model.vision_model`, `model.text_model`, `model.visual_projection`,
    `model.text_projection` and `model.logit_scale`, equal to `model(...).logits_per_image`."""
    model = tiny_clip_model()
    cases = [Case(args=(model, *_clip_inputs(4, [5, 3, 7, 4], seed=0)), label="4 images, 4 captions with padding"),
             Case(args=(model, *_clip_inputs(3, [6, 4, 5, 3, 8], seed=1)), label="3 images, 5 captions")]
    diagnoses = [
        Variant(_hf_variant(transpose=True), "you returned logits_per_text (B_txt, B_img): logits_per_image has "
                "one row per image", "image_embeds @ text_embeds.T"),
        Variant(_hf_variant(exp=False), "logit_scale is stored as a log: multiply by logit_scale.exp()",
                "CLIPModel keeps log(1/τ), like the course's CLIP"),
        Variant(_hf_variant(normalize=False), "the embeddings are not L2-normalised before the dot product",
                "CLIP scores cosine similarities: F.normalize(x, dim=-1) on both sides"),
        Variant(_hf_variant(exp=False, normalize=False), "no normalisation and logit_scale not exponentiated",
                "normalise both embeddings, then multiply by logit_scale.exp()"),
        Variant(_hf_variant(text_pool="last"), "the text is pooled at the last position, which is padding for "
                "short captions", "CLIP pools at the end-of-text token: text_model(...).pooler_output"),
        Variant(_hf_variant(text_pool="mean"), "the text is mean-pooled: CLIP's text tower pools at the "
                "end-of-text token", "text_model(...).pooler_output is the hidden state at [EOT]"),
        Variant(_hf_variant(vision_post_ln=False), "the image feature skips the vision tower's post_layernorm",
                "vision_model(...).pooler_output is the CLS token after post_layernorm"),
        Variant(_hf_variant(project=False), "the pooled features are not projected into the joint space",
                "apply visual_projection and text_projection (the course's image_projection/text_projection)"),
    ]
    return run_check("hf_clip_logits", fn, _reference_hf_logits, cases, diagnoses,
                     success="equals CLIPModel(...).logits_per_image on {n} batches, padding included",
                     raise_on_fail=raise_on_fail)


# ------------------------------------------------------------ exercise 2: sentence embedding

def reference_sentence_embedding(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor,
                                 normalize: bool = True) -> torch.Tensor:
    """Mean over the real tokens (sentence-transformers' Pooling), then L2-normalise if asked
    (its Normalize)."""
    m = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)  # (B, L, 1)
    mean = (last_hidden_state * m).sum(1) / m.sum(1)  # (B, E)
    return F.normalize(mean, dim=-1) if normalize else mean


def _sentence_cases() -> list[Case]:
    g = torch.Generator().manual_seed(11)
    out = []
    for B, L, E, lengths in [(3, 6, 5, [6, 2, 4]), (4, 9, 8, [3, 9, 1, 5]), (2, 4, 384, [4, 2])]:
        x = torch.randn(B, L, E, generator=g) + 0.5  # padding positions hold values too, as in BERT
        mask = (torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]).long()
        for normalize in (False, True):  # the mean first: a wrong divisor only shows before normalising
            out.append(Case(args=(x, mask), kwargs={"normalize": normalize},
                            label=f"B={B}, L={L}, E={E}, lengths {lengths}, normalize={normalize}"))
    return out


def _sentence_variant(pool, always_normalize=False, never_normalize=False, norm_dim=-1):
    def wrong(x, m, normalize=True):
        v = pool(x, m.unsqueeze(-1).to(x.dtype))
        if (normalize or always_normalize) and not never_normalize:
            v = F.normalize(v, dim=norm_dim)
        return v
    return wrong


_real_mean = lambda x, m: (x * m).sum(1) / m.sum(1)  # noqa: E731


def _token_norm(x, m, normalize=True):
    x = F.normalize(x, dim=-1) if normalize else x
    return _real_mean(x, m.unsqueeze(-1).to(x.dtype))

_SENTENCE_DIAGNOSES = [
    Variant(_sentence_variant(lambda x, m: x.mean(1)), "padding included: you averaged every position, the "
            "padding too", "multiply by the attention mask before summing, and divide by the number of real tokens"),
    Variant(_sentence_variant(lambda x, m: (x * m).sum(1) / x.shape[1]),
            "you divided by the padded length L: divide by each sentence's number of real tokens",
            "attention_mask.sum(dim=1) counts them"),
    Variant(_sentence_variant(_real_mean, never_normalize=True), "the mean is right but you forgot to normalise "
            "it when normalize=True", "all-MiniLM-L6-v2 ends with Normalize: F.normalize(mean, dim=-1)"),
    Variant(_sentence_variant(_real_mean, always_normalize=True), "you normalised although normalize=False",
            "return the plain mean when normalize is False"),
    Variant(_sentence_variant(lambda x, m: x[:, 0]), "you took the first ([CLS]) token: this model was trained "
            "with MEAN pooling", "average the real tokens' hidden states"),
    Variant(_token_norm, "you normalised every token before pooling: normalise the mean, AFTER pooling",
            "F.normalize(mean, dim=-1)"),
    Variant(_sentence_variant(_real_mean, norm_dim=0), "you normalised along the batch dimension: each "
            "sentence's vector must have length 1", "F.normalize(mean, dim=-1)"),
]


def check_sentence_embedding(fn: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 11.2: `fn(last_hidden_state (B, L, E), attention_mask (B, L), normalize=True) -> (B, E)`:
    the mean over real tokens, unit length when `normalize`."""
    return run_check("sentence_embedding", fn, reference_sentence_embedding, _sentence_cases(), _SENTENCE_DIAGNOSES,
                     success="mean over the real tokens, unit length when normalize=True, on {n} cases (E up to 384)",
                     raise_on_fail=raise_on_fail)


# ------------------------------------------------------------------- exercise 3: EOS pooling

def reference_eos_pool(last_hidden_state: torch.Tensor, input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """The hidden state at the first `eos_token_id` of each row (`CLIPTextTransformer`'s rule)."""
    first = (input_ids == eos_token_id).int().argmax(dim=-1)  # (B,) argmax returns the first maximum
    return last_hidden_state[torch.arange(input_ids.shape[0]), first]  # (B, E)


def _eos_cases() -> list[Case]:
    g = torch.Generator().manual_seed(3)
    out = []
    # (rows of ids, eos id, what the case is): padding with 0 and an EOS id that is not the largest
    # id in the vocabulary; then padding with the EOS id itself (OpenAI's tokenizer), where every
    # rule that finds the end of the caption from the padding (the last EOS, the last position,
    # the last non-zero id) lands on padding.
    for rows, eos, label in [
        ([[2, 17, 9, 3, 0, 0, 0], [2, 40, 3, 0, 0, 0, 0], [2, 5, 6, 7, 8, 9, 3]], 3,
         "the course tokenizer's ids: [EOT] = 3, padded with 0, words with larger ids"),
        ([[49406, 320, 1125, 49407, 49407, 49407], [49406, 3306, 49407, 49407, 49407, 49407],
          [49406, 320, 1125, 539, 1237, 49407]], 49407, "OpenAI CLIP ids: padded with the end-of-text id itself"),
    ]:
        ids = torch.tensor(rows)
        x = torch.randn(ids.shape[0], ids.shape[1], 4, generator=g)
        out.append(Case(args=(x, ids, eos), label=label))
    return out


def _last_occurrence(x, ids, eos):
    L = ids.shape[1]
    last = L - 1 - (ids == eos).int().flip(-1).argmax(-1)
    return x[torch.arange(ids.shape[0]), last]


def check_eos_pool(fn: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 11.3: `fn(last_hidden_state (B, L, E), input_ids (B, L), eos_token_id) -> (B, E)`."""
    diagnoses = [
        Variant(_last_occurrence, "you took the LAST end-of-text token: when padding uses the same id (OpenAI's "
                "tokenizer does), that is padding", "take the FIRST position where input_ids == eos_token_id"),
        Variant(lambda x, ids, eos: x[torch.arange(ids.shape[0]), ids.argmax(-1)],
                "you took the position of the largest id: that is the end-of-text token only when it has the "
                "largest id in the vocabulary (the rule transformers keeps for old configs)",
                "compare with eos_token_id instead"),
        Variant(lambda x, ids, eos: x[:, -1], "you took the last position, which is padding for short captions",
                "find where input_ids == eos_token_id"),
    ]
    return run_check("eos_pool", fn, reference_eos_pool, _eos_cases(), diagnoses,
                     success="pools at the first end-of-text token on {n} batches, also when padding uses its id",
                     raise_on_fail=raise_on_fail)


# ------------------------------------------------------------ question: unknown words

_UNK_CHOICES = {
    "a": "exactly 1",
    "b": "between 0.5 and 1, since both name a red round thing",
    "c": "about 0, since the words are unrelated to the training captions",
}


def check_unk_prediction(answer: Any, raise_on_fail: bool = True) -> CheckResult:
    """Question 11.4: the scratch tower's cosine similarity of "a crimson disc." and "a scarlet
    disc." (choices "a", "b", "c"): "a", both captions tokenize to the same ids."""
    name = "unk_prediction"
    choice = str(answer).strip().lower().strip("()") if answer is not None else ""
    if choice not in _UNK_CHOICES:
        return finish(CheckResult(name, False, f"answer with one letter, 'a', 'b' or 'c', got {answer!r}",
                                  "e.g. answer = 'b'"), raise_on_fail)
    if choice == "a":
        return finish(CheckResult(name, True, "right: 'crimson', 'scarlet' and 'disc' are all [UNK] to the course "
                                  "tokenizer, so both captions are the same ids and get the same embedding"),
                      raise_on_fail)
    why = {"b": "the scratch tower never sees the words: it sees their token ids",
           "c": "both captions become the same token ids, whatever the words mean"}[choice]
    return finish(CheckResult(name, False, f"not {_UNK_CHOICES[choice]}: {why}",
                              "tokenize both captions with the course tokenizer and compare the ids"), raise_on_fail)
