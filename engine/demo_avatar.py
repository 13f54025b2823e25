"""Tiny random-weight HunyuanVideo-Avatar models in the vendor's folder layout, for demos and tests.

`write_avatar_demo_models(models_root)` writes `reelsmith-demo/HunyuanVideo-Avatar/ckpts/...` under a models root,
the tree `hf download tencent/HunyuanVideo-Avatar --local-dir models/HunyuanVideo-Avatar` leaves, at a tiny width:
- `hunyuan-video-t2v-720p/transformers/`: `mp_rank_00_model_states.pt` (vendor key names, state dict under
  `module`) and the `_fp8.pt` + `_fp8_map.pt` pair holding the same values (the block Linear weights are rounded to
  what fp8 can hold first), each with its config beside it (`<file>.reelsmith.json`);
- `hunyuan-video-t2v-720p/vae/`: `pytorch_model.pt` and the vendor-style `config.json` (AutoencoderKLCausal3D);
- `llava_llama_image/` (sharded, with its index), `text_encoder_2/` (a whole CLIPModel), `whisper-tiny/` (with its
  preprocessor config), each with an in-memory word-level tokenizer saved beside it;
- `det_align/detface.pt`: a TorchScript face detector with the vendor detector's inputs and outputs that reports one
  face, around the upper centre of the picture, whenever the picture has contrast (a flat picture has no face).
The widths fit together as the real ones do: 16 latent channels (the sampler's and the VAE's), LLaVA's hidden size =
the transformer's text width, CLIP-L's text width = its pooled width, whisper's width and layer count = its audio
feature layout. They produce noise, not video; they make every loader and pipeline path run on a CPU in seconds.
`demo_portrait()` and `demo_speech()` are inputs for them.
"""

from __future__ import annotations

import json
import math
import pathlib
import warnings
import wave
from typing import List

import numpy as np
import torch
from diffusers import AutoencoderKLHunyuanVideo
from PIL import Image, ImageDraw

from .models import checkpoint_io, hunyuan_avatar_keys
from .models.avatar_encoders import (CLIP_DIR, DETECTOR_FILE, IMAGE_SUFFIX, LLAVA_DIR, LLAVA_TEMPLATE, NEGATIVE_PROMPT,
                                     PROMPT_PREFIX, WHISPER_DIR)
from .models.hunyuan_avatar_checkpoint import BF16_FILE, FP8_FILE, FP8_MAP_FILE, TRANSFORMERS_DIR
from .models.hunyuan_avatar_transformer import HunyuanAvatarTransformer
from .models.hunyuan_vae import VENDOR_CLASS, VENDOR_WEIGHTS

DEMO_DIR = "reelsmith-demo"
FOLDER_NAME = "HunyuanVideo-Avatar"
VAE_DIR = pathlib.Path("ckpts") / "hunyuan-video-t2v-720p" / "vae"
LATENT_CHANNELS = 16

# DESIGN.md's tiny HunyuanVideo (in/out 4, 2 heads of 10, text width 16, pooled 8, rope axes (2, 4, 4), one refiner
# and one single block) with 2 double blocks, because the audio adapters follow every other double block (block 1
# here); whisper features of 4 channels instead of 384. The transformer tests use it as it is.
TINY_TRANSFORMER = dict(
    in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=2,
    num_single_layers=1, num_refiner_layers=1, text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
    audio_window=10, audio_layers=5, audio_channels=4, audio_hidden_dim=16, adapter_inner_dim=8,
)
# The demo's: the same with the real latent channel count, so the sampler and the VAE fit it.
DEMO_TRANSFORMER = dict(TINY_TRANSFORMER, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS)
# HunyuanVideo's VAE structure (4 stages: 8x spatial, 4x temporal compression, causal mid-block attention) at width 8
TINY_VAE = dict(latent_channels=LATENT_CHANNELS, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
                norm_num_groups=4)
LLAVA_WIDTH = TINY_TRANSFORMER["text_embed_dim"]
CLIP_WIDTH = TINY_TRANSFORMER["pooled_projection_dim"]
TINY_WHISPER = dict(d_model=TINY_TRANSFORMER["audio_channels"], encoder_layers=TINY_TRANSFORMER["audio_layers"] - 1,
                    encoder_attention_heads=2, encoder_ffn_dim=8, decoder_layers=1, decoder_attention_heads=2,
                    decoder_ffn_dim=8, num_mel_bins=80, max_source_positions=1500, vocab_size=16,
                    max_target_positions=8, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3)
LLAMA_SPECIALS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<pad>", "<image>",
                  "[UNK]")
CLIP_SPECIALS = ("<|startoftext|>", "<|endoftext|>", "[UNK]")
DEMO_PROMPT = "A woman talks to the camera in a bright office, natural expressions, soft daylight."
FP8_MAX = 448.0


