"""Reading checkpoint files (safetensors, sharded safetensors, .pt/.pth) and loading them strictly.

Every failure names the file; strict loading names the key and the layout that was assumed, so a user
can tell a truncated download from a wrong model from a renamed file.
"""

from __future__ import annotations

import json
import pathlib
from typing import Callable, Iterable

import torch
from safetensors import safe_open

from ..errors import CheckpointMismatchError, ModelFilesError
from . import file_prefetch

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def _open_safetensors(path: pathlib.Path):
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as error:  # safetensors raises its own error types for a bad header or a short file
        raise ModelFilesError(
            f"{path}: cannot read this safetensors file ({error}). It is truncated or corrupt: "
            "delete it and download it again."
        ) from error


def _load_pickle(path: pathlib.Path) -> dict:
    try:
        # weights_only: a .pt/.pth file can run code when unpickled; never allow that.
        data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "zip" in str(error) or "mmap" in str(error):
            data = _load_pickle_without_mmap(path)
        else:
            raise ModelFilesError(
                f"{path}: cannot read this checkpoint ({error}). It is truncated or corrupt: "
                "delete it and download it again."
            ) from error
    except Exception as error:
        raise ModelFilesError(
            f"{path}: cannot read this checkpoint safely ({type(error).__name__}: {error}). Reelsmith reads "
            ".pt/.pth files with torch.load(weights_only=True) only; a file that needs more is refused."
        ) from error
    if isinstance(data, dict) and "module" in data and isinstance(data["module"], dict):
        data = data["module"]  # DeepSpeed-style model states keep the weights under "module"
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelFilesError(f"{path}: expected a dictionary of tensors, found {type(data).__name__}.")
    return data


def _load_pickle_without_mmap(path: pathlib.Path) -> dict:
    try:  # legacy (non-zip) .pth files cannot be memory-mapped
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise ModelFilesError(
            f"{path}: cannot read this checkpoint ({error}). It is truncated or corrupt: "
            "delete it and download it again."
        ) from error


def shard_files(path: pathlib.Path) -> list[pathlib.Path]:
    """A checkpoint given as a file, a `*.index.json` or a folder of shards -> the files to read."""
    path = pathlib.Path(path)
    if path.is_dir():
        indexes = sorted(path.glob("*.safetensors.index.json"))
        if indexes:
            return shard_files(indexes[0])
        files = sorted(p for p in path.iterdir() if p.suffix in SAFETENSORS_SUFFIXES)
        if not files:
            raise ModelFilesError(f"{path}: no .safetensors files in this folder.")
        return files
    if path.name.endswith(".index.json"):
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as error:
            raise ModelFilesError(f"{path}: not a valid shard index ({error}).") from error
        files = [path.parent / name for name in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise ModelFilesError(
                f"{path}: the index lists shards that are missing: {', '.join(missing)}. "
                "The download is incomplete: run the download command again."
            )
        return files
    if not path.exists():
        raise ModelFilesError(f"{path}: file not found.")
    return [path]


def folder_has_weights(folder: pathlib.Path) -> bool:
    return folder.is_dir() and any(p.suffix in (".safetensors", ".bin") for p in folder.iterdir())


def missing_shards(folder: pathlib.Path) -> list[str]:
    """Shards that a folder's `*.index.json` lists but the folder lacks (an interrupted download)."""
    missing = []
    for index in folder.glob("*.index.json"):
        try:
            names = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError):
            missing.append(f"{index} (unreadable index)")
            continue
        missing += [str(folder / n) for n in sorted(names) if not (folder / n).exists()]
    return missing


def missing_component_files(folder: pathlib.Path, components, tokenizer_files) -> list[str]:
    """What a diffusers pipeline folder lacks, component by component: a config and weights (with every shard
    its index lists) for model components, a tokenizer file for `tokenizer`."""
    missing: list[str] = []
    for component in components:
        target = folder / component
        if component == "tokenizer":
            if not any((target / f).exists() for f in tokenizer_files):
                missing.append(f"{target}/ ({' or '.join(tokenizer_files)})")
            continue
        if not (target / "config.json").is_file():
            missing.append(f"{target}/config.json")
        if not folder_has_weights(target):
            missing.append(f"{target}/ (weights: *.safetensors)")
        else:
            missing += missing_shards(target)
    return missing


