"""One LTX-Video generation from node inputs to frames: text, conditioning images, sampling, decode, and
the same cleanup and error rules as Wan (wan_generate.py)."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Callable

import torch

from .. import host
from ..errors import InvalidInputError, OutOfMemoryError
from ..models.ltx_upscaler import load_ltx_upscaler, upscale_ltx_latents
from .ltx_sampler import (
    LTXCondition,
    LTXSampleRequest,
    decode_ltx_latents,
    default_ltx_sigmas,
    sample_ltx,
    truncate_sigmas,
)
from .ltx_validation import check_ltx_size
from .wan_generate import fit_image, oom_advice


@dataclass
class LTXVideo:
    frames: torch.Tensor    # IMAGE [F, H, W, 3]
    latents: torch.Tensor   # native LTXV LATENT samples (normalized) [1, 128, T, h, w]
    fps: float


@dataclass(frozen=True)
class Keyframe:
    """Images (IMAGE batch: one image or a short clip) pinned at a video frame with a strength."""
    images: torch.Tensor
    frame_index: int
    strength: float


def _mask_of(conditioning_entry) -> torch.Tensor | None:
    extra = conditioning_entry[1] if len(conditioning_entry) > 1 and isinstance(conditioning_entry[1], dict) else {}
    return extra.get("attention_mask")


def generate_ltx_video(
    model,
    *,
    prompt: str,
    negative_prompt: str,
    width: int,
    height: int,
    frames: int,
    frame_rate: float,
    steps: int,
    cfg: float,
    guidance_rescale: float,
    stochastic: bool,
    decode_timestep: float,
    decode_noise_scale: float,
    seed: int,
    keyframes: list[Keyframe] = (),
    image_fit: str = "crop",
    positive=None,
    negative=None,
    on_step=None,
) -> LTXVideo:
    check_ltx_size(width, height, frames, model.variant.display_name)
    embeds, mask, neg_embeds, neg_mask = _text_embeddings(model, prompt, negative_prompt, cfg, positive, negative)

    conditions = []
    for keyframe in keyframes:
        pixels = torch.stack([fit_image(image, width, height, image_fit) for image in keyframe.images])
        conditions.append(LTXCondition(pixels=pixels, frame_index=int(keyframe.frame_index),
                                       strength=float(keyframe.strength)))
    distilled_sigmas = model.facts.allowed_inference_steps if model.facts.distilled else None
    request = LTXSampleRequest(
        prompt_embeds=embeds, prompt_mask=mask, negative_embeds=neg_embeds, negative_mask=neg_mask,
        width=width, height=height, frames=frames, frame_rate=frame_rate, steps=steps, cfg=cfg,
        guidance_rescale=guidance_rescale, seed=seed, stochastic=stochastic, sigmas=distilled_sigmas,
        decode_timestep=decode_timestep, decode_noise_scale=decode_noise_scale,
        causal_temporal_positioning=bool(model.facts.causal_temporal_positioning), conditions=conditions,
    )
    total_steps = len(distilled_sigmas) if distilled_sigmas else steps
    return _sample_and_decode(model, request, total_steps, on_step,
                              f"generating {width}x{height}, {frames} frames")


def _text_embeddings(model, prompt, negative_prompt, cfg, positive, negative):
    """(embeds, mask, negative embeds, negative mask) from CONDITIONING when given, else from the model's T5."""
    use_cfg = cfg != 1.0
    if positive is None:
        return model.encode_text(prompt, negative_prompt if use_cfg else None)
    embeds = positive[0][0]
    mask = _mask_of(positive[0])
    mask = mask if mask is not None else torch.ones(embeds.shape[:2], dtype=torch.long)
    if use_cfg and negative is None:
        raise InvalidInputError("CFG other than 1 needs negative CONDITIONING too (or set cfg to 1).")
    neg_embeds = negative[0][0] if use_cfg else None
    neg_mask = None
    if neg_embeds is not None:
        neg_mask = _mask_of(negative[0])
        neg_mask = neg_mask if neg_mask is not None else torch.ones(neg_embeds.shape[:2], dtype=torch.long)
    return embeds, mask, neg_embeds, neg_mask