# ------------------------------------------------------------------ fp8 files (the vendor's _fp8.pt + _fp8_map.pt)

def is_fp8_weight(vendor_key: str, tensor: torch.Tensor) -> bool:
    """The tensors the vendor's fp8 file stores as fp8: Linear weights of the double and single blocks."""
    return vendor_key.startswith(("double_blocks.", "single_blocks.")) and vendor_key.endswith(".weight") \
        and tensor.ndim == 2


def quantize(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float -> (fp8 e4m3fn, bf16-representable float32 scale), weight ~= fp8 * scale."""
    scale = (tensor.abs().amax() / FP8_MAX).to(torch.bfloat16).float()
    return (tensor / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def snap_to_fp8(model: HunyuanAvatarTransformer) -> dict[str, torch.Tensor]:
    """Round the block Linear weights of `model` to what an fp8 file can hold, so that the bf16 and fp8 files written
    from it carry identical values. Returns the vendor-named state dict (float32)."""
    vendor = {k: v.detach().clone() for k, v in hunyuan_avatar_keys.ours_to_vendor(model.state_dict()).items()}
    for key, tensor in vendor.items():
        if is_fp8_weight(key, tensor):
            fp8, scale = quantize(tensor)
            vendor[key] = fp8.float() * scale
    hidden = model.config.num_attention_heads * model.config.attention_head_dim
    model.load_state_dict(hunyuan_avatar_keys.vendor_to_ours(vendor, hidden, "demo"))
    return vendor


def write_vendor_pt(vendor: dict, path: pathlib.Path, config: dict) -> pathlib.Path:
    """`mp_rank_00_model_states.pt`: the state dict under `module`, the config beside it."""
    torch.save({"module": {k: v.contiguous() for k, v in vendor.items()}, "dp_world_size": 1}, path)
    checkpoint_io.write_config_hint(path, config)
    return path


def write_vendor_fp8(vendor: dict, folder: pathlib.Path, config: dict) -> tuple[pathlib.Path, pathlib.Path]:
    """The `_fp8.pt` + `_fp8_map.pt` pair: fp8 weights with one scale per quantised linear."""
    weights, scales = {}, {}
    for key, tensor in vendor.items():
        if is_fp8_weight(key, tensor):
            weights[key], scales[key[: -len(".weight")]] = quantize(tensor)
        else:
            weights[key] = tensor.contiguous()
    path, map_path = folder / FP8_FILE, folder / FP8_MAP_FILE
    torch.save({"module": weights}, path)
    torch.save({"module": scales}, map_path)
    checkpoint_io.write_config_hint(path, config)
    return path, map_path


def write_transformer_files(vendor: dict, folder: pathlib.Path, config: dict) -> list[pathlib.Path]:
    """`mp_rank_00_model_states.pt` and the fp8 pair in `folder`, the config beside each weights file."""
    folder.mkdir(parents=True, exist_ok=True)
    return [write_vendor_pt(vendor, folder / BF16_FILE, config), *write_vendor_fp8(vendor, folder, config)]


# ------------------------------------------------------------------ tiny modules

def randomise(model: torch.nn.Module, seed: int, scale: float = 0.2) -> torch.nn.Module:
    """Every weight re-drawn (norm weights near one): tables that start at zero would hide mapping mistakes."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator).to(parameter.dtype)
            near_one = "norm" in name and parameter.ndim == 1 and name.endswith("weight")
            parameter.copy_(1.0 + 0.1 * noise if near_one else noise * scale)
    return model.eval().requires_grad_(False)


def tiny_transformer(seed: int = 0, config: dict | None = None) -> HunyuanAvatarTransformer:
    torch.manual_seed(seed)
    return randomise(HunyuanAvatarTransformer(**(config or DEMO_TRANSFORMER)), seed)


def tiny_vae(seed: int = 0) -> AutoencoderKLHunyuanVideo:
    torch.manual_seed(seed)
    return randomise(AutoencoderKLHunyuanVideo(**TINY_VAE), seed, scale=0.1)


def vendor_vae_config(vae: AutoencoderKLHunyuanVideo) -> dict:
    """The vendor's AutoencoderKLCausal3D config.json for a diffusers HunyuanVideo VAE (its field names)."""
    config = vae.config
    return {"_class_name": VENDOR_CLASS, "in_channels": config.in_channels, "out_channels": config.out_channels,
            "down_block_types": ["DownEncoderBlockCausal3D"] * len(config.block_out_channels),
            "up_block_types": ["UpDecoderBlockCausal3D"] * len(config.block_out_channels),
            "block_out_channels": list(config.block_out_channels), "layers_per_block": config.layers_per_block,
            "act_fn": config.act_fn, "latent_channels": config.latent_channels,
            "norm_num_groups": config.norm_num_groups, "sample_size": 256, "sample_tsize": 64,
            "scaling_factor": config.scaling_factor, "time_compression_ratio": config.temporal_compression_ratio,
            "mid_block_add_attention": config.mid_block_add_attention, "mid_block_causal_attn": True}


def write_vae_folder(vae: AutoencoderKLHunyuanVideo, folder: pathlib.Path, prefix: str = "") -> list[pathlib.Path]:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({prefix + k: v.detach().contiguous() for k, v in vae.state_dict().items()}, folder / VENDOR_WEIGHTS)
    (folder / "config.json").write_text(json.dumps(vendor_vae_config(vae), indent=2))
    return [folder / VENDOR_WEIGHTS, folder / "config.json"]


def _words(*texts: str) -> list[str]:
    words: list[str] = []
    for text in texts:
        for special in LLAMA_SPECIALS + CLIP_SPECIALS:
            text = text.replace(special, " ")
        words += [w for w in text.split() if w not in words]
    return words


def _word_tokenizer(specials, words, bos: str, eos: str, pad: str, template: str, **extra):
    """A word-level fast tokenizer over `words` (anything else is [UNK]) whose post-processor adds `template`."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(list(specials) + sorted(set(words) - set(specials)))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    core.post_processor = processors.TemplateProcessing(single=template,
                                                        special_tokens=[(s, vocab[s]) for s in (bos, eos) if s in template])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=bos, eos_token=eos, pad_token=pad,
                                   unk_token="[UNK]", **extra)


def llama_tokenizer():
    words = _words(LLAVA_TEMPLATE.replace("{}", " "), PROMPT_PREFIX, NEGATIVE_PROMPT, IMAGE_SUFFIX, DEMO_PROMPT)
    return _word_tokenizer(LLAMA_SPECIALS, words, "<|begin_of_text|>", "<|eot_id|>", "<pad>",
                           "<|begin_of_text|> $A", additional_special_tokens=["<image>"], padding_side="right")


def clip_tokenizer():
    words = _words(PROMPT_PREFIX, NEGATIVE_PROMPT, DEMO_PROMPT)
    return _word_tokenizer(CLIP_SPECIALS, words, "<|startoftext|>", "<|endoftext|>", "<|endoftext|>",
                           "<|startoftext|> $A <|endoftext|>")


def tiny_llava(tokenizer, seed: int):
    """LLaVA (Llama + CLIP vision tower, 4 image features of a 28 px image) at width LLAVA_WIDTH."""
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=LLAVA_WIDTH, intermediate_size=32, num_hidden_layers=4,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                       pad_token_id=tokenizer.pad_token_id)
    vision = dict(model_type="clip_vision_model", hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                  num_attention_heads=2, image_size=28, patch_size=14)
    config = LlavaConfig(text_config=text, vision_config=vision, vision_feature_layer=-2,
                         image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", projector_hidden_act="gelu")
    torch.manual_seed(seed)
    return randomise(LlavaForConditionalGeneration(config), seed)


def tiny_clip(tokenizer, seed: int):
    """The whole CLIPModel (text + vision), as the vendor's text_encoder_2 holds it, text width CLIP_WIDTH."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(text_config=dict(vocab_size=len(tokenizer), hidden_size=CLIP_WIDTH, intermediate_size=16,
                                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
                        vision_config=dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=28, patch_size=14), projection_dim=8)
    torch.manual_seed(seed)
    return randomise(CLIPModel(config), seed)


