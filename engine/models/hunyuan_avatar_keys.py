"""Key names of the HunyuanVideo-Avatar transformer: the vendor's layout <-> our `HunyuanAvatarTransformer`.

The vendor layout is what `mp_rank_00_model_states.pt` holds under `module` (and its `_fp8.pt` twin, and
repacked single files, maybe under `model.diffusion_model.`): 946 keys, listed with their shapes in
`../shared/reference/hunyuan_avatar_transformer_keys.json`. Our names are diffusers' HunyuanVideo names for
the backbone and the vendor's own for the avatar modules.

Most tensors are renamed one to one. Three kinds are split or reordered along their first axis (rows):
- fused q/k/v projections (`img_attn_qkv`, `txt_attn_qkv`, the refiner's `self_attn_qkv`) -> three
  Linears of equal size, in q, k, v order;
- the single blocks' `linear1` -> q, k, v (hidden rows each) and the MLP input (the remaining rows);
- `final_layer.adaLN_modulation.1` holds (shift, scale); diffusers' AdaLayerNormContinuous reads
  (scale, shift): the halves are swapped.
Each rule works both ways, on real or meta tensors, so the same table converts checkpoints, derives the
expected vendor shapes from a model, and writes vendor-layout files for tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import torch

from ..errors import CheckpointMismatchError
from . import checkpoint_io

VENDOR_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
LAYOUT_VENDOR = "HunyuanVideo-Avatar vendor"  # the naming of mp_rank_00_model_states.pt (under `module`)

WHOLE, QKV, QKV_MLP, SWAP_HALVES = "whole", "qkv", "qkv+mlp", "swap halves"


@dataclass(frozen=True)
class _Rule:
    targets: tuple[str, ...]  # our module names (relative to the group), in the vendor tensor's row order
    kind: str = WHOLE


def _same(*names: str) -> dict[str, _Rule]:
    return {name: _Rule((name,)) for name in names}


_TOP = {
    "img_in.proj": _Rule(("x_embedder.proj",)),
    "txt_in.input_embedder": _Rule(("context_embedder.proj_in",)),
    "txt_in.t_embedder.mlp.0": _Rule(("context_embedder.time_text_embed.timestep_embedder.linear_1",)),
    "txt_in.t_embedder.mlp.2": _Rule(("context_embedder.time_text_embed.timestep_embedder.linear_2",)),
    "txt_in.c_embedder.linear_1": _Rule(("context_embedder.time_text_embed.text_embedder.linear_1",)),
    "txt_in.c_embedder.linear_2": _Rule(("context_embedder.time_text_embed.text_embedder.linear_2",)),
    "time_in.mlp.0": _Rule(("time_text_embed.timestep_embedder.linear_1",)),
    "time_in.mlp.2": _Rule(("time_text_embed.timestep_embedder.linear_2",)),
    "vector_in.in_layer": _Rule(("time_text_embed.text_embedder.linear_1",)),
    "vector_in.out_layer": _Rule(("time_text_embed.text_embedder.linear_2",)),
    "final_layer.linear": _Rule(("proj_out",)),
    "final_layer.adaLN_modulation.1": _Rule(("norm_out.linear",), SWAP_HALVES),
    "motion_exp.mlp.0": _Rule(("motion_exp.linear_1",)),
    "motion_exp.mlp.2": _Rule(("motion_exp.linear_2",)),
    "motion_pose.mlp.0": _Rule(("motion_pose.linear_1",)),
    "motion_pose.mlp.2": _Rule(("motion_pose.linear_2",)),
    "fps_proj.mlp.0": _Rule(("fps_proj.linear_1",)),
    "fps_proj.mlp.2": _Rule(("fps_proj.linear_2",)),
    **_same("ref_in.proj", "before_proj", "audio_proj.proj1", "audio_proj.proj2", "audio_proj.proj3", "audio_proj.norm"),
}
_REFINER = {
    "norm1": _Rule(("norm1",)),
    "self_attn_qkv": _Rule(("attn.to_q", "attn.to_k", "attn.to_v"), QKV),
    "self_attn_proj": _Rule(("attn.to_out.0",)),
    "norm2": _Rule(("norm2",)),
    "mlp.fc1": _Rule(("ff.net.0.proj",)),
    "mlp.fc2": _Rule(("ff.net.2",)),
    "adaLN_modulation.1": _Rule(("norm_out.linear",)),
}
_DOUBLE = {
    "img_mod.linear": _Rule(("norm1.linear",)),
    "txt_mod.linear": _Rule(("norm1_context.linear",)),
    "img_attn_qkv": _Rule(("attn.to_q", "attn.to_k", "attn.to_v"), QKV),
    "txt_attn_qkv": _Rule(("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), QKV),
    "img_attn_q_norm": _Rule(("attn.norm_q",)),
    "img_attn_k_norm": _Rule(("attn.norm_k",)),
    "txt_attn_q_norm": _Rule(("attn.norm_added_q",)),
    "txt_attn_k_norm": _Rule(("attn.norm_added_k",)),
    "img_attn_proj": _Rule(("attn.to_out.0",)),
    "txt_attn_proj": _Rule(("attn.to_add_out",)),
    "img_mlp.fc1": _Rule(("ff.net.0.proj",)),
    "img_mlp.fc2": _Rule(("ff.net.2",)),
    "txt_mlp.fc1": _Rule(("ff_context.net.0.proj",)),
    "txt_mlp.fc2": _Rule(("ff_context.net.2",)),
}
_SINGLE = {
    "linear1": _Rule(("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), QKV_MLP),
    "linear2": _Rule(("proj_out",)),
    "q_norm": _Rule(("attn.norm_q",)),
    "k_norm": _Rule(("attn.norm_k",)),
    "modulation.linear": _Rule(("norm.linear",)),
}
_ADAPTER = _same("norm1", "norm2", "to_q", "to_kv", "to_out")

# (vendor prefix, our prefix, rules); `{}` is the block index. The top level comes last.
_GROUPS = (
    ("txt_in.individual_token_refiner.blocks.{}.", "context_embedder.token_refiner.refiner_blocks.{}.", _REFINER),
    ("double_blocks.{}.", "transformer_blocks.{}.", _DOUBLE),
    ("single_blocks.{}.", "single_transformer_blocks.{}.", _SINGLE),
    ("audio_adapter_blocks.{}.", "audio_adapter_blocks.{}.", _ADAPTER),
    ("", "", _TOP),
)
_PARAMS = ("weight", "bias")


def _prefix_pattern(prefix: str) -> re.Pattern:
    return re.compile("^" + re.escape(prefix).replace(r"\{\}", r"(\d+)"))


_VENDOR_GROUPS = [(_prefix_pattern(v), o, rules) for v, o, rules in _GROUPS]
_OUR_GROUPS = [
    (_prefix_pattern(o), v, {target: (module, position, rule) for module, rule in rules.items()
                             for position, target in enumerate(rule.targets)})
    for v, o, rules in _GROUPS
]


def strip_vendor_prefix(key: str) -> str:
    for prefix in VENDOR_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _split_param(key: str) -> tuple[str, str] | None:
    module, _, param = key.rpartition(".")
    return (module, param) if module and param in _PARAMS else None


def _vendor_rule(key: str) -> tuple[str, str, _Rule, str] | None:
    """Vendor key -> (our group prefix, vendor module, rule, param); None when no rule covers it."""
    split = _split_param(strip_vendor_prefix(key))
    if split is None:
        return None
    path, param = split
    for pattern, our_prefix, rules in _VENDOR_GROUPS:
        match = pattern.match(path)
        if match is None:
            continue
        module = path[match.end():]
        if module in rules:
            return our_prefix.format(*match.groups()), module, rules[module], param
        if our_prefix:  # a block key whose part is unknown; never fall through to the top level
            return None
    return None


def _row_pieces(rule: _Rule, rows: int, hidden_size: int) -> list[tuple[int, int]] | None:
    """(start, length) along the vendor tensor's rows for each target, in target order; None if they do not fit."""
    if rule.kind == WHOLE:
        return [(0, rows)]
    if rule.kind == QKV:
        if rows % 3:
            return None
        third = rows // 3
        return [(0, third), (third, third), (2 * third, third)]
    if rule.kind == QKV_MLP:
        if rows <= 3 * hidden_size:
            return None
        return [(0, hidden_size), (hidden_size, hidden_size), (2 * hidden_size, hidden_size),
                (3 * hidden_size, rows - 3 * hidden_size)]
    if rule.kind == SWAP_HALVES:
        return None if rows % 2 else [(0, rows)]
    raise AssertionError(rule.kind)


