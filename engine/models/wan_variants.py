"""The Wan 2.2 variants Reelsmith supports, and how to tell them apart from the weights alone.

A file name says nothing reliable (users rename files), so the variant is read off tensor shapes:
the width of the patch embedding and how many latent channels it takes in.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass

from ..errors import ModelFilesError

CONFIG_DIR = pathlib.Path(__file__).parent / "configs" / "wan"


@dataclass(frozen=True)
class WanVariant:
    name: str                 # id used in messages and workflow metadata
    display_name: str
    transformer_config: str   # file in configs/wan/
    vae_version: str          # "2.1" (16 latent channels) or "2.2" (48)
    two_experts: bool         # A14B: high-noise + low-noise experts
    image_conditioned: bool   # needs a start image (I2V A14B); TI2V-5B takes one optionally
    width: int                # patch-embedding width (model dim)
    in_channels: int
    size_multiple: int        # width/height must be a multiple of this (VAE stride x patch size)
    default_fps: int
    default_flow_shift: float
    default_boundary: float

    def transformer_config_dict(self) -> dict:
        return json.loads((CONFIG_DIR / self.transformer_config).read_text())


WAN_VARIANTS = {
    "t2v-a14b": WanVariant("t2v-a14b", "Wan 2.2 T2V A14B", "transformer_t2v_a14b.json", "2.1",
                           True, False, 5120, 16, 16, 16, 12.0, 0.875),
    "i2v-a14b": WanVariant("i2v-a14b", "Wan 2.2 I2V A14B", "transformer_i2v_a14b.json", "2.1",
                           True, True, 5120, 36, 16, 16, 5.0, 0.900),
    "ti2v-5b": WanVariant("ti2v-5b", "Wan 2.2 TI2V 5B", "transformer_ti2v_5b.json", "2.2",
                          False, False, 3072, 48, 32, 24, 5.0, 0.0),
}


def detect_wan_variant(patch_embedding_shape, source: str, num_blocks: int | None = None,
                       tiny_ok: bool = False) -> WanVariant:
    """Pick the variant from the patch embedding's shape [dim, in_channels, 1, 2, 2].

    `tiny_ok` lets the demo/test models (same structure, tiny width) through: the variant is then chosen
    by input channels alone and the config is taken from the checkpoint's own shapes by the caller.
    """
    shape = tuple(patch_embedding_shape)
    if len(shape) != 5:
        raise ModelFilesError(
            f"{source}: 'patch_embedding.weight' has shape {list(shape)}, expected [dim, channels, 1, 2, 2]. "
            "This is not a Wan transformer checkpoint."
        )
    dim, in_channels = shape[0], shape[1]
    for variant in WAN_VARIANTS.values():
        if variant.in_channels == in_channels and (variant.width == dim or tiny_ok):
            return variant
    known = ", ".join(f"{v.display_name} (width {v.width}, {v.in_channels} input channels)"
                      for v in WAN_VARIANTS.values())
    hint = ""
    if dim in (1536, 5120) and in_channels in (16, 36):
        hint = " It looks like a Wan 2.1 model; Reelsmith's Wan nodes support Wan 2.2."
    raise ModelFilesError(
        f"{source}: a Wan transformer of width {dim} with {in_channels} input channels is not a supported "
        f"variant.{hint} Supported: {known}."
    )
