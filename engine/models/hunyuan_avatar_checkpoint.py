"""Loading the HunyuanVideo-Avatar transformer strictly, from any of the files it is published or repacked as.

Formats:
1. the vendor's `mp_rank_00_model_states.pt`: a pickle (read with weights_only=True) with the state dict
   under `module`, vendor key names;
2. the vendor's fp8 pair `mp_rank_00_model_states_fp8.pt` + `mp_rank_00_model_states_fp8_map.pt`: the same
   keys, the Linear weights of the double and single blocks stored as float8_e4m3fn; the map holds, under
   `module`, one per-tensor scale per such Linear, keyed by module name (`double_blocks.0.img_attn_qkv`,
   no `.weight`); real weight = fp8 weight * scale. The vendor applies the scale in the model dtype (bf16:
   `hymm_sp/modules/fp8_optimization.py` casts it on load), so scales are rounded to bf16 here too.
3. a repacked single `.safetensors` file: vendor names (maybe under `model.diffusion_model.`) or our names.
Where the vendor puts them: `<repo>/ckpts/hunyuan-video-t2v-720p/transformers/` (DESIGN.md "Model layouts").

Every load goes into a model built on the meta device and is strict: a missing, unexpected or mis-shaped
key raises an error naming the key, the file and the layout assumed; a file of another model family says
what it looks like.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, field

import torch

from ..errors import CheckpointMismatchError, InvalidInputError, ModelFilesError
from . import checkpoint_io, hunyuan_avatar_keys as keys
from .hunyuan_avatar_transformer import HunyuanAvatarTransformer
from .precision import FP8_COMPUTE_DTYPE, Fp8Linear

CONFIG_PATH = pathlib.Path(__file__).parent / "configs" / "hunyuan_avatar" / "transformer_config.json"
HF_REPO = "tencent/HunyuanVideo-Avatar"
TRANSFORMERS_DIR = pathlib.Path("ckpts") / "hunyuan-video-t2v-720p" / "transformers"
BF16_FILE = "mp_rank_00_model_states.pt"
FP8_FILE = "mp_rank_00_model_states_fp8.pt"
FP8_MAP_FILE = "mp_rank_00_model_states_fp8_map.pt"

FORMAT_VENDOR = "vendor .pt (state dict under 'module')"
FORMAT_VENDOR_FP8 = "vendor fp8 .pt + scale map"
FORMAT_SAFETENSORS = "single .safetensors"
OUR_NAMING = "Reelsmith (diffusers-style) naming"
_FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


@dataclass
class AvatarTransformerFiles:
    weights: pathlib.Path
    fp8_map: pathlib.Path | None
    format: str


@dataclass
class LoadedAvatarTransformer:
    model: HunyuanAvatarTransformer
    files: AvatarTransformerFiles
    source: str
    # fp8 weights of the vendor fp8 file, by our Linear name: (fp8 weight, scale). Pass to
    # `precision.apply_precision(..., quantized=...)` so an fp8 precision uses them as stored.
    quantized: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


# ------------------------------------------------------------------ where the files are


def _fp8_map_beside(weights: pathlib.Path) -> pathlib.Path:
    return weights.with_name(weights.name[: -len(".pt")] + "_map.pt")  # the vendor's naming rule


def find_avatar_transformer_files(path, prefer_fp8: bool = False) -> AvatarTransformerFiles:
    """A file, the `transformers/` folder, `ckpts/` or the downloaded repo folder -> the files to load.
    With both the bf16 and the fp8 checkpoint present, `prefer_fp8` picks the fp8 pair."""
    path = pathlib.Path(path)
    if path.is_file():
        if path.suffix in checkpoint_io.SAFETENSORS_SUFFIXES:
            return AvatarTransformerFiles(path, None, FORMAT_SAFETENSORS)
        if path.name.endswith("_fp8.pt"):
            fp8_map = _fp8_map_beside(path)
            if not fp8_map.is_file():
                raise ModelFilesError(
                    f"{path} is the vendor's fp8 checkpoint, which needs its scale map {fp8_map} beside it; that file "
                    f"is missing. Download it too (hf download {HF_REPO} {TRANSFORMERS_DIR / FP8_MAP_FILE}) or use "
                    f"{BF16_FILE}."
                )
            return AvatarTransformerFiles(path, fp8_map, FORMAT_VENDOR_FP8)
        if path.name.endswith("_map.pt"):
            raise ModelFilesError(f"{path} is an fp8 scale map, not a checkpoint: pick the _fp8.pt file beside it.")
        if path.suffix in checkpoint_io.PICKLE_SUFFIXES:
            return AvatarTransformerFiles(path, None, FORMAT_VENDOR)
        raise ModelFilesError(f"{path}: unsupported file type '{path.suffix}' (use .pt or .safetensors).")
    if not path.is_dir():
        raise ModelFilesError(f"{path}: file or folder not found.")
    for folder in (path, path / "transformers", path / "hunyuan-video-t2v-720p" / "transformers", path / TRANSFORMERS_DIR):
        bf16, fp8, fp8_map = folder / BF16_FILE, folder / FP8_FILE, folder / FP8_MAP_FILE
        if not (bf16.is_file() or fp8.is_file()):
            continue
        if fp8.is_file() and (prefer_fp8 or not bf16.is_file()):
            if not fp8_map.is_file():
                if bf16.is_file():
                    return AvatarTransformerFiles(bf16, None, FORMAT_VENDOR)
                return find_avatar_transformer_files(fp8)  # raises, naming the missing map
            return AvatarTransformerFiles(fp8, fp8_map, FORMAT_VENDOR_FP8)
        return AvatarTransformerFiles(bf16, None, FORMAT_VENDOR)
    raise ModelFilesError(
        f"{path}: no HunyuanVideo-Avatar transformer here. Expected {TRANSFORMERS_DIR / BF16_FILE} (or "
        f"{FP8_FILE} with {FP8_MAP_FILE}) under the folder of `hf download {HF_REPO} --local-dir <folder>`."
    )


# ------------------------------------------------------------------ config


def shipped_config() -> dict:
    return {k: v for k, v in json.loads(CONFIG_PATH.read_text()).items() if not k.startswith("_")}


def avatar_transformer_config(weights: pathlib.Path) -> dict:
    """The shipped full-size config; a smaller model of the same structure (tests, demos) has its config in
    `<file>.reelsmith.json` beside the weights."""
    hint = checkpoint_io.read_config_hint(weights)
    config = shipped_config()
    if hint:
        config.update({k: v for k, v in hint.items() if not k.startswith("_")})
    return config


# ------------------------------------------------------------------ fp8 scales


def _read_fp8_scales(files: AvatarTransformerFiles, raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Vendor module name -> scale (float32 holding the bf16-rounded value), checked against the fp8 weights."""
    scale_map = {keys.strip_vendor_prefix(k): v for k, v in checkpoint_io.read_state_dict(files.fp8_map).items()}
    fp8_modules = {k[: -len(".weight")] for k, v in raw.items() if v.dtype in _FP8_DTYPES and k.endswith(".weight")}
    for module in sorted(fp8_modules):
        if module not in scale_map:
            raise CheckpointMismatchError(
                f"{files.weights}: fp8 weight '{module}.weight' has no scale in {files.fp8_map} (layout: "
                f"{FORMAT_VENDOR_FP8}). The two files do not belong together: download both again."
            )
    for module, scale in scale_map.items():
        if module not in fp8_modules:
            raise CheckpointMismatchError(
                f"{files.fp8_map}: scale for '{module}', which is not an fp8 weight of {files.weights} (layout: "
                f"{FORMAT_VENDOR_FP8}). The two files do not belong together: download both again."
            )
        if scale.numel() != 1 or not scale.is_floating_point():
            raise CheckpointMismatchError(
                f"{files.fp8_map}: scale for '{module}' has shape {list(scale.shape)} and dtype {scale.dtype}; the "
                f"{FORMAT_VENDOR_FP8} layout holds one floating-point scale per weight."
            )
    return {m: s.reshape(()).to(torch.bfloat16).float() for m, s in scale_map.items()}


