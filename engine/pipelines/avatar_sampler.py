"""The HunyuanVideo-Avatar denoising loop: seeded noise, the vendor's guidance schedule (avatar_schedule) and its
long-audio windows (avatar_windows), over any `denoise(latents, timestep, inputs) -> velocity` callable.

Inputs each transformer call gets (vendor `hymm_sp/sample_inference_audio.py`, `hymm_sp/data_kits/
audio_dataset.py`, `pipeline_hunyuan_video_audio.py`, `hymm_sp/modules/models_audio.py`; read for facts only):
- latents [B, 16, 33, h, w] of one window, timestep [B] = 1000 * sigma;
- LLaVA states [B, L, 4096] + mask [B, L], CLIP-L pooled [B, 768] (avatar_encoders);
- reference latents: the VAE latents of the reference as a 129-frame still video, 33 frames, scaled like the
  video latents ([1, 16, 33, h, w]; the model adds `ref_in` of all of them to the video tokens and uses frame 0
  as its leading reference frame); the same for every window and both branches;
- audio features of the window [B, 129, 10, 5, 384]; the unconditional branch gets zeros;
- face mask [B, 1, 1, h, w] (avatar_face_mask), times 0.6 in both branches during the text-guided steps;
- motion_exp [B, 4] = 30 and motion_pose [B, 4] = 25 (the vendor's fixed "motion bucket" values: four numbers,
  each embedded to a quarter of the 3072-wide vector), fps [B] = 25 or 12.5.
With guidance on, the vendor runs both branches as one batch of two (uncond first); `batch_guidance=False` runs
them one after the other (less memory, same result).

Latent scale: the vendor encodes the reference video with `vae.encode(...).latent_dist.sample()` (a sample, not
the mode) and multiplies by the VAE config's `scaling_factor` (HunyuanVideo's VAE has no shift factor; 0.476986,
also diffusers' AutoencoderKLHunyuanVideo default); the final latents are divided by it before decoding. The
result here stays in the scaled space, like the reference latents given.

Ours: the noise comes from a CPU generator seeded with `seed` (reproducible on any device; the vendor draws it on
the GPU, so its numbers differ), float32, shape [1, 16, L, h, w] for the plan's L latent frames. The vendor's
pipeline also caches, whatever `--use-deepcache` says: on 20 of the 50 steps (16-19, 21-24, 26-29, 31-34, 36-39)
its transformer skips every block but the last single-stream one and reuses that block's input from the last
full step, per latent frame. That is a transformer-side shortcut this loop does not take: every step calls
`denoise` in full.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from ..errors import CancelledError, InvalidInputError
from .avatar_schedule import (DEFAULT_CFG_SCALE, DEFAULT_FLOW_SHIFT, DEFAULT_STEPS, apply_guidance, euler_step,
                              flow_sigmas, flow_timesteps, guidance_for_step)
from .avatar_windows import (WINDOW_LATENT_FRAMES, AvatarWindowPlan, pad_audio_features, plan_avatar_windows,
                             windowed_prediction)

LATENT_CHANNELS = 16
MOTION_EXPRESSION = 30.0   # vendor: motion_bucket_id_exps = [30] * 4
MOTION_POSE = 25.0         # vendor: motion_bucket_id_heads = [25] * 4
MOTION_VALUES = 4


@dataclass
class AvatarConditioning:
    """Everything the loop needs besides the model, for one clip (batch 1)."""
    text_states: torch.Tensor                    # [1, L, 4096] LLaVA, prompt + reference image
    text_mask: torch.Tensor                      # [1, L]
    pooled: torch.Tensor                         # [1, 768] CLIP-L
    reference_latents: torch.Tensor              # [1, 16, 33 (or 1), h, w]
    audio_features: torch.Tensor                 # [1, F, 10, 5, 384]
    face_mask: torch.Tensor                      # [1, 1, 1, h, w]
    fps: float
    negative_text_states: torch.Tensor | None = None   # needed when guidance is on
    negative_text_mask: torch.Tensor | None = None
    negative_pooled: torch.Tensor | None = None
    motion_expression: float = MOTION_EXPRESSION
    motion_pose: float = MOTION_POSE


@dataclass
class AvatarModelInputs:
    """One transformer call's conditioning (batch B: 1, or 2 = [uncond, cond])."""
    text_states: torch.Tensor        # [B, L, 4096]
    text_mask: torch.Tensor          # [B, L]
    pooled: torch.Tensor             # [B, 768]
    reference_latents: torch.Tensor  # [B, 16, T_ref, h, w]
    audio_features: torch.Tensor     # [B, 129, 10, 5, 384]
    face_mask: torch.Tensor          # [B, 1, 1, h, w]
    motion_expression: torch.Tensor  # [B, 4]
    motion_pose: torch.Tensor        # [B, 4]
    fps: torch.Tensor                # [B]

    @staticmethod
    def concat(first: "AvatarModelInputs", second: "AvatarModelInputs") -> "AvatarModelInputs":
        return AvatarModelInputs(**{name: torch.cat([getattr(first, name), getattr(second, name)])
                                    for name in AvatarModelInputs.__dataclass_fields__})


