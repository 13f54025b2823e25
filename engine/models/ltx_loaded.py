"""A loaded LTX-Video model: transformer, VAE and T5 text encoder with the user's speed/memory options
applied (the same options and residency rules as Wan: see wan_model.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from .. import host
from ..errors import InvalidInputError, ModelFilesError
from . import attention, compile as compile_options, offload, precision
from .offload_rules import OffloadRules
from .ltx_layouts import LTXModelFiles
from .ltx_model import load_ltx_transformer, load_ltx_vae
from .ltx_variants import LTXCheckpointFacts, LTXVariant
from .t5_encoder import T5TextEncoder, load_t5_encoder
from .wan_model import WanLoadOptions, check_options

log = logging.getLogger("reelsmith")

LTXLoadOptions = WanLoadOptions  # the same four choices: precision, attention, compile, offload


@dataclass
class LTXModel(OffloadRules):
    files: LTXModelFiles
    variant: LTXVariant
    facts: LTXCheckpointFacts
    options: LTXLoadOptions
    device: torch.device
    transformer: torch.nn.Module
    vae: torch.nn.Module
    vae_version: str | None
    text_encoder: T5TextEncoder | None
    notes: list[str] = field(default_factory=list)
    residents: list[host.ResidentModel] = field(default_factory=list)
    _text_cache: dict = field(default_factory=dict)

    def describe(self) -> str:
        distilled = {True: ", distilled", False: ", dev", None: ""}[self.facts.distilled]
        return (f"{self.variant.display_name}{distilled} from '{self.files.label}' [{self.files.layout}]; "
                f"precision {self.options.precision}, attention {self.options.attention}, "
                f"compile {self.options.compile}, offload {self.options.offload}")

    def encode_text(self, prompt: str, negative: str | None):
        """-> (embeds, mask, negative embeds or None, negative mask or None), cached for the last pair."""
        if self.text_encoder is None:
            raise InvalidInputError(
                "This LTX model was loaded without a text encoder: pick the T5-XXL file in the loader's "
                "text_encoder input, or connect positive/negative CONDITIONING from CLIPTextEncode (CLIP type 'ltxv').")
        key = (prompt, negative)
        if key not in self._text_cache:
            encoder = self.text_encoder.model
            encoder.to(self.device)
            try:
                texts = [prompt] + ([negative] if negative is not None else [])
                embeds, mask = self.text_encoder.encode(texts, self.device)
            finally:
                if self.options.offload != "none":
                    encoder.to(host.offload_device())
            embeds, mask = embeds.cpu(), mask.cpu()
            self._text_cache.clear()
            self._text_cache[key] = (embeds[:1], mask[:1], embeds[1:2] if negative is not None else None,
                                     mask[1:2] if negative is not None else None)
        return self._text_cache[key]

    def prepare_for_sampling(self) -> None:
        if self.options.offload == "none":
            host.load_resident(self.residents)
        else:
            self.vae.to(self.device)


def load_ltx_model(files: LTXModelFiles, options: LTXLoadOptions, device: torch.device | None = None) -> LTXModel:
    device = device or host.torch_device()
    check_options(options, device)
    loaded = load_ltx_transformer(files.transformer, files.layout, label=f"{files.label} {files.transformer}")
    model = loaded.model
    notes = precision.apply_precision(model, options.precision, device)
    backend = attention.apply_attention_backend(model, options.attention, device)
    notes += attention.auto_choice_notes(options.attention, backend)
    if options.offload != "none":
        offload.apply_offload(model, options.offload, device)
    compile_options.apply_compile(model, options.compile)

    vae_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    vae, vae_version = load_ltx_vae(files.vae, files.layout, dtype=vae_dtype)
    if vae.config.latent_channels != model.config.in_channels:
        raise ModelFilesError(
            f"{files.vae}: the VAE has {vae.config.latent_channels} latent channels but the transformer takes "
            f"{model.config.in_channels}: they are not from the same LTX-Video release.")
    text_encoder = None
    if files.text_encoder is not None:
        text_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        text_encoder = load_t5_encoder(files.text_encoder, files.text_encoder_format, files.tokenizer, text_dtype)
        if text_encoder.model.config.d_model != model.config.caption_channels:
            raise ModelFilesError(
                f"{files.text_encoder}: text encoder width {text_encoder.model.config.d_model} does not match the "
                f"transformer's caption width {model.config.caption_channels}: pick the T5-XXL encoder (t5xxl_fp16).")
    for note in notes + files.notes:
        log.info("Reelsmith: %s", note)
    residents = []
    if options.offload == "none":
        residents = [host.ResidentModel(m, device) for m in (model, vae) + ((text_encoder.model,) if text_encoder else ())]
    return LTXModel(files=files, variant=loaded.variant, facts=loaded.facts, options=options, device=device,
                    transformer=model, vae=vae, vae_version=vae_version, text_encoder=text_encoder, notes=notes,
                    residents=residents)
