"""One HunyuanVideo-Avatar generation from node inputs to frames: a portrait, an audio clip and a prompt in; the
talking video's frames, its audio trimmed to the video, and the frame rate out.

Order, and why: everything that can be refused is checked on the CPU first (fps, length mode, steps, flow shift,
image size, the audio's length and level, the face: detector or MASK), so a bad input never costs GPU time or
leaves anything half done. Then, on the GPU: text (LLaVA on prompt + reference image, CLIP-L), audio features
(whisper-tiny), the reference latents (VAE), the denoising loop (`sample_avatar`, calling the transformer), decode.

Progress: one update per denoising step and window (steps x windows in all), each with a latent preview of the
window's first frame in ComfyUI's HunyuanVideo latent format (the x0 of the conditional branch). Every update and
every window start is an interrupt point: Cancel stops within a step. Memory returns to its level after a run, an
interrupt or an error (offload_rules); out of memory says which options would fit.

The transformer's text mask is the vendor's (`AvatarTextEmbedding.mask`, not aligned with the states: avatar_encoders):
the transformer's token refiner sees it as it is and its joint attention the leading mask.sum() tokens, as the
vendor's model does.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch

from .. import host
from ..errors import InvalidInputError, OutOfMemoryError
from ..models.avatar_encoders import NEGATIVE_PROMPT
from ..models.avatar_layouts import download_command
from ..models.hunyuan_vae import decode_avatar_latents, encode_reference_latents
from .avatar_audio import (DEFAULT_MAX_SECONDS, SAMPLE_RATE, prepare_avatar_audio, trim_audio_to_video,
                           video_frame_count)
from .avatar_audio_features import avatar_audio_features
from .avatar_face_mask import FACE_CHOICES, avatar_face_mask
from .avatar_image import DEFAULT_IMAGE_SIZE, prepare_reference_image, reference_video
from .avatar_sampler import AvatarConditioning, AvatarModelInputs, AvatarSampleRequest, sample_avatar
from .avatar_schedule import DEFAULT_CFG_SCALE, DEFAULT_FLOW_SHIFT, DEFAULT_STEPS, flow_sigmas
from .avatar_validation import check_avatar_inputs
from .avatar_windows import WINDOW_LATENT_FRAMES, WINDOW_VIDEO_FRAMES, plan_avatar_windows
from .wan_generate import oom_advice

WHOLE_AUDIO = "whole audio"
FIRST_WINDOW = "first 129 frames"
LENGTH_MODES = (WHOLE_AUDIO, FIRST_WINDOW)
LATENT_PREVIEW_KIND = "hunyuanvideo"


@dataclass
class AvatarVideo:
    frames: torch.Tensor      # IMAGE [F, H, W, 3] float32 0..1
    audio: dict               # AUDIO trimmed (or padded) to F / fps seconds, at the input's rate and channels
    fps: float
    face_mask: torch.Tensor   # MASK [1, H, W]: where the audio may move the picture
    latents: torch.Tensor     # [1, 16, T, h, w] scaled latents (the denoised clip)


def _stop_if_interrupted() -> bool:
    """The sampler's cancel hook: inside ComfyUI a pending interrupt raises ComfyUI's own exception here, so the
    prompt ends as interrupted (not as an error); there is nothing else to cancel on."""
    host.throw_if_interrupted()
    return False


def _denoiser(transformer, previews: dict):
    """The sampler's denoise callable: one transformer call on a window (batch 1, or 2 = [uncond, cond]); keeps the
    conditional row's x0 (x_t - sigma v) for the progress preview."""
    @torch.no_grad()
    def denoise(latents: torch.Tensor, timestep: torch.Tensor, inputs: AvatarModelInputs) -> torch.Tensor:
        velocity = transformer(
            hidden_states=latents, timestep=timestep, encoder_hidden_states=inputs.text_states,
            encoder_attention_mask=inputs.text_mask, pooled_projections=inputs.pooled,
            reference_latents=inputs.reference_latents, audio_features=inputs.audio_features,
            face_mask=inputs.face_mask, motion_exp=inputs.motion_expression, motion_pose=inputs.motion_pose,
            fps=inputs.fps).float()
        sigma = timestep[-1:].float().view(1, 1, 1, 1, 1) / 1000.0
        previews["x0"] = (latents[-1:].float() - sigma * velocity[-1:]).detach()
        return velocity
    return denoise


def _check_request(length: str, steps: int, flow_shift: float, cfg: float) -> None:
    if length not in LENGTH_MODES:
        raise InvalidInputError(f"length must be one of {', '.join(repr(m) for m in LENGTH_MODES)} (got {length!r}).")
    flow_sigmas(steps, flow_shift)  # steps >= 1, shift > 0
    if cfg < 0:
        raise InvalidInputError(f"cfg must not be negative (got {cfg}); 1 turns guidance off.")


