"""Decoding: turn a next-token model into sequences, by greedy search, beam search or sampling.

Every function here drives a `step` function and knows nothing else about the model::

    step(context, input_ids) -> logits      # context (N, ...), input_ids (N, t) -> (N, V)

`context` is whatever the model conditions on, one row per sequence (for the prefix captioner:
the image prefix, (N, k, E)); beam search repeats each row once per beam. Decoding starts from
`[SOT]` and stops at `[EOT]` or after `max_new_tokens` generated tokens.

All three return a `Generation`:

- `sequences` (B, 1 + max_new_tokens): `[SOT]`, the generated tokens (the last is `[EOT]`
  unless the length ran out), then `pad_token_id`;
- `scores` (B,): the SUM of the log-probabilities of the generated tokens, `[EOT]` included,
  each log-probability taken from `log_softmax(logits)` after `suppress_tokens` are removed
  (the raw model's, not the temperature- or top-k-reshaped ones of sampling);
- `lengths` (B,): the number of generated tokens, `[EOT]` included.

Beam search ranks hypotheses by `scores / lengths ** length_penalty` (Hugging Face's
`length_penalty`; 0 ranks by the plain sum, which favours short captions, since every token
adds a negative log-probability). Sources: Graves (2012) and Sutskever et al. (2014) for beam
search; Wu et al. (2016) for length normalisation; Holtzman et al. (2020) on why sampling needs
truncation such as top-k (Fan et al. 2018).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F

StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Generation(NamedTuple):
    """What every decoding function returns (see the module docstring)."""

    sequences: torch.Tensor  # (B, 1 + max_new_tokens) long: [SOT] tokens [EOT] [PAD]...
    scores: torch.Tensor  # (B,) float: sum of the generated tokens' log-probabilities
    lengths: torch.Tensor  # (B,) long: generated tokens, [EOT] included


def _check(context: torch.Tensor, max_new_tokens: int, ids: dict[str, int]) -> None:
    if not isinstance(context, torch.Tensor) or context.dim() < 1 or context.shape[0] < 1:
        raise ValueError("context must be a tensor with one row per sequence to decode, (B, ...) with B >= 1")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    for name, value in ids.items():
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a token id (an int >= 0), got {value!r}")


def next_log_probs(step: StepFn, context: torch.Tensor, input_ids: torch.Tensor,
                   suppress_tokens: Sequence[int] = ()) -> torch.Tensor:
    """Log-probabilities of the next token: (N, V), each row summing to 1 after `exp`.

    Args:
        step: `step(context, input_ids) -> logits (N, V)`.
        context: (N, ...) one row per sequence.
        input_ids: (N, t) tokens so far.
        suppress_tokens: ids that may never be generated (e.g. `[PAD]`, `[SOT]`): their
            logits are set to -inf before the softmax (Hugging Face's `suppress_tokens`).

    Raises:
        ValueError: `step` returned the wrong shape, or NaN.
    """
    logits = step(context, input_ids)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != input_ids.shape[0]:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"step must return logits of shape (N={input_ids.shape[0]}, V), got {shape}")
    if torch.isnan(logits).any():
        raise ValueError("step returned NaN logits")
    logits = logits.float()
    if len(suppress_tokens):
        logits = logits.index_fill(1, torch.as_tensor(list(suppress_tokens), device=logits.device), float("-inf"))
    return F.log_softmax(logits, dim=-1)  # (N, V)


def _loop(step: StepFn, context: torch.Tensor, choose: Callable[[torch.Tensor], torch.Tensor], sot_token_id: int,
          eot_token_id: int, pad_token_id: int, max_new_tokens: int, suppress_tokens: Sequence[int]) -> Generation:
    """One token per sequence per step, chosen by `choose(log_probs (B, V)) -> (B,)`."""
    B, device = context.shape[0], context.device
    seqs = torch.full((B, 1 + max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    seqs[:, 0] = sot_token_id
    scores = torch.zeros(B, device=device)
    lengths = torch.zeros(B, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for t in range(max_new_tokens):
        log_probs = next_log_probs(step, context, seqs[:, : t + 1], suppress_tokens)  # (B, V)
        token = choose(log_probs)  # (B,)
        live = ~done
        seqs[live, t + 1] = token[live]
        scores = scores + torch.where(live, log_probs.gather(1, token[:, None])[:, 0], 0.0)
        lengths = lengths + live.long()
        done = done | (token == eot_token_id)
        if done.all():
            break
    return Generation(seqs, scores, lengths)


@torch.no_grad()
def greedy_search(step: StepFn, context: torch.Tensor, *, sot_token_id: int, eot_token_id: int,
                  pad_token_id: int = 0, max_new_tokens: int = 20, suppress_tokens: Sequence[int] = ()) -> Generation:
    """Greedy decoding: at every step take the single most likely next token.

    Args:
        step: `step(context, input_ids) -> logits (N, V)`.
        context: (B, ...) one row per sequence.
        sot_token_id, eot_token_id, pad_token_id: the start, end and padding ids.
        max_new_tokens: the most tokens generated per sequence ([EOT] included).
        suppress_tokens: ids never generated.

    Returns:
        A `Generation` (sequences (B, 1 + max_new_tokens), scores (B,) sums of log-probs,
        lengths (B,)).

    Raises:
        ValueError: bad ids, `max_new_tokens` < 1, or a `step` of the wrong shape.
    """
    _check(context, max_new_tokens, {"sot_token_id": sot_token_id, "eot_token_id": eot_token_id,
                                     "pad_token_id": pad_token_id})
    return _loop(step, context, lambda lp: lp.argmax(dim=-1), sot_token_id, eot_token_id, pad_token_id,
                 max_new_tokens, suppress_tokens)


@torch.no_grad()
def sample(step: StepFn, context: torch.Tensor, *, sot_token_id: int, eot_token_id: int, pad_token_id: int = 0,
           max_new_tokens: int = 20, temperature: float = 1.0, top_k: int | None = None,
           generator: torch.Generator | None = None, suppress_tokens: Sequence[int] = ()) -> Generation:
    """Ancestral sampling with a temperature and optional top-k truncation, repeatable with a seed.

    The next token is drawn from softmax(logits / temperature) restricted to the `top_k` most
    likely tokens. `scores` still sum the model's own log-probabilities (temperature 1, no
    truncation), so sampled and searched captions can be compared.

    Args:
        temperature: > 0; below 1 sharpens the distribution (towards greedy), above 1 flattens it.
        top_k: keep only the k most likely tokens (None: all).
        generator: a seeded `torch.Generator` (on the context's device) for repeatable samples.
        Others: as `greedy_search`.

    Returns:
        A `Generation`.

    Raises:
        ValueError: temperature <= 0, top_k < 1, and as `greedy_search`.
    """
    _check(context, max_new_tokens, {"sot_token_id": sot_token_id, "eot_token_id": eot_token_id,
                                     "pad_token_id": pad_token_id})
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use greedy_search for temperature 0), got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an int >= 1 or None, got {top_k!r}")

    def choose(log_probs: torch.Tensor) -> torch.Tensor:
        logits = log_probs / temperature  # (B, V)
        if top_k is not None and top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]  # (B,)

    return _loop(step, context, choose, sot_token_id, eot_token_id, pad_token_id, max_new_tokens, suppress_tokens)


def beam_search_step(scores: torch.Tensor, lengths: torch.Tensor, finished: torch.Tensor, log_probs: torch.Tensor,
                     beam_width: int, pad_token_id: int = 0,
                     length_penalty: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of beam search: extend every beam by every token, keep the `beam_width` best.

    A finished beam (one that produced `[EOT]`) is kept as it is: its only extension is
    `pad_token_id` at no cost, so it competes with the live beams with an unchanged score and
    length. Candidates are ranked by `(scores + log_prob) / new_length ** length_penalty`.

    Args:
        scores: (B, K) sums of log-probs of each beam so far (-inf for an empty slot).
        lengths: (B, K) generated tokens of each beam so far.
        finished: (B, K) bool, the beam ended with `[EOT]`.
        log_probs: (B, K, V) next-token log-probabilities of each beam.
        beam_width: how many candidates to keep (the new K).
        pad_token_id: the token a finished beam is extended with.
        length_penalty: exponent of the length normalisation (0: rank by the plain sum).

    Returns:
        (beam_index (B, beam_width) which old beam each new beam extends, token (B, beam_width)
        the token it adds, new_scores (B, beam_width) its sum of log-probs), best first.
    """
    B, K, V = log_probs.shape
    extend = log_probs.masked_fill(finished[:, :, None], float("-inf"))  # (B, K, V)
    extend[:, :, pad_token_id] = torch.where(finished, 0.0, log_probs[:, :, pad_token_id])  # finished: pad, free
    total = scores[:, :, None] + extend  # (B, K, V) sums of log-probs
    new_len = (lengths + (~finished).long())[:, :, None].float()  # (B, K, 1)
    rank = total / new_len.clamp(min=1) ** length_penalty  # (B, K, V)
    top = rank.reshape(B, K * V).topk(beam_width, dim=-1).indices  # (B, beam_width) over K x V
    beam_index, token = top // V, top % V
    return beam_index, token, total.reshape(B, K * V).gather(1, top)


@torch.no_grad()
def beam_search(step: StepFn, context: torch.Tensor, *, sot_token_id: int, eot_token_id: int, pad_token_id: int = 0,
                max_new_tokens: int = 20, beam_width: int = 4, length_penalty: float = 1.0,
                suppress_tokens: Sequence[int] = ()) -> Generation:
    """Batched beam search: keep the `beam_width` best partial sequences per input.

    Every step scores all beam x vocabulary extensions (`beam_search_step`); finished beams
    stay in the beam. It stops when every beam of every input has finished, or after
    `max_new_tokens`. The returned sequence is the beam with the best
    `scores / lengths ** length_penalty`. With `beam_width=1` this is greedy search; with a
    beam as wide as the number of possible sequences it is exhaustive search.

    Args:
        beam_width: K >= 1.
        length_penalty: >= 0; 1.0 ranks by the mean log-prob per token, 0 by the sum.
        Others: as `greedy_search`.

    Returns:
        A `Generation` of the best beam per input; `scores` is its unnormalised sum of log-probs.

    Raises:
        ValueError: beam_width < 1, length_penalty < 0, and as `greedy_search`.
    """
    _check(context, max_new_tokens, {"sot_token_id": sot_token_id, "eot_token_id": eot_token_id,
                                     "pad_token_id": pad_token_id})
    if not isinstance(beam_width, int) or beam_width < 1:
        raise ValueError(f"beam_width must be an int >= 1, got {beam_width!r}")
    if not length_penalty >= 0:
        raise ValueError(f"length_penalty must be >= 0, got {length_penalty}")
    B, K, device = context.shape[0], beam_width, context.device
    ctx = context.repeat_interleave(K, dim=0)  # (B*K, ...) each input once per beam
    seqs = torch.full((B, K, 1 + max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    seqs[:, :, 0] = sot_token_id
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one real beam to start from; the other slots fill at the first step
    lengths = torch.zeros(B, K, dtype=torch.long, device=device)
    finished = torch.zeros(B, K, dtype=torch.bool, device=device)
    for t in range(max_new_tokens):
        log_probs = next_log_probs(step, ctx, seqs[:, :, : t + 1].reshape(B * K, t + 1), suppress_tokens)
        beam, token, scores = beam_search_step(scores, lengths, finished, log_probs.view(B, K, -1), K,
                                               pad_token_id, length_penalty)
        seqs = seqs.gather(1, beam[:, :, None].expand_as(seqs)).clone()  # (B, K, 1 + T) reorder
        was_finished = finished.gather(1, beam)
        lengths = lengths.gather(1, beam) + (~was_finished).long()
        seqs[:, :, t + 1] = torch.where(was_finished, pad_token_id, token)
        finished = was_finished | (token == eot_token_id)
        # An empty slot (-inf) is never a hypothesis: mark it finished so it cannot grow.
        finished = finished | torch.isinf(scores)
        if finished.all():
            break
    rank = scores / lengths.clamp(min=1).float() ** length_penalty  # (B, K)
    best = rank.argmax(dim=1)  # (B,)
    rows = torch.arange(B, device=device)
    return Generation(seqs[rows, best], scores[rows, best], lengths[rows, best])
