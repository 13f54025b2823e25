"""LoRA for the Wan transformer (diffusers' WanTransformer3DModel): read, apply with a strength, undo.

Reading: a LoRA `.safetensors` file in any of the layouts trainers and converters write is read into one
form, `LoraFile.patches`, keyed by the diffusers module name of the layer it changes
(`blocks.3.attn1.to_q`; for a bare parameter such as the modulation table, the parameter's name,
`blocks.3.scale_shift_table`). Accepted keys, `<m>` being a module path:

  diffusers / PEFT   `[transformer.]<m diffusers>.lora_A.weight` + `.lora_B.weight` (or `.lora_A.default.weight`)
  ComfyUI            `[diffusion_model.]<m original>.lora_down.weight` + `.lora_up.weight` (+ `.alpha`)
  kohya (flattened)  `lora_unet_<m with dots as underscores>.lora_down.weight` + `.lora_up.weight` (+ `.alpha`)
  lightx2v / Wan     `diffusion_model.<m original>.lora_A.weight` + `.lora_B.weight`, full deltas
                     `<m>.diff` (weight), `<m>.diff_b` (bias), `<parent>.diff_m` (`<parent>.modulation`)

Either factor naming (A/B, down/up) and the full deltas are accepted in every layout, and module names
may be in either naming after any prefix (`diffusion_model.`, `model.diffusion_model.`, `transformer.`,
PEFT's `base_model.model.`, none): apart from `patch_embedding`, which is the same layer in both, no Wan
layer name is valid in both namings, so this is never ambiguous. `.alpha` is optional everywhere: the
LoRA delta is `alpha / rank * up @ down` (scale 1 without alpha). Flattened kohya names are mapped back to
dotted module paths by exact lookup in the set of Wan module names (taken from diffusers' own module tree
through `wan_keys`), never by guessing where the dots went: `blocks_0_ffn_0` is `blocks.0.ffn.0`,
`blocks_0_self_attn_norm_q` is `blocks.0.self_attn.norm_q`. LyCORIS LoHa/LoKr and other non-LoRA
adapters are refused with a message that says so.

Applying: `WanLoraPatcher.set_loras(model, [(lora_file, strength), ...])` merges the list into the
weights, layer by layer, in float32 on each weight's device, keeping a CPU copy of every tensor it
changes so the next call (another list, or none) starts from the exact original weights.
"""

from __future__ import annotations

import functools
import logging
import math
import pathlib
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import CheckpointMismatchError, InvalidInputError, ModelFilesError
from . import checkpoint_io, wan_keys

log = logging.getLogger("reelsmith")

EXPERT_TARGETS = ("high", "low", "both")

