"""Key names of the Wan VAE: the original Wan-AI layout <-> diffusers' AutoencoderKLWan, for both versions.

- Wan 2.1 VAE (16 latent channels; used by the A14B models): `Wan2.1_VAE.pth`, ComfyUI's
  `models/vae/wan_2.1_vae.safetensors`.
- Wan 2.2 VAE (48 latent channels, 2x2 patchify, residual down/up blocks; used by TI2V-5B):
  `Wan2.2_VAE.pth`, ComfyUI's `models/vae/wan2.2_vae.safetensors`.

Wan-AI's .pth files and ComfyUI's files use the same names (ComfyUI's comfy/ldm/wan/vae.py and vae2_2.py
keep the original module tree), with no prefix. diffusers' own converter only knows 2.1, hence this table.

The original modules are `nn.Sequential`s indexed by position, so most of the work is turning positions
into diffusers' named blocks. Which block a position belongs to depends on the number of residual blocks
per stage, so that is read off the keys themselves (a resample module closes a stage), never assumed.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable

import torch
from diffusers import AutoencoderKLWan

from ..errors import CheckpointMismatchError

VERSIONS = ("2.1", "2.2")

# Inside one module: original sub-path -> diffusers sub-path, by kind of module.
_RESNET = {"residual.0": "norm1", "residual.2": "conv1", "residual.3": "norm2", "residual.6": "conv2",
           "shortcut": "conv_shortcut"}
_ATTENTION = {"norm": "norm", "to_qkv": "to_qkv", "proj": "proj"}
_RESAMPLE = {"resample.1": "resample.1", "time_conv": "time_conv"}
_KINDS = {"resnet": _RESNET, "attention": _ATTENTION, "resample": _RESAMPLE}
_PARAMS = ("weight", "bias", "gamma")

# Fixed positions: original module path -> diffusers module path (same in both versions).
_FIXED = {
    "conv1": "quant_conv",
    "conv2": "post_quant_conv",
    "encoder.conv1": "encoder.conv_in",
    "decoder.conv1": "decoder.conv_in",
    "encoder.head.0": "encoder.norm_out",
    "encoder.head.2": "encoder.conv_out",
    "decoder.head.0": "decoder.norm_out",
    "decoder.head.2": "decoder.conv_out",
}
# The middle `nn.Sequential(ResidualBlock, AttentionBlock, ResidualBlock)` -> diffusers' WanMidBlock.
_MIDDLE = {"0": ("resnet", "mid_block.resnets.0"), "1": ("attention", "mid_block.attentions.0"),
           "2": ("resnet", "mid_block.resnets.1")}

_ORIGINAL_STAGES = {
    # 2.1: one flat Sequential per side
    "2.1": re.compile(r"^(encoder\.downsamples|decoder\.upsamples)\.(\d+)\.(.+)$"),
    # 2.2: a Sequential of Down_/Up_ResidualBlocks, each holding its own Sequential
    "2.2": re.compile(r"^(encoder\.downsamples|decoder\.upsamples)\.(\d+)\.(?:downsamples|upsamples)\.(\d+)\.(.+)$"),
}
_MIDDLE_KEY = re.compile(r"^(encoder|decoder)\.middle\.(\d+)\.(.+)$")

# diffusers side
_DIFFUSERS_MID = re.compile(r"^(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")
_DIFFUSERS_21_ENCODER = re.compile(r"^encoder\.down_blocks\.(\d+)\.(.+)$")
_DIFFUSERS_21_DECODER = re.compile(r"^decoder\.up_blocks\.(\d+)\.(?:resnets\.(\d+)|upsamplers\.0)\.(.+)$")
_DIFFUSERS_22 = re.compile(
    r"^(encoder\.down_blocks|decoder\.up_blocks)\.(\d+)\.(?:resnets\.(\d+)|downsampler|upsampler)\.(.+)$")


def _kind_of(inner: str, original_naming: bool = True) -> str | None:
    """What kind of module an inner key (`residual.2.weight`, `time_conv.bias`, `norm1.gamma`...) belongs to."""
    for kind, table in _KINDS.items():
        names = table.keys() if original_naming else table.values()
        if any(inner.startswith(name + ".") for name in names):
            return kind
    return None


def _rename_inner(kind: str, inner: str, to_diffusers: bool) -> str | None:
    module, _, param = inner.rpartition(".")
    if param not in _PARAMS:
        return None
    table = _KINDS[kind] if to_diffusers else {v: k for k, v in _KINDS[kind].items()}
    renamed = table.get(module)
    return f"{renamed}.{param}" if renamed is not None else None


def _rename_fixed(key: str, to_diffusers: bool) -> str | None:
    module, _, param = key.rpartition(".")
    table = _FIXED if to_diffusers else {v: k for k, v in _FIXED.items()}
    if param in _PARAMS and module in table:
        return f"{table[module]}.{param}"
    return None


def _mismatch(key: str, version: str, layout: str, source: str, why: str = "") -> CheckpointMismatchError:
    return CheckpointMismatchError(
        f"{source}: key '{key}' is not part of the {layout} layout of the Wan {version} VAE{why}. The file is not "
        f"a Wan {version} VAE, or it is damaged. Use the Wan 2.1 VAE (wan_2.1_vae.safetensors / Wan2.1_VAE.pth) "
        "with the A14B models and the Wan 2.2 VAE (wan2.2_vae.safetensors / Wan2.2_VAE.pth) with TI2V-5B."
    )


def _check_version(version: str) -> None:
    if version not in VERSIONS:
        raise ValueError(f"unknown Wan VAE version {version!r}; expected one of {VERSIONS}")


# ------------------------------------------------------------------ version detection

def detect_wan_vae_version(shapes: dict[str, tuple]) -> str:
    """"2.1" or "2.2", from a checkpoint's key names (original or diffusers naming) and shapes.

    The structure decides (2.2 nests residual blocks inside each down/up stage), as ComfyUI does; the
    2.2 VAE's patchified input (12 = 3 colours x 2 x 2) is checked as well.
    """
    if "decoder.middle.0.residual.0.gamma" in shapes:  # original / ComfyUI naming
        is_22 = "decoder.upsamples.0.upsamples.0.residual.2.weight" in shapes
        conv_in = "encoder.conv1.weight"
    elif "decoder.mid_block.resnets.0.norm1.gamma" in shapes:  # diffusers naming
        is_22 = "encoder.down_blocks.0.resnets.0.conv1.weight" in shapes
        conv_in = "encoder.conv_in.weight"
    else:
        raise CheckpointMismatchError(
            "no Wan VAE keys found (expected 'decoder.middle.0.residual.0.gamma' in original naming or "
            "'decoder.mid_block.resnets.0.norm1.gamma' in diffusers naming)."
        )
    if is_22 and conv_in in shapes and tuple(shapes[conv_in])[1] != 12:
        raise CheckpointMismatchError(
            f"key '{conv_in}' has shape {list(shapes[conv_in])}: a Wan 2.2 VAE takes 12 input channels "
            "(3 colours patchified 2x2). The file is not a Wan VAE or is damaged."
        )
    return "2.2" if is_22 else "2.1"


# ------------------------------------------------------------------ original -> diffusers

def _decoder_21_positions(keys: Iterable[str], source: str) -> dict[int, str]:
    """2.1 decoder: flat position in `decoder.upsamples` -> diffusers block path.

    Each stage is (num_res_blocks + 1) residual blocks, then a resample except after the last stage.
    """
    kinds: dict[int, set[str]] = defaultdict(set)
    for key in keys:
        match = _ORIGINAL_STAGES["2.1"].match(key)
        if match and match.group(1) == "decoder.upsamples":
            kinds[int(match.group(2))].add(_kind_of(match.group(3)) or "unknown")
    positions, stage, index = {}, 0, 0
    for position in range(max(kinds, default=-1) + 1):
        if position not in kinds:
            raise CheckpointMismatchError(
                f"{source}: no keys for 'decoder.upsamples.{position}' in the original Wan 2.1 VAE layout, while "
                "later positions are present. The file is damaged or incomplete: download it again."
            )
        if kinds[position] == {"resample"}:
            positions[position] = f"decoder.up_blocks.{stage}.upsamplers.0"
            stage, index = stage + 1, 0
        else:  # a residual block (anything else is rejected key by key later)
            positions[position] = f"decoder.up_blocks.{stage}.resnets.{index}"
            index += 1
    return positions


def _original_key_to_diffusers(key: str, version: str, decoder_positions: dict[int, str]) -> str | None:
    fixed = _rename_fixed(key, to_diffusers=True)
    if fixed is not None:
        return fixed
    middle = _MIDDLE_KEY.match(key)
    if middle is not None:
        side, position, inner = middle.groups()
        if position not in _MIDDLE:
            return None
        kind, path = _MIDDLE[position]
        renamed = _rename_inner(kind, inner, to_diffusers=True)
        return f"{side}.{path}.{renamed}" if renamed else None
    stage = _ORIGINAL_STAGES[version].match(key)
    if stage is None:
        return None
    if version == "2.1":
        sequence, position, inner = stage.groups()
        kind = _kind_of(inner)
        if kind is None:
            return None
        if sequence == "encoder.downsamples":  # diffusers keeps the flat list for the 2.1 encoder
            path = f"encoder.down_blocks.{position}"
        else:
            path = decoder_positions[int(position)]
            # diffusers' 2.1 decoder has no attention in its up blocks (Wan uses none there)
            if kind == "attention" or (kind == "resample") != path.endswith("upsamplers.0"):
                return None
    else:
        sequence, block, position, inner = stage.groups()
        kind = _kind_of(inner)
        if kind not in ("resnet", "resample"):
            return None
        side, blocks = ("encoder", "down_blocks") if sequence == "encoder.downsamples" else ("decoder", "up_blocks")
        if kind == "resnet":
            path = f"{side}.{blocks}.{block}.resnets.{position}"
        else:
            path = f"{side}.{blocks}.{block}.{'downsampler' if side == 'encoder' else 'upsampler'}"
    renamed = _rename_inner(kind, inner, to_diffusers=True)
    return f"{path}.{renamed}" if renamed else None


def convert_wan_vae_original_to_diffusers(state_dict: dict, version: str, source: str = "checkpoint") -> dict:
    """Original (Wan-AI .pth / ComfyUI) Wan VAE state dict -> AutoencoderKLWan state dict.

    Strict: a key with no place in the `version` layout raises CheckpointMismatchError naming it. Missing
    keys and shapes are checked when the result is loaded into the model (checkpoint_io.load_into_meta_model).
    """
    _check_version(version)
    decoder_positions = _decoder_21_positions(state_dict, source) if version == "2.1" else {}
    converted = {}
    for key, tensor in state_dict.items():
        new_key = _original_key_to_diffusers(key, version, decoder_positions)
        if new_key is None:
            raise _mismatch(key, version, "original (Wan-AI / ComfyUI)", source)
        converted[new_key] = tensor
    return converted


# ------------------------------------------------------------------ diffusers -> original

def _count_block_children(keys: Iterable[str], pattern: re.Pattern) -> dict[tuple, tuple[int, bool]]:
    """diffusers block -> (number of resnets, has a resample), read off the keys."""
    resnets: dict[tuple, set[int]] = defaultdict(set)
    resample: dict[tuple, bool] = defaultdict(bool)
    for key in keys:
        match = pattern.match(key)
        if match is None:
            continue
        groups = match.groups()
        if pattern is _DIFFUSERS_21_DECODER:
            block, resnet = (groups[0],), groups[1]
        else:
            block, resnet = groups[:2], groups[2]
        if resnet is None:
            resample[block] = True
        else:
            resnets[block].add(int(resnet))
        resample.setdefault(block, False)
    return {block: (len(resnets[block]), resample[block]) for block in resample}


def _diffusers_key_to_original(key: str, version: str, children: dict) -> str | None:
    fixed = _rename_fixed(key, to_diffusers=False)
    if fixed is not None:
        return fixed
    mid = _DIFFUSERS_MID.match(key)
    if mid is not None:
        side, group, index, inner = mid.groups()
        for position, (kind, path) in _MIDDLE.items():
            if path == f"mid_block.{group}.{index}":
                renamed = _rename_inner(kind, inner, to_diffusers=False)
                return f"{side}.middle.{position}.{renamed}" if renamed else None
        return None
    if version == "2.1":
        encoder = _DIFFUSERS_21_ENCODER.match(key)
        if encoder is not None:
            position, inner = encoder.groups()
            kind = _kind_of(inner, original_naming=False)
            renamed = _rename_inner(kind, inner, to_diffusers=False) if kind else None
            return f"encoder.downsamples.{position}.{renamed}" if renamed else None
        decoder = _DIFFUSERS_21_DECODER.match(key)
        if decoder is None:
            return None
        stage, resnet, inner = decoder.groups()
        offset = sum(count + has_resample for (other,), (count, has_resample) in children.items()
                     if int(other) < int(stage))
        position = offset + (int(resnet) if resnet is not None else children[(stage,)][0])
        renamed = _rename_inner("resnet" if resnet is not None else "resample", inner, to_diffusers=False)
        return f"decoder.upsamples.{position}.{renamed}" if renamed else None
    match = _DIFFUSERS_22.match(key)
    if match is None:
        return None
    sequence, block, resnet, inner = match.groups()
    original = "encoder.downsamples" if sequence == "encoder.down_blocks" else "decoder.upsamples"
    inner_list = original.rpartition(".")[2]
    position = int(resnet) if resnet is not None else children[(sequence, block)][0]
    renamed = _rename_inner("resnet" if resnet is not None else "resample", inner, to_diffusers=False)
    return f"{original}.{block}.{inner_list}.{position}.{renamed}" if renamed else None


def convert_wan_vae_diffusers_to_original(state_dict: dict, version: str, source: str = "state dict") -> dict:
    """AutoencoderKLWan state dict -> original Wan naming (used to write demo checkpoints in that layout)."""
    _check_version(version)
    pattern = _DIFFUSERS_21_DECODER if version == "2.1" else _DIFFUSERS_22
    children = _count_block_children(state_dict, pattern)
    converted = {}
    for key, tensor in state_dict.items():
        new_key = _diffusers_key_to_original(key, version, children)
        if new_key is None:
            raise _mismatch(key, version, "diffusers AutoencoderKLWan", source)
        converted[new_key] = tensor
    return converted


def original_wan_vae_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the original-layout checkpoint that matches a diffusers AutoencoderKLWan config."""
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    version = "2.2" if config.get("is_residual") else "2.1"
    with torch.device("meta"):
        model = AutoencoderKLWan(**config)
    original = convert_wan_vae_diffusers_to_original(model.state_dict(), version)
    return {k: tuple(v.shape) for k, v in original.items()}
