"""HunyuanVideo VAE (HunyuanVideo-Avatar's ckpts/hunyuan-video-t2v-720p/vae): the vendor file loads strictly into
diffusers' AutoencoderKLHunyuanVideo (every key, every shape, the vendor config translated), wrong files are named,
the reference latents equal the vendor's 129-frame still-video encode, and decoding only the needed latent frames
gives the frames a full decode gives."""

import json

import pytest
import torch
from safetensors.torch import save_file

from reelsmith.engine.demo_avatar import TINY_VAE, tiny_vae, vendor_vae_config, write_vae_folder
from reelsmith.engine.errors import CheckpointMismatchError, InvalidInputError, ModelFilesError
from reelsmith.engine.models.hunyuan_vae import (decode_avatar_latents, encode_reference_latents, hunyuan_vae_config,
                                                 latent_frames_for, load_hunyuan_vae, shipped_vae_config,
                                                 vae_config_from_vendor)

# The vendor's vae/config.json fields for the real model (AutoencoderKLCausal3D; values as restated by third-party
# configs of hunyuan-video-t2v-720p/vae and the vendor class's signature), to check the translation of real values.
REAL_VENDOR_CONFIG = {
    "_class_name": "AutoencoderKLCausal3D", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlockCausal3D"] * 4, "up_block_types": ["UpDecoderBlockCausal3D"] * 4,
    "in_channels": 3, "out_channels": 3, "latent_channels": 16, "layers_per_block": 2, "norm_num_groups": 32,
    "sample_size": 256, "sample_tsize": 64, "scaling_factor": 0.476986, "time_compression_ratio": 4,
    "mid_block_add_attention": True, "mid_block_causal_attn": True,
}


@pytest.fixture(scope="module")
def vae():
    return tiny_vae(seed=3)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_real_vendor_config_translates_to_the_shipped_config():
    assert vae_config_from_vendor(REAL_VENDOR_CONFIG, "test") == shipped_vae_config()
    shipped = shipped_vae_config()
    assert (shipped["latent_channels"], shipped["spatial_compression_ratio"], shipped["temporal_compression_ratio"],
            shipped["scaling_factor"]) == (16, 8, 4, 0.476986)


def test_vendor_folder_loads_every_key(tmp_path, vae):
    folder = tmp_path / "vae"
    write_vae_folder(vae, folder)
    config = hunyuan_vae_config(folder)  # from the vendor's config.json
    assert config["block_out_channels"] == list(TINY_VAE["block_out_channels"])
    assert config["down_block_types"] == ["HunyuanVideoDownBlock3D"] * 4 and config["temporal_compression_ratio"] == 4
    loaded = load_hunyuan_vae(folder)
    _same_weights(loaded, vae)
    assert len(loaded.state_dict()) == len(vae.state_dict()) == 180
    assert loaded.dtype == torch.float32 and not any(p.requires_grad for p in loaded.parameters())
    assert load_hunyuan_vae(folder, dtype=torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("wrap", ["prefix", "state_dict", "safetensors"])
def test_other_packings_of_the_same_keys(tmp_path, vae, wrap):
    folder = tmp_path / "vae"
    write_vae_folder(vae, folder)
    state = {k: v.contiguous() for k, v in vae.state_dict().items()}
    if wrap == "prefix":          # the vendor's loader strips "vae."
        torch.save({"vae." + k: v for k, v in state.items()}, folder / "pytorch_model.pt")
        path = folder
    elif wrap == "state_dict":    # ... and unwraps "state_dict"
        torch.save({"state_dict": state}, folder / "pytorch_model.pt")
        path = folder
    else:                         # the same keys repacked as a single safetensors file (config.json beside it)
        path = folder / "hunyuan_video_vae.safetensors"
        save_file(state, str(path))
    _same_weights(load_hunyuan_vae(path), vae)


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path, vae):
    folder = tmp_path / "vae"
    write_vae_folder(vae, folder)
    state = dict(vae.state_dict())
    for change, expected in (
        (lambda s: s.pop("decoder.conv_out.conv.bias"), "missing key 'decoder.conv_out.conv.bias'"),
        (lambda s: s.update({"encoder.extra.weight": torch.zeros(1)}), "unexpected key 'encoder.extra.weight'"),
        (lambda s: s.update({"quant_conv.bias": torch.zeros(7)}), r"'quant_conv.bias' has shape \[7\], expected \[32\]"),
    ):
        broken = dict(state)
        change(broken)
        torch.save(broken, folder / "pytorch_model.pt")
        with pytest.raises(CheckpointMismatchError, match=expected) as error:
            load_hunyuan_vae(folder)
        assert "pytorch_model.pt" in str(error.value)