def _split_fp8(raw: dict[str, torch.Tensor], scales: dict[str, torch.Tensor], hidden_size: int, source: str,
               dtype: torch.dtype | None):
    """fp8 weights -> ({our Linear: (fp8 piece, scale)}, {vendor key: weight dequantized to `dtype`}); no
    dequantized copies when `dtype` is None. The product is computed in float32 one tensor at a time and
    rounded once (in bf16 that is the vendor's bf16 multiply)."""
    quantized, dequantized = {}, {}
    for module, scale in scales.items():
        weight = raw[f"{module}.weight"]
        pieces = keys.vendor_module_to_ours(module, hidden_size, weight.shape[0])
        if pieces is None or weight.ndim != 2:
            raise CheckpointMismatchError(
                f"{source}: '{module}.weight' is stored as fp8, but it is not a Linear weight the "
                f"{FORMAT_VENDOR_FP8} layout quantizes."
            )
        for name, start, length in pieces:
            quantized[name] = (weight.narrow(0, start, length), scale)
        if dtype is not None:
            dequantized[f"{module}.weight"] = (weight.float() * scale).to(dtype)
    return quantized, dequantized


# ------------------------------------------------------------------ loading


def _strict_check(model: torch.nn.Module, found: dict, source: str, layout: str, ours: bool) -> None:
    if ours:
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    else:
        expected = keys.expected_vendor_shapes(model)
    checkpoint_io.check_keys_and_shapes(expected, found, source, f"{layout} HunyuanVideo-Avatar transformer")


