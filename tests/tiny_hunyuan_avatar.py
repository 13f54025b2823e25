"""The tiny HunyuanVideo-Avatar transformer the avatar tests share, its inputs, and tiny vendor-layout files.

Config: `engine/demo_avatar.TINY_TRANSFORMER` (one definition, shared with the demo models; see its comment);
the fp8 rules (`is_fp8_weight`, `quantize`, `snap_to_fp8`) are the demo writer's too.
"""

import pathlib

import torch
from safetensors.torch import save_file

from reelsmith.engine import demo_avatar
from reelsmith.engine.demo_avatar import (TINY_TRANSFORMER as TINY_CONFIG, quantize,  # noqa: F401  (re-exported)
                                          snap_to_fp8)
from reelsmith.engine.models import checkpoint_io
from reelsmith.engine.models.hunyuan_avatar_checkpoint import BF16_FILE, TRANSFORMERS_DIR
from reelsmith.engine.models.hunyuan_avatar_transformer import HunyuanAvatarTransformer

HIDDEN = 20


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


def transformers_folder(root: pathlib.Path) -> pathlib.Path:
    folder = root / TRANSFORMERS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_vendor_pt(vendor: dict, path: pathlib.Path) -> pathlib.Path:
    return demo_avatar.write_vendor_pt(vendor, path, TINY_CONFIG)


def write_vendor_fp8(vendor: dict, folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    return demo_avatar.write_vendor_fp8(vendor, folder, TINY_CONFIG)


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
