"""FP8/INT8 attention for Hopper in Triton: forward only, no mask, non-causal, head dims 64 and 128.

The scheme (SageAttention-2 style; described in attention_fp8_reference.py, its PyTorch twin): K and V
smoothed by their per-channel means (V's added back to the output), Q and K quantised to INT8 (or FP8 e4m3)
per group of tokens with fp32 scales, the softmax scale and log2(e) folded into Q's scales, online softmax
in fp32 with exp2, P quantised to FP8 e4m3 (times 448) and V to FP8 e4m3 with per-channel scales for the
P.V product, accumulated in fp32.

Entry points:
- `fp8_attention(q, k, v, layout)`: quantise (attention_fp8_quant.py) + attend; q, k, v as [B, S, H, D]
  ('bshd', what diffusers' attention processors hold) or [B, H, S, D] ('bhsd'); output in the input's
  layout and dtype (bf16 in practice).
- `fp8_attention_op`: the same as a torch custom op (`reelsmith::fp8_attention`), so torch.compile keeps a
  block that calls it in one graph.
- `FP8_ATTENTION_CONFIGS`: named meta-parameter sets (BLOCK_M, BLOCK_N, warps, stages, how often the FP8
  P.V accumulation is promoted to full fp32, TMA or pointer loads), `config="autotune"` lets Triton time the
  pointer-load ones at the first call of each shape.

Only the GPU can verify speed, compilation for sm_90 (wgmma with INT8 / FP8 operands) and the Hopper FP8
accumulator's reduced precision; the math runs on CPU in Triton's interpreter (TRITON_INTERPRET=1, which
must be set before this module is imported) and is tested there against the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..errors import BackendUnavailableError, InvalidInputError
from .attention_custom_op import attention_custom_op
from .attention_fp8_reference import K_GROUP, Q_GROUP
from .attention_fp8_quant import (QuantisedQKV, add_combine, kernels_interpreted, logical_strides, max_combine,
                                  quantise_qkv, to_e4m3)


@dataclass(frozen=True)
class Fp8AttentionConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    # K-elements the Hopper FP8 MMA accumulates at its reduced internal precision before the partial sum is
    # added to the fp32 accumulator (SageAttention-2's two-level accumulation); 0 = never promote (fastest).
    pv_promote: int
    # 'pointer': plain tl.load of computed addresses; 'tma': tensor descriptors (Hopper's TMA engine loads
    # the blocks into shared memory, freeing registers and threads)
    loads: str = "pointer"
    # a cap on registers per thread (ptxas' maxnreg): 168 lets three 4-warp programs share a multiprocessor
    # (65,536 registers) at head dim 128, 128 four at head dim 64: fuller waves for short sequences
    max_registers: int | None = None

    @property
    def name(self) -> str:
        promote = "" if self.pv_promote == self.block_n else ("-fastacc" if self.pv_promote == 0 else
                                                              f"-acc{self.pv_promote}")
        loads = "" if self.loads == "pointer" else f"-{self.loads}"
        registers = f"-r{self.max_registers}" if self.max_registers else ""
        return f"m{self.block_m}n{self.block_n}w{self.num_warps}s{self.num_stages}{promote}{loads}{registers}"

    def launch_options(self) -> dict:
        """Triton's compile options this config sets."""
        options = {"num_warps": self.num_warps, "num_stages": self.num_stages}
        if self.max_registers:
            options["maxnreg"] = self.max_registers
        return options

    def kernel_constants(self) -> dict:
        """The kernel's meta-parameters this config sets (launch options apart)."""
        return dict(BLOCK_M=self.block_m, BLOCK_N=self.block_n, PV_PROMOTE=self.pv_promote,
                    USE_TMA=self.loads == "tma")


def _configs(*specs) -> dict[str, Fp8AttentionConfig]:
    configs = [Fp8AttentionConfig(m, n, w, s, n if promote is None else promote, loads, *extra)
               for m, n, w, s, promote, loads, *extra in specs]
    return {c.name: c for c in configs}


