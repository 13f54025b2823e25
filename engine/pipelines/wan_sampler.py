"""Wan 2.2 sampling: text-to-video and image-to-video for the A14B experts and TI2V-5B.

Built from diffusers components (WanTransformer3DModel, AutoencoderKLWan, flow schedulers) with our own
loop, because a ComfyUI node needs things the stock pipeline does not give: a progress update with a
preview on every step, cancellation that stops within a step and frees memory, native CONDITIONING in,
and the raw latent out (what core VAEDecode reads).

Conditioning, as the released models expect it:
- A14B I2V: 36 input channels = 16 noise + 4 mask + 16 encoded condition video (start image, zeros,
  optional end image), the mask marking which frames are given.
- TI2V-5B: the start image's latent replaces the first latent frame at every step, and that frame's
  timestep is 0 (per-token timesteps).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import BackendUnavailableError, InvalidInputError
from ..models.wan_vae_fast_decode import decode_wan_latents_fast
from .schedulers import make_flow_scheduler
from .wan_validation import check_wan_size

logger = logging.getLogger(__name__)

MAX_TEXT_TOKENS = 512  # Wan's text context length; shorter embeddings are zero-padded to it


@dataclass
class WanSampleRequest:
    prompt_embeds: torch.Tensor              # [1, L, text_dim]
    negative_embeds: torch.Tensor | None     # [1, L, text_dim]; None when both CFGs are 1
    width: int
    height: int
    frames: int
    steps: int
    cfg_high: float
    cfg_low: float
    flow_shift: float
    boundary: float                          # fraction of the 1000 train timesteps where the low-noise expert takes over
    scheduler: str
    seed: int
    start_image: torch.Tensor | None = None  # [H, W, 3] float 0..1, already at the target size
    end_image: torch.Tensor | None = None


@dataclass
class WanSampleResult:
    latents: torch.Tensor  # raw VAE latents [1, C, T, H, W] float32 on the CPU (native LATENT)
    normalized: torch.Tensor  # the same, normalized as the transformer sees them (for previews)


def pad_text_embeds(embeds: torch.Tensor, length: int = MAX_TEXT_TOKENS) -> torch.Tensor:
    """Native CONDITIONING holds only the prompt's tokens; Wan sees them zero-padded to 512."""
    if embeds.ndim == 2:
        embeds = embeds.unsqueeze(0)
    if embeds.shape[1] >= length:
        return embeds[:, :length]
    return F.pad(embeds, (0, 0, 0, length - embeds.shape[1]))


def latent_stats(vae, device, dtype=torch.float32):
    mean = torch.tensor(vae.config.latents_mean, device=device, dtype=dtype).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, device=device, dtype=dtype).view(1, -1, 1, 1, 1)
    return mean, std


def compute_dtype(model) -> torch.dtype:
    """The dtype activations enter the transformer in: the patch embedding's, which every precision keeps
    in bf16/fp16 (fp8 applies to block Linears; some tables stay float32 on purpose). A stand-in for a model
    held elsewhere (the several-GPU proxy) says it as `activation_dtype`."""
    dtype = getattr(model, "activation_dtype", None)
    return dtype if dtype is not None else model.patch_embedding.weight.dtype


def combine_guidance(cond: torch.Tensor, uncond: torch.Tensor, cfg: float) -> torch.Tensor:
    return uncond + cfg * (cond - uncond)


def guided_velocity(model, *, hidden_states: torch.Tensor, timestep: torch.Tensor, prompt: torch.Tensor,
                    negative: torch.Tensor | None, cfg: float) -> torch.Tensor:
    """The classifier-free-guided velocity of one step, float32 on `hidden_states`' device.

    The one seam between the loop and the transformer: a local model runs the conditional then the
    unconditional pass; a model with its own `guided_velocity` (the several-GPU proxy, which may run the two
    passes on different GPUs) is handed the whole step. `prompt`/`negative` are the run's padded embeddings
    (the same tensor objects on every step, so a proxy sends them once)."""
    own = getattr(model, "guided_velocity", None)
    if own is not None:
        return own(hidden_states=hidden_states, timestep=timestep, prompt=prompt, negative=negative, cfg=cfg)
    dtype = hidden_states.dtype
    cond = model(hidden_states=hidden_states, timestep=timestep, encoder_hidden_states=prompt.to(dtype),
                 return_dict=False)[0].float()
    if cfg == 1.0 or negative is None:
        return cond
    uncond = model(hidden_states=hidden_states, timestep=timestep, encoder_hidden_states=negative.to(dtype),
                   return_dict=False)[0].float()
    return combine_guidance(cond, uncond, cfg)


