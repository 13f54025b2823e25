"""LTX-Video nodes: model loader, text-to-video, image-to-video, keyframes. Thin: parse widgets, call the
engine, wrap results in native ComfyUI types."""

from __future__ import annotations

from ..engine import host
from ..engine.errors import InvalidInputError
from ..engine.models import attention, precision
from ..engine.models import compile as compile_options
from ..engine.models.ltx_layouts import (
    discover_ltx_folders,
    find_upscalers,
    resolve_diffusers_folder,
    resolve_single_files,
)
from ..engine.models.ltx_loaded import LTXLoadOptions, load_ltx_model
from ..engine.models.wan_model import OFFLOAD_MODES
from ..engine.pipelines.ltx_generate import (
    Keyframe,
    generate_ltx_video,
    upscale_and_refine_ltx,
)
from ..engine.pipelines.ltx_validation import FRAME_STRIDE, SIZE_MULTIPLE, ltx_size_errors
from ..engine.pipelines.wan_generate import IMAGE_FITS
from .wan import MAX_SEED, NONE, SINGLE_FILES, _file_choices

CATEGORY = "Reelsmith/LTX-Video"
DEFAULT_NEGATIVE = "worst quality, inconsistent motion, blurry, jittery, distorted"


class ReelsmithLTXModelLoader:
    DESCRIPTION = (
        "Loads LTX-Video 0.9.x (2B or 13B, dev or distilled; the variant is read from the weights) from a diffusers "
        "folder or the vendor's single checkpoint (models/checkpoints/ltxv-*.safetensors, transformer and VAE "
        "inside) plus the T5-XXL text encoder (models/text_encoders). Distilled checkpoints sample with their own "
        "short schedule. Models stay loaded between runs until ComfyUI needs the memory."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("LTX_MODEL",)
    RETURN_NAMES = ("ltx_model",)
    OUTPUT_TOOLTIPS = ("The loaded LTX-Video model, for the Reelsmith LTX samplers.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ([SINGLE_FILES] + sorted(discover_ltx_folders(host.models_roots())), {
                    "tooltip": "An LTX-Video diffusers folder, or 'single files' to use the checkpoint and text "
                               "encoder pickers below."}),
                "checkpoint": (_file_choices("checkpoints"), {
                    "tooltip": "Single-file mode: the vendor checkpoint, e.g. ltxv-13b-0.9.8-distilled.safetensors "
                               "(models/checkpoints)."}),
                "text_encoder": (_file_choices("text_encoders"), {
                    "tooltip": "Single-file mode: T5-XXL (t5xxl_fp16.safetensors in models/text_encoders). 'none' "
                               "if you connect CLIPTextEncode conditioning (CLIP type 'ltxv') to the samplers."}),
                "precision": (list(precision.PRECISIONS), {
                    "default": "bf16", "tooltip": "Weight precision of the transformer (as for Wan)."}),
                "attention": (list(attention.ATTENTION_BACKENDS), {
                    "default": "auto", "tooltip": "Attention kernel; auto picks the fastest installed one (on H100/H200 our "
                               "FP8 kernel, quantised; cudnn is exact bf16)."}),
                "compile": (list(compile_options.COMPILE_MODES), {
                    "default": "off", "tooltip": "regional: torch.compile each transformer block once."}),
                "offload": (list(OFFLOAD_MODES), {
                    "default": "none", "tooltip": "none, model (on the GPU only while sampling) or block."}),
            }
        }

    @staticmethod
    def resolve_files(model, checkpoint, text_encoder, **_options):
        """The files these widget values name, checked complete (ModelFilesError lists what is missing, with
        the download commands); the editor's missing-model message calls this too."""
        if model == SINGLE_FILES:
            if checkpoint == NONE:
                raise InvalidInputError("Single-file mode needs a 'checkpoint' (or pick a model folder in 'model').")
            files = resolve_single_files(
                host.model_file_path("checkpoints", checkpoint),
                None if text_encoder == NONE else host.model_file_path("text_encoders", text_encoder))
        else:
            folders = discover_ltx_folders(host.models_roots())
            if model not in folders:
                raise InvalidInputError(f"LTX model folder '{model}' is not found under ComfyUI's models folders any more.")
            files = resolve_diffusers_folder(folders[model], model)
        return files

    def load(self, model, checkpoint, text_encoder, precision, attention, compile, offload):
        files = self.resolve_files(model, checkpoint, text_encoder)
        options = LTXLoadOptions(precision=precision, attention=attention, compile=compile, offload=offload)
        return (load_ltx_model(files, options),)


