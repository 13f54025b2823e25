"""Wan 2.2 nodes: model loader, LoRA, text-to-video and image-to-video. Thin: parse widgets, call the
engine, wrap results in native ComfyUI types."""

from __future__ import annotations


from ..engine import host
from ..engine.errors import InvalidInputError
from ..engine.models import attention, compile as compile_options, precision
from ..engine.models.lora import LoraStackEntry, load_wan_lora_cached
from ..engine.models.wan_layouts import discover_wan_folders, resolve_folder, resolve_single_files
from ..engine.models.wan_model import OFFLOAD_MODES, WanLoadOptions, load_wan_model
from ..engine.pipelines.schedulers import SCHEDULERS
from ..engine.pipelines.wan_generate import IMAGE_FITS, generate_wan_video
from ..engine.models.wan_variants import WAN_VARIANTS
from ..engine.parallel.parallel_plan import GPU_CHOICES, PARALLEL_MODES
from ..engine.pipelines.wan_validation import FRAME_STRIDE, wan_size_errors

CATEGORY = "Reelsmith/Wan 2.2"
SINGLE_FILES = "single files (pick below)"
NONE = "none"
MAX_SEED = 0xFFFFFFFFFFFFFFFF
# The finest size step any Wan variant accepts (TI2V-5B needs twice this; the editor snaps per variant).
SIZE_STEP = min(variant.size_multiple for variant in WAN_VARIANTS.values())

# Wan's recommended negative prompt, in English (the official one is the Chinese equivalent).
DEFAULT_NEGATIVE = (
    "vivid colors, overexposed, static, blurry details, subtitles, style, artwork, painting, still image, "
    "overall gray, worst quality, low quality, JPEG artifacts, ugly, deformed, extra fingers, poorly drawn hands, "
    "poorly drawn face, malformed limbs, fused fingers, motionless frame, cluttered background, three legs, "
    "crowded background, walking backwards"
)


def _folder_choices() -> list[str]:
    return sorted(discover_wan_folders(host.models_roots()))


def _file_choices(folder: str) -> list[str]:
    return [NONE] + sorted(host.list_model_files(folder))