def generate_avatar_video(
    model,
    *,
    image,
    audio,
    prompt: str,
    negative_prompt: str = NEGATIVE_PROMPT,
    image_size: int = DEFAULT_IMAGE_SIZE,
    fps: float = 25.0,
    steps: int = DEFAULT_STEPS,
    cfg: float = DEFAULT_CFG_SCALE,
    flow_shift: float = DEFAULT_FLOW_SHIFT,
    seed: int = 0,
    face_mask=None,
    faces: str = "largest",
    length: str = WHOLE_AUDIO,
    max_audio_seconds: float = DEFAULT_MAX_SECONDS,
    batch_guidance: bool = True,
    on_step=None,
) -> AvatarVideo:
    """`image` IMAGE, `audio` AUDIO, optional `face_mask` MASK (replaces the detector); see the module docstring.
    `on_step(step, total, x0)` is called after every window of every step (tests use it; it may raise to cancel)."""
    fps = check_avatar_inputs(image_size, fps)  # the sampler node's own rule (avatar_validation)
    _check_request(length, steps, flow_shift, cfg)
    if faces not in FACE_CHOICES:
        raise InvalidInputError(f"faces must be one of {', '.join(FACE_CHOICES)} (got {faces!r}).")
    reference = prepare_reference_image(image, image_size)
    samples = prepare_avatar_audio(audio, max_audio_seconds)
    first_window = length == FIRST_WINDOW
    frames = video_frame_count(len(samples), fps)
    if frames < 1:
        raise InvalidInputError(f"The audio is {len(samples) / SAMPLE_RATE * 1000:.0f} ms long, shorter than one video "
                                f"frame at {fps:g} fps; connect a longer clip.")
    if first_window:
        frames = min(frames, WINDOW_VIDEO_FRAMES)
    if face_mask is None and model.detector is None:
        raise InvalidInputError(
            "No face detector in this HunyuanVideo-Avatar download and no face MASK connected: connect a MASK over "
            f"the face (paint it white in the mask editor), or download the detector with:\n  "
            f"{download_command(model.files.root, 'ckpts/det_align/*')}")
    mask = avatar_face_mask(reference, model.detector, face_mask, faces)
    plan = plan_avatar_windows(frames, first_window)

    total = steps * plan.windows_per_step
    reporter = host.StepReporter(total, latent_kind=LATENT_PREVIEW_KIND, on_step=on_step)
    previews: dict = {}

    def progress(step: int, _steps: int, window: int, windows: int) -> None:
        reporter.step((step - 1) * windows + window, previews.pop("x0", None))

    out_of_memory = False
    try:
        text = model.encode_text(prompt, negative_prompt, reference.pixels)
        with model.audio_encoder() as whisper:
            features = avatar_audio_features(samples, fps, whisper.encoder, whisper.feature_extractor,
                                             max_frames=WINDOW_VIDEO_FRAMES if first_window else None)
        host.throw_if_interrupted()
        model.prepare_for_sampling()
        still = reference_video(reference, frames=1)
        conditioning = AvatarConditioning(
            text_states=text.text.states, text_mask=text.text.mask, pooled=text.pooled,
            negative_text_states=text.negative_text.states, negative_text_mask=text.negative_text.mask,
            negative_pooled=text.negative_pooled,
            reference_latents=encode_reference_latents(model.vae, still, WINDOW_LATENT_FRAMES, seed),
            audio_features=features.features, face_mask=mask.latent, fps=fps)
        request = AvatarSampleRequest(seed=seed, steps=steps, flow_shift=flow_shift, cfg_scale=cfg,
                                      first_window_only=first_window, batch_guidance=batch_guidance)
        with model.stage(model.transformer):
            result = sample_avatar(_denoiser(model.transformer, previews), conditioning, request,
                                   device=model.device, on_progress=progress, is_cancelled=_stop_if_interrupted)
        host.throw_if_interrupted()
        video = decode_avatar_latents(model.vae, result.latents, result.video_frames)
    except torch.OutOfMemoryError:
        out_of_memory = True  # not re-raised here: the traceback would keep every intermediate tensor alive
    finally:
        previews.clear()
        model.release_after_run()
        gc.collect()
        host.soft_empty_cache()
    if out_of_memory:
        advice = oom_advice(model, reference.width, reference.height, frames)
        raise OutOfMemoryError(
            f"Out of GPU memory animating a {reference.width}x{reference.height} portrait, {frames} frames, with "
            f"{model.describe()}. Options that would fit: {advice} (a smaller image_size, or length "
            f"'{FIRST_WINDOW}').")
    return AvatarVideo(frames=video, audio=trim_audio_to_video(audio, video.shape[0], fps), fps=fps,
                       face_mask=mask.pixels.unsqueeze(0), latents=result.latents)
