"""Where a user's Wan 2.2 files are, in each of the three layouts, and whether they are complete.

1. diffusers folders (`model_index.json`, `transformer/`, `transformer_2/`, `vae/`, `text_encoder/`, `tokenizer/`);
2. Wan-AI release folders as `hf download Wan-AI/Wan2.2-T2V-A14B` leaves them;
3. ComfyUI single files picked one by one (diffusion model(s), text encoder, VAE).
Folders are found one or two levels under each models root (guides put them at `models/<name>`; Reelsmith's
demo models sit at `models/reelsmith-demo/<name>`) and under `models/diffusers/`.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, field

from ..errors import ModelFilesError
from . import checkpoint_io

LAYOUT_DIFFUSERS = "diffusers"
LAYOUT_RELEASE = "Wan-AI release"
LAYOUT_SINGLE_FILES = "ComfyUI single files"

WAN_PIPELINE_CLASSES = ("WanPipeline", "WanImageToVideoPipeline")
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
TOKENIZER_DIR = "google/umt5-xxl"
RELEASE_MARKERS = ("high_noise_model", "low_noise_model", "Wan2.1_VAE.pth", "Wan2.2_VAE.pth", T5_FILE)
TOKENIZER_FILES = ("spiece.model", "tokenizer.json")


@dataclass
class WanModelFiles:
    """Every file one Wan model needs, wherever it came from."""
    layout: str
    label: str
    transformer: pathlib.Path                 # the high-noise expert (A14B) or the only model (TI2V-5B)
    transformer_2: pathlib.Path | None        # the low-noise expert (A14B)
    vae: pathlib.Path
    vae_format: str                           # "diffusers" | "original"
    text_encoder: pathlib.Path | None         # None: the sampler needs native CONDITIONING inputs
    text_encoder_format: str | None           # "transformers" | "wan-original" | "comfyui"
    tokenizer: pathlib.Path | None            # a tokenizer folder; ComfyUI files carry theirs inside
    notes: list[str] = field(default_factory=list)


def is_diffusers_wan_folder(folder: pathlib.Path) -> bool:
    index = folder / "model_index.json"
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text()).get("_class_name") in WAN_PIPELINE_CLASSES
    except (OSError, ValueError):
        return False


def is_release_folder(folder: pathlib.Path) -> bool:
    return folder.is_dir() and any((folder / marker).exists() for marker in RELEASE_MARKERS)


def discover_folders(models_roots, matches) -> dict[str, pathlib.Path]:
    """Readable name (path under its root) -> folder, for every folder one or two levels under the given roots for
    which `matches(folder)` is true (a matching folder is not searched further). Any family's vendor folders."""
    found: dict[str, pathlib.Path] = {}
    for root in models_roots:
        root = pathlib.Path(root)
        if not root.is_dir():
            continue
        candidates = []
        for child in sorted(root.iterdir()):
            if not child.is_dir():
                continue
            candidates.append(child)
            if not matches(child):
                candidates += sorted(c for c in child.iterdir() if c.is_dir())  # one more level
        for folder in candidates:
            if matches(folder):
                found.setdefault(folder.relative_to(root).as_posix(), folder)
    return found


def discover_wan_folders(models_roots) -> dict[str, pathlib.Path]:
    """Readable name -> folder, for every Wan diffusers or release folder under the given roots."""
    return discover_folders(models_roots, lambda folder: is_diffusers_wan_folder(folder) or is_release_folder(folder))


def release_download_command(folder: pathlib.Path) -> str:
    """The command that fills this folder; the repo is guessed for the hint only (never for loading)."""
    repo = "Wan-AI/Wan2.2-T2V-A14B"
    for expert in ("high_noise_model", "low_noise_model"):
        config = folder / expert / "config.json"
        if config.exists():
            try:
                if json.loads(config.read_text()).get("model_type") == "i2v":
                    repo = "Wan-AI/Wan2.2-I2V-A14B"
            except (OSError, ValueError):
                pass
            break
    else:
        if (folder / "Wan2.2_VAE.pth").exists() or "ti2v" in folder.name.lower():
            repo = "Wan-AI/Wan2.2-TI2V-5B"
        elif "i2v" in folder.name.lower():
            repo = "Wan-AI/Wan2.2-I2V-A14B"
    return f"hf download {repo} --local-dir {folder}"