def _sample_and_decode(model, request: LTXSampleRequest, total_steps: int, on_step, what: str,
                       prepare: Callable[[], None] | None = None) -> LTXVideo:
    """Sample and decode with the shared cleanup and OOM rules. `prepare()` runs first, inside them (e.g. to
    fill `request.initial_latents` on the GPU)."""
    width, height, frames = request.width, request.height, request.frames
    reporter = host.StepReporter(total_steps, latent_kind="ltxv", on_step=on_step)
    out_of_memory = False
    try:
        model.prepare_for_sampling()
        if prepare is not None:
            prepare()
        result = sample_ltx(model.transformer, model.vae, request, model.device,
                            on_step=lambda step, total, x0: reporter.step(step, x0), stage=model.stage)
        host.throw_if_interrupted()
        frames_out = decode_ltx_latents(model.vae, result.latents, model.device, request.decode_timestep,
                                        request.decode_noise_scale, request.seed)
    except torch.OutOfMemoryError:
        out_of_memory = True  # not re-raised here: the traceback would keep the intermediates alive
    finally:
        model.release_after_run()
        gc.collect()
        host.soft_empty_cache()
    if out_of_memory:
        raise OutOfMemoryError(
            f"Out of GPU memory {what} with {model.describe()}. "
            f"Options that would fit: {oom_advice(model, width, height, frames)}.")
    return LTXVideo(frames=frames_out, latents=result.latents, fps=float(request.frame_rate))


def upscale_and_refine_ltx(
    model,
    upscaler_path,
    latents: torch.Tensor,
    *,
    prompt: str,
    negative_prompt: str,
    frame_rate: float,
    steps: int,
    cfg: float,
    denoise: float,
    seed: int,
    decode_timestep: float,
    decode_noise_scale: float,
    positive=None,
    negative=None,
    on_step=None,
) -> LTXVideo:
    """The vendor's multi-scale recipe, second stage: the spatial latent upscaler doubles the (normalized) LATENT's
    height and width, then a short refinement pass re-noises it to `denoise` and denoises it on the default
    schedule of `steps` steps, keeping only the noise levels <= `denoise` (distilled checkpoints included: their
    own schedule has no level that low)."""
    if latents.ndim != 5 or latents.shape[0] != 1:
        raise InvalidInputError(f"expected an LTX-Video LATENT [1, C, T, h, w]; got shape {list(latents.shape)}.")
    channels = model.transformer.config.in_channels
    if latents.shape[1] != channels:
        raise InvalidInputError(f"the LATENT has {latents.shape[1]} channels; this LTX-Video model takes {channels}. "
                                "Connect the latent output of a Reelsmith LTX sampler.")
    latent_frames, lat_h, lat_w = (int(n) for n in latents.shape[2:])
    width, height, frames = lat_w * 2 * 32, lat_h * 2 * 32, (latent_frames - 1) * 8 + 1
    check_ltx_size(width, height, frames, model.variant.display_name)
    upsampler = load_ltx_upscaler(upscaler_path)
    if upsampler.config.in_channels != channels:
        raise InvalidInputError(f"{upscaler_path}: this upscaler takes {upsampler.config.in_channels}-channel "
                                f"latents; the model's have {channels}.")
    embeds, mask, neg_embeds, neg_mask = _text_embeddings(model, prompt, negative_prompt, cfg, positive, negative)
    request = LTXSampleRequest(
        prompt_embeds=embeds, prompt_mask=mask, negative_embeds=neg_embeds, negative_mask=neg_mask,
        width=width, height=height, frames=frames, frame_rate=frame_rate, steps=steps, cfg=cfg, seed=seed,
        decode_timestep=decode_timestep, decode_noise_scale=decode_noise_scale,
        causal_temporal_positioning=bool(model.facts.causal_temporal_positioning), denoise=float(denoise),
    )
    # fail early (before any GPU work) when denoise leaves no step
    schedule = truncate_sigmas(default_ltx_sigmas(steps, latent_frames * lat_h * 2 * lat_w * 2), float(denoise))

    def prepare():
        try:
            request.initial_latents = upscale_ltx_latents(upsampler, model.vae, latents, model.device)
        finally:
            upsampler.to("cpu")

    return _sample_and_decode(model, request, len(schedule) - 1, on_step,
                              f"upscaling and refining to {width}x{height}, {frames} frames", prepare)