FP8_ATTENTION_CONFIGS = _configs(
    (64, 128, 4, 3, 0, "tma"),
    (64, 128, 4, 2, 0, "tma", 168),
    (64, 128, 4, 3, 0, "tma", 128),  # head dim 64 only (at 128, 128 registers spill)
    (64, 128, 4, 3, None, "tma"),
    (64, 128, 4, 3, None, "pointer"),
    (128, 64, 4, 3, 0, "tma"),
    (128, 64, 4, 3, None, "tma"),
    (128, 64, 4, 3, None, "pointer"),
    (128, 128, 8, 3, 0, "tma"),
    (128, 128, 8, 3, None, "pointer"),
    (64, 64, 4, 4, 0, "tma"),
    (64, 64, 4, 3, None, "pointer"),
    (128, 64, 8, 3, 0, "pointer"),
)
# The sweep on an H100 (scripts/check_fp8_attention.py, INT8 Q.K, K and V smoothed, 2026-11-22), per layer:
# Wan 720p 142 ms (cuDNN bf16 204 ms), Wan 480p 27.1 ms (38.2), LTX 13B 3.03 ms (3.48), LTX 2B (head dim 64)
# 2.41 ms (2.56). Two programs of 4 warps share a multiprocessor (106 KB of shared memory each): one's MMAs
# run while the other computes its softmax. '-fastacc' (the P.V accumulation never promoted) is 8-10 % faster
# than promoting every block and as accurate since V is smoothed: a whole A14B forward with random weights
# gave cosine 0.99987 against cuDNN either way (without V smoothing, fastacc fell to 0.986).
# Measured and dropped (H100, 2026-12-07, Wan 720p per layer against this default's 139.8 ms): half of the exp2
# as a cubic on the FMA units 162.9 ms (the special function unit was not the limit: the loop is ~620
# instructions per warp and key block, scripts/compile_fp8_attention.py, and the polynomial adds ~225); lazy
# rescaling (acc rescaled only when a row maximum grew by more than 1 or 2) 146 ms; FP8 instead of INT8 Q.K
# 139.1 ms at 2.4x the error; issuing the next block's Q.K^T before this block's softmax compiles to a wait
# right after it (no overlap) and 16 KB more shared memory; cuDNN's FP8 attention (implementation 'cudnn')
# 147.4 ms at 2.4x the error.
# Same H100, 2026-12-07, one run (Wan 720p / 480p / LTX 13B / LTX 2B, ms per layer): this default 140.7 / 26.78 /
# 3.40 / 2.55; softmax row sums by a P x ones MMA instead of 64 adds per thread (~4 % fewer instructions;
# dropped) 142.3 / 27.7 / 3.33 / 2.56; three programs per multiprocessor ('-r168', 2 stages) 142.1 / 27.0 / 3.15;
# four at head dim 64 ('-r128') 2.48 (at head dim 128, 128 registers spill: 7x slower). FP8 Q.K (11 % fewer
# instructions) was no faster either: neither instruction count nor occupancy alone sets the long sequences'
# speed. The short sequences gain from more programs per multiprocessor (fewer, fuller waves), so the default
# depends on the sequence length.
# Nsight Compute on this default at Wan 720p (scripts/profile_fp8_attention.py, H100, 2026-12-07): latency-bound,
# no unit saturated (tensor cores 45 %, exp2 unit 46 %, issue 54 %), 0.76 of a scheduler's two warps ready per
# cycle; the most stalled instruction is the wait for Q.K^T. The warp-specialized Gluon kernel
# (attention_fp8_gluon_ws.py, FlashAttention-3's ping-pong) is the answer to that for head dim 128: 131.8 ms against
# 140.1 at Wan 720p, 3.00 against 3.43 at LTX 13B, so the FP8 processors' 'auto' takes it from 8,192 tokens
# (attention_fp8_processors.WARP_SPECIALIZED); this kernel keeps head dim 64 and short sequences.
# head dim -> ((up to this many tokens, config), ...): the first that fits
DEFAULT_CONFIGS = {64: ((None, "m64n128w4s3-fastacc-tma-r128"), ),
                   128: ((16384, "m64n128w4s2-fastacc-tma-r168"), (None, "m64n128w4s3-fastacc-tma"))}
