"""Avatar audio features: whisper windows per video frame at 25 and 12.5 fps (indices, edge padding), all
five hidden states of a tiny random whisper encoder, audio longer than one 30 s whisper piece, and the
19200-wide per-frame layout audio_proj reads."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

from reelsmith.engine.errors import InvalidInputError
from reelsmith.engine.pipelines.avatar_audio_features import (avatar_audio_features, gather_windows,
                                                              log_mel_chunks, whisper_hidden_states,
                                                              whisper_stride, window_indices)

TINY_WHISPER = dict(d_model=8, encoder_layers=4, encoder_attention_heads=2, encoder_ffn_dim=16, decoder_layers=1,
                    decoder_attention_heads=2, decoder_ffn_dim=16, num_mel_bins=80, max_source_positions=1500,
                    vocab_size=16, max_target_positions=8, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                    decoder_start_token_id=3)


@pytest.fixture(scope="module")
def whisper():
    torch.manual_seed(0)
    model = WhisperModel(WhisperConfig(**TINY_WHISPER)).eval()
    return model, WhisperFeatureExtractor()


def _speech(seconds, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)


def _vendor_windows(hidden, frames, step):
    """The vendor's indexing, restated: four zero frames in front, window f = padded[2*f*step : 2*f*step + 10]."""
    padded = torch.cat([torch.zeros_like(hidden[:4]), hidden])
    return torch.stack([padded[2 * f * step: 2 * f * step + 10] for f in range(frames)])


def test_stride_is_two_whisper_frames_at_25_fps_and_four_at_12_5():
    assert whisper_stride(25) == 2 and whisper_stride(12.5) == 4
    with pytest.raises(InvalidInputError, match="25 or 12.5 fps"):
        whisper_stride(24)


def test_window_indices_at_25_fps():
    idx = window_indices(4, 25)
    assert idx.shape == (4, 10)
    assert idx[0].tolist() == list(range(-4, 6))   # frame 0: four frames of context before the start
    assert idx[1].tolist() == list(range(-2, 8))   # one video frame = 2 whisper frames later
    assert idx[3].tolist() == list(range(2, 12))


def test_window_indices_at_12_5_fps():
    idx = window_indices(3, 12.5)
    assert idx[0].tolist() == list(range(-4, 6))
    assert idx[1].tolist() == list(range(0, 10))   # one video frame = 4 whisper frames later
    assert idx[2].tolist() == list(range(4, 14))


@pytest.mark.parametrize("fps, step", [(25, 1), (12.5, 2)])
def test_windows_equal_the_vendor_indexing_with_zero_padding_in_front(fps, step):
    hidden = torch.randn(200, 5, 3)
    frames = 40
    ours = gather_windows(hidden, frames, fps)
    assert ours.shape == (frames, 10, 5, 3)
    torch.testing.assert_close(ours, _vendor_windows(hidden, frames, step), rtol=0, atol=0)
    assert ours[0, :4].abs().max() == 0                              # the front padding is zeros
    torch.testing.assert_close(ours[0, 4:], hidden[:6], rtol=0, atol=0)


def test_windows_past_the_last_encoded_frame_are_zeros():
    hidden = torch.randn(20, 5, 3)
    ours = gather_windows(hidden, 9, 25)                             # frame 8 reads whisper frames 12..21
    torch.testing.assert_close(ours[8, :8], hidden[12:20], rtol=0, atol=0)
    assert ours[8, 8:].abs().max() == 0


def test_features_hold_all_five_hidden_states_of_the_encoder(whisper):
    model, extractor = whisper
    samples = _speech(2.5)
    out = avatar_audio_features(samples, 25, model, extractor)
    assert out.frames == 62 and out.fps == 25.0                      # 2.5 s * 25 fps
    assert out.features.shape == (1, 62, 10, 5, 8)
    mel = torch.from_numpy(extractor(samples, sampling_rate=16000, return_tensors="np").input_features)
    with torch.no_grad():
        states = model.encoder(mel, output_hidden_states=True).hidden_states
    assert len(states) == 5                                          # embedding output + 4 layers
    expected = _vendor_windows(torch.stack(states, dim=2)[0], 62, 1)
    torch.testing.assert_close(out.features[0], expected)
    # each hidden state is its own slot: layer k's output sits at index k
    torch.testing.assert_close(out.features[0, 10, :, 4], states[4][0, 16:26])


def test_12_5_fps_counts_frames_at_its_own_rate(whisper):
    model, extractor = whisper
    out = avatar_audio_features(_speech(2.0), 12.5, model, extractor)
    assert out.frames == 25 and out.features.shape == (1, 25, 10, 5, 8)


def test_audio_longer_than_30_s_is_encoded_in_30_s_pieces(whisper):
    model, extractor = whisper
    samples = _speech(31.0)
    mel = log_mel_chunks(samples, extractor)
    assert mel.shape == (2, 80, 3000)
    hidden = whisper_hidden_states(model, mel)
    assert hidden.shape == (3000, 5, 8)
    second = torch.from_numpy(extractor(samples[480000:], sampling_rate=16000, return_tensors="np").input_features)
    with torch.no_grad():
        states = model.encoder(second, output_hidden_states=True).hidden_states
    torch.testing.assert_close(hidden[1500:], torch.stack(states, dim=2)[0])
    out = avatar_audio_features(samples, 12.5, model, extractor)
    assert out.frames == 387                                         # floor(31 * 12.5)
    # frame 380 reads whisper frames 1516..1525: the second piece's frames 16..25
    torch.testing.assert_close(out.features[0, 380], torch.stack(states, dim=2)[0, 16:26])


class _CountingEncoder(torch.nn.Module):
    """Stands in for whisper-tiny's encoder at full width: five hidden states of 384, counting its calls."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.calls = 0

    def forward(self, mel, output_hidden_states=True):
        self.calls += 1
        base = mel.mean(dim=1, keepdim=True)[:, :, ::2].transpose(1, 2)       # [1, 1500, 1]
        states = tuple(base.expand(-1, -1, 384) * (k + 1) * self.scale for k in range(5))
        return SimpleNamespace(hidden_states=states)


def test_first_window_only_encodes_just_the_pieces_it_reads():
    encoder, extractor = _CountingEncoder(), WhisperFeatureExtractor()
    out = avatar_audio_features(_speech(65.0), 25, encoder, extractor, max_frames=129)
    assert out.frames == 129 and encoder.calls == 1
    # the layout audio_proj flattens: 10 whisper frames x 5 hidden states x 384 = 19200 per video frame
    assert out.features.shape == (1, 129, 10, 5, 384)
    assert out.features[0, 0].numel() == 19200


def test_audio_shorter_than_one_frame_is_refused(whisper):
    model, extractor = whisper
    with pytest.raises(InvalidInputError, match="shorter than one video frame"):
        avatar_audio_features(np.zeros(500, np.float32), 25, model, extractor)
