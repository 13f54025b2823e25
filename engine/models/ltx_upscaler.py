"""The LTX-Video spatial latent upscaler (ltxv-spatial-upscaler-0.9.7/0.9.8): load it strictly, and double a
latent video's height and width.

Facts (diffusers 0.42.1's LTXLatentUpsamplePipeline): the upsampler works on DENORMALIZED latents (the VAE's own
space): denormalize with the VAE's latents_mean/std, upsample, normalize again. Our LATENTs are normalized
(see ltx_sampler), so `upscale_ltx_latents` takes and returns normalized latents."""

from __future__ import annotations

import json
import pathlib

import torch

from ..errors import ModelFilesError
from . import checkpoint_io, ltx_keys
from .ltx_variants import UPSCALER_CONFIG, ltx_config

_FIELDS = ("in_channels", "mid_channels", "num_blocks_per_stage", "dims", "spatial_upsample", "temporal_upsample")


def _config_from_metadata(path: pathlib.Path) -> dict | None:
    raw = checkpoint_io.read_metadata(path).get("config")
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(config, dict) or not {"in_channels", "mid_channels"} <= set(config):
        return None  # not the upsampler's own fields
    return config


def upscaler_config(path) -> dict:
    """The file's metadata `config` (the vendor writes it), else a Reelsmith config hint, else the shipped one."""
    path = pathlib.Path(path)
    config = _config_from_metadata(path) or checkpoint_io.read_config_hint(path) or ltx_config(UPSCALER_CONFIG)
    return {k: v for k, v in config.items() if k in _FIELDS}


def load_ltx_upscaler(path, dtype: torch.dtype = torch.float32):
    """`ltxv-spatial-upscaler-*.safetensors` -> LTXLatentUpsamplerModel (CPU, eval), loaded strictly."""
    from diffusers.pipelines.ltx.modeling_latent_upsampler import (
        LTXLatentUpsamplerModel,
    )

    path = pathlib.Path(path)
    if not path.is_file():
        raise ModelFilesError(f"{path}: the LTX spatial upscaler file is missing.")
    config = upscaler_config(path)
    if not config.get("spatial_upsample", True) or config.get("temporal_upsample", False):
        raise ModelFilesError(f"{path}: only spatial (2x height and width) LTX upscalers are supported.")
    state_dict = ltx_keys.convert_upscaler_state_dict(checkpoint_io.read_state_dict(path), str(path))
    with checkpoint_io.empty_weights():
        model = LTXLatentUpsamplerModel(**config)
    checkpoint_io.load_into_meta_model(model, state_dict, str(path), "LTX-Video spatial latent upscaler", dtype)
    return model.eval()


@torch.no_grad()
def upscale_ltx_latents(upsampler, vae, latents_normalized: torch.Tensor, device) -> torch.Tensor:
    """Normalized latents [1, C, T, h, w] -> normalized latents [1, C, T, 2h, 2w] float32 on `device`."""
    from ..pipelines.ltx_sampler import denormalize_latents, normalize_latents

    dtype = next(upsampler.parameters()).dtype
    upsampler.to(device)
    raw = denormalize_latents(vae, latents_normalized.to(device, torch.float32))
    upsampled = upsampler(raw.to(dtype)).float()
    return normalize_latents(vae, upsampled)
