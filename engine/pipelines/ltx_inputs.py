"""Inputs of diffusers' LTXVideoTransformer3DModel, prepared the way LTX-Video's own code (and ComfyUI's
native LTXV model) prepares them, so the two give the same numbers.

How the two models' inputs correspond (checked in tests/e2e/test_native_parity_ltx.py):

- Latents. ComfyUI's model takes unpacked latents `[B, C, F, H, W]` and patchifies them itself (patch size
  1, order frame-row-column); diffusers' model takes packed tokens `[B, F*H*W, C]` and returns tokens.
  `pack_latents` / `unpack_latents` convert (the same order, so token i is the same latent pixel).
- Timestep. ComfyUI passes sigma in [0, 1] and the model multiplies by 1000 (`timestep_scale_multiplier`);
  diffusers' model takes the already scaled value, `ltx_timestep(sigma) = 1000 * sigma` (what diffusers'
  flow-match scheduler's `timesteps` hold). A per-token timestep `[B, F*H*W]` works on both sides.
- Rotary positions. Both build them from each token's pixel coordinates: latent index times the VAE's
  compression (8 frames, 32 pixels), the frame coordinate divided by the frame rate, then divided by
  (20, 2048, 2048). With `causal_temporal_positioning` (the vendor's 0.9.1+ configs; ComfyUI reads it from
  the file's metadata, its default is off) the frame coordinate is `max(0, 8 f + 1 - 8)`: the first latent
  frame stands for one video frame. diffusers' `LTXPipeline` passes `rope_interpolation_scale`, which is
  the non-causal form only; `LTXConditionPipeline` passes `video_coords` (causal). `ltx_video_coords`
  builds `video_coords` for either form; passed to the model, positions match ComfyUI exactly.
- Text mask. ComfyUI takes a 0/1 mask and adds `-finfo.max` at padding, diffusers `-10000`: after the
  softmax both give exactly zero weight in float32 and bfloat16.
"""

from __future__ import annotations

import torch

VAE_SCALE_FACTORS = (8, 32, 32)  # video frames, pixels per latent frame / row / column (all 0.9.x VAEs)
TIMESTEP_SCALE = 1000.0


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, F, H, W] -> [B, F*H*W, C] (patch size 1, the order of ComfyUI's SymmetricPatchifier)."""
    batch, channels = latents.shape[:2]
    return latents.reshape(batch, channels, -1).transpose(1, 2)


def unpack_latents(tokens: torch.Tensor, num_frames: int, height: int, width: int) -> torch.Tensor:
    """[B, F*H*W, C] -> [B, C, F, H, W]."""
    batch, count, channels = tokens.shape
    if count != num_frames * height * width:
        raise ValueError(f"{count} tokens cannot be unpacked to {num_frames}x{height}x{width} latents")
    return tokens.transpose(1, 2).reshape(batch, channels, num_frames, height, width)


def ltx_timestep(sigma) -> torch.Tensor:
    """Flow-matching sigma in [0, 1] (a number, [B] or per-token [B, N]) -> the timestep diffusers' model takes."""
    return torch.as_tensor(sigma, dtype=torch.float32) * TIMESTEP_SCALE


def ltx_video_coords(batch_size: int, num_frames: int, height: int, width: int, frame_rate: float,
                     causal_temporal_positioning: bool, scale_factors=VAE_SCALE_FACTORS,
                     device=None) -> torch.Tensor:
    """`video_coords` for LTXVideoTransformer3DModel: [B, 3, F*H*W] float32, per token (frame time in
    seconds x ..., pixel row, pixel column), token order as `pack_latents`.

    `num_frames`, `height`, `width` are latent sizes. The model divides by (20, 2048, 2048) itself.
    """
    frames = torch.arange(num_frames, dtype=torch.float32, device=device) * scale_factors[0]
    if causal_temporal_positioning:
        frames = (frames + 1 - scale_factors[0]).clamp(min=0)
    rows = torch.arange(height, dtype=torch.float32, device=device) * scale_factors[1]
    columns = torch.arange(width, dtype=torch.float32, device=device) * scale_factors[2]
    grid = torch.stack(torch.meshgrid(frames / frame_rate, rows, columns, indexing="ij"), dim=0)
    return grid.reshape(1, 3, -1).expand(batch_size, -1, -1).contiguous()