def tiny_whisper(seed: int):
    from transformers import WhisperConfig, WhisperModel

    torch.manual_seed(seed)
    return randomise(WhisperModel(WhisperConfig(**TINY_WHISPER)), seed)


class DemoFaceNet(torch.nn.Module):
    """det_align/detface.pt's interface: (image [1, 3, h, w] RGB 0..1, three (x, y) cell grids) -> [1, N, 16] rows
    (centre x, centre y, width, height in input pixels, objectness, ten landmark values, class score). One box over
    the upper centre, objectness = the picture's contrast (8 x its standard deviation, at most 1)."""

    def forward(self, image: torch.Tensor, grids: List[torch.Tensor]) -> torch.Tensor:
        height, width = float(image.shape[2]), float(image.shape[3])
        rows = torch.zeros(1, 1, 16)
        rows[0, 0, 0] = 0.5 * width
        rows[0, 0, 1] = 0.4 * height
        rows[0, 0, 2] = 0.3 * width
        rows[0, 0, 3] = 0.3 * height
        rows[0, 0, 4] = (image.std() * 8.0).clamp(0.0, 1.0)
        rows[0, 0, 15] = 1.0
        return rows


def write_face_detector(path: pathlib.Path) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format the vendor ships
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(DemoFaceNet()).save(str(path))
    return path


# ------------------------------------------------------------------ the vendor folder