def _image_to_vae_input(image: torch.Tensor) -> torch.Tensor:
    """[H, W, 3] 0..1 -> [1, 3, H, W] in -1..1."""
    return image.permute(2, 0, 1).unsqueeze(0) * 2.0 - 1.0


@torch.no_grad()
def encode_condition_video(vae, request: WanSampleRequest, frames: int, device, expand_timesteps: bool):
    """Encode the start (and end) image into normalized latents, as the I2V/TI2V models expect."""
    vae_device, vae_dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
    first = _image_to_vae_input(request.start_image).unsqueeze(2)  # [1, 3, 1, H, W]
    if expand_timesteps:
        video = first
    else:
        parts = [first]
        gap = frames - 1 - (1 if request.end_image is not None else 0)
        parts.append(first.new_zeros(1, 3, gap, request.height, request.width))
        if request.end_image is not None:
            parts.append(_image_to_vae_input(request.end_image).unsqueeze(2))
        video = torch.cat(parts, dim=2)
    latent = vae.encode(video.to(vae_device, vae_dtype)).latent_dist.mode().to(device, torch.float32)
    mean, std = latent_stats(vae, device)
    return (latent - mean) / std


def i2v_mask(frames: int, latent_frames: int, lat_h: int, lat_w: int, has_end: bool, device) -> torch.Tensor:
    """[1, 4, T_lat, h, w]: 1 where a pixel frame is given. The first pixel frame is repeated 4x so every
    latent frame covers 4 pixel frames (the VAE packs time 4:1)."""
    mask = torch.zeros(1, 1, frames, lat_h, lat_w, device=device)
    mask[:, :, 0] = 1
    if has_end:
        mask[:, :, -1] = 1
    mask = torch.cat([mask[:, :, :1].repeat(1, 1, 4, 1, 1), mask[:, :, 1:]], dim=2)
    return mask.view(1, latent_frames, 4, lat_h, lat_w).transpose(1, 2)


