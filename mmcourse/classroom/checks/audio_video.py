"""Checks for assignment 13 (audio and video).

* `check_mel_filterbank`: HTK triangular mel filters (n_freqs, n_mels), against the library's
  (`mmcourse.models.audio.mel_filterbank`, Hugging Face's `mel_filter_bank`); names edges spaced in Hz,
  bins spread up to the sample rate instead of Nyquist, area-normalised filters, a mel formula whose
  inverse does not match, a transposed result;
* `check_log_mel`: log(fb.T @ |STFT|^2 + eps) with a Hann window; names the magnitude instead of the
  power, a missing window, log10, a missing log, a missing eps (silence gives -inf);
* `check_audio_to_text_recall`: class-level recall at k of audio→text retrieval; names the wrong
  direction, exact-index matching, ascending order, precision instead of recall, a missing normalisation;
* `check_difference_pool`: the transfer task, [mean over frames; mean of consecutive differences];
  names reversed differences, absolute differences, differences over the feature axis, a missing mean;
* `check_chance_recall`, `check_mean_pool_answer`, `check_binding_answer`: a prediction and two
  multiple-choice questions.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from mmcourse.classroom.checks.core import Case, CheckResult, Property, Variant, check_value, run_check

__all__ = ["check_mel_filterbank", "check_log_mel", "check_audio_to_text_recall", "check_difference_pool",
           "check_chance_recall", "check_mean_pool_answer", "check_binding_answer"]


# ----------------------------------------------------------------------------- exercise 1: mel filterbank

def reference_mel_filterbank(n_freqs: int, n_mels: int, f_min: float, f_max: float, sample_rate: int) -> torch.Tensor:
    """The library's HTK filterbank (n_freqs, n_mels), float32."""
    from mmcourse.models.audio import mel_filterbank

    return mel_filterbank(n_freqs, n_mels, f_min, f_max, sample_rate)


def _triangles(bin_hz: torch.Tensor, edges: torch.Tensor, area: bool = False) -> torch.Tensor:
    left, centre, right = edges[:-2], edges[1:-1], edges[2:]
    fb = torch.clamp(torch.minimum((bin_hz[:, None] - left) / (centre - left),
                                   (right - bin_hz[:, None]) / (right - centre)), min=0)
    if area:
        fb = fb * 2.0 / (right - left)
    return fb.float()


def _fb_variant(spacing: str = "mel", top: str = "nyquist", area: bool = False, inverse: str = "htk"):
    def wrong(n_freqs, n_mels, f_min, f_max, sample_rate):
        top_hz = sample_rate / 2 if top == "nyquist" else sample_rate
        bin_hz = torch.linspace(0, top_hz, n_freqs, dtype=torch.float64)
        if spacing == "hz":
            edges = torch.linspace(f_min, f_max, n_mels + 2, dtype=torch.float64)
        else:
            to_mel = lambda f: 2595 * math.log10(1 + f / 700)  # noqa: E731
            mels = torch.linspace(to_mel(f_min), to_mel(f_max), n_mels + 2, dtype=torch.float64)
            edges = 700 * (torch.exp(mels / 2595) - 1) if inverse == "exp" else 700 * (10 ** (mels / 2595) - 1)
        return _triangles(bin_hz, edges, area)
    return wrong