class ReelsmithWanModelLoader:
    DESCRIPTION = (
        "Loads Wan 2.2 (T2V A14B with both experts, I2V A14B with both experts, or TI2V-5B) from a diffusers "
        "folder, a Wan-AI release folder, or ComfyUI single files. The variant is read from the weights. "
        "Models stay loaded between runs until ComfyUI needs the memory."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("WAN_MODEL",)
    RETURN_NAMES = ("wan_model",)
    OUTPUT_TOOLTIPS = ("The loaded Wan 2.2 model, for the Reelsmith Wan samplers and LoRA node.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ([SINGLE_FILES] + _folder_choices(), {
                    "tooltip": "A Wan 2.2 diffusers folder (models/diffusers/...) or Wan-AI release folder "
                               "(models/<name>/ with high_noise_model/ and low_noise_model/), or 'single files' "
                               "to use the four file pickers below."}),
                "diffusion_model": (_file_choices("diffusion_models"), {
                    "tooltip": "Single-file mode: the high-noise expert of A14B, or the TI2V-5B model "
                               "(models/diffusion_models; fp8_scaled files work)."}),
                "diffusion_model_low_noise": (_file_choices("diffusion_models"), {
                    "tooltip": "Single-file mode: the low-noise expert of A14B; 'none' for TI2V-5B."}),
                "text_encoder": (_file_choices("text_encoders"), {
                    "tooltip": "Single-file mode: UMT5-XXL (models/text_encoders). 'none' if you connect "
                               "CLIPTextEncode conditioning to the samplers instead."}),
                "vae": (_file_choices("vae"), {
                    "tooltip": "Single-file mode: wan_2.1_vae for A14B, wan2.2_vae for TI2V-5B (models/vae)."}),
                "precision": (list(precision.PRECISIONS), {
                    "default": "bf16",
                    "tooltip": "Weight precision of the transformers. fp8_e4m3fn halves memory (bf16 compute); "
                               "fp8_e4m3fn_fast also runs fp8 matmuls on GPUs that have them (H100, H200, "
                               "B200, L4, L40S, RTX 40xx), otherwise it falls back to fp8_e4m3fn and says so."}),
                "attention": (list(attention.ATTENTION_BACKENDS), {
                    "default": "auto",
                    "tooltip": "Attention kernel. auto picks the fastest installed one for this GPU: on H100/H200 "
                               "our FP8 kernel (quantised: cosine 0.9999 to exact; cudnn is exact bf16); sage and "
                               "flash3 need their packages (an error says what to install)."}),
                "compile": (list(compile_options.COMPILE_MODES), {
                    "default": "off",
                    "tooltip": "regional: torch.compile each transformer block once (faster steps after a "
                               "first slow run)."}),
                "offload": (list(OFFLOAD_MODES), {
                    "default": "none",
                    "tooltip": "none: everything stays on the GPU. model: one expert on the GPU at a time. "
                               "block: stream transformer blocks from CPU memory (slowest, least VRAM)."}),
            },
            "optional": {
                "gpus": (list(GPU_CHOICES), {
                    "default": "1",
                    "tooltip": "GPUs that share each denoising step of one clip. Above 1, worker processes (one "
                               "per GPU, each holding the model) are started and kept warm between prompts; "
                               "offload must be 'none'. 'all' uses every visible GPU (they must be the same "
                               "model)."}),
                "parallel": (list(PARALLEL_MODES), {
                    "default": "auto",
                    "tooltip": "How several GPUs split a step. auto: per step, the split measured fastest: with "
                               "CFG the prompt and negative passes on different GPUs (cfg), without CFG a slice of "
                               "the video per GPU (sequence). sequence: always a slice per GPU. cfg: 2 GPUs, one "
                               "pass each (needs CFG above 1). sequence+cfg: both, for 4 or 8 GPUs."}),
            },
        }

    @staticmethod
    def resolve_files(model, diffusion_model, diffusion_model_low_noise, text_encoder, vae, **_options):
        """The files these widget values name, checked complete (ModelFilesError lists what is missing). The
        editor's missing-model message calls this too, so it says exactly what loading would."""
        if model == SINGLE_FILES:
            if diffusion_model == NONE or vae == NONE:
                raise InvalidInputError(
                    "Single-file mode needs at least 'diffusion_model' and 'vae' (and 'diffusion_model_low_noise' "
                    "for A14B); or pick a model folder in 'model'.")
            files = resolve_single_files(
                host.model_file_path("diffusion_models", diffusion_model),
                None if diffusion_model_low_noise == NONE else host.model_file_path("diffusion_models", diffusion_model_low_noise),
                None if text_encoder == NONE else host.model_file_path("text_encoders", text_encoder),
                host.model_file_path("vae", vae),
            )
        else:
            folders = discover_wan_folders(host.models_roots())
            if model not in folders:
                raise InvalidInputError(f"Wan model folder '{model}' is not found under ComfyUI's models folders any more.")
            files = resolve_folder(folders[model], model)
        return files

    def load(self, model, diffusion_model, diffusion_model_low_noise, text_encoder, vae,
             precision, attention, compile, offload, gpus="1", parallel="auto"):
        files = self.resolve_files(model, diffusion_model, diffusion_model_low_noise, text_encoder, vae)
        options = WanLoadOptions(precision=precision, attention=attention, compile=compile, offload=offload,
                                 gpus=str(gpus), parallel=parallel)
        return (load_wan_model(files, options),)


