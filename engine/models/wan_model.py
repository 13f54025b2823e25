"""A loaded Wan 2.2 model: its experts, VAE and text encoder with the user's speed/memory options applied.

This is what the loader node outputs (as WAN_MODEL) and what the samplers consume. LoRA nodes return a
copy that shares the loaded modules and records which LoRAs it wants; the weights are patched just
before sampling, so chained or changed LoRA nodes never corrupt a cached model.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import torch

from .. import host
from ..errors import InvalidInputError, ModelFilesError
# (importing the pool also stops GPU workers that an earlier import of the pack left in this process)
from ..parallel.parallel_plan import make_parallel_plan
from ..parallel.parallel_wan import load_parallel_experts
from . import attention, compile as compile_options, offload, precision
from .offload_rules import OffloadRules
from .lora import LoraStackEntry, WanLoraPatcher, entries_for_expert, load_wan_lora_cached
from .umt5_encoder import UMT5TextEncoder, load_umt5_encoder
from .wan_layouts import WanModelFiles
from .wan_transformer import LoadedTransformer, load_wan_transformer_at_precision
from .wan_vae import load_wan_vae
from .wan_variants import WanVariant

log = logging.getLogger("reelsmith")

OFFLOAD_MODES = ("none", "model", "block")
COMPILE_MODES = ("off", "regional")


@dataclass(frozen=True)
class WanLoadOptions:
    precision: str = "bf16"
    attention: str = "auto"
    compile: str = "off"
    offload: str = "none"
    gpus: str = "1"               # "1", "2", "4", "8" or "all": more than one runs the experts in GPU workers
    parallel: str = "auto"        # how several GPUs split a step (engine/parallel/parallel_plan.py)


@dataclass
class WanExpert:
    name: str                      # "high" | "low" (TI2V-5B: "high" is its only model)
    model: torch.nn.Module
    resident: host.ResidentModel | None
    lora_patcher: WanLoraPatcher


@dataclass
class WanModel(OffloadRules):
    files: WanModelFiles
    variant: WanVariant
    options: WanLoadOptions
    device: torch.device
    high: WanExpert
    low: WanExpert | None
    vae: torch.nn.Module
    vae_version: str
    text_encoder: UMT5TextEncoder | None
    notes: list[str] = field(default_factory=list)
    loras: tuple[LoraStackEntry, ...] = ()
    # With offload "none" the VAE and text encoder are registered with ComfyUI too, so it can evict them.
    vae_resident: host.ResidentModel | None = None
    text_resident: host.ResidentModel | None = None
    parallel_plan: object | None = None  # ParallelPlan when the experts live in GPU workers (gpus > 1)
    _text_cache: dict = field(default_factory=dict)

    def with_loras(self, entries) -> "WanModel":
        clone = copy.copy(self)
        clone.loras = tuple(self.loras) + tuple(entries)
        return clone

    def describe(self) -> str:
        experts = "high-noise + low-noise experts" if self.low is not None else "one transformer"
        text = (f"{self.variant.display_name} ({experts}) from '{self.files.label}' [{self.files.layout}]; "
                f"precision {self.options.precision}, attention {self.options.attention}, "
                f"compile {self.options.compile}, offload {self.options.offload}")
        return text + (f"; {self.parallel_plan.describe()}" if self.parallel_plan is not None else "")

    # ------------------------------------------------------------ text

    def encode_text(self, prompt: str, negative: str | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.text_encoder is None:
            raise InvalidInputError(
                "This Wan model was loaded without a text encoder: pick one in the loader's text_encoder "
                "input, or connect positive/negative CONDITIONING from CLIPTextEncode (CLIP type 'wan')."
            )
        key = (prompt, negative)
        if key not in self._text_cache:
            encoder = self.text_encoder.model
            if self.text_resident is not None:
                host.load_resident([self.text_resident])
            else:
                encoder.to(self.device)
            try:
                texts = [prompt] + ([negative] if negative is not None else [])
                embeds = self.text_encoder.encode(texts, self.device).cpu()
            finally:
                if self.options.offload != "none":
                    encoder.to(host.offload_device())
            self._text_cache.clear()  # keep only the latest prompt pair
            self._text_cache[key] = (embeds[:1], embeds[1:2] if negative is not None else None)
        return self._text_cache[key]

    # ------------------------------------------------------------ sampling support

    def experts(self) -> list[WanExpert]:
        return [e for e in (self.high, self.low) if e is not None]

    def prepare_for_sampling(self) -> None:
        """Apply this handle's LoRAs to the shared modules and make the experts resident (offload none)."""
        for expert in self.experts():
            entries = entries_for_expert(self.loras, expert.name)
            if self.parallel_plan is not None:
                expert.model.set_loras(entries)  # the workers patch their own copies
                continue
            wanted = [(load_wan_lora_cached(path), strength) for path, strength in entries]
            expert.lora_patcher.set_loras(expert.model, wanted)
        if self.options.offload == "none":
            residents = [e.resident for e in self.experts()] + [self.vae_resident]
            host.load_resident([r for r in residents if r is not None])
        else:
            self.vae.to(self.device)


