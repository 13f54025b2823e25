"""Tiny random-weight LTX-Video models in every layout a user may have, for demos and tests.

The same tiny weights (transformer, VAE, T5 encoder, spatial upscaler) are written as:
- a diffusers folder `reelsmith-demo/LTX-Video-Diffusers` (LTXPipeline: transformer/, vae/, text_encoder/,
  tokenizer/, scheduler/, model_index.json);
- vendor single files `checkpoints/reelsmith-demo/ltxv-2b-0.9.8-distilled.safetensors` (metadata marks it
  distilled) and `checkpoints/reelsmith-demo/ltxv-13b-0.9.8-dev.safetensors` (dev). Both are tiny and hold the
  same weights: "13b" is only the file name the shipped workflows use, not the structure;
- ComfyUI text encoder files `text_encoders/reelsmith-demo/t5xxl_fp16.safetensors` and
  `t5xxl_fp8_e4m3fn_scaled.safetensors`, with their tokenizer in `text_encoders/reelsmith-demo/t5_tokenizer/`
  (the tiny encoder has a 256-piece vocabulary, so ComfyUI's real T5 tokenizer cannot drive it);
- the spatial upscaler `latent_upscale_models/reelsmith-demo/ltxv-spatial-upscaler-0.9.8.safetensors`
  (vendor config in its metadata, as ComfyUI's LatentUpscaleModelLoader reads it).
Tiny files carry their configs beside them (`<file>.reelsmith.json`, checkpoint_io.write_config_hint).
The latent channels (128), the T5 width (4096) and the VAE's full-resolution width (128) are the real ones,
because ComfyUI's CheckpointLoaderSimple assumes them: so core nodes load the demo vendor files too, and core
VAEDecode decodes the LATENT of Reelsmith's LTX samplers with the file's VAE.
"""

from __future__ import annotations

import json
import pathlib

import torch
from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel
from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel
from safetensors.torch import save_file
from transformers import T5Config, T5EncoderModel

from .models import checkpoint_io, ltx_keys
from .models.ltx_layouts import SIDE_TOKENIZER_DIR
from .models.ltx_variants import VAE_CONFIGS, ltx_config
from .models.umt5_keys import convert_umt5_transformers_to_comfyui, tiny_spiece_model_bytes, tokenizer_from_spiece_bytes

DEMO_DIR = "reelsmith-demo"
DIFFUSERS_NAME = "LTX-Video-Diffusers"
VENDOR_FILES = {  # name -> distilled (all tiny: the size in the name is only a name)
    "ltxv-2b-0.9.8-distilled.safetensors": True,
    "ltxv-13b-0.9.8-dev.safetensors": False,
    "ltxv-13b-0.9.8-distilled.safetensors": True,
}
TEXT_ENCODER_FILES = {"t5xxl_fp16.safetensors": False, "t5xxl_fp8_e4m3fn_scaled.safetensors": True}  # -> fp8_scaled
UPSCALER_FILE = "ltxv-spatial-upscaler-0.9.8.safetensors"
# The real models' latent channels and T5-XXL width, so that ComfyUI's own loaders (which read neither from the
# file: they assume the real values) take the demo files; everything inside stays tiny.
LATENT_CHANNELS = 128
TEXT_DIM = 4096
TINY_VOCAB = 256

# head dim 8 as diffusers' own LTX tests
TINY_TRANSFORMER = dict(in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, num_attention_heads=4,
                        attention_head_dim=8, cross_attention_dim=32, num_layers=1, caption_channels=TEXT_DIM)
