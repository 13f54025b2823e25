"""Where a user's LTX-Video (0.9.x) files are, in each layout, and whether they are complete.

1. diffusers folders: `model_index.json` (`_class_name` LTXPipeline / LTXImageToVideoPipeline /
   LTXConditionPipeline), `transformer/`, `vae/`, `text_encoder/`, `tokenizer/` (Lightricks/LTX-Video's
   root is the 0.9.0 one; Lightricks/LTX-Video-0.9.5 and later repos hold later releases);
2. vendor / ComfyUI single files: the vendor checkpoint `ltxv-*.safetensors` (ComfyUI keeps it in
   `models/checkpoints/`; transformer under `model.diffusion_model.`, VAE under `vae.`, the vendor config in
   its metadata) plus a T5-XXL file from `models/text_encoders/` (`t5xxl_fp16.safetensors`; no tokenizer
   inside: the caller's folder, a `t5_tokenizer/` folder beside the file, or ComfyUI's own is used).
The 0.9.7/0.9.8 spatial upscaler (`ltxv-spatial-upscaler-*.safetensors`) is optional in both layouts.
ComfyUI 0.8's core `LatentUpscaleModelLoader` lists `models/latent_upscale_models/` (and reads the vendor
config from the file's metadata); the Lightricks ComfyUI-LTXVideo nodes use `models/upscale_models/`, so both
are searched.
Folders are found one or two levels under each models root (the demo's at `models/reelsmith-demo/<name>`).

File names (checked against many public download scripts and guides, not against the hub itself here):
ltxv-2b-0.9.8-distilled.safetensors, ltxv-13b-0.9.8-dev.safetensors, ltxv-13b-0.9.8-distilled.safetensors,
ltxv-spatial-upscaler-0.9.8.safetensors in Lightricks/LTX-Video; t5xxl_fp16.safetensors and
t5xxl_fp8_e4m3fn_scaled.safetensors in comfyanonymous/flux_text_encoders. Unverified: the 0.9.7 names in
KNOWN_VENDOR_FILES (same naming scheme, seen in fewer sources).
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, field

from ..errors import ModelFilesError
from . import checkpoint_io

LAYOUT_DIFFUSERS = "diffusers"
LAYOUT_SINGLE_FILES = "LTX-Video vendor checkpoint + ComfyUI text encoder"

LTX_PIPELINE_CLASSES = ("LTXPipeline", "LTXImageToVideoPipeline", "LTXConditionPipeline")
VENDOR_REPO = "Lightricks/LTX-Video"
T5_REPO = "comfyanonymous/flux_text_encoders"
T5_FILES = ("t5xxl_fp16.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors")
KNOWN_VENDOR_FILES = (
    "ltxv-2b-0.9.8-distilled.safetensors",
    "ltxv-13b-0.9.8-dev.safetensors",
    "ltxv-13b-0.9.8-distilled.safetensors",
    "ltxv-13b-0.9.7-dev.safetensors",          # unverified name (same scheme)
    "ltxv-13b-0.9.7-distilled.safetensors",    # unverified name (same scheme)
)
UPSCALER_FILES = ("ltxv-spatial-upscaler-0.9.8.safetensors", "ltxv-spatial-upscaler-0.9.7.safetensors")
UPSCALER_FOLDERS = ("latent_upscale_models", "upscale_models")  # ComfyUI core first, then ComfyUI-LTXVideo's
CHECKPOINT_FOLDER = "checkpoints"
TEXT_ENCODER_FOLDER = "text_encoders"
SIDE_TOKENIZER_DIR = "t5_tokenizer"  # beside a text encoder file (demo models); named like ComfyUI's own
TOKENIZER_FILES = ("spiece.model", "tokenizer.json")
DIFFUSERS_COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer")


@dataclass
class LTXModelFiles:
    """Every file one LTX-Video model needs, wherever it came from."""
    layout: str
    label: str
    transformer: pathlib.Path                 # a diffusers `transformer/` folder or the vendor checkpoint
    vae: pathlib.Path                         # a diffusers `vae/` folder or the vendor checkpoint (VAE inside)
    text_encoder: pathlib.Path | None         # None: the sampler needs native CONDITIONING inputs
    text_encoder_format: str | None           # "transformers" | "comfyui"
    tokenizer: pathlib.Path | None            # None with a ComfyUI file: ComfyUI's own T5 tokenizer (at load)
    upscaler: pathlib.Path | None = None      # ltxv-spatial-upscaler-*.safetensors, optional
    notes: list[str] = field(default_factory=list)


def is_diffusers_ltx_folder(folder: pathlib.Path) -> bool:
    index = pathlib.Path(folder) / "model_index.json"
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text()).get("_class_name") in LTX_PIPELINE_CLASSES
    except (OSError, ValueError):
        return False


def discover_ltx_folders(models_roots) -> dict[str, pathlib.Path]:
    """Readable name -> folder, for every LTX diffusers folder one or two levels under the given roots."""
    found: dict[str, pathlib.Path] = {}
    for root in models_roots:
        root = pathlib.Path(root)
        if not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            if not child.is_dir():
                continue
            candidates = [child] if is_diffusers_ltx_folder(child) else sorted(c for c in child.iterdir() if c.is_dir())
            for folder in candidates:
                if is_diffusers_ltx_folder(folder):
                    found.setdefault(folder.relative_to(root).as_posix(), folder)
    return found


def diffusers_download_command(folder: pathlib.Path) -> str:
    """The command that fills a diffusers folder; the repo is guessed from the folder name for the hint only.
    Lightricks/LTX-Video's root also holds every vendor file (hundreds of GB), hence the --include."""
    name = folder.name
    if name.startswith("LTX-Video-0.9"):
        return f"hf download Lightricks/{name} --local-dir {folder}"
    return (f"hf download {VENDOR_REPO} --include 'model_index.json' 'scheduler/*' 'transformer/*' 'vae/*' "
            f"'text_encoder/*' 'tokenizer/*' --local-dir {folder}")


