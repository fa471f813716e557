"""Scoring captions: n-gram overlap with references (BLEU, CIDEr-D) from well-kept libraries,
and agreement with the image (CLIPScore, RefCLIPScore) with the course's own CLIP.

- `corpus_bleu`: sacrebleu's `BLEU` (Papineni et al. 2002; Post 2018), on captions
  pre-tokenised the COCO way by `coco_tokenize` (lower case, words only, punctuation dropped).
- `cider`: pycocoevalcap's `Cider`, which computes CIDEr-D (Vedantam et al. 2015: tf-idf
  weighted n-gram cosine, clipped counts, a Gaussian length penalty, times 10), on the same
  tokens. Its idf comes from the references of the images scored together, so it needs several
  images. (pycocoevalcap's PTB tokenizer, METEOR and SPICE need Java: not used.)
- `clip_score`: 2.5 * max(cos(image, caption), 0) (Hessel et al. 2021, CLIPScore), and
  `ref_clip_score`, the harmonic mean of CLIPScore and the best caption-reference cosine.
  torchmetrics' `CLIPScore` downloads an OpenAI CLIP; here the course's CLIP is the judge, so the
  numbers are on a different scale from published ones, and only as good as that CLIP.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np
import torch

CLIP_SCORE_WEIGHT = 2.5  # Hessel et al.'s w


def coco_tokenize(text: str) -> str:
    """Lower-case words separated by single spaces, punctuation dropped, as the COCO caption
    evaluation's PTB tokenizer leaves them: "A red circle." -> "a red circle"."""
    if not isinstance(text, str):
        raise ValueError(f"a caption must be a str, got {type(text).__name__}")
    return " ".join(re.findall(r"\w+", text.lower()))


def _check_corpus(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if isinstance(hypotheses, str) or not len(hypotheses):
        raise ValueError("hypotheses must be a non-empty list of captions (one per image)")
    if isinstance(references, str) or len(references) != len(hypotheses):
        raise ValueError(f"references must hold one list of reference captions per hypothesis: got "
                         f"{len(hypotheses)} hypotheses and {len(references)} reference lists")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not len(refs):
            raise ValueError(f"references[{i}] must be a non-empty list of captions, got {refs!r:.60}")


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]):
    """Corpus BLEU-4 with sacrebleu (its defaults: uniform weights, brevity penalty against the
    closest reference length, "exp" smoothing of zero counts), on `coco_tokenize`d text.

    Args:
        hypotheses: N captions.
        references: N lists of reference captions (their number may vary per image).

    Returns:
        sacrebleu's `BLEUScore`: `.score` (0 to 100), `.precisions` (the four modified n-gram
        precisions, percent), `.bp` (brevity penalty), `.sys_len`, `.ref_len` (tokens).

    Raises:
        ValueError: empty inputs, or not one reference list per hypothesis.
    """
    from sacrebleu.metrics import BLEU

    _check_corpus(hypotheses, references)
    most = max(len(r) for r in references)
    # sacrebleu wants reference *streams*: stream j holds every image's j-th reference (None: none)
    streams = [[coco_tokenize(r[j]) if j < len(r) else None for r in references] for j in range(most)]
    return BLEU(tokenize="none").corpus_score([coco_tokenize(h) for h in hypotheses], streams)


def cider(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, np.ndarray]:
    """CIDEr-D with pycocoevalcap's `Cider` (n = 4, sigma = 6), on `coco_tokenize`d text.

    Args:
        hypotheses: N >= 2 captions (the idf needs a corpus: with one image every n-gram is in
            every image's references and scores 0).
        references: N lists of reference captions.

    Returns:
        (corpus CIDEr-D, the mean of the per-image scores; per-image scores (N,)). About 0 to
        10; a caption equal to all its references scores most where its n-grams are rare elsewhere.

    Raises:
        ValueError: fewer than 2 images, or as `corpus_bleu`.
    """
    from pycocoevalcap.cider.cider import Cider

    _check_corpus(hypotheses, references)
    if len(hypotheses) < 2:
        raise ValueError("CIDEr needs at least 2 images: its idf weights come from the other images' references")
    gts = {i: [coco_tokenize(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [coco_tokenize(h)] for i, h in enumerate(hypotheses)}
    score, scores = Cider().compute_score(gts, res)
    return float(score), np.asarray(scores, dtype=float)


@torch.no_grad()
def _embed_texts(model: torch.nn.Module, tokenizer: Callable, texts: Sequence[str],
                 device: torch.device) -> torch.Tensor:
    tokens = tokenizer(list(texts))
    return model.encode_text(tokens["input_ids"].to(device), tokens["attention_mask"].to(device), normalize=True)


@torch.no_grad()
def clip_score(model: torch.nn.Module, tokenizer: Callable, images: torch.Tensor, captions: Sequence[str],
               w: float = CLIP_SCORE_WEIGHT) -> torch.Tensor:
    """CLIPScore (Hessel et al. 2021) of each image with its caption: w * max(cos, 0).

    Args:
        model: a `CLIP` (the judge: the course's own model, in eval mode).
        tokenizer: its tokenizer.
        images: (N, C, H, W) float.
        captions: N captions, one per image.
        w: the weight, 2.5 in the paper (which also reports it times 100).

    Returns:
        (N,) float tensor on the CPU, in [0, w].

    Raises:
        ValueError: a different number of images and captions.
    """
    if images.dim() != 4 or isinstance(captions, str) or len(captions) != images.shape[0]:
        raise ValueError(f"pass (N, C, H, W) images and N captions, got {tuple(images.shape)} and "
                         f"{1 if isinstance(captions, str) else len(captions)} captions")
    device = next(model.parameters()).device
    image_emb = model.encode_image(images.to(device), normalize=True)  # (N, D)
    text_emb = _embed_texts(model, tokenizer, captions, device)  # (N, D)
    return (w * (image_emb * text_emb).sum(-1).clamp(min=0)).cpu()  # (N,)


@torch.no_grad()
def ref_clip_score(model: torch.nn.Module, tokenizer: Callable, images: torch.Tensor, captions: Sequence[str],
                   references: Sequence[Sequence[str]], w: float = CLIP_SCORE_WEIGHT) -> torch.Tensor:
    """RefCLIPScore (Hessel et al. 2021): the harmonic mean of CLIPScore and
    max(max over references of cos(caption, reference), 0).

    Args:
        references: N lists of reference captions. Others: as `clip_score`.

    Returns:
        (N,) float tensor on the CPU (0 where either part is 0).

    Raises:
        ValueError: as `clip_score`, or not one non-empty reference list per caption.
    """
    _check_corpus(captions, references)
    score = clip_score(model, tokenizer, images, captions, w)  # (N,)
    device = next(model.parameters()).device
    cand = _embed_texts(model, tokenizer, captions, device).cpu()  # (N, D)
    flat = [r for refs in references for r in refs]
    owner = torch.tensor([i for i, refs in enumerate(references) for _ in refs])  # (R,)
    ref_emb = _embed_texts(model, tokenizer, flat, device).cpu()  # (R, D)
    cos = (cand[owner] * ref_emb).sum(-1)  # (R,)
    best = torch.full((len(captions),), float("-inf")).scatter_reduce(0, owner, cos, reduce="amax").clamp(min=0)
    both = score * best
    return torch.where(both > 0, 2 * both / (score + best).clamp(min=1e-12), torch.zeros_like(both))
