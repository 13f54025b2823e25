"""Wan VAE key conversion (original Wan-AI / ComfyUI naming <-> diffusers AutoencoderKLWan), both versions."""

import json

import pytest
import torch
from diffusers import AutoencoderKLWan
from reelsmith.engine.errors import CheckpointMismatchError
from reelsmith.engine.models import checkpoint_io
from reelsmith.engine.models.wan_vae_keys import (
    convert_wan_vae_diffusers_to_original,
    convert_wan_vae_original_to_diffusers,
    detect_wan_vae_version,
    original_wan_vae_shapes,
)
from reelsmith.engine.models.wan_variants import CONFIG_DIR

TINY = {
    # diffusers' own tiny test config for the 2.1 VAE
    "2.1": dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]),
    # the 2.2 structure (residual stages, 2x2 patchify, 48 latent channels) at a tiny width
    "2.2": dict(base_dim=8, decoder_base_dim=12, z_dim=48, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
                patch_size=2, scale_factor_spatial=16),
}
VIDEO_SIZE = {"2.1": 16, "2.2": 32}
VERSIONS = ["2.1", "2.2"]


def shipped_config(version: str) -> dict:
    data = json.loads((CONFIG_DIR / f"vae_{version}.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def tiny_vae(version: str, seed: int = 0) -> AutoencoderKLWan:
    torch.manual_seed(seed)
    model = AutoencoderKLWan(**TINY[version]).eval()
    with torch.no_grad():  # re-randomise (norm gains start at one) so a swapped tensor changes the output
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.3)
    return model


def shapes(state_dict: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def original_of(version: str) -> dict:
    return convert_wan_vae_diffusers_to_original(tiny_vae(version).state_dict(), version)


@pytest.mark.parametrize("version", VERSIONS)
def test_round_trip_loads_strictly_and_decodes_identically(version):
    source = tiny_vae(version, seed=1)
    original = convert_wan_vae_diffusers_to_original(source.state_dict(), version)
    assert not any(k.startswith(("quant_conv", "post_quant_conv")) or ".mid_block." in k for k in original)
    target = AutoencoderKLWan(**TINY[version]).eval()
    checkpoint_io.load_into_meta_model(target, convert_wan_vae_original_to_diffusers(original, version),
                                       "tiny", f"original Wan {version} VAE")
    size = VIDEO_SIZE[version]
    video = torch.rand(1, 3, 5, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        latent = source.encode(video).latent_dist.mean
        assert torch.equal(target.encode(video).latent_dist.mean, latent)
        assert torch.equal(target.decode(latent).sample, source.decode(latent).sample)
    assert latent.abs().max() > 0


def test_original_names_follow_the_wan_module_tree():
    original_21 = original_of("2.1")
    # 2.1: one flat Sequential per side; a decoder stage is 2 residual blocks (num_res_blocks + 1) + resample.
    for key in ("conv1.weight", "conv2.bias", "encoder.conv1.weight", "encoder.head.0.gamma", "encoder.head.2.bias",
                "encoder.middle.1.to_qkv.weight", "encoder.downsamples.0.residual.0.gamma",
                "encoder.downsamples.1.resample.1.weight", "encoder.downsamples.3.time_conv.weight",
                "decoder.upsamples.2.resample.1.weight", "decoder.upsamples.2.time_conv.weight",
                "decoder.upsamples.3.shortcut.weight", "decoder.upsamples.8.resample.1.weight",
                "decoder.middle.2.residual.6.weight", "decoder.head.0.gamma"):
        assert key in original_21, key
    assert "decoder.upsamples.8.time_conv.weight" not in original_21  # the last upsample is spatial only
    original_22 = original_of("2.2")
    for key in ("encoder.downsamples.0.downsamples.0.residual.2.weight", "encoder.downsamples.0.downsamples.1.resample.1.weight",
                "encoder.downsamples.1.downsamples.1.time_conv.weight",
                "decoder.upsamples.0.upsamples.0.residual.2.weight", "decoder.upsamples.0.upsamples.2.time_conv.weight",
                "decoder.upsamples.3.upsamples.0.shortcut.weight"):
        assert key in original_22, key
    assert not any(k.startswith("decoder.upsamples.3.upsamples.2") for k in original_22)  # no resample at the end


@pytest.mark.parametrize("version, count, facts", [
    # Key counts and shapes as in Wan2.1_VAE.pth / wan_2.1_vae.safetensors and the 2.2 files
    # (counted on ComfyUI 0.8.0's comfy/ldm/wan modules built with the arguments its comfy/sd.py uses).
    ("2.1", 194, {"encoder.conv1.weight": (96, 3, 3, 3, 3), "decoder.head.0.gamma": (96, 1, 1, 1),
                  "conv1.weight": (32, 32, 1, 1, 1), "decoder.upsamples.3.resample.1.weight": (192, 384, 3, 3),
                  "decoder.upsamples.4.residual.2.weight": (384, 192, 3, 3, 3),
                  "decoder.upsamples.4.residual.0.gamma": (192, 1, 1, 1),
                  "decoder.upsamples.4.residual.3.gamma": (384, 1, 1, 1),
                  "decoder.middle.1.to_qkv.weight": (1152, 384, 1, 1)}),
    ("2.2", 196, {"encoder.conv1.weight": (160, 12, 3, 3, 3), "conv2.weight": (48, 48, 1, 1, 1),
                  "decoder.conv1.weight": (1024, 48, 3, 3, 3), "decoder.head.2.weight": (12, 256, 3, 3, 3),
                  "decoder.upsamples.0.upsamples.3.resample.1.weight": (1024, 1024, 3, 3),
                  "decoder.upsamples.0.upsamples.3.time_conv.weight": (2048, 1024, 3, 1, 1),
                  "encoder.downsamples.1.downsamples.0.residual.0.gamma": (160, 1, 1, 1),
                  "encoder.downsamples.1.downsamples.0.residual.3.gamma": (320, 1, 1, 1),
                  "encoder.downsamples.3.downsamples.1.residual.6.weight": (640, 640, 3, 3, 3)}),
])
def test_full_size_layout_from_shipped_config(version, count, facts):
    config = shipped_config(version)
    original = original_wan_vae_shapes(config)
    assert len(original) == count
    for key, shape in facts.items():
        assert original[key] == shape, key
    assert detect_wan_vae_version(original) == version
    with torch.device("meta"):
        model = AutoencoderKLWan(**config)
    meta = {k: torch.empty(s, device="meta") for k, s in original.items()}
    assert shapes(convert_wan_vae_original_to_diffusers(meta, version)) == shapes(model.state_dict())


def test_shipped_configs():
    config_21, config_22 = shipped_config("2.1"), shipped_config("2.2")
    assert (config_21["base_dim"], config_21["z_dim"], config_21["is_residual"]) == (96, 16, False)
    assert len(config_21["latents_mean"]) == len(config_21["latents_std"]) == 16
    assert (config_22["base_dim"], config_22["decoder_base_dim"], config_22["z_dim"]) == (160, 256, 48)
    assert (config_22["in_channels"], config_22["out_channels"], config_22["patch_size"]) == (12, 12, 2)
    assert config_22["is_residual"] is True and config_22["scale_factor_spatial"] == 16
    assert len(config_22["latents_mean"]) == len(config_22["latents_std"]) == 48
    assert config_22["latents_mean"][:2] == [-0.2289, -0.0052] and config_22["latents_std"][-1] == 0.7744
    for config in (config_21, config_22):
        with torch.device("meta"):
            AutoencoderKLWan(**config)  # every key is an argument diffusers 0.42.1 accepts


@pytest.mark.parametrize("version", VERSIONS)
def test_full_size_residual_blocks_are_wired_like_wans(version):
    """Wan's ResidualBlock is Sequential(norm(in), SiLU, conv(in->out), norm(out), SiLU, Dropout, conv(out->out))
    plus a 1x1x1 shortcut conv only when in != out: every mapped block must look like that."""
    original = original_wan_vae_shapes(shipped_config(version))
    blocks = {k[: -len(".residual.0.gamma")] for k in original if k.endswith(".residual.0.gamma")}
    assert len(blocks) == 24  # encoder 4x2 + decoder 4x3 + 2 in each middle
    for block in blocks:
        out_dim, in_dim = original[f"{block}.residual.2.weight"][:2]
        assert original[f"{block}.residual.0.gamma"] == (in_dim, 1, 1, 1), block
        assert original[f"{block}.residual.3.gamma"] == (out_dim, 1, 1, 1), block
        assert original[f"{block}.residual.6.weight"] == (out_dim, out_dim, 3, 3, 3), block
        assert (f"{block}.shortcut.weight" in original) == (in_dim != out_dim), block


@pytest.mark.parametrize("version", VERSIONS)
def test_detect_version_in_both_namings(version):
    model = tiny_vae(version)
    assert detect_wan_vae_version(shapes(model.state_dict())) == version
    assert detect_wan_vae_version(shapes(original_of(version))) == version


def test_detect_rejects_what_is_not_a_wan_vae():
    with pytest.raises(CheckpointMismatchError, match="no Wan VAE keys"):
        detect_wan_vae_version({"decoder.up.0.block.0.conv1.weight": (4, 4, 3, 3)})
    bad = shapes(original_of("2.2"))
    bad["encoder.conv1.weight"] = (8, 3, 3, 3, 3)
    with pytest.raises(CheckpointMismatchError, match="encoder.conv1.weight"):
        detect_wan_vae_version(bad)


@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_key_is_named(version):
    original = original_of(version)
    original["decoder.upsamples.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError, match=r"decoder\.upsamples\.0\.extra\.weight") as error:
        convert_wan_vae_original_to_diffusers(original, version, source="my_vae.safetensors")
    assert "my_vae.safetensors" in str(error.value) and f"Wan {version} VAE" in str(error.value)


@pytest.mark.parametrize("version, other", [("2.1", "2.2"), ("2.2", "2.1")])
def test_wrong_version_is_refused(version, other):
    with pytest.raises(CheckpointMismatchError, match=f"Wan {other} VAE"):
        convert_wan_vae_original_to_diffusers(original_of(version), other)


@pytest.mark.parametrize("version", VERSIONS)
def test_missing_and_misshaped_keys_are_named_on_load(version):
    original = original_of(version)
    missing_key = next(k for k in original if "residual.6.weight" in k)
    incomplete = {k: v for k, v in original.items() if k != missing_key}
    converted = convert_wan_vae_original_to_diffusers(incomplete, version)
    (missing_name,) = set(convert_wan_vae_original_to_diffusers(original, version)) - set(converted)
    with pytest.raises(CheckpointMismatchError, match=f"missing key '{missing_name}'"):
        checkpoint_io.load_into_meta_model(AutoencoderKLWan(**TINY[version]), converted, "my_vae", "Wan VAE")

    wrong = dict(original, **{"conv2.weight": torch.zeros(3, 3, 1, 1, 1)})
    with pytest.raises(CheckpointMismatchError, match=r"'post_quant_conv\.weight' has shape \[3, 3, 1, 1, 1\]"):
        checkpoint_io.load_into_meta_model(AutoencoderKLWan(**TINY[version]),
                                           convert_wan_vae_original_to_diffusers(wrong, version), "my_vae", "Wan VAE")


def test_gap_in_the_21_decoder_sequence_is_named():
    original = original_of("2.1")
    gap = {k: v for k, v in original.items() if not k.startswith("decoder.upsamples.2.")}
    with pytest.raises(CheckpointMismatchError, match=r"decoder\.upsamples\.2"):
        convert_wan_vae_original_to_diffusers(gap, "2.1")


def test_unknown_diffusers_key_is_named_in_reverse():
    state_dict = dict(tiny_vae("2.2").state_dict(), **{"decoder.up_blocks.0.extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointMismatchError, match=r"decoder\.up_blocks\.0\.extra\.weight"):
        convert_wan_vae_diffusers_to_original(state_dict, "2.2")
    with pytest.raises(ValueError, match="unknown Wan VAE version"):
        convert_wan_vae_diffusers_to_original({}, "2.5")
