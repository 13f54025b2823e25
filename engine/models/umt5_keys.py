"""Key names of the UMT5-XXL text encoder Wan uses, in the three layouts a user may have, and its tokenizer.

- transformers `UMT5EncoderModel` (the target; what diffusers repos hold under `text_encoder/`).
- Wan-AI's original `models_t5_umt5-xxl-enc-bf16.pth`: Wan's own T5 module (wan/modules/t5.py, T5Encoder
  with `shared_pos=False`, so every block has its own relative-position table), e.g.
  `blocks.0.attn.q.weight`, `blocks.0.ffn.gate.0.weight`, `blocks.0.pos_embedding.embedding.weight`.
- ComfyUI `models/text_encoders/umt5_xxl_*.safetensors`: already transformers names (ComfyUI's
  comfy/text_encoders/t5.py mirrors them) but without `encoder.embed_tokens.weight` (it is `shared`),
  plus a `spiece_model` uint8 tensor holding the sentencepiece tokenizer, and in `*_fp8_e4m3fn_scaled`
  files fp8 weights with a per-layer `<layer>.scale_weight` and a `scaled_fp8` marker.

The tokenizer is rebuilt from the sentencepiece model in memory (pieces and scores, plus its Unicode
normalisation table) as a transformers T5Tokenizer: no files, no network, no protobuf needed.
"""

from __future__ import annotations

import io
import json
import re
from functools import lru_cache

import torch

from ..errors import CheckpointMismatchError, ModelFilesError
from . import checkpoint_io

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)

_TRANSFORMERS_KEY = re.compile(
    r"^(?:shared|encoder\.embed_tokens|encoder\.final_layer_norm"
    r"|encoder\.block\.\d+\.layer\.0\.(?:SelfAttention\.(?:q|k|v|o|relative_attention_bias)|layer_norm)"
    r"|encoder\.block\.\d+\.layer\.1\.(?:DenseReluDense\.(?:wi_0|wi_1|wo)|layer_norm))\.weight$"
)

# Wan's T5 -> transformers. Wan's feed-forward is `fc2(fc1(x) * gelu_tanh(gate(x)))`; transformers' gated
# one is `wo(gelu_new(wi_0(x)) * wi_1(x))`, so the GELU branch `gate.0` is `wi_0` and `fc1` is `wi_1`.
_ORIGINAL_TOP = {"token_embedding": "shared", "norm": "encoder.final_layer_norm"}
_ORIGINAL_IN_BLOCK = {
    "norm1": "layer.0.layer_norm",
    "attn.q": "layer.0.SelfAttention.q",
    "attn.k": "layer.0.SelfAttention.k",
    "attn.v": "layer.0.SelfAttention.v",
    "attn.o": "layer.0.SelfAttention.o",
    "pos_embedding.embedding": "layer.0.SelfAttention.relative_attention_bias",
    "norm2": "layer.1.layer_norm",
    "ffn.gate.0": "layer.1.DenseReluDense.wi_0",
    "ffn.fc1": "layer.1.DenseReluDense.wi_1",
    "ffn.fc2": "layer.1.DenseReluDense.wo",
}
_ORIGINAL_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_TRANSFORMERS_BLOCK = re.compile(r"^encoder\.block\.(\d+)\.(.+)$")

# Entries of a ComfyUI file that are not weights of the model.
TOKENIZER_KEY = "spiece_model"
_FP8_MARKER = "scaled_fp8"
_WEIGHT_SCALES = (".scale_weight", ".weight_scale")  # old "fp8_scaled" name, ComfyUI's newer quant name
_INPUT_SCALES = (".scale_input", ".input_scale")     # activation scales: unused once weights are dequantized
_QUANT_CONFIG = ".comfy_quant"


def _mismatch(key: str, layout: str, source: str, hint: str,
              model_name: str = "UMT5-XXL text encoder") -> CheckpointMismatchError:
    return CheckpointMismatchError(f"{source}: unexpected key '{key}' for the {layout} layout of the {model_name}. "
                                   f"{hint}")


_NOT_UMT5 = ("The file is not Wan's UMT5-XXL text encoder (a T5-XXL for Flux/SD3, a full encoder-decoder, or "
             "another model?). Use umt5_xxl_fp8_e4m3fn_scaled.safetensors / umt5_xxl_fp16.safetensors or "
             "models_t5_umt5-xxl-enc-bf16.pth.")


