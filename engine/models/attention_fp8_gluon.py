"""The FP8 attention kernel's arithmetic (attention_fp8.py: INT8 Q.K with per-group scales, K and V smoothed, P
and V in e4m3) written in Gluon, Triton's lower-level language, so that the warpgroup MMAs can be left in
flight while the softmax runs on the CUDA cores (FlashAttention-3's intra-warpgroup overlap), which Triton's
own compiler does not do (it waits for every Q.K^T right after issuing it).

One warpgroup (4 warps) per 64 query rows: a program of 64 rows (two programs share a multiprocessor) or of 128
rows (two warpgroups sharing each K and V block in shared memory); key blocks of 128. Per block j, in order
(_step), with P[j] already computed:
  1. TMA load of K[j + K_STAGES] into the K slot block j used (its Q.K^T is done)
  2. issue S[j+1] = Q.K[j+1]^T, then acc += P[j].V[j] (both async, back to back on the tensor cores)
  3. wait for S[j+1]; its softmax (row maxima, P[j+1] in e4m3) while P[j].V[j] runs
  4. wait for P[j].V[j]; rescale acc to the new row maxima
  5. TMA load of V[j + V_STAGES] into the V slot block j used
Nothing in flight crosses the loop's back edge: where a register copy could touch an in-flight MMA's registers,
ptxas serialises every MMA of the kernel. The last softmax (masked where the sequence ends inside its block) is
peeled off the loop. P waits for its MMA in shared memory (two buffers: P[j+1] is written while P[j].V[j] runs).

Measured on an H100 (2026-12-07, Wan 720p per layer, scripts/check_fp8_attention.py): exactly the Triton
kernel's accuracy, and slower: 149-154 ms with P in shared memory, 183 ms with P in registers (the e4m3 P
carried across the loop is repacked every block), against the Triton kernel's 141 ms; an earlier loop that only
kept the next Q.K^T in flight 144 ms. Two programs per multiprocessor already overlap one's MMAs with the
other's softmax (README, performance: what was measured after). Kept as the opt-in implementation 'gluon', the
base for experiments that need explicit MMA waits or shared-memory control.

Inputs are the quantised buffers of attention_fp8_quant.quantise_qkv, as Gluon tensor descriptors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                             warpgroup_mma_wait)

from .attention_custom_op import attention_custom_op
from .attention_fp8 import INT_AS_FLOAT_BITS, INT_AS_FLOAT_OFFSET, LOG2_FP8_MAX  # the same arithmetic's constants
from .attention_fp8_reference import K_GROUP

# Triton 3.9 renamed the TMA load (3.6, beside torch 2.11, has only the old name)
_tma_load = tma.async_load if hasattr(tma, "async_load") else tma.async_copy_global_to_shared
_thread_barrier = gl.barrier if hasattr(gl, "barrier") else gl.thread_barrier  # renamed likewise


@gluon.jit
def _issue_scores(q_smem, k_smem, s_layout: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr):
    """S = Q.K^T of one key block in INT8, issued (in flight: the caller waits). (The block shapes come as
    constexprs: Triton 3.6's Gluon cannot build a tensor shape from a shared buffer's.)"""
    zero = gl.zeros([BLOCK_M, BLOCK_N], gl.int32, s_layout)
    return warpgroup_mma(q_smem, k_smem.permute((1, 0)), zero, use_acc=False, is_async=True)


@gluon.jit
def _row_factor(q_scales, k_scales_base, start_n, K_GROUP: gl.constexpr):
    """The scores' scale per row of one key block: Q's per-row scale times the block's one K scale."""
    return q_scales * gl.load(k_scales_base + start_n // K_GROUP)


@gluon.jit
def _softmax(s_int, row_max, row_sum, row_factor, start_n, S, col_layout: gl.constexpr, BLOCK_N: gl.constexpr,
             MASK: gl.constexpr, E4M3: gl.constexpr = True, ROW_SUM: gl.constexpr = True):
    """P in e4m3 (times 448; fp32 unless E4M3) of one block's INT8 scores, the new row maxima and sums (unless
    ROW_SUM is off: the caller sums P on the tensor cores), and the factor acc needs."""
    qk = (s_int + INT_AS_FLOAT_BITS).to(gl.float32, bitcast=True)  # = INT_AS_FLOAT_OFFSET + integer score
    if MASK:
        cols = start_n + gl.arange(0, BLOCK_N, col_layout)
        qk = gl.where(gl.expand_dims(cols < S, 0), qk, float("-inf"))
    new_max = gl.maximum(row_max, (gl.max(qk, 1) - INT_AS_FLOAT_OFFSET) * row_factor)
    alpha = gl.exp2(row_max - new_max)
    shift = INT_AS_FLOAT_OFFSET * row_factor + new_max - LOG2_FP8_MAX
    p = gl.exp2(qk * gl.expand_dims(row_factor, 1) - gl.expand_dims(shift, 1))
    if ROW_SUM:
        row_sum = row_sum * alpha + gl.sum(p, 1)
    if E4M3:
        p = p.to(gl.float8e4nv)
    return p, new_max, row_sum, alpha


@gluon.jit
def _rescaled(acc, alpha, o_layout: gl.constexpr):
    """acc rescaled to new row maxima: each row times its alpha."""
    return acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)


