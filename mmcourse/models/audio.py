"""Audio in: a log-mel spectrogram front end and a small audio encoder.

A waveform becomes an image-like array the way nearly every audio model reads sound (PANNs,
AST, Whisper, CLAP, ImageBind): a short-time Fourier transform (`torch.stft`, Hann window),
the power of each frequency bin pooled into `n_mels` triangular filters evenly spaced on the
mel scale (more filters at low frequencies, where hearing — and the formants — are finest),
then a logarithm. The filterbank is the library one (`transformers.audio_utils.mel_filter_bank`,
HTK mel scale: mel = 2595 log10(1 + f / 700)); lesson 13 writes it once inline and checks the two agree.

    front = LogMelSpectrogram()                    # 8 kHz, 32 ms windows, 16 ms hop, 32 mels
    enc = AudioEncoder(AudioEncoderConfig())       # waveform (B, 4000) -> embedding (B, 64)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn

from mmcourse.norms import l2_normalize


def mel_filterbank(n_freqs: int, n_mels: int, f_min: float, f_max: float, sample_rate: int) -> torch.Tensor:
    """Triangular mel filters, HTK mel scale, unnormalised: (n_freqs, n_mels) float32.

    The library's (`transformers.audio_utils.mel_filter_bank(..., norm=None, mel_scale="htk")`);
    `power_spectrum (.., n_freqs, T)` -> `fb.T @ power_spectrum` gives (.., n_mels, T).

    Raises:
        ValueError: non-positive sizes, or not 0 <= f_min < f_max <= sample_rate / 2.
    """
    if n_freqs < 2 or n_mels < 1:
        raise ValueError(f"need n_freqs >= 2 and n_mels >= 1, got {n_freqs} and {n_mels}")
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2 = {sample_rate / 2}, got {f_min}, {f_max}")
    from transformers.audio_utils import mel_filter_bank

    fb = mel_filter_bank(n_freqs, n_mels, f_min, f_max, sample_rate, norm=None, mel_scale="htk")
    return torch.from_numpy(fb).float()


class LogMelSpectrogram(nn.Module):
    """waveform (B, N) float -> log-mel spectrogram (B, n_mels, T), T = N // hop_length + 1.

    `torch.stft(center=True, window=hann)` power, the mel filterbank, then log(x + eps).

    Raises:
        TypeError: a non-float waveform. ValueError: a waveform not (B, N) or shorter than n_fft // 2 + 1.
    """

    def __init__(self, sample_rate: int = 8000, n_fft: int = 256, hop_length: int = 128, n_mels: int = 32,
                 f_min: float = 0.0, f_max: float | None = None, eps: float = 1e-6):
        super().__init__()
        self.sample_rate, self.n_fft, self.hop_length, self.eps = sample_rate, n_fft, hop_length, eps
        f_max = sample_rate / 2 if f_max is None else f_max
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("mel_fb", mel_filterbank(n_fft // 2 + 1, n_mels, f_min, f_max, sample_rate),
                             persistent=False)  # (F, M)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if not isinstance(waveform, torch.Tensor) or not waveform.is_floating_point():
            raise TypeError(f"waveform must be a float tensor, got "
                            f"{waveform.dtype if isinstance(waveform, torch.Tensor) else type(waveform).__name__}")
        if waveform.dim() != 2:
            raise ValueError(f"waveform must have shape (B, N) samples, got {tuple(waveform.shape)}")
        if waveform.shape[1] <= self.n_fft // 2:
            raise ValueError(f"a waveform needs more than n_fft // 2 = {self.n_fft // 2} samples, got {waveform.shape[1]}")
        spec = torch.stft(waveform.float(), self.n_fft, self.hop_length, window=self.window, return_complex=True)
        power = spec.abs() ** 2  # (B, F, T)
        return torch.log(self.mel_fb.T @ power + self.eps)  # (B, M, T)


@dataclass
class AudioEncoderConfig:
    """The course's audio encoder: log-mel front end, 1-D convolutions over time, mean over time.

    Attributes:
        sample_rate, n_fft, hop_length, n_mels: the front end's (see `LogMelSpectrogram`).
        width: channels of the two convolutions; embed_dim: D of the output embedding.
    """

    sample_rate: int = 8000
    n_fft: int = 256
    hop_length: int = 128
    n_mels: int = 32
    width: int = 64
    embed_dim: int = 64

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AudioEncoder(nn.Module):
    """waveform (B, N) -> embedding (B, embed_dim).

    Log-mel spectrogram, a BatchNorm over the mel bins (PANNs' `bn0`: the log energies get a
    learned, data-set-wide scale), two 1-D convolutions over time (mels as channels), a mean over
    time and a linear projection into the shared embedding space (as a CLIP tower's projection).
    """

    def __init__(self, config: AudioEncoderConfig | None = None):
        super().__init__()
        self.config = c = config or AudioEncoderConfig()
        self.frontend = LogMelSpectrogram(c.sample_rate, c.n_fft, c.hop_length, c.n_mels)
        self.bn0 = nn.BatchNorm1d(c.n_mels)
        self.convs = nn.Sequential(nn.Conv1d(c.n_mels, c.width, 3, padding=1), nn.GELU(),
                                   nn.Conv1d(c.width, c.width, 3, padding=1, stride=2), nn.GELU())
        self.proj = nn.Linear(c.width, c.embed_dim)

    def forward(self, waveform: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.bn0(self.frontend(waveform))  # (B, M, T)
        x = self.convs(x).mean(dim=-1)  # (B, width): average over time
        x = self.proj(x)  # (B, D)
        return l2_normalize(x) if normalize else x


@torch.no_grad()
def encode_audio(encoder: nn.Module, waveforms: torch.Tensor, batch_size: int = 1024,
                 normalize: bool = True) -> torch.Tensor:
    """Embeddings of many waveforms (N, S) -> (N, D) on the CPU, in eval mode, in batches."""
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    out = torch.cat([encoder(w.to(device), normalize=normalize).cpu() for w in waveforms.split(batch_size)])
    encoder.train(was_training)
    return out


def bind_loss(audio_emb: torch.Tensor, target_emb: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """ImageBind's objective: the CLIP loss between audio embeddings and the FROZEN embeddings of
    the paired modality (nothing flows into the target), here at a fixed temperature.

    Args:
        audio_emb: (B, D) raw audio embeddings (normalised here).
        target_emb: (B, D) embeddings of the paired images (or captions), raw or normalised.
        temperature: τ > 0; the logits are cosine similarities / τ.

    Returns:
        `losses.clip_loss(audio, target, 1 / τ)`, a scalar.

    Raises:
        ValueError: shapes that disagree or a non-positive temperature.
    """
    from mmcourse.objectives.losses import clip_loss

    if audio_emb.shape != target_emb.shape or audio_emb.dim() != 2:
        raise ValueError(f"audio_emb and target_emb must both be (B, D), got {tuple(audio_emb.shape)} and "
                         f"{tuple(target_emb.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return clip_loss(l2_normalize(audio_emb), l2_normalize(target_emb.detach()), 1.0 / temperature)