def _with_embed_tokens(state_dict: dict) -> dict:
    """transformers ties `encoder.embed_tokens` to `shared`; files hold one of them, the model lists both."""
    if "shared.weight" in state_dict and "encoder.embed_tokens.weight" not in state_dict:
        state_dict["encoder.embed_tokens.weight"] = state_dict["shared.weight"]
    return state_dict


# ------------------------------------------------------------------ Wan-AI original (.pth)

def _rename(key: str, top: dict, in_block: dict, block_in: re.Pattern, block_out: str) -> str | None:
    module, _, param = key.rpartition(".")
    if param != "weight":
        return None
    if module in top:
        return f"{top[module]}.weight"
    match = block_in.match(module)
    if match is None or match.group(2) not in in_block:
        return None
    return f"{block_out}.{match.group(1)}.{in_block[match.group(2)]}.weight"


def convert_umt5_original_to_transformers(state_dict: dict, source: str = "checkpoint") -> dict:
    """Wan-AI `models_t5_umt5-xxl-enc-bf16.pth` -> UMT5EncoderModel state dict (strict on names)."""
    converted = {}
    for key, tensor in state_dict.items():
        new_key = _rename(key, _ORIGINAL_TOP, _ORIGINAL_IN_BLOCK, _ORIGINAL_BLOCK, "encoder.block")
        if new_key is None:
            raise _mismatch(key, "Wan-AI original (.pth)", source, _NOT_UMT5)
        converted[new_key] = tensor
    return _with_embed_tokens(converted)


def convert_umt5_transformers_to_original(state_dict: dict, source: str = "state dict") -> dict:
    """UMT5EncoderModel state dict -> Wan-AI original naming (demo checkpoints in that layout)."""
    top = {v: k for k, v in _ORIGINAL_TOP.items()}
    in_block = {v: k for k, v in _ORIGINAL_IN_BLOCK.items()}
    converted = {}
    for key, tensor in _without_tied_copy(state_dict).items():
        new_key = _rename(key, top, in_block, _TRANSFORMERS_BLOCK, "blocks")
        if new_key is None:
            raise _mismatch(key, "transformers UMT5EncoderModel", source, _NOT_UMT5)
        converted[new_key] = tensor
    return converted


def _without_tied_copy(state_dict: dict) -> dict:
    state_dict = dict(state_dict)
    tied = state_dict.pop("encoder.embed_tokens.weight", None)
    if tied is not None and "shared.weight" not in state_dict:
        state_dict["shared.weight"] = tied
    return state_dict


# ------------------------------------------------------------------ ComfyUI text_encoders/ files

_UMT5_FILES = "umt5_xxl_fp16.safetensors or umt5_xxl_fp8_e4m3fn_scaled.safetensors"


def _weight_scales(state_dict: dict, source: str, suggested_files: str = _UMT5_FILES) -> dict[str, torch.Tensor]:
    """Layer -> per-tensor weight scale of a quantized ComfyUI file (old `scale_weight` or newer
    `weight_scale` + `comfy_quant`); refuses quantization formats other than per-tensor fp8."""
    scales = {}
    for key, tensor in state_dict.items():
        for suffix in _WEIGHT_SCALES:
            if key.endswith(suffix):
                scales[key[: -len(suffix)]] = tensor
        if key.endswith(_QUANT_CONFIG):
            layer_format = json.loads(bytes(tensor.cpu().numpy().tobytes()).decode("utf-8")).get("format")
            if layer_format not in ("float8_e4m3fn", "float8_e5m2"):
                raise CheckpointMismatchError(
                    f"{source}: layer '{key[: -len(_QUANT_CONFIG)]}' is quantized as {layer_format!r}, which "
                    f"Reelsmith cannot read (only per-tensor fp8 is supported). Use {suggested_files}."
                )
    return scales