@gluon.jit
def _store_for_mma(values, smem):
    """values into shared memory that a warpgroup MMA will read as an operand."""
    smem.store(values)
    fence_async_shared()  # the MMA reads through the async proxy
    _thread_barrier()     # every warp's part is written


@gluon.jit
def _keep_p(p8, p_smem, block):
    """P[block] into the shared-memory buffer its P.V MMA will read. (Kept in registers instead, the e4m3 P carried
    across the loop sits two values per register and is repacked every block: 786 instead of 601 instructions
    per block, 183 instead of 149 ms at Wan 720p on an H100.)"""
    _store_for_mma(p8, p_smem.index(block % 2))


@gluon.jit
def _issue_pv(acc, p_smem, v_smem, v_bars, block, V_STAGES: gl.constexpr):
    """acc += P[block].V[block], issued (in flight: the caller waits)."""
    v_slot = block % V_STAGES
    mbarrier.wait(v_bars.index(v_slot), (block // V_STAGES) & 1)
    return warpgroup_mma(p_smem.index(block % 2), v_smem.index(v_slot).permute((1, 0)), acc, is_async=True)


@gluon.jit
def _step(j, acc, row_max, row_sum, q_smem, k_smem, v_smem, p_smem, k_bars, v_bars, k_desc, v_desc, k_row, v_row,
          q_scales, k_scales_base, S, blocks, K_GROUP: gl.constexpr, K_STAGES: gl.constexpr, V_STAGES: gl.constexpr,
          s_layout: gl.constexpr, o_layout: gl.constexpr, col_layout: gl.constexpr, MASK: gl.constexpr):
    """acc += P[j].V[j] and block j+1's softmax, both MMAs in flight during the softmax. On entry P[j] is kept
    (_keep_p, taken against the current row maxima); on return P[j+1], and acc is rescaled to its maxima."""
    BLOCK_N: gl.constexpr = k_smem.shape[1]
    # K[j + K_STAGES] into the slot S[j] read (S[j] was waited for)
    k_slot = j % K_STAGES
    reload = j + K_STAGES < blocks
    mbarrier.expect(k_bars.index(k_slot), k_desc.block_type.nbytes, pred=reload)
    _tma_load(k_desc, [k_row + (j + K_STAGES) * BLOCK_N, 0], k_bars.index(k_slot), k_smem.index(k_slot),
              pred=reload)
    # issue S[j+1] = Q.K[j+1]^T, then acc += P[j].V[j]: the tensor cores run both back to back
    next_slot = (j + 1) % K_STAGES
    mbarrier.wait(k_bars.index(next_slot), ((j + 1) // K_STAGES) & 1)
    s_next = _issue_scores(q_smem, k_smem.index(next_slot), s_layout, q_smem.shape[0], BLOCK_N)
    acc = _issue_pv(acc, p_smem, v_smem, v_bars, j, V_STAGES)
    # block j+1's softmax once its scores are in, while P[j].V[j] runs (P[j+1] goes to the other P buffer)
    s_next = warpgroup_mma_wait(1, deps=(s_next, ))
    p8, row_max, row_sum, alpha = _softmax(s_next, row_max, row_sum,
                                           _row_factor(q_scales, k_scales_base, (j + 1) * BLOCK_N, K_GROUP),
                                           (j + 1) * BLOCK_N, S, col_layout, BLOCK_N, MASK)
    _keep_p(p8, p_smem, j + 1)
    # acc to block j+1's row maxima once P[j].V[j] is in; then V[j + V_STAGES] into the slot it read. Nothing in
    # flight crosses the loop's back edge (where a register copy could touch an in-flight MMA's registers, ptxas
    # serialises every MMA of the kernel)
    acc = warpgroup_mma_wait(0, deps=(acc, ))
    acc = _rescaled(acc, alpha, o_layout)
    v_slot = j % V_STAGES
    v_load = j + V_STAGES
    mbarrier.expect(v_bars.index(v_slot), v_desc.block_type.nbytes, pred=v_load < blocks)
    _tma_load(v_desc, [v_row, v_load * BLOCK_N], v_bars.index(v_slot), v_smem.index(v_slot), pred=v_load < blocks)
    return acc, row_max, row_sum


@gluon.jit
def _store_output(acc, row_sum, first_row, bh, v_scales_ptr, v_means_ptr, out_ptr, S, H, sob, soh, sos, sod,
                  o_layout: gl.constexpr, ROWS: gl.constexpr, D: gl.constexpr):
    """Rows first_row.. of head bh: acc over the row sums with V's scale and mean restored, stored in the output's
    layout (rows past S left out)."""
    orow_layout: gl.constexpr = gl.SliceLayout(1, o_layout)
    offs_d = gl.arange(0, D, gl.SliceLayout(0, o_layout))
    offs_m = first_row + gl.arange(0, ROWS, orow_layout)
    v_scales = gl.load(v_scales_ptr + bh * D + offs_d)
    v_means = gl.load(v_means_ptr + bh * D + offs_d)
    row_sum = gl.convert_layout(row_sum, orow_layout)
    out = acc * gl.expand_dims(v_scales, 0) / gl.expand_dims(row_sum, 1) + gl.expand_dims(v_means, 0)
    out_ptrs = (out_ptr + (bh // H) * sob + (bh % H) * soh + gl.expand_dims(offs_m, 1) * sos
                + gl.expand_dims(offs_d, 0) * sod)
    gl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=gl.expand_dims(offs_m < S, 1))


@gluon.jit
def _fp8_attention_gluon_kernel(q_desc, k_desc, v_desc, q_scales_ptr, k_scales_ptr, v_scales_ptr, v_means_ptr,
                                out_ptr, S, S_pad, H, sob, soh, sos, sod,
                                Q_GROUP: gl.constexpr, K_GROUP: gl.constexpr, K_STAGES: gl.constexpr,
                                V_STAGES: gl.constexpr):
    BLOCK_M: gl.constexpr = q_desc.block_type.shape[0]
    D: gl.constexpr = q_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
    WARPS: gl.constexpr = BLOCK_M // 16  # one warpgroup per 64 rows
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                       instr_shape=[16, BLOCK_N, 32])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                       instr_shape=[16, D, 32])
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    col_layout: gl.constexpr = gl.SliceLayout(0, s_layout)

    start_m = gl.program_id(0)
    bh = gl.program_id(1).to(gl.int64)
    q_row = (bh * S_pad + start_m * BLOCK_M).to(gl.int32)
    k_row = (bh * S_pad).to(gl.int32)
    v_row = (bh * D).to(gl.int32)

    q_smem = gl.allocate_shared_memory(q_desc.dtype, q_desc.block_type.shape, q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [K_STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [V_STAGES] + v_desc.block_type.shape, v_desc.layout)
    p_smem = gl.allocate_shared_memory(gl.float8e4nv, [2, BLOCK_M, BLOCK_N],
                                       gl.NVMMASharedLayout.get_default_for([BLOCK_M, BLOCK_N], gl.float8e4nv))
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_bars = gl.allocate_shared_memory(gl.int64, [K_STAGES, 1], mbarrier.MBarrierLayout())
    v_bars = gl.allocate_shared_memory(gl.int64, [V_STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(K_STAGES):
        mbarrier.init(k_bars.index(i), count=1)
    for i in gl.static_range(V_STAGES):
        mbarrier.init(v_bars.index(i), count=1)
    fence_async_shared()

    blocks = gl.cdiv(S, BLOCK_N)
    # prologue: Q, the first K_STAGES key blocks and V_STAGES value blocks
    mbarrier.expect(q_bar, q_desc.block_type.nbytes)
    _tma_load(q_desc, [q_row, 0], q_bar, q_smem)
    for i in gl.static_range(K_STAGES):
        mbarrier.expect(k_bars.index(i), k_desc.block_type.nbytes, pred=i < blocks)
        _tma_load(k_desc, [k_row + i * BLOCK_N, 0], k_bars.index(i), k_smem.index(i),
                  pred=i < blocks)
    for i in gl.static_range(V_STAGES):
        mbarrier.expect(v_bars.index(i), v_desc.block_type.nbytes, pred=i < blocks)
        _tma_load(v_desc, [v_row, i * BLOCK_N], v_bars.index(i), v_smem.index(i),
                  pred=i < blocks)

    q_scales = gl.load(q_scales_ptr + bh * (S_pad // Q_GROUP)
                       + (start_m * BLOCK_M + gl.arange(0, BLOCK_M, row_layout)) // Q_GROUP)
    k_scales_base = k_scales_ptr + bh * (S_pad // K_GROUP)
    row_max = gl.full([BLOCK_M], float("-inf"), gl.float32, row_layout)
    row_sum = gl.zeros([BLOCK_M], gl.float32, row_layout)
    acc = gl.zeros([BLOCK_M, D], gl.float32, o_layout)

    # block 0's scores and softmax (masked: it may be the only block)
    mbarrier.wait(q_bar, 0)
    mbarrier.wait(k_bars.index(0), 0)
    s_first = warpgroup_mma_wait(0, deps=(_issue_scores(q_smem, k_smem.index(0), s_layout, BLOCK_M, BLOCK_N), ))
    p8, row_max, row_sum, alpha = _softmax(s_first, row_max, row_sum, _row_factor(q_scales, k_scales_base, 0, K_GROUP),
                                           0, S, col_layout, BLOCK_N, True)
    _keep_p(p8, p_smem, 0)
    for j in range(0, blocks - 2):
        acc, row_max, row_sum = _step(j, acc, row_max, row_sum, q_smem, k_smem, v_smem, p_smem, k_bars, v_bars,
                                      k_desc, v_desc, k_row, v_row, q_scales, k_scales_base, S, blocks, K_GROUP,
                                      K_STAGES, V_STAGES, s_layout, o_layout, col_layout, False)
    if blocks > 1:  # the last block's softmax, masked where the sequence ends inside it
        acc, row_max, row_sum = _step(blocks - 2, acc, row_max, row_sum, q_smem, k_smem, v_smem, p_smem, k_bars,
                                      v_bars, k_desc, v_desc, k_row, v_row, q_scales, k_scales_base, S, blocks,
                                      K_GROUP, K_STAGES, V_STAGES, s_layout, o_layout, col_layout, True)
    acc = _issue_pv(acc, p_smem, v_smem, v_bars, blocks - 1, V_STAGES)
    acc = warpgroup_mma_wait(0, deps=(acc, ))

    mbarrier.invalidate(q_bar)
    for i in gl.static_range(K_STAGES):
        mbarrier.invalidate(k_bars.index(i))
    for i in gl.static_range(V_STAGES):
        mbarrier.invalidate(v_bars.index(i))

    _store_output(acc, row_sum, start_m * BLOCK_M, bh, v_scales_ptr, v_means_ptr, out_ptr, S, H, sob, soh, sos, sod,
                  o_layout, BLOCK_M, D)

BLOCK_N = 128


@dataclass(frozen=True)
class GluonConfig:
    """Query rows per program (64: one warpgroup; 128: two) and K / V blocks kept in shared memory."""
    block_m: int = 64
    k_stages: int = 2
    v_stages: int = 2

    @property
    def name(self) -> str:
        return f"m{self.block_m}k{self.k_stages}v{self.v_stages}"

    @property
    def query_rows(self) -> int:
        """Rows of the query blocks its descriptor loads."""
        return self.block_m

    @property
    def key_rows(self) -> int:
        """Rows of the key / value blocks its descriptors load."""
        return BLOCK_N

    def kernel_constants(self) -> dict:
        """The kernel's meta-parameters this config sets (launch options apart)."""
        return {"K_STAGES": self.k_stages, "V_STAGES": self.v_stages}

    def launch_options(self) -> dict:
        """Triton's compile options this config sets: one warpgroup per 64 rows."""
        return {"num_warps": self.block_m // 16}


# H100, Wan 720p per layer: 153.6 / 155.2 / 176.5 ms (the Triton kernel 141.0)
GLUON_CONFIGS = (GluonConfig(64, 2, 2), GluonConfig(64, 2, 3), GluonConfig(128, 2, 2))
DEFAULT_GLUON_CONFIG = GLUON_CONFIGS[0]


def shared_layouts(dim: int, block_m: int = 64, block_n: int = BLOCK_N):
    """Shared-memory layouts of the Q, K and V^T blocks (what TMA writes and the MMAs read)."""
    return (gl.NVMMASharedLayout.get_default_for([block_m, dim], gl.int8),
            gl.NVMMASharedLayout.get_default_for([block_n, dim], gl.int8),
            gl.NVMMASharedLayout.get_default_for([dim, block_n], gl.float8e4nv))


def key_group(key_rows: int) -> int:
    """The K quantisation group for key blocks of `key_rows`: the kernels take one K scale per block, so a group
    spans at least a block."""
    return max(K_GROUP, key_rows)


def quantised_inputs(q, k, v, layout: str, query_rows: int, key_rows: int = BLOCK_N, v_mma_order: bool = False):
    """q, k, v quantised for the Gluon kernels (INT8 Q.K), as tensor descriptors of query blocks of `query_rows`
    and key / value blocks of `key_rows`, with the quantised buffers' scales and an empty output. v_mma_order:
    V's keys in the warpgroup MMA's order (attention_fp8_quant.mma_key_positions)."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from .attention_fp8_quant import quantise_qkv

    qkv = quantise_qkv(q, k, v, layout, qk_dtype="int8", k_group=key_group(key_rows), v_mma_order=v_mma_order)
    dim = qkv.q.shape[-1]
    rows = qkv.batch * qkv.heads * qkv.padded
    query_layout, key_layout, value_layout = shared_layouts(dim, query_rows, key_rows)
    q_desc = TensorDescriptor(qkv.q, [rows, dim], [dim, 1], [query_rows, dim], query_layout)
    k_desc = TensorDescriptor(qkv.k, [rows, dim], [dim, 1], [key_rows, dim], key_layout)
    v_desc = TensorDescriptor(qkv.v_t, [qkv.batch * qkv.heads * dim, qkv.padded], [qkv.padded, 1],
                              [dim, key_rows], value_layout)
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    return qkv, (q_desc, k_desc, v_desc), out


def gluon_fp8_attention(q, k, v, layout: str = "bshd", config: GluonConfig = DEFAULT_GLUON_CONFIG):
    """Self-attention of q, k, v like attention_fp8.fp8_attention (INT8 Q.K only), through the Gluon kernel.
    Hopper only: Gluon has no CPU interpreter."""
    from .attention_fp8_quant import logical_strides

    qkv, descriptors, out = quantised_inputs(q, k, v, layout, config.query_rows, config.key_rows)
    grid = (triton.cdiv(qkv.tokens, config.block_m), qkv.batch * qkv.heads)
    _fp8_attention_gluon_kernel[grid](*descriptors, qkv.q_scales, qkv.k_scales, qkv.v_scales,
                                      qkv.v_means, out, qkv.tokens, qkv.padded, qkv.heads,
                                      *logical_strides(out, layout), Q_GROUP=qkv.q_group, K_GROUP=qkv.k_group,
                                      **config.kernel_constants(), **config.launch_options())
    return out


def gluon_unavailable() -> str | None:
    """Why the Gluon kernel cannot run here, or None."""
    if not torch.cuda.is_available():
        return "it needs a CUDA GPU (Gluon has no CPU interpreter)"
    major, minor = torch.cuda.get_device_capability()
    if major != 9:  # warpgroup MMAs (wgmma) exist on sm_90 only: Blackwell's tensor cores take other instructions
        return (f"it needs a Hopper GPU (H100, H200: compute capability 9.x; this one is {major}.{minor}), whose "
                "warpgroup MMAs it is written in")
    return None


def _gluon_fp8_attention_call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return gluon_fp8_attention(q, k, v, "bshd")


gluon_fp8_attention_op = attention_custom_op("gluon_fp8_attention", _gluon_fp8_attention_call)
