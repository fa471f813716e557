"""Spoken digits, synthesised: one vowel-like sound per digit, generated at run time (no download,
no speech synthesiser to install).

Each digit k is a *source–filter* sound, the textbook model of a spoken vowel (Fant, 1960): a
glottal pulse train at the speaker's pitch f0 (90–220 Hz, gliding ±10% over the sound) filtered
by two resonances, the formants F1 and F2 of `DIGIT_FORMANTS[k]`. Every clip varies the speaker
(pitch, glide), the formants (±5%, as speakers differ), the duration (0.2–0.45 s), the onset and
the noise (signal-to-noise ratio 5–20 dB). What identifies the digit is its formant pair, as the
formant pair identifies a vowel; real speech adds consonants, words that unfold in time, accents
and rooms, so the course's audio is easier than speech and its encoders smaller.

    clips = SpokenDigits("train", n=2000)   # clips.waveforms (2000, 4000) float32 in [-1, 1]-ish
"""
from __future__ import annotations

import math

import torch

from mmcourse.data.loaders import _SPLIT_ID, _check_split

SAMPLE_RATE = 8000  # Hz: telephone quality, enough for F1 and F2 (below 2.4 kHz)
CLIP_SECONDS = 0.5
NUM_SAMPLES = int(SAMPLE_RATE * CLIP_SECONDS)  # 4000 samples per clip
# (F1, F2) in Hz per digit 0..9: ten points of the vowel chart, from "ee" (300, 2300) to "oo" (330, 750).
DIGIT_FORMANTS = ((300, 2300), (400, 2000), (550, 1750), (700, 1550), (800, 1200),
                  (650, 950), (480, 850), (330, 750), (300, 1400), (450, 1450))
FORMANT_BANDWIDTH = 80.0  # Hz, standard deviation of each resonance's Gaussian envelope
F2_GAIN = 0.6  # the second formant is weaker than the first, as in speech


def synthesize_digits(labels: torch.Tensor, generator: torch.Generator | None = None,
                      snr_db: tuple[float, float] = (5.0, 20.0)) -> torch.Tensor:
    """One synthetic spoken digit per label.

    Args:
        labels: (B,) integer digits in 0..9.
        generator: the random source of every per-clip variation (pitch, glide, formant jitter,
            duration, onset, noise); the same generator state gives the same clips.
        snr_db: (low, high) signal-to-noise ratio range in dB of the added white noise.

    Returns:
        (B, NUM_SAMPLES) float32 waveforms at SAMPLE_RATE; the voiced part peaks at 1 before noise.

    Raises:
        TypeError: labels not an integer tensor. ValueError: a label outside 0..9, or a bad snr_db.
    """
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor of digits, got {type(labels).__name__}"
                        f"{'' if not isinstance(labels, torch.Tensor) else ' of ' + str(labels.dtype)}")
    if labels.dim() != 1:
        raise ValueError(f"labels must have shape (B,), got {tuple(labels.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"labels must be digits 0..9, got values in [{int(labels.min())}, {int(labels.max())}]")
    low, high = snr_db
    if not low <= high:
        raise ValueError(f"snr_db must be (low, high) with low <= high, got {snr_db}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    B, N = len(labels), NUM_SAMPLES
    rand = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    f0 = 90 + 130 * rand(B, 1)  # (B, 1) pitch in Hz
    formants = torch.tensor(DIGIT_FORMANTS, dtype=torch.float32)[labels]  # (B, 2) Hz
    formants = formants * (1 + 0.05 * torch.randn(B, 2, generator=g))  # speakers differ
    duration = 0.2 + 0.25 * rand(B, 1)  # (B, 1) seconds
    start = (CLIP_SECONDS - duration) * rand(B, 1)  # (B, 1) seconds
    t = torch.arange(N) / SAMPLE_RATE  # (N,) seconds
    glide = 1 + 0.1 * (2 * rand(B, 1) - 1) * (t - start) / duration  # (B, N) pitch contour
    cycles = torch.cumsum(f0 * glide, dim=1) / SAMPLE_RATE + rand(B, 1)  # (B, N) glottal cycles so far
    source = torch.diff(torch.floor(cycles), dim=1, prepend=torch.floor(cycles[:, :1]))  # (B, N) one pulse per cycle
    freqs = torch.fft.rfftfreq(N, 1 / SAMPLE_RATE)  # (N/2 + 1,) Hz
    envelope = (torch.exp(-0.5 * ((freqs - formants[:, :1]) / FORMANT_BANDWIDTH) ** 2)
                + F2_GAIN * torch.exp(-0.5 * ((freqs - formants[:, 1:]) / FORMANT_BANDWIDTH) ** 2))  # (B, N/2 + 1)
    voiced = torch.fft.irfft(torch.fft.rfft(source, n=N) * envelope, n=N)  # (B, N): the vocal tract's filter
    phase = ((t - start) / duration).clamp(0, 1)  # (B, N) 0 -> 1 across the sound
    voiced = voiced * torch.sin(math.pi * phase) * ((t >= start) & (t <= start + duration))  # smooth on and off
    voiced = voiced / voiced.abs().amax(dim=1, keepdim=True).clamp_min(1e-8)
    snr = 10 ** ((low + (high - low) * rand(B, 1)) / 20)  # amplitude ratio
    rms = voiced.pow(2).mean(dim=1, keepdim=True).sqrt()  # (B, 1)
    return (voiced + torch.randn(B, N, generator=g) * rms / snr).float()


class SpokenDigits:
    """Synthetic spoken digits with balanced labels, generated once per (split, n, seed).

    Args:
        split: "train", "val" or "test" (each draws from its own random stream).
        n: number of clips (labels cycle 0..9 then are shuffled, so classes are balanced).
        seed: the data seed.

    Attributes:
        waveforms: (n, NUM_SAMPLES) float32; labels: (n,) long; sample_rate: SAMPLE_RATE;
        classnames: the digit names.
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, split: str = "train", n: int = 2000, seed: int = 0):
        from mmcourse.data import zero_shot_metadata as meta

        self.split = _check_split(split)
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        self.classnames = meta.DIGIT_CLASSNAMES
        g = torch.Generator().manual_seed(1000 * seed + 13 * _SPLIT_ID[split] + 7)
        self.labels = (torch.arange(n) % 10)[torch.randperm(n, generator=g)]  # (n,)
        self.waveforms = synthesize_digits(self.labels, g)  # (n, NUM_SAMPLES)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"audio": self.waveforms[i], "label": int(self.labels[i])}

    def __repr__(self) -> str:
        return f"SpokenDigits(split={self.split!r}, n={len(self)}, sample_rate={SAMPLE_RATE})"
