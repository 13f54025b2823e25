"""Triton kernels that quantise q, k, v for the FP8 attention kernel (the scheme is described in
attention_fp8_reference.py, which is its PyTorch twin).

Two passes over the inputs, both memory-bound:
1. `_column_stats_kernel`: per chunk of tokens, K's and V's column sums (written per chunk, then summed by
   one small torch reduction, so the means are deterministic) and V's per-channel maximum and minimum (atomic,
   which is order-independent): V's scale covers V minus its mean.
2. `_quantise_qkv_kernel`: Q and smoothed K to INT8 / FP8 with one scale per token group, smoothed V to FP8
   with its per-channel scale, written to padded head-major buffers the attention kernel reads without masks:
   Q and K as [B*H, S_pad, D], V transposed as [B*H, D, S_pad] (the P.V product on Hopper wants V's
   token axis contiguous), padding rows zero. Optionally V's tokens in the warpgroup MMA's key order
   (`v_mma_order`, below), for the warp-specialized Gluon kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .attention_fp8_reference import FP8_MAX, INT8_MAX, K_GROUP, LOG2E, Q_GROUP, check_inputs

CHUNK = 128  # tokens per program of both passes (the quantising one takes whole groups: 256 for groups of 256)
PAD = 256  # token padding of the buffers: a multiple of every BLOCK_M / BLOCK_N a config may use


@dataclass
class QuantisedQKV:
    """The attention kernel's inputs. Scales are fp32; q_scales include softmax scale * log2(e)."""

    q: torch.Tensor  # [B*H, S_pad, D] int8 or float8_e4m3fn
    k: torch.Tensor  # [B*H, S_pad, D] int8 or float8_e4m3fn
    v_t: torch.Tensor  # [B*H, D, S_pad] float8_e4m3fn
    q_scales: torch.Tensor  # [B*H, S_pad // q_group]
    k_scales: torch.Tensor  # [B*H, S_pad // k_group]
    v_scales: torch.Tensor  # [B*H, D]
    v_means: torch.Tensor  # [B*H, D], subtracted before quantising, added to the output
    batch: int
    heads: int
    tokens: int
    padded: int
    q_group: int
    k_group: int
    qk_dtype: str
    v_mma_order: bool = False  # v_t's tokens in mma_key_positions' order


def kernels_interpreted() -> bool:
    """True when Triton's CPU interpreter runs these kernels (TRITON_INTERPRET=1 when they were defined)."""
    return not isinstance(_quantise_qkv_kernel, triton.runtime.JITFunction)


def logical_strides(x: torch.Tensor, layout: str) -> tuple[int, int, int, int]:
    """Strides of x seen as [B, H, S, D] whatever its layout."""
    if layout == "bhsd":
        return x.stride(0), x.stride(1), x.stride(2), x.stride(3)
    return x.stride(0), x.stride(2), x.stride(1), x.stride(3)


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


# Reductions are tl.reduce with the combine functions tl.sum / tl.max use (the same IR) rather than tl.sum /
# tl.max themselves: those are @triton.jit functions of Triton's library, which the CPU interpreter runs only
# when TRITON_INTERPRET was set before Triton was first imported (in a test process diffusers imports it
# first), while it reduces with its numpy fast path whenever the combine function is one of these two.
add_combine = getattr(tl.standard, "_sum_combine", _add)
max_combine = getattr(tl.standard, "_elementwise_max", _maximum)


@triton.jit
def to_e4m3(x, ROUND_FIRST: tl.constexpr):
    """fp32 -> float8_e4m3fn, round to nearest even. With ROUND_FIRST the value is first rounded onto the
    e4m3 grid in fp32 arithmetic (so the cast is exact): Triton's CPU interpreter (3.9) drops the carry
    when rounding up to the next power of two (126.3 -> 64); the GPU's hardware cast needs no help."""
    if ROUND_FIRST:
        bits = x.to(tl.int32, bitcast=True)
        exponent = tl.maximum(((bits >> 23) & 0xFF) - 127, -6)  # below 2**-6 e4m3 is subnormal, step 2**-9
        step = ((exponent - 3 + 127) << 23).to(tl.float32, bitcast=True)  # 3 mantissa bits
        magic = step * 12582912.0  # 1.5 * 2**23 steps: adding it drops everything below one step, RNE
        x = (x + magic) - magic
    return x.to(tl.float8e4nv)


@triton.jit
def _mma_key_position(keys):
    """Where key `keys` sits in V^T written in the warpgroup MMA's key order (see mma_key_positions)."""
    return keys - (keys & 15) + 4 * ((keys >> 1) & 3) + 2 * ((keys >> 3) & 1) + (keys & 1)


