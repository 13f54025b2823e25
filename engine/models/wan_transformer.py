"""Loading one Wan 2.2 transformer (an A14B expert or TI2V-5B) from any layout into diffusers'
WanTransformer3DModel, strictly, with the variant read off the weights.

Layouts: a diffusers `transformer/` folder; an original Wan-AI folder or shard set (original key names);
a ComfyUI single file (original names, maybe under `model.diffusion_model.`, maybe "fp8_scaled":
fp8 weights with a per-layer `<layer>.scale_weight` that must be applied — read as plain weights they are
thousands of times off).
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass

import torch
from diffusers import WanTransformer3DModel

from ..errors import CheckpointMismatchError, ModelFilesError
from . import checkpoint_io, wan_keys
from .wan_variants import WanVariant, detect_wan_variant


@dataclass
class LoadedTransformer:
    model: WanTransformer3DModel
    variant: WanVariant
    source: str
    # fp8 weights of an fp8_scaled file, by diffusers Linear name: (fp8 weight, scale). Kept so an fp8
    # precision choice can use them directly instead of dequantizing and quantizing again.
    quantized: dict[str, tuple[torch.Tensor, torch.Tensor]]
    # Linear names whose float weight was never made (see `keep_fp8_as`): an fp8 precision replaces them with
    # the stored fp8 weights; `fill_placeholders` dequantizes whatever the precision did not take.
    placeholders: frozenset[str] = frozenset()

    def fill_placeholders(self) -> int:
        """Dequantize the stored weight into every placeholder Linear the precision left as a plain Linear
        (call after `apply_precision`); returns how many it filled."""
        filled = 0
        for name in self.placeholders:
            module = self.model.get_submodule(name)
            if isinstance(module, torch.nn.Linear):
                weight, scale = self.quantized[name]
                module.weight = torch.nn.Parameter(
                    (weight.float() * scale).to(module.weight.dtype).to(module.weight.device), requires_grad=False)
                filled += 1
        return filled


def _read_original(path: pathlib.Path, source: str, keep_fp8_as: torch.dtype | None = None):
    """Original-named checkpoint -> (diffusers-named state dict, quantized weights, placeholder Linear names)."""
    raw = checkpoint_io.read_state_dict(path)
    scales = {k[: -len(".scale_weight")]: v for k, v in raw.items() if k.endswith(".scale_weight")}
    state_dict, quantized, unknown, placeholders = {}, {}, [], set()
    for key, tensor in raw.items():
        bare = wan_keys.strip_comfyui_prefix(key)
        if key.endswith(".scale_weight") or key.endswith(".scale_input") or bare == "scaled_fp8":
            continue  # fp8_scaled bookkeeping, consumed below
        new_key = wan_keys.original_key_to_diffusers(key)
        if new_key is None:
            unknown.append(key)
            continue
        module = key[: -len(".weight")] if key.endswith(".weight") else None
        if module is not None and module in scales:
            scale = scales[module].float()
            layer = new_key[: -len(".weight")]
            quantized[layer] = (tensor, scale)
            if tensor.dtype == keep_fp8_as:
                # The precision will use the stored fp8 weight: no float copy (dequantizing 14 B weights on the
                # CPU took most of a 64 s load of both A14B experts on an H100 box). torch.empty is never
                # written, so it takes no memory; fill_placeholders covers any layer the precision leaves.
                tensor = torch.empty(tensor.shape, dtype=torch.bfloat16)
                placeholders.add(layer)
            else:
                tensor = (tensor.float() * scale).to(torch.bfloat16)  # dequantized copy for non-fp8 precisions
        elif tensor.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            tensor = tensor.to(torch.bfloat16)  # unscaled fp8 ("fp8_e4m3fn" files): plain cast is exact
        state_dict[new_key] = tensor
    if unknown:
        raise CheckpointMismatchError(
            f"{source}: unexpected key {checkpoint_io.key_list_text(unknown)}"
            " for the original Wan layout. This is not a Wan 2.2 transformer file (a LoRA, a VACE or "
            "Animate model, or another family?)."
        )
    return state_dict, quantized, frozenset(placeholders)


def _num_heads_hint(path: pathlib.Path) -> int | None:
    """Head count from an original `config.json` beside the weights, or from a demo file's config hint."""
    folder = path if path.is_dir() else path.parent
    config_file = folder / "config.json"
    if config_file.exists():
        try:
            config = json.loads(config_file.read_text())
            if "num_heads" in config:
                return int(config["num_heads"])
            if "num_attention_heads" in config:
                return int(config["num_attention_heads"])
        except (ValueError, OSError):
            pass
    hint = checkpoint_io.read_config_hint(path)
    return int(hint["num_attention_heads"]) if hint and "num_attention_heads" in hint else None


