"""Avatar audio: any rate / channel count -> 16 kHz mono float32; empty, silent, too long and malformed
inputs refused with messages that say what to do; trimming to the video's length."""

import numpy as np
import pytest
import torch

from reelsmith.engine.errors import InvalidInputError
from reelsmith.engine.pipelines.avatar_audio import (SAMPLE_RATE, SILENCE_DBFS, audio_duration,
                                                     prepare_avatar_audio, resample, rms_dbfs,
                                                     trim_audio_to_video, video_frame_count)


def _tone(rate, seconds, freq=440.0, amplitude=0.5, channels=1):
    t = np.arange(int(rate * seconds)) / rate
    mono = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return torch.from_numpy(np.stack([mono] * channels))


def _audio(waveform, rate):
    return {"waveform": waveform.unsqueeze(0), "sample_rate": rate}


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resamples_any_rate_to_16k_keeping_length_and_phase(rate):
    seconds = 2.0
    out = prepare_avatar_audio(_audio(_tone(rate, seconds), rate))
    assert out.dtype == np.float32 and out.ndim == 1
    assert out.size == int(round(int(rate * seconds) * SAMPLE_RATE / rate))
    expected = 0.5 * np.sin(2 * np.pi * 440.0 * np.arange(out.size) / SAMPLE_RATE)
    # away from the filter's edges the resampled tone lies on the ideal one (no delay, no gain change)
    assert np.abs(out[200:-200] - expected[200:-200]).max() < 5e-3


def test_16k_input_passes_through_unchanged():
    wave = _tone(SAMPLE_RATE, 1.0)
    out = prepare_avatar_audio(_audio(wave, SAMPLE_RATE))
    np.testing.assert_array_equal(out, wave[0].numpy())


def test_channels_are_averaged_to_mono():
    left = _tone(SAMPLE_RATE, 1.0, amplitude=0.6)[0]
    right = _tone(SAMPLE_RATE, 1.0, freq=300.0, amplitude=0.2)[0]
    out = prepare_avatar_audio(_audio(torch.stack([left, right]), SAMPLE_RATE))
    np.testing.assert_allclose(out, ((left + right) / 2).numpy(), atol=1e-7)


def test_first_clip_of_a_batch_is_used():
    first, second = _tone(SAMPLE_RATE, 1.0, amplitude=0.5), _tone(SAMPLE_RATE, 1.0, amplitude=0.1)
    out = prepare_avatar_audio({"waveform": torch.stack([first, second]), "sample_rate": SAMPLE_RATE})
    np.testing.assert_array_equal(out, first[0].numpy())


def test_resample_of_long_audio_crosses_chunks_seamlessly():
    rate = 44100
    wave = _tone(rate, 30.0, freq=200.0)[0].numpy()  # 1.3 M samples: more than one PyAV frame
    out = resample(wave, rate)
    expected = 0.5 * np.sin(2 * np.pi * 200.0 * np.arange(out.size) / SAMPLE_RATE)
    assert out.size == 30 * SAMPLE_RATE
    assert np.abs(out[200:-200] - expected[200:-200]).max() < 5e-3


def test_empty_audio_is_refused():
    with pytest.raises(InvalidInputError, match="empty"):
        prepare_avatar_audio({"waveform": torch.zeros(1, 1, 0), "sample_rate": 44100})
    with pytest.raises(InvalidInputError, match="empty"):
        prepare_avatar_audio({"waveform": torch.zeros(0, 2, 100), "sample_rate": 44100})


def test_silent_audio_is_refused_with_the_threshold():
    with pytest.raises(InvalidInputError, match="silent.*digital silence"):
        prepare_avatar_audio(_audio(torch.zeros(1, 16000), SAMPLE_RATE))
    quiet = _tone(SAMPLE_RATE, 1.0, amplitude=10 ** ((SILENCE_DBFS - 5) / 20) * np.sqrt(2))
    with pytest.raises(InvalidInputError, match=r"-65\.0 dBFS.*-60 dBFS"):
        prepare_avatar_audio(_audio(quiet, SAMPLE_RATE))
    just_loud_enough = _tone(SAMPLE_RATE, 1.0, amplitude=10 ** ((SILENCE_DBFS + 1) / 20) * np.sqrt(2))
    assert prepare_avatar_audio(_audio(just_loud_enough, SAMPLE_RATE)).size == SAMPLE_RATE


def test_too_long_audio_is_refused_with_the_limit_and_advice():
    wave = _tone(8000, 12.0)
    with pytest.raises(InvalidInputError, match=r"12\.0 s long; the limit is 10 s.*Trim the clip"):
        prepare_avatar_audio(_audio(wave, 8000), max_seconds=10)
    assert prepare_avatar_audio(_audio(wave, 8000), max_seconds=12).size == 12 * SAMPLE_RATE


@pytest.mark.parametrize("bad, message", [
    ("not audio", "ComfyUI AUDIO"),
    ({"waveform": torch.zeros(1, 1, 1, 10), "sample_rate": 16000}, "batch, channels, samples"),
    ({"waveform": torch.zeros(1, 1, 10), "sample_rate": 0}, "positive"),
    ({"waveform": torch.zeros(1, 1, 10), "sample_rate": "fast"}, "whole number"),
])
def test_malformed_payloads_are_refused(bad, message):
    with pytest.raises(InvalidInputError, match=message):
        prepare_avatar_audio(bad)


def test_non_finite_samples_are_refused():
    wave = _tone(SAMPLE_RATE, 1.0)
    wave[0, 10] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN"):
        prepare_avatar_audio(_audio(wave, SAMPLE_RATE))


def test_rms_dbfs():
    assert rms_dbfs(np.ones(100, np.float32)) == pytest.approx(0.0)
    assert rms_dbfs(np.full(100, 0.1, np.float32)) == pytest.approx(-20.0)
    assert rms_dbfs(np.zeros(10, np.float32)) == float("-inf")


def test_video_frame_count_matches_the_vendor_at_25_fps_and_halves_at_12_5():
    for samples in (0, 639, 640, 16000, 16001, 123457):
        assert video_frame_count(samples, 25) == samples // 640
        assert video_frame_count(samples, 12.5) == samples // 1280


def test_trim_audio_to_video_cuts_and_pads_at_the_source_rate():
    wave = _tone(44100, 3.0, channels=2)
    audio = _audio(wave, 44100)
    assert audio_duration(audio) == pytest.approx(3.0)
    cut = trim_audio_to_video(audio, frames=50, fps=25)  # 2 s
    assert cut["sample_rate"] == 44100 and cut["waveform"].shape == (1, 2, 88200)
    torch.testing.assert_close(cut["waveform"][0], wave[:, :88200])
    padded = trim_audio_to_video(audio, frames=100, fps=25)  # 4 s > 3 s of audio
    assert padded["waveform"].shape == (1, 2, 176400)
    assert padded["waveform"][0, :, 132300:].abs().max() == 0
    with pytest.raises(InvalidInputError):
        trim_audio_to_video(audio, frames=10, fps=0)
