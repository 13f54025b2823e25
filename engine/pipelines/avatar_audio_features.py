"""Audio features for HunyuanVideo-Avatar: whisper-tiny log-mel -> encoder (all five hidden states) -> one
window of ten whisper frames per video frame, the layout the transformer's `audio_proj` reads.

Facts (vendor repo Tencent-Hunyuan/HunyuanVideo-Avatar, read for facts only; transformers' whisper code):
- Log-mel: the vendor cuts the 16 kHz audio into 30 s pieces (750 * 640 = 480000 samples), runs transformers'
  WhisperFeatureExtractor on each (80 mel bins, hop 160, every piece padded to 30 s = 3000 mel frames) and
  concatenates them along time (`hymm_sp/data_kits/audio_dataset.py`, `get_audio_feature`).
- Encoder: `WhisperModel.encoder(mel, output_hidden_states=True).hidden_states`, all of them: the embedding
  output + one per layer = 5 for whisper-tiny (4 layers), each [1, 1500, 384] for 30 s, i.e. 50 whisper frames
  per second; stacked on a new axis -> [1, 1500, 5, 384] (`hymm_sp/data_kits/audio_preprocessor.py`,
  `encode_audio`). The encoder only accepts exactly 3000 mel frames (2 x max_source_positions).
- Windows: four zero frames are put in front of the stacked states; video frame f takes the ten frames
  starting at padded index `2 * f * s`, with s = 1 at 25 fps and s = 2 at 12.5 fps. In unpadded whisper frames
  that is [w - 4, w + 6) with w = 2 * f * s = f * 50 / fps, the whisper frame at the video frame's time: four
  frames of context before, six from the frame on. Result [1, F, 10, 5, 384] (`encode_audio`), which
  `audio_proj` flattens per frame to 10 * 5 * 384 = 19200 (`AudioProjNet2(seq_len=10, blocks=5, channels=384)`
  in `hymm_sp/modules/models_audio.py`).
- The vendor encodes only the first 3000 mel frames (30 s) and caps a clip at 400 video frames.

Ours: audio longer than 30 s is encoded in 30 s pieces and the pieces' 1500-frame outputs are concatenated
(each piece is encoded on its own, as whisper was trained); window frames before the start or past the last
encoded frame are zeros (the vendor's front padding; at the end it never runs past its one 30 s piece). The
frame count is floor(seconds * fps) at either fps (the vendor uses the 25 fps count at 12.5 fps as well).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InvalidInputError
from .avatar_audio import SAMPLE_RATE, video_frame_count

WHISPER_FRAMES_PER_SECOND = 50   # whisper encoder output rate (mel hop 10 ms, conv stride 2)
WINDOW_WHISPER_FRAMES = 10       # whisper frames per video frame
LEADING_PAD_FRAMES = 4           # zero frames in front: a window starts 4 frames before its video frame
SUPPORTED_FPS = (25.0, 12.5)


@dataclass
class AvatarAudioFeatures:
    features: torch.Tensor  # [1, frames, 10, hidden_states (5), width (384)] float32 on the CPU
    frames: int             # video frames the audio drives at `fps`
    fps: float


def whisper_stride(fps: float) -> int:
    """Whisper frames per video frame: 2 at 25 fps, 4 at 12.5 fps."""
    for supported in SUPPORTED_FPS:
        if abs(float(fps) - supported) < 1e-6:
            return int(round(WHISPER_FRAMES_PER_SECOND / supported))
    raise InvalidInputError(f"HunyuanVideo-Avatar runs at 25 or 12.5 fps (its fps embedding was trained on those); "
                            f"got {fps}.")


def window_indices(frames: int, fps: float) -> np.ndarray:
    """[frames, 10] whisper frame indices each video frame reads (negative = before the audio starts)."""
    stride = whisper_stride(fps)
    starts = np.arange(frames) * stride - LEADING_PAD_FRAMES
    return starts[:, None] + np.arange(WINDOW_WHISPER_FRAMES)[None, :]


def log_mel_chunks(samples: np.ndarray, feature_extractor, max_samples: int | None = None) -> torch.Tensor:
    """[pieces, mel_bins, 3000] log-mel of consecutive 30 s pieces of 16 kHz audio (the last one padded)."""
    piece = int(feature_extractor.n_samples)
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    if max_samples is not None:
        samples = samples[:max_samples]
    if samples.size == 0:
        raise InvalidInputError("No audio samples to encode; connect an audio clip with speech in it.")
    mels = [feature_extractor(samples[start:start + piece], sampling_rate=SAMPLE_RATE,
                              return_tensors="np").input_features[0]
            for start in range(0, samples.size, piece)]
    return torch.from_numpy(np.stack(mels))


@torch.no_grad()
def whisper_hidden_states(encoder, mel_chunks: torch.Tensor) -> torch.Tensor:
    """[pieces * 1500, hidden_states, width]: every hidden state of the encoder, pieces concatenated in time."""
    encoder = getattr(encoder, "encoder", encoder)  # a WhisperModel or its encoder
    parameter = next(encoder.parameters())
    outputs = []
    for mel in mel_chunks:  # one piece at a time: memory stays that of a single 30 s piece
        mel = mel.unsqueeze(0).to(parameter.device, parameter.dtype)
        states = encoder(mel, output_hidden_states=True).hidden_states
        outputs.append(torch.stack(states, dim=2)[0].float().cpu())  # [1500, hidden_states, width]
    return torch.cat(outputs, dim=0)


def gather_windows(hidden: torch.Tensor, frames: int, fps: float) -> torch.Tensor:
    """[T, S, D] whisper states -> [frames, 10, S, D], zeros where a window reaches outside [0, T)."""
    indices = torch.from_numpy(window_indices(frames, fps))
    inside = (indices >= 0) & (indices < hidden.shape[0])
    picked = hidden[indices.clamp(0, max(hidden.shape[0] - 1, 0))]
    return picked * inside[:, :, None, None].to(picked.dtype)


def avatar_audio_features(samples: np.ndarray, fps: float, encoder, feature_extractor,
                          max_frames: int | None = None) -> AvatarAudioFeatures:
    """16 kHz mono samples -> per-video-frame whisper windows [1, frames, 10, 5, 384] at `fps`.

    `max_frames` keeps only the first frames (e.g. 129 for one window); only the 30 s pieces those frames
    read are encoded."""
    stride = whisper_stride(fps)
    frames = video_frame_count(len(samples), fps)
    if max_frames is not None:
        frames = min(frames, int(max_frames))
    if frames < 1:
        raise InvalidInputError(f"The audio is {len(samples) / SAMPLE_RATE * 1000:.0f} ms long, shorter than one video "
                                f"frame at {fps:g} fps; connect a longer clip.")
    last_needed = (frames - 1) * stride - LEADING_PAD_FRAMES + WINDOW_WHISPER_FRAMES  # exclusive whisper index
    piece_frames = int(feature_extractor.n_samples) // int(feature_extractor.hop_length) // 2  # 1500
    pieces = math.ceil(last_needed / piece_frames)
    mel = log_mel_chunks(samples, feature_extractor, max_samples=pieces * int(feature_extractor.n_samples))
    hidden = whisper_hidden_states(encoder, mel)
    return AvatarAudioFeatures(features=gather_windows(hidden, frames, fps).unsqueeze(0), frames=frames, fps=float(fps))