def transformer_config(variant: WanVariant, state_dict: dict, num_heads: int | None, source: str) -> dict:
    """The shipped config for a real-size checkpoint; for a smaller one (demo/test models of the same
    structure) the dimensions are read off the tensors."""
    config = variant.transformer_config_dict()
    dim = state_dict["patch_embedding.weight"].shape[0]
    if dim == variant.width:
        return config
    if num_heads is None or dim % num_heads:
        raise ModelFilesError(
            f"{source}: a Wan transformer of non-standard width {dim} needs its head count "
            "(a config.json with 'num_heads' beside it)."
        )
    num_layers = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
    config.update(
        num_attention_heads=num_heads,
        attention_head_dim=dim // num_heads,
        in_channels=state_dict["patch_embedding.weight"].shape[1],
        out_channels=state_dict["proj_out.weight"].shape[0] // 4,
        text_dim=state_dict["condition_embedder.text_embedder.linear_1.weight"].shape[1],
        freq_dim=state_dict["condition_embedder.time_embedder.linear_1.weight"].shape[1],
        ffn_dim=state_dict["blocks.0.ffn.net.0.proj.weight"].shape[0],
        num_layers=num_layers,
    )
    return config


def load_wan_transformer(path, layout: str, label: str | None = None,
                         keep_fp8_as: torch.dtype | None = None) -> LoadedTransformer:
    """Load a Wan transformer (bf16 or as stored) on the CPU. `layout` is used in messages only:
    'diffusers', 'Wan-AI release' or 'ComfyUI single file'. `keep_fp8_as`: the fp8 dtype the chosen precision
    stores weights in; fp8_scaled weights already in it get no float copy (`LoadedTransformer.placeholders`)."""
    path = pathlib.Path(path)
    source = label or str(path)
    diffusers_config = path / "config.json" if path.is_dir() else None
    config_data = None
    if diffusers_config is not None and diffusers_config.exists():
        config_data = json.loads(diffusers_config.read_text())
        if config_data.get("_class_name") not in (None, "WanTransformer3DModel", "WanModel"):
            raise ModelFilesError(
                f"{source}: config.json describes a '{config_data.get('_class_name')}', not a Wan transformer."
            )
    weights_path = path
    probe = checkpoint_io.read_shapes(weights_path)
    if wan_keys.is_diffusers_naming(probe):
        state_dict, quantized, placeholders = checkpoint_io.read_state_dict(weights_path), {}, frozenset()
    else:
        state_dict, quantized, placeholders = _read_original(weights_path, source, keep_fp8_as)
    if "patch_embedding.weight" not in state_dict:
        raise ModelFilesError(
            f"{source}: no 'patch_embedding.weight' tensor: this is not a Wan transformer "
            f"(assumed layout: {layout})."
        )
    variant = detect_wan_variant(state_dict["patch_embedding.weight"].shape, source, tiny_ok=True)
    num_heads = None
    if config_data is not None:
        num_heads = config_data.get("num_attention_heads") or config_data.get("num_heads")
    num_heads = num_heads or _num_heads_hint(path)
    config = transformer_config(variant, state_dict, num_heads, source)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    with checkpoint_io.empty_weights():
        model = WanTransformer3DModel(**config)
    checkpoint_io.load_into_meta_model(model, state_dict, source, f"{layout} Wan 2.2 {variant.display_name}")
    model.eval().requires_grad_(False)
    return LoadedTransformer(model=model, variant=variant, source=source, quantized=quantized,
                             placeholders=placeholders)


def probe_wan_transformer(path, label: str | None = None) -> tuple[WanVariant, int]:
    """(variant, attention-head count) of a Wan transformer checkpoint from its shapes and configs only, without
    reading its tensors: what a several-GPU run must check before it starts workers that load it."""
    path = pathlib.Path(path)
    source = label or str(path)
    shapes = {wan_keys.strip_comfyui_prefix(k): v for k, v in checkpoint_io.read_shapes(path).items()}
    if "patch_embedding.weight" not in shapes:
        raise ModelFilesError(f"{source}: no 'patch_embedding.weight' tensor: this is not a Wan transformer.")
    shape = shapes["patch_embedding.weight"]
    variant = detect_wan_variant(shape, source, tiny_ok=True)
    if shape[0] == variant.width:
        return variant, int(variant.transformer_config_dict()["num_attention_heads"])
    heads = _num_heads_hint(path)
    if heads is None:
        raise ModelFilesError(
            f"{source}: a Wan transformer of non-standard width {shape[0]} needs its head count "
            "(a config.json with 'num_heads' beside it).")
    return variant, heads


def load_wan_transformer_at_precision(path, layout: str, label: str, precision_name: str,
                                      device: torch.device) -> tuple[LoadedTransformer, list[str]]:
    """`load_wan_transformer` with the loader's precision applied (fp8_scaled weights used as stored, no float
    copy): what both the one-GPU loader and each several-GPU worker do. -> (loaded, notes for the user)."""
    from . import precision

    loaded = load_wan_transformer(path, layout, label=label, keep_fp8_as=precision.fp8_storage_dtype(precision_name))
    notes = precision.apply_precision(loaded.model, precision_name, device, quantized=loaded.quantized or None)
    loaded.fill_placeholders()
    return loaded, notes