def _load_expert(path, name: str, files: WanModelFiles, options: WanLoadOptions,
                 device: torch.device, notes: list[str]) -> tuple[LoadedTransformer, WanExpert]:
    loaded, precision_notes = load_wan_transformer_at_precision(path, files.layout, f"{files.label} ({name}) {path}",
                                                                options.precision, device)
    notes += precision_notes
    model = loaded.model
    backend = attention.apply_attention_backend(model, options.attention, device)
    notes += attention.auto_choice_notes(options.attention, backend)
    if options.offload != "none":
        offload.apply_offload(model, options.offload, device)
    # offload "none": the weights stay on the CPU until the first run, when ComfyUI's model management
    # moves them (evicting other models first if the GPU is short of memory)
    compile_options.apply_compile(model, options.compile)
    resident = host.ResidentModel(model, device) if options.offload == "none" else None
    return loaded, WanExpert(name=name, model=model, resident=resident, lora_patcher=WanLoraPatcher())


def check_options(options: WanLoadOptions, device: torch.device) -> None:
    """Everything that can be refused before reading gigabytes."""
    if options.precision not in precision.PRECISIONS:
        raise InvalidInputError(f"precision '{options.precision}' is not one of {', '.join(precision.PRECISIONS)}.")
    if options.offload not in OFFLOAD_MODES:
        raise InvalidInputError(f"offload '{options.offload}' is not one of {', '.join(OFFLOAD_MODES)}.")
    if options.compile not in COMPILE_MODES:
        raise InvalidInputError(f"compile '{options.compile}' is not one of {', '.join(COMPILE_MODES)}.")
    attention.resolve_attention_backend(options.attention, device)


def _load_local_experts(files: WanModelFiles, options: WanLoadOptions, device: torch.device, notes: list[str]):
    """(variant, high, low) loaded in this process (one GPU)."""
    high_loaded, high = _load_expert(files.transformer, "high", files, options, device, notes)
    variant = high_loaded.variant
    low = None
    if variant.two_experts:
        if files.transformer_2 is None:
            raise ModelFilesError(
                f"{variant.display_name} needs both experts: '{files.label}' has only one. In single-file mode "
                "pick the low-noise file in 'diffusion_model_low_noise' (e.g. "
                "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors)."
            )
        low_loaded, low = _load_expert(files.transformer_2, "low", files, options, device, notes)
        if low_loaded.variant.name != variant.name:
            raise ModelFilesError(
                f"The two experts are different models: {files.transformer} is {variant.display_name} but "
                f"{files.transformer_2} is {low_loaded.variant.display_name}. Pick the matching pair."
            )
    elif files.transformer_2 is not None:
        raise ModelFilesError(
            f"{variant.display_name} has a single transformer; '{files.transformer_2}' was given as a low-noise "
            "expert. Set diffusion_model_low_noise to 'none'."
        )
    return variant, high, low


def _parallel_experts(files: WanModelFiles, options: WanLoadOptions, plan, notes: list[str]):
    """(variant, high, low) held by GPU workers, one per GPU; stand-ins here."""
    variant, high, low = load_parallel_experts(files, options, plan, notes)

    def expert(name, model):
        return WanExpert(name=name, model=model, resident=None, lora_patcher=WanLoraPatcher())
    return variant, expert("high", high), expert("low", low) if low is not None else None


def load_wan_model(files: WanModelFiles, options: WanLoadOptions, device: torch.device | None = None) -> WanModel:
    """Load a Wan 2.2 model with `options`; with gpus > 1 the experts are loaded by GPU workers (the text
    encoder and VAE stay here)."""
    device = device or host.torch_device()
    check_options(options, device)
    plan = make_parallel_plan(options.gpus, options.parallel, offload=options.offload)
    notes: list[str] = []
    if plan is None:
        variant, high, low = _load_local_experts(files, options, device, notes)
    else:
        variant, high, low = _parallel_experts(files, options, plan, notes)
    vae_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    vae, vae_version = load_wan_vae(files.vae, files.vae_format, dtype=vae_dtype)
    if vae_version != variant.vae_version:
        raise ModelFilesError(
            f"{files.vae} is the Wan {vae_version} VAE, but {variant.display_name} needs the Wan "
            f"{variant.vae_version} VAE ({'wan2.2_vae.safetensors' if variant.vae_version == '2.2' else 'wan_2.1_vae.safetensors'})."
        )
    text_encoder = None
    if files.text_encoder is not None:
        text_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        text_encoder = load_umt5_encoder(files.text_encoder, files.text_encoder_format, files.tokenizer, text_dtype)
        expected_dim = high.model.config.text_dim
        if text_encoder.model.config.d_model != expected_dim:
            raise ModelFilesError(
                f"{files.text_encoder}: text encoder width {text_encoder.model.config.d_model} does not match the "
                f"transformer's text width {expected_dim}; pick the UMT5-XXL encoder that goes with Wan 2.2."
            )
    notes = list(dict.fromkeys(notes))  # both experts (and every worker) report the same choices
    for note in notes:
        log.info("Reelsmith: %s", note)
    resident = options.offload == "none"
    return WanModel(files=files, variant=variant, options=options, device=device, high=high, low=low,
                    vae=vae, vae_version=vae_version, text_encoder=text_encoder, notes=notes, parallel_plan=plan,
                    vae_resident=host.ResidentModel(vae, device) if resident else None,
                    text_resident=host.ResidentModel(text_encoder.model, device) if resident and text_encoder else None)
