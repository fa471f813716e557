"""Scoring captions: n-gram overlap with references (BLEU, CIDEr-D, METEOR) from well-kept
libraries, and agreement with the image (CLIPScore, RefCLIPScore) with the course's own CLIP.

Every reference-based score first tokenises the captions the way the COCO caption evaluation
(pycocoevalcap) does: Stanford's PTB tokenizer, lower case, its punctuation tokens dropped
("A man in a t-shirt doesn't smile." -> "a man in a t-shirt does n't smile"). The scores count
these tokens, so another tokenisation gives other numbers (CIDEr-D of the same captions can
move by 10%). `tokenize_captions` picks the tokenizer:

- "java": pycocoevalcap's own `PTBTokenizer` (Stanford CoreNLP 3.4.1, the jar it ships), run
  with the command and punctuation list of `pycocoevalcap.tokenizer.ptbtokenizer`;
- "python": `mmcourse.ptb_tokenizer.coco_tokenize`, a pure-Python re-implementation tested
  token for token against the Java tokenizer on COCO-style captions;
- "auto" (the default): "java" when a `java` is on the PATH, else "python".

Each result says which one it used (`tokenizer`: "ptb-java" or "ptb-python").

- `corpus_bleu`: sacrebleu's `BLEU` (Papineni et al. 2002; Post 2018) on those tokens.
- `cider`: pycocoevalcap's `Cider`, which computes CIDEr-D (Vedantam et al. 2015: tf-idf
  weighted n-gram cosine, clipped counts, a Gaussian length penalty, times 10), on the same
  tokens. Its idf comes from the references of the images scored together, so it needs several
  images.
- `meteor`: pycocoevalcap's `Meteor` (Banerjee & Lavie 2005; the meteor-1.5 jar it ships):
  needs Java (a JVM with 2 GB and about 10 s of CPU to load its paraphrase table); without
  Java it raises a `RuntimeError` saying so. SPICE (pycocoevalcap's `Spice`) is not offered: it
  downloads Stanford CoreNLP models (about 1 GB) on first use, and nothing here downloads.
- `clip_score`: 2.5 * max(cos(image, caption), 0) (Hessel et al. 2021, CLIPScore), and
  `ref_clip_score`, the harmonic mean of CLIPScore and the best caption-reference cosine.
  torchmetrics' `CLIPScore` downloads an OpenAI CLIP; here the course's CLIP is the judge, so the
  numbers are on a different scale from published ones, and only as good as that CLIP.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

from mmcourse.evaluation.ptb_tokenizer import coco_tokenize

CLIP_SCORE_WEIGHT = 2.5  # Hessel et al.'s w
TOKENIZERS = ("auto", "java", "python")

__all__ = ["CLIP_SCORE_WEIGHT", "TOKENIZERS", "CaptionScore", "coco_tokenize", "java_available", "tokenize_captions",
           "corpus_bleu", "cider", "meteor", "clip_score", "ref_clip_score"]


class CaptionScore(NamedTuple):
    """A corpus score, the per-image scores (N,) and the tokenizer used ("ptb-java" or "ptb-python")."""

    score: float
    per_image: np.ndarray
    tokenizer: str


def java_available() -> bool:
    """True when a `java` executable is on the PATH (pycocoevalcap's PTB tokenizer and METEOR run on it)."""
    return shutil.which("java") is not None


# Java start-up costs about half a second, so each distinct caption is tokenised once per process.
_JAVA_TOKENS: dict[str, str] = {}
# Characters Java's line reader treats as line ends: one caption must stay one line.
_LINE_BREAKS = str.maketrans({c: " " for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})


def _java_tokenize(texts: list[str]) -> list[str]:
    """pycocoevalcap's PTBTokenizer pipeline: its jar, its command line, its punctuation list (the
    captions go through stdin instead of a temporary file inside the installed package, and
    Java's "tokenized N tokens" report is kept off stderr)."""
    from pycocoevalcap.tokenizer import ptbtokenizer as ptb

    todo = list(dict.fromkeys(t.translate(_LINE_BREAKS) for t in texts if t.translate(_LINE_BREAKS) not in _JAVA_TOKENS))
    if todo:
        jar = Path(ptb.__file__).with_name(ptb.STANFORD_CORENLP_3_4_1_JAR)
        cmd = ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
        done = subprocess.run(cmd, input="\n".join(todo).encode(), capture_output=True, check=False)
        lines = done.stdout.decode().split("\n")
        if done.returncode != 0 or len(lines) < len(todo):
            raise RuntimeError(f"pycocoevalcap's PTB tokenizer failed (exit {done.returncode}): "
                               f"{done.stderr.decode()[-500:]}")
        for text, line in zip(todo, lines):
            _JAVA_TOKENS[text] = " ".join(w for w in line.rstrip().split(" ") if w not in ptb.PUNCTUATIONS)
    return [_JAVA_TOKENS[t.translate(_LINE_BREAKS)] for t in texts]


def tokenize_captions(texts: Sequence[str], tokenizer: str = "auto") -> tuple[list[str], str]:
    """Tokenise captions as the COCO caption evaluation does (see the module docstring).

    Args:
        texts: captions (str).
        tokenizer: "auto" (Java when `java` is on the PATH, else Python), "java" or "python".

    Returns:
        (the tokenised captions, lower case, tokens joined by single spaces; the tokenizer used:
        "ptb-java" or "ptb-python").

    Raises:
        ValueError: a caption that is not a str, or an unknown `tokenizer`.
        RuntimeError: tokenizer="java" without Java on the PATH, or the Java tokenizer failing.
    """
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"a caption must be a str, got {type(t).__name__} at position {i}")
    if tokenizer == "java" and not java_available():
        raise RuntimeError("tokenizer='java' needs a `java` on the PATH (pycocoevalcap's PTB tokenizer is a jar); "
                           "use tokenizer='python' or 'auto'")
    if tokenizer == "python" or (tokenizer == "auto" and not java_available()):
        return [coco_tokenize(t) for t in texts], "ptb-python"
    return _java_tokenize(texts), "ptb-java"


