"""Key names of LTX-Video (0.9.x): the original Lightricks layout <-> diffusers, for the transformer,
the VAE and the spatial latent upscaler.

Where the original names live:
- transformer: `ltxv-*.safetensors` single files under `model.diffusion_model.` (ComfyUI's
  `models/diffusion_models/` files may also carry no prefix); ComfyUI's comfy/ldm/lightricks/model.py
  keeps the same module tree.
- VAE: the same single files under `vae.`; standalone VAE files have no prefix. ComfyUI's
  comfy/ldm/lightricks/vae/causal_video_autoencoder.py keeps the same tree.
- spatial upscaler: `ltxv-spatial-upscaler-*.safetensors`, no prefix; its names are already diffusers'
  `LTXLatentUpsamplerModel` names (the map is the identity; loading still checks every key and shape).

The transformer map is a handful of renames applied both ways. The VAE's original modules are flat
`ModuleList`s indexed by position (a run of residual blocks, a resampler, a channel-changing residual
block, ...), while diffusers groups them into named stages; which stage a position belongs to depends on
the VAE generation, so there is one position table per generation (see `VAE_VERSIONS`).
"""

from __future__ import annotations

import re

from ..errors import CheckpointMismatchError
from . import checkpoint_io

TRANSFORMER_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
VAE_PREFIX = "vae."

# ------------------------------------------------------------------ transformer

# Module paths outside the blocks: original -> diffusers. Sub-paths below them are kept as they are
# (`adaln_single.emb.timestep_embedder.linear_1` -> `time_embed.emb.timestep_embedder.linear_1`).
_TRANSFORMER_TOP = {
    "patchify_proj": "proj_in",
    "adaln_single": "time_embed",
    "caption_projection": "caption_projection",
    "proj_out": "proj_out",
    "scale_shift_table": "scale_shift_table",
}
_TRANSFORMER_TOP_CHILDREN = {  # what may follow each top-level module (anything else is unknown)
    "patchify_proj": ("weight", "bias"),
    "adaln_single": ("emb.timestep_embedder.linear_1.weight", "emb.timestep_embedder.linear_1.bias",
                     "emb.timestep_embedder.linear_2.weight", "emb.timestep_embedder.linear_2.bias",
                     "linear.weight", "linear.bias"),
    "caption_projection": ("linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias"),
    "proj_out": ("weight", "bias"),
    "scale_shift_table": ("",),
}
# Inside `transformer_blocks.N.`: original sub-module -> diffusers sub-module.
_TRANSFORMER_IN_BLOCK = {
    "scale_shift_table": "scale_shift_table",
    "ff.net.0.proj": "ff.net.0.proj",
    "ff.net.2": "ff.net.2",
}
_TRANSFORMER_ATTENTION_PARTS = {
    "q_norm": "norm_q",
    "k_norm": "norm_k",
    "to_q": "to_q",
    "to_k": "to_k",
    "to_v": "to_v",
    "to_out.0": "to_out.0",
}
_NORMS = ("q_norm", "k_norm", "norm_q", "norm_k")
_TRANSFORMER_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.(.+)$")
_PARAMS = ("weight", "bias")


def _invert(table: dict[str, str]) -> dict[str, str]:
    return {v: k for k, v in table.items()}


def strip_transformer_prefix(key: str) -> str:
    """`model.diffusion_model.transformer_blocks.0...` -> `transformer_blocks.0...`."""
    for prefix in TRANSFORMER_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _split_param(key: str) -> tuple[str, str]:
    module, _, last = key.rpartition(".")
    if last in _PARAMS and module:
        return module, last
    return key, ""


def _rename_transformer(key: str, to_diffusers: bool) -> str | None:
    top = _TRANSFORMER_TOP if to_diffusers else _invert(_TRANSFORMER_TOP)
    in_block = _TRANSFORMER_IN_BLOCK if to_diffusers else _invert(_TRANSFORMER_IN_BLOCK)
    parts = _TRANSFORMER_ATTENTION_PARTS if to_diffusers else _invert(_TRANSFORMER_ATTENTION_PARTS)
    block = _TRANSFORMER_BLOCK.match(key)
    if block is None:
        head, _, rest = key.partition(".")
        if head not in top:
            return None
        original_head = head if to_diffusers else top[head]
        if rest not in _TRANSFORMER_TOP_CHILDREN[original_head]:
            return None
        return f"{top[head]}.{rest}" if rest else top[head]
    index, rest = block.groups()
    module, param = _split_param(rest)
    if module in in_block:
        renamed = in_block[module]
        if (module == "scale_shift_table") != (param == ""):  # a bare parameter; the rest are Linears
            return None
    else:
        attention, _, part = module.partition(".")
        if attention not in ("attn1", "attn2") or part not in parts or not param:
            return None
        if part in _NORMS and param != "weight":  # RMS norms: weight only
            return None
        renamed = f"{attention}.{parts[part]}"
    return f"transformer_blocks.{index}.{renamed}" + (f".{param}" if param else "")


