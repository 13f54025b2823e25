"""End-to-end tier: LTX-Video through Reelsmith's key conversion (diffusers' models) against ComfyUI's native
LTXV modules (comfy/ldm/lightricks) — same tiny random weights, same inputs, same numbers; and the VAE and
upscaler key maps against ComfyUI's modules built at full size on the meta device.

Run: COMFYUI_DIR=/path/to/ComfyUI python -m pytest tests/e2e/test_native_parity_ltx.py
"""

import os
import pathlib
import sys

import pytest
import torch

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
if not COMFYUI_DIR or not (pathlib.Path(COMFYUI_DIR) / "comfy").is_dir():
    pytest.skip("end-to-end tier skipped: set COMFYUI_DIR to a ComfyUI checkout to compare against ComfyUI's "
                "native LTXV model", allow_module_level=True)

sys.path.insert(0, COMFYUI_DIR)
import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True  # before anything imports comfy.model_management

import comfy.ldm.lightricks.model as native_ltx  # noqa: E402
import comfy.ops  # noqa: E402
from comfy.ldm.lightricks.latent_upsampler import LatentUpsampler  # noqa: E402
from comfy.ldm.lightricks.vae.causal_video_autoencoder import VideoVAE  # noqa: E402
from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel  # noqa: E402
from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel  # noqa: E402

from reelsmith.engine.models import checkpoint_io, ltx_keys  # noqa: E402
from reelsmith.engine.models.ltx_variants import ltx_config  # noqa: E402
from reelsmith.engine.pipelines.ltx_inputs import (  # noqa: E402
    ltx_timestep,
    ltx_video_coords,
    pack_latents,
    unpack_latents,
)

TINY = dict(in_channels=8, out_channels=8, num_attention_heads=4, attention_head_dim=8, cross_attention_dim=32,
            num_layers=2, caption_channels=32)


def _tiny_pair(seed: int):
    """A tiny diffusers transformer with every tensor random, its original-named state dict, the native twin
    loaded strictly from that, and a diffusers model loaded back from the original names."""
    torch.manual_seed(seed)
    reference = LTXVideoTransformer3DModel(**TINY)
    with torch.no_grad():
        for parameter in reference.parameters():  # norms start at one: randomise everything
            parameter.copy_(torch.randn_like(parameter) * 0.3)
    original = {ltx_keys.diffusers_transformer_key_to_original(k): v.clone()
                for k, v in reference.state_dict().items()}
    assert None not in original
    native = native_ltx.LTXVModel(
        in_channels=TINY["in_channels"], cross_attention_dim=TINY["cross_attention_dim"],
        attention_head_dim=TINY["attention_head_dim"], num_attention_heads=TINY["num_attention_heads"],
        caption_channels=TINY["caption_channels"], num_layers=TINY["num_layers"],
        operations=comfy.ops.disable_weight_init,
    )
    native.load_state_dict(original, strict=True)
    prefixed = {"model.diffusion_model." + k: v for k, v in original.items()}
    with checkpoint_io.empty_weights():
        ours = LTXVideoTransformer3DModel(**TINY)
    checkpoint_io.load_into_meta_model(ours, ltx_keys.convert_transformer_state_dict(prefixed, "tiny.safetensors"),
                                       "tiny.safetensors", "original LTX-Video")
    return ours.eval(), native.eval()


