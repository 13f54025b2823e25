"""LTX-Video transformer and VAE load strictly from a diffusers folder and from the vendor's single file
(transformer under `model.diffusion_model.`, VAE under `vae.`), to identical outputs."""

import pytest
import torch
from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel
from safetensors.torch import save_file

from reelsmith.engine.errors import CheckpointMismatchError, ModelFilesError
from reelsmith.engine.models import checkpoint_io, ltx_keys
from reelsmith.engine.models.ltx_model import load_ltx_transformer, load_ltx_vae
from reelsmith.engine.models.ltx_variants import VAE_CONFIGS, ltx_config

# the demo models' tiny configs: one definition for demos and tests
from reelsmith.engine.demo_ltx import LATENT_CHANNELS, TEXT_DIM, TINY_TRANSFORMER, TINY_VAE  # noqa: E402


def _tiny_models():
    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(**TINY_TRANSFORMER).eval()
    vae_config = {k: v for k, v in ltx_config(VAE_CONFIGS["0.9.5"]).items()
                  if k not in ("spatial_compression_ratio", "temporal_compression_ratio")}
    vae = AutoencoderKLLTXVideo(**{**vae_config, **TINY_VAE}).eval()
    with torch.no_grad():
        for parameter in list(transformer.parameters()) + list(vae.parameters()):
            parameter.copy_(torch.randn_like(parameter) * 0.1)
        vae.latents_mean.copy_(torch.rand_like(vae.latents_mean))
        vae.latents_std.copy_(torch.rand_like(vae.latents_std) + 0.5)
    return transformer, vae


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("ltx")
    transformer, vae = _tiny_models()
    transformer.save_pretrained(str(root / "diffusers" / "transformer"))
    vae.save_pretrained(str(root / "diffusers" / "vae"))
    vendor = {"model.diffusion_model." + ltx_keys.diffusers_transformer_key_to_original(k): v.contiguous()
              for k, v in transformer.state_dict().items()}
    vendor.update({"vae." + ltx_keys.diffusers_vae_key_to_original(k, "0.9.5"): v.contiguous()
                   for k, v in vae.state_dict().items()})
    path = root / "ltxv-tiny.safetensors"
    save_file(vendor, str(path), metadata={"config": '{"allowed_inference_steps": [1.0, 0.99, 0.9], '
                                                     '"transformer": {"causal_temporal_positioning": true}}'})
    checkpoint_io.write_config_hint(path, {"transformer": dict(transformer.config), "vae": dict(vae.config)})
    return root, path, transformer, vae


def _transformer_out(model):
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(1, 2 * 4 * 4, LATENT_CHANNELS, generator=generator)
    text = torch.randn(1, 6, TEXT_DIM, generator=generator)
    with torch.no_grad():
        return model(hidden_states=hidden, encoder_hidden_states=text, timestep=torch.tensor([500]),
                     encoder_attention_mask=torch.ones(1, 6), num_frames=2, height=4, width=4,
                     return_dict=False)[0]


def test_transformer_from_both_layouts_is_identical(written):
    root, path, reference, _ = written
    from_folder = load_ltx_transformer(root / "diffusers" / "transformer", "diffusers")
    from_vendor = load_ltx_transformer(path, "vendor single file")
    expected = _transformer_out(reference)
    torch.testing.assert_close(_transformer_out(from_folder.model), expected)
    torch.testing.assert_close(_transformer_out(from_vendor.model), expected)
    assert from_vendor.facts.distilled is True and from_vendor.facts.causal_temporal_positioning is True
    assert from_folder.facts.distilled is None  # a diffusers folder does not say: the caller chooses


def test_vae_from_both_layouts_is_identical(written):
    root, path, _, reference = written
    latents = torch.randn(1, LATENT_CHANNELS, 2, 2, 2, generator=torch.Generator().manual_seed(2))
    timestep = torch.tensor([0.05])
    with torch.no_grad():
        expected = reference.decode(latents, timestep, return_dict=False)[0]
        folder_vae, _ = load_ltx_vae(root / "diffusers" / "vae", "diffusers")
        vendor_vae, version = load_ltx_vae(path, "vendor single file")
        assert version == "0.9.5"
        # same weights; memory layouts differ, so CPU summation order does too (128-wide convs: ~5e-5)
        torch.testing.assert_close(folder_vae.decode(latents, timestep, return_dict=False)[0], expected,
                                   rtol=1e-4, atol=2e-4)
        torch.testing.assert_close(vendor_vae.decode(latents, timestep, return_dict=False)[0], expected,
                                   rtol=1e-4, atol=2e-4)
    torch.testing.assert_close(vendor_vae.latents_mean, reference.latents_mean)


def test_wrong_files_are_named(written, tmp_path):
    _, path, transformer, _ = written
    only_transformer = tmp_path / "transformer-only.safetensors"
    save_file({"model.diffusion_model." + ltx_keys.diffusers_transformer_key_to_original(k): v.contiguous()
               for k, v in transformer.state_dict().items()}, str(only_transformer))
    with pytest.raises(ModelFilesError, match="no VAE tensors"):
        load_ltx_vae(only_transformer, "vendor single file")
    stray = tmp_path / "stray.safetensors"
    save_file({"model.diffusion_model.mystery.weight": torch.zeros(2), "model.diffusion_model.patchify_proj.weight":
               torch.zeros(32, 8)}, str(stray))
    with pytest.raises(CheckpointMismatchError, match="stray.safetensors.*mystery"):
        load_ltx_transformer(stray, "vendor single file")


def test_vae_follows_the_files_spatial_padding_mode(written, tmp_path):
    """The vendor metadata's `vae.spatial_padding_mode` reaches every VAE convolution (zeros when absent, as the
    vendor's from_config); an unknown mode is refused with the file named."""
    import json
    from diffusers.models.autoencoders.autoencoder_kl_ltx import LTXVideoCausalConv3d
    from safetensors.torch import load_file

    _, path, _, reference = written
    tensors = load_file(str(path))
    latents = torch.randn(1, LATENT_CHANNELS, 2, 2, 2, generator=torch.Generator().manual_seed(4))
    decoded = {}
    for mode in ("replicate", None):
        target = tmp_path / f"ltxv-{mode}.safetensors"
        vae_section = {"spatial_padding_mode": mode} if mode else {}
        save_file(tensors, str(target), metadata={"config": json.dumps({"vae": vae_section})})
        checkpoint_io.write_config_hint(target, {"vae": dict(reference.config)})
        vae, _ = load_ltx_vae(target, "vendor single file")
        modes = {m.conv.padding_mode for m in vae.modules() if isinstance(m, LTXVideoCausalConv3d)}
        assert modes == {mode or "zeros"}
        with torch.no_grad():
            decoded[mode] = vae.decode(latents, torch.tensor([0.05]), return_dict=False)[0]
    border = (decoded["replicate"] - decoded[None]).abs()
    assert border.max() > 1e-3  # the padding changes the borders ...
    torch.testing.assert_close(decoded["replicate"][..., 40:-40, 40:-40], decoded[None][..., 40:-40, 40:-40],
                               rtol=1e-4, atol=2e-4)  # ... and only near them (receptive field < 40 px here)
    bad = tmp_path / "ltxv-bad.safetensors"
    save_file(tensors, str(bad), metadata={"config": json.dumps({"vae": {"spatial_padding_mode": "mirror"}})})
    with pytest.raises(ModelFilesError, match="spatial_padding_mode 'mirror'"):
        load_ltx_vae(bad, "vendor single file")
