"""Tests for the assignment 13 checks: right answers pass, each named mistake is named."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import fails_with
from mmcourse.classroom.checks.audio_video import (
    check_audio_to_text_recall, check_binding_answer, check_chance_recall, check_difference_pool, check_log_mel,
    check_mean_pool_answer, check_mel_filterbank, reference_audio_to_text_recall, reference_difference_pool,
    reference_log_mel, reference_mel_filterbank)


# -- exercise 1: the mel filterbank ---------------------------------------------------------------------

def good_fb(n_freqs, n_mels, f_min, f_max, sample_rate, spacing="mel", top=None, area=False, inverse=10.0,
            transpose=False):
    bins = torch.linspace(0, sample_rate / 2 if top is None else top, n_freqs, dtype=torch.float64)
    if spacing == "mel":
        lo, hi = (2595 * math.log10(1 + f / 700) for f in (f_min, f_max))
        mels = torch.linspace(lo, hi, n_mels + 2, dtype=torch.float64)
        edges = 700 * (inverse ** (mels / 2595) - 1)
    else:
        edges = torch.linspace(f_min, f_max, n_mels + 2, dtype=torch.float64)
    l, c, r = edges[:-2], edges[1:-1], edges[2:]
    fb = torch.clamp(torch.minimum((bins[:, None] - l) / (c - l), (r - bins[:, None]) / (r - c)), min=0)
    if area:
        fb = fb * 2 / (r - l)
    return (fb.T if transpose else fb).float()


def test_mel_filterbank_right_answers_pass():
    assert check_mel_filterbank(good_fb).passed
    assert check_mel_filterbank(reference_mel_filterbank).passed


def test_reference_filterbank_is_the_library_and_peaks_at_one():
    from transformers.audio_utils import mel_filter_bank
    fb = reference_mel_filterbank(129, 32, 0.0, 4000.0, 8000)
    torch.testing.assert_close(fb, torch.from_numpy(mel_filter_bank(129, 32, 0.0, 4000.0, 8000, mel_scale="htk")).float())
    assert fb.max() <= 1.0 + 1e-6 and (fb.max(0).values > 0.5).all()  # every filter gets a bin near its peak


@pytest.mark.parametrize("kwargs, fragment", [
    ({"spacing": "hz"}, "evenly spaced in Hz"),
    ({"top": 8000}, "Nyquist"),
    ({"area": True}, "area-normalised"),
    ({"inverse": math.e}, "does not invert"),
    ({"transpose": True}, "transposed"),
])
def test_mel_filterbank_mistakes_are_named(kwargs, fragment):
    def wrong(n_freqs, n_mels, f_min, f_max, sample_rate):
        if "top" in kwargs:
            return good_fb(n_freqs, n_mels, f_min, f_max, sample_rate, top=sample_rate)
        return good_fb(n_freqs, n_mels, f_min, f_max, sample_rate, **kwargs)
    fails_with(check_mel_filterbank, wrong, fragment)


# -- exercise 2: the log-mel spectrogram ------------------------------------------------------------------

def good_log_mel(waveform, filterbank, n_fft, hop_length):
    power = torch.stft(waveform, n_fft, hop_length, window=torch.hann_window(n_fft), return_complex=True).abs() ** 2
    return torch.log(filterbank.T @ power + 1e-6)


def test_log_mel_right_answers_pass():
    assert check_log_mel(good_log_mel).passed
    assert check_log_mel(reference_log_mel).passed


def test_reference_log_mel_equals_the_library_front_end():
    from mmcourse.models.audio import LogMelSpectrogram
    x = torch.randn(2, 4000)
    torch.testing.assert_close(reference_log_mel(x, reference_mel_filterbank(129, 32, 0.0, 4000.0, 8000), 256, 128),
                               LogMelSpectrogram()(x))


def _lm(power=2, window=True, log=torch.log, eps=1e-6):
    def wrong(waveform, filterbank, n_fft, hop_length):
        w = torch.hann_window(n_fft) if window else None
        return log(filterbank.T @ torch.stft(waveform, n_fft, hop_length, window=w, return_complex=True).abs() ** power + eps)
    return wrong


@pytest.mark.parametrize("wrong, fragment", [
    (_lm(power=1), "magnitude"),
    (_lm(window=False), "no window"),
    (_lm(log=torch.log10), "log10"),
    (_lm(log=lambda x: x), "logarithm is missing"),
    (_lm(eps=0.0), "-inf"),
])
def test_log_mel_mistakes_are_named(wrong, fragment):
    fails_with(check_log_mel, wrong, fragment)


# -- exercise 3: emergent retrieval ----------------------------------------------------------------------

def good_recall(audio_emb, text_emb, audio_labels, text_labels, k=1):
    sim = F.normalize(audio_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    top = sim.argsort(dim=1, descending=True)[:, :k]
    return (text_labels[top] == audio_labels[:, None]).any(1).float().mean().item()


def naive_recall(audio_emb, text_emb, audio_labels, text_labels, k=1):  # a plain loop, the trusted reference
    hits = 0
    for a, la in zip(audio_emb, audio_labels):
        sims = [(float(F.cosine_similarity(a, t, dim=0)), int(lt)) for t, lt in zip(text_emb, text_labels)]
        best = sorted(sims, key=lambda s: -s[0])[:k]
        hits += any(lt == int(la) for _, lt in best)
    return hits / len(audio_emb)


def test_recall_right_answers_pass_and_the_reference_equals_a_loop():
    from mmcourse.classroom.checks.audio_video import recall_cases
    assert check_audio_to_text_recall(good_recall).passed
    assert check_audio_to_text_recall(naive_recall).passed
    for case in recall_cases():
        assert reference_audio_to_text_recall(*case.args, **case.kwargs) == pytest.approx(naive_recall(*case.args, **case.kwargs))


@pytest.mark.parametrize("name, fragment", [
    ("direction", "text→audio"), ("exact", "caption i"), ("ascending", "least"), ("precision", "precision"),
    ("raw", "raw dot products"),
])
def test_recall_mistakes_are_named(name, fragment):
    def wrong(a, t, la, lt, k=1):
        if name == "direction":
            return good_recall(t, a, lt, la, k)
        sim = a @ t.T if name == "raw" else F.normalize(a, dim=-1) @ F.normalize(t, dim=-1).T
        top = sim.topk(k, dim=1, largest=name != "ascending").indices
        if name == "exact":
            return (top == torch.arange(len(a))[:, None]).any(1).float().mean().item()
        hit = lt[top] == la[:, None]
        return hit.float().mean().item() if name == "precision" else hit.any(1).float().mean().item()
    fails_with(check_audio_to_text_recall, wrong, fragment)


# -- exercise 4: difference pooling ----------------------------------------------------------------------

def good_pool(f):
    return torch.cat([f.mean(1), (f[:, -1] - f[:, 0]) / (f.shape[1] - 1)], dim=1)  # the differences telescope


def test_difference_pool_right_answers_pass():
    assert check_difference_pool(good_pool).passed
    assert check_difference_pool(reference_difference_pool).passed


@pytest.mark.parametrize("wrong, fragment", [
    (lambda f: torch.cat([f.mean(1), (f[:, :-1] - f[:, 1:]).mean(1)], -1), "earlier minus later"),
    (lambda f: torch.cat([f.mean(1), (f[:, 1:] - f[:, :-1]).abs().mean(1)], -1), "absolute"),
    (lambda f: torch.cat([f.mean(1), (f[..., 1:] - f[..., :-1]).mean(1)], -1), "feature axis"),
    (lambda f: (f[:, 1:] - f[:, :-1]).mean(1), "2E columns"),
    (lambda f: torch.cat([(f[:, 1:] - f[:, :-1]).mean(1), f.mean(1)], -1), "swapped"),
])
def test_difference_pool_mistakes_are_named(wrong, fragment):
    fails_with(check_difference_pool, wrong, fragment)


def test_difference_pool_tells_a_clip_from_its_reversal():
    f = torch.randn(3, 8, 4)
    assert not torch.allclose(reference_difference_pool(f), reference_difference_pool(f.flip(1)))
    torch.testing.assert_close(reference_difference_pool(f)[:, :4], reference_difference_pool(f.flip(1))[:, :4])


# -- values and questions ----------------------------------------------------------------------------------

def test_value_and_choice_checks():
    assert check_chance_recall(0.1).passed
    fails_with(check_chance_recall, 0.01, "exactly one caption")
    assert check_mean_pool_answer("c").passed and check_mean_pool_answer(" C ").passed
    fails_with(check_mean_pool_answer, "a", "more training")
    assert check_binding_answer("b").passed
    fails_with(check_binding_answer, "c", "freezes")


def test_untouched_blanks_raise_the_students_not_implemented_error():
    def blank(*args, **kwargs):
        raise NotImplementedError()
    for check in (check_mel_filterbank, check_log_mel, check_audio_to_text_recall, check_difference_pool):
        with pytest.raises(NotImplementedError):
            check(blank)
        assert not check(blank, raise_on_fail=False).passed
