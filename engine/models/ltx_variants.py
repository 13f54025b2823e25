"""The LTX-Video (0.9.x) variants Reelsmith supports, and how to tell them apart.

Shapes decide the transformer variant (file names are unreliable): the width of the patch projection and
the number of blocks.

| variant | releases | width | blocks | heads x dim | text (T5-XXL) |
| --- | --- | --- | --- | --- | --- |
| 2B | 0.9.0, 0.9.1, 0.9.5, 0.9.6 dev/distilled, 0.9.8 distilled | 2048 | 28 | 32 x 64 | 4096 |
| 13B | 0.9.7 dev/distilled, 0.9.8 dev/distilled | 4096 | 48 | 32 x 128 | 4096 |

Dev vs distilled. A distilled checkpoint has exactly the shapes of its base model, so no tensor can tell
them apart. The vendor's single files (`ltxv-*.safetensors`) carry a JSON string under the safetensors
metadata key `config`, with `transformer`, `vae` and `scheduler` sections and a top-level
`allowed_inference_steps`: the vendor's inference code (`create_ltx_video_pipeline` in LTX-Video's
inference.py) reads that list and, when it is set, samples only on those sigmas — that is the distilled
schedule (the 0.9.8 distilled files list eight sigmas from 1.0 down to about 0.42, as third-party
reports quote them); dev files leave it out or null. So a loader should:
1. read the file's metadata: `allowed_inference_steps` present and not null -> distilled, with that
   schedule; a `config` without it -> dev (`ltx_checkpoint_facts`);
2. when there is no vendor metadata (diffusers folders, ComfyUI-repacked or fp8-converted files strip it),
   take the caller's choice (a node widget "dev / distilled"); never guess from the file name alone.
Not checked on a downloaded vendor file (no network here): the exact schedule values of each release.

The same metadata's `transformer` section holds `causal_temporal_positioning` (what ComfyUI applies too):
see engine/pipelines/ltx_inputs.py for what it changes. Its `vae` section may set `spatial_padding_mode`
for every convolution of the VAE; the vendor's `CausalVideoAutoencoder.from_config` (LTX-Video,
causal_video_autoencoder.py) pads with zeros when the key is absent, and so do diffusers' folders
(`vae_spatial_padding_mode`). ComfyUI 0.8 follows the key too but defaults its decoder to `reflect` when the
key is absent: for such files ComfyUI's decode differs from the vendor's at the borders; ours follows the vendor.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass

from ..errors import ModelFilesError

CONFIG_DIR = pathlib.Path(__file__).parent / "configs" / "ltx"
VAE_CONFIGS = {"0.9.0": "vae_0.9.0.json", "0.9.1": "vae_0.9.1.json", "0.9.5": "vae_0.9.5.json"}
TEXT_ENCODER_CONFIG = "t5_xxl_encoder.json"
UPSCALER_CONFIG = "spatial_upscaler.json"
SPATIAL_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")  # torch Conv3d padding modes


def ltx_config(file_name: str) -> dict:
    """A shipped diffusers config from configs/ltx/, without the bookkeeping `_` keys (ready for `Model(**config)`)."""
    path = CONFIG_DIR / file_name
    if not path.is_file():
        raise ModelFilesError(f"{path}: the shipped LTX-Video config is missing; the Reelsmith install is incomplete.")
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


@dataclass(frozen=True)
class LTXVariant:
    name: str                 # id used in messages and workflow metadata
    display_name: str
    transformer_config: str   # file in configs/ltx/
    width: int                # patch projection width (heads x head dim)
    num_layers: int
    releases: tuple[str, ...]
    default_vae: str          # VAE generation shipped with the newest release of this size

    def transformer_config_dict(self) -> dict:
        return ltx_config(self.transformer_config)


LTX_VARIANTS = {
    "2b": LTXVariant("2b", "LTX-Video 2B (0.9.x)", "transformer_2b.json", 2048, 28,
                     ("0.9.0", "0.9.1", "0.9.5", "0.9.6", "0.9.8"), "0.9.5"),
    "13b": LTXVariant("13b", "LTX-Video 13B (0.9.7 / 0.9.8)", "transformer_13b.json", 4096, 48,
                      ("0.9.7", "0.9.8"), "0.9.5"),
}
IN_CHANNELS = 128


def _width_and_layers(shapes: dict) -> tuple[tuple, int]:
    for key in ("patchify_proj.weight", "model.diffusion_model.patchify_proj.weight", "proj_in.weight"):
        if key in shapes:
            projection = tuple(shapes[key])
            break
    else:
        raise ModelFilesError("no 'patchify_proj.weight' (original naming) or 'proj_in.weight' (diffusers naming): "
                              "this is not an LTX-Video transformer.")
    blocks = {int(k.split("transformer_blocks.")[1].split(".")[0]) for k in shapes if "transformer_blocks." in k}
    return projection, (max(blocks) + 1 if blocks else 0)


def detect_ltx_variant(shapes: dict, source: str, tiny_ok: bool = False) -> LTXVariant:
    """The variant from a checkpoint's key -> shape map (original names with or without
    `model.diffusion_model.`, or diffusers names).

    `tiny_ok` lets demo/test models (same structure, smaller width) through as the 2B variant; the caller
    then takes the dimensions from the tensors.
    """
    try:
        projection, num_layers = _width_and_layers(shapes)
    except ModelFilesError as error:
        raise ModelFilesError(f"{source}: {error}") from None
    if len(projection) != 2 or (projection[1] != IN_CHANNELS and not tiny_ok):
        raise ModelFilesError(
            f"{source}: the patch projection has shape {list(projection)}, expected [width, {IN_CHANNELS}]. "
            "This is not an LTX-Video 0.9.x transformer (LTX-2 and other families are not supported here)."
        )
    width = projection[0]
    for variant in LTX_VARIANTS.values():
        if variant.width == width and variant.num_layers == num_layers:
            return variant
    if tiny_ok and width < LTX_VARIANTS["2b"].width:
        return LTX_VARIANTS["2b"]
    known = ", ".join(f"{v.display_name} (width {v.width}, {v.num_layers} blocks)" for v in LTX_VARIANTS.values())
    raise ModelFilesError(
        f"{source}: an LTX-Video transformer of width {width} with {num_layers} blocks is not a supported variant. "
        f"Supported: {known}. The file may be truncated (missing blocks) or from another release."
    )


@dataclass(frozen=True)
class LTXCheckpointFacts:
    """What a vendor single file's metadata says beyond its shapes; None where the file does not say."""
    distilled: bool | None
    allowed_inference_steps: tuple[float, ...] | None
    causal_temporal_positioning: bool | None
    vendor_config: dict | None
    vae_spatial_padding_mode: str = "zeros"


