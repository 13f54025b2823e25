"""LTX-Video key maps: the full original transformer key lists convert exactly onto diffusers' model built from
the shipped configs; VAE and upscaler maps round-trip tiny models exactly; variants come from shapes; the
input preparation of engine/pipelines/ltx_inputs.py is consistent with diffusers' own.
(Against ComfyUI's native modules: tests/e2e/test_native_parity_ltx.py.)"""

import json

import pytest
import torch
from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel
from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel
from transformers import T5Config, T5EncoderModel

from pack_paths import SHARED_REFERENCE
from reelsmith.engine.errors import CheckpointMismatchError, ModelFilesError
from reelsmith.engine.models import checkpoint_io, ltx_keys
from reelsmith.engine.models.ltx_variants import (
    LTX_VARIANTS,
    TEXT_ENCODER_CONFIG,
    UPSCALER_CONFIG,
    VAE_CONFIGS,
    detect_ltx_variant,
    ltx_checkpoint_facts,
    ltx_config,
)
from reelsmith.engine.pipelines.ltx_inputs import ltx_timestep, ltx_video_coords, pack_latents, unpack_latents

REFERENCE = json.loads((SHARED_REFERENCE / "ltxv_original_keys.json").read_text())["variants"]
VARIANT_OF_REFERENCE = {"ltxv_2b_0.9.x": "2b", "ltxv_13b_0.9.x": "13b"}


# ------------------------------------------------------------------ transformer

@pytest.mark.parametrize("reference_name", sorted(VARIANT_OF_REFERENCE))
def test_full_key_list_converts_onto_meta_model(reference_name):
    variant = LTX_VARIANTS[VARIANT_OF_REFERENCE[reference_name]]
    original = REFERENCE[reference_name]["keys"]
    with torch.device("meta"):
        model = LTXVideoTransformer3DModel(**variant.transformer_config_dict())
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    for prefix in ("", "model.diffusion_model."):
        converted = {ltx_keys.original_transformer_key_to_diffusers(prefix + k): s for k, s in original.items()}
        assert None not in converted
        assert converted == expected
    params = int(REFERENCE[reference_name]["params"])
    assert sum(torch.Size(s).numel() for s in original.values()) == params
    assert sum(p.numel() for p in model.parameters()) == params
    back = {ltx_keys.diffusers_transformer_key_to_original(k) for k in expected}
    assert back == set(original)
    dims = REFERENCE[reference_name]["dims"]
    config = variant.transformer_config_dict()
    assert {k: config[k] for k in dims} == dims


@pytest.mark.parametrize("reference_name", sorted(VARIANT_OF_REFERENCE))
def test_variant_detected_from_weights(reference_name):
    shapes = REFERENCE[reference_name]["keys"]
    name = VARIANT_OF_REFERENCE[reference_name]
    assert detect_ltx_variant(shapes, "file").name == name
    assert detect_ltx_variant({"model.diffusion_model." + k: s for k, s in shapes.items()}, "file").name == name
    diffusers_names = {ltx_keys.original_transformer_key_to_diffusers(k): s for k, s in shapes.items()}
    assert detect_ltx_variant(diffusers_names, "file").name == name


def test_truncated_or_foreign_transformers_are_refused():
    shapes = REFERENCE["ltxv_13b_0.9.x"]["keys"]
    truncated = {k: s for k, s in shapes.items() if not k.startswith("transformer_blocks.47.")}
    with pytest.raises(ModelFilesError, match="47 blocks"):
        detect_ltx_variant(truncated, "ltxv-13b.safetensors")
    with pytest.raises(ModelFilesError, match="not an LTX-Video"):
        detect_ltx_variant({"patch_embedding.weight": [5120, 16, 1, 2, 2]}, "wan.safetensors")
    with pytest.raises(ModelFilesError, match=r"\[2048, 96\]"):
        detect_ltx_variant({**REFERENCE["ltxv_2b_0.9.x"]["keys"], "patchify_proj.weight": [2048, 96]}, "x")