def convert_umt5_comfyui_to_transformers(state_dict: dict, dtype: torch.dtype = torch.bfloat16,
                                         source: str = "checkpoint", model_name: str = "UMT5-XXL text encoder",
                                         wrong_file_hint: str = _NOT_UMT5,
                                         suggested_files: str = _UMT5_FILES) -> dict:
    """ComfyUI UMT5 text encoder file -> UMT5EncoderModel state dict.

    fp8 weights are dequantized as `w.float() * scale_weight` and stored in `dtype` (read as plain weights
    they would be far off); the tokenizer tensor and quantization bookkeeping are dropped.
    T5 v1.1 encoders (T5-XXL, as LTX-Video uses) share these names (their relative-position table sits in
    block 0 only, which the model's strict load checks), so t5_encoder.py reuses this with its own
    `model_name` / `wrong_file_hint` / `suggested_files` for the messages.
    """
    scales = _weight_scales(state_dict, source, suggested_files)
    converted = {}
    for key, tensor in state_dict.items():
        bookkeeping = key in (TOKENIZER_KEY, _FP8_MARKER) or key.endswith(
            _WEIGHT_SCALES + _INPUT_SCALES + (_QUANT_CONFIG,))
        if bookkeeping:
            continue
        if not _TRANSFORMERS_KEY.match(key):
            raise _mismatch(key, "ComfyUI text_encoders", source, wrong_file_hint, model_name)
        layer = key[: -len(".weight")]
        if layer in scales:
            tensor = (tensor.float() * scales[layer].float()).to(dtype)
        elif tensor.dtype in FP8_DTYPES:
            tensor = tensor.to(dtype)  # unscaled fp8 file: a plain cast is exact
        converted[key] = tensor
    orphans = sorted(layer for layer in scales if f"{layer}.weight" not in state_dict)
    if orphans:
        raise CheckpointMismatchError(
            f"{source}: a weight scale for '{orphans[0]}' has no weight '{orphans[0]}.weight'. The file is damaged "
            f"or not a {model_name}: download it again."
        )
    return _with_embed_tokens(converted)


def quantize_fp8_scaled(state_dict: dict) -> dict:
    """ComfyUI's `fp8_e4m3fn_scaled` text encoder: the blocks' Linear weights as fp8 with a per-tensor
    `<layer>.scale_weight`, and a `scaled_fp8` marker (what the demo's text encoder file carries)."""
    return checkpoint_io.quantize_fp8_scaled(
        state_dict, lambda key, tensor: key.startswith("encoder.block.") and tensor.ndim == 2
        and "relative_attention_bias" not in key)


def convert_umt5_transformers_to_comfyui(state_dict: dict, spiece_model: bytes | None = None,
                                         fp8_scaled: bool = False, source: str = "state dict") -> dict:
    """UMT5EncoderModel state dict -> ComfyUI text_encoders naming (optionally fp8_scaled, with a tokenizer)."""
    converted = {}
    for key, tensor in _without_tied_copy(state_dict).items():
        if not _TRANSFORMERS_KEY.match(key):
            raise _mismatch(key, "transformers UMT5EncoderModel", source, _NOT_UMT5)
        converted[key] = tensor
    if fp8_scaled:
        converted = quantize_fp8_scaled(converted)
    if spiece_model is not None:
        converted[TOKENIZER_KEY] = torch.frombuffer(bytearray(spiece_model), dtype=torch.uint8)
    return converted


# ------------------------------------------------------------------ tokenizers

def _protobuf_fields(data: bytes):
    """(field number, value) of one protobuf message; just enough wire format to read a sentencepiece
    model's normaliser settings without depending on the protobuf package."""
    position = 0

    def varint():
        nonlocal position
        value = shift = 0
        while True:
            byte = data[position]
            position += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7

    while position < len(data):
        tag = varint()
        field, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            yield field, varint()
        elif wire_type == 2:
            length = varint()
            yield field, data[position:position + length]
            position += length
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
            yield field, data[position:position + size]
            position += size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")


def spiece_normalizer_spec(data: bytes) -> dict:
    """The normaliser of a sentencepiece model (ModelProto field 3): its precompiled Unicode charsmap and
    the whitespace flags (protobuf defaults when absent)."""
    spec = {"precompiled_charsmap": b"", "add_dummy_prefix": True, "remove_extra_whitespaces": True}
    normalizer = b""
    for field, value in _protobuf_fields(data):
        if field == 3:
            normalizer = value
    for field, value in _protobuf_fields(normalizer):
        if field == 2:
            spec["precompiled_charsmap"] = bytes(value)
        elif field == 3:
            spec["add_dummy_prefix"] = bool(value)
        elif field == 4:
            spec["remove_extra_whitespaces"] = bool(value)
    return spec


