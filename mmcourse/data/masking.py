"""Masked language modelling inputs: BERT's 80/10/10 masking and a collator around it.

BERT (Devlin et al., 2019) chooses about 15% of the real tokens of a caption as prediction
targets. Of the chosen positions, 80% are replaced by `[MASK]`, 10% by a random token and 10%
are left unchanged; the model must predict the original token at *every* chosen position.
If every target were `[MASK]`, the model would learn that only `[MASK]` positions matter, yet
`[MASK]` never appears when the model is used; the random and unchanged 20% make it keep a
good representation of every token. `labels` hold the original id at the chosen positions and
-100 everywhere else, the index `F.cross_entropy(ignore_index=-100)` skips.

The classic slip is drawing the "10% random" from *all* positions (or from all chosen ones)
instead of from the 20% left after the `[MASK]` draw: then the random rate is not 10%, some
`[MASK]` positions are overwritten, or unchosen positions are corrupted without a label.

`mask_tokens` takes Hugging Face's parameter names (`mlm_probability`, `mask_replace_prob`,
`random_replace_prob`) and draws its random numbers in the same order as
`transformers.DataCollatorForLanguageModeling.torch_mask_tokens`, so with generators in the
same state both give the same tensors (tested in `tests/test_masking.py`). As there, the random
replacement is drawn uniformly from the whole vocabulary (special tokens included).

`MaskingCollator` batches dataset items (or plain captions), tokenizes them and masks them.
`mask_selected` masks chosen positions only (e.g. every colour word), for evaluation.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch

IGNORE_INDEX = -100  # labels at positions that are not predicted (F.cross_entropy's default ignore_index)

__all__ = ["IGNORE_INDEX", "mask_tokens", "mask_selected", "maskable_positions", "special_token_ids", "MaskingCollator"]


def _check_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a (B, L) tensor of token ids, got {shape}")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}")
    if attention_mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got {shape}")
    m = attention_mask.long()
    if ((m != 0) & (m != 1)).any():
        raise ValueError("attention_mask must contain only 0 (padding) and 1 (token)")
    return m.bool()


def _check_probability(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def maskable_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                       special_ids: Iterable[int]) -> torch.Tensor:
    """Positions that may be chosen: real tokens (attention_mask 1) that are not special tokens.

    Args:
        input_ids: (B, L) token ids.
        attention_mask: (B, L), 1 for tokens, 0 for padding (None: no padding).
        special_ids: ids never chosen ([PAD], [SOT], [EOT], [MASK], [UNK], ...).

    Returns:
        (B, L) bool tensor.
    """
    real = _check_ids(input_ids, attention_mask)
    special = torch.tensor(sorted({int(i) for i in special_ids}), dtype=input_ids.dtype, device=input_ids.device)
    return real & ~torch.isin(input_ids, special)  # (B, L)


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, special_ids: Iterable[int],
                vocab_size: int, mask_token_id: int, mlm_probability: float = 0.15, mask_replace_prob: float = 0.8,
                random_replace_prob: float = 0.1,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: choose positions, corrupt them 80/10/10, and label them.

    Each real, non-special position is chosen independently with probability `mlm_probability`.
    A chosen position becomes `mask_token_id` with probability `mask_replace_prob`; otherwise,
    with probability `random_replace_prob / (1 - mask_replace_prob)`, a token drawn uniformly
    from [0, vocab_size); otherwise it keeps its token. So of the chosen positions, on average
    `mask_replace_prob` are [MASK], `random_replace_prob` random and the rest unchanged.

    Args:
        input_ids: (B, L) integer token ids; not modified.
        attention_mask: (B, L), 1 for tokens and 0 for padding (None: no padding).
        special_ids: ids never chosen (e.g. `[tok.pad_token_id, tok.sot_token_id, ...]`).
        vocab_size: random replacements are drawn from [0, vocab_size).
        mask_token_id: the id of `[MASK]`.
        mlm_probability, mask_replace_prob, random_replace_prob: as in Hugging Face's
            `DataCollatorForLanguageModeling` (0.15, 0.8, 0.1 as in BERT); the last two must
            sum to at most 1.
        generator: a `torch.Generator` for repeatable draws (None: torch's global generator).

    Returns:
        `(masked_input_ids, labels)`, both (B, L) long: the corrupted ids, and the original id at
        each chosen position with -100 (`IGNORE_INDEX`) everywhere else.

    Raises:
        ValueError: bad shapes or dtypes, probabilities outside [0, 1] or summing above 1,
            ids outside [0, vocab_size), a mask id that is not special.
    """
    mlm_probability = _check_probability("mlm_probability", mlm_probability)
    mask_replace_prob = _check_probability("mask_replace_prob", mask_replace_prob)
    random_replace_prob = _check_probability("random_replace_prob", random_replace_prob)
    if mask_replace_prob + random_replace_prob > 1 + 1e-12:
        raise ValueError(f"mask_replace_prob + random_replace_prob must be <= 1, got "
                         f"{mask_replace_prob} + {random_replace_prob}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    special_ids = {int(i) for i in special_ids}
    if int(mask_token_id) not in special_ids:
        raise ValueError(f"mask_token_id {mask_token_id} is not among special_ids {sorted(special_ids)}: "
                         "a [MASK] already in the input would be chosen as a target")
    can_choose = maskable_positions(input_ids, attention_mask, special_ids)  # (B, L) bool
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        raise ValueError(f"token ids must lie in [0, vocab_size={vocab_size}), got {int(input_ids.min())} to "
                         f"{int(input_ids.max())}")
    ids = input_ids.long()
    shape = ids.shape
    # The draws, in the order of DataCollatorForLanguageModeling.torch_mask_tokens:
    # 1. which positions are targets
    probability = torch.full(shape, mlm_probability).masked_fill_(~can_choose.cpu(), 0.0)
    chosen = torch.bernoulli(probability, generator=generator).bool().to(ids.device)  # (B, L)
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))  # (B, L)
    # 2. of the targets, mask_replace_prob become [MASK]
    replaced = torch.bernoulli(torch.full(shape, mask_replace_prob), generator=generator).bool().to(ids.device) & chosen
    masked = ids.masked_fill(replaced, int(mask_token_id))
    if mask_replace_prob == 1 or random_replace_prob == 0:
        return masked, labels
    # 3. of the targets NOT made [MASK] (a share 1 - mask_replace_prob), a random token for a
    #    share random_replace_prob / (1 - mask_replace_prob): random_replace_prob of all targets
    scaled = random_replace_prob / (1 - mask_replace_prob)
    randomised = (torch.bernoulli(torch.full(shape, scaled), generator=generator).bool().to(ids.device)
                  & chosen & ~replaced)
    random_ids = torch.randint(vocab_size, shape, dtype=torch.long, generator=generator).to(ids.device)
    masked = torch.where(randomised, random_ids, masked)
    # 4. the remaining targets keep their token
    return masked, labels