def test_wrong_family_files_are_refused(tmp_path, vae):
    folder = tmp_path / "vae"
    write_vae_folder(vae, folder)
    torch.save({"encoder.downsamples.0.residual.0.gamma": torch.ones(4), "decoder.upsamples.0.weight": torch.ones(4)},
               folder / "pytorch_model.pt")
    with pytest.raises(ModelFilesError, match="looks like a Wan VAE"):
        load_hunyuan_vae(folder)
    write_vae_folder(vae, folder)
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan", "z_dim": 16}))
    with pytest.raises(ModelFilesError, match="AutoencoderKLWan config, not HunyuanVideo's VAE"):
        load_hunyuan_vae(folder)
    (folder / "config.json").write_text(json.dumps(dict(vendor_vae_config(vae), latent_channels=32)))
    with pytest.raises(ModelFilesError, match="32 latent channels"):
        load_hunyuan_vae(folder)
    with pytest.raises(ModelFilesError, match="no VAE weights"):
        load_hunyuan_vae(tmp_path)


def test_reference_latents_are_the_129_frame_still_encode(vae):
    generator = torch.Generator().manual_seed(5)
    image = torch.rand(1, 3, 1, 32, 40, generator=generator) * 2 - 1
    with torch.no_grad():  # the vendor: the image repeated over 129 frames -> 33 latent frames
        still = vae.encode(image.expand(1, 3, 129, 32, 40).contiguous()).latent_dist
    assert still.mean.shape == (1, 16, 33, 4, 5)
    latents = encode_reference_latents(vae, image, 33, seed=9)
    noise = torch.randn((1, 16, 33, 4, 5), generator=torch.Generator().manual_seed(9))
    expected = (still.mean + still.std * noise) * 0.476986
    torch.testing.assert_close(latents, expected, rtol=1e-4, atol=1e-4)
    assert (encode_reference_latents(vae, image, 33, seed=10) - latents).abs().max() > 1e-3  # a sample, not the mode
    with pytest.raises(InvalidInputError, match="one image"):
        encode_reference_latents(vae, image.expand(1, 3, 2, 32, 40), 33, seed=0)


def test_decoding_only_the_needed_latent_frames_gives_the_full_decode(vae):
    latents = torch.randn(1, 16, 17, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = vae.decode(latents / 0.476986).sample[0]          # [3, 65, 32, 32]
    full_frames = ((full.clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0)
    assert full_frames.shape == (65, 32, 32, 3)
    for frames, needed in ((5, 5), (13, 5), (14, 8), (26, 11), (65, 17)):
        assert latent_frames_for(vae, frames, 17) == needed
        out = decode_avatar_latents(vae, latents, frames)
        assert out.shape == (frames, 32, 32, 3) and out.dtype == torch.float32 and out.device.type == "cpu"
        torch.testing.assert_close(out, full_frames[:frames], rtol=1e-4, atol=1e-4)
    assert 0.0 <= float(decode_avatar_latents(vae, latents[:, :, :3]).min())
    assert decode_avatar_latents(vae, latents[:, :, :3]).shape[0] == 9   # all 4T-3 frames by default
    vae.use_framewise_decoding = False
    try:
        assert latent_frames_for(vae, 5, 17) == 17  # one piece: GroupNorm sees every frame, nothing can be left out
    finally:
        vae.use_framewise_decoding = True
