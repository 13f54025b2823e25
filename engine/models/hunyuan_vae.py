"""HunyuanVideo's causal 3D VAE, as HunyuanVideo-Avatar ships it, in diffusers' `AutoencoderKLHunyuanVideo`:
strict loading, the reference image's latents, and decoding to IMAGE frames.

Files (vendor weights/README.md; `hymm_sp/vae/__init__.py` `load_vae`, read for facts only):
`ckpts/hunyuan-video-t2v-720p/vae/pytorch_model.pt` (a pickle; the vendor takes `ckpt["state_dict"]` when present
and removes a `vae.` prefix) and `config.json` (the vendor's `AutoencoderKLCausal3D` config). The key names are
diffusers' own: diffusers' `scripts/convert_hunyuan_video_to_diffusers.py` loads the vendor file into
`AutoencoderKLHunyuanVideo` with an empty rename table, and the two module trees match name for name (encoder /
decoder `conv_in.conv`, `down_blocks.N.resnets.M.{norm1,conv1.conv,norm2,conv2.conv,conv_shortcut.conv}`,
`downsamplers.0.conv.conv`, `mid_block.{attentions.0.{group_norm,to_q,to_k,to_v,to_out.0},resnets.N}`,
`conv_norm_out`, `conv_out.conv`, `quant_conv`, `post_quant_conv`). So no key conversion is needed: `vae.` is
stripped and every key must then be one of the model's, with its shape. Also accepted: the same keys as a single
`.safetensors` (ComfyUI's repackaged HunyuanVideo VAE) and a diffusers `vae/` folder.

Config: the vendor's config.json is translated field by field (`time_compression_ratio` ->
`temporal_compression_ratio`, the Causal3D block names -> diffusers' HunyuanVideo block names; tiling and runtime
knobs such as `sample_size`, `sample_tsize` are dropped). Without one, the shipped `vae_config.json` (the real
model: 16 latent channels, 8x spatial, 4x temporal compression) is used.

Latent scale (vendor `sample_inference_audio.py`, `pipeline_hunyuan_video_audio.py`): latents = sample of the
posterior x `scaling_factor` (0.476986; no shift factor); decoding divides by it.

Ours, and why:
- The reference: the vendor encodes the reference image repeated over 129 frames and takes a sample of the
  posterior. For a still video the causal encoder's features are constant in time (its time padding repeats the
  first frame, GroupNorm and the causally masked mid-block attention see identical frames), so every one of the 33
  latent frames has the posterior mean and std of the image encoded alone. We encode the single frame and draw the
  33 frames' noise from a seeded CPU generator: the vendor's distribution at 1/129 of the encoder's work (checked
  against the 129-frame encode in the tests).
- Decoding: diffusers' framewise decoding (latent tiles of 5 frames, stride 3, blended) and, on a GPU, spatial
  tiling (256 px tiles, stride 192): the vendor decodes with its tiling on too (`--vae-tiling`, default True), and
  129 frames at 704 x 1216 do not fit untiled in 80 GB. Only the latent frames the kept video frames come from are
  decoded (the tiles up to the last one that contributes, each whole: the same frames a full decode gives, to
  float rounding; checked in the tests).
- Precision: bf16 on CUDA (the vendor runs fp16), float32 on the CPU.
"""

from __future__ import annotations

import json
import logging
import pathlib

import torch
from diffusers import AutoencoderKLHunyuanVideo

from ..errors import InvalidInputError, ModelFilesError
from . import checkpoint_io

log = logging.getLogger("reelsmith")

CONFIG_PATH = pathlib.Path(__file__).parent / "configs" / "hunyuan_avatar" / "vae_config.json"
VENDOR_WEIGHTS = "pytorch_model.pt"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
VENDOR_CLASS = "AutoencoderKLCausal3D"
DIFFUSERS_CLASS = "AutoencoderKLHunyuanVideo"
VENDOR_PREFIX = "vae."
LAYOUT = "HunyuanVideo VAE (vendor AutoencoderKLCausal3D naming = diffusers AutoencoderKLHunyuanVideo naming)"
LATENT_CHANNELS = 16

# vendor config field -> diffusers field (same meaning); everything else in the vendor config is a runtime knob
_CONFIG_FIELDS = {
    "in_channels": "in_channels", "out_channels": "out_channels", "latent_channels": "latent_channels",
    "block_out_channels": "block_out_channels", "layers_per_block": "layers_per_block", "act_fn": "act_fn",
    "norm_num_groups": "norm_num_groups", "scaling_factor": "scaling_factor",
    "spatial_compression_ratio": "spatial_compression_ratio", "time_compression_ratio": "temporal_compression_ratio",
    "mid_block_add_attention": "mid_block_add_attention",
}
_BLOCK_NAMES = {"DownEncoderBlockCausal3D": "HunyuanVideoDownBlock3D", "UpDecoderBlockCausal3D": "HunyuanVideoUpBlock3D"}