CONFIG_CHOICES = ("default", "autotune", *FP8_ATTENTION_CONFIGS)


# exp2 offset that puts P = exp2(score - row max + offset) in [0, 448], e4m3's full range, for the P.V product
# (the factor 448 is in both acc and row_sum and cancels)
LOG2_FP8_MAX = tl.constexpr(8.807354922057604)
# INT8 Q.K products become floats by bit pattern: for |x| < 2**22 the bits of x + 0x4B400000 read as fp32 are
# exactly 1.5 * 2**23 + x. One integer add replaces an int->float conversion, which Hopper runs at 16 per
# clock per SM, as slowly as the exp2 itself (5 % of the kernel's time at Wan 720p, H100)
INT_AS_FLOAT_BITS = tl.constexpr(0x4B400000)
INT_AS_FLOAT_OFFSET = tl.constexpr(12582912.0)  # 1.5 * 2**23


@triton.jit
def _load_k(k_src, start_n, S_pad, bh, offs_n, offs_d, D: tl.constexpr, USE_TMA: tl.constexpr):
    """K [BLOCK_N, D] with D contiguous (K-major for Q.K^T)."""
    # (if/else, not an early return: Triton compiles the statements after a constexpr branch's return too)
    if USE_TMA:
        k = k_src.load([(bh * S_pad + start_n).to(tl.int32), 0])
    else:
        k = tl.load(k_src + bh * S_pad * D + (start_n + offs_n)[:, None] * D + offs_d[None, :])
    return k


@triton.jit
def _load_v(v_src, start_n, S_pad, bh, offs_n, offs_d, D: tl.constexpr, USE_TMA: tl.constexpr):
    """V^T [D, BLOCK_N] with tokens contiguous (K-major for P.V: Hopper's FP8 MMA wants both operands
    K-major)."""
    if USE_TMA:
        v = v_src.load([(bh * D).to(tl.int32), start_n])
    else:
        v = tl.load(v_src + bh * D * S_pad + offs_d[:, None] * S_pad + (start_n + offs_n)[None, :])
    return v


@triton.jit
def _scores(q, k, QK_INT8: tl.constexpr):
    """Q.K^T of one key block as fp32, plus `INT_AS_FLOAT_OFFSET` on the INT8 path (see there)."""
    if QK_INT8:
        qk_int = tl.dot(q, tl.trans(k), out_dtype=tl.int32)  # |qk_int| <= 127 * 127 * 128 < 2**22
        qk = (qk_int + INT_AS_FLOAT_BITS).to(tl.float32, bitcast=True)  # = INT_AS_FLOAT_OFFSET + qk_int
    else:
        qk = tl.dot(q, tl.trans(k))
    return qk