def test_transformer_renames_and_unknown_keys():
    to_diffusers = ltx_keys.original_transformer_key_to_diffusers
    assert to_diffusers("model.diffusion_model.patchify_proj.weight") == "proj_in.weight"
    assert to_diffusers("adaln_single.emb.timestep_embedder.linear_2.bias") == \
        "time_embed.emb.timestep_embedder.linear_2.bias"
    assert to_diffusers("transformer_blocks.5.attn2.k_norm.weight") == "transformer_blocks.5.attn2.norm_k.weight"
    assert to_diffusers("transformer_blocks.5.scale_shift_table") == "transformer_blocks.5.scale_shift_table"
    for foreign in ("audio_adaln_single.linear.weight", "transformer_blocks.0.attn3.to_q.weight",
                    "transformer_blocks.0.attn1.q_norm.bias", "adaln_single.linear.scale_weight", "vae.encoder.x"):
        assert to_diffusers(foreign) is None, foreign
    with pytest.raises(CheckpointMismatchError, match="'model.diffusion_model.audio_adaln_single.linear.weight'"):
        ltx_keys.convert_transformer_state_dict(
            {"model.diffusion_model.proj_out.bias": torch.zeros(1),
             "model.diffusion_model.audio_adaln_single.linear.weight": torch.zeros(1)}, "ltx-2.safetensors")


TINY_TRANSFORMER = dict(in_channels=8, out_channels=8, num_attention_heads=4, attention_head_dim=8,
                        cross_attention_dim=32, num_layers=1, caption_channels=32)


def test_tiny_transformer_round_trip_and_strict_load():
    torch.manual_seed(0)
    reference = LTXVideoTransformer3DModel(**TINY_TRANSFORMER).eval()
    original = {"model.diffusion_model." + ltx_keys.diffusers_transformer_key_to_original(k): v
                for k, v in reference.state_dict().items()}
    converted = ltx_keys.convert_transformer_state_dict(original, "tiny.safetensors")
    with checkpoint_io.empty_weights():
        model = LTXVideoTransformer3DModel(**TINY_TRANSFORMER)
    checkpoint_io.load_into_meta_model(model, converted, "tiny.safetensors", "original LTX-Video")
    tokens = torch.randn(1, 2 * 3 * 4, 8)
    inputs = dict(hidden_states=tokens, encoder_hidden_states=torch.randn(1, 5, 32), timestep=ltx_timestep([0.7]),
                  encoder_attention_mask=torch.ones(1, 5), video_coords=ltx_video_coords(1, 2, 3, 4, 25.0, True),
                  return_dict=False)
    with torch.no_grad():
        assert torch.equal(model.eval()(**inputs)[0], reference(**inputs)[0])
    # a wrong shape is named
    bad = dict(converted, **{"proj_out.weight": torch.zeros(8, 16)})
    with checkpoint_io.empty_weights():
        model = LTXVideoTransformer3DModel(**TINY_TRANSFORMER)
    with pytest.raises(CheckpointMismatchError, match="'proj_out.weight' has shape"):
        checkpoint_io.load_into_meta_model(model, bad, "tiny.safetensors", "original LTX-Video")


# ------------------------------------------------------------------ VAE

# The three VAE generations' structures at a tiny width (same block types, resamplers and conditioning).
TINY_VAE = {
    "0.9.0": dict(latent_channels=8, block_out_channels=(8, 16, 32, 32), decoder_block_out_channels=(8, 16, 32, 32),
                  layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1)),
    "0.9.1": dict(latent_channels=8, block_out_channels=(8, 16, 32, 32), decoder_block_out_channels=(8, 16, 32),
                  layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
                  decoder_spatio_temporal_scaling=(True, True, True), decoder_inject_noise=(True, True, True, False),
                  upsample_residual=(True, True, True), upsample_factor=(2, 2, 2), timestep_conditioning=True),
    "0.9.5": dict(latent_channels=8, block_out_channels=(8, 16, 32, 64, 128),
                  down_block_types=("LTXVideo095DownBlock3D",) * 4, layers_per_block=(1, 1, 1, 1, 1),
                  spatio_temporal_scaling=(True, True, True, True),
                  downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
                  decoder_block_out_channels=(8, 16, 32), decoder_layers_per_block=(1, 1, 1, 1),
                  decoder_spatio_temporal_scaling=(True, True, True), decoder_inject_noise=(False,) * 4,
                  upsample_residual=(True, True, True), upsample_factor=(2, 2, 2), timestep_conditioning=True),
}


def _tiny_vae(version: str) -> AutoencoderKLLTXVideo:
    config = dict(ltx_config(VAE_CONFIGS[version]), **TINY_VAE[version])
    config.pop("spatial_compression_ratio"), config.pop("temporal_compression_ratio")
    return AutoencoderKLLTXVideo(**config)