def resolve_diffusers_folder(folder, label: str | None = None, upscaler=None) -> LTXModelFiles:
    folder = pathlib.Path(folder)
    label = label or folder.name
    if not folder.is_dir():
        raise ModelFilesError(f"LTX-Video model folder '{label}' ({folder}) does not exist.")
    if not is_diffusers_ltx_folder(folder):
        raise ModelFilesError(
            f"LTX-Video model '{label}' ({folder}): no model_index.json naming an LTX pipeline "
            f"({', '.join(LTX_PIPELINE_CLASSES)}); assumed layout: {LAYOUT_DIFFUSERS} folder.\n"
            f"Download it with:\n  {diffusers_download_command(folder)}")
    missing = checkpoint_io.missing_component_files(folder, DIFFUSERS_COMPONENTS, TOKENIZER_FILES)
    if upscaler is not None and not pathlib.Path(upscaler).is_file():
        missing.append(_upscaler_missing(pathlib.Path(upscaler)))
    if missing:
        raise ModelFilesError(
            f"LTX-Video model '{label}' is incomplete (assumed layout: {LAYOUT_DIFFUSERS} folder). Missing:\n  - "
            + "\n  - ".join(missing) + f"\nDownload the rest with:\n  {diffusers_download_command(folder)}")
    return LTXModelFiles(
        layout=LAYOUT_DIFFUSERS, label=label, transformer=folder / "transformer", vae=folder / "vae",
        text_encoder=folder / "text_encoder", text_encoder_format="transformers", tokenizer=folder / "tokenizer",
        upscaler=pathlib.Path(upscaler) if upscaler is not None else None,
    )


