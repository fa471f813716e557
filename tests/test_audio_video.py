"""Lesson 13's library: the synthetic audio and video are what they claim, the log-mel front end
equals a library's, the encoders and pooling behave as documented, bad input is refused."""
import math

import numpy as np
import pytest
import torch

from mmcourse.models.audio import AudioEncoder, LogMelSpectrogram, bind_loss, encode_audio, mel_filterbank
from mmcourse.data import DIGIT_FORMANTS, MOTIONS, SAMPLE_RATE, DigitClips, SpokenDigits, make_clips, synthesize_digits
from mmcourse.data.audio import NUM_SAMPLES
from mmcourse.objectives.losses import clip_loss
from mmcourse.models.video import ClipClassifier, TemporalTransformer, mean_pool_frames


# -- spoken digits -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clips():
    return SpokenDigits("test", n=600)


def _smoothed_power(waveforms):
    power = torch.fft.rfft(waveforms).abs().pow(2).mean(0)
    return torch.nn.functional.avg_pool1d(power[None, None], 51, stride=1, padding=25)[0, 0]


def test_each_digit_has_its_energy_at_its_formants(clips):
    freqs = torch.fft.rfftfreq(NUM_SAMPLES, 1 / SAMPLE_RATE)
    for k, (f1, f2) in enumerate(DIGIT_FORMANTS):
        power = _smoothed_power(clips.waveforms[clips.labels == k])
        for f in (f1, f2):
            band = (freqs > 0.6 * f) & (freqs < 1.4 * f) & ((freqs - f).abs() < 0.5 * abs(f2 - f1))
            peak = float(freqs[band][power[band].argmax()])
            assert abs(peak - f) / f < 0.15, (k, f, peak)
        # and the energy near its own F1 beats the energy there of a digit whose F1 is far away
        other = max(range(10), key=lambda j: abs(DIGIT_FORMANTS[j][0] - f1))
        near = (freqs - f1).abs() < 60
        assert power[near].mean() > 3 * _smoothed_power(clips.waveforms[clips.labels == other])[near].mean()


def test_pitch_varies_within_the_speech_range(clips):
    # the autocorrelation peak of the voiced part gives the pitch period: between 90 and 240 Hz (glide included)
    pitches = []
    for w in clips.waveforms[:40]:
        core = w[torch.argmax(w.abs()) - 400: torch.argmax(w.abs()) + 400]
        if len(core) < 800:
            continue
        ac = np.correlate(core.numpy(), core.numpy(), "full")[len(core) - 1:]
        lo, hi = SAMPLE_RATE // 260, SAMPLE_RATE // 80
        pitches.append(SAMPLE_RATE / (lo + int(np.argmax(ac[lo:hi]))))
    assert len(pitches) > 20 and 80 < min(pitches) and max(pitches) < 260 and np.std(pitches) > 15


def test_classes_balanced_deterministic_and_splits_differ():
    a, b = SpokenDigits("train", n=100), SpokenDigits("train", n=100)
    torch.testing.assert_close(a.waveforms, b.waveforms)
    assert torch.bincount(a.labels, minlength=10).tolist() == [10] * 10
    assert not torch.allclose(SpokenDigits("val", n=100).waveforms, a.waveforms)
    assert a.waveforms.shape == (100, NUM_SAMPLES) and a.waveforms.dtype == torch.float32
    assert torch.isfinite(a.waveforms).all()


@pytest.mark.parametrize("labels, error", [
    (torch.tensor([0.0, 1.0]), TypeError), (torch.tensor([3, 10]), ValueError), (torch.tensor([[1, 2]]), ValueError),
    ([1, 2], TypeError),
])
def test_bad_labels_are_refused(labels, error):
    with pytest.raises(error):
        synthesize_digits(labels)


def test_bad_dataset_arguments_are_refused():
    with pytest.raises(ValueError, match="split"):
        SpokenDigits("dev")
    with pytest.raises(ValueError, match="positive"):
        SpokenDigits("train", n=0)
    with pytest.raises(ValueError, match="snr_db"):
        synthesize_digits(torch.tensor([1]), snr_db=(20, 5))


# -- the log-mel front end ---------------------------------------------------------------------------

def test_filterbank_equals_the_library_and_log_mel_equals_transformers_spectrogram():
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function
    fb = mel_filterbank(129, 32, 0.0, 4000.0, 8000)
    torch.testing.assert_close(fb, torch.from_numpy(mel_filter_bank(129, 32, 0.0, 4000.0, 8000, mel_scale="htk")).float())
    x = SpokenDigits("val", n=2).waveforms
    ours = LogMelSpectrogram()(x)
    for i in range(2):
        theirs = spectrogram(x[i].double().numpy(), window_function(256, "hann", periodic=True), frame_length=256,
                             hop_length=128, power=2.0, center=True, pad_mode="reflect", mel_filters=fb.double().numpy(),
                             mel_floor=1e-30)
        torch.testing.assert_close(ours[i], torch.log(torch.from_numpy(theirs).float() + 1e-6), rtol=1e-4, atol=1e-4)