@triton.jit
def _softmax_pv(acc, row_sum, row_max, qk, q_scales, v, k_scales_base, start_n, S, offs_n,
                K_GROUP: tl.constexpr, QK_INT8: tl.constexpr, PV_PROMOTE: tl.constexpr, ROUND_FIRST: tl.constexpr,
                MASK_TAIL: tl.constexpr):
    """The online-softmax update of one key block's scores `qk` and its P.V product."""
    # one K scale for the whole block (K_GROUP is a multiple of BLOCK_N): with Q's per-row scale it makes one
    # factor per row, so each score costs a single multiply-add before its exp2
    row_factor = q_scales * tl.load(k_scales_base + start_n // K_GROUP)
    offset = INT_AS_FLOAT_OFFSET if QK_INT8 else 0.0
    if MASK_TAIL:
        qk = tl.where(((start_n + offs_n) < S)[None, :], qk, float("-inf"))
    new_max = tl.maximum(row_max, (tl.reduce(qk, 1, max_combine) - offset) * row_factor)  # row_factor > 0
    alpha = tl.math.exp2(row_max - new_max)
    # exp2(score - new_max + LOG2_FP8_MAX) with score = (qk - offset) * row_factor: one FMA per score. Triton's
    # CPU interpreter (ROUND_FIRST) has no FMA and would round the product at the offset's magnitude, 10 bits
    # coarser: there the offset is subtracted first (exactly: both are integers below 2**24)
    if ROUND_FIRST:
        p = tl.math.exp2((qk - offset) * row_factor[:, None] - (new_max - LOG2_FP8_MAX)[:, None])
    else:
        p = tl.math.exp2(qk * row_factor[:, None] - (offset * row_factor + new_max - LOG2_FP8_MAX)[:, None])
    row_sum = row_sum * alpha + tl.reduce(p, 1, add_combine)
    acc = acc * alpha[:, None]
    p8 = to_e4m3(p, ROUND_FIRST)
    if PV_PROMOTE > 0:
        acc = tl.dot(p8, tl.trans(v), acc, max_num_imprecise_acc=PV_PROMOTE)
    else:
        acc = tl.dot(p8, tl.trans(v), acc)
    return acc, row_sum, new_max


@triton.jit
def _attend_block(acc, row_sum, row_max, q, q_scales, k_src, v_src, k_scales_base, start_n, S, S_pad, bh, offs_n,
                  offs_d, D: tl.constexpr, K_GROUP: tl.constexpr, QK_INT8: tl.constexpr, PV_PROMOTE: tl.constexpr,
                  ROUND_FIRST: tl.constexpr, USE_TMA: tl.constexpr, MASK_TAIL: tl.constexpr):
    """One key block: its scores, then the online-softmax update and its P.V product."""
    qk = _scores(q, _load_k(k_src, start_n, S_pad, bh, offs_n, offs_d, D, USE_TMA), QK_INT8)
    v = _load_v(v_src, start_n, S_pad, bh, offs_n, offs_d, D, USE_TMA)
    return _softmax_pv(acc, row_sum, row_max, qk, q_scales, v, k_scales_base, start_n, S, offs_n, K_GROUP, QK_INT8,
                       PV_PROMOTE, ROUND_FIRST, MASK_TAIL)


@triton.jit
def _fp8_attention_kernel(q_src, k_src, v_src, q_scales_ptr, k_scales_ptr, v_scales_ptr, v_means_ptr, out_ptr,
                          S, S_pad, H, sob, soh, sos, sod,
                          D: tl.constexpr, Q_GROUP: tl.constexpr, K_GROUP: tl.constexpr, QK_INT8: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PV_PROMOTE: tl.constexpr,
                          ROUND_FIRST: tl.constexpr, USE_TMA: tl.constexpr):
    """q_src, k_src, v_src: the quantised buffers, as pointers or (USE_TMA) as 2-d tensor descriptors over
    [B*H*S_pad, D], [B*H*S_pad, D] and [B*H*D, S_pad] with blocks [BLOCK_M, D], [BLOCK_N, D], [D, BLOCK_N]."""
    start_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)

    # buffers are zero-padded to S_pad tokens: no load needs a mask
    if USE_TMA:
        q = q_src.load([(bh * S_pad + start_m * BLOCK_M).to(tl.int32), 0])
    else:
        q = tl.load(q_src + bh * S_pad * D + offs_m[:, None] * D + offs_d[None, :])
    q_scales = tl.load(q_scales_ptr + bh * (S_pad // Q_GROUP) + offs_m // Q_GROUP)
    k_scales_base = k_scales_ptr + bh * (S_pad // K_GROUP)

    row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    row_sum = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
    acc = tl.full([BLOCK_M, D], 0.0, dtype=tl.float32)
    full_blocks = S // BLOCK_N
    for block in range(0, full_blocks):
        acc, row_sum, row_max = _attend_block(acc, row_sum, row_max, q, q_scales, k_src, v_src, k_scales_base,
                                              block * BLOCK_N, S, S_pad, bh, offs_n, offs_d, D, K_GROUP, QK_INT8,
                                              PV_PROMOTE, ROUND_FIRST, USE_TMA, False)
    if full_blocks * BLOCK_N < S:  # the tail block: columns past S get no weight
        acc, row_sum, row_max = _attend_block(acc, row_sum, row_max, q, q_scales, k_src, v_src, k_scales_base,
                                              full_blocks * BLOCK_N, S, S_pad, bh, offs_n, offs_d, D, K_GROUP,
                                              QK_INT8, PV_PROMOTE, ROUND_FIRST, USE_TMA, True)

    v_scales = tl.load(v_scales_ptr + bh * D + offs_d)
    v_means = tl.load(v_means_ptr + bh * D + offs_d)
    out = acc * v_scales[None, :] / row_sum[:, None] + v_means[None, :]  # P's 448 is in acc and row_sum
    b = bh // H
    h = bh % H
    out_ptrs = out_ptr + b * sob + h * soh + offs_m[:, None] * sos + offs_d[None, :] * sod
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=(offs_m < S)[:, None])


_autotuned_kernel = None


def _autotune_configs() -> list[Fp8AttentionConfig]:
    """The configs `config="autotune"` times: the pointer-load ones (the '-tma' ones need descriptors built for
    their block shapes)."""
    return [c for c in FP8_ATTENTION_CONFIGS.values() if c.loads == "pointer"]


def _autotuned():
    """The kernel wrapped in triton.autotune over `_autotune_configs()`. Built on first use."""
    global _autotuned_kernel
    if _autotuned_kernel is None:
        configs = [triton.Config({"BLOCK_M": c.block_m, "BLOCK_N": c.block_n, "PV_PROMOTE": c.pv_promote},
                                 num_warps=c.num_warps, num_stages=c.num_stages)
                   for c in _autotune_configs()]
        _autotuned_kernel = triton.autotune(configs=configs, key=["S", "D", "QK_INT8"])(_fp8_attention_kernel)
    return _autotuned_kernel


def default_config(head_dim: int, tokens: int) -> Fp8AttentionConfig:
    """The measured-fastest config for this head dim and sequence length (DEFAULT_CONFIGS)."""
    return next(FP8_ATTENTION_CONFIGS[name] for limit, name in DEFAULT_CONFIGS[head_dim]
                if limit is None or tokens <= limit)


def resolve_config(config: str | Fp8AttentionConfig, head_dim: int, tokens: int) -> Fp8AttentionConfig | str:
    if isinstance(config, Fp8AttentionConfig) or config == "autotune":
        return config
    if config == "default":
        return default_config(head_dim, tokens)
    if config not in FP8_ATTENTION_CONFIGS:
        raise InvalidInputError(
            f"FP8 attention config '{config}' is not one of {', '.join(CONFIG_CHOICES)}.")
    return FP8_ATTENTION_CONFIGS[config]


def _descriptors(qkv: QuantisedQKV, config: Fp8AttentionConfig):
    """Host-side tensor descriptors of the quantised buffers as 2-d arrays, blocks of the config's shape."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    dim = qkv.q.shape[-1]
    rows = qkv.batch * qkv.heads * qkv.padded
    q = TensorDescriptor(qkv.q, [rows, dim], [dim, 1], [config.block_m, dim])
    k = TensorDescriptor(qkv.k, [rows, dim], [dim, 1], [config.block_n, dim])
    v_t = TensorDescriptor(qkv.v_t, [qkv.batch * qkv.heads * dim, qkv.padded], [qkv.padded, 1],
                           [dim, config.block_n])
    return q, k, v_t


def attend_quantised(qkv: QuantisedQKV, out: torch.Tensor, layout: str,
                     config: str | Fp8AttentionConfig = "default") -> torch.Tensor:
    """Run the attention kernel on quantised inputs, writing into `out` (the input's shape and layout)."""
    dim = qkv.q.shape[-1]
    chosen = resolve_config(config, dim, qkv.tokens)
    key_block = max(c.block_n for c in _autotune_configs()) if chosen == "autotune" else chosen.block_n
    if qkv.k_group % key_block:
        raise InvalidInputError(
            f"FP8 attention k_group {qkv.k_group} must be a multiple of the config's key block ({key_block} "
            f"tokens): each key block takes one K scale. Use k_group={K_GROUP}.")
    strides = logical_strides(out, layout)
    sources = (qkv.q, qkv.k, qkv.v_t)
    if chosen != "autotune" and chosen.loads == "tma":
        sources = _descriptors(qkv, chosen)
    arguments = (*sources, qkv.q_scales, qkv.k_scales, qkv.v_scales, qkv.v_means, out, qkv.tokens, qkv.padded, qkv.heads,
                 *strides)
    constants = dict(D=dim, Q_GROUP=qkv.q_group, K_GROUP=qkv.k_group, QK_INT8=qkv.qk_dtype == "int8",
                     ROUND_FIRST=kernels_interpreted())
    rows = qkv.batch * qkv.heads
    if chosen == "autotune":
        _autotuned()[lambda meta: (triton.cdiv(qkv.tokens, meta["BLOCK_M"]), rows)](
            *arguments, **constants, USE_TMA=False)
    else:
        grid = (triton.cdiv(qkv.tokens, chosen.block_m), rows)
        _fp8_attention_kernel[grid](*arguments, **constants, **chosen.kernel_constants(), **chosen.launch_options())
    return out


def _check_device(q: torch.Tensor) -> None:
    if q.device.type == "cuda":
        capability = torch.cuda.get_device_capability(q.device)
        if capability < (9, 0):
            raise BackendUnavailableError(
                f"FP8 attention needs a Hopper or newer GPU (compute capability 9.0+); {q.device} is "
                f"{capability[0]}.{capability[1]}. Choose the 'cudnn' or 'sdpa' attention backend.")
    elif not kernels_interpreted():
        raise BackendUnavailableError(
            f"FP8 attention runs on NVIDIA Hopper GPUs; the tensors are on {q.device}. Choose the 'sdpa' "
            "attention backend here (tests run the kernel on CPU with TRITON_INTERPRET=1).")


def fp8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str = "bshd", *,
                  config: str | Fp8AttentionConfig = "default", qk_dtype: str = "int8", q_group: int = Q_GROUP,
                  k_group: int = K_GROUP, sm_scale: float | None = None) -> torch.Tensor:
    """Self-attention of q, k, v (one shape; 'bshd' = [B, S, H, D], 'bhsd' = [B, H, S, D]; no mask,
    non-causal) through the quantised kernel. Returns a new tensor in the input's layout and dtype."""
    _check_device(q)
    qkv = quantise_qkv(q, k, v, layout, qk_dtype=qk_dtype, q_group=q_group, k_group=k_group, sm_scale=sm_scale)
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    return attend_quantised(qkv, out, layout, config)


def _fp8_attention_call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str, config: str, qk_dtype: str,
                        q_group: int, k_group: int) -> torch.Tensor:
    return fp8_attention(q, k, v, layout, config=config, qk_dtype=qk_dtype, q_group=q_group, k_group=k_group)


fp8_attention_op = attention_custom_op("fp8_attention", _fp8_attention_call)
