"""Where a user's HunyuanVideo-Avatar files are, and whether the download is complete.

One layout: the vendor's folder as `hf download tencent/HunyuanVideo-Avatar --local-dir models/HunyuanVideo-Avatar`
leaves it (weights/README.md of Tencent-Hunyuan/HunyuanVideo-Avatar; DESIGN.md "Model layouts"):

    <folder>/ckpts/hunyuan-video-t2v-720p/transformers/mp_rank_00_model_states.pt     (and/or the fp8 pair
                                                       mp_rank_00_model_states_fp8.pt + _fp8_map.pt)
    <folder>/ckpts/hunyuan-video-t2v-720p/vae/pytorch_model.pt + config.json
    <folder>/ckpts/llava_llama_image/   <folder>/ckpts/text_encoder_2/   <folder>/ckpts/whisper-tiny/
    <folder>/ckpts/det_align/detface.pt

Folders are found one or two levels under each models root and under `models/diffusers` (the Wan helper
`discover_folders`; the demo's sits at `models/reelsmith-demo/HunyuanVideo-Avatar`). Everything missing is named at
once, with the command that downloads it, before anything is read. The face detector is optional: without it the
sampler needs a face MASK (the loader notes it).
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field

from ..errors import ModelFilesError
from .avatar_encoders import (CLIP_DIR, DETECTOR_FILE, LLAVA_DIR, WHISPER_DIR, AvatarEncoderFiles, avatar_encoder_files,
                             missing_encoder_files)
from .hunyuan_avatar_checkpoint import (BF16_FILE, FP8_FILE, FP8_MAP_FILE, TRANSFORMERS_DIR, AvatarTransformerFiles,
                                        find_avatar_transformer_files)
from .hunyuan_vae import VENDOR_WEIGHTS
from .wan_layouts import discover_folders

VENDOR_REPO = "tencent/HunyuanVideo-Avatar"
DEFAULT_FOLDER = "HunyuanVideo-Avatar"  # the name the guides and the shipped workflow use under models/
LAYOUT = f"{VENDOR_REPO} vendor folder"
MODEL_DIR = pathlib.Path("ckpts") / "hunyuan-video-t2v-720p"
VAE_DIR = MODEL_DIR / "vae"
MARKERS = (MODEL_DIR, pathlib.Path("ckpts") / "llava_llama_image", pathlib.Path("ckpts") / "whisper-tiny",
           pathlib.Path("ckpts") / "det_align")


@dataclass
class AvatarModelFiles:
    """Every file one HunyuanVideo-Avatar model needs."""
    label: str
    root: pathlib.Path                      # the folder `hf download --local-dir` was given
    transformer: AvatarTransformerFiles
    vae: pathlib.Path                       # the vae/ folder
    encoders: AvatarEncoderFiles
    detector: pathlib.Path | None           # None: the download has no face detector (a MASK is then needed)
    layout: str = LAYOUT
    notes: list[str] = field(default_factory=list)


def is_avatar_folder(folder: pathlib.Path) -> bool:
    return folder.is_dir() and any((folder / marker).is_dir() for marker in MARKERS)


def discover_avatar_folders(models_roots) -> dict[str, pathlib.Path]:
    """Readable name -> folder, for every HunyuanVideo-Avatar vendor folder under the given roots."""
    return discover_folders(models_roots, is_avatar_folder)


def download_command(folder: pathlib.Path, include: str | None = None) -> str:
    part = f" --include '{include}'" if include else ""
    return f"hf download {VENDOR_REPO}{part} --local-dir {folder}"


@dataclass(frozen=True)
class MissingAvatarPart:
    """One part of the download that is missing: what it is, its missing paths (as shown to the user) and the
    `hf download --include` pattern (relative to the download root) that fetches it."""
    what: str
    paths: tuple[str, ...]
    include: str
    hint: str = ""          # said after the command
    optional: bool = False  # the face detector: a face MASK on the sampler stands in for it

    def describe(self, root: pathlib.Path) -> str:
        """The part as the loader's error lists it: paths, what it is, the command."""
        hint = f"   {self.hint}" if self.hint else ""
        return "\n    ".join(self.paths) + f" — {self.what}\n    -> {download_command(root, self.include)}{hint}"