def is_vendor_key(key: str) -> bool:
    return _vendor_rule(key) is not None


def vendor_to_ours(state_dict: Mapping[str, torch.Tensor], hidden_size: int, source: str,
                   layout: str = LAYOUT_VENDOR) -> dict[str, torch.Tensor]:
    """Vendor-named tensors (prefix optional) -> our names. Splits are views (no copy); unknown keys or tensors
    that cannot be split raise CheckpointMismatchError naming the key, `source` and `layout`."""
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state_dict.items():
        found = _vendor_rule(key)
        if found is None:
            unknown.append(key)
            continue
        our_prefix, _, rule, param = found
        rows = tensor.shape[0] if tensor.ndim else 0
        pieces = _row_pieces(rule, rows, hidden_size)
        if pieces is None:
            raise CheckpointMismatchError(
                f"{source}: key '{key}' has shape {list(tensor.shape)}, which cannot be the fused tensor the "
                f"{layout} layout stores there ({rule.kind} rule, hidden size {hidden_size}). The file is damaged "
                "or from another model."
            )
        if rule.kind == SWAP_HALVES:
            half = rows // 2
            converted[f"{our_prefix}{rule.targets[0]}.{param}"] = torch.cat([tensor[half:], tensor[:half]])
            continue
        for target, (start, length) in zip(rule.targets, pieces):
            converted[f"{our_prefix}{target}.{param}"] = tensor.narrow(0, start, length) if len(pieces) > 1 else tensor
    if unknown:
        raise CheckpointMismatchError(
            f"{source}: unexpected key {checkpoint_io.key_list_text(unknown)}"
            f" for the {layout} layout of the HunyuanVideo-Avatar transformer. This is not a HunyuanVideo-Avatar "
            "transformer file, or it was saved by a tool that renamed its keys."
        )
    return converted


