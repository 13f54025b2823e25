"""Key names of the Wan transformer: the original Wan-AI layout <-> diffusers' WanTransformer3DModel.

The original layout is what Wan-AI releases (`high_noise_model/*.safetensors`) and what ComfyUI single
files hold (optionally under `model.diffusion_model.`). diffusers names the same tensors differently;
the mapping is one-to-one, so it is written as a table of name parts and applied in both directions
(loading checkpoints, and reading LoRAs that use either naming).
"""

from __future__ import annotations

import re

COMFYUI_PREFIXES = ("model.diffusion_model.", "diffusion_model.")

# Whole-name prefixes outside the blocks: original -> diffusers.
_TOP_LEVEL = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "head.modulation": "scale_shift_table",
    # Wan 2.1 image-conditioned models carry a CLIP image projection (kept for LoRAs that touch it).
    "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
}

# Module paths inside `blocks.N.`: original -> diffusers. The original `norm3` is the affine norm in
# front of cross-attention, which diffusers calls `norm2` (its norm1/norm3 carry no weights).
_IN_BLOCK = {
    "modulation": "scale_shift_table",
    "norm3": "norm2",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}
_ATTENTION = {"self_attn": "attn1", "cross_attn": "attn2"}
_ATTENTION_PARTS = {
    "q": "to_q",
    "k": "to_k",
    "v": "to_v",
    "o": "to_out.0",
    "norm_q": "norm_q",
    "norm_k": "norm_k",
    "k_img": "add_k_proj",
    "v_img": "add_v_proj",
    "norm_k_img": "norm_added_k",
}

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _invert(table: dict[str, str]) -> dict[str, str]:
    return {v: k for k, v in table.items()}


def strip_comfyui_prefix(key: str) -> str:
    """`model.diffusion_model.blocks.0...` -> `blocks.0...` (ComfyUI single files may carry it)."""
    for prefix in COMFYUI_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _rename_module(path: str, top: dict, in_block: dict, attention: dict, parts: dict) -> str | None:
    """Rename a module path (no `.weight` suffix) with the given tables; None when no rule matches."""
    block = _BLOCK.match(path)
    if block is None:
        return top.get(path)
    index, rest = block.groups()
    if rest in in_block:
        return f"blocks.{index}.{in_block[rest]}"
    attn_name, _, part = rest.partition(".")
    if attn_name in attention and part in parts:
        return f"blocks.{index}.{attention[attn_name]}.{parts[part]}"
    return None


def _split_param(key: str) -> tuple[str, str]:
    """`blocks.0.self_attn.q.weight` -> (`blocks.0.self_attn.q`, `weight`). Bare parameters
    (`blocks.0.modulation`, `head.modulation`) have no suffix."""
    module, _, last = key.rpartition(".")
    if last in ("weight", "bias", "scale_weight", "scale_input") and module:
        return module, last
    return key, ""


def original_module_to_diffusers(path: str) -> str | None:
    """Module path in original naming -> diffusers naming, or None if it is not a Wan module."""
    return _rename_module(path, _TOP_LEVEL, _IN_BLOCK, _ATTENTION, _ATTENTION_PARTS)


def diffusers_module_to_original(path: str) -> str | None:
    """Module path in diffusers naming -> original naming, or None if it is not a Wan module."""
    return _rename_module(
        path, _invert(_TOP_LEVEL), _invert(_IN_BLOCK), _invert(_ATTENTION), _invert(_ATTENTION_PARTS)
    )


def original_key_to_diffusers(key: str) -> str | None:
    """Full parameter name, original (with or without ComfyUI prefix) -> diffusers; None if unknown."""
    module, param = _split_param(strip_comfyui_prefix(key))
    renamed = original_module_to_diffusers(module)
    if renamed is None:
        return None
    return f"{renamed}.{param}" if param else renamed


def diffusers_key_to_original(key: str) -> str | None:
    module, param = _split_param(key)
    renamed = diffusers_module_to_original(module)
    if renamed is None:
        return None
    return f"{renamed}.{param}" if param else renamed


def is_diffusers_naming(keys) -> bool:
    """True when a state dict already uses diffusers names (a diffusers folder or a repacked file)."""
    return any(k.startswith("condition_embedder.") or ".attn1." in k for k in keys)