def resolve_release_folder(folder: pathlib.Path, label: str) -> WanModelFiles:
    two_experts = (folder / "high_noise_model").exists() or (folder / "low_noise_model").exists()
    missing: list[str] = []
    if two_experts:
        for expert in ("high_noise_model", "low_noise_model"):
            if not checkpoint_io.folder_has_weights(folder / expert):
                missing.append(f"{folder / expert}/ (the {expert.split('_')[0]}-noise expert's .safetensors shards)")
            else:
                missing += checkpoint_io.missing_shards(folder / expert)
        vae_name = "Wan2.1_VAE.pth"
    else:
        if not any(folder.glob("*.safetensors")):
            missing.append(f"{folder}/diffusion_pytorch_model-*.safetensors (the TI2V-5B transformer shards)")
        missing += checkpoint_io.missing_shards(folder)
        vae_name = "Wan2.2_VAE.pth"
    for needed in (vae_name, T5_FILE):
        if not (folder / needed).is_file():
            missing.append(str(folder / needed))
    tokenizer = folder / TOKENIZER_DIR
    if not any((tokenizer / f).exists() for f in TOKENIZER_FILES):
        missing.append(f"{tokenizer}/ (spiece.model or tokenizer.json)")
    if missing:
        raise ModelFilesError(
            f"Wan model '{label}' is incomplete (assumed layout: {LAYOUT_RELEASE} folder, as the Wan-AI "
            f"download leaves it). Missing:\n  - " + "\n  - ".join(missing)
            + f"\nDownload the rest with:\n  {release_download_command(folder)}"
        )
    return WanModelFiles(
        layout=LAYOUT_RELEASE, label=label,
        transformer=folder / "high_noise_model" if two_experts else folder,
        transformer_2=folder / "low_noise_model" if two_experts else None,
        vae=folder / vae_name, vae_format="original",
        text_encoder=folder / T5_FILE, text_encoder_format="wan-original", tokenizer=tokenizer,
    )


def resolve_diffusers_folder(folder: pathlib.Path, label: str) -> WanModelFiles:
    index = json.loads((folder / "model_index.json").read_text())
    components = ["transformer", "vae", "text_encoder", "tokenizer"]
    if index.get("transformer_2") not in (None, [None, None]):
        components.append("transformer_2")
    missing = checkpoint_io.missing_component_files(folder, components, TOKENIZER_FILES)
    if missing:
        raise ModelFilesError(
            f"Wan model '{label}' is incomplete (assumed layout: {LAYOUT_DIFFUSERS} folder). Missing:\n  - "
            + "\n  - ".join(missing)
            + f"\nDownload the rest with:\n  hf download Wan-AI/{folder.name} --local-dir {folder}"
        )
    has_second = (folder / "transformer_2").is_dir() and index.get("transformer_2") not in (None, [None, None])
    return WanModelFiles(
        layout=LAYOUT_DIFFUSERS, label=label,
        transformer=folder / "transformer",
        transformer_2=folder / "transformer_2" if has_second else None,
        vae=folder / "vae", vae_format="diffusers",
        text_encoder=folder / "text_encoder", text_encoder_format="transformers",
        tokenizer=folder / "tokenizer",
    )


def resolve_folder(folder: pathlib.Path, label: str) -> WanModelFiles:
    if not folder.is_dir():
        raise ModelFilesError(f"Wan model folder '{label}' ({folder}) does not exist any more.")
    if is_diffusers_wan_folder(folder):
        return resolve_diffusers_folder(folder, label)
    return resolve_release_folder(folder, label)


def resolve_single_files(diffusion_model: pathlib.Path, diffusion_model_low_noise: pathlib.Path | None,
                         text_encoder: pathlib.Path | None, vae: pathlib.Path) -> WanModelFiles:
    missing = [str(p) for p in (diffusion_model, diffusion_model_low_noise, text_encoder, vae)
               if p is not None and not p.is_file()]
    if missing:
        raise ModelFilesError(
            f"Missing file(s) (assumed layout: {LAYOUT_SINGLE_FILES}): {', '.join(missing)}. "
            "Put them in ComfyUI's models/diffusion_models, models/text_encoders and models/vae folders "
            "(the workflow's model list has the download links)."
        )
    return WanModelFiles(
        layout=LAYOUT_SINGLE_FILES, label=diffusion_model.name,
        transformer=diffusion_model, transformer_2=diffusion_model_low_noise,
        vae=vae, vae_format="original",
        text_encoder=text_encoder, text_encoder_format="comfyui" if text_encoder else None, tokenizer=None,
    )