class ReelsmithWanLoRA:
    DESCRIPTION = (
        "Adds a LoRA (diffusers, ComfyUI/kohya or lightx2v format) to a Wan 2.2 model, on the high-noise "
        "expert, the low-noise expert or both. Chain several; the loaded model itself is not modified until "
        "a sampler runs, so changing a LoRA never needs a reload."
    )
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("WAN_MODEL",)
    RETURN_NAMES = ("wan_model",)
    OUTPUT_TOOLTIPS = ("The same model with this LoRA added to its LoRA list.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "wan_model": ("WAN_MODEL", {"tooltip": "From Reelsmith Wan Model Loader or another LoRA node."}),
                "lora_name": (sorted(host.list_model_files("loras")), {"tooltip": "A LoRA file in models/loras."}),
                "strength": ("FLOAT", {"default": 1.0, "min": -4.0, "max": 4.0, "step": 0.05,
                                       "tooltip": "Multiplier of the LoRA's change; 0 disables it."}),
                "apply_to": (["both", "high", "low"], {
                    "default": "both",
                    "tooltip": "Which A14B expert gets it: high-noise (early steps, motion and layout), "
                               "low-noise (late steps, detail) or both. TI2V-5B has one model: use 'both'."}),
            }
        }

    def apply(self, wan_model, lora_name, strength, apply_to):
        path = host.model_file_path("loras", lora_name)
        load_wan_lora_cached(str(path))  # read and check the file now, so a bad LoRA fails at this node
        if apply_to == "low" and wan_model.low is None:
            raise InvalidInputError(f"{wan_model.variant.display_name} has no low-noise expert: set apply_to to 'both'.")
        return (wan_model.with_loras([LoraStackEntry(str(path), float(strength), apply_to)]),)


def _sampler_inputs(cfg_high: float, cfg_low: float, flow_shift: float, boundary: float) -> dict:
    return {
        "wan_model": ("WAN_MODEL", {"tooltip": "From Reelsmith Wan Model Loader (or Reelsmith Wan LoRA)."}),
        "prompt": ("STRING", {"multiline": True, "default": "",
                              "tooltip": "What to generate. Ignored when 'positive' conditioning is connected."}),
        "negative_prompt": ("STRING", {"multiline": True, "default": DEFAULT_NEGATIVE,
                                       "tooltip": "What to avoid (used when CFG is above 1). Ignored when "
                                                  "'negative' conditioning is connected."}),
        "width": ("INT", {"default": 832, "min": SIZE_STEP, "max": 2048, "step": SIZE_STEP,
                          "tooltip": "Width in pixels: a multiple of 16 (32 for TI2V-5B)."}),
        "height": ("INT", {"default": 480, "min": SIZE_STEP, "max": 2048, "step": SIZE_STEP,
                           "tooltip": "Height in pixels: a multiple of 16 (32 for TI2V-5B)."}),
        "frames": ("INT", {"default": 81, "min": 1, "max": 1025, "step": FRAME_STRIDE,
                           "tooltip": "Number of frames, of the form 4k+1 (81 = 5 s at 16 fps; TI2V-5B: 121 = 5 s at 24 fps)."}),
        "steps": ("INT", {"default": 40, "min": 1, "max": 200,
                          "tooltip": "Denoising steps (40 for A14B, 50 for TI2V-5B; 4 with a distillation LoRA)."}),
        "cfg_high": ("FLOAT", {"default": cfg_high, "min": 1.0, "max": 20.0, "step": 0.1,
                               "tooltip": "Guidance of the high-noise expert (TI2V-5B: its only guidance). 1 = no CFG (twice as fast)."}),
        "cfg_low": ("FLOAT", {"default": cfg_low, "min": 1.0, "max": 20.0, "step": 0.1,
                              "tooltip": "Guidance of the low-noise expert (A14B only)."}),
        "flow_shift": ("FLOAT", {"default": flow_shift, "min": 0.0, "max": 100.0, "step": 0.1,
                                 "tooltip": "Timestep shift of the flow schedule (T2V A14B: 12, I2V A14B and TI2V-5B: 5)."}),
        "boundary": ("FLOAT", {"default": boundary, "min": 0.0, "max": 1.0, "step": 0.005,
                               "tooltip": "Noise level where the low-noise expert takes over (T2V 0.875, I2V 0.9). "
                                          "Ignored by TI2V-5B."}),
        "scheduler": (list(SCHEDULERS), {"default": "unipc", "tooltip": "Sampler: UniPC (Wan's default), Euler or DPM++."}),
        "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                         "tooltip": "Noise seed: the same seed and settings give the same video."}),
    }


_OPTIONAL_CONDITIONING = {
    "positive": ("CONDITIONING", {"tooltip": "Optional: from CLIPTextEncode with a 'wan' CLIP (umt5). Replaces 'prompt'."}),
    "negative": ("CONDITIONING", {"tooltip": "Optional: from CLIPTextEncode with a 'wan' CLIP. Replaces 'negative_prompt'."}),
}


