"""The T5-v1.1-XXL text encoder LTX-Video uses, from a diffusers folder's `text_encoder/` + `tokenizer/` or
from a ComfyUI `text_encoders/` file (`t5xxl_fp16.safetensors`, `t5xxl_fp8_e4m3fn_scaled.safetensors`).

ComfyUI's T5-XXL files hold transformers names (`shared.weight`, `encoder.block.N...`; the relative-position
table only in block 0), optionally fp8 with a per-layer `scale_weight`; they carry no tokenizer (ComfyUI
tokenizes with its own `comfy/text_encoders/t5_tokenizer`). So a file needs a tokenizer folder: the one the
caller gives, else ComfyUI's own (found through host.py), else a clear error.
Prompts are encoded as diffusers' LTXPipeline does: padded to `max_tokens` (128), truncated, `</s>`
appended, the encoder run without an attention mask, and the mask returned beside the hidden states.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass

import torch
from transformers import AutoTokenizer, T5Config, T5EncoderModel

from .. import host
from ..errors import ModelFilesError
from . import checkpoint_io
from .ltx_variants import CONFIG_DIR, TEXT_ENCODER_CONFIG
from .umt5_keys import convert_umt5_comfyui_to_transformers

MAX_TOKENS = 128
T5_FILES = "t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn_scaled.safetensors (comfyanonymous/flux_text_encoders)"
_NOT_T5 = ("The file is not the T5-v1.1-XXL text encoder LTX-Video uses (a UMT5 for Wan, a full encoder-decoder, "
           f"or another model?). Use {T5_FILES}.")


@dataclass
class T5TextEncoder:
    model: T5EncoderModel
    tokenizer: object
    source: str

    @torch.no_grad()
    def encode(self, prompts: list[str], device: torch.device,
               max_tokens: int = MAX_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (embeds [B, max_tokens, d_model] float32, attention_mask [B, max_tokens] long), as LTXPipeline."""
        if isinstance(prompts, str):
            prompts = [prompts]
        tokens = self.tokenizer(
            list(prompts), padding="max_length", max_length=max_tokens, truncation=True,
            add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )
        ids = tokens.input_ids.to(device)
        hidden = self.model(ids).last_hidden_state  # LTXPipeline runs T5 without the mask
        return hidden.float(), tokens.attention_mask.to(device)


def resolve_t5_tokenizer(tokenizer_path, source: str) -> pathlib.Path:
    """The caller's tokenizer folder, else ComfyUI's own T5 tokenizer; a clear error when neither exists."""
    if tokenizer_path is not None:
        folder = pathlib.Path(tokenizer_path)
        if not folder.is_dir():
            raise ModelFilesError(f"{source}: the T5 tokenizer folder {folder} does not exist.")
        return folder
    folder = host.comfyui_t5_tokenizer_dir()
    if folder is None:
        raise ModelFilesError(
            f"{source}: this ComfyUI text encoder file carries no tokenizer, and there is no ComfyUI here to "
            "borrow its comfy/text_encoders/t5_tokenizer from. Give a T5 tokenizer folder (spiece.model or "
            "tokenizer.json): the `tokenizer/` folder of a Lightricks/LTX-Video diffusers download "
            "(hf download Lightricks/LTX-Video --include 'tokenizer/*' --local-dir <folder>), or the "
            "comfy/text_encoders/t5_tokenizer folder of a ComfyUI checkout."
        )
    return folder


def _load_tokenizer(folder: pathlib.Path, source: str):
    if not any((folder / f).exists() for f in ("spiece.model", "tokenizer.json")):
        raise ModelFilesError(f"{source}: the tokenizer folder {folder} has neither spiece.model nor tokenizer.json.")
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as error:
        raise ModelFilesError(f"{folder}: cannot load the T5 tokenizer ({error}).") from error


def _config_for(path: pathlib.Path) -> T5Config:
    """The shipped T5-XXL config, or the one beside a tiny demo/test file (`<file>.reelsmith.json`)."""
    data = checkpoint_io.read_config_hint(path) or json.loads((CONFIG_DIR / TEXT_ENCODER_CONFIG).read_text())
    return T5Config(**{k: v for k, v in data.items() if not k.startswith("_")})


def load_t5_encoder(path, text_encoder_format: str, tokenizer_path=None,
                    dtype: torch.dtype = torch.bfloat16) -> T5TextEncoder:
    """`text_encoder_format`: "transformers" (a diffusers `text_encoder/` folder; `tokenizer_path` its
    `tokenizer/`) or "comfyui" (a `text_encoders/` file; `tokenizer_path` optional, see the module doc)."""
    path = pathlib.Path(path)
    source = str(path)
    if text_encoder_format == "transformers":
        if tokenizer_path is None:
            raise ModelFilesError(f"{source}: no tokenizer folder given for this diffusers text encoder.")
        tokenizer = _load_tokenizer(pathlib.Path(tokenizer_path), source)
        try:
            model = T5EncoderModel.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True)
        except Exception as error:
            raise ModelFilesError(f"{path}: cannot load the T5 text encoder ({error}).") from error
        return T5TextEncoder(model.eval().requires_grad_(False), tokenizer, source)
    if text_encoder_format != "comfyui":
        raise ValueError(f"unknown text encoder format {text_encoder_format!r}")
    if not path.is_file():
        raise ModelFilesError(f"{source}: the T5 text encoder file is missing. Download it with:\n  "
                              f"hf download comfyanonymous/flux_text_encoders {path.name} --local-dir {path.parent}")
    tokenizer = _load_tokenizer(resolve_t5_tokenizer(tokenizer_path, source), source)
    raw = checkpoint_io.read_state_dict(path)
    state_dict = convert_umt5_comfyui_to_transformers(
        raw, dtype=dtype, source=source, model_name="T5-XXL text encoder", wrong_file_hint=_NOT_T5,
        suggested_files=T5_FILES)
    with checkpoint_io.empty_weights():
        model = T5EncoderModel(_config_for(path))
    checkpoint_io.load_into_meta_model(model, state_dict, source, "ComfyUI T5-XXL text encoder file", dtype=dtype)
    return T5TextEncoder(model.eval().requires_grad_(False), tokenizer, source)
