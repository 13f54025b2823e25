"""A loaded HunyuanVideo-Avatar model: transformer, VAE, LLaVA-Llama-3, CLIP-L, whisper-tiny and the face detector,
with the user's precision / attention / offload options applied the way Wan and LTX apply them (wan_model.py).

This is what the loader node outputs (HUNYUAN_AVATAR_MODEL) and what avatar_generate consumes.

Residency: with offload "none" the transformer and the VAE are registered with ComfyUI's model management (it may
evict them); with "model" the transformer comes to the GPU for the denoising stage only, with "block" its blocks
stream in one at a time (offload_rules / offload). The encoders (LLaVA-8B is 16 GB in fp16) visit the GPU only while
they encode, whatever the offload: they run once a prompt, and the text result is cached for the last prompt and
image. The face detector runs on the CPU (one small TorchScript pass on a 416 px image).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import host
from ..errors import InvalidInputError, ModelFilesError
from . import attention, offload, precision
from .avatar_encoders import (AvatarTextConditioning, ClipTextEncoder, LlavaTextEncoder, WhisperAudioEncoder,
                              encode_avatar_text, load_clip_text_encoder, load_llava_text_encoder,
                              load_whisper_encoder)
from .avatar_face_detector import FaceDetector
from .avatar_layouts import AvatarModelFiles
from .hunyuan_avatar_checkpoint import FORMAT_VENDOR_FP8, load_hunyuan_avatar_transformer
from .hunyuan_avatar_transformer import HunyuanAvatarTransformer
from .hunyuan_vae import load_hunyuan_vae
from .offload_rules import OffloadRules

log = logging.getLogger("reelsmith")

OFFLOAD_MODES = offload.OFFLOAD_MODES
_WEIGHT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # fp8 precisions load in bf16 first


@dataclass(frozen=True)
class AvatarLoadOptions:
    precision: str = "bf16"
    attention: str = "auto"
    offload: str = "none"


def check_options(options: AvatarLoadOptions, device: torch.device) -> None:
    """Everything that can be refused before reading gigabytes."""
    if options.precision not in precision.PRECISIONS:
        raise InvalidInputError(f"precision '{options.precision}' is not one of {', '.join(precision.PRECISIONS)}.")
    if options.offload not in OFFLOAD_MODES:
        raise InvalidInputError(f"offload '{options.offload}' is not one of {', '.join(OFFLOAD_MODES)}.")
    attention.resolve_attention_backend(options.attention, device)


def _bytes_of(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


@dataclass
class AvatarModel(OffloadRules):
    files: AvatarModelFiles
    options: AvatarLoadOptions
    device: torch.device
    transformer: HunyuanAvatarTransformer
    vae: torch.nn.Module
    llava: LlavaTextEncoder
    clip: ClipTextEncoder
    whisper: WhisperAudioEncoder
    detector: FaceDetector | None
    notes: list[str] = field(default_factory=list)
    residents: list[host.ResidentModel] = field(default_factory=list)
    _text_cache: dict = field(default_factory=dict)

    def describe(self) -> str:
        return (f"HunyuanVideo-Avatar from '{self.files.label}' ({self.files.transformer.format}); precision "
                f"{self.options.precision}, attention {self.options.attention}, offload {self.options.offload}")

    @contextlib.contextmanager
    def _encoder_on_device(self, module: torch.nn.Module):
        """An encoder on the GPU for the body only (back to the offload device afterwards, also on error)."""
        if self.device.type == "cpu":
            yield
            return
        host.free_memory(_bytes_of(module), self.device)
        module.to(self.device)
        try:
            yield
        finally:
            module.to(host.offload_device())

    def encode_text(self, prompt: str, negative_prompt: str, reference_pixels: np.ndarray) -> AvatarTextConditioning:
        """Both guidance branches' text conditioning (LLaVA sees the reference image), cached for the last call."""
        key = (prompt, negative_prompt, hashlib.sha1(np.ascontiguousarray(reference_pixels).tobytes()).hexdigest())
        if key not in self._text_cache:
            with self._encoder_on_device(self.llava.model), self._encoder_on_device(self.clip.model):
                encoded = encode_avatar_text(self.llava, self.clip, prompt, reference_pixels, negative_prompt)
            self._text_cache.clear()
            self._text_cache[key] = encoded
        return self._text_cache[key]

    @contextlib.contextmanager
    def audio_encoder(self):
        """whisper-tiny on the GPU for the body (it is small; back afterwards)."""
        with self._encoder_on_device(self.whisper.encoder):
            yield self.whisper

    def prepare_for_sampling(self) -> None:
        """The VAE on the GPU; with offload "none" the transformer too (through ComfyUI's model management)."""
        if self.options.offload == "none":
            host.load_resident(self.residents)
        else:
            self.vae.to(self.device)