def _conditioning_tensor(conditioning):
    """Native CONDITIONING ([[tensor, {...}], ...]) -> the first entry's embeddings."""
    if conditioning is None:
        return None
    return conditioning[0][0]


def _validate_sizes(width, height, frames):
    problems = wan_size_errors(width, height, frames, SIZE_STEP)
    return True if not problems else "Wan 2.2: " + "; ".join(problems) + "."


class _WanSamplerNode:
    CATEGORY = CATEGORY
    FUNCTION = "generate"
    RETURN_TYPES = ("IMAGE", "LATENT", "FLOAT")
    RETURN_NAMES = ("frames", "latent", "fps")
    OUTPUT_TOOLTIPS = (
        "The video frames (native IMAGE batch, one image per frame).",
        "The denoised latent video, decodable by core VAEDecode with the Wan VAE.",
        "Frame rate the model was trained for (16 for A14B, 24 for TI2V-5B), for CreateVideo.",
    )

    @classmethod
    def VALIDATE_INPUTS(cls, width, height, frames):
        return _validate_sizes(width, height, frames)

    def _run(self, wan_model, prompt, negative_prompt, width, height, frames, steps, cfg_high, cfg_low,
             flow_shift, boundary, scheduler, seed, positive=None, negative=None, **image_inputs):
        video = generate_wan_video(
            wan_model, prompt=prompt, negative_prompt=negative_prompt, width=width, height=height, frames=frames,
            steps=steps, cfg_high=cfg_high, cfg_low=cfg_low, flow_shift=flow_shift, boundary=boundary,
            scheduler=scheduler, seed=seed, positive_embeds=_conditioning_tensor(positive),
            negative_embeds=_conditioning_tensor(negative), **image_inputs,
        )
        return (video.frames, {"samples": video.latents}, video.fps)


class ReelsmithWan22TextToVideo(_WanSamplerNode):
    DESCRIPTION = ("Text to video with Wan 2.2 (T2V A14B, or TI2V-5B without an image). Progress and a "
                   "preview on every step; Cancel stops within a step.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": _sampler_inputs(3.0, 4.0, 12.0, 0.875), "optional": dict(_OPTIONAL_CONDITIONING)}

    def generate(self, **inputs):
        return self._run(**inputs)


class ReelsmithWan22ImageToVideo(_WanSamplerNode):
    DESCRIPTION = ("Image to video with Wan 2.2 I2V A14B (start image, optional end image) or TI2V-5B "
                   "(start image). The image is fitted to width x height by the 'fit' input.")

    @classmethod
    def INPUT_TYPES(cls):
        required = _sampler_inputs(3.5, 3.5, 5.0, 0.9)
        required["start_image"] = ("IMAGE", {"tooltip": "The first frame of the video (first image of the batch)."})
        required["fit"] = (list(IMAGE_FITS), {
            "default": "crop",
            "tooltip": "When the image's aspect differs from width x height: crop (centre crop), pad (black "
                       "bars) or stretch."})
        optional = dict(_OPTIONAL_CONDITIONING)
        optional["end_image"] = ("IMAGE", {"tooltip": "Optional last frame (I2V A14B only): the video ends on it."})
        return {"required": required, "optional": optional}

    def generate(self, start_image, fit, end_image=None, **inputs):
        return self._run(start_image=start_image, end_image=end_image, image_fit=fit, require_image=True, **inputs)


NODE_CLASS_MAPPINGS = {
    "ReelsmithWanModelLoader": ReelsmithWanModelLoader,
    "ReelsmithWanLoRA": ReelsmithWanLoRA,
    "ReelsmithWan22TextToVideo": ReelsmithWan22TextToVideo,
    "ReelsmithWan22ImageToVideo": ReelsmithWan22ImageToVideo,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ReelsmithWanModelLoader": "Reelsmith Wan Model Loader",
    "ReelsmithWanLoRA": "Reelsmith Wan LoRA",
    "ReelsmithWan22TextToVideo": "Reelsmith Wan 2.2 Text to Video",
    "ReelsmithWan22ImageToVideo": "Reelsmith Wan 2.2 Image to Video",
}