def shipped_vae_config() -> dict:
    return {k: v for k, v in json.loads(CONFIG_PATH.read_text()).items() if not k.startswith("_")}


def vae_config_from_vendor(vendor: dict, source: str) -> dict:
    """The vendor's AutoencoderKLCausal3D config -> AutoencoderKLHunyuanVideo arguments (shipped values for
    anything it does not say)."""
    if vendor.get("disable_causal_conv"):
        raise ModelFilesError(f"{source}: this VAE config turns the causal convolutions off (disable_causal_conv); "
                              "HunyuanVideo-Avatar's VAE is causal. Use the vendor's ckpts/hunyuan-video-t2v-720p/vae.")
    if vendor.get("mid_block_causal_attn") is False:
        log.warning("Reelsmith: %s asks for non-causal mid-block attention; diffusers' HunyuanVideo VAE always masks "
                    "it causally.", source)
    config = shipped_vae_config()
    for vendor_name, ours in _CONFIG_FIELDS.items():
        if vendor_name in vendor:
            config[ours] = vendor[vendor_name]
    for field in ("down_block_types", "up_block_types"):
        if field in vendor:
            unknown = [name for name in vendor[field] if name not in _BLOCK_NAMES]
            if unknown:
                raise ModelFilesError(f"{source}: unknown VAE block type '{unknown[0]}' (a HunyuanVideo VAE has "
                                      f"{' / '.join(_BLOCK_NAMES)}).")
            config[field] = [_BLOCK_NAMES[name] for name in vendor[field]]
    return config


def _weights_file(path: pathlib.Path) -> pathlib.Path:
    if path.is_file():
        return path
    for name in (VENDOR_WEIGHTS, DIFFUSERS_WEIGHTS):
        if (path / name).is_file():
            return path / name
    raise ModelFilesError(f"{path}: no VAE weights here ({VENDOR_WEIGHTS}, as the vendor ships it, or "
                          f"{DIFFUSERS_WEIGHTS}).")


def hunyuan_vae_config(path) -> dict:
    """AutoencoderKLHunyuanVideo arguments for a VAE folder or file: from its config.json (vendor or diffusers), else
    the shipped one."""
    path = pathlib.Path(path)
    config_file = (path if path.is_dir() else path.parent) / "config.json"
    if not config_file.is_file():
        return shipped_vae_config()
    try:
        raw = json.loads(config_file.read_text())
    except ValueError as error:
        raise ModelFilesError(f"{config_file}: not valid JSON ({error}); download it again.") from error
    kind = raw.get("_class_name", VENDOR_CLASS)
    if kind == DIFFUSERS_CLASS:
        return {k: v for k, v in raw.items() if not k.startswith("_")}
    if kind != VENDOR_CLASS:
        raise ModelFilesError(f"{config_file}: this is a {kind} config, not HunyuanVideo's VAE ({VENDOR_CLASS}). "
                              "Use the vendor's ckpts/hunyuan-video-t2v-720p/vae folder.")
    return vae_config_from_vendor(raw, str(config_file))