def mask_selected(input_ids: torch.Tensor, selected: torch.Tensor,
                  mask_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace exactly the `selected` positions by [MASK] (no randomness), for evaluation.

    Args:
        input_ids: (B, L) token ids.
        selected: (B, L) bool, the positions to predict (e.g. every colour word).
        mask_token_id: the id of `[MASK]`.

    Returns:
        `(masked_input_ids, labels)`: labels hold the original id where selected, -100 elsewhere.
    """
    _check_ids(input_ids, None)
    if not isinstance(selected, torch.Tensor) or selected.shape != input_ids.shape or selected.dtype != torch.bool:
        raise ValueError(f"selected must be a bool tensor of shape {tuple(input_ids.shape)}")
    ids = input_ids.long()
    return ids.masked_fill(selected, int(mask_token_id)), torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))


class MaskingCollator:
    """A `DataLoader` collate function for masked language modelling (the course's counterpart of
    Hugging Face's `DataCollatorForLanguageModeling`, with the same parameter names).

    Items may be dataset dicts with a "caption" (and "image", "label", "index") or plain
    strings. Each batch is tokenized, then masked with `mask_tokens`.

    Args:
        tokenizer: a `CaptionTokenizer` (callable, with `vocab_size`, `mask_token_id` and the
            special ids), e.g. `default_tokenizer()`.
        mlm_probability, mask_replace_prob, random_replace_prob: see `mask_tokens`.
        with_images: stack the items' "image"s into the batch (False: text only).
        seed: seed of the collator's own generator (None: torch's global generator, which
            `fit` seeds, so training runs still repeat).

    Returns (when called on a list of items):
        `{"input_ids": (B, L) masked ids, "attention_mask": (B, L), "labels": (B, L) with -100
        off the targets, "original_input_ids": (B, L)}`, L the batch's longest caption, plus "image" (B, C, H, W), "label" and
        "index" (B,) when the items carry them and `with_images`, and "caption" (list of str).
    """

    def __init__(self, tokenizer: Callable, mlm_probability: float = 0.15, mask_replace_prob: float = 0.8,
                 random_replace_prob: float = 0.1, with_images: bool = True, seed: int | None = None):
        for attr in ("vocab_size", "mask_token_id", "pad_token_id"):
            if not hasattr(tokenizer, attr):
                raise ValueError(f"tokenizer lacks `{attr}`: pass a CaptionTokenizer (e.g. default_tokenizer())")
        self.tokenizer = tokenizer
        self.mlm_probability = _check_probability("mlm_probability", mlm_probability)
        self.mask_replace_prob = _check_probability("mask_replace_prob", mask_replace_prob)
        self.random_replace_prob = _check_probability("random_replace_prob", random_replace_prob)
        if self.mask_replace_prob + self.random_replace_prob > 1:
            raise ValueError("mask_replace_prob + random_replace_prob must be <= 1")
        self.with_images = with_images
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.special_ids = special_token_ids(tokenizer)

    def __call__(self, items: Sequence[Any]) -> dict[str, Any]:
        if not items:
            raise ValueError("cannot collate an empty batch")
        captions = [it if isinstance(it, str) else it["caption"] for it in items]
        tokens = self.tokenizer(captions)
        # Pad to the batch's longest caption, not the context length (Hugging Face's collators do
        # the same): columns of padding only cost time and change nothing.
        keep = int(tokens["attention_mask"].sum(1).max())
        tokens = {k: v[:, :keep] for k, v in tokens.items()}  # (B, L') with L' <= L
        masked, labels = mask_tokens(tokens["input_ids"], tokens["attention_mask"], self.special_ids,
                                     self.tokenizer.vocab_size, self.tokenizer.mask_token_id, self.mlm_probability,
                                     self.mask_replace_prob, self.random_replace_prob, self.generator)
        batch: dict[str, Any] = {"input_ids": masked, "attention_mask": tokens["attention_mask"], "labels": labels,
                                 "original_input_ids": tokens["input_ids"], "caption": captions}
        if self.with_images and not isinstance(items[0], str) and "image" in items[0]:
            batch["image"] = torch.stack([it["image"] for it in items])  # (B, C, H, W)
        for key in ("label", "index"):
            if not isinstance(items[0], str) and key in items[0]:
                batch[key] = torch.tensor([it[key] for it in items], dtype=torch.long)  # (B,)
        return batch

    def __repr__(self) -> str:
        return (f"MaskingCollator(mlm_probability={self.mlm_probability}, mask_replace_prob={self.mask_replace_prob}, "
                f"random_replace_prob={self.random_replace_prob}, with_images={self.with_images})")


def special_token_ids(tokenizer: Any) -> list[int]:
    """The ids a tokenizer treats as special ([PAD], [UNK], [SOT], [EOT], [MASK] for the course's),
    as Hugging Face's `all_special_ids`."""
    hf = getattr(tokenizer, "hf", tokenizer)
    ids = getattr(hf, "all_special_ids", None)
    if ids is None:
        ids = [getattr(tokenizer, a) for a in ("pad_token_id", "unk_token_id", "sot_token_id", "eot_token_id",
                                               "mask_token_id") if getattr(tokenizer, a, None) is not None]
    return sorted(int(i) for i in ids)
