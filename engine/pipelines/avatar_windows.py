"""The long-audio loop of HunyuanVideo-Avatar: 129-frame windows over a circular latent clip, shifted every
step, predictions averaged where windows overlap.

Facts (vendor `hymm_sp/sample_inference_audio.py` `predict` and `hymm_sp/diffusion/pipelines/
pipeline_hunyuan_video_audio.py` denoising loop; read for facts only). With F = video frames the audio drives:
- The per-frame audio features are padded with zero frames to A = 129 frames when F <= 129, else to A = F + 5.
- One window is 129 video frames = 33 latent frames (the VAE packs time 4:1 after the first frame) and reads
  4 * 33 - 3 = 129 audio frames.
- Short clip (F <= 129; the vendor's test is "latent length == 33"), and the `--infer-min` mode that keeps only
  the first 129 frames: one window over latent frames 0..32 with audio frames 0..128, never shifted.
- Otherwise the clip is denoised as a circle of L = (A // 128 + 1) * 32 + 1 latent frames (the noise has L
  frames) with audio zero-padded to 4 * L frames. At step i the windows start at 33 * j - shift_i for
  j = 0 .. ceil(L / 33) - 1, where shift_0 = 0 and shift_{i+1} = (shift_i + 10) mod 33; latent frame indices
  are taken mod L (the last window wraps to the clip's start) and audio frames are 4 * start .. 4 * start + 128
  mod 4 * L. Every window is denoised from the same latents of step i; each latent frame's new value is the
  mean over the windows that cover it (33 * ceil(L / 33) - L frames are covered twice).
- After the last step the first A // 4 + 1 latent frames are kept (4 * (A // 4) + 1 >= F video frames); the
  written video is then cut to F frames.
Each window's Euler step is linear in the prediction, so the mean of the stepped windows equals one step with
the mean prediction; here the predictions are averaged in float32 (the vendor rounds each stepped window to
bfloat16 before it sums them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import InvalidInputError

WINDOW_VIDEO_FRAMES = 129
WINDOW_LATENT_FRAMES = 33      # (129 - 1) / 4 + 1
TEMPORAL_COMPRESSION = 4
SHIFT_PER_STEP = 10            # latent frames the windows move back by every step
LONG_CLIP_AUDIO_PADDING = 5    # zero audio frames the vendor appends to a clip longer than one window

WindowPredict = Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor]


@dataclass(frozen=True)
class AvatarWindowPlan:
    video_frames: int            # F: frames the audio drives (the written video's length)
    latent_frames: int           # L: latent frames denoised (the circle the windows run on)
    audio_frames: int            # 4 * L: audio feature frames the windows index
    output_latent_frames: int    # latent frames kept after the last step
    shifting: bool               # windows move by SHIFT_PER_STEP each step (long clips only)

    @property
    def windows_per_step(self) -> int:
        return math.ceil(self.latent_frames / WINDOW_LATENT_FRAMES)

    @property
    def output_video_frames(self) -> int:
        """Frames the kept latents decode to (>= video_frames; the video is cut to video_frames)."""
        return (self.output_latent_frames - 1) * TEMPORAL_COMPRESSION + 1


def plan_avatar_windows(video_frames: int, first_window_only: bool = False) -> AvatarWindowPlan:
    """The window layout for `video_frames` frames of audio; `first_window_only` renders the first 129 frames."""
    if video_frames < 1:
        raise InvalidInputError(f"The audio drives {video_frames} video frames; at least one is needed.")
    if first_window_only or video_frames <= WINDOW_VIDEO_FRAMES:
        return AvatarWindowPlan(video_frames=min(video_frames, WINDOW_VIDEO_FRAMES),
                                latent_frames=WINDOW_LATENT_FRAMES, audio_frames=4 * WINDOW_LATENT_FRAMES,
                                output_latent_frames=WINDOW_LATENT_FRAMES, shifting=False)
    padded = video_frames + LONG_CLIP_AUDIO_PADDING
    latent_frames = (padded // 128 + 1) * 32 + 1
    return AvatarWindowPlan(video_frames=video_frames, latent_frames=latent_frames, audio_frames=4 * latent_frames,
                            output_latent_frames=padded // TEMPORAL_COMPRESSION + 1, shifting=True)


def window_shift(plan: AvatarWindowPlan, step: int) -> int:
    """How far the windows are moved back at step `step` (0-based): (10 * step) mod 33 for long clips."""
    return (SHIFT_PER_STEP * step) % WINDOW_LATENT_FRAMES if plan.shifting else 0


def window_starts(plan: AvatarWindowPlan, step: int) -> list[int]:
    """Start (latent frame, before wrapping) of every window at step `step`."""
    shift = window_shift(plan, step)
    return [j * WINDOW_LATENT_FRAMES - shift for j in range(plan.windows_per_step)]


def window_latent_indices(plan: AvatarWindowPlan, start: int) -> list[int]:
    """The 33 latent frames a window starting at `start` covers, wrapped around the clip's end."""
    return [(start + k) % plan.latent_frames for k in range(WINDOW_LATENT_FRAMES)]


def window_audio_indices(plan: AvatarWindowPlan, start: int) -> list[int]:
    """The 129 audio frames a window starting at latent frame `start` reads, wrapped like the latents."""
    first = start * TEMPORAL_COMPRESSION
    return [(first + k) % plan.audio_frames for k in range(WINDOW_VIDEO_FRAMES)]


def pad_audio_features(features: torch.Tensor, plan: AvatarWindowPlan) -> torch.Tensor:
    """[B, F, ...] per-frame audio features -> [B, 4 * L, ...]: zero frames after the audio, or cut to the plan."""
    frames = features.shape[1]
    if frames >= plan.audio_frames:
        return features[:, :plan.audio_frames]
    padding = features.new_zeros(features.shape[0], plan.audio_frames - frames, *features.shape[2:])
    return torch.cat([features, padding], dim=1)


def windowed_prediction(latents: torch.Tensor, audio: torch.Tensor, plan: AvatarWindowPlan, step: int,
                        predict: WindowPredict) -> torch.Tensor:
    """One step's prediction over the whole clip: `predict(latent_window [B, C, 33, h, w], audio_window
    [B, 129, ...], window, windows)` for every window, averaged where windows overlap (float32)."""
    if latents.shape[2] != plan.latent_frames:
        raise InvalidInputError(f"latents have {latents.shape[2]} frames; the window plan needs {plan.latent_frames}.")
    if audio.shape[1] != plan.audio_frames:
        raise InvalidInputError(f"audio features have {audio.shape[1]} frames; the plan needs {plan.audio_frames} "
                                "(pad them with pad_audio_features).")
    total = torch.zeros(latents.shape, dtype=torch.float32, device=latents.device)
    count = torch.zeros(plan.latent_frames, dtype=torch.float32, device=latents.device)
    starts = window_starts(plan, step)
    for window, start in enumerate(starts):
        frames = torch.tensor(window_latent_indices(plan, start), device=latents.device)
        audio_frames = torch.tensor(window_audio_indices(plan, start), device=audio.device)
        prediction = predict(latents[:, :, frames], audio[:, audio_frames], window, len(starts))
        if prediction.shape != latents[:, :, frames].shape:
            raise InvalidInputError(f"the denoiser returned shape {tuple(prediction.shape)} for a window of shape "
                                    f"{tuple(latents[:, :, frames].shape)}.")
        total.index_add_(2, frames, prediction.float())
        count.index_add_(0, frames, torch.ones(len(frames), device=latents.device))
    return total / count.view(1, 1, -1, 1, 1)