def mma_key_positions(tokens: int) -> torch.Tensor:
    """Position of each key in V^T written in the warpgroup MMA's key order (`quantise_qkv(v_mma_order=True)`).

    Within every 16 keys, key 8h + 2c + j (h, j in 0..1, c in 0..3) moves to 4c + 2h + j. Why: a thread's share
    of the Q.K^T accumulator holds keys 2c, 2c+1, 8+2c, 9+2c of each 16 (c: its lane within its quad), and an e4m3
    P.V MMA reads P from registers four consecutive keys at a time, keys 4c..4c+3. With V's keys in this order
    the thread's P values are already its share of the MMA's operand, so P needs no shuffle between threads
    (FlashAttention-3 permutes V for FP8 likewise)."""
    return _mma_key_position.fn(torch.arange(tokens))  # the quantiser's own formula (its Python body) on a tensor


@triton.jit
def _column_stats_kernel(k_ptr, v_ptr, k_sums_ptr, v_sums_ptr, v_max_ptr, v_min_ptr, S, H, n_chunks,
                            skb, skh, sks, skd, svb, svh, svs, svd,
                            CHUNK: tl.constexpr, D: tl.constexpr):
    chunk = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    rows = chunk * CHUNK + tl.arange(0, CHUNK)
    cols = tl.arange(0, D)
    valid = (rows < S)[:, None]
    k = tl.load(k_ptr + b * skb + h * skh + rows[:, None] * sks + cols[None, :] * skd, mask=valid, other=0.0)
    tl.store(k_sums_ptr + (bh * n_chunks + chunk) * D + cols, tl.reduce(k.to(tl.float32), 0, add_combine))
    v = tl.load(v_ptr + b * svb + h * svh + rows[:, None] * svs + cols[None, :] * svd, mask=valid, other=0.0)
    v = v.to(tl.float32)
    tl.store(v_sums_ptr + (bh * n_chunks + chunk) * D + cols, tl.reduce(v, 0, add_combine))
    tl.atomic_max(v_max_ptr + bh * D + cols, tl.reduce(tl.where(valid, v, float("-inf")), 0, max_combine))
    tl.atomic_min(v_min_ptr + bh * D + cols, -tl.reduce(tl.where(valid, -v, float("-inf")), 0, max_combine))


