"""One Wan 2.2 generation from node inputs to frames: text, LoRAs, sampling, decode, and the cleanup and
error messages that make it safe to run inside a long-lived ComfyUI process."""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import host
from ..errors import InvalidInputError, OutOfMemoryError
from ..parallel.parallel_plan import check_request_split, passes_per_step
from .wan_sampler import WanSampleRequest, decode_wan_latents, sample_wan
from .wan_validation import check_wan_size

IMAGE_FITS = ("crop", "pad", "stretch")


@dataclass
class WanVideo:
    frames: torch.Tensor    # IMAGE [F, H, W, 3] float32 0..1
    latents: torch.Tensor   # raw latents [1, C, T, h, w] (native LATENT samples)
    fps: float


def fit_image(image: torch.Tensor, width: int, height: int, fit: str) -> torch.Tensor:
    """An IMAGE frame [H, W, C] -> [height, width, 3], by centre crop, padding (black) or stretching."""
    if fit not in IMAGE_FITS:
        raise InvalidInputError(f"fit '{fit}' is not one of {', '.join(IMAGE_FITS)}.")
    picture = image[..., :3].permute(2, 0, 1).unsqueeze(0).float()  # [1, 3, H, W]
    src_h, src_w = picture.shape[-2:]
    if fit == "crop":
        scale = max(width / src_w, height / src_h)
    elif fit == "pad":
        scale = min(width / src_w, height / src_h)
    if fit == "stretch":
        resized = F.interpolate(picture, size=(height, width), mode="bicubic", align_corners=False)
    else:
        new_w, new_h = max(1, round(src_w * scale)), max(1, round(src_h * scale))
        resized = F.interpolate(picture, size=(new_h, new_w), mode="bicubic", align_corners=False)
        canvas = torch.zeros(1, 3, height, width)
        top, left = (height - new_h) // 2, (width - new_w) // 2
        # crop: negative offsets cut the overflow; pad: positive offsets centre it
        src_top, src_left = max(0, -top), max(0, -left)
        dst_top, dst_left = max(0, top), max(0, left)
        h, w = min(new_h - src_top, height - dst_top), min(new_w - src_left, width - dst_left)
        canvas[:, :, dst_top:dst_top + h, dst_left:dst_left + w] = resized[:, :, src_top:src_top + h, src_left:src_left + w]
        resized = canvas
    return resized.clamp(0, 1)[0].permute(1, 2, 0)


def oom_advice(model, width: int, height: int, frames: int) -> str:
    """The options that would make a run fit, given the model's current ones (any family's loaded model)."""
    options = []
    if not model.options.precision.startswith("fp8"):
        options.append("precision fp8_e4m3fn (half the weight memory)")
    if model.options.offload != "block":
        options.append("offload 'block' (only one transformer block on the GPU at a time)"
                       if model.options.offload == "model" else
                       "offload 'model' (one expert on the GPU at a time) or 'block'")
    options.append(f"a smaller size or fewer frames than {width}x{height}x{frames}")
    return "; ".join(options)


def generate_wan_video(
    model,
    *,
    prompt: str,
    negative_prompt: str,
    width: int,
    height: int,
    frames: int,
    steps: int,
    cfg_high: float,
    cfg_low: float,
    flow_shift: float,
    boundary: float,
    scheduler: str,
    seed: int,
    start_image: torch.Tensor | None = None,
    end_image: torch.Tensor | None = None,
    image_fit: str = "crop",
    positive_embeds: torch.Tensor | None = None,
    negative_embeds: torch.Tensor | None = None,
    require_image: bool = False,
    on_step=None,
) -> WanVideo:
    variant = model.variant
    check_wan_size(width, height, frames, variant.size_multiple, variant.display_name)
    if variant.image_conditioned and start_image is None:
        raise InvalidInputError(
            f"{variant.display_name} is an image-to-video model: use the 'Reelsmith Wan 2.2 Image to Video' node "
            "with a start image, or load a T2V model for text-to-video."
        )
    if require_image and not (variant.image_conditioned or variant.name == "ti2v-5b"):
        raise InvalidInputError(
            f"{variant.display_name} is a text-to-video model and cannot start from an image: load the "
            "Wan 2.2 I2V A14B (or TI2V-5B) model for image-to-video, or use the Text to Video node."
        )
    if end_image is not None and variant.name == "ti2v-5b":
        raise InvalidInputError("TI2V-5B takes a start image only; disconnect end_image or use Wan 2.2 I2V A14B.")

    passes = passes_per_step(cfg_high, cfg_low if model.low is not None else None)
    use_cfg = 2 in passes
    check_request_split(getattr(model, "parallel_plan", None), width=width, height=height, frames=frames,
                        size_multiple=variant.size_multiple, passes=passes)
    if positive_embeds is None:
        positive_embeds, encoded_negative = model.encode_text(prompt, negative_prompt if use_cfg else None)
        if negative_embeds is None:
            negative_embeds = encoded_negative
    elif use_cfg and negative_embeds is None:
        if model.text_encoder is None:
            raise InvalidInputError(
                "CFG above 1 needs a negative: connect negative CONDITIONING too, or set both CFGs to 1.")
        negative_embeds = model.encode_text(negative_prompt, None)[0]

    def prepared(image):
        return None if image is None else fit_image(image[0], width, height, image_fit)

    request = WanSampleRequest(
        prompt_embeds=positive_embeds, negative_embeds=negative_embeds if use_cfg else None,
        width=width, height=height, frames=frames, steps=steps, cfg_high=cfg_high, cfg_low=cfg_low,
        flow_shift=flow_shift, boundary=boundary, scheduler=scheduler, seed=seed,
        start_image=prepared(start_image), end_image=prepared(end_image),
    )
    reporter = host.StepReporter(steps, latent_kind=f"wan{model.vae_version}", on_step=on_step)
    out_of_memory = False
    try:
        model.prepare_for_sampling()
        result = sample_wan(
            high_noise_model=model.high.model, low_noise_model=model.low.model if model.low else None,
            vae=model.vae, request=request, device=model.device, size_multiple=variant.size_multiple,
            image_conditioned=variant.image_conditioned, expand_timesteps=variant.name == "ti2v-5b",
            on_step=lambda step, total, x0: reporter.step(step, x0), stage=model.stage,
        )
        host.throw_if_interrupted()
        frames_out = decode_wan_latents(model.vae, result.latents, model.device)
    except torch.OutOfMemoryError:
        # Not re-raised from here: the traceback would keep every intermediate tensor alive.
        out_of_memory = True
    finally:
        model.release_after_run()
        gc.collect()
        host.soft_empty_cache()
    if out_of_memory:
        raise OutOfMemoryError(
            f"Out of GPU memory generating {width}x{height}, {frames} frames with {model.describe()}. "
            f"Options that would fit: {oom_advice(model, width, height, frames)}."
        )
    return WanVideo(frames=frames_out, latents=result.latents, fps=float(variant.default_fps))