def tokenizer_from_spiece_bytes(data: bytes, source: str = "spiece_model"):
    """A transformers T5Tokenizer equivalent to the sentencepiece model in `data` (the bytes of a ComfyUI
    file's `spiece_model` tensor, or of a `spiece.model` file). Appends `</s>` like UMT5's tokenizer."""
    import sentencepiece
    from tokenizers.models import Unigram
    from transformers import T5Tokenizer

    try:
        processor = sentencepiece.SentencePieceProcessor(model_proto=bytes(data))
        spec = spiece_normalizer_spec(bytes(data))
    except Exception as error:  # sentencepiece raises RuntimeError/OSError with a terse message
        raise ModelFilesError(f"{source}: not a valid sentencepiece tokenizer model ({error}).") from error
    # T5Tokenizer hard-wires pad=0, eos=1, unk=2 and sentencepiece's default whitespace handling.
    if (processor.pad_id(), processor.eos_id(), processor.unk_id()) != (0, 1, 2) or not spec["add_dummy_prefix"] \
            or not spec["remove_extra_whitespaces"]:
        raise ModelFilesError(
            f"{source}: this sentencepiece model is not laid out like UMT5's (pad/eos/unk ids "
            f"{processor.pad_id()}/{processor.eos_id()}/{processor.unk_id()}, expected 0/1/2, and default "
            "whitespace handling). It is not the UMT5 tokenizer."
        )
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    tokenizer = T5Tokenizer(
        vocab=vocab, extra_ids=0, pad_token=vocab[0][0], eos_token=vocab[1][0], unk_token=vocab[2][0],
        _spm_precompiled_charsmap=spec["precompiled_charsmap"] or None,
    )
    if any(processor.is_byte(i) for i in range(len(vocab))):
        # sentencepiece spells characters outside the vocabulary as <0xNN> byte pieces when it has them
        tokenizer._tokenizer.model = Unigram(vocab, unk_id=2, byte_fallback=True)
    return tokenizer


# Pieces of the tiny in-memory tokenizer after <pad>, </s>, <unk> and "▁": enough to cover English prompts.
_TINY_WORDS = ["the", "a", "an", "of", "and", "in", "on", "with", "at", "to", "is", "are", "cat", "dog", "city", "night", "rain", "light", "red", "blue", "green", "slow", "camera", "shot", "video", "man", "woman", "walks", "runs", "street", "sea", "sky", "sun", "car", "fast", "close", "view", "cinematic", "bright", "dark"]
_TINY_CHARS = list("abcdefghijklmnopqrstuvwxyz") + list("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + list("0123456789.,!?'-:;()")


def build_tiny_umt5_tokenizer(vocab_size: int):
    """A UMT5-style tokenizer (pad=0, eos=1, unk=2, appends </s>) with exactly `vocab_size` pieces, built in
    memory, for tests and demo models. Every id is below `vocab_size`."""
    from transformers import T5Tokenizer

    if vocab_size < 4:
        raise ValueError(f"vocab_size must be at least 4 (pad, eos, unk, '▁'), got {vocab_size}")
    pieces = [f"▁{word}" for word in _TINY_WORDS] + _TINY_CHARS + [f"▁{c}" for c in _TINY_CHARS]
    letters = "etaoinshrdlucmfwyp"
    pieces += [a + b for a in letters for b in letters]  # filler bigrams, so any size can be reached
    pieces = list(dict.fromkeys(pieces))[: vocab_size - 4]
    if len(pieces) < vocab_size - 4:
        pieces += [f"▁w{i}" for i in range(vocab_size - 4 - len(pieces))]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(piece, -3.0 - 0.01 * i) for i, piece in enumerate(pieces)]  # whole words outscore spellings
    return T5Tokenizer(vocab=vocab, extra_ids=0)


_TINY_SPIECE_TEXT = """\
A cat sits on a red mat in the sun. The quick brown fox jumps over the lazy dog.
Cinematic shot of a city at night, neon lights, rain on the street, slow camera pan to the left.
A woman walks along the sea at sunset; waves roll in, seagulls fly over the water.
Close-up of a man's face, soft light, shallow depth of field, 35mm film look.
Ein Hund läuft durch den Park. Le chat dort sur le canapé. El perro corre en la playa.
一只猫坐在红色的垫子上。 夜晚的城市，霓虹灯，下雨。 猫が赤いマットの上に座っている。
Aerial view of mountains covered with snow, clouds moving fast, golden hour, 4K, highly detailed.
Two astronauts play chess on the moon while Earth rises behind them; photorealistic, dramatic lighting.
"""


@lru_cache(maxsize=8)
def tiny_spiece_model_bytes(vocab_size: int = 256) -> bytes:
    """A real sentencepiece (unigram) model trained offline on a small built-in text, with UMT5's special ids
    (pad=0, eos=1, unk=2, no bos) and at most `vocab_size` pieces: what a demo ComfyUI text encoder file
    carries as `spiece_model`. Deterministic for a given size."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_TINY_SPIECE_TEXT.splitlines() * 4), model_writer=model,
        vocab_size=vocab_size, hard_vocab_limit=False, model_type="unigram", character_coverage=1.0,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1, minloglevel=2,
    )
    return model.getvalue()