def _check_corpus(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if isinstance(hypotheses, str) or not len(hypotheses):
        raise ValueError("hypotheses must be a non-empty list of captions (one per image)")
    if isinstance(references, str) or len(references) != len(hypotheses):
        raise ValueError(f"references must hold one list of reference captions per hypothesis: got "
                         f"{len(hypotheses)} hypotheses and {len(references)} reference lists")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not len(refs):
            raise ValueError(f"references[{i}] must be a non-empty list of captions, got {refs!r:.60}")


def _tokenize_corpus(hypotheses, references, tokenizer):
    """(tokenised hypotheses, tokenised reference lists, tokenizer name), one tokenizer call for all."""
    _check_corpus(hypotheses, references)
    flat = list(hypotheses) + [r for refs in references for r in refs]
    tokens, name = tokenize_captions(flat, tokenizer)
    hyps, rest = tokens[:len(hypotheses)], iter(tokens[len(hypotheses):])
    return hyps, [[next(rest) for _ in refs] for refs in references], name


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], tokenizer: str = "auto"):
    """Corpus BLEU-4 with sacrebleu (its defaults: uniform weights, brevity penalty against the
    closest reference length, "exp" smoothing of zero counts), on COCO-tokenised text.

    Args:
        hypotheses: N captions.
        references: N lists of reference captions (their number may vary per image).
        tokenizer: "auto", "java" or "python" (see `tokenize_captions`).

    Returns:
        sacrebleu's `BLEUScore`: `.score` (0 to 100), `.precisions` (the four modified n-gram
        precisions, percent), `.bp` (brevity penalty), `.sys_len`, `.ref_len` (tokens), plus
        `.tokenizer` ("ptb-java" or "ptb-python").

    Raises:
        ValueError: empty inputs, or not one reference list per hypothesis.
    """
    from sacrebleu.metrics import BLEU

    hyps, refs, name = _tokenize_corpus(hypotheses, references, tokenizer)
    most = max(len(r) for r in refs)
    # sacrebleu wants reference *streams*: stream j holds every image's j-th reference (None: none)
    streams = [[r[j] if j < len(r) else None for r in refs] for j in range(most)]
    result = BLEU(tokenize="none").corpus_score(hyps, streams)
    result.tokenizer = name
    return result