def _sampler_inputs() -> dict:
    return {
        "ltx_model": ("LTX_MODEL", {"tooltip": "From Reelsmith LTX Model Loader."}),
        "prompt": ("STRING", {"multiline": True, "default": "",
                              "tooltip": "What to generate; long, detailed descriptions work best. Ignored when "
                                         "'positive' conditioning is connected."}),
        "negative_prompt": ("STRING", {"multiline": True, "default": DEFAULT_NEGATIVE,
                                       "tooltip": "What to avoid (used when cfg is not 1)."}),
        "width": ("INT", {"default": 768, "min": SIZE_MULTIPLE, "max": 2048, "step": SIZE_MULTIPLE,
                          "tooltip": "Width: a multiple of 32."}),
        "height": ("INT", {"default": 512, "min": SIZE_MULTIPLE, "max": 2048, "step": SIZE_MULTIPLE,
                           "tooltip": "Height: a multiple of 32."}),
        "frames": ("INT", {"default": 97, "min": 1, "max": 1025, "step": FRAME_STRIDE,
                           "tooltip": "Number of frames, of the form 8k+1 (97 = about 4 s at 25 fps)."}),
        "frame_rate": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 120.0, "step": 1.0,
                                 "tooltip": "Frames per second; the model is conditioned on it."}),
        "steps": ("INT", {"default": 40, "min": 1, "max": 200,
                          "tooltip": "Denoising steps for dev checkpoints. Distilled checkpoints use their own schedule."}),
        "cfg": ("FLOAT", {"default": 3.0, "min": 1.0, "max": 20.0, "step": 0.1,
                          "tooltip": "Guidance scale; distilled checkpoints want 1 (no CFG, twice as fast)."}),
        "guidance_rescale": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                       "tooltip": "Rescales the guided prediction towards the positive one's spread "
                                                  "(reduces over-saturation at high cfg)."}),
        "stochastic": ("BOOLEAN", {"default": False,
                                   "tooltip": "Stochastic sampling (fresh noise each step), as the vendor recommends "
                                              "for distilled checkpoints."}),
        "decode_timestep": ("FLOAT", {"default": 0.05, "min": 0.0, "max": 1.0, "step": 0.005,
                                      "tooltip": "Timestep the 0.9.1+ VAE decodes at (the vendor's default 0.05)."}),
        "decode_noise_scale": ("FLOAT", {"default": 0.025, "min": 0.0, "max": 1.0, "step": 0.005,
                                         "tooltip": "Noise mixed into the latents before decoding (vendor: 0.025)."}),
        "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                         "tooltip": "Noise seed: the same seed and settings give the same video."}),
    }


_OPTIONAL_CONDITIONING = {
    "positive": ("CONDITIONING", {"tooltip": "Optional: from CLIPTextEncode with an 'ltxv' CLIP. Replaces 'prompt'."}),
    "negative": ("CONDITIONING", {"tooltip": "Optional: from CLIPTextEncode with an 'ltxv' CLIP."}),
}


class _LTXSamplerNode:
    CATEGORY = CATEGORY
    FUNCTION = "generate"
    RETURN_TYPES = ("IMAGE", "LATENT", "FLOAT")
    RETURN_NAMES = ("frames", "latent", "fps")
    OUTPUT_TOOLTIPS = (
        "The video frames (native IMAGE batch).",
        "The denoised latent video, decodable by core VAEDecode with the LTXV VAE.",
        "The frame rate, for Encode Video.",
    )

    @classmethod
    def VALIDATE_INPUTS(cls, width, height, frames):
        problems = ltx_size_errors(width, height, frames)
        return True if not problems else "LTX-Video: " + "; ".join(problems) + "."

    def _run(self, ltx_model, keyframes=(), image_fit="crop", positive=None, negative=None, **inputs):
        video = generate_ltx_video(ltx_model, keyframes=list(keyframes), image_fit=image_fit,
                                   positive=positive, negative=negative, **inputs)
        return (video.frames, {"samples": video.latents}, video.fps)