@pytest.mark.parametrize("version", sorted(VAE_CONFIGS))
def test_vae_round_trip_through_original_names(version):
    torch.manual_seed(1)
    reference = _tiny_vae(version).eval()
    with torch.no_grad():
        for name, buffer in reference.named_buffers():
            if name in ("latents_mean", "latents_std"):
                buffer.copy_(torch.rand_like(buffer) + 0.5)
    original = {"vae." + ltx_keys.diffusers_vae_key_to_original(k, version): v
                for k, v in reference.state_dict().items()}
    original["vae.per_channel_statistics.channel"] = torch.arange(8.0)  # stored by the vendor, unused
    converted, detected = ltx_keys.convert_vae_state_dict(original, "tiny-vae.safetensors")
    assert detected == version
    with checkpoint_io.empty_weights():
        model = _tiny_vae(version)
    checkpoint_io.load_into_meta_model(model, converted, "tiny-vae.safetensors", f"original LTX-Video {version} VAE")
    model.eval()
    video = torch.rand(1, 3, 9, 64, 64) * 2 - 1
    with torch.no_grad():
        latents = model.encode(video).latent_dist.mode()
        assert torch.equal(latents, reference.encode(video).latent_dist.mode())
        temb = torch.tensor([0.05]) if reference.config.timestep_conditioning else None
        torch.manual_seed(7)
        mine = model.decode(latents, temb=temb).sample
        torch.manual_seed(7)
        theirs = reference.decode(latents, temb=temb).sample
    assert torch.equal(mine, theirs)
    assert torch.equal(model.latents_std, reference.latents_std)


def test_full_size_vae_configs_build_and_version_detection():
    for version, file_name in VAE_CONFIGS.items():
        with torch.device("meta"):
            model = AutoencoderKLLTXVideo(**ltx_config(file_name))
        original = {ltx_keys.diffusers_vae_key_to_original(k, version): tuple(v.shape)
                    for k, v in model.state_dict().items()}
        assert None not in original
        assert ltx_keys.detect_vae_version(original) == version
        assert model.spatial_compression_ratio == 32 and model.temporal_compression_ratio == 8


def test_vae_unknown_keys_and_wrong_shapes_are_named():
    reference = _tiny_vae("0.9.5")
    original = {ltx_keys.diffusers_vae_key_to_original(k, "0.9.5"): v for k, v in reference.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match="'decoder.up_blocks.9.res_blocks.0.conv1.conv.weight'"):
        ltx_keys.convert_vae_state_dict(dict(original, **{"decoder.up_blocks.9.res_blocks.0.conv1.conv.weight":
                                                          torch.zeros(1)}), "vae.safetensors")
    with pytest.raises(CheckpointMismatchError, match="'encoder.down_blocks.0.res_blocks.0.attn.weight'"):
        ltx_keys.convert_vae_state_dict(dict(original, **{"encoder.down_blocks.0.res_blocks.0.attn.weight":
                                                          torch.zeros(1)}), "vae.safetensors")
    converted, _ = ltx_keys.convert_vae_state_dict(original, "vae.safetensors")
    converted["decoder.conv_out.conv.weight"] = torch.zeros(3, 3, 3, 3, 3)
    with checkpoint_io.empty_weights():
        model = _tiny_vae("0.9.5")
    with pytest.raises(CheckpointMismatchError, match="'decoder.conv_out.conv.weight' has shape"):
        checkpoint_io.load_into_meta_model(model, converted, "vae.safetensors", "original LTX-Video VAE")
    with pytest.raises(CheckpointMismatchError, match="no LTX-Video VAE keys"):
        ltx_keys.detect_vae_version({"decoder.middle.0.residual.0.gamma": (4,)})


# ------------------------------------------------------------------ spatial upscaler, text encoder

def test_upscaler_round_trip_and_refusals():
    config = dict(ltx_config(UPSCALER_CONFIG), in_channels=8, mid_channels=32, num_blocks_per_stage=2)
    torch.manual_seed(2)
    reference = LTXLatentUpsamplerModel(**config).eval()
    original = {ltx_keys.diffusers_upscaler_key_to_original(k): v for k, v in reference.state_dict().items()}
    converted = ltx_keys.convert_upscaler_state_dict(original, "upscaler.safetensors")
    with checkpoint_io.empty_weights():
        model = LTXLatentUpsamplerModel(**config)
    checkpoint_io.load_into_meta_model(model, converted, "upscaler.safetensors", "LTX-Video spatial upscaler")
    latents = torch.randn(1, 8, 2, 4, 6)
    with torch.no_grad():
        out = model.eval()(latents)
        assert torch.equal(out, reference(latents))
    assert out.shape == (1, 8, 2, 8, 12)
    with pytest.raises(CheckpointMismatchError, match="'upsampler.conv.weight'"):
        ltx_keys.convert_upscaler_state_dict(dict(original, **{"upsampler.conv.weight": torch.zeros(1)}), "x")
    with checkpoint_io.empty_weights():
        model = LTXLatentUpsamplerModel(**config)
    with pytest.raises(CheckpointMismatchError, match="'final_conv.weight' has shape"):
        checkpoint_io.load_into_meta_model(model, dict(converted, **{"final_conv.weight": torch.zeros(8, 32, 3, 3)}),
                                           "x", "LTX-Video spatial upscaler")