def cider(hypotheses: Sequence[str], references: Sequence[Sequence[str]], tokenizer: str = "auto") -> CaptionScore:
    """CIDEr-D with pycocoevalcap's `Cider` (n = 4, sigma = 6), on COCO-tokenised text: the same
    number as pycocoevalcap's own pipeline (`PTBTokenizer`, then `Cider`).

    Args:
        hypotheses: N >= 2 captions (the idf needs a corpus: with one image every n-gram is in
            every image's references and scores 0).
        references: N lists of reference captions.
        tokenizer: "auto", "java" or "python" (see `tokenize_captions`).

    Returns:
        `CaptionScore(score, per_image, tokenizer)`: the corpus CIDEr-D (the mean of the per-image
        scores), the per-image scores (N,), and "ptb-java" or "ptb-python". About 0 to 10; a
        caption equal to all its references scores most where its n-grams are rare elsewhere.

    Raises:
        ValueError: fewer than 2 images, or as `corpus_bleu`.
    """
    from pycocoevalcap.cider.cider import Cider

    _check_corpus(hypotheses, references)
    if len(hypotheses) < 2:
        raise ValueError("CIDEr needs at least 2 images: its idf weights come from the other images' references")
    hyps, refs, name = _tokenize_corpus(hypotheses, references, tokenizer)
    score, scores = Cider().compute_score(dict(enumerate(refs)), {i: [h] for i, h in enumerate(hyps)})
    return CaptionScore(float(score), np.asarray(scores, dtype=float), name)


def meteor(hypotheses: Sequence[str], references: Sequence[Sequence[str]], tokenizer: str = "auto") -> CaptionScore:
    """METEOR 1.5 with pycocoevalcap's `Meteor` (exact, stem, synonym and paraphrase matches,
    language "en", normalised), on COCO-tokenised text, as pycocoevalcap's pipeline computes it.

    Needs Java: `Meteor` runs meteor-1.5.jar (shipped with pycocoevalcap) in a JVM with 2 GB of
    heap; loading its paraphrase table takes about 10 s of CPU.

    Args:
        hypotheses, references, tokenizer: as `cider`.

    Returns:
        `CaptionScore(score, per_image, tokenizer)`: METEOR's corpus score (from the summed
        statistics, not the mean of the per-image scores), per-image scores (N,), 0 to 1.

    Raises:
        RuntimeError: no `java` on the PATH (METEOR is then unavailable).
        ValueError: as `corpus_bleu`.
    """
    _check_corpus(hypotheses, references)
    if not java_available():
        raise RuntimeError("METEOR is unavailable: pycocoevalcap's Meteor runs meteor-1.5.jar and needs a `java` on "
                           "the PATH (e.g. apt-get install default-jre-headless)")
    from pycocoevalcap.meteor.meteor import Meteor

    hyps, refs, name = _tokenize_corpus(hypotheses, references, tokenizer)
    scorer = Meteor()
    try:
        score, scores = scorer.compute_score(dict(enumerate(refs)), {i: [h] for i, h in enumerate(hyps)})
    finally:
        scorer.__del__()  # stop the JVM now, not when the garbage collector gets to it
    return CaptionScore(float(score), np.asarray(scores, dtype=float), name)


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