class ReelsmithLTXTextToVideo(_LTXSamplerNode):
    DESCRIPTION = "Text to video with LTX-Video. Progress and a preview every step; Cancel stops within a step."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": _sampler_inputs(), "optional": dict(_OPTIONAL_CONDITIONING)}

    def generate(self, **inputs):
        return self._run(**inputs)


class ReelsmithLTXImageToVideo(_LTXSamplerNode):
    DESCRIPTION = ("Image to video with LTX-Video: the image becomes the first frame (strength 1 keeps it exactly). "
                   "An image of another aspect is fitted by the 'fit' input.")

    @classmethod
    def INPUT_TYPES(cls):
        required = _sampler_inputs()
        required["image"] = ("IMAGE", {"tooltip": "The first frame (first image of the batch)."})
        required["strength"] = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                          "tooltip": "How strictly the video starts on the image (1 = exactly)."})
        required["fit"] = (list(IMAGE_FITS), {"default": "crop",
                                              "tooltip": "Aspect differs from width x height: crop, pad or stretch."})
        return {"required": required, "optional": dict(_OPTIONAL_CONDITIONING)}

    def generate(self, image, strength, fit, **inputs):
        return self._run(keyframes=[Keyframe(image[:1], 0, strength)], image_fit=fit, **inputs)


class ReelsmithLTXKeyframe:
    DESCRIPTION = ("Pins an image (or a short clip: an IMAGE batch of 8k+1 frames) at a frame of the video with a "
                   "strength. Chain several, then connect to Reelsmith LTX Keyframes.")
    CATEGORY = CATEGORY
    FUNCTION = "add"
    RETURN_TYPES = ("LTX_KEYFRAMES",)
    RETURN_NAMES = ("keyframes",)
    OUTPUT_TOOLTIPS = ("The keyframes so far, this one added.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "One image, or a short clip of 8k+1 frames."}),
                "frame_index": ("INT", {"default": 0, "min": 0, "max": 1024,
                                        "tooltip": "Video frame of the first image (a clip must start at a multiple of 8)."}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                       "tooltip": "1 = the video shows exactly this there; lower lets it drift."}),
            },
            "optional": {"keyframes": ("LTX_KEYFRAMES", {"tooltip": "Earlier keyframes to add to."})},
        }

    def add(self, images, frame_index, strength, keyframes=()):
        return (tuple(keyframes) + (Keyframe(images, frame_index, strength),),)


class ReelsmithLTXKeyframes(_LTXSamplerNode):
    DESCRIPTION = ("Video through keyframes with LTX-Video: any number of images or short clips pinned at chosen "
                   "frames (from Reelsmith LTX Keyframe nodes), e.g. a first and a last frame.")

    @classmethod
    def INPUT_TYPES(cls):
        required = _sampler_inputs()
        required["keyframes"] = ("LTX_KEYFRAMES", {"tooltip": "From one or more chained Reelsmith LTX Keyframe nodes."})
        required["fit"] = (list(IMAGE_FITS), {"default": "crop",
                                              "tooltip": "Aspect differs from width x height: crop, pad or stretch."})
        return {"required": required, "optional": dict(_OPTIONAL_CONDITIONING)}

    def generate(self, keyframes, fit, **inputs):
        for keyframe in keyframes:
            if keyframe.frame_index >= inputs["frames"]:
                raise InvalidInputError(
                    f"A keyframe is pinned at frame {keyframe.frame_index}, outside the {inputs['frames']}-frame "
                    f"video (last frame: {inputs['frames'] - 1}).")
        return self._run(keyframes=keyframes, image_fit=fit, **inputs)