def _vendor_missing(path: pathlib.Path) -> str:
    note = "" if path.name in KNOWN_VENDOR_FILES else " (if this is a Lightricks release file)"
    return f"{path} — hf download {VENDOR_REPO} {path.name} --local-dir {path.parent}{note}"


def _text_encoder_missing(path: pathlib.Path) -> str:
    name = path.name if path.name in T5_FILES else T5_FILES[0]
    note = "" if path.name in T5_FILES else f" (then pick {name})"
    return f"{path} — hf download {T5_REPO} {name} --local-dir {path.parent}{note}"


def _upscaler_missing(path: pathlib.Path) -> str:
    return f"{path} — hf download {VENDOR_REPO} {path.name} --local-dir {path.parent}"


def side_tokenizer(text_encoder: pathlib.Path) -> pathlib.Path | None:
    """A `t5_tokenizer/` folder beside a text encoder file (how the demo models ship theirs), if any."""
    folder = text_encoder.parent / SIDE_TOKENIZER_DIR
    return folder if any((folder / f).exists() for f in TOKENIZER_FILES) else None


def resolve_single_files(checkpoint, text_encoder=None, tokenizer=None, upscaler=None) -> LTXModelFiles:
    """The vendor checkpoint (transformer + VAE) and, optionally, a ComfyUI T5-XXL file, a tokenizer folder
    and the spatial upscaler. Every missing file is named with the command that fetches it."""
    checkpoint = pathlib.Path(checkpoint)
    text_encoder = pathlib.Path(text_encoder) if text_encoder is not None else None
    upscaler = pathlib.Path(upscaler) if upscaler is not None else None
    tokenizer = pathlib.Path(tokenizer) if tokenizer is not None else None
    missing = []
    if not checkpoint.is_file():
        missing.append(_vendor_missing(checkpoint))
    if text_encoder is not None and not text_encoder.is_file():
        missing.append(_text_encoder_missing(text_encoder))
    if upscaler is not None and not upscaler.is_file():
        missing.append(_upscaler_missing(upscaler))
    if tokenizer is not None and not any((tokenizer / f).exists() for f in TOKENIZER_FILES):
        missing.append(f"{tokenizer}/ (spiece.model or tokenizer.json) — hf download {VENDOR_REPO} --include "
                       f"'tokenizer/*' --local-dir <folder>, then give <folder>/tokenizer")
    if missing:
        raise ModelFilesError(
            f"LTX-Video model files are missing (assumed layout: {LAYOUT_SINGLE_FILES}: the vendor checkpoint in "
            "models/checkpoints, the T5-XXL file in models/text_encoders, the upscaler in "
            "models/latent_upscale_models). Missing:\n  - " + "\n  - ".join(missing))
    if text_encoder is not None and tokenizer is None:
        tokenizer = side_tokenizer(text_encoder)
    notes = []
    if text_encoder is not None and tokenizer is None:
        notes.append("tokenizer: ComfyUI's own comfy/text_encoders/t5_tokenizer (resolved when the encoder loads)")
    return LTXModelFiles(
        layout=LAYOUT_SINGLE_FILES, label=checkpoint.name, transformer=checkpoint, vae=checkpoint,
        text_encoder=text_encoder, text_encoder_format="comfyui" if text_encoder is not None else None,
        tokenizer=tokenizer, upscaler=upscaler, notes=notes,
    )


def find_upscalers(models_roots) -> dict[str, pathlib.Path]:
    """Readable name -> file, for every `ltxv-spatial-upscaler*.safetensors` in the upscaler folders
    (recursively, as ComfyUI lists them) under the given roots."""
    found: dict[str, pathlib.Path] = {}
    for root in models_roots:
        for folder_name in UPSCALER_FOLDERS:
            folder = pathlib.Path(root) / folder_name
            if folder.is_dir():
                for path in sorted(folder.rglob("*spatial-upscaler*.safetensors")):
                    found.setdefault(path.relative_to(folder).as_posix(), path)
    return found
