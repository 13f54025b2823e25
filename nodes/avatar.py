"""HunyuanVideo-Avatar nodes: loader and sampler (portrait + audio + prompt -> talking video with its audio). Thin:
parse widgets, call the engine, wrap results in native ComfyUI types."""

from __future__ import annotations

import pathlib

from ..engine import host
from ..engine.errors import InvalidInputError
from ..engine.models import attention, precision
from ..engine.models.avatar_encoders import NEGATIVE_PROMPT
from ..engine.models.avatar_layouts import (DEFAULT_FOLDER, discover_avatar_folders, download_command,
                                           is_avatar_folder, resolve_avatar_folder)
from ..engine.models.avatar_model import OFFLOAD_MODES, AvatarLoadOptions, load_avatar_model
from ..engine.pipelines.avatar_audio import DEFAULT_MAX_SECONDS
from ..engine.pipelines.avatar_face_mask import FACE_CHOICES
from ..engine.pipelines.avatar_generate import LENGTH_MODES, WHOLE_AUDIO, generate_avatar_video
from ..engine.pipelines.avatar_image import DEFAULT_IMAGE_SIZE, MIN_INPUT_SIDE, SIZE_STEP
from ..engine.pipelines.avatar_validation import (FPS_CHOICES, MAX_IMAGE_SIZE, MODEL_NAME, avatar_input_errors,
                                                  check_avatar_inputs)
from .wan import MAX_SEED

CATEGORY = "Reelsmith/Hunyuan Video Avatar"
AVATAR_MODEL = "HUNYUAN_AVATAR_MODEL"
LICENCE_NOTICE = (
    "Licence: HunyuanVideo-Avatar's weights are under the Tencent Hunyuan Community License, which does not apply "
    "in the European Union, the United Kingdom or South Korea (no use there), and its outputs may not be used to "
    "improve other AI models."
)


def _folder_choices() -> list[str]:
    """Every vendor folder found, and always the default name, so a workflow that names it validates and the
    loader can say what to download when it is missing."""
    found = sorted(discover_avatar_folders(host.models_roots()))
    return found if DEFAULT_FOLDER in found else [DEFAULT_FOLDER] + found


def avatar_folder(model: str) -> pathlib.Path:
    """The vendor folder the loader's `model` names, or where it belongs when it is not there yet (under the first
    models folder, where `hf download --local-dir` or download_models.py puts it)."""
    folders = discover_avatar_folders(host.models_roots())
    if model in folders:
        return folders[model]
    roots = host.models_roots()
    return roots[0] / model if roots else pathlib.Path(model)


def uses_fp8_checkpoint(precision: str) -> bool:
    """The fp8 precisions load the vendor's fp8 pair when both checkpoints are there."""
    return str(precision).startswith("fp8")


class ReelsmithHunyuanAvatarLoader:
    DESCRIPTION = (
        "Loads HunyuanVideo-Avatar from the vendor's folder (models/HunyuanVideo-Avatar/ as `hf download "
        "tencent/HunyuanVideo-Avatar --local-dir models/HunyuanVideo-Avatar` leaves it): the transformer (bf16 "
        "mp_rank_00_model_states.pt or the fp8 pair), the HunyuanVideo VAE, LLaVA-Llama-3, CLIP-L, whisper-tiny and "
        "the face detector. Missing files are named with the command that downloads them. " + LICENCE_NOTICE
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (AVATAR_MODEL,)
    RETURN_NAMES = ("avatar_model",)
    OUTPUT_TOOLTIPS = ("The loaded HunyuanVideo-Avatar model, for the Reelsmith Hunyuan Avatar Sampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (_folder_choices(), {
                    "default": DEFAULT_FOLDER,
                    "tooltip": "The HunyuanVideo-Avatar download folder (one level under models/ or models/diffusers/, "
                               "holding ckpts/). " + LICENCE_NOTICE}),
                "precision": (list(precision.PRECISIONS), {
                    "default": "bf16",
                    "tooltip": "Transformer weights. fp8_e4m3fn / fp8_e4m3fn_fast use the vendor's fp8 checkpoint when "
                               "it is there (half the memory; _fast also runs fp8 matmuls on H100/H200/B200/L40S/RTX "
                               "40xx, elsewhere it falls back and says so); bf16/fp16 use the bf16 checkpoint."}),
                "attention": (list(attention.ATTENTION_BACKENDS), {
                    "default": "auto",
                    "tooltip": "Attention kernel of the transformer; auto picks the fastest installed one."}),
                "offload": (list(OFFLOAD_MODES), {
                    "default": "none",
                    "tooltip": "none: the transformer stays on the GPU. model: on the GPU only while sampling. block: "
                               "its blocks stream from CPU memory (least VRAM, slowest). The text encoders visit the "
                               "GPU only while encoding in every mode."}),
            }
        }

    @staticmethod
    def resolve_files(model, precision, **_options):
        """The files these widget values name, checked complete (ModelFilesError lists what is missing, with the
        download commands); nothing is read. The editor's missing-model status asks the same folder."""
        folder = avatar_folder(model)
        if not is_avatar_folder(folder):
            raise InvalidInputError(
                f"HunyuanVideo-Avatar folder '{model}' is not under ComfyUI's models folders. Download it with:\n  "
                f"{download_command(folder)}")
        return resolve_avatar_folder(folder, model, prefer_fp8=uses_fp8_checkpoint(precision))

    def load(self, model, precision, attention, offload):
        files = self.resolve_files(model, precision)
        options = AvatarLoadOptions(precision=precision, attention=attention, offload=offload)
        return (load_avatar_model(files, options),)