class ReelsmithLTXLatentUpscale:
    DESCRIPTION = (
        "The vendor's multi-scale recipe, second stage: the LTX spatial latent upscaler doubles the width and height "
        "of a latent video from a Reelsmith LTX sampler, then a short refinement pass (partial denoise) restores "
        "detail at the new size. Generate small (e.g. 640x352), then upscale to about 720p, faster than sampling "
        "at 720p directly."
    )
    CATEGORY = CATEGORY
    FUNCTION = "upscale"
    RETURN_TYPES = ("IMAGE", "LATENT", "FLOAT")
    RETURN_NAMES = ("frames", "latent", "fps")
    OUTPUT_TOOLTIPS = (
        "The refined video frames at twice the width and height (native IMAGE batch).",
        "The refined latent video, decodable by core VAEDecode with the LTXV VAE.",
        "The frame rate, for Encode Video.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        sampler = _sampler_inputs()
        return {
            "required": {
                "ltx_model": sampler["ltx_model"],
                "latent": ("LATENT", {"tooltip": "The latent output of a Reelsmith LTX sampler (same model)."}),
                "upscaler": (sorted(find_upscalers(host.models_roots())) or [NONE], {
                    "tooltip": "The spatial latent upscaler, e.g. ltxv-spatial-upscaler-0.9.8.safetensors in "
                               "models/latent_upscale_models."}),
                "prompt": sampler["prompt"],
                "negative_prompt": sampler["negative_prompt"],
                "frame_rate": sampler["frame_rate"],
                "steps": ("INT", {"default": 10, "min": 1, "max": 200,
                                  "tooltip": "Steps of the full schedule; only those at noise levels <= denoise run."}),
                "cfg": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 20.0, "step": 0.1,
                                  "tooltip": "Guidance scale of the refinement; 1 (no CFG) as the vendor's second pass."}),
                "denoise": ("FLOAT", {"default": 0.4, "min": 0.01, "max": 1.0, "step": 0.01,
                                      "tooltip": "How much of the upscaled video is re-noised and redrawn: low keeps "
                                                 "it closer to the first pass, high adds detail but may drift. Too "
                                                 "low for the schedule leaves no step (an error says so)."}),
                "seed": sampler["seed"],
                "decode_timestep": sampler["decode_timestep"],
                "decode_noise_scale": sampler["decode_noise_scale"],
            },
            "optional": dict(_OPTIONAL_CONDITIONING),
        }

    def upscale(self, ltx_model, latent, upscaler, **inputs):
        files = find_upscalers(host.models_roots())
        if upscaler not in files:
            raise InvalidInputError(f"LTX upscaler '{upscaler}' is not found under models/latent_upscale_models; "
                                    "download ltxv-spatial-upscaler-0.9.8.safetensors from Lightricks/LTX-Video.")
        video = upscale_and_refine_ltx(ltx_model, files[upscaler], latent["samples"], **inputs)
        return (video.frames, {"samples": video.latents}, video.fps)


NODE_CLASS_MAPPINGS = {
    "ReelsmithLTXModelLoader": ReelsmithLTXModelLoader,
    "ReelsmithLTXTextToVideo": ReelsmithLTXTextToVideo,
    "ReelsmithLTXImageToVideo": ReelsmithLTXImageToVideo,
    "ReelsmithLTXKeyframe": ReelsmithLTXKeyframe,
    "ReelsmithLTXKeyframes": ReelsmithLTXKeyframes,
    "ReelsmithLTXLatentUpscale": ReelsmithLTXLatentUpscale,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ReelsmithLTXModelLoader": "Reelsmith LTX Model Loader",
    "ReelsmithLTXTextToVideo": "Reelsmith LTX Text to Video",
    "ReelsmithLTXImageToVideo": "Reelsmith LTX Image to Video",
    "ReelsmithLTXKeyframe": "Reelsmith LTX Keyframe",
    "ReelsmithLTXKeyframes": "Reelsmith LTX Keyframes",
    "ReelsmithLTXLatentUpscale": "Reelsmith LTX Latent Upscale",
}
