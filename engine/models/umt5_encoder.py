"""The UMT5-XXL text encoder Wan uses, from a diffusers/transformers folder, Wan-AI's original .pth, or a
ComfyUI `text_encoders/` file (which carries its own sentencepiece tokenizer as a `spiece_model` tensor)."""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass

import torch
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

from ..errors import ModelFilesError
from . import checkpoint_io
from .umt5_keys import (
    convert_umt5_comfyui_to_transformers,
    convert_umt5_original_to_transformers,
    tokenizer_from_spiece_bytes,
)
from .wan_variants import CONFIG_DIR

MAX_TOKENS = 512


@dataclass
class UMT5TextEncoder:
    model: UMT5EncoderModel
    tokenizer: object
    source: str

    @torch.no_grad()
    def encode(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        """-> [B, 512, d_model]: hidden states of the prompt tokens, zeros after them (as Wan was trained)."""
        tokens = self.tokenizer(
            prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True,
            add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )
        ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
        hidden = self.model(ids, attention_mask=mask).last_hidden_state
        return (hidden * mask.unsqueeze(-1).to(hidden.dtype)).float()


def _tokenizer_from_folder(folder: pathlib.Path | None, source: str):
    if folder is None or not folder.is_dir():
        raise ModelFilesError(f"{source}: the tokenizer folder {folder} is missing (spiece.model or tokenizer.json).")
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as error:
        raise ModelFilesError(f"{folder}: cannot load the UMT5 tokenizer ({error}).") from error


def _config_for(path: pathlib.Path) -> UMT5Config:
    data = checkpoint_io.read_config_hint(path) or json.loads((CONFIG_DIR / "umt5_xxl_encoder.json").read_text())
    return UMT5Config(**{k: v for k, v in data.items() if not k.startswith("_")})


def load_umt5_encoder(path, text_encoder_format: str, tokenizer_path=None,
                      dtype: torch.dtype = torch.bfloat16) -> UMT5TextEncoder:
    path = pathlib.Path(path)
    source = str(path)
    if text_encoder_format == "transformers":
        try:
            model = UMT5EncoderModel.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True)
        except Exception as error:
            raise ModelFilesError(f"{path}: cannot load the UMT5 text encoder ({error}).") from error
        tokenizer = _tokenizer_from_folder(pathlib.Path(tokenizer_path) if tokenizer_path else None, source)
        return UMT5TextEncoder(model.eval().requires_grad_(False), tokenizer, source)

    raw = checkpoint_io.read_state_dict(path)
    if text_encoder_format == "wan-original":
        state_dict = convert_umt5_original_to_transformers(raw, source=source)
        tokenizer = _tokenizer_from_folder(pathlib.Path(tokenizer_path) if tokenizer_path else None, source)
        layout = "Wan-AI original UMT5 (.pth)"
    elif text_encoder_format == "comfyui":
        spiece = raw.pop("spiece_model", None)
        if spiece is None:
            raise ModelFilesError(
                f"{path}: this text encoder file carries no tokenizer ('spiece_model'). Use the "
                "umt5_xxl_fp8_e4m3fn_scaled.safetensors or umt5_xxl_fp16.safetensors file from "
                "Comfy-Org/Wan_2.1_ComfyUI_repackaged, or connect CLIPTextEncode conditioning instead."
            )
        state_dict = convert_umt5_comfyui_to_transformers(raw, dtype=dtype, source=source)
        tokenizer = tokenizer_from_spiece_bytes(bytes(spiece.numpy().tobytes()))
        layout = "ComfyUI UMT5 text encoder file"
    else:
        raise ValueError(f"unknown text encoder format {text_encoder_format!r}")
    config = _config_for(path)
    with checkpoint_io.empty_weights():
        model = UMT5EncoderModel(config)
    expected = set(model.state_dict())
    # transformers ties encoder.embed_tokens to shared; a checkpoint holds only one of them
    if "encoder.embed_tokens.weight" in expected and "encoder.embed_tokens.weight" not in state_dict \
            and "shared.weight" in state_dict:
        state_dict["encoder.embed_tokens.weight"] = state_dict["shared.weight"]
    checkpoint_io.load_into_meta_model(model, state_dict, source, layout, dtype=dtype)
    return UMT5TextEncoder(model.eval().requires_grad_(False), tokenizer, source)