class TinyAvatarSet:
    """One set of tiny modules; `write_vendor_folder` writes them in the vendor's layout."""

    def __init__(self, seed: int = 0):
        self.transformer = tiny_transformer(seed)
        self.vendor_state = snap_to_fp8(self.transformer)
        self.vae = tiny_vae(seed + 1)
        self.llama_tokenizer = llama_tokenizer()
        self.clip_tokenizer = clip_tokenizer()
        self.llava = tiny_llava(self.llama_tokenizer, seed + 2)
        self.clip = tiny_clip(self.clip_tokenizer, seed + 3)
        self.whisper = tiny_whisper(seed + 4)

    def write_vendor_folder(self, root: pathlib.Path) -> pathlib.Path:
        """`root` as `hf download tencent/HunyuanVideo-Avatar --local-dir root` leaves it (tiny)."""
        from transformers import WhisperFeatureExtractor

        root = pathlib.Path(root)
        ckpts = root / "ckpts"
        write_transformer_files(self.vendor_state, root / TRANSFORMERS_DIR, DEMO_TRANSFORMER)
        write_vae_folder(self.vae, root / VAE_DIR)
        self.llava.save_pretrained(ckpts / LLAVA_DIR, max_shard_size="20KB")  # sharded, with its index
        self.llama_tokenizer.save_pretrained(ckpts / LLAVA_DIR)
        self.clip.save_pretrained(ckpts / CLIP_DIR)
        self.clip_tokenizer.save_pretrained(ckpts / CLIP_DIR)
        self.whisper.save_pretrained(ckpts / WHISPER_DIR)
        WhisperFeatureExtractor(feature_size=TINY_WHISPER["num_mel_bins"]).save_pretrained(ckpts / WHISPER_DIR)
        write_face_detector(ckpts / DETECTOR_FILE)
        return root


def write_avatar_demo_models(models_root, seed: int = 200) -> list[pathlib.Path]:
    """The tiny HunyuanVideo-Avatar vendor folder at `models_root/reelsmith-demo/HunyuanVideo-Avatar`."""
    return [TinyAvatarSet(seed).write_vendor_folder(pathlib.Path(models_root) / DEMO_DIR / FOLDER_NAME)]


# ------------------------------------------------------------------ inputs for the demo models

def demo_portrait(width: int = 320, height: int = 384) -> Image.Image:
    """A drawn head and shoulders on a light background (RGB): enough contrast for the demo face detector."""
    image = Image.new("RGB", (width, height), (214, 226, 238))
    draw = ImageDraw.Draw(image)
    cx, cy = width // 2, int(height * 0.4)
    face_w, face_h = int(width * 0.28), int(height * 0.3)
    draw.ellipse([cx - 2 * face_w, int(height * 0.72), cx + 2 * face_w, height + face_h], fill=(40, 60, 110))
    draw.ellipse([cx - face_w // 2 - 8, cy - face_h // 2 - 14, cx + face_w // 2 + 8, cy + face_h // 4],
                 fill=(70, 45, 30))
    draw.ellipse([cx - face_w // 2, cy - face_h // 2, cx + face_w // 2, cy + face_h // 2], fill=(228, 184, 150))
    for side in (-1, 1):
        ex = cx + side * face_w // 5
        draw.ellipse([ex - 6, cy - 14, ex + 6, cy - 4], fill=(30, 30, 40))
    draw.arc([cx - face_w // 5, cy + face_h // 10, cx + face_w // 5, cy + face_h // 4], 10, 170, fill=(150, 50, 50),
             width=4)
    return image


def demo_speech(seconds: float = 0.5, sample_rate: int = 44100, channels: int = 2) -> np.ndarray:
    """[channels, samples] float32: a voiced-sounding tone with syllable-rate loudness changes (not silent)."""
    t = np.arange(int(round(seconds * sample_rate)), dtype=np.float64) / sample_rate
    pitch = 140.0 + 20.0 * np.sin(2 * math.pi * 0.7 * t)
    voice = sum(np.sin(2 * math.pi * k * np.cumsum(pitch) / sample_rate) / k for k in (1, 2, 3, 4))
    syllables = 0.55 + 0.45 * np.sin(2 * math.pi * 4.0 * t)
    mono = (0.25 * voice * syllables).astype(np.float32)
    return np.stack([mono * (1.0 - 0.1 * c) for c in range(channels)])


def write_speech_wav(path, seconds: float, sample_rate: int = 44100) -> pathlib.Path:
    """`demo_speech` (stereo) as a 16-bit PCM WAV file, which ComfyUI's LoadAudio reads."""
    samples = demo_speech(seconds, sample_rate)
    pcm = (np.clip(samples, -1, 1).T * 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(samples.shape[0])
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(pcm.tobytes())
    return pathlib.Path(path)
