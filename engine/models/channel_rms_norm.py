"""The Wan VAE's RMS norm over channels (optionally followed by SiLU) in one pass over memory.

diffusers' `WanRMS_norm` + SiLU in bf16 is five element-wise passes (float32 normalize, cast, scale, gamma,
SiLU), each a full read and write of a large activation. The Triton kernel here reads a channels-last
activation once and writes the result once (straight into the causal conv's input buffer when the caller
passes one), rounding to the activation dtype at the same points as diffusers does, so the values match
its bf16 ones instead of being merely close. Elsewhere (CPU, channels-first layouts, no Triton) the same
formula runs as torch ops.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

EPS = 1e-12  # F.normalize's default, which WanRMS_norm uses
TORCH_PIECE_ELEMENTS = 2**27  # elements per torch-path call (its float32 temporaries: 0.5 GiB each)

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None

if triton is not None:

    @triton.jit
    def _rms_norm_rows_kernel(x_ptr, gamma_ptr, out_ptr, n_rows, scale, eps, CHANNELS: tl.constexpr,
                              SILU: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
        # One tile of BLOCK_ROWS pixels x all channels; rows are contiguous runs of CHANNELS values (a
        # compile-time constant: a handful of widths per VAE, and the loads vectorise fully).
        rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        cols = tl.arange(0, BLOCK_C)
        col_mask = cols < CHANNELS
        mask = (rows < n_rows)[:, None] & col_mask[None, :]
        offsets = rows.to(tl.int64)[:, None] * CHANNELS + cols[None, :]
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        denom = tl.maximum(tl.sqrt_rn(tl.sum(x * x, axis=1)), eps)
        dtype = out_ptr.dtype.element_ty
        # diffusers: F.normalize in float32, .to(dtype), * scale, * gamma (each op rounds to dtype), SiLU
        y = tl.math.div_rn(x, denom[:, None]).to(dtype).to(tl.float32)
        y = (y * scale).to(dtype).to(tl.float32)
        gamma = tl.load(gamma_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        y = (y * gamma[None, :]).to(dtype).to(tl.float32)
        if SILU:
            y = tl.math.div_rn(y, 1.0 + tl.exp(-y))
        tl.store(out_ptr + offsets, y.to(dtype), mask=mask)

    KERNEL = _rms_norm_rows_kernel
else:
    KERNEL = None

_kernel_failed = False  # set once when the kernel cannot compile here; the torch path takes over
KERNEL_DEVICE_TYPES = {"cuda"}  # CPU tests add "cpu" under TRITON_INTERPRET=1


def triton_available() -> bool:
    return KERNEL is not None and not _kernel_failed


def channels_last_rows(x: torch.Tensor) -> torch.Tensor | None:
    """x [B, C, *spatial] as a [pixels, C] view when its memory is pixel-major with channels innermost
    (channels_last(_3d)); None when that would need a copy."""
    moved = x.movedim(1, -1)
    if not moved.is_contiguous():
        return None
    return moved.view(-1, x.shape[1])


def rms_norm_channels_torch(x: torch.Tensor, gamma: torch.Tensor, scale: float, silu: bool) -> torch.Tensor:
    """diffusers' WanRMS_norm formula (float32 normalize for half types) as torch ops, + optional SiLU."""
    gamma = gamma.reshape(gamma.shape[0], *([1] * (x.dim() - 2)))
    y = F.normalize(x.float(), dim=1).to(x.dtype) * scale * gamma
    return F.silu(y) if silu else y


def launch_rms_norm_rows(x_rows: torch.Tensor, gamma: torch.Tensor, out_rows: torch.Tensor, scale: float,
                         silu: bool) -> None:
    """Run the kernel on [pixels, C] row views."""
    n_rows, channels = x_rows.shape
    block_c = triton.next_power_of_2(channels)
    block_rows = max(1, 4096 // block_c)
    grid = (triton.cdiv(n_rows, block_rows),)
    KERNEL[grid](x_rows, gamma, out_rows, n_rows, float(scale), EPS,
                 CHANNELS=channels, SILU=silu, BLOCK_ROWS=block_rows, BLOCK_C=block_c)


def rms_norm_channels(x: torch.Tensor, gamma: torch.Tensor, scale: float, *, silu: bool,
                      out: torch.Tensor | None = None, use_triton: bool = True) -> torch.Tensor:
    """RMS norm over dim 1 of x [B, C, ...] times `scale` * `gamma` ([C] or diffusers' [C, 1, 1(, 1)]),
    then SiLU if `silu`; written into `out` (same shape as x, any layout) when given."""
    global _kernel_failed
    gamma = gamma.reshape(-1)
    if use_triton and triton_available() and x.device.type in KERNEL_DEVICE_TYPES and x.dtype == gamma.dtype:
        target = out if out is not None else torch.empty_like(x)
        x_rows, out_rows = channels_last_rows(x), channels_last_rows(target)
        if x_rows is not None and out_rows is not None and target.dtype == x.dtype:
            try:
                launch_rms_norm_rows(x_rows, gamma.contiguous(), out_rows, scale, silu)
                return target
            except Exception as error:  # a Triton / driver combination that cannot build it: stay correct
                _kernel_failed = True
                logger.warning("Reelsmith: the fused RMS-norm kernel failed (%s); using torch ops.", error)
    if out is None:
        return rms_norm_channels_torch(x, gamma, scale, silu)
    if x.dim() != 5:
        return out.copy_(rms_norm_channels_torch(x, gamma, scale, silu))
    # A few frames at a time: the torch formula makes float32 temporaries twice the activation's size.
    step = max(1, TORCH_PIECE_ELEMENTS // max(1, x[:, :, :1].numel()))
    for start in range(0, x.shape[2], step):
        out[:, :, start:start + step].copy_(rms_norm_channels_torch(x[:, :, start:start + step], gamma, scale, silu))
    return out
