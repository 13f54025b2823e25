"""Loading the Wan VAE (2.1: 16 latent channels, for A14B; 2.2: 48 channels, for TI2V-5B) into diffusers'
AutoencoderKLWan from a diffusers folder or an original/ComfyUI file, with the version read off the weights."""

from __future__ import annotations

import json
import pathlib

import torch
from diffusers import AutoencoderKLWan

from ..errors import ModelFilesError
from . import checkpoint_io
from .wan_vae_keys import convert_wan_vae_original_to_diffusers, detect_wan_vae_version
from .wan_variants import CONFIG_DIR


def vae_config(version: str) -> dict:
    return json.loads((CONFIG_DIR / f"vae_{version}.json").read_text())


def load_wan_vae(path, vae_format: str, dtype: torch.dtype = torch.float32) -> tuple[AutoencoderKLWan, str]:
    """-> (vae on the CPU, version "2.1" | "2.2")."""
    path = pathlib.Path(path)
    if vae_format == "diffusers":
        config = json.loads((path / "config.json").read_text())
        state_dict = checkpoint_io.read_state_dict(path)
        version = "2.2" if config.get("z_dim") == 48 else "2.1"
        layout = "diffusers VAE folder"
    else:
        raw = checkpoint_io.read_state_dict(path)
        shapes = {k: tuple(v.shape) for k, v in raw.items()}
        try:
            version = detect_wan_vae_version(shapes)
        except Exception as error:
            raise ModelFilesError(f"{path}: this is not a Wan VAE ({error}). Pick the Wan 2.1 or 2.2 VAE file.") from error
        state_dict = convert_wan_vae_original_to_diffusers(raw, version, source=str(path))
        config = checkpoint_io.read_config_hint(path) or vae_config(version)
        layout = f"original Wan {version} VAE file"
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    with checkpoint_io.empty_weights():
        vae = AutoencoderKLWan(**config)
    checkpoint_io.load_into_meta_model(vae, state_dict, str(path), layout, dtype=dtype)
    vae.eval().requires_grad_(False)
    return vae, version