ENCODER_NAMES = {LLAVA_DIR: "the LLaVA-Llama-3 text + image encoder", CLIP_DIR: "the CLIP-L text encoder",
                 WHISPER_DIR: "the whisper-tiny audio encoder"}


def _transformer_missing(root: pathlib.Path, prefer_fp8: bool) -> list[MissingAvatarPart]:
    try:
        find_avatar_transformer_files(root, prefer_fp8=prefer_fp8)
    except ModelFilesError:
        folder = root / TRANSFORMERS_DIR
        if (folder / FP8_FILE).is_file() and not (folder / FP8_MAP_FILE).is_file():
            return [MissingAvatarPart("the fp8 transformer's scale map", (str(folder / FP8_MAP_FILE),),
                                      f"{TRANSFORMERS_DIR}/{FP8_MAP_FILE}")]
        return [MissingAvatarPart(
            "the transformer", (f"{folder}/{BF16_FILE} (bf16) or {FP8_FILE} + {FP8_MAP_FILE} (fp8)",),
            f"{TRANSFORMERS_DIR}/{FP8_FILE[:-len('.pt')]}*",
            f"(fp8 pair; or '{TRANSFORMERS_DIR}/{BF16_FILE}' for bf16)")]
    return []


def _vae_missing(root: pathlib.Path) -> list[MissingAvatarPart]:
    folder = root / VAE_DIR
    absent = tuple(str(folder / name) for name in (VENDOR_WEIGHTS, "config.json") if not (folder / name).is_file())
    return [MissingAvatarPart("the VAE", absent, f"{VAE_DIR}/*")] if absent else []


def missing_avatar_parts(folder, prefer_fp8: bool = False) -> list[MissingAvatarPart]:
    """Every missing part of a vendor folder (the download root or its `ckpts/`; it need not exist), the optional
    face detector last. Nothing is read: only which files are there."""
    folder = pathlib.Path(folder)
    root = folder.parent if folder.name == "ckpts" else folder
    encoders = avatar_encoder_files(root)
    parts = _transformer_missing(root, prefer_fp8) + _vae_missing(root)
    parts += [MissingAvatarPart(ENCODER_NAMES[component], tuple(paths), f"ckpts/{component}/*")
              for component, paths in missing_encoder_files(encoders)]
    if not encoders.detector.is_file():
        parts.append(MissingAvatarPart("the face detector (optional: or connect a face MASK to the sampler)",
                                       (str(encoders.detector),), f"ckpts/{DETECTOR_FILE}", optional=True))
    return parts


def resolve_avatar_folder(folder, label: str | None = None, prefer_fp8: bool = False) -> AvatarModelFiles:
    """The files of a vendor folder (given as the download root or its `ckpts/`); one error lists all that is
    missing. `prefer_fp8` picks the fp8 transformer pair when both checkpoints are there."""
    folder = pathlib.Path(folder)
    label = label or folder.name
    root = folder.parent if folder.name == "ckpts" else folder
    if not root.is_dir():
        raise ModelFilesError(f"HunyuanVideo-Avatar model folder '{label}' ({root}) does not exist. Download it "
                              f"with:\n  {download_command(root)}")
    problems = [part.describe(root) for part in missing_avatar_parts(root, prefer_fp8) if not part.optional]
    encoders = avatar_encoder_files(root)
    if problems:
        raise ModelFilesError(
            f"HunyuanVideo-Avatar model '{label}' is incomplete (assumed layout: {LAYOUT}, as `{download_command(root)}` "
            f"leaves it). Missing:\n  - " + "\n  - ".join(problems)
            + f"\nOr download the whole repository (both transformer checkpoints) with:\n  {download_command(root)}")
    notes = []
    detector = encoders.detector if encoders.detector.is_file() else None
    if detector is None:
        notes.append(f"no face detector ({encoders.detector}): connect a face MASK to the sampler, or download it "
                     f"with {download_command(root, 'ckpts/det_align/*')}")
    return AvatarModelFiles(label=label, root=root, transformer=find_avatar_transformer_files(root, prefer_fp8),
                            vae=root / VAE_DIR, encoders=encoders, detector=detector, notes=notes)
