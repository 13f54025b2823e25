"""End-to-end tier: ComfyUI's native Wan VAE (2.1, 2.2) and UMT5 against the diffusers/transformers models
Reelsmith loads, with weights moved over by Reelsmith's key conversion.

Tiny native modules get random weights; their state dicts (original / ComfyUI naming) go through
`convert_wan_vae_original_to_diffusers` / `convert_umt5_comfyui_to_transformers` into the diffusers and
transformers models, and the outputs must agree in fp32. At full size, the native modules' key sets and
shapes (built on the meta device) must map exactly onto the models built from the shipped configs.

Run: COMFYUI_DIR=/path/to/ComfyUI python -m pytest tests/e2e/test_native_parity_vae_t5.py
"""

import json
import os
import pathlib
import sys

import pytest
import torch

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
if not COMFYUI_DIR or not (pathlib.Path(COMFYUI_DIR) / "comfy").is_dir():
    pytest.skip(
        "end-to-end tier skipped: set COMFYUI_DIR to a ComfyUI checkout to compare against ComfyUI's native "
        "Wan VAE and UMT5", allow_module_level=True,
    )

sys.path.insert(0, COMFYUI_DIR)
import comfy.cli_args

comfy.cli_args.args.cpu = True  # before anything imports comfy.model_management

import comfy.latent_formats
import comfy.ldm.wan.vae as native_vae_21
import comfy.ldm.wan.vae2_2 as native_vae_22
import comfy.ops
import comfy.text_encoders.t5 as native_t5
from diffusers import AutoencoderKLWan
from reelsmith.engine.models import checkpoint_io
from reelsmith.engine.models.umt5_keys import convert_umt5_comfyui_to_transformers
from reelsmith.engine.models.wan_vae_keys import (
    convert_wan_vae_original_to_diffusers,
    detect_wan_vae_version,
)
from reelsmith.engine.models.wan_variants import CONFIG_DIR
from transformers import UMT5Config, UMT5EncoderModel

# The VAE arguments ComfyUI 0.8.0's comfy/sd.py uses for real files (dim 96 is read off decoder.head.0.gamma).
NATIVE_FULL = {
    "2.1": lambda: native_vae_21.WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                        temperal_downsample=[False, True, True], image_channels=3, dropout=0.0),
    "2.2": lambda: native_vae_22.WanVAE(dim=160, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                        temperal_downsample=[False, True, True], dropout=0.0),
}
# Tiny twins: same structure, a few channels; two residual blocks per stage so position mapping is exercised.
NATIVE_TINY = {
    "2.1": lambda: native_vae_21.WanVAE(dim=4, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=2,
                                        temperal_downsample=[False, True, True]),
    "2.2": lambda: native_vae_22.WanVAE(dim=8, dec_dim=12, z_dim=48, dim_mult=[1, 2, 2, 2], num_res_blocks=2,
                                        temperal_downsample=[False, True, True]),
}
DIFFUSERS_TINY = {
    "2.1": dict(base_dim=4, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=2, temperal_downsample=[False, True, True]),
    "2.2": dict(base_dim=8, decoder_base_dim=12, z_dim=48, dim_mult=[1, 2, 2, 2], num_res_blocks=2,
                temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
                patch_size=2, scale_factor_spatial=16),
}
VIDEO_SIZE = {"2.1": 16, "2.2": 32}  # one 2x2 latent per frame at the VAE's spatial stride


