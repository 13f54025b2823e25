"""Tiny random-weight Wan 2.2 models in every layout a user may have, for demos and tests.

They have the real structure (the same modules and key names) at a tiny width, so every loader, key
conversion and sampler path runs for real on a CPU in seconds. They produce noise, not video.
Files land in ComfyUI's folder structure under a models root, in `reelsmith-demo/` subfolders so they
never shadow real models: `scripts/render.py --demo` swaps a workflow's model V for `reelsmith-demo/V`.
"""

from __future__ import annotations

import json
import pathlib

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from safetensors.torch import save_file
from transformers import UMT5Config, UMT5EncoderModel

from .models import checkpoint_io, wan_keys
from .models.umt5_keys import (
    convert_umt5_transformers_to_comfyui,
    convert_umt5_transformers_to_original,
    tiny_spiece_model_bytes,
    tokenizer_from_spiece_bytes,
)
from .models.wan_vae import vae_config
from .models.wan_vae_keys import convert_wan_vae_diffusers_to_original
from .models.wan_variants import WAN_VARIANTS

DEMO_DIR = "reelsmith-demo"
TEXT_DIM = 32

# head dim 16: GPU attention kernels (cuDNN, flash) need a multiple of 8, so demos run on a GPU too
TINY_TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, text_dim=TEXT_DIM, freq_dim=256,
    ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
    rope_max_seq_len=1024,
)
TINY_VAE = {
    # The 2.1 VAE's real structure (channel multipliers, two residual blocks a stage) at width 4: ComfyUI's
    # VAELoader reads only the width off a Wan 2.1 file and assumes the rest, so core VAEDecode can use it.
    "2.1": dict(base_dim=4, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                temperal_downsample=[False, True, True]),
    # The 2.2 VAE's structure (residual down/up blocks, 2x2 patchify, 48 latent channels) at a small width.
    "2.2": dict(base_dim=8, decoder_base_dim=8, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
                patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4),
}
TINY_VOCAB = 256
TINY_UMT5 = dict(vocab_size=TINY_VOCAB, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                 relative_attention_num_buckets=8, relative_attention_max_distance=16,
                 feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True,
                 tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)

RELEASE_NAMES = {"t2v-a14b": "Wan2.2-T2V-A14B", "i2v-a14b": "Wan2.2-I2V-A14B", "ti2v-5b": "Wan2.2-TI2V-5B"}
# The single-file names the shipped workflows use (Comfy-Org's repackaged files).
SINGLE_FILE_NAMES = {
    "t2v-a14b": ("wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"),
    "i2v-a14b": ("wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors", "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors"),
    "ti2v-5b": ("wan2.2_ti2v_5B_fp16.safetensors", None),
}
TEXT_ENCODER_FILE = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
VAE_FILES = {"2.1": "wan_2.1_vae.safetensors", "2.2": "wan2.2_vae.safetensors"}


# ------------------------------------------------------------------ tiny modules (diffusers naming)

def tiny_transformer_config(variant_name: str) -> dict:
    variant = WAN_VARIANTS[variant_name]
    out_channels = 48 if variant.vae_version == "2.2" else 16
    return dict(TINY_TRANSFORMER, in_channels=variant.in_channels, out_channels=out_channels)


def tiny_transformer(variant_name: str, seed: int) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**tiny_transformer_config(variant_name))
    with torch.no_grad():  # re-randomise: some tables start at zero, which would hide mapping mistakes
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.2)
    return model.eval()


def tiny_vae(version: str, seed: int) -> AutoencoderKLWan:
    """The latent statistics are the real VAE's (the sampler normalizes with them)."""
    torch.manual_seed(seed)
    real = vae_config(version)
    stats = {k: real[k] for k in ("latents_mean", "latents_std")}
    return AutoencoderKLWan(**TINY_VAE[version], **stats).eval()


def tiny_text_encoder(seed: int) -> UMT5EncoderModel:
    torch.manual_seed(seed)
    return UMT5EncoderModel(UMT5Config(**TINY_UMT5)).eval()


def _config_of(model) -> dict:
    return {k: v for k, v in dict(model.config).items() if not k.startswith("_")}


