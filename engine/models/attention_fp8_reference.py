"""Pure-PyTorch reference of the FP8 attention kernel's quantisation scheme (see attention_fp8.py).

It follows the kernel step by step (same token groups, same scales, same rounding, the same online softmax
over key blocks with P quantised against the running row maximum), so the Triton kernel can be checked
against it on a CPU (Triton's interpreter) and the scheme itself against exact attention. It is slow and
materialises S x BLOCK_N scores at a time: meant for tests and small debugging runs only.

The scheme (SageAttention-2 style, written from the papers' descriptions):
- K is smoothed: its per-channel mean over the tokens is subtracted. Every score of a query row shifts by
  the same q.mean(K), so the softmax is unchanged, but the values left to quantise are centred and small.
- Q and K are quantised to INT8 (or FP8 e4m3) with one fp32 scale per group of `q_group` / `k_group`
  consecutive tokens (per head). The softmax scale and log2(e) are folded into Q's scales, so the integer
  product times the two scales is the score in base-2 units and the softmax uses exp2.
- V is smoothed too: its per-channel mean is subtracted before it is quantised to FP8 e4m3 with one scale per
  channel (over all tokens, per head), and added back to the output (each softmax row sums to 1). Without it
  a V with channel offsets makes the P.V accumulator grow with every key block, and Hopper's FP8 MMA adds
  into a large accumulator with only about 14 bits.
- P = exp2(s - running max) lies in [0, 1]; it is multiplied by 448 (e4m3's largest value) and cast to FP8
  for the P·V product, accumulated in fp32; the 448 and V's scales are divided out at the end, together
  with the row sum l, which is summed from the unquantised fp32 P.
"""

from __future__ import annotations

import math

import torch

from ..errors import InvalidInputError

FP8_MAX = 448.0  # largest finite float8_e4m3fn value
INT8_MAX = 127.0
LOG2E = 1.4426950408889634
LAYOUTS = ("bshd", "bhsd")
QK_DTYPES = ("int8", "fp8")
HEAD_DIMS = (64, 128)
# the scheme's token groups: one Q scale per 32 tokens; one K scale per 128, which the kernel's key blocks
# (at most 128 tokens) never straddle, so a block's scores share one K scale
Q_GROUP = 32
K_GROUP = 128


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str, qk_dtype: str,
                 q_group: int, k_group: int) -> None:
    """Refuse what the kernel does not do, with a message that says what it does."""
    if layout not in LAYOUTS:
        raise InvalidInputError(f"FP8 attention layout '{layout}' is not one of {', '.join(LAYOUTS)}.")
    if qk_dtype not in QK_DTYPES:
        raise InvalidInputError(f"FP8 attention qk_dtype '{qk_dtype}' is not one of {', '.join(QK_DTYPES)}.")
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise InvalidInputError(
            f"FP8 attention takes q, k, v of one 4-d shape (self-attention); got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}.")
    if q.shape[-1] not in HEAD_DIMS:
        raise InvalidInputError(
            f"FP8 attention supports head dims {HEAD_DIMS}; got {q.shape[-1]}. Choose the 'cudnn' or 'sdpa' backend.")
    for name, group in (("q_group", q_group), ("k_group", k_group)):
        if group not in (16, 32, 64, 128, 256):
            raise InvalidInputError(f"FP8 attention {name} must be 16, 32, 64, 128 or 256 tokens; got {group}.")


def to_bhsd(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x if layout == "bhsd" else x.transpose(1, 2)


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """The kernel's float -> int8 rounding: add +-0.5, then truncate toward zero."""
    return torch.where(x >= 0, x + 0.5, x - 0.5).trunc()


def quantise_groups(x: torch.Tensor, group: int, qk_dtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, H, S, D] fp32 -> (values [B, H, S_pad, D] fp32 holding int8 / e4m3 numbers, scales
    [B, H, S_pad // group]); S is zero-padded to a whole number of groups, as in the kernel's buffers."""
    batch, heads, tokens, dim = x.shape
    padded = math.ceil(tokens / group) * group
    x = torch.nn.functional.pad(x, (0, 0, 0, padded - tokens))
    grouped = x.reshape(batch, heads, padded // group, group, dim)
    top = INT8_MAX if qk_dtype == "int8" else FP8_MAX
    scales = grouped.abs().amax(dim=(3, 4)).clamp_min(1e-12) / top
    scaled = grouped / scales[..., None, None]
    if qk_dtype == "int8":
        values = round_half_away(scaled)
    else:
        values = scaled.to(torch.float8_e4m3fn).float()
    return values.reshape(batch, heads, padded, dim), scales


def quantise_v_per_channel(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """v [B, H, S, D] fp32 -> (e4m3 values of v - mean as fp32, scales [B, H, D], means [B, H, D])."""
    means = v.mean(dim=2)
    centred = v - means[:, :, None, :]
    scales = centred.abs().amax(dim=2).clamp_min(1e-12) / FP8_MAX
    return (centred / scales[:, :, None, :]).to(torch.float8_e4m3fn).float(), scales, means


def fp8_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str = "bshd", *,
                            qk_dtype: str = "int8", q_group: int = Q_GROUP, k_group: int = K_GROUP, block_n: int = 64,
                            sm_scale: float | None = None) -> torch.Tensor:
    """Attention of q, k, v ([B, S, H, D] for 'bshd', [B, H, S, D] for 'bhsd'; no mask, non-causal) through
    the kernel's quantisation scheme, processing keys in blocks of `block_n` like the kernel. Returns the
    output in the input's layout and dtype."""
    check_inputs(q, k, v, layout, qk_dtype, q_group, k_group)
    dtype = q.dtype
    q, k, v = (to_bhsd(x, layout).float() for x in (q, k, v))
    tokens, dim = q.shape[2], q.shape[3]
    scale = (sm_scale if sm_scale is not None else dim ** -0.5) * LOG2E

    k = k - k.mean(dim=2, keepdim=True)
    q_values, q_scales = quantise_groups(q, q_group, qk_dtype)
    k_values, k_scales = quantise_groups(k, k_group, qk_dtype)
    q_values, k_values = q_values[:, :, :tokens], k_values[:, :, :tokens]
    row_scale = (q_scales * scale).repeat_interleave(q_group, dim=2)[:, :, :tokens]  # [B, H, S]
    column_scale = k_scales.repeat_interleave(k_group, dim=2)[:, :, :tokens]
    v_values, v_scales, v_means = quantise_v_per_channel(v)

    shape = q.shape[:3]
    row_max = torch.full(shape, -math.inf)
    row_sum = torch.zeros(shape)
    acc = torch.zeros(q.shape)
    for start in range(0, tokens, block_n):
        stop = min(start + block_n, tokens)
        # integer products are exact in fp32 (|sum| <= 127 * 127 * 128 < 2**24)
        t = (q_values @ k_values[:, :, start:stop].transpose(-1, -2)) * column_scale[:, :, None, start:stop]
        new_max = torch.maximum(row_max, t.amax(dim=-1) * row_scale)
        alpha = torch.exp2(row_max - new_max)
        p = torch.exp2(t * row_scale[..., None] - new_max[..., None])
        row_sum = row_sum * alpha + p.sum(dim=-1)
        p8 = (p * FP8_MAX).to(torch.float8_e4m3fn).float()
        acc = acc * alpha[..., None] + p8 @ v_values[:, :, start:stop]
        row_max = new_max
    out = acc * (v_scales[:, :, None, :] / FP8_MAX) / row_sum[..., None] + v_means[:, :, None, :]
    out = out.to(dtype)
    return out if layout == "bhsd" else out.transpose(1, 2).contiguous()