# Key endings of plain LoRA tensors -> role. Longest first where one ends another.
_ROLE_SUFFIXES = (
    (".lora_A.default.weight", "down"),
    (".lora_B.default.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".alpha", "alpha"),
    (".diff_b", "diff_bias"),
    (".diff_m", "diff_modulation"),
    (".diff", "diff_weight"),
)

# Adapters that are not low-rank products: named so the error can say what the file is.
_UNSUPPORTED_SUFFIXES = (
    ("LyCORIS LoHa", (".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".hada_t1", ".hada_t2")),
    ("LyCORIS LoKr", (".lokr_w1", ".lokr_w2", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2_a", ".lokr_w2_b", ".lokr_t2")),
    ("LyCORIS GLoRA", (".a1.weight", ".a2.weight", ".b1.weight", ".b2.weight")),
    ("OFT/BOFT", (".oft_blocks", ".oft_diag")),
    ("DoRA", (".dora_scale",)),
    ("LoCon Tucker", (".lora_mid.weight",)),
    ("full-weight replacement", (".set_weight",)),
)

# Prefixes of dotted keys; the first that matches is removed.
_DOTTED_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "base_model.model.")
_FLAT_PREFIXES = ("lora_unet_", "lora_transformer_")
_FLAT_BLOCK = re.compile(r"^blocks_(\d+)_(.+)$")

# A smallest Wan transformer with every optional branch (CLIP image branch of Wan 2.1 I2V), built on
# the meta device only to list the module names the architecture has.
_NAME_PROBE_CONFIG = {
    "patch_size": (1, 2, 2), "num_attention_heads": 1, "attention_head_dim": 8, "in_channels": 4,
    "out_channels": 4, "text_dim": 8, "freq_dim": 8, "ffn_dim": 8, "num_layers": 1, "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 8, "image_dim": 8, "added_kv_proj_dim": 8,
}


# ---------------------------------------------------------------------------------------------- data


@dataclass
class LoraPatch:
    """What one LoRA file changes in one layer.

    `up @ down` (rank-r factors, reshaped to the weight's shape for a conv layer) times `scale`
    (alpha / rank, or 1) is the low-rank delta; `diff_weight` / `diff_bias` are full-size deltas of the
    weight (or of a bare parameter) and the bias. The applied change is `strength * (scale * up @ down
    + diff_weight)` and `strength * diff_bias`. `keys` are the file's key names, for error messages.
    """

    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    scale: float = 1.0
    diff_weight: torch.Tensor | None = None
    diff_bias: torch.Tensor | None = None
    keys: tuple[str, ...] = ()

    @property
    def rank(self) -> int | None:
        return None if self.down is None else int(self.down.shape[0])

    def key_for(self, *fragments: str) -> str:
        """The file key that ends with one of `fragments` (for messages), or the first key."""
        for key in self.keys:
            if any(key.endswith(f) for f in fragments):
                return key
        return self.keys[0] if self.keys else "?"


@dataclass
class LoraFile:
    path: str
    format: str  # "diffusers" | "comfyui" | "kohya" | "lightx2v"
    patches: dict[str, LoraPatch]

    def nbytes(self) -> int:
        tensors = [t for p in self.patches.values() for t in (p.down, p.up, p.diff_weight, p.diff_bias)]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@dataclass(frozen=True)
class LoraStackEntry:
    """One LoRA node's request: this file, this strength, on the high-noise, low-noise or both experts.

    Immutable, so a chain of LoRA nodes builds a tuple of these and never changes a shared model."""

    path: str
    strength: float
    target: str = "both"

    def __post_init__(self):
        if self.target not in EXPERT_TARGETS:
            raise InvalidInputError(
                f"LoRA target '{self.target}' is not one of {', '.join(EXPERT_TARGETS)}."
            )
        try:
            strength = float(self.strength)
        except (TypeError, ValueError):
            raise InvalidInputError(f"LoRA strength must be a number, got {self.strength!r}.") from None
        if not math.isfinite(strength):
            raise InvalidInputError(f"LoRA strength must be finite, got {self.strength!r}.")
        object.__setattr__(self, "strength", strength)
        object.__setattr__(self, "path", str(self.path))


def entries_for_expert(stack: Iterable[LoraStackEntry], expert: str) -> list[tuple[str, float]]:
    """The (path, strength) pairs of a LoRA stack that apply to one expert ("high" or "low"), in order."""
    if expert not in ("high", "low"):
        raise InvalidInputError(f"expert must be 'high' or 'low', got '{expert}'.")
    return [(e.path, e.strength) for e in stack if e.target in (expert, "both")]


# ---------------------------------------------------------------------------------------------- names


@functools.lru_cache(maxsize=1)
def _flattened_wan_names() -> tuple[dict[str, str], dict[str, str]]:
    """Flattened (dots -> underscores) Wan module names -> diffusers module name, in both namings.

    Returns (inside a block, relative to `blocks.N.`; outside the blocks). Built from the module tree of
    diffusers' WanTransformer3DModel and wan_keys' renaming, so it holds exactly the names a Wan model has.
    """
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        probe = WanTransformer3DModel(**_NAME_PROBE_CONFIG)
    targets = set()
    for name, _ in probe.named_parameters():
        owner, _, leaf = name.rpartition(".")
        targets.add(owner if leaf in ("weight", "bias") and owner else name)
    in_block: dict[str, str] = {}
    top_level: dict[str, str] = {}
    for diffusers_name in sorted(targets):
        original = wan_keys.diffusers_module_to_original(diffusers_name)
        if original is None:
            continue
        if diffusers_name.startswith("blocks.0."):
            table = in_block
            relative_diffusers = diffusers_name[len("blocks.0."):]
            relative_original = original[len("blocks.0."):]
        else:
            table, relative_diffusers, relative_original = top_level, diffusers_name, original
        for flat in (relative_original.replace(".", "_"), relative_diffusers.replace(".", "_")):
            known = table.setdefault(flat, relative_diffusers)
            if known != relative_diffusers:  # would make kohya names ambiguous; cannot happen for Wan
                raise RuntimeError(f"flattened name '{flat}' fits both '{known}' and '{relative_diffusers}'")
    return in_block, top_level


def _flat_to_diffusers(flat: str) -> str | None:
    in_block, top_level = _flattened_wan_names()
    block = _FLAT_BLOCK.match(flat)
    if block is not None and block.group(2) in in_block:
        return f"blocks.{block.group(1)}.{in_block[block.group(2)]}"
    return top_level.get(flat)


def _dotted_to_diffusers(path: str) -> tuple[str | None, str]:
    """Dotted module path in either naming -> (diffusers name, naming it was read as). Only
    `patch_embedding` is valid in both namings (the same layer), so the order of the tries does not
    matter; e.g. `blocks.N.norm2` exists with weights only in diffusers naming (the original `norm2` has
    none) and `blocks.N.norm3` only in the original naming."""
    name = wan_keys.original_module_to_diffusers(path)
    if name is not None:
        return name, "original"
    if wan_keys.diffusers_module_to_original(path) is not None:
        return path, "diffusers"
    return None, ""


def _module_of_key(key: str) -> tuple[str, str] | None:
    """File key -> (module part, role), or None when the ending is not a plain-LoRA one."""
    for suffix, role in _ROLE_SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            module = key[: -len(suffix)]
            if role == "diff_modulation":  # lightx2v: `blocks.N.diff_m` is the delta of `blocks.N.modulation`
                return module + ".modulation", "diff_weight"
            return module, role
    return None


def _resolve_module(module: str) -> tuple[str | None, str]:
    """Module part of a key -> (diffusers module name or None, style), style one of
    "flat", "original", "diffusers"."""
    for prefix in _FLAT_PREFIXES:
        if module.startswith(prefix):
            return _flat_to_diffusers(module[len(prefix):]), "flat"
    for prefix in _DOTTED_PREFIXES:
        if module.startswith(prefix):
            module = module[len(prefix):]
            break
    return _dotted_to_diffusers(module)


def _not_wan_hint(keys: Sequence[str]) -> str:
    joined = " ".join(keys[:200])
    if "double_blocks" in joined or "single_blocks" in joined:
        return " Its keys look like a Flux or HunyuanVideo LoRA."
    if "transformer_blocks" in joined:
        return " Its keys look like a LoRA for LTX-Video, HunyuanVideo, SD3 or another DiT, not Wan."
    if "lora_te" in joined or "text_model" in joined:
        return " Its keys look like a text-encoder LoRA."
    if "down_blocks" in joined or "input_blocks" in joined:
        return " Its keys look like a Stable Diffusion UNet LoRA."
    return ""


# ---------------------------------------------------------------------------------------------- reading


def _format_label(styles: set[tuple[str, str]]) -> str:
    """(naming style, factor naming) pairs seen in a file -> format name."""
    namings = {naming for naming, _ in styles}
    factors = {factor for _, factor in styles}
    if "flat" in namings:
        return "kohya"
    if "diffusers" in namings:
        return "diffusers"
    if "A/B" in factors or ("down/up" not in factors and "diff" in factors):
        return "lightx2v"
    return "comfyui"


def load_wan_lora(path) -> LoraFile:
    """Read a Wan LoRA file into diffusers-named patches. Raises ModelFilesError for an unreadable file,
    a file that is not a Wan LoRA, an adapter kind other than LoRA (LoHa, LoKr, ...), or factors whose
    ranks do not fit together. Whether the patches fit a given model is checked when applying."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ModelFilesError(f"{path}: LoRA file not found.")
    tensors = checkpoint_io.read_state_dict(path)
    if not tensors:
        raise ModelFilesError(f"{path}: the LoRA file holds no tensors.")
    keys = list(tensors)

    for kind, suffixes in _UNSUPPORTED_SUFFIXES:
        found = [k for k in keys if k.endswith(suffixes)]
        if found:
            raise ModelFilesError(
                f"{path}: this is a {kind} file (key '{found[0]}'), not a plain LoRA. Reelsmith applies LoRAs "
                "made of lora_A/lora_B (lora_down/lora_up) pairs, with optional .alpha, .diff, .diff_b and "
                ".diff_m; LoHa, LoKr and the other LyCORIS kinds are not supported. Use a plain-LoRA version of "
                "it, or ComfyUI's own LoraLoaderModelOnly with the native Wan nodes."
            )

    groups: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    styles: set[tuple[str, str]] = set()
    unknown: list[str] = []
    for key, tensor in tensors.items():
        parsed = _module_of_key(key)
        if parsed is None:
            unknown.append(key)
            continue
        module, role = parsed
        name, naming = _resolve_module(module)
        if name is None:
            unknown.append(key)
            continue
        group = groups.setdefault(name, {})
        if role in group:
            raise ModelFilesError(
                f"{path}: keys '{group[role][0]}' and '{key}' both give the {role} of Wan module '{name}'; "
                "the file mixes two LoRAs. Re-save it with one of them."
            )
        group[role] = (key, tensor)
        if role in ("down", "up"):
            styles.add((naming, "A/B" if (".lora_A." in key or ".lora_B." in key) else "down/up"))
        elif role != "alpha":
            styles.add((naming, "diff"))

    if not groups:
        raise ModelFilesError(
            f"{path}: not a Wan LoRA: none of its {len(keys)} keys names a layer of the Wan transformer "
            f"(first keys: {', '.join(keys[:3])}).{_not_wan_hint(keys)} Use a LoRA made for Wan 2.1/2.2."
        )
    if unknown:
        raise ModelFilesError(
            f"{path}: key {checkpoint_io.key_list_text(unknown)}"
            " is not a LoRA tensor for a layer of the Wan transformer. The file mixes Wan layers with "
            "something else (another model's layers, a text encoder, an unsupported adapter kind)."
        )

    patches: dict[str, LoraPatch] = {}
    for name, group in groups.items():
        patch = _patch_from_group(path, name, group)
        if patch is not None:
            patches[name] = patch
    if not patches:
        raise ModelFilesError(f"{path}: the LoRA holds only .alpha values and no weights.")
    return LoraFile(path=str(path), format=_format_label(styles), patches=patches)


def _patch_from_group(path: pathlib.Path, name: str, group: dict) -> LoraPatch | None:
    keys = tuple(key for key, _ in group.values())
    down = group.get("down", (None, None))[1]
    up = group.get("up", (None, None))[1]
    if (down is None) != (up is None):
        present, missing = ("down", "up") if up is None else ("up", "down")
        present_key = group[present][0]
        present, missing = {"down": ("down (lora_A/lora_down)", "up (lora_B/lora_up)"),
                            "up": ("up (lora_B/lora_up)", "down (lora_A/lora_down)")}[present]
        raise ModelFilesError(
            f"{path}: '{present_key}' gives the {present} factor of '{name}' but the file has no {missing} "
            "factor for it. The file is incomplete or damaged."
        )
    scale = 1.0
    if down is not None:
        if down.ndim < 2 or up.ndim < 2 or up.shape[1] != down.shape[0] or up[0, 0].numel() != 1:
            raise ModelFilesError(
                f"{path}: the factors of '{name}' do not fit together: '{group['down'][0]}' has shape "
                f"{tuple(down.shape)} and '{group['up'][0]}' has shape {tuple(up.shape)}; expected "
                "down (rank, in) and up (out, rank) with the same rank."
            )
        if "alpha" in group:
            alpha_key, alpha = group["alpha"]
            if alpha.numel() != 1:
                raise ModelFilesError(
                    f"{path}: '{alpha_key}' should be a single number, has shape {tuple(alpha.shape)}."
                )
            scale = float(alpha.float().item()) / int(down.shape[0])
    elif "alpha" in group and len(group) == 1:
        log.warning("Reelsmith: %s: '%s' has no LoRA factors beside it; ignored.", path, group["alpha"][0])
        return None
    return LoraPatch(
        down=down, up=up, scale=scale,
        diff_weight=group.get("diff_weight", (None, None))[1],
        diff_bias=group.get("diff_bias", (None, None))[1],
        keys=keys,
    )


# ---------------------------------------------------------------------------------------------- cache

_CACHE_ENTRIES = 8
_cache: OrderedDict[tuple[str, int, int], LoraFile] = OrderedDict()
_cache_lock = threading.Lock()


def load_wan_lora_cached(path) -> LoraFile:
    """`load_wan_lora` through a process-wide cache keyed by (absolute path, mtime, size): the same
    unchanged file gives the same LoraFile object (so re-applying it is a no-op), a rewritten file is
    read again. Holds the most recently used few files."""
    resolved = pathlib.Path(path).expanduser().resolve()
    try:
        stat = resolved.stat()
    except OSError as error:
        raise ModelFilesError(f"{path}: LoRA file not found ({error.strerror}).") from error
    key = (str(resolved), stat.st_mtime_ns, stat.st_size)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    lora = load_wan_lora(resolved)
    with _cache_lock:
        for stale in [k for k in _cache if k[0] == key[0]]:
            del _cache[stale]
        _cache[key] = lora
        while len(_cache) > _CACHE_ENTRIES:
            _cache.popitem(last=False)
    return lora


def clear_lora_cache() -> None:
    with _cache_lock:
        _cache.clear()


# ---------------------------------------------------------------------------------------------- applying


def _is_fp8_module(module: torch.nn.Module) -> bool:
    """An fp8-storage linear (precision.Fp8Linear or alike): it dequantizes and re-quantizes itself."""
    return callable(getattr(module, "dequantized_weight", None)) and callable(getattr(module, "set_weight", None))


def _weight_shape(module: torch.nn.Module) -> tuple[int, ...] | None:
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor):
        return tuple(weight.shape)
    if _is_fp8_module(module) and hasattr(module, "out_features") and hasattr(module, "in_features"):
        return (int(module.out_features), int(module.in_features))
    return None


@dataclass
class _Target:
    """One layer (or bare parameter) of the model and the sum of changes planned for it."""

    name: str
    module: torch.nn.Module | None          # None for a bare parameter
    parameter: torch.nn.Parameter | None    # the bare parameter
    weight_shape: tuple[int, ...]
    weight_terms: list[tuple[float, LoraPatch]] = field(default_factory=list)
    bias_terms: list[tuple[float, LoraPatch]] = field(default_factory=list)


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_patch(lora: LoraFile, name: str, patch: LoraPatch, target: _Target) -> None:
    shape = target.weight_shape
    if patch.down is not None:
        rank = patch.rank
        if target.module is None or len(shape) < 2:
            raise CheckpointMismatchError(
                f"{lora.path}: '{patch.key_for('.lora_A.weight', '.lora_down.weight')}' is a low-rank factor for "
                f"'{name}', whose tensor has shape {shape}: not a weight matrix. The LoRA is not for this model."
            )
        down_ok = _shape(patch.down)[1:] in (shape[1:], (math.prod(shape[1:]),))
        up_ok = patch.up.shape[0] == shape[0]
        if not (down_ok and up_ok):
            down_key = patch.key_for(".lora_A.weight", ".lora_A.default.weight", ".lora_down.weight")
            up_key = patch.key_for(".lora_B.weight", ".lora_B.default.weight", ".lora_up.weight")
            raise CheckpointMismatchError(
                f"{lora.path}: LoRA key '{down_key if not down_ok else up_key}' does not fit this model: "
                f"'{name}' has weight shape {shape}, so the rank-{rank} factors must be down "
                f"{(rank, *shape[1:])} and up {(shape[0], rank)}, but the file has down {_shape(patch.down)} "
                f"and up {_shape(patch.up)}. The LoRA was made for a different Wan model (14B vs 5B?)."
            )
    if patch.diff_weight is not None and _shape(patch.diff_weight) != shape:
        raise CheckpointMismatchError(
            f"{lora.path}: key '{patch.key_for('.diff', '.diff_m')}' has shape {_shape(patch.diff_weight)}, "
            f"but '{name}' in this model has shape {shape}. The LoRA was made for a different Wan model."
        )
    if patch.diff_bias is not None:
        bias = getattr(target.module, "bias", None) if target.module is not None else None
        if not isinstance(bias, torch.Tensor):
            raise CheckpointMismatchError(
                f"{lora.path}: key '{patch.key_for('.diff_b')}' changes the bias of '{name}', which has no bias "
                "in this model. The LoRA was made for a different model."
            )
        if _shape(patch.diff_bias) != _shape(bias):
            raise CheckpointMismatchError(
                f"{lora.path}: key '{patch.key_for('.diff_b')}' has shape {_shape(patch.diff_bias)}, but the bias "
                f"of '{name}' in this model has shape {_shape(bias)}. The LoRA was made for a different Wan model."
            )


def _missing_module_message(lora: LoraFile, name: str, patch: LoraPatch, modules: dict) -> str:
    hint = ""
    if "image_embedder" in name or "add_k_proj" in name or "add_v_proj" in name or "norm_added_k" in name:
        hint = (" It is a layer of the CLIP image branch of Wan 2.1 image-to-video models, which Wan 2.2 "
                "does not have: this LoRA was trained for Wan 2.1 I2V. Use a Wan 2.2 (or Wan 2.1 T2V) LoRA.")
    elif name.startswith("blocks.") and ".".join(name.split(".")[:2]) not in modules:
        hint = " The LoRA has more blocks than this model: it was made for a bigger Wan model (14B vs 5B?)."
    return (f"{lora.path}: LoRA key '{patch.key_for('')}' changes '{name}' "
            f"(original name '{wan_keys.diffusers_module_to_original(name)}'), which this model does not have.{hint}")


def _plan(model: torch.nn.Module, loras: Sequence[tuple[LoraFile, float]]) -> dict[str, _Target]:
    """Check every patch against the model and group the changes per layer, in model order."""
    modules = dict(model.named_modules())
    parameters = dict(model.named_parameters())
    targets: dict[str, _Target] = {}
    for lora, strength in loras:
        for name, patch in lora.patches.items():
            target = targets.get(name)
            if target is None:
                module = modules.get(name)
                if module is not None and not isinstance(module, torch.nn.ModuleList):
                    shape = _weight_shape(module)
                    if shape is None:
                        raise CheckpointMismatchError(
                            f"{lora.path}: LoRA key '{patch.key_for('')}' changes '{name}', which has no weight "
                            "in this model."
                        )
                    target = _Target(name, module, None, shape)
                elif name in parameters:
                    target = _Target(name, None, parameters[name], _shape(parameters[name]))
                else:
                    raise CheckpointMismatchError(_missing_module_message(lora, name, patch, modules))
            _check_patch(lora, name, patch, target)
            targets[name] = target
            if patch.down is not None or patch.diff_weight is not None:
                target.weight_terms.append((strength, patch))
            if patch.diff_bias is not None:
                target.bias_terms.append((strength, patch))
    order = {name: i for i, name in enumerate(list(modules) + list(parameters))}
    return dict(sorted(targets.items(), key=lambda item: order.get(item[0], len(order))))


def _weight_delta(terms: list[tuple[float, LoraPatch]], shape: tuple[int, ...],
                  device: torch.device) -> torch.Tensor | None:
    """Σ strength * (scale * up @ down + diff), float32 on `device`."""
    delta = None
    for strength, patch in terms:
        parts = []
        if patch.down is not None:
            up = patch.up.to(device=device, dtype=torch.float32).reshape(shape[0], -1)
            down = patch.down.to(device=device, dtype=torch.float32).reshape(up.shape[1], -1)
            parts.append((up @ down).reshape(shape) * (strength * patch.scale))
        if patch.diff_weight is not None:
            parts.append(patch.diff_weight.to(device=device, dtype=torch.float32) * strength)
        for part in parts:
            delta = part if delta is None else delta.add_(part)
    return delta


def _bias_delta(terms: list[tuple[float, LoraPatch]], device: torch.device) -> torch.Tensor | None:
    delta = None
    for strength, patch in terms:
        part = patch.diff_bias.to(device=device, dtype=torch.float32) * strength
        delta = part if delta is None else delta.add_(part)
    return delta


def _module_tensors(module: torch.nn.Module):
    """(kind, name, tensor) of everything a module holds itself: parameters, buffers, tensor attributes."""
    seen = set()
    for name, tensor in module._parameters.items():
        if tensor is not None:
            seen.add(name)
            yield "parameter", name, tensor
    for name, tensor in module._buffers.items():
        if tensor is not None:
            seen.add(name)
            yield "buffer", name, tensor
    for name, value in vars(module).items():
        if isinstance(value, torch.Tensor) and name not in seen:
            yield "attribute", name, value


@dataclass
class _SavedTensor:
    kind: str
    name: str
    data: torch.Tensor      # CPU copy, original dtype
    device: torch.device
    requires_grad: bool


class WanLoraPatcher:
    """Merges a list of LoRAs into one Wan transformer's weights, reversibly. Use one per model.

    `set_loras(model, [(lora, strength), ...])` leaves every weight equal to
    `original + Σ strength * (scale * up @ down + diff)` (biases: `+ Σ strength * diff_b`), computed in
    float32 on the weight's device and cast back to its dtype. Original weights of the touched layers are
    kept on the CPU (fp8 layers: their raw fp8 weight and scale), so a later call with another list, or an
    empty one, starts from the exact originals; a call with the same list as the last one does nothing.
    Work is done one layer at a time, so the GPU never holds more than one extra layer.
    """

    def __init__(self):
        self._model_ref: weakref.ReferenceType | None = None
        self._applied: tuple[tuple[LoraFile, float], ...] = ()
        self._saved_parameters: dict[str, _SavedTensor] = {}        # full parameter name -> original
        self._saved_modules: dict[str, list[_SavedTensor]] = {}     # fp8 module name -> its original tensors
        self._lock = threading.Lock()

    @property
    def applied(self) -> tuple[tuple[LoraFile, float], ...]:
        return self._applied

    def set_loras(self, model: torch.nn.Module, loras: Iterable[tuple[LoraFile, float]]) -> bool:
        """Make `model`'s weights the originals plus these LoRAs. Returns False when the list is the one
        already applied (nothing done), True otherwise. On an error nothing is changed (checks come first)
        or, for a failure half-way (out of memory), the model is left with its original weights."""
        wanted = self._normalise(loras)
        with self._lock:
            self._bind(model)
            if self._same_as_applied(wanted):
                return False
            plan = _plan(model, wanted)
            copies = _OffloadCopies(model)
            try:
                self._restore_all_except(model, plan, copies)
                for target in plan.values():
                    self._apply_target(target, copies)
            except BaseException:
                self._restore_all_except(model, {}, copies)
                self._applied = ()
                raise
            self._applied = wanted
            return True

    def restore(self, model: torch.nn.Module) -> bool:
        """Back to the original weights (same as `set_loras(model, [])`)."""
        return self.set_loras(model, [])

    # -------------------------------------------------------------- internals

    @staticmethod
    def _normalise(loras) -> tuple[tuple[LoraFile, float], ...]:
        wanted = []
        for item in loras:
            try:
                lora, strength = item
            except (TypeError, ValueError):
                raise InvalidInputError(f"expected (LoraFile, strength) pairs, got {item!r}.") from None
            if not isinstance(lora, LoraFile):
                raise InvalidInputError(f"expected a LoraFile (from load_wan_lora), got {type(lora).__name__}.")
            strength = float(strength)
            if not math.isfinite(strength):
                raise InvalidInputError(f"{lora.path}: LoRA strength must be finite, got {strength}.")
            if strength != 0.0:  # strength 0 changes nothing: leave it out, so it costs nothing either
                wanted.append((lora, strength))
        return tuple(wanted)

    def _bind(self, model: torch.nn.Module) -> None:
        bound = self._model_ref() if self._model_ref is not None else None
        if bound is None:  # first use, or the previous model is gone (its saved originals with it)
            self._saved_parameters.clear()
            self._saved_modules.clear()
            self._applied = ()
            self._model_ref = weakref.ref(model)
        elif bound is not model:
            raise InvalidInputError(
                "This WanLoraPatcher already manages another model: use one WanLoraPatcher per model."
            )

    def _same_as_applied(self, wanted) -> bool:
        return len(wanted) == len(self._applied) and all(
            a is b and sa == sb for (a, sa), (b, sb) in zip(wanted, self._applied, strict=True)
        )

    def _restore_all_except(self, model: torch.nn.Module, keep: dict, copies: _OffloadCopies) -> None:
        """Put back the original of every saved tensor, except those the plan `keep` rewrites from their
        saved originals anyway, and forget the saved copies the plan does not need."""
        keep_parameters = set()
        for name, target in keep.items():
            if target.module is None:
                keep_parameters.add(name)
            elif not _is_fp8_module(target.module):
                if target.weight_terms:
                    keep_parameters.add(f"{name}.weight")
                if target.bias_terms:
                    keep_parameters.add(f"{name}.bias")
        parameters = dict(model.named_parameters())
        with torch.no_grad():
            for full_name in [n for n in self._saved_parameters if n not in keep_parameters]:
                saved = self._saved_parameters.pop(full_name)
                parameters[full_name].copy_(saved.data)
                copies.update(None, [parameters[full_name]])
        modules = dict(model.named_modules())
        for name in list(self._saved_modules):
            module = modules[name]
            _restore_module(module, self._saved_modules[name])  # fp8: always, the plan re-applies from here
            copies.update(module, [t for _, _, t in _module_tensors(module)])
            if name not in keep:
                del self._saved_modules[name]

    def _original_float(self, full_name: str, tensor: torch.Tensor) -> torch.Tensor:
        """The original value of a parameter as float32 on its device; saves a CPU copy the first time."""
        saved = self._saved_parameters.get(full_name)
        if saved is None:
            self._saved_parameters[full_name] = _SavedTensor(
                "parameter", full_name, tensor.detach().to("cpu", copy=True), tensor.device, tensor.requires_grad)
            return tensor.detach().float()  # still the original: no round trip through the CPU copy
        return saved.data.to(device=tensor.device, dtype=torch.float32)

    def _apply_target(self, target: _Target, copies: _OffloadCopies) -> None:
        with torch.no_grad():
            if target.module is None:  # bare parameter (modulation table)
                tensor = target.parameter
                delta = _weight_delta(target.weight_terms, target.weight_shape, tensor.device)
                tensor.copy_((self._original_float(target.name, tensor) + delta).to(tensor.dtype))
                copies.update(None, [tensor])
                return
            module = target.module
            if _is_fp8_module(module):
                if target.name not in self._saved_modules:
                    self._saved_modules[target.name] = _save_module(module)
                _colocate_with_weight(module)
                if target.weight_terms:
                    weight = module.dequantized_weight(dtype=torch.float32)
                    delta = _weight_delta(target.weight_terms, target.weight_shape, weight.device)
                    module.set_weight(weight.float() + delta)
                if target.bias_terms:
                    bias = module.bias
                    bias.copy_((bias.float() + _bias_delta(target.bias_terms, bias.device)).to(bias.dtype))
                copies.update(module, [t for _, _, t in _module_tensors(module)])
                return
            changed = []
            if target.weight_terms:
                weight = module.weight
                delta = _weight_delta(target.weight_terms, target.weight_shape, weight.device)
                patched = self._original_float(f"{target.name}.weight", weight) + delta
                del delta
                weight.copy_(patched.to(weight.dtype))
                changed.append(weight)
            if target.bias_terms:
                bias = module.bias
                delta = _bias_delta(target.bias_terms, bias.device)
                bias.copy_((self._original_float(f"{target.name}.bias", bias) + delta).to(bias.dtype))
                changed.append(bias)
            copies.update(module, changed)


class _OffloadCopies:
    """The CPU copies that diffusers' group offloading (block offload with CUDA streams) keeps of each
    block's tensors, keyed by tensor object: every onload copies from them and every offload points the
    parameters back at them. A change that does not land in them is lost at the next onload (a tensor
    whose data was replaced, as an fp8 layer's `set_weight` does, or one changed while onloaded), and a
    tensor object the layer created anew (its new scale buffer) has none, which breaks the next onload
    with a KeyError. `update` writes the new values there. Finds nothing, and does nothing, for a model
    without such offloading (checked on an H100: without it the fp8 case fails, with it the outputs match
    a model patched without offload)."""

    def __init__(self, model: torch.nn.Module):
        self._by_tensor: dict[int, dict] = {}
        self._by_module: dict[int, dict] = {}
        for module in model.modules():
            hooks = getattr(getattr(module, "_diffusers_hook", None), "hooks", None)
            for hook in (hooks.values() if isinstance(hooks, dict) else ()):
                group = getattr(hook, "group", None)
                copies = getattr(group, "cpu_param_dict", None)
                if not copies:
                    continue
                for member in getattr(group, "modules", None) or ():
                    for sub in member.modules():
                        self._by_module[id(sub)] = copies
                        for tensor in (*sub.parameters(recurse=False), *sub.buffers(recurse=False)):
                            self._by_tensor[id(tensor)] = copies
                for tensor in (*(getattr(group, "parameters", None) or ()), *(getattr(group, "buffers", None) or ())):
                    self._by_tensor[id(tensor)] = copies

    def update(self, module: torch.nn.Module | None, tensors) -> None:
        if not self._by_tensor:
            return
        for tensor in tensors:
            copies = self._by_tensor.get(id(tensor))
            if copies is None and module is not None:
                copies = self._by_module.get(id(module))  # a tensor the fp8 layer created anew
            if copies is None:
                continue
            value = tensor.detach()
            held = copies.get(tensor)
            if held is not None and held.shape == value.shape and held.dtype == value.dtype:
                if held.data_ptr() != value.data_ptr():
                    held.copy_(value)
            else:
                fresh = value.to("cpu", copy=True)
                pin = held.is_pinned() if held is not None else torch.cuda.is_available()
                copies[tensor] = fresh.pin_memory() if pin else fresh


def _colocate_with_weight(module: torch.nn.Module) -> None:
    """Move a layer's own tensors to its weight's device. diffusers' streamed block offload moves the
    parameters back to the CPU after each block but leaves buffers (an fp8 layer's scale) on the GPU, and
    an fp8 layer cannot dequantize across two devices. Harmless there: the next onload sets every tensor
    from the offload copies again."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return
    for _, _, tensor in _module_tensors(module):
        if tensor.device != weight.device:
            tensor.data = tensor.data.to(weight.device)


def _save_module(module: torch.nn.Module) -> list[_SavedTensor]:
    return [_SavedTensor(kind, name, tensor.detach().to("cpu", copy=True), tensor.device, tensor.requires_grad)
            for kind, name, tensor in _module_tensors(module)]


def _restore_module(module: torch.nn.Module, saved: list[_SavedTensor]) -> None:
    """Put a module's own tensors back exactly: in place where shape and dtype still match, otherwise by
    replacing the tensor (an fp8 layer may have swapped its weight or scale for new objects)."""
    with torch.no_grad():
        for item in saved:
            current = getattr(module, item.name, None)
            same_kind = isinstance(current, torch.Tensor) and current.shape == item.data.shape
            if same_kind and current.dtype == item.data.dtype:
                current.copy_(item.data)
                continue
            device = current.device if isinstance(current, torch.Tensor) else item.device
            value = item.data.to(device, copy=True)
            if item.kind == "parameter":
                module._parameters[item.name] = torch.nn.Parameter(value, requires_grad=item.requires_grad)
            elif item.kind == "buffer":
                module._buffers[item.name] = value
            else:
                setattr(module, item.name, value)
