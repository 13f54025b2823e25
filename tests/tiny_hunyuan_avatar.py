"""The tiny HunyuanVideo-Avatar transformer the avatar tests share, its inputs, and tiny vendor-layout files.

Config: DESIGN.md's tiny HunyuanVideo (in/out 4, 2 heads of 10, text width 16, pooled 8, rope axes
(2, 4, 4), one refiner and one single block) with 2 double blocks, because the audio adapters follow every
other double block (block 1 here); whisper features of 4 channels instead of 384.
"""

import pathlib

import torch
from safetensors.torch import save_file

from reelsmith.engine.models import checkpoint_io, hunyuan_avatar_keys as keys
from reelsmith.engine.models.hunyuan_avatar_checkpoint import BF16_FILE, FP8_FILE, FP8_MAP_FILE, TRANSFORMERS_DIR
from reelsmith.engine.models.hunyuan_avatar_transformer import HunyuanAvatarTransformer

TINY_CONFIG = dict(
    in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=2,
    num_single_layers=1, num_refiner_layers=1, text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
    audio_window=10, audio_layers=5, audio_channels=4, audio_hidden_dim=16, adapter_inner_dim=8,
)
HIDDEN = 20
FP8_MAX = 448.0


def tiny_avatar(seed: int = 0) -> HunyuanAvatarTransformer:
    """Tiny model with EVERY tensor re-randomised: the vendor initialises modulation, final layer and adapter
    outputs to zero, which would make any comparison pass trivially."""
    torch.manual_seed(seed)
    model = HunyuanAvatarTransformer(**TINY_CONFIG)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.randn_like(param) * (0.3 if param.ndim == 1 else 0.2) + (1.0 if "norm" in name else 0.0))
    return model.eval().requires_grad_(False)


def inputs(batch: int = 1, frames: int = 3, height: int = 4, width: int = 6, seed: int = 1, text_len: int = 5) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, text_len, dtype=torch.long)
    if batch > 1:
        mask[0, 3:] = 0  # rows with different prompt lengths, as a cond/uncond batch has
    return dict(
        hidden_states=torch.randn(batch, 4, frames, height, width, generator=g),
        timestep=torch.linspace(700, 300, batch),
        encoder_hidden_states=torch.randn(batch, text_len, 16, generator=g),
        encoder_attention_mask=mask,
        pooled_projections=torch.randn(batch, 8, generator=g),
        reference_latents=torch.randn(batch, 4, frames, height, width, generator=g),
        audio_features=torch.randn(batch, 4 * frames - 3, 10, 5, 4, generator=g),
        face_mask=torch.ones(batch, 1, 1, height, width),
        motion_exp=torch.full((batch, 4), 30),
        motion_pose=torch.full((batch, 4), 25),
        fps=torch.full((batch,), 25.0),
    )


def run(model, **overrides) -> torch.Tensor:
    args = inputs()
    args.update(overrides)
    with torch.no_grad():
        return model(**args).float()


# ------------------------------------------------------------------ vendor-layout files


def is_fp8_weight(vendor_key: str, tensor: torch.Tensor) -> bool:
    """The tensors the vendor's fp8 file stores as fp8: Linear weights of the double and single blocks."""
    return vendor_key.startswith(("double_blocks.", "single_blocks.")) and vendor_key.endswith(".weight") and tensor.ndim == 2


def quantize(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float -> (fp8 e4m3fn, bf16-representable float32 scale), weight ~= fp8 * scale."""
    scale = (tensor.abs().amax() / FP8_MAX).to(torch.bfloat16).float()
    return (tensor / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def snap_to_fp8(model: HunyuanAvatarTransformer) -> dict[str, torch.Tensor]:
    """Round the block Linear weights to what an fp8 file can hold, so that the bf16, fp8 and safetensors files
    written from `model` carry identical values. Returns the vendor state dict (float32)."""
    vendor = {k: v.clone() for k, v in keys.ours_to_vendor(model.state_dict()).items()}
    for key, tensor in vendor.items():
        if is_fp8_weight(key, tensor):
            fp8, scale = quantize(tensor)
            vendor[key] = fp8.float() * scale
    model.load_state_dict(keys.vendor_to_ours(vendor, HIDDEN, "test"))
    return vendor


def transformers_folder(root: pathlib.Path) -> pathlib.Path:
    folder = root / TRANSFORMERS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_vendor_pt(vendor: dict, path: pathlib.Path) -> pathlib.Path:
    torch.save({"module": {k: v.contiguous() for k, v in vendor.items()}, "dp_world_size": 1}, path)
    checkpoint_io.write_config_hint(path, TINY_CONFIG)
    return path


def write_vendor_fp8(vendor: dict, folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    weights, scales = {}, {}
    for key, tensor in vendor.items():
        if is_fp8_weight(key, tensor):
            weights[key], scales[key[: -len(".weight")]] = quantize(tensor)
        else:
            weights[key] = tensor.contiguous()
    path, map_path = folder / FP8_FILE, folder / FP8_MAP_FILE
    torch.save({"module": weights}, path)
    torch.save({"module": scales}, map_path)
    checkpoint_io.write_config_hint(path, TINY_CONFIG)
    return path, map_path


def write_safetensors(state: dict, path: pathlib.Path, prefix: str = "") -> pathlib.Path:
    save_file({prefix + k: v.contiguous() for k, v in state.items()}, str(path))
    checkpoint_io.write_config_hint(path, TINY_CONFIG)
    return path


def write_all_formats(model, root: pathlib.Path) -> dict[str, pathlib.Path]:
    """bf16-style .pt and the fp8 pair in the vendor folder layout, plus repacked safetensors with and
    without the `model.diffusion_model.` prefix."""
    vendor = snap_to_fp8(model)
    folder = transformers_folder(root)
    fp8, _ = write_vendor_fp8(vendor, folder)
    return {
        "pt": write_vendor_pt(vendor, folder / BF16_FILE),
        "fp8": fp8,
        "safetensors": write_safetensors(vendor, root / "avatar.safetensors"),
        "prefixed": write_safetensors(vendor, root / "avatar_prefixed.safetensors", "model.diffusion_model."),
        "ours": write_safetensors(model.state_dict(), root / "avatar_ours.safetensors"),
    }