def sample_wan(
    *,
    high_noise_model,
    low_noise_model,
    vae,
    request: WanSampleRequest,
    device: torch.device,
    size_multiple: int,
    image_conditioned: bool,
    expand_timesteps: bool,
    on_step: Callable[[int, int, torch.Tensor], None] | None = None,
    stage: Callable[[object], contextlib.AbstractContextManager] | None = None,
) -> WanSampleResult:
    """Denoise one clip. `on_step(step, total, x0)` is called after every step and may raise to cancel;
    `stage(model)` is a context manager that makes a transformer resident on `device` for its stage
    (offload), defaulting to nothing."""
    check_wan_size(request.width, request.height, request.frames, size_multiple)
    if request.steps < 1:
        raise InvalidInputError(f"steps must be at least 1 (got {request.steps}).")
    if image_conditioned and request.start_image is None:
        raise InvalidInputError("This is an image-to-video model: connect a start image (Wan 2.2 Image to Video).")
    stage = stage or (lambda model: contextlib.nullcontext())

    spatial = vae.config.scale_factor_spatial if hasattr(vae.config, "scale_factor_spatial") else 8
    temporal = vae.config.scale_factor_temporal if hasattr(vae.config, "scale_factor_temporal") else 4
    channels = vae.config.z_dim
    latent_frames = (request.frames - 1) // temporal + 1
    lat_h, lat_w = request.height // spatial, request.width // spatial
    shape = (1, channels, latent_frames, lat_h, lat_w)

    generator = torch.Generator("cpu").manual_seed(request.seed)
    latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)

    condition = None
    first_frame_keep = None  # TI2V: 0 on the first latent frame (given), 1 elsewhere
    if request.start_image is not None:
        encoded = encode_condition_video(vae, request, request.frames, device, expand_timesteps)
        if expand_timesteps:
            condition = encoded
            first_frame_keep = torch.ones(1, 1, latent_frames, lat_h, lat_w, device=device)
            first_frame_keep[:, :, 0] = 0
        else:
            mask = i2v_mask(request.frames, latent_frames, lat_h, lat_w, request.end_image is not None, device)
            condition = torch.cat([mask, encoded], dim=1)

    scheduler = make_flow_scheduler(request.scheduler, request.flow_shift)
    scheduler.set_timesteps(request.steps, device=device)
    timesteps = scheduler.timesteps
    boundary_timestep = request.boundary * scheduler.config.num_train_timesteps

    prompt = pad_text_embeds(request.prompt_embeds).to(device)
    negative = pad_text_embeds(request.negative_embeds).to(device) if request.negative_embeds is not None else None

    def expert_for(t):
        if low_noise_model is None or t >= boundary_timestep:
            return high_noise_model, request.cfg_high
        return low_noise_model, request.cfg_low

    def predict(model, latents_in, t, cfg):
        dtype = compute_dtype(model)
        if first_frame_keep is not None:
            model_input = (1 - first_frame_keep) * condition + first_frame_keep * latents_in
            # per-token timesteps over the patchified grid (patch 2x2): 0 for the given first frame
            timestep = (first_frame_keep[0, 0, :, ::2, ::2] * t).flatten().unsqueeze(0)
        elif expand_timesteps:
            model_input = latents_in
            timestep = torch.full((1, latent_frames * (lat_h // 2) * (lat_w // 2)), float(t), device=device)
        else:
            model_input = latents_in if condition is None else torch.cat([latents_in, condition], dim=1)
            timestep = t.expand(1)
        return guided_velocity(model, hidden_states=model_input.to(dtype), timestep=timestep, prompt=prompt,
                               negative=negative, cfg=cfg)

    total = len(timesteps)
    sigmas = scheduler.sigmas
    index = 0
    # Consecutive steps that use the same expert form one stage (with offload, one expert at a time).
    while index < total:
        model, _ = expert_for(timesteps[index])
        with stage(model):
            while index < total and expert_for(timesteps[index])[0] is model:
                t = timesteps[index]
                _, cfg = expert_for(t)
                velocity = predict(model, latents, t, cfg)
                # flow matching: x_t = (1 - s) x0 + s noise, v = noise - x0  =>  x0 = x_t - s v
                x0 = latents - float(sigmas[index]) * velocity
                latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
                if first_frame_keep is not None:
                    x0 = (1 - first_frame_keep) * condition + first_frame_keep * x0
                index += 1
                if on_step is not None:
                    on_step(index, total, x0)
                del velocity, x0

    if first_frame_keep is not None:
        latents = (1 - first_frame_keep) * condition + first_frame_keep * latents
    mean, std = latent_stats(vae, latents.device)
    raw = latents * std + mean
    return WanSampleResult(latents=raw.float().cpu(), normalized=latents.float().cpu())


@torch.no_grad()
def decode_wan_latents(vae, raw_latents: torch.Tensor, device: torch.device, fast: bool | None = None) -> torch.Tensor:
    """Raw latents [1, C, T, H, W] -> IMAGE frames [F, H, W, 3] float32 0..1 on the CPU.

    `fast` (default: on CUDA) decodes with `wan_vae_fast_decode` (same frames, faster, less memory);
    diffusers' own decode runs otherwise, and whenever the fast decode does not handle the VAE."""
    device = torch.device(device)
    if fast is None:
        fast = device.type == "cuda"
    if fast:
        try:
            return decode_wan_latents_fast(vae, raw_latents, device)
        except BackendUnavailableError as error:
            logger.info("Reelsmith: %s", error)
        except torch.OutOfMemoryError:
            raise  # diffusers' decode needs more memory still
        except RuntimeError as error:  # e.g. a kernel this torch / driver cannot run: stay usable
            logger.warning("Reelsmith: the fast Wan VAE decode failed (%s); using diffusers' decode.", error)
        # (outside the except blocks: the failed attempt's tensors are released before decoding again)
    vae_dtype = next(vae.parameters()).dtype
    video = vae.decode(raw_latents.to(device, vae_dtype), return_dict=False)[0]  # [1, 3, F, H, W] in -1..1
    frames = ((video[0].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0)
    return frames.contiguous().cpu()