def test_a_pure_tone_lands_in_the_mel_band_around_its_frequency():
    t = torch.arange(4000) / 8000
    fb = mel_filterbank(129, 32, 0.0, 4000.0, 8000)
    for f in (300.0, 1000.0, 2500.0):
        band = int(LogMelSpectrogram()(torch.sin(2 * math.pi * f * t)[None])[0].mean(1).argmax())
        bin_hz = torch.linspace(0, 4000, 129)
        centre = float(bin_hz[fb[:, band].argmax()])
        assert abs(centre - f) / f < 0.15, (f, centre)


@pytest.mark.parametrize("bad, error", [(torch.zeros(4000, dtype=torch.long)[None], TypeError),
                                        (torch.zeros(4000), ValueError), (torch.zeros(1, 100), ValueError)])
def test_front_end_refuses_bad_waveforms(bad, error):
    with pytest.raises(error):
        LogMelSpectrogram()(bad)


def test_filterbank_refuses_bad_ranges():
    with pytest.raises(ValueError, match="f_max"):
        mel_filterbank(129, 32, 0.0, 5000.0, 8000)


# -- the audio encoder and its loss --------------------------------------------------------------------

def test_encoder_shapes_and_normalised_output():
    enc = AudioEncoder().eval()
    x = torch.randn(3, 4000)
    assert enc(x).shape == (3, 64)
    torch.testing.assert_close(encode_audio(enc, x).norm(dim=-1), torch.ones(3))


def test_bind_loss_is_the_clip_loss_at_a_fixed_temperature_and_leaves_the_target_alone():
    a, t = torch.randn(6, 8, requires_grad=True), torch.randn(6, 8, requires_grad=True)
    expected = clip_loss(torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(t, dim=-1), 1 / 0.07)
    loss = bind_loss(a, t)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert a.grad is not None and t.grad is None
    with pytest.raises(ValueError, match="temperature"):
        bind_loss(a, t, temperature=0.0)
    with pytest.raises(ValueError, match="B, D"):
        bind_loss(a, t[:5])


# -- digit clips and pooling ---------------------------------------------------------------------------

def test_clips_come_in_exact_time_reversed_pairs_and_move_the_right_way():
    images = torch.rand(2, 1, 8, 8)
    right = make_clips(images, torch.tensor([1, 1]))
    torch.testing.assert_close(make_clips(images, torch.tensor([0, 0])), right.flip(1))
    appear = make_clips(images, torch.tensor([2, 2]))
    torch.testing.assert_close(make_clips(images, torch.tensor([3, 3])), appear.flip(1))
    cols = torch.arange(8.0)
    centre = (right.sum(-2) * cols).sum(-1) / right.sum(-2).sum(-1)  # (B, T, 1) horizontal centre of mass
    assert (centre[:, 1:] > centre[:, :-1]).all(), centre  # "moving right" moves right, every frame
    brightness = appear.sum((2, 3, 4))
    assert (brightness[:, 1:] > brightness[:, :-1]).all() and (brightness[:, 0] == 0).all()


def test_digit_clips_dataset():
    clips = DigitClips("test", n=40)
    assert clips.videos.shape == (40, 8, 1, 8, 8) and torch.bincount(clips.motions).tolist() == [10] * 4
    assert clips.captions[0] == f"a {int(clips.labels[0])} {MOTIONS[int(clips.motions[0])]}."
    with pytest.raises(ValueError, match="motions"):
        make_clips(torch.rand(2, 1, 8, 8), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="frames"):
        make_clips(torch.rand(1, 1, 8, 8), torch.tensor([0]), frames=1)


def test_mean_pooling_is_order_blind_and_the_temporal_model_is_not():
    f = torch.randn(2, 8, 16)
    torch.testing.assert_close(mean_pool_frames(f), mean_pool_frames(f.flip(1)))
    torch.manual_seed(0)
    temporal = TemporalTransformer(16, max_frames=8).eval()
    assert not torch.allclose(temporal(f), temporal(f.flip(1)), atol=1e-4)
    assert ClipClassifier("temporal", 16, 4)(f).shape == (2, 4)
    with pytest.raises(ValueError, match="frames"):
        temporal(torch.randn(1, 9, 16))
    with pytest.raises(ValueError, match="pooling"):
        ClipClassifier("max", 16, 4)
    with pytest.raises(ValueError, match="B, T, E"):
        mean_pool_frames(torch.randn(8, 16))


# -- the cached encoders -------------------------------------------------------------------------------

def test_audio_encoder_recipe_trains_once_then_loads(tmp_path):
    from conftest import link_shared_models
    from mmcourse.recipes import load_digits_clip
    from mmcourse.recipes.audio import audio_train_config, load_audio_encoder
    link_shared_models(tmp_path, load_digits_clip, "digits_clip")  # the CLIP it binds to: lesson 04's, trained once
    cfg = audio_train_config(epochs=1)
    enc, history = load_audio_encoder("image", n_train=256, train_config=cfg, cache_dir=tmp_path)
    again, _ = load_audio_encoder("image", n_train=256, train_config=cfg, cache_dir=tmp_path)
    x = torch.randn(2, 4000)
    torch.testing.assert_close(enc(x), again(x))
    assert len(list(tmp_path.glob("audio_image_*.pt"))) == 1 and len(history.loss) == 2
    with pytest.raises(ValueError, match="target"):
        load_audio_encoder("video", cache_dir=tmp_path)