def _contiguous(state_dict: dict) -> dict:
    return {k: v.detach().contiguous().clone() for k, v in state_dict.items()}


# ------------------------------------------------------------------ writers, one per layout

def _quantize_fp8_scaled(original: dict) -> dict:
    """ComfyUI's 'fp8_scaled' transformer: the blocks' Linear weights as fp8 with a per-tensor `scale_weight`."""
    return checkpoint_io.quantize_fp8_scaled(
        original, lambda key, tensor: key.startswith("blocks.") and key.endswith(".weight") and tensor.ndim == 2)


def transformer_original_state_dict(model: WanTransformer3DModel) -> dict:
    return {wan_keys.diffusers_key_to_original(k): v for k, v in _contiguous(model.state_dict()).items()}


def write_transformer_single_file(model, path: pathlib.Path, fp8_scaled: bool, comfy_prefix: bool = True) -> None:
    original = transformer_original_state_dict(model)
    if fp8_scaled:
        original = _quantize_fp8_scaled(original)
    prefix = "model.diffusion_model." if comfy_prefix else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({prefix + k: v.cpu() for k, v in original.items()}, str(path))  # a GPU model is written from the GPU
    checkpoint_io.write_config_hint(path, _config_of(model))


def write_transformer_shards(model, folder: pathlib.Path, model_type: str, shards: int = 2) -> None:
    """Original-named shards plus `*.safetensors.index.json` and the original `config.json`."""
    folder.mkdir(parents=True, exist_ok=True)
    original = transformer_original_state_dict(model)
    keys = sorted(original)
    weight_map = {}
    for index in range(shards):
        name = f"diffusion_pytorch_model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: original[k] for k in keys[index::shards]}
        save_file(part, str(folder / name))
        weight_map.update({k: name for k in part})
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    config = model.config
    (folder / "config.json").write_text(json.dumps({
        "_class_name": "WanModel", "model_type": model_type, "dim": config.num_attention_heads * config.attention_head_dim,
        "num_heads": config.num_attention_heads, "num_layers": config.num_layers, "ffn_dim": config.ffn_dim,
        "in_dim": config.in_channels, "out_dim": config.out_channels, "text_len": 512, "freq_dim": config.freq_dim,
    }, indent=2))


def write_vae_original(vae, version: str, path: pathlib.Path) -> None:
    original = convert_wan_vae_diffusers_to_original(_contiguous(vae.state_dict()), version)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".pth":
        torch.save(original, str(path))
    else:
        save_file(original, str(path))
    checkpoint_io.write_config_hint(path, _config_of(vae))