def test_full_size_upscaler_and_text_encoder_configs():
    with torch.device("meta"):
        upscaler = LTXLatentUpsamplerModel(**ltx_config(UPSCALER_CONFIG))
        assert upscaler.state_dict()["upsampler.0.weight"].shape == (2048, 512, 3, 3)  # spatial x2 (Conv2d)
        encoder = T5EncoderModel(T5Config(**ltx_config(TEXT_ENCODER_CONFIG)))
    # PixArt-alpha's t5-v1_1-xxl encoder: 24 blocks of width 4096, gated GELU, 32128-token vocabulary
    assert sum(p.numel() for p in encoder.parameters()) == 4_762_310_656
    assert encoder.config.dense_act_fn == "gelu_new" and encoder.config.is_gated_act
    assert encoder.config.d_model == LTX_VARIANTS["2b"].transformer_config_dict()["caption_channels"]


def test_checkpoint_facts_from_vendor_metadata():
    distilled = ltx_checkpoint_facts({"config": json.dumps({
        "allowed_inference_steps": [1.0, 0.9937, 0.725, 0.4219],
        "transformer": {"causal_temporal_positioning": True}})})
    assert distilled.distilled is True and distilled.allowed_inference_steps == (1.0, 0.9937, 0.725, 0.4219)
    assert distilled.causal_temporal_positioning is True
    dev = ltx_checkpoint_facts({"config": json.dumps({"allowed_inference_steps": None, "transformer": {}})})
    assert dev.distilled is False and dev.causal_temporal_positioning is None
    assert ltx_checkpoint_facts({}).distilled is None  # no vendor metadata: the caller decides
    with pytest.raises(ModelFilesError, match="not valid JSON"):
        ltx_checkpoint_facts({"config": "{"})


# ------------------------------------------------------------------ input preparation

def test_pack_unpack_and_coords():
    latents = torch.randn(2, 8, 3, 4, 5)
    tokens = pack_latents(latents)
    assert tokens.shape == (2, 60, 8)
    assert torch.equal(tokens[1, 1 * 20 + 2 * 5 + 3], latents[1, :, 1, 2, 3])  # frame-row-column order
    assert torch.equal(unpack_latents(tokens, 3, 4, 5), latents)
    with pytest.raises(ValueError):
        unpack_latents(tokens, 3, 4, 4)
    coords = ltx_video_coords(2, 3, 4, 5, 25.0, causal_temporal_positioning=True)
    assert coords.shape == (2, 3, 60)
    assert coords[0, 0, ::20].tolist() == pytest.approx([0.0, 1 / 25, 9 / 25])  # frames 0, 1, 9 of the video
    plain = ltx_video_coords(1, 3, 4, 5, 25.0, causal_temporal_positioning=False)
    assert plain[0, 0, ::20].tolist() == pytest.approx([0.0, 8 / 25, 16 / 25])
    assert plain[0, 1, :20:5].tolist() == [0.0, 32.0, 64.0, 96.0] and plain[0, 2, :5].tolist() == [0, 32, 64, 96, 128]
    assert ltx_timestep(torch.tensor([0.25])).tolist() == [250.0]


def test_video_coords_equal_diffusers_rope_interpolation_scale():
    """LTXPipeline's way (rope_interpolation_scale = (8 / fps, 32, 32)) is the non-causal form of the coords."""
    torch.manual_seed(4)
    model = LTXVideoTransformer3DModel(**TINY_TRANSFORMER).eval()
    common = dict(hidden_states=torch.randn(1, 2 * 3 * 5, 8), encoder_hidden_states=torch.randn(1, 6, 32),
                  timestep=ltx_timestep(torch.tensor([0.5])), encoder_attention_mask=torch.ones(1, 6),
                  return_dict=False)
    with torch.no_grad():
        by_scale = model(num_frames=2, height=3, width=5, rope_interpolation_scale=(8 / 25.0, 32, 32), **common)[0]
        by_coords = model(video_coords=ltx_video_coords(1, 2, 3, 5, 25.0, False), **common)[0]
        causal = model(video_coords=ltx_video_coords(1, 2, 3, 5, 25.0, True), **common)[0]
    torch.testing.assert_close(by_scale, by_coords, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(by_coords, causal, atol=1e-4)  # the causal form does change the positions