def _install_fp8_layers(model: torch.nn.Module, quantized: dict, state_dict: dict) -> None:
    """Replace the quantized Linear layers by fp8-storage layers holding the checkpoint's fp8 weights as stored,
    taking their tensors out of `state_dict`."""
    modules = dict(model.named_modules())
    for name, (weight, scale) in quantized.items():
        state_dict.pop(f"{name}.weight")
        bias = state_dict.pop(f"{name}.bias", None)
        layer = Fp8Linear.from_quantized(weight, scale, bias, FP8_COMPUTE_DTYPE)
        parent, _, child = name.rpartition(".")
        setattr(modules[parent] if parent else model, child, layer)


def load_hunyuan_avatar_transformer(path, *, prefer_fp8: bool = False, keep_fp8: bool = False,
                                    dtype: torch.dtype = torch.bfloat16, label: str | None = None
                                    ) -> LoadedAvatarTransformer:
    """Load the transformer on the CPU in `dtype` from a file or a vendor folder (see module docstring).

    From the fp8 pair, by default the fp8 weights are dequantized into `dtype` and also returned in
    `quantized`, so `apply_precision(model, "fp8_e4m3fn", device, quantized=loaded.quantized)` keeps them as
    stored. `keep_fp8=True` skips the dequantized copy: the block Linears become fp8-storage layers right
    away (bf16 compute, so `dtype` must be bf16); use it with an fp8 precision. Files without fp8 weights load
    as usual.
    """
    if keep_fp8 and dtype != FP8_COMPUTE_DTYPE:
        raise InvalidInputError(f"keep_fp8 computes in {FP8_COMPUTE_DTYPE}; load with that dtype, not {dtype}.")
    files = find_avatar_transformer_files(path, prefer_fp8=prefer_fp8)
    source = label or str(files.weights)
    raw = {keys.strip_vendor_prefix(k): v for k, v in checkpoint_io.read_state_dict(files.weights).items()}
    foreign = keys.describe_foreign_checkpoint(raw)
    if foreign is not None:
        raise ModelFilesError(
            f"{source}: this file looks like {foreign}, not a HunyuanVideo-Avatar transformer (assumed layout: "
            f"{files.format}). Pick {TRANSFORMERS_DIR / BF16_FILE} from {HF_REPO}."
        )
    ours = "x_embedder.proj.weight" in raw
    layout = f"{files.format}, {OUR_NAMING if ours else keys.LAYOUT_VENDOR + ' naming'}"
    config = avatar_transformer_config(files.weights)
    with checkpoint_io.empty_weights():
        model = HunyuanAvatarTransformer(**config)
    _strict_check(model, raw, source, layout, ours)

    hidden_size = config["num_attention_heads"] * config["attention_head_dim"]
    quantized: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if files.fp8_map is not None:
        quantized, dequantized = _split_fp8(raw, _read_fp8_scales(files, raw), hidden_size, source,
                                            None if keep_fp8 else dtype)
        raw = {**raw, **dequantized}
    else:
        stray = next((k for k, v in raw.items() if v.dtype in _FP8_DTYPES), None)
        if stray is not None:
            raise CheckpointMismatchError(
                f"{source}: '{stray}' is stored as fp8 without a scale (layout: {layout}); read as is it would be "
                f"far off. Use the vendor's fp8 pair ({FP8_FILE} + {FP8_MAP_FILE}) or the bf16 {BF16_FILE}."
            )
    state_dict = dict(raw) if ours else keys.vendor_to_ours(raw, hidden_size, source, layout)
    if keep_fp8 and quantized:
        _install_fp8_layers(model, quantized, state_dict)
        state_dict = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state_dict.items()}
        result = model.load_state_dict(state_dict, strict=False, assign=True)
        left = [k for k in result.missing_keys if k.rsplit(".", 1)[0] not in quantized]  # fp8 layers: loaded above
        if left or result.unexpected_keys:
            raise CheckpointMismatchError(f"{source}: keys left unloaded: {(left + result.unexpected_keys)[:3]}.")
    else:
        checkpoint_io.load_into_meta_model(model, state_dict, source, layout, dtype=dtype)
    model.eval().requires_grad_(False)
    return LoadedAvatarTransformer(model=model, files=files, source=source, quantized=quantized)