def write_text_encoder_original(encoder, path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(convert_umt5_transformers_to_original(_contiguous(encoder.state_dict())), str(path))
    checkpoint_io.write_config_hint(path, encoder.config.to_diff_dict())


def write_text_encoder_comfyui(encoder, path: pathlib.Path, fp8_scaled: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = convert_umt5_transformers_to_comfyui(
        _contiguous(encoder.state_dict()), spiece_model=tiny_spiece_model_bytes(TINY_VOCAB), fp8_scaled=fp8_scaled)
    save_file(state_dict, str(path))
    checkpoint_io.write_config_hint(path, encoder.config.to_diff_dict())


def tiny_tokenizer():
    """The tokenizer of every demo layout: built from the same sentencepiece model that the ComfyUI-layout
    text encoder file carries, so all layouts tokenize alike."""
    return tokenizer_from_spiece_bytes(tiny_spiece_model_bytes(TINY_VOCAB))


def write_tokenizer_folder(folder: pathlib.Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tiny_tokenizer().save_pretrained(str(folder))


class TinyWanSet:
    """The tiny modules of one variant: the same weights are written in every layout."""

    def __init__(self, variant_name: str, seed: int = 0):
        self.variant = WAN_VARIANTS[variant_name]
        self.high = tiny_transformer(variant_name, seed)
        self.low = tiny_transformer(variant_name, seed + 1) if self.variant.two_experts else None
        self.vae = tiny_vae(self.variant.vae_version, seed + 2)
        self.text_encoder = tiny_text_encoder(seed + 3)

    def write_release_folder(self, folder: pathlib.Path) -> pathlib.Path:
        model_type = "i2v" if self.variant.image_conditioned else ("ti2v" if self.variant.name == "ti2v-5b" else "t2v")
        if self.low is not None:
            write_transformer_shards(self.high, folder / "high_noise_model", model_type)
            write_transformer_shards(self.low, folder / "low_noise_model", model_type)
        else:
            write_transformer_shards(self.high, folder, model_type)
        vae_name = "Wan2.2_VAE.pth" if self.variant.vae_version == "2.2" else "Wan2.1_VAE.pth"
        write_vae_original(self.vae, self.variant.vae_version, folder / vae_name)
        write_text_encoder_original(self.text_encoder, folder / "models_t5_umt5-xxl-enc-bf16.pth")
        write_tokenizer_folder(folder / "google" / "umt5-xxl")
        return folder

    def write_diffusers_folder(self, folder: pathlib.Path) -> pathlib.Path:
        folder.mkdir(parents=True, exist_ok=True)
        self.high.save_pretrained(str(folder / "transformer"))
        if self.low is not None:
            self.low.save_pretrained(str(folder / "transformer_2"))
        self.vae.save_pretrained(str(folder / "vae"))
        self.text_encoder.save_pretrained(str(folder / "text_encoder"))
        write_tokenizer_folder(folder / "tokenizer")
        pipeline = "WanImageToVideoPipeline" if self.variant.image_conditioned else "WanPipeline"
        index = {
            "_class_name": pipeline, "_diffusers_version": "0.42.1",
            "transformer": ["diffusers", "WanTransformer3DModel"],
            "transformer_2": ["diffusers", "WanTransformer3DModel"] if self.low is not None else [None, None],
            "vae": ["diffusers", "AutoencoderKLWan"], "text_encoder": ["transformers", "UMT5EncoderModel"],
            "tokenizer": ["transformers", "T5TokenizerFast"], "scheduler": ["diffusers", "UniPCMultistepScheduler"],
            "boundary_ratio": self.variant.default_boundary if self.low is not None else None,
            "expand_timesteps": self.variant.name == "ti2v-5b",
        }
        (folder / "model_index.json").write_text(json.dumps(index, indent=2))
        return folder

    def write_single_files(self, models_root: pathlib.Path, subfolder: str = DEMO_DIR,
                           fp8_scaled: bool = True) -> dict[str, pathlib.Path]:
        """diffusion_models/, text_encoders/, vae/ files under models_root (in `subfolder`)."""
        high_name, low_name = SINGLE_FILE_NAMES[self.variant.name]
        quantize = fp8_scaled and "fp8_scaled" in high_name
        paths = {"high": models_root / "diffusion_models" / subfolder / high_name}
        write_transformer_single_file(self.high, paths["high"], fp8_scaled=quantize)
        if self.low is not None:
            paths["low"] = models_root / "diffusion_models" / subfolder / low_name
            write_transformer_single_file(self.low, paths["low"], fp8_scaled=quantize)
        paths["text_encoder"] = models_root / "text_encoders" / subfolder / TEXT_ENCODER_FILE
        write_text_encoder_comfyui(self.text_encoder, paths["text_encoder"], fp8_scaled=fp8_scaled)
        paths["vae"] = models_root / "vae" / subfolder / VAE_FILES[self.variant.vae_version]
        write_vae_original(self.vae, self.variant.vae_version, paths["vae"])
        return paths


def write_demo_models(models_root) -> list[pathlib.Path]:
    """Every supported Wan variant in every layout under `models_root`; returns what was written."""
    models_root = pathlib.Path(models_root)
    written = []
    for seed, variant_name in enumerate(WAN_VARIANTS):
        tiny = TinyWanSet(variant_name, seed=seed * 10)
        release = RELEASE_NAMES[variant_name]
        written.append(tiny.write_release_folder(models_root / DEMO_DIR / release))
        written.append(tiny.write_diffusers_folder(models_root / DEMO_DIR / f"{release}-Diffusers"))
        written += list(tiny.write_single_files(models_root).values())
    return written
