"""LTX-Video (0.9.x) sampling: text-to-video, image-to-video and keyframes, on diffusers components
(LTXVideoTransformer3DModel, AutoencoderKLLTXVideo) with our own loop, for the same reasons as wan_sampler:
a progress update with a preview on every step, cancellation within a step (on_step raises), and the latent
out in the form core ComfyUI nodes read.

Facts this rests on (checked on diffusers 0.42.1's LTX pipelines and ComfyUI's comfy_extras/nodes_lt.py,
comfy/model_base.py LTXV, comfy/ldm/lightricks/vae):

- LATENT. ComfyUI's LTXV VAE normalizes inside `encode` ((x - mean-of-means) / std-of-means) and
  un-normalizes inside `decode`, and the LTXV latent format does no scaling; so a native LTXV LATENT holds
  the NORMALIZED latents, exactly what the transformer sees. `LTXSampleResult.latents` is that (core
  VAEDecode with the LTXV VAE decodes it); `raw` is the denormalized form diffusers' `vae.decode` takes.
- Default schedule = diffusers' LTXPipeline with the vendor's scheduler config = ComfyUI's LTXVScheduler
  (stretch on, terminal 0.1): sigmas linspace(1, 1/N, N); shift mu = linear in the token count
  T*h*w through (1024, 0.95) and (4096, 2.05); exponential time shift e^mu / (e^mu + 1/s - 1); stretched
  so the last sigma is 0.1; then 0 appended.
- Distilled checkpoints sample only on the sigmas of their `allowed_inference_steps`; pass them as
  `sigmas` (each is one model call; 0 is appended as the end point).
- Stochastic sampling (the vendor's `stochastic_sampling`, diffusers' FlowMatchEulerDiscreteScheduler
  option, ComfyUI's "lcm" sampler on a flow model): every step predicts x0 and re-noises it to the next
  sigma with fresh Gaussian noise, x_next = (1 - s_next) x0 + s_next * noise, instead of the deterministic
  Euler move x_next = x + (s_next - s) v.
- Conditioning by latent replacement with per-token timesteps (ComfyUI's LTXVImgToVideo / LTXVAddGuide
  noise masks, diffusers' LTXImageToVideoPipeline / LTXConditionPipeline): a condition's pixels are
  VAE-encoded (distribution mode, as ComfyUI), normalized, and given a per-token strength k (0 elsewhere)
  that (1) blends the model input, x_in = lerp(x, cond, k), (2) lowers the token's timestep to t * (1 - k),
  and (3) blends the prediction, x0 = lerp(x0_model, cond, k). At k = 1 a token is the condition throughout
  with timestep 0 (== diffusers' I2V pipeline at strength 1).
  Where the condition's tokens live:
  * frame 0 (I2V, or a clip that starts the video): in place, on the video's first latent frames (the
    vendor, diffusers and ComfyUI all do this);
  * any other frame, `keyframe_method="append"` (default; what the vendor's LTX-Video pipeline does for
    frame_index != 0, diffusers' LTXConditionPipeline, ComfyUI's LTXVAddGuide + LTXVCropGuides): the
    condition's latents are APPENDED as extra tokens with their own rotary positions at frame_index (so a
    single image is encoded as the one frame it is, not forced into a latent that stands for 8 frames), and
    cropped off after sampling; or `keyframe_method="in_place"` (ComfyUI's LTXVImgToVideoInplace /
    replace_latent_frames, the older way): its latents replace the video's latent frame(s) at ceil(frame_index / 8), and at strength 0 it is
    exactly no condition.
  Frame index convention: a single image may sit at any frame; a multi-frame clip must start at a multiple
  of 8 (the vendor's / diffusers' rule; ComfyUI's LTXVAddGuide instead rounds down to 8k+1).
  The schedule's shift counts the video's tokens only (as diffusers; ComfyUI's LTXVScheduler fed the
  guided latent counts the guides too).
  Not done: the vendor's optional re-noising of hard conditions each step (`image_cond_noise_scale`) and
  diffusers' split of a mid-clip video condition into 2 appended + in-place latents.
- Refinement (the vendor's multi-scale second pass; ComfyUI's partial denoise): with `initial_latents`
  (normalized) the schedule keeps only its sigmas <= `denoise` (plus the final 0) and starts from
  x = (1 - s0) initial + s0 noise.
- Decode: the 0.9.1+ VAE is timestep-conditioned; the vendor and ComfyUI add noise in NORMALIZED space,
  x = (1 - noise_scale) x + noise_scale * noise, then decode with `decode_timestep` (ComfyUI: 0.05 and
  0.025). diffusers adds the noise after denormalizing; we follow the vendor.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..errors import InvalidInputError
from .ltx_inputs import ltx_timestep, ltx_video_coords, pack_latents, unpack_latents
from .ltx_validation import FRAME_STRIDE, check_ltx_conditions, check_ltx_size, condition_latent_index

# The vendor's scheduler config (Lightricks/LTX-Video scheduler/scheduler_config.json) and ComfyUI's
# LTXVScheduler defaults.
BASE_SEQ_LEN, MAX_SEQ_LEN = 1024, 4096
BASE_SHIFT, MAX_SHIFT = 0.95, 2.05
SHIFT_TERMINAL = 0.1
KEYFRAME_METHODS = ("append", "in_place")


@dataclass
class LTXCondition:
    pixels: torch.Tensor   # [F, H, W, 3] float 0..1 at the target size; F = 1 (an image) or 8k+1 (a clip)
    frame_index: int       # video frame of the first pixel frame (clips: a multiple of 8)
    strength: float = 1.0  # 1 = keep exactly; 0 = free (in place: exactly no condition)


@dataclass
class LTXSampleRequest:
    prompt_embeds: torch.Tensor                  # [1, L, 4096] T5-XXL
    prompt_mask: torch.Tensor                    # [1, L] 1 = token, 0 = padding
    negative_embeds: torch.Tensor | None         # [1, L', 4096]; None when cfg == 1
    negative_mask: torch.Tensor | None
    width: int
    height: int
    frames: int
    frame_rate: float = 25.0
    steps: int = 40
    cfg: float = 3.0
    guidance_rescale: float = 0.0
    seed: int = 0
    stochastic: bool = False
    sigmas: Sequence[float] | None = None        # explicit schedule (distilled); overrides steps
    decode_timestep: float = 0.05
    decode_noise_scale: float = 0.025
    causal_temporal_positioning: bool = False
    conditions: list[LTXCondition] = field(default_factory=list)
    keyframe_method: str = "append"              # for conditions not at frame 0: "append" (vendor) or "in_place"
    initial_latents: torch.Tensor | None = None  # normalized [1, C, T, h, w] at this size: refine instead of generate
    denoise: float = 1.0                         # with initial_latents: start at the schedule's sigmas <= denoise


@dataclass
class LTXSampleResult:
    latents: torch.Tensor  # native LTXV LATENT samples: NORMALIZED latents [1, 128, T, h, w] float32, CPU
    raw: torch.Tensor      # the same denormalized (the VAE's own space; what diffusers' vae.decode takes)

    @property
    def normalized(self) -> torch.Tensor:
        """What the transformer sees (for previews); for LTX this is the LATENT itself."""
        return self.latents


def ltx_shift(token_count: int) -> float:
    """Resolution-dependent shift mu for `token_count` latent tokens (T * h * w)."""
    slope = (MAX_SHIFT - BASE_SHIFT) / (MAX_SEQ_LEN - BASE_SEQ_LEN)
    return token_count * slope + (BASE_SHIFT - slope * BASE_SEQ_LEN)


def default_ltx_sigmas(steps: int, token_count: int) -> torch.Tensor:
    """[steps + 1] float32, from 1 down to SHIFT_TERMINAL, then 0 (see the module docstring)."""
    if steps < 1:
        raise InvalidInputError(f"steps must be at least 1 (got {steps}).")
    base = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float32)
    shifted = math.exp(ltx_shift(token_count)) / (math.exp(ltx_shift(token_count)) + (1.0 / base - 1.0))
    remaining = 1.0 - shifted
    stretched = 1.0 - remaining / (remaining[-1] / (1.0 - SHIFT_TERMINAL))
    return torch.cat([stretched, stretched.new_zeros(1)])


def explicit_ltx_sigmas(sigmas: Sequence[float]) -> torch.Tensor:
    """A given schedule (e.g. a distilled checkpoint's allowed_inference_steps): each value is one model call;
    0 is appended as the end point (a trailing 0 already there is not a call)."""
    values = [float(s) for s in sigmas]
    if values and values[-1] == 0.0:
        values = values[:-1]
    if not values:
        raise InvalidInputError("sigmas: give at least one noise level in (0, 1].")
    if any(not 0.0 < s <= 1.0 for s in values) or any(b >= a for a, b in zip(values, values[1:])):
        raise InvalidInputError(f"sigmas must decrease strictly and lie in (0, 1]; got {values}.")
    return torch.tensor(values + [0.0], dtype=torch.float32)


def truncate_sigmas(sigmas: torch.Tensor, denoise: float) -> torch.Tensor:
    """Refinement (img2img-style): keep the schedule's sigmas <= `denoise` and the final 0."""
    if not 0.0 < denoise <= 1.0:
        raise InvalidInputError(f"denoise must lie in (0, 1] (got {denoise}).")
    kept = sigmas[:-1][sigmas[:-1] <= denoise + 1e-6]
    if len(kept) < 1:
        raise InvalidInputError(
            f"denoise {denoise} is below every noise level of the schedule (the smallest is "
            f"{float(sigmas[:-1].min()):.4f}): no refinement step would run. Raise denoise or use more steps.")
    return torch.cat([kept, sigmas.new_zeros(1)])


def compute_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype activations enter the transformer in: its input projection's."""
    return model.proj_in.weight.dtype


def latent_stats(vae, device, dtype=torch.float32):
    mean = vae.latents_mean.to(device, dtype).view(1, -1, 1, 1, 1)
    std = vae.latents_std.to(device, dtype).view(1, -1, 1, 1, 1)
    return mean, std


def normalize_latents(vae, raw: torch.Tensor) -> torch.Tensor:
    mean, std = latent_stats(vae, raw.device, raw.dtype)
    return (raw - mean) * vae.config.scaling_factor / std


def denormalize_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    mean, std = latent_stats(vae, latents.device, latents.dtype)
    return latents * std / vae.config.scaling_factor + mean


@torch.no_grad()
def encode_ltx_pixels(vae, pixels: torch.Tensor, device) -> torch.Tensor:
    """[F, H, W, 3] 0..1 -> normalized latents [1, C, 1 + (F-1)/8, H/32, W/32] float32 on `device`."""
    vae_device, vae_dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
    video = (pixels.permute(3, 0, 1, 2).unsqueeze(0).float() * 2.0 - 1.0).to(vae_device, vae_dtype)
    raw = vae.encode(video).latent_dist.mode().to(device, torch.float32)
    return normalize_latents(vae, raw)


def rescale_guidance(guided: torch.Tensor, positive: torch.Tensor, amount: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2023, sec. 3.4): match the guided prediction's std to the positive one's,
    then mix by `amount`."""
    dims = list(range(1, guided.ndim))
    rescaled = guided * (positive.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return amount * rescaled + (1.0 - amount) * guided


def _vae_factors(vae) -> tuple[int, int]:
    spatial = getattr(vae, "spatial_compression_ratio", 32)
    temporal = getattr(vae, "temporal_compression_ratio", FRAME_STRIDE)
    if (spatial, temporal) != (32, FRAME_STRIDE):
        raise InvalidInputError(f"this VAE compresses {spatial}x spatially and {temporal}x in time; LTX-Video 0.9.x "
                                "VAEs compress 32x and 8x.")
    return spatial, temporal


def is_in_place(condition: LTXCondition, keyframe_method: str) -> bool:
    """Frame-0 conditions always replace latents in place (the vendor's rule); others follow the method."""
    return condition.frame_index == 0 or keyframe_method == "in_place"


def guide_video_coords(guide_frames: int, lat_h: int, lat_w: int, frame_index: int, request: LTXSampleRequest,
                       device) -> torch.Tensor:
    """Positions of an appended guide's tokens: its own latent grid placed at `frame_index`, in the same temporal
    convention as the video's tokens (causal or not), so guide latent j sits where the video frames it encodes
    are: frame_index + (max(0, 8j - 7) if causal else 8j). With causal positions this is diffusers'
    LTXConditionPipeline; without, ComfyUI's LTXVAddGuide."""
    coords = ltx_video_coords(1, guide_frames, lat_h, lat_w, request.frame_rate,
                              request.causal_temporal_positioning, device=device)
    coords[:, 0] += frame_index / request.frame_rate
    return coords


def sample_ltx(
    transformer,
    vae,
    request: LTXSampleRequest,
    device: torch.device,
    on_step: Callable[[int, int, torch.Tensor], None] | None = None,
    stage: Callable[[object], contextlib.AbstractContextManager] | None = None,
) -> LTXSampleResult:
    """Denoise one clip. `on_step(step, total, x0)` (x0 normalized, [1, C, T, h, w]) is called after every
    step and may raise to cancel; `stage(model)` makes the transformer resident on `device` for the loop."""
    check_ltx_size(request.width, request.height, request.frames)
    if request.keyframe_method not in KEYFRAME_METHODS:
        raise InvalidInputError(f"keyframe_method '{request.keyframe_method}' is not one of {', '.join(KEYFRAME_METHODS)}.")
    check_ltx_conditions(request.conditions, request.width, request.height, request.frames,
                         in_place=lambda c: is_in_place(c, request.keyframe_method))
    if request.sigmas is None and request.steps < 1:
        raise InvalidInputError(f"steps must be at least 1 (got {request.steps}).")
    use_cfg = request.cfg != 1.0
    if use_cfg and request.negative_embeds is None:
        raise InvalidInputError("CFG other than 1 needs negative embeddings: connect a negative prompt, or set cfg to 1.")
    stage = stage or (lambda model: contextlib.nullcontext())
    spatial, temporal = _vae_factors(vae)

    channels = transformer.config.in_channels
    latent_frames = (request.frames - 1) // temporal + 1
    lat_h, lat_w = request.height // spatial, request.width // spatial
    shape = (1, channels, latent_frames, lat_h, lat_w)
    generator = torch.Generator("cpu").manual_seed(request.seed)
    latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)

    sigmas = (explicit_ltx_sigmas(request.sigmas) if request.sigmas is not None
              else default_ltx_sigmas(request.steps, latent_frames * lat_h * lat_w))
    if request.initial_latents is not None:
        if tuple(request.initial_latents.shape) != shape:
            raise InvalidInputError(f"initial latents have shape {list(request.initial_latents.shape)}; this request "
                                    f"needs {list(shape)}.")
        sigmas = truncate_sigmas(sigmas, float(request.denoise))
        start = float(sigmas[0])
        latents = (1.0 - start) * request.initial_latents.to(device, torch.float32) + start * latents
    coords = ltx_video_coords(1, latent_frames, lat_h, lat_w, request.frame_rate,
                              request.causal_temporal_positioning, device=device)

    # Conditions: `condition` holds their latents, `strength` the per-latent-frame k (0 = free). In-place ones
    # sit on the video's own latent frames; appended guides are extra latent frames after the video's, with
    # their own positions, cropped off at the end.
    condition = strength = conditioned = token_keep = None
    if request.conditions:
        condition = torch.zeros(shape, device=device)
        strength = torch.zeros(1, 1, latent_frames, 1, 1, device=device)
        guide_latents, guide_strengths, guide_coords = [], [], []
        for item in request.conditions:
            encoded = encode_ltx_pixels(vae, item.pixels, device)
            if is_in_place(item, request.keyframe_method):
                start = condition_latent_index(item.frame_index)
                span = min(encoded.shape[2], latent_frames - start)
                condition[:, :, start:start + span] = encoded[:, :, :span]
                strength[:, :, start:start + span] = float(item.strength)
            else:
                guide_latents.append(encoded)
                guide_strengths.append(torch.full((1, 1, encoded.shape[2], 1, 1), float(item.strength), device=device))
                guide_coords.append(guide_video_coords(encoded.shape[2], lat_h, lat_w, item.frame_index, request, device))
        if guide_latents:
            guides = torch.cat(guide_latents, dim=2)
            condition = torch.cat([condition, guides], dim=2)
            strength = torch.cat([strength] + guide_strengths, dim=2)
            coords = torch.cat([coords] + guide_coords, dim=2)
            # the guides' own starting noise, drawn after the video's so the video's noise is the same either way
            latents = torch.cat([latents, torch.randn(guides.shape, generator=generator).to(device)], dim=2)
        strength = strength.expand(-1, -1, -1, lat_h, lat_w)
        token_keep = pack_latents(1.0 - strength)[..., 0]  # [1, N]: per-token timestep factor 1 - k
        conditioned = strength > 0
    total_frames = latents.shape[2]

    dtype = compute_dtype(transformer)
    prompt = request.prompt_embeds.to(device, dtype)
    prompt_mask = request.prompt_mask.to(device)
    negative = request.negative_embeds.to(device, dtype) if use_cfg else None
    negative_mask = request.negative_mask.to(device) if use_cfg else None

    def predict(model_input: torch.Tensor, sigma: float) -> torch.Tensor:
        tokens = pack_latents(model_input).to(dtype)
        if condition is None:
            timestep = ltx_timestep(sigma).to(device).expand(1)
        else:
            timestep = ltx_timestep(sigma).to(device) * token_keep

        def run(text, mask):
            out = transformer(hidden_states=tokens, encoder_hidden_states=text, timestep=timestep,
                              encoder_attention_mask=mask, video_coords=coords, return_dict=False)[0]
            return out.float()

        positive = run(prompt, prompt_mask)
        if not use_cfg:
            velocity = positive
        else:
            velocity = run(negative, negative_mask)
            velocity = velocity + request.cfg * (positive - velocity)
            if request.guidance_rescale > 0:
                velocity = rescale_guidance(velocity, positive, request.guidance_rescale)
        return unpack_latents(velocity, total_frames, lat_h, lat_w)

    total = len(sigmas) - 1
    with stage(transformer), torch.no_grad():
        for index in range(total):
            sigma, sigma_next = sigmas[index], sigmas[index + 1]
            model_input = latents if condition is None else torch.lerp(latents, condition, strength)
            velocity = predict(model_input, float(sigma))
            # flow matching: x_t = (1 - s) x0 + s noise, v = noise - x0  =>  x0 = x_t - s v
            x0 = model_input - sigma * velocity
            if condition is not None:
                x0 = torch.lerp(x0, condition, strength)
            if float(sigma_next) == 0.0:
                latents = x0
            elif request.stochastic:
                noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(device)
                latents = (1.0 - sigma_next) * x0 + sigma_next * noise
            else:
                euler = latents + (sigma_next - sigma) * velocity  # diffusers' Euler step, bit for bit
                if condition is not None:
                    euler = torch.where(conditioned, x0 + (sigma_next / sigma) * (latents - x0), euler)
                latents = euler
            if on_step is not None:
                on_step(index + 1, total, x0[:, :, :latent_frames])
            del velocity, x0

    latents = latents[:, :, :latent_frames]  # appended guides are not part of the video
    normalized = latents.float()
    return LTXSampleResult(latents=normalized.cpu(), raw=denormalize_latents(vae, normalized).cpu())


@torch.no_grad()
def decode_ltx_latents(vae, latents: torch.Tensor, device: torch.device, decode_timestep: float = 0.05,
                       decode_noise_scale: float = 0.025, seed: int = 0) -> torch.Tensor:
    """Native LTXV LATENT (normalized) [1, C, T, h, w] -> IMAGE frames [F, H, W, 3] float32 0..1 on the CPU.

    A timestep-conditioned VAE (0.9.1+) gets `decode_noise_scale` of seeded noise mixed in (normalized space,
    as the vendor and ComfyUI do) and decodes at `decode_timestep`; an older VAE ignores both."""
    vae_dtype = next(vae.parameters()).dtype
    latents = latents.to(device, torch.float32)
    temb = None
    if vae.config.timestep_conditioning:
        noise = torch.randn(latents.shape, generator=torch.Generator("cpu").manual_seed(seed)).to(device)
        latents = (1.0 - decode_noise_scale) * latents + decode_noise_scale * noise
        temb = torch.tensor([float(decode_timestep)], device=device, dtype=vae_dtype)
    raw = denormalize_latents(vae, latents).to(vae_dtype)
    video = vae.decode(raw, temb, return_dict=False)[0]  # [1, 3, F, H, W] in -1..1
    frames = ((video[0].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0)
    return frames.contiguous().cpu()
