"""Attention kernel choice for one diffusers model, through diffusers' attention dispatcher.

Choices (`ATTENTION_BACKENDS`): `auto`, `sdpa` (PyTorch scaled_dot_product_attention, its own kernel
choice), `cudnn` (PyTorch SDPA restricted to the cuDNN kernel), `sage` (SageAttention, `pip install
sageattention`), `flash3` (FlashAttention-3, Hopper only, module `flash_attn_interface`), `fp8` (our
INT8-QK / FP8-PV Triton kernel for Hopper, attention_fp8.py, on the self-attention of Wan and LTX-Video only;
cross-attention stays on PyTorch SDPA; see attention_fp8_processors.py).

The backend is set on each attention processor of the model (`processor._attention_backend`), never on
diffusers' process-wide default: `ModelMixin.set_attention_backend` also changes that default and
`reset_attention_backend` does not restore it, which would leak one model's choice into every other model
in the ComfyUI process. `fp8` is not a diffusers backend: it swaps our own processors onto the model's
self-attention modules (again per model), and any other choice puts the stock processors back.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from ..errors import BackendUnavailableError, InvalidInputError
from .attention_fp8_processors import (apply_fp8_self_attention, fp8_self_attention_refusal, is_fp8_processor,
                                      remove_fp8_self_attention)

ATTENTION_BACKENDS = ("auto", "sdpa", "cudnn", "sage", "flash3", "fp8")

# Reelsmith name -> diffusers AttentionBackendName value (checked against diffusers 0.42.1).
DIFFUSERS_BACKEND_NAMES = {
    "sdpa": "native",
    "cudnn": "_native_cudnn",
    "sage": "sage",
    "flash3": "_flash_3",
}


def _dispatch_module():
    from diffusers.models import attention_dispatch

    return attention_dispatch


def _sage_importable() -> bool:
    flag = getattr(_dispatch_module(), "_CAN_USE_SAGE_ATTN", None)  # diffusers' own import + version check
    if flag is not None:
        return bool(flag)
    return importlib.util.find_spec("sageattention") is not None


def _flash3_importable() -> bool:
    flag = getattr(_dispatch_module(), "_CAN_USE_FLASH_ATTN_3", None)
    if flag is not None:
        return bool(flag)
    return importlib.util.find_spec("flash_attn_interface") is not None


def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def _capability(device: torch.device) -> tuple[int, int] | None:
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(device)


def _unavailable_reason(backend: str, device: torch.device) -> str | None:
    """Why `backend` cannot run on `device` (None when it can)."""
    capability = _capability(device)
    if backend == "sdpa":
        return None
    if backend == "cudnn":
        if capability is None:
            return "cuDNN attention runs on NVIDIA GPUs only; choose 'sdpa' here."
        if not torch.backends.cudnn.is_available():
            return "this PyTorch build has no cuDNN; install a CUDA build of PyTorch or choose 'sdpa'."
        if capability < (8, 0):
            return "cuDNN attention needs an Ampere or newer GPU (compute capability 8.0+); choose 'sdpa'."
        return None
    if backend == "sage":
        if capability is None:
            return "SageAttention runs on NVIDIA GPUs only; choose 'sdpa' here."
        if not _sage_importable():
            required = getattr(_dispatch_module(), "_REQUIRED_SAGE_VERSION", "2.1.1")
            return (
                f"SageAttention is not installed (or older than {required}): run "
                f"`pip install 'sageattention>={required}'` in ComfyUI's Python, or choose 'cudnn' / 'sdpa'."
            )
        return None
    if backend == "flash3":
        if capability is None or capability[0] != 9:
            return (
                "FlashAttention-3 runs on Hopper GPUs (H100, H200, compute capability 9.x) only; "
                "choose 'cudnn' or 'sdpa'."
            )
        if not _flash3_importable():
            return (
                "FlashAttention-3 is not installed: build it from the `hopper/` folder of "
                "https://github.com/Dao-AILab/flash-attention (`cd hopper && python setup.py install`, which "
                "provides the `flash_attn_interface` module), or choose 'cudnn' / 'sdpa'."
            )
        return None
    if backend == "fp8":
        if capability is None:
            return "the FP8 attention kernel runs on NVIDIA Hopper GPUs only; choose 'sdpa' here."
        if capability < (9, 0):
            return ("the FP8 attention kernel needs a Hopper or newer GPU (H100, H200: compute capability "
                    "9.0+); choose 'cudnn' or 'sdpa'.")
        if not _triton_importable():
            return ("Triton is not installed: PyTorch's CUDA wheels for Linux bring it, otherwise run "
                    "`pip install triton` in ComfyUI's Python, or choose 'cudnn' / 'sdpa'.")
        return None
    raise InvalidInputError(
        f"Unknown attention backend '{backend}'. Choose one of: {', '.join(ATTENTION_BACKENDS)}."
    )


def available_attention_backends(device) -> list[str]:
    """The concrete backends (no 'auto') usable on `device`; 'sdpa' is always there."""
    device = torch.device(device)
    return [name for name in ATTENTION_BACKENDS[1:] if _unavailable_reason(name, device) is None]


def resolve_attention_backend(choice: str, device, *, fp8_fits: bool = False) -> str:
    """Turn a user choice into a concrete backend for `device`.

    `auto` on Hopper GPUs picks 'fp8' where `fp8_fits` (the model's self-attention is one the kernel takes;
    `apply_attention_backend` works that out) and Triton is there, else cuDNN; 'sdpa' everywhere else.
    Measured on an H100 at Wan 720p, one layer: fp8 142 ms, cuDNN 204 ms (SageAttention-1 260 ms, PyTorch
    flash 330 ms on an H200). 'fp8' is quantised attention, so it changes the output: a whole Wan 2.2 A14B
    forward stayed at cosine 0.99987 to cuDNN's (random weights, 480p and 720p), above the 0.995 a default
    fast path must keep; choose 'cudnn' for exact bf16 attention. An explicit choice that cannot run here
    raises BackendUnavailableError saying what to install or which GPU it needs.
    """
    if choice not in ATTENTION_BACKENDS:
        raise InvalidInputError(
            f"Unknown attention backend '{choice}'. Choose one of: {', '.join(ATTENTION_BACKENDS)}."
        )
    device = torch.device(device)
    if choice == "auto":
        capability = _capability(device)
        if capability is not None and capability[0] == 9:
            if fp8_fits and _unavailable_reason("fp8", device) is None:
                return "fp8"
            if _unavailable_reason("cudnn", device) is None:
                return "cudnn"
        return "sdpa"
    reason = _unavailable_reason(choice, device)
    if reason is not None:
        raise BackendUnavailableError(f"Attention backend '{choice}' is not usable on {device}: {reason}")
    return choice


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def attention_processors(model: nn.Module):
    """The processors of `model`'s diffusers attention modules (each carries its backend and parallel config)."""
    for module in model.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_attention_backend"):
            yield processor