@pytest.mark.parametrize("causal", [False, True], ids=["plain-positions", "causal-positions"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_transformer_matches_comfyui_native(dtype, causal):
    ours, native = _tiny_pair(seed=3)
    native.causal_temporal_positioning = causal
    generator = torch.Generator().manual_seed(0)
    frames, height, width, frame_rate = 3, 4, 6, 24.0
    latents = torch.randn(2, TINY["in_channels"], frames, height, width, generator=generator)
    context = torch.randn(2, 12, TINY["caption_channels"], generator=generator)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 7:] = 0  # second prompt padded
    sigma = torch.tensor([0.8, 0.35])
    with torch.no_grad():
        theirs = native(latents, sigma, context, mask, frame_rate=frame_rate)
        ours = ours.to(dtype)
        mine = ours(hidden_states=pack_latents(latents).to(dtype), encoder_hidden_states=context.to(dtype),
                    timestep=ltx_timestep(sigma), encoder_attention_mask=mask,
                    video_coords=ltx_video_coords(2, frames, height, width, frame_rate, causal),
                    return_dict=False)[0]
    mine = unpack_latents(mine.float(), frames, height, width)
    assert mine.shape == theirs.shape == latents.shape
    error = ((mine - theirs).norm() / theirs.norm()).item()
    cosine = torch.nn.functional.cosine_similarity(mine.flatten(), theirs.flatten(), dim=0).item()
    print(f"LTX {dtype} causal={causal}: relative error {error:.2e}, max abs {(mine - theirs).abs().max():.2e}, "
          f"cosine {cosine:.6f}")
    assert error < (1e-5 if dtype == torch.float32 else 2e-2)
    assert cosine > (0.999999 if dtype == torch.float32 else 0.999)
    if dtype == torch.float32:  # the comparison discriminates: the other position form is measurably off
        with torch.no_grad():
            other = ours(hidden_states=pack_latents(latents), encoder_hidden_states=context,
                         timestep=ltx_timestep(sigma), encoder_attention_mask=mask,
                         video_coords=ltx_video_coords(2, frames, height, width, frame_rate, not causal),
                         return_dict=False)[0]
        other = unpack_latents(other, frames, height, width)
        assert ((other - theirs).norm() / theirs.norm()).item() > 1e-3


@pytest.mark.parametrize("comfy_version,version", [(0, "0.9.0"), (1, "0.9.1"), (2, "0.9.5")])
def test_vae_key_map_matches_comfyui_vae(comfy_version, version):
    """ComfyUI's VideoVAE (its built-in configs of the three generations) at full size: every original key
    converts onto diffusers' AutoencoderKLLTXVideo built from the shipped config, names and shapes."""
    with torch.device("meta"):
        native = VideoVAE(version=comfy_version)
        ours = AutoencoderKLLTXVideo(**ltx_config(f"vae_{version}.json"))
    original = {k: tuple(v.shape) for k, v in native.state_dict().items()}
    assert ltx_keys.detect_vae_version(original) == version
    assert ltx_keys.detect_vae_version({"vae." + k: s for k, s in original.items()}) == version
    converted = {ltx_keys.original_vae_key_to_diffusers(k, version): s for k, s in original.items()
                 if k not in ltx_keys.VAE_UNUSED_ORIGINAL_KEYS}
    assert None not in converted
    assert converted == {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    back = {ltx_keys.diffusers_vae_key_to_original(k, version) for k in ours.state_dict()}
    assert back == set(original) - set(ltx_keys.VAE_UNUSED_ORIGINAL_KEYS)


def test_upscaler_key_map_matches_comfyui_upsampler():
    config = ltx_config("spatial_upscaler.json")
    with torch.device("meta"):
        native = LatentUpsampler.from_config(config)
        ours = LTXLatentUpsamplerModel(**config)
    original = {k: tuple(v.shape) for k, v in native.state_dict().items()}
    converted = {ltx_keys.original_upscaler_key_to_diffusers(k): s for k, s in original.items()}
    assert converted == {k: tuple(v.shape) for k, v in ours.state_dict().items()}


def test_upscaler_matches_comfyui_native():
    config = dict(ltx_config("spatial_upscaler.json"), in_channels=8, mid_channels=32, num_blocks_per_stage=1)
    torch.manual_seed(0)
    ours = LTXLatentUpsamplerModel(**config).eval()
    native = LatentUpsampler.from_config(config).eval()
    native.load_state_dict({ltx_keys.diffusers_upscaler_key_to_original(k): v for k, v in ours.state_dict().items()},
                           strict=True)
    latents = torch.randn(1, 8, 2, 4, 6)
    with torch.no_grad():
        torch.testing.assert_close(ours(latents), native(latents), rtol=1e-5, atol=1e-5)



def _res(n, **extra):
    return ["res_x", dict(num_layers=n, **extra)]


# Tiny block lists of the three generations (ComfyUI's Encoder/Decoder take them as the vendor configs do),
# matching the tiny diffusers configs of tests/test_ltx_keys.py (TINY_VAE): base width 8 (decoders 4 where
# the residual upsamplers halve the width three times).
_ENCODER_090 = [_res(1), ["compress_all", {}], ["res_x_y", 1], _res(1), ["compress_all", {}], ["res_x_y", 1],
                _res(1), ["compress_all", {}], _res(1), _res(1)]
_DECODER_091 = [_res(1, inject_noise=True), ["compress_all", {"residual": True, "multiplier": 2}],
                _res(1, inject_noise=True), ["compress_all", {"residual": True, "multiplier": 2}],
                _res(1, inject_noise=True), ["compress_all", {"residual": True, "multiplier": 2}],
                _res(1, inject_noise=False)]
NATIVE_TINY_VAE = {
    "0.9.0": (_ENCODER_090, 8, _ENCODER_090, 8, False),
    "0.9.1": (_ENCODER_090, 8, _DECODER_091, 4, True),
    "0.9.5": ([_res(1), ["compress_space_res", {"multiplier": 2}], _res(1), ["compress_time_res", {"multiplier": 2}],
               _res(1), ["compress_all_res", {"multiplier": 2}], _res(1), ["compress_all_res", {"multiplier": 2}],
               _res(1)], 8,
              [[name, dict(params, inject_noise=False) if name == "res_x" else params]
               for name, params in _DECODER_091],
              4, True),
}


@pytest.mark.parametrize("version", sorted(NATIVE_TINY_VAE))
def test_vae_matches_comfyui_native(version):
    """diffusers' AutoencoderKLLTXVideo loaded through the key map encodes and decodes like ComfyUI's LTXV VAE
    modules (zero spatial padding, noise injection scaled to zero so both sides are deterministic)."""
    from comfy.ldm.lightricks.vae.causal_video_autoencoder import Decoder, Encoder
    from test_ltx_keys import _tiny_vae  # tests/ is on sys.path (pack_paths is imported the same way)

    torch.manual_seed(3)
    ours = _tiny_vae(version).eval()
    with torch.no_grad():
        for name, parameter in ours.named_parameters():
            if "per_channel_scale" in name:
                parameter.zero_()
            elif name.endswith("timestep_scale_multiplier"):
                parameter.fill_(1000.0)
            else:
                scale = parameter[0].numel() ** 0.5 if parameter.ndim > 1 else 10.0
                parameter.copy_(torch.randn_like(parameter) / scale)
    original = {ltx_keys.diffusers_vae_key_to_original(k, version): v for k, v in ours.state_dict().items()}
    encoder_blocks, encoder_base, decoder_blocks, decoder_base, timestep_conditioning = NATIVE_TINY_VAE[version]
    common = dict(dims=3, patch_size=4, norm_layer="pixel_norm", spatial_padding_mode="zeros")
    encoder = Encoder(in_channels=3, out_channels=8, blocks=encoder_blocks, base_channels=encoder_base,
                      latent_log_var="uniform", **common)
    decoder = Decoder(in_channels=8, out_channels=3, blocks=decoder_blocks, base_channels=decoder_base,
                      causal=False, timestep_conditioning=timestep_conditioning, **common)
    for side, module in (("encoder.", encoder), ("decoder.", decoder)):
        module.load_state_dict({k[len(side):]: v for k, v in original.items() if k.startswith(side)}, strict=True)
        module.eval()
    video = torch.rand(1, 3, 9, 64, 64) * 2 - 1
    latents = torch.randn(1, 8, 2, 2, 3)
    timestep = torch.tensor([0.05])
    with torch.no_grad():
        torch.testing.assert_close(ours.encoder(video), encoder(video), rtol=1e-5, atol=1e-5)
        mine = ours.decoder(latents, timestep if timestep_conditioning else None)
        theirs = decoder(latents, timestep=timestep) if timestep_conditioning else decoder(latents)
    assert mine.shape == theirs.shape == (1, 3, 9, 64, 96)
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding", ["zeros", "replicate"])
def test_demo_checkpoint_decodes_like_comfyui(tmp_path, padding):
    """The demo's vendor checkpoint goes through ComfyUI's own CheckpointLoaderSimple path (VAE built from the
    file's `vae` metadata, statistics un-normalised by its per_channel_statistics) and through Reelsmith's
    loader; the timestep-conditioned decoder gives the same frames for the same normalized LATENT, with the
    file's spatial padding mode honoured on both sides. (ComfyUI's VAE.decode also mixes in unseeded noise:
    its decoder is called here without it, and our decode with noise scale 0.)"""
    import comfy.sd
    import comfy.utils

    from reelsmith.engine.demo_ltx import LATENT_CHANNELS, TinyLTXSet
    from reelsmith.engine.models.ltx_model import load_ltx_vae
    from reelsmith.engine.pipelines.ltx_sampler import decode_ltx_latents

    path = TinyLTXSet(seed=5).write_vendor_file(tmp_path / "ltxv-demo.safetensors", distilled=True,
                                                spatial_padding_mode=padding)
    state_dict, metadata = comfy.utils.load_torch_file(str(path), return_metadata=True)
    native = comfy.sd.load_state_dict_guess_config(state_dict, output_vae=True, output_clip=False,
                                                   metadata=metadata)[2].first_stage_model
    ours, _ = load_ltx_vae(path, "vendor single file")
    latents = torch.randn(1, LATENT_CHANNELS, 2, 3, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mine = decode_ltx_latents(ours, latents, torch.device("cpu"), decode_timestep=0.05, decode_noise_scale=0.0)
        theirs = native.decoder(native.per_channel_statistics.un_normalize(latents), timestep=torch.tensor([0.05]))
    theirs = ((theirs[0].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0)
    assert mine.shape == theirs.shape == (9, 96, 128, 3)
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)