def read_state_dict(path, transform_key: Callable[[str], str] | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint (file, shard index or shard folder) on the CPU, memory-mapped where possible.
    The files are read ahead into the page cache in the background (file_prefetch.py): the memory-mapped
    tensors' bytes are then in memory by the time the conversion or the copy to the GPU touches them."""
    files = shard_files(pathlib.Path(path))
    prefetches = file_prefetch.prefetch_files(files)
    try:
        return _read_files(files, transform_key)
    except BaseException:
        for prefetch in prefetches:
            prefetch.cancel()
        raise


def _read_files(files: list[pathlib.Path], transform_key: Callable[[str], str] | None) -> dict[str, torch.Tensor]:
    state_dict: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix in SAFETENSORS_SUFFIXES:
            handle = _open_safetensors(file)
            for key in handle.keys():
                try:
                    tensor = handle.get_tensor(key)
                except Exception as error:
                    raise ModelFilesError(
                        f"{file}: tensor '{key}' cannot be read ({error}); the file is corrupt. Download it again."
                    ) from error
                state_dict[transform_key(key) if transform_key else key] = tensor
        elif file.suffix in PICKLE_SUFFIXES:
            for key, tensor in _load_pickle(file).items():
                state_dict[transform_key(key) if transform_key else key] = tensor
        else:
            raise ModelFilesError(f"{file}: unsupported file type '{file.suffix}' (use .safetensors, .pt or .pth).")
    return state_dict


def read_shapes(path) -> dict[str, tuple[int, ...]]:
    """Key -> shape without reading tensor data (safetensors); .pt/.pth are memory-mapped."""
    shapes: dict[str, tuple[int, ...]] = {}
    for file in shard_files(pathlib.Path(path)):
        if file.suffix in SAFETENSORS_SUFFIXES:
            handle = _open_safetensors(file)
            for key in handle.keys():
                shapes[key] = tuple(handle.get_slice(key).get_shape())
        else:
            shapes.update({k: tuple(v.shape) for k, v in _load_pickle(file).items()})
    return shapes


def read_metadata(path) -> dict[str, str]:
    files = shard_files(pathlib.Path(path))
    if files[0].suffix not in SAFETENSORS_SUFFIXES:
        return {}
    return _open_safetensors(files[0]).metadata() or {}


def key_list_text(keys: list[str]) -> str:
    """"'first' (and N more)": how messages name a list of offending keys."""
    return f"'{keys[0]}'" + (f" (and {len(keys) - 1} more)" if len(keys) > 1 else "")


def rename_keys(state_dict: dict, rename, source: str, refusal: str, skip=lambda key: False) -> dict:
    """{rename(key): tensor} for every key (`skip` drops known-unused ones); a key `rename` maps to None is
    refused: CheckpointMismatchError "<source>: unexpected key 'k' (and N more)<refusal>"."""
    converted, unknown = {}, []
    for key, tensor in state_dict.items():
        if skip(key):
            continue
        new_key = rename(key)
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key] = tensor
    if unknown:
        raise CheckpointMismatchError(f"{source}: unexpected key {key_list_text(unknown)}{refusal}")
    return converted


def check_keys_and_shapes(expected: dict[str, Iterable[int]], found: dict[str, torch.Tensor | tuple],
                          source: str, layout: str, ignore: Iterable[str] = ()) -> None:
    """Raise CheckpointMismatchError naming the first missing, unexpected or mis-shaped key."""
    ignored = set(ignore)
    missing = sorted(k for k in expected if k not in found)
    unexpected = sorted(k for k in found if k not in expected and k not in ignored)
    problems = []
    if missing:
        problems.append(f"missing key {key_list_text(missing)}")
    if unexpected:
        problems.append(f"unexpected key {key_list_text(unexpected)}")
    for key, shape in expected.items():
        if key in found:
            got = tuple(found[key].shape) if isinstance(found[key], torch.Tensor) else tuple(found[key])
            if got != tuple(shape):
                problems.append(f"key '{key}' has shape {list(got)}, expected {list(shape)}")
                break
    if problems:
        raise CheckpointMismatchError(
            f"{source}: does not match the {layout} layout: {'; '.join(problems)}. The file is from another model "
            "or variant, or is damaged; check that you picked the right file, or download it again."
        )


def empty_weights():
    """Context in which new modules get their parameters on the meta device (no memory, no random init)
    while buffers stay real: buffers such as rotary tables are computed at init and are not in checkpoints."""
    from accelerate import init_empty_weights
    return init_empty_weights(include_buffers=False)


def load_into_meta_model(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str, layout: str,
                         dtype: torch.dtype | None = None) -> None:
    """Strictly load a state dict into a model built on the meta device (no second copy of the weights)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_keys_and_shapes(expected, state_dict, source, layout)
    if dtype is not None:
        state_dict = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=True)


SCALED_FP8_MARKER = "scaled_fp8"  # the key ComfyUI's fp8_scaled files carry
FP8_E4M3_MAX = 448.0


def quantize_fp8_scaled(state_dict: dict, should_quantize: Callable[[str, torch.Tensor], bool]) -> dict:
    """Write a state dict in ComfyUI's "fp8_scaled" format: each selected weight as float8_e4m3fn with a
    per-tensor `<layer>.scale_weight` (weight = fp8 * scale), plus the `scaled_fp8` marker. Used to make demo and
    test files in that format; loaders dequantize or keep them as fp8 storage."""
    out = {}
    for key, tensor in state_dict.items():
        if should_quantize(key, tensor):
            scale = tensor.detach().abs().max().float().clamp(min=1e-12) / FP8_E4M3_MAX
            out[key] = (tensor.float() / scale).to(torch.float8_e4m3fn)
            out[key[: -len(".weight")] + ".scale_weight"] = scale.reshape(1)
        else:
            out[key] = tensor
    out[SCALED_FP8_MARKER] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out


CONFIG_HINT_SUFFIX = ".reelsmith.json"


def read_config_hint(path) -> dict | None:
    """The config written beside a non-standard-size file (`<file>.reelsmith.json`), if any.

    Real checkpoints use the configs shipped with the pack; Reelsmith's tiny demo and test models have
    the same structure at a smaller width, which shapes alone cannot fully describe (head counts,
    channel multipliers), so their writer leaves this small file beside them.
    """
    path = pathlib.Path(path)
    hint = path.parent / (path.name + CONFIG_HINT_SUFFIX)
    if not hint.is_file():
        return None
    try:
        return json.loads(hint.read_text())
    except ValueError as error:
        raise ModelFilesError(f"{hint}: not valid JSON ({error}).") from error


def write_config_hint(path, config: dict) -> None:
    path = pathlib.Path(path)
    (path.parent / (path.name + CONFIG_HINT_SUFFIX)).write_text(json.dumps(config, indent=2))
