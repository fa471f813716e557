"""Decoding: greedy, beam search and sampling against exhaustive search and against each other."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from mmcourse.models import Generation, beam_search, beam_search_step, greedy_search, next_log_probs, sample

PAD, SOT, EOT = 0, 1, 2
V = 5  # PAD, SOT, EOT and two words
IDS = {"sot_token_id": SOT, "eot_token_id": EOT, "pad_token_id": PAD}


def tiny_decoder(seed=0, vocab=V, max_len=8):
    """A next-token model whose logits depend on the context row, the position and every token so
    far (through a running hash), so greedy, beam and exhaustive search disagree."""
    g = torch.Generator().manual_seed(seed)
    table = 2.0 * torch.randn(4, max_len + 1, 97, vocab, generator=g)

    def step(context, input_ids):
        t = input_ids.shape[1]
        h = (input_ids * torch.tensor([7 ** i for i in range(t)])).sum(1) % 97  # (N,)
        return table[context[:, 0], t, h]  # (N, V)
    return step


def exhaustive(step, context_row, max_new_tokens, length_penalty, suppress=(PAD, SOT)):
    """Score every sequence that ends at [EOT] or at the maximum length; return the best."""
    words = [t for t in range(V) if t not in suppress]
    best = (-math.inf, None, None)
    for n in range(1, max_new_tokens + 1):
        for tokens in itertools.product(words, repeat=n):
            if EOT in tokens[:-1] or (n < max_new_tokens and tokens[-1] != EOT):
                continue
            seq = torch.tensor([[SOT, *tokens]])
            total = 0.0
            for t in range(n):
                lp = next_log_probs(step, context_row[None], seq[:, : t + 1], suppress)
                total += float(lp[0, tokens[t]])
            rank = total / n ** length_penalty
            if rank > best[0] + 1e-9:
                best = (rank, tokens, total)
    return best


def teacher_forced_score(step, context, gen: Generation, suppress=(PAD, SOT)):
    """Sum of log-probs of each generated sequence, recomputed token by token."""
    out = []
    for b in range(len(gen.sequences)):
        seq, n, total = gen.sequences[b : b + 1], int(gen.lengths[b]), 0.0
        for t in range(n):
            lp = next_log_probs(step, context[b : b + 1], seq[:, : t + 1], suppress)
            total += float(lp[0, seq[0, t + 1]])
        out.append(total)
    return torch.tensor(out)


CONTEXT = torch.arange(4)[:, None]  # (4, 1): four different "images"


def test_beam_width_one_is_greedy():
    step = tiny_decoder()
    for penalty in (0.0, 1.0):
        g = greedy_search(step, CONTEXT, max_new_tokens=6, suppress_tokens=(PAD, SOT), **IDS)
        b = beam_search(step, CONTEXT, max_new_tokens=6, beam_width=1, length_penalty=penalty,
                        suppress_tokens=(PAD, SOT), **IDS)
        assert torch.equal(g.sequences, b.sequences)
        torch.testing.assert_close(g.scores, b.scores)
        assert torch.equal(g.lengths, b.lengths)


@pytest.mark.parametrize("penalty", [0.0, 1.0, 0.6])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wide_beam_equals_exhaustive_search(penalty, seed):
    step, T = tiny_decoder(seed), 4
    b = beam_search(step, CONTEXT, max_new_tokens=T, beam_width=64, length_penalty=penalty,
                    suppress_tokens=(PAD, SOT), **IDS)
    for row in range(len(CONTEXT)):
        rank, tokens, total = exhaustive(step, CONTEXT[row], T, penalty)
        n = len(tokens)
        assert b.sequences[row, 1 : n + 1].tolist() == list(tokens)
        assert b.lengths[row] == n
        assert b.scores[row].item() == pytest.approx(total, abs=1e-5)


def test_narrow_beam_can_miss_but_never_beats_exhaustive_and_greedy_is_not_always_optimal():
    worse_greedy = 0
    for seed in range(6):
        step = tiny_decoder(seed)
        g = greedy_search(step, CONTEXT, max_new_tokens=4, suppress_tokens=(PAD, SOT), **IDS)
        b = beam_search(step, CONTEXT, max_new_tokens=4, beam_width=2, length_penalty=0.0,
                        suppress_tokens=(PAD, SOT), **IDS)
        for row in range(len(CONTEXT)):
            best = exhaustive(step, CONTEXT[row], 4, 0.0)[0]
            assert b.scores[row] <= best + 1e-5 and g.scores[row] <= best + 1e-5
            worse_greedy += g.scores[row] < best - 1e-5
    assert worse_greedy > 0  # the tiny decoder is hard enough for search to matter


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_sequences_end_at_eot_or_max_length_and_scores_are_sums_of_log_probs(method):
    step = tiny_decoder(3)
    kw = dict(max_new_tokens=5, suppress_tokens=(PAD, SOT), **IDS)
    if method == "greedy":
        gen = greedy_search(step, CONTEXT, **kw)
    elif method == "beam":
        gen = beam_search(step, CONTEXT, beam_width=3, **kw)
    else:
        gen = sample(step, CONTEXT, temperature=1.5, generator=torch.Generator().manual_seed(0), **kw)
    assert gen.sequences.shape == (4, 6) and (gen.sequences[:, 0] == SOT).all()
    for seq, n in zip(gen.sequences.tolist(), gen.lengths.tolist()):
        body = seq[1 : n + 1]
        assert body[-1] == EOT or n == 5, seq
        assert EOT not in body[:-1] and all(t == PAD for t in seq[n + 1 :]), seq
        assert PAD not in body and SOT not in body
    torch.testing.assert_close(gen.scores, teacher_forced_score(step, CONTEXT, gen))


def test_sampling_is_seeded_top_k_one_is_greedy_and_top_k_restricts():
    step = tiny_decoder(4)
    kw = dict(max_new_tokens=5, suppress_tokens=(PAD, SOT), **IDS)
    a = sample(step, CONTEXT, temperature=2.0, generator=torch.Generator().manual_seed(7), **kw)
    b = sample(step, CONTEXT, temperature=2.0, generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(a.sequences, b.sequences)
    many = sample(step, CONTEXT.repeat(50, 1), temperature=5.0, generator=torch.Generator().manual_seed(1), **kw)
    assert len({tuple(s) for s in many.sequences.tolist()}) > 10  # a hot temperature explores
    g = greedy_search(step, CONTEXT, **kw)
    k1 = sample(step, CONTEXT, temperature=3.0, top_k=1, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(k1.sequences, g.sequences)
    # top_k=2: the first token is always one of the two most likely
    first = next_log_probs(step, CONTEXT, torch.full((4, 1), SOT), (PAD, SOT)).topk(2).indices  # (4, 2)
    k2 = sample(step, CONTEXT.repeat(25, 1), temperature=5.0, top_k=2, generator=torch.Generator().manual_seed(2), **kw)
    assert (k2.sequences[:, 1:2] == first.repeat(25, 1)).any(1).all()


def test_beam_search_step_against_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    B, K, Vs = 2, 3, 6
    scores = torch.randn(B, K, generator=g) - 3
    lengths = torch.tensor([[2, 3, 1], [4, 4, 2]])
    finished = torch.tensor([[False, True, False], [True, False, False]])
    log_probs = torch.log_softmax(torch.randn(B, K, Vs, generator=g), -1)
    for penalty in (0.0, 1.0):
        beam, token, new = beam_search_step(scores, lengths, finished, log_probs, K, PAD, penalty)
        for b in range(B):
            cands = []
            for k in range(K):
                for v in range(Vs):
                    if finished[b, k]:
                        if v != PAD:
                            continue
                        total, n = float(scores[b, k]), int(lengths[b, k])
                    else:
                        total, n = float(scores[b, k] + log_probs[b, k, v]), int(lengths[b, k]) + 1
                    cands.append((total / n ** penalty, k, v, total))
            cands.sort(key=lambda c: -c[0])
            assert [(k, v) for _, k, v, _ in cands[:K]] == list(zip(beam[b].tolist(), token[b].tolist()))
            assert new[b].tolist() == pytest.approx([c[3] for c in cands[:K]], abs=1e-6)


def test_batched_beam_search_equals_one_input_at_a_time():
    step = tiny_decoder(5)
    kw = dict(max_new_tokens=5, beam_width=3, suppress_tokens=(PAD, SOT), **IDS)
    whole = beam_search(step, CONTEXT, **kw)
    for row in range(len(CONTEXT)):
        one = beam_search(step, CONTEXT[row : row + 1], **kw)
        assert torch.equal(one.sequences[0], whole.sequences[row])
        torch.testing.assert_close(one.scores[0], whole.scores[row])


def test_bad_arguments_are_named():
    step = tiny_decoder()
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_search(step, CONTEXT, max_new_tokens=0, **IDS)
    with pytest.raises(ValueError, match="beam_width"):
        beam_search(step, CONTEXT, beam_width=0, **IDS)
    with pytest.raises(ValueError, match="length_penalty"):
        beam_search(step, CONTEXT, length_penalty=-1.0, **IDS)
    with pytest.raises(ValueError, match="temperature"):
        sample(step, CONTEXT, temperature=0.0, **IDS)
    with pytest.raises(ValueError, match="top_k"):
        sample(step, CONTEXT, top_k=0, **IDS)
    with pytest.raises(ValueError, match="eot_token_id"):
        greedy_search(step, CONTEXT, sot_token_id=SOT, eot_token_id=-1)
    with pytest.raises(ValueError, match="logits of shape"):
        greedy_search(lambda c, ids: torch.zeros(len(ids)), CONTEXT, **IDS)
    with pytest.raises(ValueError, match="NaN"):
        greedy_search(lambda c, ids: torch.full((len(ids), V), float("nan")), CONTEXT, **IDS)
    with pytest.raises(ValueError, match="context"):
        greedy_search(step, torch.zeros(0, 1, dtype=torch.long), **IDS)