def _shipped(name: str) -> dict:
    return {k: v for k, v in json.loads((CONFIG_DIR / name).read_text()).items() if not k.startswith("_")}


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random (ComfyUI's ops leave weights uninitialised), scaled by fan-in."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if name.endswith("gamma") or "layer_norm" in name:
                parameter.copy_(1.0 + 0.1 * noise)
            elif parameter.ndim >= 2 and "relative_attention_bias" not in name and "shared" not in name:
                parameter.copy_(noise / parameter[0].numel() ** 0.5)
            else:
                parameter.copy_(noise * 0.5 if parameter.ndim >= 2 else noise * 0.1)


def _shapes(state_dict: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_full_size_native_vae_keys_map_exactly(version):
    with torch.device("meta"):
        native = NATIVE_FULL[version]()
        model = AutoencoderKLWan(**_shipped(f"vae_{version}.json"))
    native_shapes = _shapes(native.state_dict())
    assert len(native_shapes) == {"2.1": 194, "2.2": 196}[version]
    assert detect_wan_vae_version(native_shapes) == version
    converted = convert_wan_vae_original_to_diffusers(native.state_dict(), version)
    assert _shapes(converted) == _shapes(model.state_dict())


@pytest.mark.parametrize("version, latent_format", [("2.1", "Wan21"), ("2.2", "Wan22")])
def test_shipped_vae_latent_statistics_match_comfyui(version, latent_format):
    native = getattr(comfy.latent_formats, latent_format)()
    config = _shipped(f"vae_{version}.json")
    assert config["z_dim"] == native.latent_channels
    assert torch.allclose(torch.tensor(config["latents_mean"]), native.latents_mean.flatten())
    assert torch.allclose(torch.tensor(config["latents_std"]), native.latents_std.flatten())


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_native_vae_parity(version):
    native = NATIVE_TINY[version]().eval()
    _randomize(native, seed=1)
    with torch.no_grad():  # small output head, so decoded values sit inside diffusers' clamp to [-1, 1]
        native.decoder.head[2].weight.mul_(0.2)
    model = AutoencoderKLWan(**DIFFUSERS_TINY[version]).eval()
    converted = convert_wan_vae_original_to_diffusers(native.state_dict(), version)
    checkpoint_io.load_into_meta_model(model, converted, "native tiny VAE", f"Wan {version} VAE")

    size = VIDEO_SIZE[version]
    video = torch.rand(1, 3, 9, size, size, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        native_latent = native.encode(video)
        latent = model.encode(video).latent_dist.mean
        native_video = native.decode(native_latent)
        decoded = model.decode(native_latent).sample
    assert latent.shape == native_latent.shape == (1, model.config.z_dim, 3, 2, 2)
    assert native_latent.abs().max() > 0.1  # the comparison is not trivially between zeros
    torch.testing.assert_close(latent, native_latent, rtol=1e-5, atol=1e-5)
    assert decoded.shape == native_video.shape == video.shape
    assert (native_video.abs() < 0.99).float().mean() > 0.9  # the clamp does not hide differences
    torch.testing.assert_close(decoded, native_video.clamp(-1, 1), rtol=1e-5, atol=1e-5)


UMT5_TINY = dict(d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=3, vocab_size=256)


def test_full_size_native_umt5_keys_map_exactly():
    native_config = json.loads((pathlib.Path(COMFYUI_DIR) / "comfy/text_encoders/umt5_config_xxl.json").read_text())
    shipped = UMT5Config(**_shipped("umt5_xxl_encoder.json"))
    for field in ("d_model", "d_kv", "d_ff", "num_heads", "num_layers", "vocab_size", "is_gated_act",
                  "layer_norm_epsilon", "relative_attention_num_buckets"):
        assert getattr(shipped, field) == native_config[field], field
    # ComfyUI runs GELU as gelu_pytorch_tanh; transformers' gelu_new is the same tanh approximation.
    assert (shipped.dense_act_fn, native_config["dense_act_fn"]) == ("gelu_new", "gelu_pytorch_tanh")
    native = native_t5.T5(native_config, torch.bfloat16, "meta", comfy.ops.disable_weight_init)
    with torch.device("meta"):
        model = UMT5EncoderModel(shipped)
    assert len(native.state_dict()) == 242
    converted = convert_umt5_comfyui_to_transformers(native.state_dict())
    assert _shapes(converted) == _shapes(model.state_dict())


def test_native_umt5_parity():
    native_config = dict(UMT5_TINY, dense_act_fn="gelu_pytorch_tanh", is_gated_act=True, model_type="umt5")
    native = native_t5.T5(native_config, torch.float32, "cpu", comfy.ops.manual_cast).eval()
    _randomize(native, seed=3)
    # ComfyUI hard-codes 32 buckets and a max distance of 128, as the real UMT5 uses.
    config = UMT5Config(**UMT5_TINY, feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                        relative_attention_max_distance=128)
    model = UMT5EncoderModel(config).eval()
    converted = convert_umt5_comfyui_to_transformers(native.state_dict(), dtype=torch.float32)
    checkpoint_io.load_into_meta_model(model, converted, "native tiny UMT5", "UMT5 encoder")

    length = 160  # longer than 128, so the logarithmic and the clipped position buckets are used
    ids = torch.randint(0, 256, (2, length), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, 100:] = 0  # a padded prompt
    with torch.no_grad():
        native_out, _ = native(ids, attention_mask=mask)
        out = model(ids, attention_mask=mask).last_hidden_state
    assert native_out.abs().max() > 0.1
    valid = mask.bool()
    torch.testing.assert_close(out[valid], native_out[valid], rtol=1e-4, atol=1e-5)