def original_transformer_key_to_diffusers(key: str) -> str | None:
    """Original transformer key (with or without `model.diffusion_model.`) -> diffusers; None if unknown."""
    return _rename_transformer(strip_transformer_prefix(key), to_diffusers=True)


def diffusers_transformer_key_to_original(key: str) -> str | None:
    """diffusers `LTXVideoTransformer3DModel` key -> original key (no prefix); None if unknown."""
    return _rename_transformer(key, to_diffusers=False)


def is_diffusers_transformer_naming(keys) -> bool:
    return any(k.startswith(("proj_in.", "time_embed.")) for k in keys)


def convert_transformer_state_dict(state_dict: dict, source: str) -> dict:
    """Original-named transformer state dict -> diffusers names. Unknown keys raise, naming them."""
    return checkpoint_io.rename_keys(
        state_dict, original_transformer_key_to_diffusers, source,
        " for the original LTX-Video transformer layout. This is not an LTX-Video 0.9.x transformer "
        "(a LoRA, an LTX-2 audio-video model, or another family?).")


# ------------------------------------------------------------------ VAE

# Position tables: original `encoder.down_blocks.<i>` / `decoder.up_blocks.<i>` -> diffusers module path.
# Derived from the block lists of each generation (ComfyUI's VideoVAE.guess_config and the vendor
# configs) and checked against ComfyUI's VideoVAE built at full size (tests/e2e/test_native_parity_ltx.py).
VAE_VERSIONS = {
    # 0.9.0: encoder res/compress/res_x_y stages; decoder mirrors it (no timestep conditioning)
    "0.9.0": {
        "encoder": ["down_blocks.0", "down_blocks.0.downsamplers.0", "down_blocks.0.conv_out",
                    "down_blocks.1", "down_blocks.1.downsamplers.0", "down_blocks.1.conv_out",
                    "down_blocks.2", "down_blocks.2.downsamplers.0", "down_blocks.3", "mid_block"],
        "decoder": ["mid_block", "up_blocks.0", "up_blocks.1.upsamplers.0", "up_blocks.1",
                    "up_blocks.2.conv_in", "up_blocks.2.upsamplers.0", "up_blocks.2",
                    "up_blocks.3.conv_in", "up_blocks.3.upsamplers.0", "up_blocks.3"],
    },
    # 0.9.1: the 0.9.0 encoder, a new decoder (residual depth-to-space upsamplers, noise injection,
    # timestep conditioning)
    "0.9.1": {
        "encoder": ["down_blocks.0", "down_blocks.0.downsamplers.0", "down_blocks.0.conv_out",
                    "down_blocks.1", "down_blocks.1.downsamplers.0", "down_blocks.1.conv_out",
                    "down_blocks.2", "down_blocks.2.downsamplers.0", "down_blocks.3", "mid_block"],
        "decoder": ["mid_block", "up_blocks.0.upsamplers.0", "up_blocks.0", "up_blocks.1.upsamplers.0",
                    "up_blocks.1", "up_blocks.2.upsamplers.0", "up_blocks.2"],
    },
    # 0.9.5 and later: space-to-depth encoder to 2048 channels, timestep-conditioned decoder of the 0.9.1
    # shape. The 0.9.6/0.9.7/0.9.8 VAEs are taken to share this layout (ComfyUI and diffusers' single-file
    # converter treat them alike); the depths in configs/ltx/vae_0.9.5.json are 0.9.5's, and a strict load
    # names the first key that disagrees if a later VAE differs.
    "0.9.5": {
        "encoder": ["down_blocks.0", "down_blocks.0.downsamplers.0", "down_blocks.1",
                    "down_blocks.1.downsamplers.0", "down_blocks.2", "down_blocks.2.downsamplers.0",
                    "down_blocks.3", "down_blocks.3.downsamplers.0", "mid_block"],
        "decoder": ["mid_block", "up_blocks.0.upsamplers.0", "up_blocks.0", "up_blocks.1.upsamplers.0",
                    "up_blocks.1", "up_blocks.2.upsamplers.0", "up_blocks.2"],
    },
}
# Renames of path pieces inside a module: original -> diffusers (applied piece by piece, both ways).
_VAE_PIECES = {"res_blocks": "resnets", "norm3.norm": "norm3", "conv_shortcut": "conv_shortcut.conv"}
# Whole keys outside the position lists: original -> diffusers.
_VAE_FIXED = {
    "decoder.last_time_embedder.timestep_embedder.linear_1.weight":
        "decoder.time_embedder.timestep_embedder.linear_1.weight",
    "decoder.last_time_embedder.timestep_embedder.linear_1.bias":
        "decoder.time_embedder.timestep_embedder.linear_1.bias",
    "decoder.last_time_embedder.timestep_embedder.linear_2.weight":
        "decoder.time_embedder.timestep_embedder.linear_2.weight",
    "decoder.last_time_embedder.timestep_embedder.linear_2.bias":
        "decoder.time_embedder.timestep_embedder.linear_2.bias",
    "decoder.last_scale_shift_table": "decoder.scale_shift_table",
    "decoder.timestep_scale_multiplier": "decoder.timestep_scale_multiplier",
    "per_channel_statistics.mean-of-means": "latents_mean",
    "per_channel_statistics.std-of-means": "latents_std",
}
for _side in ("encoder", "decoder"):
    for _conv in ("conv_in", "conv_out"):
        for _param in _PARAMS:
            _VAE_FIXED[f"{_side}.{_conv}.conv.{_param}"] = f"{_side}.{_conv}.conv.{_param}"