def check_mel_filterbank(mel_filterbank: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 13.1: `mel_filterbank(n_freqs, n_mels, f_min, f_max, sample_rate) -> (n_freqs, n_mels)`,
    triangles with corners evenly spaced on the HTK mel scale, peak 1 (no area normalisation)."""
    cases = [Case((129, 32, 0.0, 4000.0, 8000), {}, "n_fft=256 at 8 kHz, 32 mels"),
             Case((65, 10, 100.0, 3000.0, 8000), {}, "65 bins, 10 mels from 100 to 3,000 Hz"),
             Case((257, 40, 0.0, 8000.0, 16000), {}, "n_fft=512 at 16 kHz, 40 mels")]
    diagnoses = [
        Variant(_fb_variant(spacing="hz"), "the filter corners are evenly spaced in Hz: they must be evenly spaced in "
                "mel and converted back to Hz", ("the mel scale is the point: equal steps in mel, not in Hz",
                                                 "space n_mels + 2 points in mel between mel(f_min) and mel(f_max)")),
        Variant(_fb_variant(top="sr"), "the FFT bins go from 0 to the sample rate: a one-sided spectrum of n_freqs "
                "bins goes from 0 to sample_rate / 2 (Nyquist)", "what frequency does the last bin of rfft stand for?"),
        Variant(_fb_variant(area=True), "your filters are area-normalised (Slaney's norm): here each triangle "
                "peaks at 1 (norm=None)", "drop the 2 / (right - left) factor"),
        Variant(_fb_variant(inverse="exp"), "your mel-to-Hz conversion does not invert your Hz-to-mel one: "
                "the HTK mel scale takes a base-10 logarithm, which exp (the inverse of the natural log) does not "
                "undo", ("convert a frequency there and back and compare",
                         "solve m = mel(f) for f step by step: which function undoes log10?")),
        Property(lambda fn: tuple(fn(129, 32, 0.0, 4000.0, 8000).shape) == (32, 129),
                 "the result is transposed: rows are frequency bins (n_freqs, n_mels), so fb.T @ power gives mels",
                 "transpose it"),
    ]
    return run_check("mel_filterbank", mel_filterbank, reference_mel_filterbank, cases, diagnoses,
                     success="equals the library's HTK filterbank on {n} cases", rtol=1e-4, atol=1e-5,
                     raise_on_fail=raise_on_fail)


# ----------------------------------------------------------------------------- exercise 2: log-mel

def reference_log_mel(waveform: torch.Tensor, filterbank: torch.Tensor, n_fft: int, hop_length: int) -> torch.Tensor:
    """log(fb.T @ |STFT(hann)|^2 + 1e-6): (B, N) -> (B, n_mels, T)."""
    spec = torch.stft(waveform, n_fft, hop_length, window=torch.hann_window(n_fft), return_complex=True)
    return torch.log(filterbank.T @ spec.abs() ** 2 + 1e-6)


def _log_mel_variant(power: float = 2.0, window: bool = True, log: str = "ln", eps: float = 1e-6):
    def wrong(waveform, filterbank, n_fft, hop_length):
        w = torch.hann_window(n_fft) if window else None
        mel = filterbank.T @ torch.stft(waveform, n_fft, hop_length, window=w, return_complex=True).abs() ** power
        return {"ln": torch.log, "log10": torch.log10, "none": lambda x: x}[log](mel + eps)
    return wrong


def check_log_mel(log_mel: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 13.2: `log_mel(waveform (B, N), filterbank (F, M), n_fft, hop_length) -> (B, M, T)`."""
    def cases():
        g = torch.Generator().manual_seed(130)
        t = torch.arange(800) / 8000
        tone = torch.sin(2 * math.pi * 440 * t)[None] + 0.1 * torch.randn(1, 800, generator=g)
        fb = reference_mel_filterbank(129, 16, 0.0, 4000.0, 8000)
        fb_small = reference_mel_filterbank(33, 8, 0.0, 4000.0, 8000)
        return [Case((tone, fb, 256, 128), {}, "a 440 Hz tone, n_fft=256"),
                Case((torch.randn(3, 600, generator=g), fb_small, 64, 32), {}, "3 noise clips, n_fft=64"),
                Case((torch.zeros(2, 512), fb, 256, 64), {}, "2 silent clips (all zeros)")]

    diagnoses = [
        Variant(_log_mel_variant(power=1.0), "you used the magnitude |X|: the mel filters pool the power |X|^2",
                "energy is the square of the amplitude"),
        Variant(_log_mel_variant(window=False), "no window: torch.stft then uses a rectangular window, whose hard "
                "edges smear energy across frequencies; use a Hann window of n_fft samples", "torch.hann_window"),
        Variant(_log_mel_variant(log="log10"), "log10 instead of the natural log: same shape, wrong scale",
                "torch.log"),
        Variant(_log_mel_variant(log="none"), "the logarithm is missing: a log-mel spectrogram is the log of the "
                "mel energies", "take the log at the end"),
        Variant(_log_mel_variant(eps=0.0), "silence gives log(0) = -inf: add the small constant 1e-6 before the log",
                "log(x + eps)"),
    ]
    return run_check("log_mel", log_mel, reference_log_mel, cases(), diagnoses,
                     success="equals log(fb.T @ |STFT|^2 + 1e-6) on {n} cases, silence included", rtol=1e-4,
                     atol=1e-4, raise_on_fail=raise_on_fail)


# ----------------------------------------------------------------------------- exercise 3: emergent retrieval

def reference_audio_to_text_recall(audio_emb: torch.Tensor, text_emb: torch.Tensor, audio_labels: torch.Tensor,
                                   text_labels: torch.Tensor, k: int = 1) -> float:
    """Share of audio queries whose k most cosine-similar captions include one with the query's label."""
    sim = F.normalize(audio_emb.double(), dim=-1) @ F.normalize(text_emb.double(), dim=-1).T  # (N, T)
    top = sim.topk(k, dim=1).indices  # (N, k)
    return (text_labels[top] == audio_labels[:, None]).any(dim=1).double().mean().item()


def _recall_wrong_direction(a, t, la, lt, k=1):
    return reference_audio_to_text_recall(t, a, lt, la, k)


def _recall_exact_index(a, t, la, lt, k=1):
    sim = F.normalize(a, dim=-1) @ F.normalize(t, dim=-1).T
    top = sim.topk(k, dim=1).indices
    return (top == torch.arange(len(a))[:, None]).any(dim=1).float().mean().item()


def _recall_ascending(a, t, la, lt, k=1):
    sim = F.normalize(a, dim=-1) @ F.normalize(t, dim=-1).T
    top = sim.topk(k, dim=1, largest=False).indices
    return (lt[top] == la[:, None]).any(dim=1).float().mean().item()


def _recall_precision(a, t, la, lt, k=1):
    sim = F.normalize(a, dim=-1) @ F.normalize(t, dim=-1).T
    return (lt[sim.topk(k, dim=1).indices] == la[:, None]).float().mean().item()


def _recall_unnormalised(a, t, la, lt, k=1):
    top = (a @ t.T).topk(k, dim=1).indices
    return (lt[top] == la[:, None]).any(dim=1).float().mean().item()


def recall_cases() -> list[Case]:
    """Small embedding sets built so that each mistake changes the answer."""
    g = torch.Generator().manual_seed(131)
    cases = []
    for n, t, d, k, scale_spread in ((12, 20, 6, 1, True), (30, 15, 8, 3, True), (9, 9, 4, 2, True)):
        text_labels = torch.arange(t) % 5
        centres = torch.randn(5, d, generator=g)
        audio_labels = torch.randint(0, 5, (n,), generator=g)
        audio = centres[audio_labels] + 0.9 * torch.randn(n, d, generator=g)
        text = centres[text_labels] + 0.9 * torch.randn(t, d, generator=g)
        if scale_spread:  # captions of very different lengths: normalising matters
            text = text * torch.exp(1.5 * torch.randn(t, 1, generator=g))
        cases.append(Case((audio, text, audio_labels, text_labels), {"k": k}, f"{n} clips, {t} captions, k={k}"))
    return cases


def check_audio_to_text_recall(recall: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 13.3: `audio_to_text_recall(audio_emb (N, D), text_emb (T, D), audio_labels (N,),
    text_labels (T,), k=1) -> float`: the share of clips whose k most cosine-similar captions include
    one naming the clip's label (embeddings raw: normalise them)."""
    diagnoses = [
        Variant(_recall_wrong_direction, "you ranked clips for each caption (text→audio); the query is the clip, "
                "the candidates are the captions", "one row of similarities per clip"),
        Variant(_recall_exact_index, "you counted caption i as the match of clip i: here a caption matches a clip "
                "when it names the same label", "compare text_labels of the retrieved captions with the clip's label"),
        Variant(_recall_ascending, "you took the k *least* similar captions", "largest similarities first"),
        Variant(_recall_precision, "you averaged over the k retrieved captions (precision at k): recall at k asks "
                "whether ANY of the k is right", "one yes/no per clip, then the mean"),
        Variant(_recall_unnormalised, "the ranking uses raw dot products: a long caption vector wins everywhere; "
                "rank by cosine similarity", "normalise both sides first"),
    ]
    return run_check("audio_to_text_recall", recall, reference_audio_to_text_recall, recall_cases(), diagnoses,
                     success="matches class-level recall@k on {n} cases", rtol=1e-4, atol=1e-6,
                     raise_on_fail=raise_on_fail)


def check_chance_recall(value: Any, raise_on_fail: bool = True) -> CheckResult:
    """Predicted audio→text R@1 of an untrained encoder over 100 captions, 10 per digit (0.1)."""
    return check_value("chance_recall", value, 0.1, "right: a random top caption names the right digit 10 of 100 "
                       "times", hint="what share of the 100 captions name any given digit?", atol=0.01,
                       wrong_values=[(0.01, "1/100 would be right if exactly one caption matched; here ten do"),
                                     (0.5, "there are ten digits, not two")], raise_on_fail=raise_on_fail)


# ----------------------------------------------------------------------------- exercise 4: transfer

def reference_difference_pool(frame_features: torch.Tensor) -> torch.Tensor:
    """(B, T, E) -> (B, 2E): [mean over frames; mean of f[t+1] - f[t]]."""
    return torch.cat([frame_features.mean(1), (frame_features[:, 1:] - frame_features[:, :-1]).mean(1)], dim=-1)


def check_difference_pool(difference_pool: Callable[..., Any], raise_on_fail: bool = True) -> CheckResult:
    """Exercise 13.4: `difference_pool(frame_features (B, T, E)) -> (B, 2E)`: the mean over frames, then
    the mean of the differences between each frame and the one before it (later minus earlier)."""
    def cases():
        g = torch.Generator().manual_seed(134)
        return [Case((torch.randn(4, 8, 5, generator=g),), {}, "B=4, T=8, E=5"),
                Case((torch.randn(1, 3, 2, generator=g),), {}, "B=1, T=3, E=2"),
                Case((torch.randn(2, 5, 6, generator=g),), {}, "B=2, T=5, E=6")]

    diagnoses = [
        Variant(lambda f: torch.cat([f.mean(1), (f[:, :-1] - f[:, 1:]).mean(1)], -1), "your differences are earlier "
                "minus later: take f[t+1] - f[t]", "which frame comes second?"),
        Variant(lambda f: torch.cat([f.mean(1), (f[:, 1:] - f[:, :-1]).abs().mean(1)], -1), "absolute differences "
                "are the same forwards and backwards: they lose exactly the direction this pooling is for",
                "keep the sign"),
        Property(lambda fn: tuple(fn(torch.randn(2, 4, 3)).shape) == (2, 5), "you took differences along the "
                 "feature axis; the differences are between consecutive frames (axis 1)", "slice the time axis"),
        Property(lambda fn: tuple(fn(torch.randn(2, 4, 3)).shape) == (2, 3),
                 "the result has E columns: it must hold the mean AND the mean difference, 2E columns",
                 "concatenate the two along the last axis"),
        Variant(lambda f: torch.cat([(f[:, 1:] - f[:, :-1]).mean(1), f.mean(1)], -1), "the two halves are swapped: "
                "the mean over frames first, then the mean difference", "[mean; mean difference]"),
    ]
    return run_check("difference_pool", difference_pool, reference_difference_pool, cases(), diagnoses,
                     success="matches [mean; mean consecutive difference] on {n} cases", raise_on_fail=raise_on_fail)


# ----------------------------------------------------------------------------- questions

def check_mean_pool_answer(choice: Any, raise_on_fail: bool = True) -> CheckResult:
    """Multiple choice: why can mean pooling not beat 50% on the four motions? (answer "c")."""
    return check_value("mean_pool_answer", str(choice).strip().lower(), "c",
                       "right: each motion's clips are exactly the time reversals of its partner's, and the mean of "
                       "a set of frames does not depend on their order", hint="compare a clip moving left with the "
                       "same clip played backwards, frame by frame",
                       wrong_values=[("a", "more training does not help: the two inputs of a pair are identical "
                                      "after pooling, so no head can separate them"),
                                     ("b", "CLIP's frame features do differ between frames (the digit is in another "
                                      "place); what they lose is the order of those frames"),
                                     ("d", "the head's size does not matter when its inputs are identical")],
                       raise_on_fail=raise_on_fail)


def check_binding_answer(choice: Any, raise_on_fail: bool = True) -> CheckResult:
    """Multiple choice: what does binding audio through images need from the image tower? (answer "b")."""
    return check_value("binding_answer", str(choice).strip().lower(), "b",
                       "right: the audio lands where the images of its concept are; text is reached only if CLIP "
                       "already put those images next to their captions, and the tower must stay frozen so that "
                       "place does not move", hint="audio never meets text: through what does it get there?",
                       wrong_values=[("a", "no audio–text pair is used at all; that is the point of the binding"),
                                     ("c", "a tower trained along with the audio would drift away from the text tower "
                                      "it was aligned with: ImageBind freezes it"),
                                     ("d", "the audio encoder is trained from scratch; it needs no pre-training")],
                       raise_on_fail=raise_on_fail)