def vendor_vae_state_dict(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Vendor file tensors -> diffusers keys: only the `vae.` prefix the vendor's loader removes."""
    return {(k[len(VENDOR_PREFIX):] if k.startswith(VENDOR_PREFIX) else k): v for k, v in raw.items()}


def describe_foreign_vae(keys) -> str | None:
    """A short description of what a VAE file of another family looks like, or None."""
    keys = set(keys)
    if any(k.startswith(("encoder.downsamples.", "decoder.upsamples.")) for k in keys):
        return "a Wan VAE"
    if any(k.startswith("encoder.down_blocks.") for k in keys) and not any(".conv1.conv." in k for k in keys):
        return "an image (2D) VAE"
    if not any(k.startswith(("encoder.", "decoder.")) for k in keys):
        return "not a VAE at all"
    return None


def load_hunyuan_vae(path, dtype: torch.dtype = torch.float32, label: str | None = None) -> AutoencoderKLHunyuanVideo:
    """The VAE on the CPU in `dtype`, from a `vae/` folder or a weights file, strictly (every key, every shape)."""
    path = pathlib.Path(path)
    weights = _weights_file(path)
    source = label or str(weights)
    state_dict = vendor_vae_state_dict(checkpoint_io.read_state_dict(weights))
    foreign = describe_foreign_vae(state_dict)
    if foreign is not None:
        raise ModelFilesError(f"{source}: this file looks like {foreign}, not HunyuanVideo's VAE (assumed layout: "
                              f"{LAYOUT}). Use ckpts/hunyuan-video-t2v-720p/vae/{VENDOR_WEIGHTS} from "
                              "tencent/HunyuanVideo-Avatar.")
    config = hunyuan_vae_config(path)
    if config.get("latent_channels") != LATENT_CHANNELS:
        raise ModelFilesError(f"{source}: a VAE with {config.get('latent_channels')} latent channels; "
                              f"HunyuanVideo-Avatar's transformer takes {LATENT_CHANNELS}.")
    with checkpoint_io.empty_weights():
        vae = AutoencoderKLHunyuanVideo(**config)
    checkpoint_io.load_into_meta_model(vae, state_dict, source, LAYOUT, dtype=dtype)
    return vae.eval().requires_grad_(False)


def _place(vae) -> tuple[torch.device, torch.dtype]:
    parameter = next(vae.parameters())
    return parameter.device, parameter.dtype


def use_tiling_for(vae, device: torch.device) -> None:
    """Spatial tiling on GPUs (what real sizes need; the vendor decodes tiled too), off on the CPU (small demo
    sizes, where one tile would be the whole frame anyway). Framewise (temporal) tiling is diffusers' default."""
    if torch.device(device).type == "cuda":
        vae.enable_tiling()
    else:
        vae.disable_tiling()


@torch.no_grad()
def encode_reference_latents(vae, pixels: torch.Tensor, latent_frames: int, seed: int) -> torch.Tensor:
    """The reference image as the vendor's still-video latents, scaled: [1, 16, latent_frames, H/8, W/8] float32 on
    the CPU. `pixels` is the image [1, 3, 1, H, W] (or [1, 3, H, W]) in -1..1; the posterior is sampled with a CPU
    generator seeded with `seed` (see the module docstring for why one frame stands for the 129)."""
    if pixels.ndim == 4:
        pixels = pixels.unsqueeze(2)
    if pixels.ndim != 5 or pixels.shape[:3] != (1, 3, 1):
        raise InvalidInputError(f"expected one image [1, 3, 1, H, W]; got {tuple(pixels.shape)}.")
    device, dtype = _place(vae)
    use_tiling_for(vae, device)
    posterior = vae.encode(pixels.to(device, dtype)).latent_dist
    mean, std = posterior.mean.float().cpu(), posterior.std.float().cpu()
    generator = torch.Generator("cpu").manual_seed(int(seed))
    noise = torch.randn((1, mean.shape[1], latent_frames, *mean.shape[-2:]), generator=generator)
    return (mean + std * noise) * float(vae.config.scaling_factor)


def latent_frames_for(vae, frames: int, available: int) -> int:
    """How many leading latent frames a decode needs so that its first `frames` video frames are those a decode of
    all `available` latent frames gives (diffusers' framewise decoding: tiles of `min` latent frames every `stride`,
    each whole and blended with the one before; GroupNorm sees a tile at a time, so a tile must not be cut)."""
    if not getattr(vae, "use_framewise_decoding", False):
        return available
    ratio = vae.temporal_compression_ratio
    stride = vae.tile_sample_stride_num_frames
    tile_latents = vae.tile_sample_min_num_frames // ratio + 1
    if available <= tile_latents - 1:  # decoded in one piece
        return available
    last_tile = 0 if frames <= stride + 1 else (frames - 2) // stride
    return min(available, last_tile * (stride // ratio) + tile_latents)


@torch.no_grad()
def decode_avatar_latents(vae, latents: torch.Tensor, frames: int | None = None) -> torch.Tensor:
    """Scaled latents [1, 16, T, h, w] -> IMAGE frames [frames, H, W, 3] float32 0..1 on the CPU (all 4T-3 frames
    when `frames` is None)."""
    device, dtype = _place(vae)
    available = latents.shape[2]
    total = (available - 1) * vae.temporal_compression_ratio + 1
    frames = total if frames is None else min(int(frames), total)
    needed = latent_frames_for(vae, frames, available)
    use_tiling_for(vae, device)
    z = latents[:, :, :needed].to(device, dtype) / float(vae.config.scaling_factor)
    video = vae.decode(z, return_dict=False)[0][0, :, :frames]  # [3, frames, H, W] in -1..1
    del z
    out = torch.empty((frames, video.shape[2], video.shape[3], 3), dtype=torch.float32)
    for start in range(0, frames, 16):  # to the CPU a few frames at a time: no float32 copy of the whole clip on the GPU
        chunk = video[:, start:start + 16].float().clamp_(-1, 1).add_(1).div_(2)
        out[start:start + chunk.shape[1]] = chunk.permute(1, 2, 3, 0).cpu()
    return out