# Statistics the original VAE stores but does not use to encode or decode; diffusers has no place for
# them. They are accepted and dropped when converting to diffusers (and not recreated the other way).
VAE_UNUSED_ORIGINAL_KEYS = ("per_channel_statistics.channel", "per_channel_statistics.mean-of-stds",
                            "per_channel_statistics.mean-of-stds_over_std-of-means")
_ORIGINAL_VAE_POSITION = re.compile(r"^(encoder)\.down_blocks\.(\d+)\.(.+)$|^(decoder)\.up_blocks\.(\d+)\.(.+)$")


def strip_vae_prefix(key: str) -> str:
    return key[len(VAE_PREFIX):] if key.startswith(VAE_PREFIX) else key


def _rename_pieces(inner: str, to_diffusers: bool) -> str:
    table = _VAE_PIECES if to_diffusers else _invert(_VAE_PIECES)
    parts = inner.split(".")
    out, i = [], 0
    while i < len(parts):
        two = ".".join(parts[i:i + 2])
        if two in table and i + 1 < len(parts):
            out.append(table[two])
            i += 2
        elif parts[i] in table:
            out.append(table[parts[i]])
            i += 1
        else:
            out.append(parts[i])
            i += 1
    return ".".join(out)


def _valid_inner(inner: str) -> bool:
    """Does an original inner path look like a parameter of a VAE block (resnet, conv, time embedder)?"""
    pattern = re.compile(
        r"^(?:res_blocks\.\d+\.)?"
        r"(?:(?:conv1|conv2)\.conv\.(?:weight|bias)|conv_shortcut\.(?:weight|bias)|norm3\.norm\.(?:weight|bias)"
        r"|conv\.conv\.(?:weight|bias)|conv\.(?:weight|bias)|scale_shift_table|per_channel_scale[12]"
        r"|time_embedder\.timestep_embedder\.linear_[12]\.(?:weight|bias))$"
    )
    return pattern.match(inner) is not None


def detect_vae_version(shapes: dict) -> str:
    """VAE generation ("0.9.0", "0.9.1" or "0.9.5") from original-named keys (with or without `vae.`).

    0.9.5+ encoders end at 2048 channels (space-to-depth downsamplers: `encoder.down_blocks.1.conv.conv`);
    0.9.1 keeps the 0.9.0 encoder but has a timestep-conditioned decoder (`decoder.last_time_embedder`).
    """
    shapes = {strip_vae_prefix(k): v for k, v in shapes.items()}
    if "encoder.conv_out.conv.weight" not in shapes and "decoder.conv_in.conv.weight" not in shapes:
        raise CheckpointMismatchError(
            "no LTX-Video VAE keys found (expected 'encoder.conv_out.conv.weight' or 'decoder.conv_in.conv.weight', "
            "optionally under 'vae.')."
        )
    if "encoder.down_blocks.1.conv.conv.weight" in shapes or (
            "encoder.conv_out.conv.weight" in shapes and tuple(shapes["encoder.conv_out.conv.weight"])[1] == 2048):
        return "0.9.5"
    if "decoder.last_time_embedder.timestep_embedder.linear_1.weight" in shapes:
        return "0.9.1"
    return "0.9.0"


