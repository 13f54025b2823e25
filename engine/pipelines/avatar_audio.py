"""Audio for HunyuanVideo-Avatar: a ComfyUI AUDIO payload in, 16 kHz mono float32 out, validated.

Facts this rests on (vendor repo Tencent-Hunyuan/HunyuanVideo-Avatar, read for facts only):
- The vendor loads audio with `librosa.load(path, sr=16000)`: mono (channels averaged) at 16 kHz, float32
  (`hymm_sp/data_kits/audio_dataset.py`, `get_audio_feature`). Whisper's feature extractor expects 16 kHz.
- The number of video frames the audio drives is `len(samples) // 640` at 25 fps (640 = 16000 / 25), and the
  written video is muxed with the audio by `ffmpeg -shortest` (`hymm_sp/sample_batch.py`): the video never
  outlasts the audio. Here the frame count is `floor(samples * fps / 16000)` for either fps (the vendor uses
  the 25 fps count at 12.5 fps too, which asks for twice the frames the audio covers).

What is ours (choices, not the vendor's):
- Resampling uses PyAV's AudioResampler (libswresample), which keeps the length exact and the phase aligned;
  librosa's soxr resampler differs from it by far less than whisper's log-mel resolution.
- A batch of clips uses its first clip; channels are averaged to mono, as librosa does.
- Silence: a clip whose RMS level (after the mono mix) is below -60 dBFS is refused (SILENCE_DBFS); such a clip
  drives no lip motion, and a level that low is almost always a wrong input (muted track, wrong channel).
- Length: `max_seconds` (default DEFAULT_MAX_SECONDS = 60 s) bounds the run time: every 129 video frames
  (5.16 s at 25 fps) of audio adds a 129-frame window to each of the 50 denoising steps.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import InvalidInputError

SAMPLE_RATE = 16000          # whisper-tiny's input rate; the vendor resamples everything to it
SILENCE_DBFS = -60.0         # RMS level below which a clip counts as silent
DEFAULT_MAX_SECONDS = 60.0   # default length limit (a parameter of prepare_avatar_audio)
_RESAMPLE_CHUNK = 1 << 20    # samples per PyAV frame (keeps frames a reasonable size)


def _waveform_of(audio) -> tuple[torch.Tensor, int]:
    """The [channels, samples] waveform of the first clip and its sample rate, checked."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise InvalidInputError(
            "Audio input must be a ComfyUI AUDIO value ({'waveform': [batch, channels, samples], 'sample_rate': int}); "
            "connect a Load Audio node.")
    waveform = audio["waveform"]
    if not isinstance(waveform, torch.Tensor):
        waveform = torch.as_tensor(np.asarray(waveform))
    if waveform.ndim == 3:
        if waveform.shape[0] == 0:
            raise InvalidInputError("The audio is empty (a batch of 0 clips). Connect an audio clip with sound in it.")
        waveform = waveform[0]
    elif waveform.ndim == 1:
        waveform = waveform.unsqueeze(0)
    elif waveform.ndim != 2:
        raise InvalidInputError(f"Audio waveform must be [batch, channels, samples]; got shape "
                                f"{tuple(waveform.shape)}.")
    try:
        sample_rate = int(audio["sample_rate"])
    except (TypeError, ValueError):
        raise InvalidInputError(f"Audio sample_rate must be a whole number of Hz; got {audio['sample_rate']!r}.")
    if sample_rate <= 0:
        raise InvalidInputError(f"Audio sample_rate must be positive; got {sample_rate}.")
    return waveform, sample_rate


def audio_duration(audio) -> float:
    """Seconds of audio in a ComfyUI AUDIO payload (its first clip)."""
    waveform, sample_rate = _waveform_of(audio)
    return waveform.shape[-1] / sample_rate


def rms_dbfs(samples: np.ndarray) -> float:
    """RMS level in dB relative to full scale (1.0); -inf for digital silence."""
    if samples.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20.0 * math.log10(rms) if rms > 0 else float("-inf")


def resample(samples: np.ndarray, from_rate: int, to_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 samples from one rate to another with PyAV (libswresample)."""
    samples = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
    if from_rate == to_rate:
        return samples
    import av  # PyAV carries FFmpeg's resampler; imported here so the module loads without it

    resampler = av.AudioResampler(format="flt", layout="mono", rate=to_rate)
    pieces = []
    for start in range(0, samples.size, _RESAMPLE_CHUNK):
        frame = av.AudioFrame.from_ndarray(samples[None, start:start + _RESAMPLE_CHUNK], format="flt", layout="mono")
        frame.sample_rate = from_rate
        frame.pts = None
        pieces += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    pieces += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]  # flush the filter's tail
    out = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    expected = int(round(samples.size * to_rate / from_rate))
    if out.size < expected:  # the resampler may keep back a sample or two; the caller counts on the exact length
        out = np.pad(out, (0, expected - out.size))
    return out[:expected].astype(np.float32, copy=False)


def prepare_avatar_audio(audio, max_seconds: float = DEFAULT_MAX_SECONDS) -> np.ndarray:
    """A ComfyUI AUDIO payload -> 16 kHz mono float32 samples, refusing empty, silent and too long clips."""
    waveform, sample_rate = _waveform_of(audio)
    channels, count = waveform.shape
    if channels == 0 or count == 0:
        raise InvalidInputError("The audio is empty (0 samples). Connect an audio clip with speech in it.")
    seconds = count / sample_rate
    if max_seconds is not None and seconds > max_seconds:
        raise InvalidInputError(
            f"The audio is {seconds:.1f} s long; the limit is {max_seconds:g} s (max audio seconds). Trim the clip "
            f"to the part that should be spoken, or raise the limit: every 5.16 s of audio (129 frames at 25 fps) "
            f"adds one 129-frame window to each denoising step, so run time grows with the length.")
    mono = waveform.detach().to(torch.float32).mean(dim=0).cpu().numpy()
    if not np.isfinite(mono).all():
        raise InvalidInputError("The audio contains NaN or infinite samples; re-export or re-load the clip.")
    level = rms_dbfs(mono)
    if level < SILENCE_DBFS:
        shown = "digital silence" if level == float("-inf") else f"{level:.1f} dBFS"
        raise InvalidInputError(
            f"The audio is silent ({shown}, below the {SILENCE_DBFS:g} dBFS threshold): there is no speech to "
            "drive the lips. Check the clip, its volume and the channel that carries the voice.")
    return resample(mono, sample_rate, SAMPLE_RATE)


def video_frame_count(num_samples: int, fps: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Whole video frames that `num_samples` of audio cover at `fps` (the vendor's `len // 640` at 25 fps)."""
    return int(math.floor(num_samples * fps / sample_rate + 1e-9))


def trim_audio_to_video(audio, frames: int, fps: float) -> dict:
    """The AUDIO payload cut to the video's length (frames / fps), at its own rate and channel count, for
    muxing; a shorter clip is padded with silence so both streams end together."""
    waveform, sample_rate = _waveform_of(audio)
    if frames < 0 or fps <= 0:
        raise InvalidInputError(f"Cannot trim audio to {frames} frames at {fps} fps.")
    target = int(round(frames / fps * sample_rate))
    waveform = waveform[:, :target]
    if waveform.shape[-1] < target:
        waveform = torch.nn.functional.pad(waveform, (0, target - waveform.shape[-1]))
    return {"waveform": waveform.unsqueeze(0).contiguous(), "sample_rate": sample_rate}
