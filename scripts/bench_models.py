"""The architectures `scripts/bench.py` times, built at real size with random weights straight on the GPU
(random weights cost the same FLOPs as real ones; nothing is downloaded), with their inputs and matmul FLOP
counts. Reelsmith's own models here; ComfyUI's native ones (the peer) in `bench_peer.py`.

A `Workload` is one model family at one size: which config, the latent shape, and how many frames.
"""

from __future__ import annotations

import dataclasses

import torch

from reelsmith.engine.estimates import TEXT_TOKENS

WAN_SIZES = {"480p": (832, 480), "720p": (1280, 720)}
SIZES_32 = {"480p": (832, 480), "720p": (1280, 704)}  # LTX and Wan TI2V-5B sizes are multiples of 32
DEFAULT_FRAMES = {"wan": 81, "ltx": 97}


@dataclasses.dataclass(frozen=True)
class Workload:
    family: str          # "wan" | "ltx"
    variant: str         # t2v-a14b | i2v-a14b | ti2v-5b | 2b | 13b
    size: str            # 480p | 720p
    frames: int

    @property
    def pixels(self) -> tuple[int, int]:
        multiple_of_32 = self.family == "ltx" or self.variant == "ti2v-5b"
        return (SIZES_32 if multiple_of_32 else WAN_SIZES)[self.size]

    def config(self) -> dict:
        from reelsmith.engine.models.ltx_variants import LTX_VARIANTS
        from reelsmith.engine.models.wan_variants import WAN_VARIANTS

        variants = WAN_VARIANTS if self.family == "wan" else LTX_VARIANTS
        return {k: v for k, v in variants[self.variant].transformer_config_dict().items() if not k.startswith("_")}

    def latent_shape(self) -> tuple[int, ...]:
        """[1, C, T, h, w] of the VAE latents."""
        width, height = self.pixels
        config = self.config()
        if self.family == "wan":
            stride = 16 if self.variant == "ti2v-5b" else 8
            return (1, config["in_channels"], (self.frames - 1) // 4 + 1, height // stride, width // stride)
        return (1, config["in_channels"], (self.frames - 1) // 8 + 1, height // 32, width // 32)

    def shape(self):
        """Token count and FLOP split: one definition, engine/estimates.py's (the editor's estimates use it)."""
        from reelsmith.engine.estimates import model_shape

        return model_shape(self.family, self.variant)

    def tokens(self) -> int:
        return self.shape().tokens(*self.pixels, self.frames)

    def forward_flops(self) -> float:
        """Matmul FLOPs of one forward (2 per multiply-add)."""
        return sum(self.shape().forward_flops(self.tokens()))

    def attention_share(self) -> float:
        attention, rest = self.shape().forward_flops(self.tokens())
        return attention / (attention + rest)


def randomise_on_gpu(model: torch.nn.Module, device: torch.device, dtype=torch.bfloat16) -> torch.nn.Module:
    """Fill a meta-initialised model's parameters with N(0, 0.02) values created on the GPU (no CPU copy), in
    `dtype` (accelerate would otherwise cast them to the meta tensors' float32)."""
    from accelerate.utils import set_module_tensor_to_device

    for name, parameter in list(model.named_parameters()):
        value = torch.empty(parameter.shape, device=device, dtype=dtype).normal_(0.0, 0.02)
        set_module_tensor_to_device(model, name, device, value=value, dtype=dtype)
    return model.to(device).eval().requires_grad_(False)


def build_ours(workload: Workload, precision: str, attention_name: str, compile_mode: str, device):
    """Reelsmith's transformer for `workload` with the loader's precision / attention / compile options applied
    the way the loader applies them. -> (model, notes, attention backend used)."""
    from diffusers import LTXVideoTransformer3DModel, WanTransformer3DModel
    from reelsmith.engine.models import attention, compile as compile_options, precision as precision_options
    from reelsmith.engine.models.checkpoint_io import empty_weights

    cls = WanTransformer3DModel if workload.family == "wan" else LTXVideoTransformer3DModel
    with empty_weights():  # parameters on meta, rotary buffers real
        model = cls(**workload.config())
    randomise_on_gpu(model, device)
    notes = precision_options.apply_precision(model, precision, device)
    backend = attention.apply_attention_backend(model, attention_name, device)
    compile_options.apply_compile(model, compile_mode)
    return model, notes, backend


def ours_forward(model, workload: Workload, device):
    """A no-argument callable running one forward on random inputs of the workload's shape."""
    from reelsmith.engine.pipelines.ltx_inputs import ltx_video_coords, pack_latents

    latents = torch.randn(workload.latent_shape(), device=device, dtype=torch.bfloat16)
    text = torch.randn(1, TEXT_TOKENS[workload.family], 4096, device=device, dtype=torch.bfloat16)
    if workload.family == "wan":
        timestep = torch.tensor([500.0], device=device)

        def forward():
            return model(hidden_states=latents, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
        return forward
    _, _, t, h, w = workload.latent_shape()
    tokens = pack_latents(latents)
    mask = torch.ones(1, text.shape[1], device=device, dtype=torch.bfloat16)
    coords = ltx_video_coords(1, t, h, w, 25.0, True, device=device)
    timestep = torch.full((1, tokens.shape[1]), 500.0, device=device)

    def forward():
        return model(hidden_states=tokens, encoder_hidden_states=text, timestep=timestep,
                     encoder_attention_mask=mask, video_coords=coords, return_dict=False)[0]
    return forward


def build_text_encoder(family: str, device):
    """UMT5-XXL (Wan) or T5-XXL (LTX) encoder at real size in bf16 -> callable encoding a batch of two prompts
    (prompt + negative prompt) of the family's token length."""
    import json

    from reelsmith.engine.models.checkpoint_io import empty_weights
    from reelsmith.engine.models.ltx_variants import CONFIG_DIR as LTX_CONFIGS, TEXT_ENCODER_CONFIG
    from reelsmith.engine.models.wan_variants import CONFIG_DIR as WAN_CONFIGS
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    if family == "wan":
        config_cls, model_cls, path = UMT5Config, UMT5EncoderModel, WAN_CONFIGS / "umt5_xxl_encoder.json"
    else:
        config_cls, model_cls, path = T5Config, T5EncoderModel, LTX_CONFIGS / TEXT_ENCODER_CONFIG
    data = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    with empty_weights():
        model = model_cls(config_cls(**data))
    randomise_on_gpu(model, device)
    ids = torch.randint(0, 32000, (2, TEXT_TOKENS[family]), device=device)
    mask = torch.ones_like(ids)

    def encode():
        return model(ids, attention_mask=mask).last_hidden_state
    return encode


def build_vae_decode(workload: Workload, device):
    """The family's VAE at real size in bf16 -> callable decoding the workload's latents the way Reelsmith's
    pipelines do (Wan: raw latents; LTX: normalized latents, timestep-conditioned decode)."""
    from diffusers import AutoencoderKLLTXVideo, AutoencoderKLWan
    from reelsmith.engine.models.checkpoint_io import empty_weights
    from reelsmith.engine.models.ltx_variants import VAE_CONFIGS, ltx_config
    from reelsmith.engine.models.wan_vae import vae_config
    from reelsmith.engine.pipelines.ltx_sampler import decode_ltx_latents
    from reelsmith.engine.pipelines.wan_sampler import decode_wan_latents

    latents = torch.randn(workload.latent_shape(), device=device)
    if workload.family == "wan":
        version = "2.2" if workload.variant == "ti2v-5b" else "2.1"
        config = {k: v for k, v in vae_config(version).items() if not k.startswith("_")}
        with empty_weights():
            vae = AutoencoderKLWan(**config)
        randomise_on_gpu(vae, device)
        return lambda: decode_wan_latents(vae, latents, device)
    config = {k: v for k, v in ltx_config(VAE_CONFIGS["0.9.5"]).items()
              if k not in ("spatial_compression_ratio", "temporal_compression_ratio") and not k.startswith("_")}
    with empty_weights():
        vae = AutoencoderKLLTXVideo(**config)
    randomise_on_gpu(vae, device)
    return lambda: decode_ltx_latents(vae, latents, device)