def original_vae_key_to_diffusers(key: str, version: str) -> str | None:
    """Original VAE key (with or without `vae.`) -> diffusers `AutoencoderKLLTXVideo` key; None if it is
    unknown. Unused statistics (`VAE_UNUSED_ORIGINAL_KEYS`) also give None: callers drop them."""
    key = strip_vae_prefix(key)
    if key in _VAE_FIXED:
        return _VAE_FIXED[key]
    match = _ORIGINAL_VAE_POSITION.match(key)
    if match is None:
        return None
    side, position, inner = (match.group(1), match.group(2), match.group(3)) if match.group(1) else \
        (match.group(4), match.group(5), match.group(6))
    table = VAE_VERSIONS[version][side]
    if int(position) >= len(table) or not _valid_inner(inner):
        return None
    return f"{side}.{table[int(position)]}.{_rename_pieces(inner, to_diffusers=True)}"


def diffusers_vae_key_to_original(key: str, version: str) -> str | None:
    """diffusers `AutoencoderKLLTXVideo` key -> original VAE key (no `vae.` prefix); None if unknown."""
    fixed = _invert(_VAE_FIXED)
    if key in fixed:
        return fixed[key]
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        return None
    # longest diffusers module path first: `up_blocks.1.upsamplers.0` before `up_blocks.1`
    for position, path in sorted(enumerate(VAE_VERSIONS[version][side]), key=lambda item: -len(item[1])):
        if rest.startswith(path + "."):
            inner = _rename_pieces(rest[len(path) + 1:], to_diffusers=False)
            if not _valid_inner(inner):
                return None
            blocks = "down_blocks" if side == "encoder" else "up_blocks"
            return f"{side}.{blocks}.{position}.{inner}"
    return None


def convert_vae_state_dict(state_dict: dict, source: str, version: str | None = None) -> tuple[dict, str]:
    """Original-named VAE state dict (keys maybe under `vae.`) -> (diffusers state dict, version)."""
    version = version or detect_vae_version({k: tuple(v.shape) for k, v in state_dict.items()})
    converted = checkpoint_io.rename_keys(
        state_dict, lambda key: original_vae_key_to_diffusers(key, version), source,
        f" for the original LTX-Video {version} VAE layout. The file is not an LTX-Video 0.9.x VAE, or it is damaged.",
        skip=lambda key: strip_vae_prefix(key) in VAE_UNUSED_ORIGINAL_KEYS)
    return converted, version


# ------------------------------------------------------------------ spatial latent upscaler

_UPSCALER_KEY = re.compile(
    r"^(?:initial_conv|final_conv|initial_norm|upsampler\.0"
    r"|(?:res_blocks|post_upsample_res_blocks)\.\d+\.(?:conv1|conv2|norm1|norm2))\.(?:weight|bias)$"
)


def original_upscaler_key_to_diffusers(key: str) -> str | None:
    """`ltxv-spatial-upscaler-*.safetensors` key -> `LTXLatentUpsamplerModel` key: the same name (the vendor
    and diffusers share the module tree); None for anything that is not part of it (e.g. the rational
    resampler `upsampler.conv` of later upscalers, which diffusers 0.42.1 does not implement)."""
    return key if _UPSCALER_KEY.match(key) else None


def diffusers_upscaler_key_to_original(key: str) -> str | None:
    return key if _UPSCALER_KEY.match(key) else None


def convert_upscaler_state_dict(state_dict: dict, source: str) -> dict:
    """Original upscaler state dict -> diffusers names (the same), refusing keys that are not part of it."""
    return checkpoint_io.rename_keys(
        state_dict, original_upscaler_key_to_diffusers, source,
        " for the LTX-Video spatial latent upscaler layout (ltxv-spatial-upscaler-0.9.7/0.9.8). Upscalers "
        "with a rational resampler ('upsampler.conv') or LTX-2 upscalers are not supported by diffusers 0.42.1.")