def _check_widths(transformer: HunyuanAvatarTransformer, llava: LlavaTextEncoder, clip: ClipTextEncoder,
                  whisper: WhisperAudioEncoder, files: AvatarModelFiles) -> None:
    """Encoders of another model (or another size) refused with what the transformer expects."""
    config = transformer.config
    llava_width = llava.model.config.text_config.hidden_size
    if llava_width != config.text_embed_dim:
        raise ModelFilesError(f"{files.encoders.llava}: a text model of width {llava_width}; HunyuanVideo-Avatar's "
                              f"transformer reads LLaVA-Llama-3-8B states of width {config.text_embed_dim}. Use the "
                              "vendor's ckpts/llava_llama_image.")
    clip_width = clip.model.config.hidden_size
    if clip_width != config.pooled_projection_dim:
        raise ModelFilesError(f"{files.encoders.clip}: a CLIP text model of width {clip_width}; the transformer takes "
                              f"CLIP-L's pooled output of width {config.pooled_projection_dim}. Use the vendor's "
                              "ckpts/text_encoder_2 (openai/clip-vit-large-patch14).")
    whisper_config = whisper.encoder.config
    if whisper_config.d_model != config.audio_channels or whisper_config.encoder_layers + 1 != config.audio_layers:
        raise ModelFilesError(f"{files.encoders.whisper}: a whisper encoder of width {whisper_config.d_model} with "
                              f"{whisper_config.encoder_layers} layers; the transformer reads whisper-tiny's "
                              f"{config.audio_layers} hidden states of width {config.audio_channels}. Use the vendor's "
                              "ckpts/whisper-tiny.")


def load_avatar_model(files: AvatarModelFiles, options: AvatarLoadOptions,
                      device: torch.device | None = None) -> AvatarModel:
    device = torch.device(device) if device is not None else host.torch_device()
    check_options(options, device)
    notes = list(files.notes)
    weight_dtype = _WEIGHT_DTYPES.get(options.precision, torch.bfloat16)
    loaded = load_hunyuan_avatar_transformer(files.transformer.weights, prefer_fp8=options.precision.startswith("fp8"),
                                             dtype=weight_dtype, label=f"{files.label} {files.transformer.weights}")
    model = loaded.model
    if loaded.files.format == FORMAT_VENDOR_FP8 and not options.precision.startswith("fp8"):
        notes.append(f"{options.precision}: only the fp8 checkpoint is here; its weights were dequantized to "
                     f"{options.precision} (the bf16 checkpoint would be exact).")
    notes += precision.apply_precision(model, options.precision, device, quantized=loaded.quantized or None)
    attention.apply_attention_backend(model, attention.resolve_attention_backend(options.attention, device))
    if options.offload != "none":
        offload.apply_offload(model, options.offload, device)

    vae = load_hunyuan_vae(files.vae, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
                           label=f"{files.label} {files.vae}")
    text_dtype = torch.float16 if device.type == "cuda" else torch.float32  # the vendor's text encoder precision
    llava = load_llava_text_encoder(files.encoders.llava, dtype=text_dtype)
    clip = load_clip_text_encoder(files.encoders.clip, dtype=text_dtype)
    whisper = load_whisper_encoder(files.encoders.whisper)  # float32, as the vendor runs it
    _check_widths(model, llava, clip, whisper, files)
    detector = FaceDetector.load(files.detector) if files.detector is not None else None
    for note in notes:
        log.info("Reelsmith: %s", note)
    residents = [host.ResidentModel(m, device) for m in (model, vae)] if options.offload == "none" else []
    return AvatarModel(files=files, options=options, device=device, transformer=model, vae=vae, llava=llava,
                       clip=clip, whisper=whisper, detector=detector, notes=notes, residents=residents)