# The 0.9.5 VAE's structure (the layout of the 0.9.5+ releases' VAE, which 0.9.8 ships) at ComfyUI's fixed
# width: ComfyUI's LTXV VAE always builds 128 channels at full resolution (it ignores the vendor's
# `*_base_channels`), so the demo keeps 128 channels at every stage (channel multipliers 1) and one layer per
# stage. Then core VAELoader/CheckpointLoaderSimple load the demo files and core VAEDecode decodes our LATENT.
TINY_VAE_WIDTH = 128
TINY_VAE = dict(latent_channels=LATENT_CHANNELS, block_out_channels=(TINY_VAE_WIDTH,) * 5,
                down_block_types=("LTXVideo095DownBlock3D",) * 4, layers_per_block=(1, 1, 1, 1, 1),
                spatio_temporal_scaling=(True, True, True, True),
                downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
                decoder_block_out_channels=(TINY_VAE_WIDTH,) * 3, decoder_layers_per_block=(1, 1, 1, 1),
                decoder_spatio_temporal_scaling=(True, True, True), decoder_inject_noise=(False,) * 4,
                upsample_residual=(True, True, True), upsample_factor=(1, 1, 1), timestep_conditioning=True)
# T5 v1.1 structure (gated GELU, relative positions in block 0 only) at a tiny width
TINY_T5 = dict(vocab_size=TINY_VOCAB, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
               relative_attention_num_buckets=32, relative_attention_max_distance=128,
               feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
               pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
TINY_UPSCALER = dict(in_channels=LATENT_CHANNELS, mid_channels=32, num_blocks_per_stage=1, dims=3, spatial_upsample=True,
                     temporal_upsample=False)
# Demo only: an 8-sigma distilled schedule of the shape third-party reports quote for 0.9.8 distilled.
DEMO_DISTILLED_STEPS = [1.0, 0.9937, 0.9875, 0.9812, 0.975, 0.9094, 0.725, 0.4219]
# FlowMatchEuler settings as recalled from Lightricks' diffusers repos (not checked against a download here).
SCHEDULER = dict(base_image_seq_len=1024, base_shift=0.95, max_image_seq_len=4096, max_shift=2.05, shift=1.0,
                 shift_terminal=0.1, use_dynamic_shifting=True, time_shift_type="exponential", num_train_timesteps=1000)


def _randomise(model: torch.nn.Module, seed: int, fan_in_gain: float | None = None) -> torch.nn.Module:
    """Re-randomise every weight (norms near one): tables that start at zero would hide mapping mistakes.
    With `fan_in_gain`, matrices and kernels get std gain/sqrt(fan-in) instead of 0.1, which keeps a deep,
    wide stack (the VAE's 128-channel 3x3x3 convolutions) from saturating its output to flat black/white
    frames, on which an invisible watermark could not live."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            if fan_in_gain is not None and parameter.ndim > 1:
                parameter.copy_(noise * fan_in_gain / parameter[0].numel() ** 0.5)
            else:
                parameter.copy_(1 + 0.1 * noise if "norm" in name and parameter.ndim == 1 else noise * 0.1)
    return model.eval()


def tiny_vae_config() -> dict:
    """The 0.9.5 structure at a small width. The compression ratios stay in the config: diffusers would
    otherwise derive them from `spatio_temporal_scaling` alone (64x/16x), ignoring the down-block types."""
    return {**ltx_config(VAE_CONFIGS["0.9.5"]), **TINY_VAE}


# diffusers downsample type -> the vendor's encoder block name
_VENDOR_COMPRESS = {"spatial": "compress_space_res", "temporal": "compress_time_res",
                    "spatiotemporal": "compress_all_res"}


def vendor_vae_config(config: dict, spatial_padding_mode: str = "zeros") -> dict:
    """The vendor's `vae` metadata section (CausalVideoAutoencoder block lists) for a 0.9.5-structured diffusers
    VAE config, as the vendor's files carry it and ComfyUI reads it. Demo-only: it needs one layer count, one
    channel width and uniform flags for every stage, so the order of the vendor's block lists cannot matter."""
    widths = set(config["block_out_channels"]) | set(config["decoder_block_out_channels"])
    layers = set(config["layers_per_block"]) | set(config["decoder_layers_per_block"])
    if len(widths) != 1 or len(layers) != 1 or len(set(config["decoder_inject_noise"])) != 1 \
            or set(config["upsample_factor"]) != {1}:
        raise ValueError("vendor_vae_config handles uniform demo VAEs only (one width, one layer count, "
                         "channel multipliers 1)")
    res = ["res_x", {"num_layers": layers.pop()}]
    encoder = [res]
    for kind in config["downsample_type"]:
        encoder += [[_VENDOR_COMPRESS[kind], {"multiplier": 1}], res]
    res_noise = ["res_x", {"num_layers": res[1]["num_layers"], "inject_noise": config["decoder_inject_noise"][0]}]
    decoder = [res_noise]
    for residual in config["upsample_residual"]:
        decoder += [["compress_all", {"residual": residual, "multiplier": 1}], res_noise]
    return {"_class_name": "CausalVideoAutoencoder", "dims": 3, "in_channels": 3, "out_channels": 3,
            "latent_channels": config["latent_channels"], "encoder_blocks": encoder, "decoder_blocks": decoder,
            "scaling_factor": 1.0, "norm_layer": "pixel_norm", "patch_size": config["patch_size"],
            "latent_log_var": "uniform", "use_quant_conv": False, "causal_decoder": config["decoder_causal"],
            "timestep_conditioning": config["timestep_conditioning"], "spatial_padding_mode": spatial_padding_mode}


def tiny_tokenizer():
    """The tokenizer of every demo layout (UMT5-style special ids pad=0, eos=1, unk=2, as T5's)."""
    return tokenizer_from_spiece_bytes(tiny_spiece_model_bytes(TINY_VOCAB))


def _config_of(model) -> dict:
    return {k: v for k, v in dict(model.config).items() if not k.startswith("_")}


def _contiguous(state_dict: dict) -> dict:
    return {k: v.detach().contiguous().clone() for k, v in state_dict.items()}


class TinyLTXSet:
    """One set of tiny LTX modules: the same weights are written in every layout."""

    def __init__(self, seed: int = 0, vae_timestep_conditioning: bool = True):
        torch.manual_seed(seed)
        self.transformer = _randomise(LTXVideoTransformer3DModel(**TINY_TRANSFORMER), seed)
        vae_config = dict(tiny_vae_config(), timestep_conditioning=vae_timestep_conditioning)
        self.vae = _randomise(AutoencoderKLLTXVideo(**vae_config), seed + 1, fan_in_gain=0.5)
        with torch.no_grad():
            generator = torch.Generator().manual_seed(seed + 2)
            self.vae.latents_mean.copy_(torch.rand(self.vae.latents_mean.shape, generator=generator))
            self.vae.latents_std.copy_(torch.rand(self.vae.latents_std.shape, generator=generator) + 0.5)
        self.text_encoder = _randomise(T5EncoderModel(T5Config(**TINY_T5)), seed + 3)
        with torch.no_grad():  # fp16-exact values, so the t5xxl_fp16 file holds exactly the diffusers weights
            for parameter in self.text_encoder.parameters():
                parameter.copy_(parameter.half().float())
        self.upscaler = _randomise(LTXLatentUpsamplerModel(**TINY_UPSCALER), seed + 4)

    # ------------------------------------------------------------ diffusers
    def write_diffusers_folder(self, folder: pathlib.Path) -> pathlib.Path:
        folder = pathlib.Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.transformer.save_pretrained(str(folder / "transformer"))
        self.vae.save_pretrained(str(folder / "vae"))
        self.text_encoder.save_pretrained(str(folder / "text_encoder"))
        tiny_tokenizer().save_pretrained(str(folder / "tokenizer"))
        FlowMatchEulerDiscreteScheduler(**SCHEDULER).save_pretrained(str(folder / "scheduler"))
        index = {
            "_class_name": "LTXPipeline", "_diffusers_version": "0.42.1",
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "text_encoder": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "T5TokenizerFast"],
            "transformer": ["diffusers", "LTXVideoTransformer3DModel"], "vae": ["diffusers", "AutoencoderKLLTXVideo"],
        }
        (folder / "model_index.json").write_text(json.dumps(index, indent=2))
        return folder

    # ------------------------------------------------------------ vendor / ComfyUI single files
    def vendor_state_dict(self) -> dict:
        out = {"model.diffusion_model." + ltx_keys.diffusers_transformer_key_to_original(k): v
               for k, v in _contiguous(self.transformer.state_dict()).items()}
        out.update({"vae." + ltx_keys.diffusers_vae_key_to_original(k, "0.9.5"): v
                    for k, v in _contiguous(self.vae.state_dict()).items()})
        return out

    def write_vendor_file(self, path: pathlib.Path, distilled: bool, spatial_padding_mode: str = "zeros") -> pathlib.Path:
        """The vendor's `ltxv-*.safetensors` layout; metadata `config` as the vendor writes it (distilled files
        list `allowed_inference_steps`; the `vae` section is what ComfyUI builds its VAE from)."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        config = {"transformer": {"causal_temporal_positioning": True},
                  "vae": vendor_vae_config(_config_of(self.vae), spatial_padding_mode)}
        if distilled:
            config["allowed_inference_steps"] = DEMO_DISTILLED_STEPS
        save_file(self.vendor_state_dict(), str(path), metadata={"config": json.dumps(config)})
        checkpoint_io.write_config_hint(path, {"transformer": _config_of(self.transformer), "vae": _config_of(self.vae)})
        return path

    def write_text_encoder_file(self, path: pathlib.Path, fp8_scaled: bool = False) -> pathlib.Path:
        """ComfyUI's t5xxl_* layout: transformers names without the tied `encoder.embed_tokens`, no tokenizer."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state_dict = convert_umt5_transformers_to_comfyui(_contiguous(self.text_encoder.state_dict()),
                                                          fp8_scaled=fp8_scaled)
        if not fp8_scaled:
            state_dict = {k: v.half() for k, v in state_dict.items()}  # as the name says: fp16
        save_file(state_dict, str(path))
        checkpoint_io.write_config_hint(path, self.text_encoder.config.to_diff_dict())
        return path

    def write_upscaler_file(self, path: pathlib.Path) -> pathlib.Path:
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state_dict = {ltx_keys.diffusers_upscaler_key_to_original(k): v
                      for k, v in _contiguous(self.upscaler.state_dict()).items()}
        save_file(state_dict, str(path), metadata={"config": json.dumps({"_class_name": "LatentUpsampler",
                                                                          **TINY_UPSCALER})})
        checkpoint_io.write_config_hint(path, _config_of(self.upscaler))
        return path

    def write_single_files(self, models_root: pathlib.Path, subfolder: str = DEMO_DIR) -> list[pathlib.Path]:
        models_root = pathlib.Path(models_root)
        written = [self.write_vendor_file(models_root / "checkpoints" / subfolder / name, distilled)
                   for name, distilled in VENDOR_FILES.items()]
        text_dir = models_root / "text_encoders" / subfolder
        written += [self.write_text_encoder_file(text_dir / name, fp8) for name, fp8 in TEXT_ENCODER_FILES.items()]
        tiny_tokenizer().save_pretrained(str(text_dir / SIDE_TOKENIZER_DIR))
        written.append(text_dir / SIDE_TOKENIZER_DIR)
        written.append(self.write_upscaler_file(models_root / "latent_upscale_models" / subfolder / UPSCALER_FILE))
        return written


def write_ltx_demo_models(models_root, seed: int = 100) -> list[pathlib.Path]:
    """Tiny LTX-Video models in every layout under `models_root` (in `reelsmith-demo/` subfolders)."""
    models_root = pathlib.Path(models_root)
    tiny = TinyLTXSet(seed)
    written = [tiny.write_diffusers_folder(models_root / DEMO_DIR / DIFFUSERS_NAME)]
    written += tiny.write_single_files(models_root)
    return written