def vendor_name_of(our_key: str) -> tuple[str, int] | None:
    """Our parameter name -> (vendor key, position of our piece in it); None if it is not ours."""
    split = _split_param(our_key)
    if split is None:
        return None
    path, param = split
    for pattern, vendor_prefix, reverse in _OUR_GROUPS:
        match = pattern.match(path)
        if match is None:
            continue
        module = path[match.end():]
        if module in reverse:
            vendor_module, position, _ = reverse[module]
            return f"{vendor_prefix.format(*match.groups())}{vendor_module}.{param}", position
        if vendor_prefix:
            return None
    return None


def ours_to_vendor(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our tensors -> the vendor layout (fused and reordered back). Works on meta tensors, which gives the
    vendor shapes a model expects. Raises CheckpointMismatchError for a name it does not know or a fused
    tensor with a piece missing."""
    grouped: dict[str, dict[int, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        found = vendor_name_of(key)
        if found is None:
            raise CheckpointMismatchError(f"'{key}' is not a parameter of the HunyuanVideo-Avatar transformer.")
        vendor_key, position = found
        grouped.setdefault(vendor_key, {})[position] = tensor
    vendor: dict[str, torch.Tensor] = {}
    for vendor_key, pieces in grouped.items():
        _, _, rule, _ = _vendor_rule(vendor_key)
        if sorted(pieces) != list(range(len(rule.targets))):
            raise CheckpointMismatchError(
                f"'{vendor_key}' is stored fused from {', '.join(rule.targets)}; some of them are missing."
            )
        if rule.kind == SWAP_HALVES:
            tensor = pieces[0]
            half = tensor.shape[0] // 2
            vendor[vendor_key] = torch.cat([tensor[half:], tensor[:half]])
        elif len(pieces) == 1:
            vendor[vendor_key] = pieces[0]
        else:
            vendor[vendor_key] = torch.cat([pieces[i] for i in range(len(pieces))])
    return vendor


def vendor_module_to_ours(module: str, hidden_size: int, rows: int) -> list[tuple[str, int, int]] | None:
    """A vendor Linear's module name (as the fp8 scale map names it) -> [(our Linear name, first row, rows)];
    None if unknown. The pieces of a split weight share the vendor tensor's per-tensor scale."""
    found = _vendor_rule(f"{strip_vendor_prefix(module)}.weight")
    if found is None:
        return None
    our_prefix, _, rule, _ = found
    pieces = _row_pieces(rule, rows, hidden_size)
    if pieces is None or rule.kind == SWAP_HALVES:
        return None
    return [(f"{our_prefix}{target}", start, length) for target, (start, length) in zip(rule.targets, pieces)]


def expected_vendor_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """The vendor keys and shapes a model of this config loads (derived through meta tensors, no memory)."""
    meta = {k: torch.empty(tuple(v.shape), device="meta") for k, v in model.state_dict().items()}
    return {k: tuple(v.shape) for k, v in ours_to_vendor(meta).items()}


# ------------------------------------------------------------------ what a file looks like


def describe_foreign_checkpoint(keys) -> str | None:
    """What a checkpoint that is not a HunyuanVideo-Avatar transformer looks like (None: it looks like one,
    or like nothing known)."""
    keys = {strip_vendor_prefix(k) for k in keys}
    has = lambda *names: any(n in keys for n in names)  # noqa: E731
    starts = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if has("audio_proj.proj1.weight") or has("ref_in.proj.weight"):
        return None
    if has("patch_embedding.weight", "head.head.weight") or starts("blocks.0.self_attn."):
        return "a Wan transformer (original Wan-AI / ComfyUI layout)"
    if starts("condition_embedder.") or any(".attn1.to_q" in k and k.startswith("blocks.") for k in keys):
        return "a Wan transformer (diffusers layout)"
    if has("patchify_proj.weight") or starts("adaln_single.") or starts("vae."):
        return "an LTX-Video checkpoint (Lightricks layout)"
    if has("proj_in.weight") and starts("time_embed.") and starts("transformer_blocks."):
        return "an LTX-Video transformer (diffusers layout)"
    if has("img_in.proj.weight") and starts("double_blocks."):
        kind = "guidance-distilled text-to-video" if starts("guidance_in.") else "text/image-to-video"
        return (f"a HunyuanVideo {kind} transformer (vendor layout) without the avatar modules "
                "(ref_in, audio_proj, audio_adapter_blocks ...)")
    if has("x_embedder.proj.weight") and starts("transformer_blocks."):
        return "a HunyuanVideo transformer (diffusers layout) without the avatar modules"
    if any(k.startswith(("encoder.", "decoder.")) for k in keys):
        return "a VAE"
    if any("lora_" in k or ".lora." in k for k in keys):
        return "a LoRA"
    return None
