"""Loading LTX-Video's transformer and VAE strictly, from a diffusers component folder or from the vendor's
single file (`ltxv-*.safetensors`: the transformer under `model.diffusion_model.`, the VAE under `vae.`,
the vendor's config in the safetensors metadata), with the variant read off the weights.

The text encoder (T5-XXL), the samplers and the nodes build on this (issue 3, later slices).
"""

from __future__ import annotations

import inspect
import json
import pathlib
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel
from diffusers.models.autoencoders.autoencoder_kl_ltx import LTXVideoCausalConv3d

from ..errors import ModelFilesError
from . import checkpoint_io, ltx_keys
from .ltx_variants import (LTXCheckpointFacts, LTXVariant, VAE_CONFIGS, detect_ltx_variant, ltx_checkpoint_facts,
                           ltx_config)


@dataclass
class LoadedLTXTransformer:
    model: LTXVideoTransformer3DModel
    variant: LTXVariant
    facts: LTXCheckpointFacts   # distilled / causal positions, when the vendor's metadata says
    source: str


def _is_folder(path: pathlib.Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _split_vendor_file(path: pathlib.Path) -> tuple[dict, dict]:
    """A vendor single file -> (transformer tensors, VAE tensors), each still in original naming. Anything
    that is not under `vae.` counts as transformer, so a stray key is named by the strict transformer load."""
    transformer, vae = {}, {}
    for key, tensor in checkpoint_io.read_state_dict(path).items():
        (vae if key.startswith(ltx_keys.VAE_PREFIX) else transformer)[key] = tensor
    return transformer, vae


def _constructor_args(cls, config: dict) -> dict:
    """Only the arguments the diffusers class takes (configs also record derived values)."""
    accepted = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in config.items() if k in accepted}


def _component_config(path: pathlib.Path, component: str, shipped: dict) -> dict:
    """The shipped config for real-size weights; a smaller demo/test model of the same structure has its
    config beside the file (`<file>.reelsmith.json`, one entry per component)."""
    hint = checkpoint_io.read_config_hint(path)
    return hint[component] if hint and component in hint else shipped


def load_ltx_transformer(path, layout: str, label: str | None = None) -> LoadedLTXTransformer:
    """LTX transformer on the CPU, as stored. `layout` names the assumed layout in messages."""
    path = pathlib.Path(path)
    source = label or str(path)
    if _is_folder(path):
        state_dict = checkpoint_io.read_state_dict(path)
        config = {k: v for k, v in json.loads((path / "config.json").read_text()).items() if not k.startswith("_")}
        facts = ltx_checkpoint_facts(None)
    else:
        original, _ = _split_vendor_file(path)
        if not original:
            raise ModelFilesError(f"{source}: no transformer tensors in this file (assumed layout: {layout}).")
        state_dict = (original if ltx_keys.is_diffusers_transformer_naming(original)
                      else ltx_keys.convert_transformer_state_dict(original, source))
        facts = ltx_checkpoint_facts(checkpoint_io.read_metadata(path), source)
        config = None
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    variant = detect_ltx_variant(shapes, source, tiny_ok=True)
    if config is None:
        config = _component_config(path, "transformer", variant.transformer_config_dict())
    with checkpoint_io.empty_weights():
        model = LTXVideoTransformer3DModel(**_constructor_args(LTXVideoTransformer3DModel, config))
    checkpoint_io.load_into_meta_model(model, state_dict, source, f"{layout} {variant.display_name}")
    return LoadedLTXTransformer(model.eval().requires_grad_(False), variant, facts, source)


def set_spatial_padding_mode(vae: AutoencoderKLLTXVideo, mode: str) -> None:
    """Pad every VAE convolution spatially with `mode`, as the vendor's config asks (diffusers builds them
    all with zeros). torch's Conv3d reads `padding_mode` at each call, so setting it after loading is exact."""
    for module in vae.modules():
        if isinstance(module, LTXVideoCausalConv3d):
            module.conv.padding_mode = mode


def load_ltx_vae(path, layout: str, dtype: torch.dtype = torch.float32) -> tuple[AutoencoderKLLTXVideo, str | None]:
    """LTX VAE on the CPU -> (vae, version "0.9.0" | "0.9.1" | "0.9.5"; None for a diffusers folder, whose
    config says everything), from a `vae/` folder or a vendor single file."""
    path = pathlib.Path(path)
    if _is_folder(path):
        config = json.loads((path / "config.json").read_text())
        state_dict = checkpoint_io.read_state_dict(path)
        version = None
    else:
        _, original = _split_vendor_file(path)
        if not original:
            raise ModelFilesError(
                f"{path}: no VAE tensors (keys under 'vae.') in this file (assumed layout: {layout}). Use the "
                "vendor's full ltxv-*.safetensors checkpoint, or a diffusers folder with a vae/ component.")
        padding = ltx_checkpoint_facts(checkpoint_io.read_metadata(path), str(path)).vae_spatial_padding_mode
        state_dict, version = ltx_keys.convert_vae_state_dict(original, str(path))
        config = _component_config(path, "vae", ltx_config(VAE_CONFIGS[version]))
    with checkpoint_io.empty_weights():
        vae = AutoencoderKLLTXVideo(**_constructor_args(AutoencoderKLLTXVideo, config))
    checkpoint_io.load_into_meta_model(vae, state_dict, str(path), f"{layout} LTX-Video {version or ''} VAE", dtype=dtype)
    if version is not None:  # a vendor file: its metadata chooses the padding (diffusers folders: zeros)
        set_spatial_padding_mode(vae, padding)
    return vae.eval().requires_grad_(False), version