@triton.jit
def _quantise_groups(x, GROUP: tl.constexpr, CHUNK: tl.constexpr, D: tl.constexpr, TOP: tl.constexpr,
                     TO_INT8: tl.constexpr, ROUND_FIRST: tl.constexpr):
    """x [CHUNK, D] fp32 -> (quantised [CHUNK, D], scales [CHUNK // GROUP])."""
    grouped = tl.reshape(x, [CHUNK // GROUP, GROUP, D])
    scales = tl.maximum(tl.reduce(tl.reduce(tl.abs(grouped), 2, max_combine), 1, max_combine), 1e-12) / TOP
    scaled = tl.reshape(grouped / scales[:, None, None], [CHUNK, D])
    if TO_INT8:
        values = tl.where(scaled >= 0, scaled + 0.5, scaled - 0.5).to(tl.int8)  # cast truncates toward zero
    else:
        values = to_e4m3(scaled, ROUND_FIRST)
    return values, scales


@triton.jit
def _quantise_qkv_kernel(q_ptr, k_ptr, v_ptr, k_mean_ptr, v_means_ptr, v_scales_ptr,
                         q_out_ptr, k_out_ptr, v_out_ptr, q_scales_ptr, k_scales_ptr,
                         S, S_pad, H, score_scale,
                         sqb, sqh, sqs, sqd, skb, skh, sks, skd, svb, svh, svs, svd,
                         CHUNK: tl.constexpr, D: tl.constexpr, Q_GROUP: tl.constexpr, K_GROUP: tl.constexpr,
                         QK_INT8: tl.constexpr, QK_TOP: tl.constexpr, ROUND_FIRST: tl.constexpr,
                         V_MMA_ORDER: tl.constexpr):
    chunk = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    rows = chunk * CHUNK + tl.arange(0, CHUNK)
    cols = tl.arange(0, D)
    valid = (rows < S)[:, None]
    out_offsets = bh * S_pad * D + rows[:, None] * D + cols[None, :]

    q = tl.load(q_ptr + b * sqb + h * sqh + rows[:, None] * sqs + cols[None, :] * sqd, mask=valid, other=0.0)
    q_values, q_scales = _quantise_groups(q.to(tl.float32), Q_GROUP, CHUNK, D, QK_TOP, QK_INT8, ROUND_FIRST)
    tl.store(q_out_ptr + out_offsets, q_values)
    q_groups = chunk * (CHUNK // Q_GROUP) + tl.arange(0, CHUNK // Q_GROUP)
    tl.store(q_scales_ptr + bh * (S_pad // Q_GROUP) + q_groups, q_scales * score_scale)

    k = tl.load(k_ptr + b * skb + h * skh + rows[:, None] * sks + cols[None, :] * skd, mask=valid, other=0.0)
    k_mean = tl.load(k_mean_ptr + bh * D + cols)
    k = tl.where(valid, k.to(tl.float32) - k_mean[None, :], 0.0)  # padding rows stay zero
    k_values, k_scales = _quantise_groups(k, K_GROUP, CHUNK, D, QK_TOP, QK_INT8, ROUND_FIRST)
    tl.store(k_out_ptr + out_offsets, k_values)
    k_groups = chunk * (CHUNK // K_GROUP) + tl.arange(0, CHUNK // K_GROUP)
    tl.store(k_scales_ptr + bh * (S_pad // K_GROUP) + k_groups, k_scales)

    v = tl.load(v_ptr + b * svb + h * svh + rows[:, None] * svs + cols[None, :] * svd, mask=valid, other=0.0)
    v_scales = tl.load(v_scales_ptr + bh * D + cols)
    v_means = tl.load(v_means_ptr + bh * D + cols)
    v_values = to_e4m3(tl.where(valid, v.to(tl.float32) - v_means[None, :], 0.0) / v_scales[None, :], ROUND_FIRST)
    v_keys = _mma_key_position(rows) if V_MMA_ORDER else rows  # a permutation within each 16 (PAD's multiple)
    tl.store(v_out_ptr + bh * D * S_pad + cols[None, :] * S_pad + v_keys[:, None], v_values)


def quantise_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str = "bshd", *,
                 qk_dtype: str = "int8", q_group: int = Q_GROUP, k_group: int = K_GROUP,
                 sm_scale: float | None = None, v_mma_order: bool = False) -> QuantisedQKV:
    """Quantise q, k, v ([B, S, H, D] for 'bshd' or [B, H, S, D] for 'bhsd') for the attention kernel.
    v_mma_order: V^T's tokens in the warpgroup MMA's key order (mma_key_positions), for kernels that feed the
    Q.K^T accumulator's P to the P.V MMA as it lies in registers."""
    check_inputs(q, k, v, layout, qk_dtype, q_group, k_group)
    if layout == "bshd":
        batch, tokens, heads, dim = q.shape
    else:
        batch, heads, tokens, dim = q.shape
    padded = math.ceil(tokens / PAD) * PAD
    rows = batch * heads
    chunk = max(CHUNK, q_group, k_group)  # tokens per quantising program: whole groups (PAD is a multiple)
    device = q.device
    score_scale = (sm_scale if sm_scale is not None else dim ** -0.5) * LOG2E
    strides = [*logical_strides(q, layout), *logical_strides(k, layout), *logical_strides(v, layout)]

    n_chunks = math.ceil(tokens / CHUNK)
    k_sums = torch.empty(rows, n_chunks, dim, device=device, dtype=torch.float32)
    v_sums = torch.empty(rows, n_chunks, dim, device=device, dtype=torch.float32)
    v_max = torch.full((rows, dim), -math.inf, device=device, dtype=torch.float32)
    v_min = torch.full((rows, dim), math.inf, device=device, dtype=torch.float32)
    _column_stats_kernel[(n_chunks, rows)](
        k, v, k_sums, v_sums, v_max, v_min, tokens, heads, n_chunks, *strides[4:], CHUNK=CHUNK, D=dim)
    k_mean = k_sums.sum(dim=1) / tokens
    v_means = v_sums.sum(dim=1) / tokens
    v_scales = torch.maximum(v_max - v_means, v_means - v_min).clamp_min(1e-12) / FP8_MAX

    qk_torch_dtype = torch.int8 if qk_dtype == "int8" else torch.float8_e4m3fn
    q_out = torch.empty(rows, padded, dim, device=device, dtype=qk_torch_dtype)
    k_out = torch.empty(rows, padded, dim, device=device, dtype=qk_torch_dtype)
    v_out = torch.empty(rows, dim, padded, device=device, dtype=torch.float8_e4m3fn)
    q_scales = torch.empty(rows, padded // q_group, device=device, dtype=torch.float32)
    k_scales = torch.empty(rows, padded // k_group, device=device, dtype=torch.float32)
    _quantise_qkv_kernel[(padded // chunk, rows)](
        q, k, v, k_mean, v_means, v_scales, q_out, k_out, v_out, q_scales, k_scales,
        tokens, padded, heads, score_scale, *strides,
        CHUNK=chunk, D=dim, Q_GROUP=q_group, K_GROUP=k_group, QK_INT8=qk_dtype == "int8",
        QK_TOP=INT8_MAX if qk_dtype == "int8" else FP8_MAX, ROUND_FIRST=kernels_interpreted(),
        V_MMA_ORDER=v_mma_order, num_warps=4 * chunk // CHUNK)
    return QuantisedQKV(q=q_out, k=k_out, v_t=v_out, q_scales=q_scales, k_scales=k_scales, v_scales=v_scales,
                        v_means=v_means,
                        batch=batch, heads=heads, tokens=tokens, padded=padded, q_group=q_group,
                        k_group=k_group, qk_dtype=qk_dtype, v_mma_order=v_mma_order)