def ltx_checkpoint_facts(metadata: dict | None, source: str = "this file") -> LTXCheckpointFacts:
    """Read the vendor's `config` metadata (see the module docstring). `distilled` is None when the file
    carries no vendor config: then the caller must choose."""
    raw = (metadata or {}).get("config")
    if raw is None:
        return LTXCheckpointFacts(None, None, None, None)
    try:
        config = json.loads(raw)
    except ValueError as error:
        raise ModelFilesError(f"{source}: its 'config' metadata is not valid JSON ({error}).") from error
    steps = config.get("allowed_inference_steps")
    transformer = config.get("transformer") or {}
    causal = transformer.get("causal_temporal_positioning")
    padding = (config.get("vae") or {}).get("spatial_padding_mode", "zeros")
    if padding not in SPATIAL_PADDING_MODES:
        raise ModelFilesError(f"{source}: its vae config asks for spatial_padding_mode {padding!r}; LTX-Video VAEs "
                              f"pad with one of {', '.join(SPATIAL_PADDING_MODES)}. The file's metadata is damaged "
                              "or not from an LTX-Video 0.9.x release.")
    return LTXCheckpointFacts(
        distilled=steps is not None,
        allowed_inference_steps=tuple(float(s) for s in steps) if steps is not None else None,
        causal_temporal_positioning=bool(causal) if causal is not None else None,
        vendor_config=config,
        vae_spatial_padding_mode=padding,
    )