AvatarDenoiser = Callable[[torch.Tensor, torch.Tensor, AvatarModelInputs], torch.Tensor]
ProgressCallback = Callable[[int, int, int, int], None]   # (step, steps, window, windows), 1-based


@dataclass
class AvatarSampleRequest:
    seed: int
    steps: int = DEFAULT_STEPS
    flow_shift: float = DEFAULT_FLOW_SHIFT
    cfg_scale: float = DEFAULT_CFG_SCALE
    first_window_only: bool = False   # render the first 129 frames only (the vendor's --infer-min)
    batch_guidance: bool = True       # both guidance branches in one call (batch 2) or two calls


@dataclass
class AvatarSampleResult:
    latents: torch.Tensor      # [1, 16, output latent frames, h, w] float32 on the CPU (video latent scale)
    video_frames: int          # frames to keep after decoding (the audio's length)
    plan: AvatarWindowPlan


def initial_noise(seed: int, plan: AvatarWindowPlan, height: int, width: int) -> torch.Tensor:
    """[1, 16, L, h, w] float32 standard normal noise from a CPU generator seeded with `seed`."""
    generator = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn((1, LATENT_CHANNELS, plan.latent_frames, height, width), generator=generator,
                       dtype=torch.float32)


def _pad_tokens(states: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero states and mask after the end, so both guidance branches have the same length for one batch."""
    extra = length - states.shape[1]
    if extra <= 0:
        return states, mask
    return (torch.nn.functional.pad(states, (0, 0, 0, extra)), torch.nn.functional.pad(mask, (0, extra)))


def _check(conditioning: AvatarConditioning, request: AvatarSampleRequest) -> tuple[int, int]:
    reference = conditioning.reference_latents
    if reference.ndim != 5 or reference.shape[:2] != (1, LATENT_CHANNELS):
        raise InvalidInputError(f"reference latents must be [1, {LATENT_CHANNELS}, frames, h, w]; got "
                                f"{tuple(reference.shape)}.")
    if reference.shape[2] not in (1, WINDOW_LATENT_FRAMES):
        raise InvalidInputError(f"reference latents must have {WINDOW_LATENT_FRAMES} frames (the 129-frame still "
                                f"video) or 1; got {reference.shape[2]}.")
    height, width = reference.shape[-2:]
    if tuple(conditioning.face_mask.shape) != (1, 1, 1, height, width):
        raise InvalidInputError(f"the face mask must cover the latent grid [1, 1, 1, {height}, {width}]; got "
                                f"{tuple(conditioning.face_mask.shape)}.")
    if conditioning.audio_features.ndim != 5 or conditioning.audio_features.shape[1] < 1:
        raise InvalidInputError(f"audio features must be [1, frames, 10, hidden states, width]; got "
                                f"{tuple(conditioning.audio_features.shape)}.")
    if conditioning.text_mask.shape != conditioning.text_states.shape[:2]:
        raise InvalidInputError("text mask and text states differ in length.")
    if request.steps < 1:
        raise InvalidInputError(f"steps must be at least 1 (got {request.steps}).")
    if request.cfg_scale > 1.0 and (conditioning.negative_text_states is None or conditioning.negative_pooled is None
                                    or conditioning.negative_text_mask is None):
        raise InvalidInputError("Guidance (cfg > 1) needs the negative prompt's LLaVA states, mask and CLIP pooled "
                                "output; encode the negative prompt, or set cfg to 1.")
    return height, width


def sample_avatar(denoise: AvatarDenoiser, conditioning: AvatarConditioning, request: AvatarSampleRequest, *,
                  device: torch.device | str = "cpu", on_progress: ProgressCallback | None = None,
                  is_cancelled: Callable[[], bool] | None = None) -> AvatarSampleResult:
    """Denoise one clip. `on_progress(step, steps, window, windows)` follows every window (and may raise to stop);
    `is_cancelled()` is asked before every window and stops the run with CancelledError."""
    height, width = _check(conditioning, request)
    device = torch.device(device)
    plan = plan_avatar_windows(conditioning.audio_features.shape[1], request.first_window_only)
    latents = initial_noise(request.seed, plan, height, width).to(device)
    audio = pad_audio_features(conditioning.audio_features.float(), plan).to(device)
    sigmas = flow_sigmas(request.steps, request.flow_shift)
    timesteps = flow_timesteps(sigmas)

    def branch(states, mask, pooled, face_scale) -> AvatarModelInputs:
        return AvatarModelInputs(
            text_states=states.float().to(device), text_mask=mask.to(device), pooled=pooled.float().to(device),
            reference_latents=conditioning.reference_latents.float().to(device),
            audio_features=audio[:, :0],  # filled per window
            face_mask=conditioning.face_mask.float().to(device) * face_scale,
            motion_expression=torch.full((1, MOTION_VALUES), float(conditioning.motion_expression), device=device),
            motion_pose=torch.full((1, MOTION_VALUES), float(conditioning.motion_pose), device=device),
            fps=torch.full((1,), float(conditioning.fps), device=device))

    positive = (conditioning.text_states, conditioning.text_mask, conditioning.pooled)
    negative = (conditioning.negative_text_states, conditioning.negative_text_mask, conditioning.negative_pooled)
    if request.cfg_scale > 1.0:
        length = max(positive[0].shape[1], negative[0].shape[1])
        positive = (*_pad_tokens(positive[0], positive[1], length), positive[2])
        negative = (*_pad_tokens(negative[0], negative[1], length), negative[2])

    for step in range(request.steps):
        guidance = guidance_for_step(step, request.steps, request.cfg_scale)
        timestep = timesteps[step].to(device)
        cond = branch(*positive, guidance.face_mask_scale)
        uncond = branch(*(negative if guidance.uncond_prompt == "negative" else positive), guidance.face_mask_scale)

        def predict(latent_window, audio_window, window, windows, step=step, guidance=guidance, timestep=timestep,
                    cond=cond, uncond=uncond):
            if is_cancelled is not None and is_cancelled():
                raise CancelledError(f"HunyuanVideo-Avatar sampling cancelled at step {step + 1}/{request.steps}, "
                                     f"window {window + 1}/{windows}.")
            cond_inputs = replace(cond, audio_features=audio_window)
            if not guidance.guided:
                velocity = denoise(latent_window, timestep.expand(1), cond_inputs)
            else:
                uncond_inputs = replace(uncond, audio_features=torch.zeros_like(audio_window))
                if request.batch_guidance:
                    both = denoise(torch.cat([latent_window, latent_window]), timestep.expand(2),
                                   AvatarModelInputs.concat(uncond_inputs, cond_inputs))
                    uncond_velocity, cond_velocity = both.chunk(2)
                else:
                    uncond_velocity = denoise(latent_window, timestep.expand(1), uncond_inputs)
                    cond_velocity = denoise(latent_window, timestep.expand(1), cond_inputs)
                velocity = apply_guidance(uncond_velocity.float(), cond_velocity.float(), guidance.scale)
            if on_progress is not None:
                on_progress(step + 1, request.steps, window + 1, windows)
            return velocity

        velocity = windowed_prediction(latents, audio, plan, step, predict)
        latents = euler_step(latents, velocity, sigmas[step], sigmas[step + 1])
        del velocity

    return AvatarSampleResult(latents=latents[:, :, :plan.output_latent_frames].float().cpu(),
                              video_frames=plan.video_frames, plan=plan)