class ReelsmithHunyuanAvatarSampler:
    DESCRIPTION = (
        "A talking video from a portrait, an audio clip and a prompt (HunyuanVideo-Avatar): the face, lips and head "
        "move with the speech, the rest of the picture stays. The whole audio is rendered in overlapping 129-frame "
        "windows (or only the first 129 frames); the audio comes back trimmed to the video. Connect the frames, "
        "audio and fps to core CreateVideo, then SaveVideo. Progress and a preview on every step and window; Cancel "
        "stops within a step. " + LICENCE_NOTICE
    )
    CATEGORY = CATEGORY
    FUNCTION = "generate"
    RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT")
    RETURN_NAMES = ("frames", "audio", "fps")
    OUTPUT_TOOLTIPS = (
        "The video frames (native IMAGE batch, one image per frame).",
        "The input audio trimmed to the video's length (at its own sample rate and channels), for CreateVideo.",
        "The frame rate (25 or 12.5), for CreateVideo.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "avatar_model": (AVATAR_MODEL, {"tooltip": "From Reelsmith Hunyuan Avatar Loader."}),
                "image": ("IMAGE", {"tooltip": "The portrait (first image of the batch), at least 256 px on its "
                                               "shorter side, with a clearly visible face."}),
                "audio": ("AUDIO", {"tooltip": "The speech or song that drives the face: any sample rate or channel "
                                               "count (resampled to 16 kHz mono for the model)."}),
                "prompt": ("STRING", {"multiline": True, "default": "",
                                      "tooltip": "What the scene looks like and how the person behaves (the vendor "
                                                 "prefixes it with 'Authentic, Realistic, Natural, High-quality, "
                                                 "Lens-Fixed, ')."}),
                "negative_prompt": ("STRING", {"multiline": True, "default": NEGATIVE_PROMPT,
                                               "tooltip": "What to avoid (the vendor's default), used while the text "
                                                          "is guided (the first ten steps)."}),
                "image_size": ("INT", {"default": DEFAULT_IMAGE_SIZE, "min": MIN_INPUT_SIDE, "max": MAX_IMAGE_SIZE,
                                       "step": SIZE_STEP,
                                       "tooltip": "The video's shorter side in pixels (multiple of 64; the model was "
                                                  "trained at 704). The portrait keeps its aspect; the area is capped "
                                                  "as the vendor caps it (704 x 1216 at 704)."}),
                "fps": (list(FPS_CHOICES), {"default": "25",
                                            "tooltip": "Frame rate: 25 (the vendor's) or 12.5 (half the frames for "
                                                       "the same audio)."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 200,
                                  "tooltip": "Denoising steps (the vendor's 50)."}),
                "cfg": ("FLOAT", {"default": 7.5, "min": 1.0, "max": 20.0, "step": 0.1,
                                  "tooltip": "Guidance: text + audio guidance falling from this value over the first "
                                             "ten steps, then the vendor's fixed audio-only guidance. 1 = no guidance "
                                             "(half the work, weaker lip sync)."}),
                "flow_shift": ("FLOAT", {"default": 5.0, "min": 0.1, "max": 100.0, "step": 0.1,
                                         "tooltip": "Timestep shift of the flow schedule (the vendor's 5)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                                 "tooltip": "Noise seed: the same seed and settings give the same video."}),
                "length": (list(LENGTH_MODES), {"default": WHOLE_AUDIO,
                                                "tooltip": "whole audio: as long as the audio, in 129-frame windows "
                                                           "that overlap and move every step; first 129 frames: one "
                                                           "window only (5.2 s at 25 fps)."}),
                "max_audio_seconds": ("FLOAT", {"default": DEFAULT_MAX_SECONDS, "min": 1.0, "max": 600.0,
                                                "step": 1.0,
                                                "tooltip": "Longer audio is refused (every 5.2 s adds a window to "
                                                           "each step, so run time grows with the length)."}),
                "faces": (list(FACE_CHOICES), {"default": "largest",
                                               "tooltip": "Which detected faces the audio may move: the largest (the "
                                                          "vendor's choice) or all. Ignored when a mask is connected."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Optional face MASK drawn on the portrait (white = may move): replaces "
                                             "the face detector, e.g. for several faces or a face it misses."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, image_size, fps):
        """The engine's rule (avatar_validation); taking these inputs replaces ComfyUI's own checks of them."""
        problems = avatar_input_errors(image_size, fps)
        return True if not problems else f"{MODEL_NAME}: " + "; ".join(problems) + "."

    def generate(self, avatar_model, image, audio, prompt, negative_prompt, image_size, fps, steps, cfg, flow_shift,
                 seed, length, max_audio_seconds, faces, mask=None):
        fps = check_avatar_inputs(image_size, fps)  # before anything else, as the engine's entry point does too
        video = generate_avatar_video(
            avatar_model, image=image, audio=audio, prompt=prompt, negative_prompt=negative_prompt,
            image_size=image_size, fps=fps, steps=steps, cfg=cfg, flow_shift=flow_shift, seed=seed,
            face_mask=mask, faces=faces, length=length, max_audio_seconds=max_audio_seconds)
        return (video.frames, video.audio, video.fps)


NODE_CLASS_MAPPINGS = {
    "ReelsmithHunyuanAvatarLoader": ReelsmithHunyuanAvatarLoader,
    "ReelsmithHunyuanAvatarSampler": ReelsmithHunyuanAvatarSampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ReelsmithHunyuanAvatarLoader": "Reelsmith Hunyuan Avatar Loader",
    "ReelsmithHunyuanAvatarSampler": "Reelsmith Hunyuan Avatar Sampler",
}