def apply_attention_backend(model: nn.Module, backend: str, device=None, fp8_options: dict | None = None) -> str:
    """Make every attention processor of `model` use `backend`, leaving diffusers' process-wide default
    alone. `auto` is resolved for `device` (default: where the model's weights are). Returns the concrete
    backend name. Other models keep their own choice (each processor carries its own).

    `fp8` gives the self-attention modules our FP8 processors and leaves every other attention on PyTorch
    SDPA; `fp8_options` (implementation, config, qk_dtype) go to `apply_fp8_self_attention`."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

    if backend == "auto":
        backend = resolve_attention_backend("auto", device if device is not None else _model_device(model),
                                            fp8_fits=fp8_self_attention_refusal(model) is None)
    elif backend not in ATTENTION_BACKENDS[1:]:
        raise InvalidInputError(
            f"Unknown attention backend '{backend}'. Choose one of: {', '.join(ATTENTION_BACKENDS)}."
        )
    elif device is not None:
        backend = resolve_attention_backend(backend, device)
    diffusers_backend = AttentionBackendName(DIFFUSERS_BACKEND_NAMES["sdpa" if backend == "fp8" else backend])
    try:
        _check_attention_backend_requirements(diffusers_backend)
    except RuntimeError as error:
        raise BackendUnavailableError(f"Attention backend '{backend}' is not usable: {error}") from error
    processors = list(attention_processors(model))
    if not processors:
        raise InvalidInputError(
            f"{type(model).__name__} has no diffusers attention processors that take a backend; "
            "the attention backend cannot be chosen for it."
        )
    if backend == "fp8":
        apply_fp8_self_attention(model, diffusers_backend, **(fp8_options or {}))  # checks before it swaps
    else:
        remove_fp8_self_attention(model)
    for processor in attention_processors(model):
        processor._attention_backend = diffusers_backend
    return backend


AUTO_FP8_NOTE = ("attention auto -> fp8: INT8/FP8 quantised self-attention (a Wan A14B forward measured cosine "
                 "0.9999 to exact attention); choose attention 'cudnn' for exact bf16 attention")


def auto_choice_notes(choice: str, backend: str) -> list[str]:
    """What the loader tells the user when 'auto' picked a backend that changes the output."""
    return [AUTO_FP8_NOTE] if choice == "auto" and backend == "fp8" else []


def model_attention_backend(model: nn.Module) -> str | None:
    """The Reelsmith name of the backend the model's processors use (None: diffusers' default)."""
    if any(is_fp8_processor(p) for p in attention_processors(model)):
        return "fp8"
    reverse = {value: key for key, value in DIFFUSERS_BACKEND_NAMES.items()}
    names = {getattr(p._attention_backend, "value", p._attention_backend) for p in attention_processors(model)}
    if len(names) != 1:
        return None
    name = names.pop()
    return reverse.get(name, name) if name is not None else None
