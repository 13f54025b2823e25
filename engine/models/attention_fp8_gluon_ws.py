"""The FP8 attention kernel's arithmetic (attention_fp8.py) warp-specialized, in Gluon: FlashAttention-3's layout
of a multiprocessor's work. One program of 128 query rows (192 with three consumers, below), in partitions:
  - a loader (one warp): TMA loads of every consumer's Q, then K and V blocks into a ring of STAGES slots, each
    slot reloaded once every consumer has released it;
  - two consumers (a warpgroup of 64 query rows each): per key block, S = Q.K^T (INT8), the softmax, acc +=
    P.V (P in e4m3, from registers), then the slot released.
Against the Triton kernel (two independent 64-row programs per multiprocessor): each K and V block is read from
L2 into shared memory once per 128 rows, not once per 64, and the consumers issue no loads; register
reallocation gives the consumers 240 registers each, the loader 24. V comes with its keys in the MMA's order
(attention_fp8_quant.mma_key_positions), so each thread's share of P from the Q.K^T accumulator is already its
share of the P.V MMA's register operand: no shuffles between threads (FlashAttention-3 permutes V likewise), and
each register of four e4m3 is written by two conversions (_as_operand).

How the consumers share the tensor cores (GluonWsConfig.turns): 'free' leaves it to the warp schedulers;
'scores' makes them take turns at Q.K^T (two mbarriers pass the turn); 'paired' makes each issue Q.K[j+1]^T and
P[j].V[j] together in its turn after its softmax of block j (FlashAttention-3's ping-pong: one consumer's MMAs
run while the other computes its softmax); 'overlap' adds FlashAttention-3's overlap inside the warpgroup (its
softmax of block j+1 runs while its own P[j].V[j] does; P through shared memory); 'overlap-regs' the same with
P left in registers, and '-msum' adds P's row sums taken on the tensor cores. Those two exist for the limit the
profile below shows: under 'paired' each consumer waits for both its MMAs (~512 tensor-core cycles per key block)
before its softmax, whose 64 exp2 per thread alone take another ~512 cycles of the exp2 unit, so a consumer's
block cannot take less than ~1,024 cycles and the tensor cores stay about half idle; with the softmax running
under the consumer's own P.V, the bound is the tensor cores' and the exp2 unit's shared ~1,024 cycles per pair
of blocks. ptxas hoists an MMA wait above any instruction that does not depend on it, so the wait for P.V sits
after the wait for the next turn (a loop: another basic block); in one basic block with the softmax it lands
before the first exp2 (seen in the compiled code; in 'overlap' the P stores and their fence keep it after the
softmax, and that mode still measured slower than 'paired', below). Not yet timed on a GPU (sessions 12 and 13
got none); compiled for sm_90: 540 (overlap-regs) and 485 (-msum) instructions per key block against 524, every
exp2 issued while an MMA runs, no spill in the main loop.

Three consumers (config '-c3', head dim 64 only: 192-row programs, 16 warps, 160 registers a consumer; at head
dim 128 that many spill): at head dim 64 the exp2 unit, not the tensor cores, bounds a key block (its 8,192 exp2
take 512 cycles of the unit, its two MMAs 256), and each softmax is a chain of dependent instructions, so a third
softmax in flight per multiprocessor is what can fill it (FlashAttention-3 takes three warpgroups at head dim 64).
The consumers take their turns round-robin, one turn barrier each. Compiled for sm_90: the same main loop as two
consumers (489 / 506 instructions for 'paired' / 'overlap-regs'), no spill. Not yet timed (for LTX-Video 2B).

Measured on an H100 (2026-12-07 22:56 UTC, per layer, scripts/check_fp8_attention.py; the Triton kernel's default
in the same run 140.1 ms at Wan 720p, 26.88 at 480p, 3.43 for LTX 13B), all exactly the Triton kernel's accuracy
(cosine 0.999847 at Wan 720p): 'paired' 131.8 ms (6 % faster), 26.47 and 3.00 ms (12 % faster at LTX's 11,440
tokens); 'overlap' 146.7, 29.75 and 3.35. Before V's keys were put in the MMA's order (P then went through 16
shuffles, 16 selects and 16 byte permutes per key block and thread; 573 instructions per block against 524 now),
in an earlier run (Triton default 141.5 / 26.66 / 3.12 ms): 'paired' 133.6 / 26.70 / 3.47, with one release per
slot ('-slot') 133.6; 'scores' 148.1; 'free' 151-152. 256-key blocks ('-n256', 13 % fewer instructions per key)
139.4 ms with 'scores' and 155-159 with 'paired' (those spill now, so only the 'scores' ones are kept). Nsight
Compute on 'paired' (Wan 720p, 129.0 ms under the profiler): tensor cores 46 % busy, the exp2 unit 48 %, issue
48 %, three warps per scheduler and 0.67 of them eligible; per issued instruction 2.1 cycles stalled at barriers
and 1.3 on fixed-latency dependencies: latency, not a saturated unit. So 'paired' is the default, and the
attention backend's 'auto' takes this kernel for head dim 128 from 8,192 tokens
(attention_fp8_processors.WARP_SPECIALIZED).

Inputs are the quantised buffers of attention_fp8_quant.quantise_qkv, as Gluon tensor descriptors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma, warpgroup_mma_wait

from ..errors import InvalidInputError
from .attention_custom_op import attention_custom_op
from .attention_fp8_gluon import (BLOCK_N, _keep_p, _rescaled, _row_factor, _softmax, _store_for_mma, _store_output,
                                  _tma_load, gluon_unavailable, quantised_inputs)

CONSUMER_ROWS = gl.constexpr(64)  # query rows per consumer warpgroup
# registers per thread at launch, by number of consumers (the loader's warp counts as a warpgroup: 2 consumers,
# 12 warps, 168 x 384 threads fit the multiprocessor's 64K; 3 consumers, 16 warps, 128 x 512), then reallocated:
# the loader's warpgroup drops to 24, each consumer rises to what the rest leaves (240; 160)
LAUNCH_REGISTERS = {2: 168, 3: 128}
CONSUMER_REGISTERS = {2: 240, 3: 160}
LOADER_REGISTERS = gl.constexpr(24)
FIRST_CONSUMER, SECOND_CONSUMER, THIRD_CONSUMER = gl.constexpr(0), gl.constexpr(1), gl.constexpr(2)
SUM_COLUMNS = gl.constexpr(8)  # the row sums' MMA (GluonWsConfig.mma_sums): P times a KEY_ROWS x 8 tile of ones
SUMS_LAYOUT = gl.constexpr(gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                     instr_shape=[16, SUM_COLUMNS.value, 32]))


@gluon.jit
def _loader(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bars, k_ready, v_ready, k_empty, v_empty, q_row,
            k_row, v_row, blocks, STAGES: gl.constexpr, SLOT_RELEASE: gl.constexpr):
    """Q of every consumer, then every K and V block, each into its ring slot once all consumers freed it.
    SLOT_RELEASE: the consumers free a slot's K and V together (v_empty alone), once its V is read."""
    KEY_ROWS: gl.constexpr = k_desc.block_type.shape[0]
    CONSUMERS: gl.constexpr = q_smem.shape[0]
    for wg in gl.static_range(CONSUMERS):
        mbarrier.expect(q_bars.index(wg), q_desc.block_type.nbytes)
        _tma_load(q_desc, [q_row + wg * CONSUMER_ROWS, 0], q_bars.index(wg), q_smem.index(wg))
    for j in range(blocks):
        slot = j % STAGES
        free = ((j // STAGES) & 1) ^ 1  # a fresh barrier counts as freed once: the first lap does not wait
        if SLOT_RELEASE:
            mbarrier.wait(v_empty.index(slot), free)
        else:
            mbarrier.wait(k_empty.index(slot), free)
        mbarrier.expect(k_ready.index(slot), k_desc.block_type.nbytes)
        _tma_load(k_desc, [k_row + j * KEY_ROWS, 0], k_ready.index(slot), k_smem.index(slot))
        if not SLOT_RELEASE:
            mbarrier.wait(v_empty.index(slot), free)
        mbarrier.expect(v_ready.index(slot), v_desc.block_type.nbytes)
        _tma_load(v_desc, [v_row, j * KEY_ROWS], v_ready.index(slot), v_smem.index(slot))


@gluon.jit
def _take_turn(turns, t, WG: gl.constexpr):
    """Wait until it is consumer WG's t-th turn at the tensor cores. The consumers go round in order, each turn
    passed by the one before (_pass_turn): consumer 0's turn t follows t arrivals on its barrier (its first turn
    none: a fresh barrier passes a wait for parity 1), every other consumer's turn t follows t + 1."""
    if WG == 0:
        mbarrier.wait(turns.index(WG), (t & 1) ^ 1)
    else:
        mbarrier.wait(turns.index(WG), t & 1)


@gluon.jit
def _pass_turn(turns, WG: gl.constexpr):
    """Consumer WG's turn at the tensor cores done: the next consumer's begins (turns has one barrier each)."""
    CONSUMERS: gl.constexpr = turns.shape[0]
    mbarrier.arrive(turns.index((WG + 1) % CONSUMERS), count=1)


@gluon.jit
def _release_k(k_empty, j, STAGES: gl.constexpr, SLOT_RELEASE: gl.constexpr):
    """Block j's K read: its slot's K freed for the loader (with SLOT_RELEASE, the slot is freed once, with V)."""
    if not SLOT_RELEASE:
        mbarrier.arrive(k_empty.index(j % STAGES), count=1)


@gluon.jit
def _issue_scores(q_tile, k_smem, k_ready, j, STAGES: gl.constexpr, s_layout: gl.constexpr, KEY_ROWS: gl.constexpr):
    """S = Q.K[j]^T in INT8, issued once block j's K is in (in flight: the caller waits)."""
    slot = j % STAGES
    mbarrier.wait(k_ready.index(slot), (j // STAGES) & 1)
    zero = gl.zeros([CONSUMER_ROWS, KEY_ROWS], gl.int32, s_layout)
    return warpgroup_mma(q_tile, k_smem.index(slot).permute((1, 0)), zero, use_acc=False, is_async=True)


@gluon.jit
def _issue_pv(p, acc, v_smem, v_ready, j, STAGES: gl.constexpr):
    """acc += P[j].V[j], issued once block j's V is in (in flight: the caller waits)."""
    slot = j % STAGES
    mbarrier.wait(v_ready.index(slot), (j // STAGES) & 1)
    return warpgroup_mma(p, v_smem.index(slot).permute((1, 0)), acc, is_async=True)


@gluon.jit
def _in_mma_key_order(p):
    """P's columns reordered as V's keys are (attention_fp8_quant.mma_key_positions): within each 16 keys, key
    8h + 2c + j goes to 4c + 2h + j. Each thread keeps exactly its own values, so the e4m3 P.V MMA takes P as it
    lies in registers (no shuffle between threads; compiling asserts the conversion is trivial)."""
    ROWS: gl.constexpr = p.shape[0]
    KEYS: gl.constexpr = p.shape[1]
    grouped = gl.reshape(p, [ROWS, KEYS // 16, 2, 4, 2])  # [row, 16 keys, h, c, j]
    return gl.reshape(gl.permute(grouped, (0, 1, 3, 2, 4)), [ROWS, KEYS])


@gluon.jit
def _softmax_rescale(s, acc, row_max, row_sum, row_factor, j, S, s_layout: gl.constexpr, o_layout: gl.constexpr,
                     KEY_ROWS: gl.constexpr, MASK: gl.constexpr):
    """Block j's P (e4m3, as the P.V MMA's register operand), and acc rescaled to the new row maxima."""
    p, row_max, row_sum, alpha = _softmax(s, row_max, row_sum, row_factor, j * KEY_ROWS, S,
                                          gl.SliceLayout(0, s_layout), KEY_ROWS, MASK, E4M3=False)
    acc = _rescaled(acc, alpha, o_layout)
    return _as_operand(p, o_layout), acc, row_max, row_sum


@gluon.jit
def _as_operand(p, o_layout: gl.constexpr):
    """P (fp32) in e4m3 as the register operand of an MMA into an accumulator of o_layout. No data moves between
    threads (V's keys are in the MMA's order), and each four keys the MMA reads from one register are converted
    into it directly (two conversions of two; Triton's own cast adds a byte permute per register)."""
    p = gl.convert_layout(_in_mma_key_order(p), gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=4),
                          assert_trivial=True)
    return gl.inline_asm_elementwise(
        "{ .reg .b16 lo, hi; cvt.rn.satfinite.e4m3x2.f32 lo, $2, $1; cvt.rn.satfinite.e4m3x2.f32 hi, $4, $3; "
        "mov.b32 $0, {lo, hi}; }", "=r,r,r,r,r", [p], dtype=gl.float8e4nv, is_pure=True, pack=4)


@gluon.jit
def _consume_block(j, acc, row_max, row_sum, q_tile, k_smem, v_smem, k_ready, v_ready, k_empty, v_empty, turns,
                   q_scales, k_scales_base, S, K_GROUP: gl.constexpr, STAGES: gl.constexpr, s_layout: gl.constexpr,
                   o_layout: gl.constexpr, WG: gl.constexpr, SCORE_TURNS: gl.constexpr, SLOT_RELEASE: gl.constexpr,
                   MASK: gl.constexpr):
    """One key block for one consumer: scores, softmax, P.V; the block's slot released as soon as each is read.
    SCORE_TURNS: the consumers take turns at Q.K^T, so that one's scores run on the tensor cores while the other
    computes its softmax, rather than both at once."""
    KEY_ROWS: gl.constexpr = k_smem.shape[1]
    row_factor = _row_factor(q_scales, k_scales_base, j * KEY_ROWS, K_GROUP)  # its load overlaps the MMA
    if SCORE_TURNS:
        _take_turn(turns, j, WG)
    s = _issue_scores(q_tile, k_smem, k_ready, j, STAGES, s_layout, KEY_ROWS)
    s = warpgroup_mma_wait(0, deps=(s, ))
    _release_k(k_empty, j, STAGES, SLOT_RELEASE)
    if SCORE_TURNS:
        _pass_turn(turns, WG)
    p, acc, row_max, row_sum = _softmax_rescale(s, acc, row_max, row_sum, row_factor, j, S, s_layout, o_layout,
                                                KEY_ROWS, MASK)
    acc = _issue_pv(p, acc, v_smem, v_ready, j, STAGES)
    acc = warpgroup_mma_wait(0, deps=(acc, ))
    mbarrier.arrive(v_empty.index(j % STAGES), count=1)
    return acc, row_max, row_sum


@gluon.jit
def _first_scores(q_tile, k_smem, k_ready, k_empty, turns, q_scales, k_scales_base, K_GROUP: gl.constexpr,
                  STAGES: gl.constexpr, s_layout: gl.constexpr, WG: gl.constexpr, SLOT_RELEASE: gl.constexpr):
    """The turn-taking modes' first turn: block 0's scores, waited for (its K slot released), and its row factor
    (each block's K scale loads while MMAs run)."""
    _take_turn(turns, 0, WG)
    s = _issue_scores(q_tile, k_smem, k_ready, 0, STAGES, s_layout, k_smem.shape[1])
    _pass_turn(turns, WG)
    row_factor = _row_factor(q_scales, k_scales_base, 0, K_GROUP)
    s = warpgroup_mma_wait(0, deps=(s, ))
    _release_k(k_empty, 0, STAGES, SLOT_RELEASE)
    return s, row_factor


@gluon.jit
def _last_pv(p, acc, v_smem, v_ready, v_empty, turns, blocks, STAGES: gl.constexpr, WG: gl.constexpr):
    """The turn-taking modes' last turn: acc += P.V of the last block (P in registers or shared memory), waited
    for, and its slot released."""
    _take_turn(turns, blocks, WG)
    acc = _issue_pv(p, acc, v_smem, v_ready, blocks - 1, STAGES)
    _pass_turn(turns, WG)
    acc = warpgroup_mma_wait(0, deps=(acc, ))
    mbarrier.arrive(v_empty.index((blocks - 1) % STAGES), count=1)
    return acc


@gluon.jit
def _attend_paired(acc, row_max, row_sum, q_tile, k_smem, v_smem, k_ready, v_ready, k_empty, v_empty, turns,
                   q_scales, k_scales_base, S, blocks, K_GROUP: gl.constexpr, STAGES: gl.constexpr,
                   s_layout: gl.constexpr, o_layout: gl.constexpr, WG: gl.constexpr, SLOT_RELEASE: gl.constexpr):
    """Every key block, the MMAs paired in turns (FlashAttention-3's ping-pong): per block j, this consumer's
    softmax, then in its turn Q.K[j+1]^T and P[j].V[j] issued together, so that the tensor cores run one
    consumer's two MMAs while the other consumer computes its softmax."""
    KEY_ROWS: gl.constexpr = k_smem.shape[1]
    s, row_factor = _first_scores(q_tile, k_smem, k_ready, k_empty, turns, q_scales, k_scales_base, K_GROUP, STAGES,
                                  s_layout, WG, SLOT_RELEASE)
    for j in range(0, blocks - 1):
        p, acc, row_max, row_sum = _softmax_rescale(s, acc, row_max, row_sum, row_factor, j, S, s_layout, o_layout,
                                                    KEY_ROWS, False)
        _take_turn(turns, j + 1, WG)
        s = _issue_scores(q_tile, k_smem, k_ready, j + 1, STAGES, s_layout, KEY_ROWS)
        acc = _issue_pv(p, acc, v_smem, v_ready, j, STAGES)
        _pass_turn(turns, WG)
        row_factor = _row_factor(q_scales, k_scales_base, (j + 1) * KEY_ROWS, K_GROUP)
        s, acc = warpgroup_mma_wait(0, deps=(s, acc))
        _release_k(k_empty, j + 1, STAGES, SLOT_RELEASE)
        mbarrier.arrive(v_empty.index(j % STAGES), count=1)
    # the last block, masked where the sequence ends inside it
    p, acc, row_max, row_sum = _softmax_rescale(s, acc, row_max, row_sum, row_factor, blocks - 1, S, s_layout,
                                                o_layout, KEY_ROWS, True)
    acc = _last_pv(p, acc, v_smem, v_ready, v_empty, turns, blocks, STAGES, WG)
    return acc, row_max, row_sum


@gluon.jit
def _overlapped_step(j, acc, row_max, row_sum, q_tile, p_tiles, k_smem, v_smem, k_ready, v_ready, k_empty, v_empty,
                     turns, q_scales, k_scales_base, S, K_GROUP: gl.constexpr, STAGES: gl.constexpr,
                     s_layout: gl.constexpr, o_layout: gl.constexpr, WG: gl.constexpr, SLOT_RELEASE: gl.constexpr,
                     MASK: gl.constexpr):
    """In this consumer's turn, Q.K[j+1]^T and P[j].V[j] issued together; then block j+1's softmax as soon as its
    scores are in, while P[j].V[j] still runs; then acc rescaled once it lands. On entry P[j] is staged in shared
    memory; on return P[j+1]. Nothing in flight crosses the loop's back edge."""
    KEY_ROWS: gl.constexpr = k_smem.shape[1]
    _take_turn(turns, j + 1, WG)
    s = _issue_scores(q_tile, k_smem, k_ready, j + 1, STAGES, s_layout, KEY_ROWS)
    acc = _issue_pv(p_tiles.index(j % 2), acc, v_smem, v_ready, j, STAGES)
    _pass_turn(turns, WG)
    row_factor = _row_factor(q_scales, k_scales_base, (j + 1) * KEY_ROWS, K_GROUP)
    s = warpgroup_mma_wait(1, deps=(s, ))  # the scores only: P[j].V[j] runs on through the softmax
    _release_k(k_empty, j + 1, STAGES, SLOT_RELEASE)
    p8, row_max, row_sum, alpha = _softmax(s, row_max, row_sum, row_factor, (j + 1) * KEY_ROWS, S,
                                           gl.SliceLayout(0, s_layout), KEY_ROWS, MASK)
    _keep_p(_in_mma_key_order(p8), p_tiles, j + 1)  # the other buffer: P[j].V[j] may still read P[j]
    acc = warpgroup_mma_wait(0, deps=(acc, ))
    mbarrier.arrive(v_empty.index(j % STAGES), count=1)
    acc = _rescaled(acc, alpha, o_layout)
    return acc, row_max, row_sum


@gluon.jit
def _attend_overlapped(acc, row_max, row_sum, q_tile, p_tiles, k_smem, v_smem, k_ready, v_ready, k_empty, v_empty,
                       turns, q_scales, k_scales_base, S, blocks, K_GROUP: gl.constexpr, STAGES: gl.constexpr,
                       s_layout: gl.constexpr, o_layout: gl.constexpr, WG: gl.constexpr, SLOT_RELEASE: gl.constexpr):
    """'paired' turns plus FlashAttention-3's overlap inside the warpgroup (_overlapped_step): P through shared
    memory (p_tiles, two buffers), so no register operand of an MMA in flight outlives its step."""
    KEY_ROWS: gl.constexpr = k_smem.shape[1]
    s, row_factor = _first_scores(q_tile, k_smem, k_ready, k_empty, turns, q_scales, k_scales_base, K_GROUP, STAGES,
                                  s_layout, WG, SLOT_RELEASE)
    # block 0's softmax, masked: it may be the only block (acc is still zero, so nothing to rescale)
    p8, row_max, row_sum, alpha = _softmax(s, row_max, row_sum, row_factor, 0, S, gl.SliceLayout(0, s_layout),
                                           KEY_ROWS, True)
    _keep_p(_in_mma_key_order(p8), p_tiles, 0)
    for j in range(0, blocks - 2):
        acc, row_max, row_sum = _overlapped_step(j, acc, row_max, row_sum, q_tile, p_tiles, k_smem, v_smem, k_ready,
                                                 v_ready, k_empty, v_empty, turns, q_scales, k_scales_base, S,
                                                 K_GROUP, STAGES, s_layout, o_layout, WG, SLOT_RELEASE, False)
    if blocks > 1:  # the last block's softmax, masked where the sequence ends inside it
        acc, row_max, row_sum = _overlapped_step(blocks - 2, acc, row_max, row_sum, q_tile, p_tiles, k_smem, v_smem,
                                                 k_ready, v_ready, k_empty, v_empty, turns, q_scales, k_scales_base,
                                                 S, K_GROUP, STAGES, s_layout, o_layout, WG, SLOT_RELEASE, True)
    acc = _last_pv(p_tiles.index((blocks - 1) % 2), acc, v_smem, v_ready, v_empty, turns, blocks, STAGES, WG)
    return acc, row_max, row_sum


@gluon.jit
def _issue_row_sums(p, sums, ones, MMA_SUMS: gl.constexpr):
    """With MMA_SUMS, P.ones: P's row sums of one key block on the tensor cores, in a 64 x 8 accumulator whose
    every column holds them (in flight: _pv_landed waits). One block at a time: added to the running sums in fp32,
    since an e4m3 MMA accumulates with ~14 bits and the sums only grow. Without, nothing is issued (sums back)."""
    block_sums = sums
    if MMA_SUMS:
        p = gl.convert_layout(p, gl.DotOperandLayout(operand_index=0, parent=SUMS_LAYOUT, k_width=4),
                              assert_trivial=True)
        zero = gl.zeros([CONSUMER_ROWS, SUM_COLUMNS], gl.float32, SUMS_LAYOUT)
        block_sums = warpgroup_mma(p, ones.permute((1, 0)), zero, use_acc=False, is_async=True)
    return block_sums


@gluon.jit
def _issue_pv_and_sums(p, alpha, acc, sums, ones, v_smem, v_ready, j, STAGES: gl.constexpr, o_layout: gl.constexpr,
                       MMA_SUMS: gl.constexpr):
    """acc (and with MMA_SUMS the running sums) rescaled by block j's alpha, then P[j].V[j] issued from registers
    (and with MMA_SUMS P[j]'s row sums, _issue_row_sums); both in flight until _pv_landed."""
    p8 = _as_operand(p, o_layout)
    acc = _issue_pv(p8, _rescaled(acc, alpha, o_layout), v_smem, v_ready, j, STAGES)
    if MMA_SUMS:
        sums = _rescaled(sums, alpha, SUMS_LAYOUT)
    return acc, sums, _issue_row_sums(p8, sums, ones, MMA_SUMS)


@gluon.jit
def _pv_landed(acc, sums, block_sums, MMA_SUMS: gl.constexpr):
    """acc once P.V is done, and with MMA_SUMS the running row sums with this block's (_issue_row_sums) added."""
    if MMA_SUMS:
        acc, block_sums = warpgroup_mma_wait(0, deps=(acc, block_sums))
        sums = sums + block_sums
    else:
        acc = warpgroup_mma_wait(0, deps=(acc, ))
    return acc, sums


@gluon.jit
def _overlapped_step_in_registers(j, p, alpha, acc, sums, ones, row_max, row_sum, q_tile, k_smem, v_smem, k_ready,
                                  v_ready, k_empty, v_empty, turns, q_scales, k_scales_base, S, K_GROUP: gl.constexpr,
                                  STAGES: gl.constexpr, s_layout: gl.constexpr, o_layout: gl.constexpr,
                                  WG: gl.constexpr, SLOT_RELEASE: gl.constexpr, MMA_SUMS: gl.constexpr,
                                  MASK: gl.constexpr):
    """_overlapped_step with P in registers (V's keys in the MMA's order make P its operand without moving data).
    On entry it is this consumer's turn, P[j] (fp32) and its alpha are in registers, acc is not in flight:
    Q.K[j+1]^T issued, acc rescaled and P[j].V[j] issued, block j+1's softmax while P[j].V[j] runs, then the next
    turn taken before P[j].V[j] is waited for: the turn's wait is a loop, so ptxas cannot hoist the MMA wait above
    the softmax's exp2s (it does when the two are in one basic block). MMA_SUMS: P's row sums accumulate on the
    tensor cores (_issue_row_sums), added to `sums` (rescaled with acc), instead of by 64 adds per thread."""
    KEY_ROWS: gl.constexpr = k_smem.shape[1]
    s = _issue_scores(q_tile, k_smem, k_ready, j + 1, STAGES, s_layout, KEY_ROWS)
    acc, sums, block_sums = _issue_pv_and_sums(p, alpha, acc, sums, ones, v_smem, v_ready, j, STAGES, o_layout,
                                               MMA_SUMS)
    _pass_turn(turns, WG)
    row_factor = _row_factor(q_scales, k_scales_base, (j + 1) * KEY_ROWS, K_GROUP)
    # the scores only: P[j].V[j] (and P[j]'s sums) run on through the softmax
    s = warpgroup_mma_wait(2 if MMA_SUMS else 1, deps=(s, ))
    _release_k(k_empty, j + 1, STAGES, SLOT_RELEASE)
    p, row_max, row_sum, alpha = _softmax(s, row_max, row_sum, row_factor, (j + 1) * KEY_ROWS, S,
                                          gl.SliceLayout(0, s_layout), KEY_ROWS, MASK, E4M3=False,
                                          ROW_SUM=not MMA_SUMS)
    _take_turn(turns, j + 2, WG)
    acc, sums = _pv_landed(acc, sums, block_sums, MMA_SUMS)
    mbarrier.arrive(v_empty.index(j % STAGES), count=1)
    return p, alpha, acc, sums, row_max, row_sum


@gluon.jit
def _attend_overlapped_in_registers(acc, row_max, row_sum, ones, q_tile, k_smem, v_smem, k_ready, v_ready, k_empty,
                                    v_empty, turns, q_scales, k_scales_base, S, blocks, K_GROUP: gl.constexpr,
                                    STAGES: gl.constexpr, s_layout: gl.constexpr, o_layout: gl.constexpr,
                                    WG: gl.constexpr, SLOT_RELEASE: gl.constexpr, MMA_SUMS: gl.constexpr):
    """_attend_overlapped with P in registers (_overlapped_step_in_registers)."""
    KEY_ROWS: gl.constexpr = k_smem.shape[1]
    if MMA_SUMS:  # P's row sums on the tensor cores: P times a tile of ones
        _store_for_mma(gl.full([SUM_COLUMNS, KEY_ROWS], 1.0, gl.float32,
                               gl.BlockedLayout([1, 16], [1, 32], [4, 1], [1, 0])).to(gl.float8e4nv), ones)
    sums = gl.zeros([CONSUMER_ROWS, SUM_COLUMNS], gl.float32, SUMS_LAYOUT)  # their running total (MMA_SUMS only)
    s, row_factor = _first_scores(q_tile, k_smem, k_ready, k_empty, turns, q_scales, k_scales_base, K_GROUP, STAGES,
                                  s_layout, WG, SLOT_RELEASE)
    # block 0's softmax, masked: it may be the only block (acc is still zero: its rescale by alpha keeps it zero)
    p, row_max, row_sum, alpha = _softmax(s, row_max, row_sum, row_factor, 0, S, gl.SliceLayout(0, s_layout),
                                          KEY_ROWS, True, E4M3=False, ROW_SUM=not MMA_SUMS)
    _take_turn(turns, 1, WG)
    for j in range(0, blocks - 2):
        p, alpha, acc, sums, row_max, row_sum = _overlapped_step_in_registers(
            j, p, alpha, acc, sums, ones, row_max, row_sum, q_tile, k_smem, v_smem, k_ready, v_ready, k_empty,
            v_empty, turns, q_scales, k_scales_base, S, K_GROUP, STAGES, s_layout, o_layout, WG, SLOT_RELEASE,
            MMA_SUMS, False)
    if blocks > 1:  # the last block's softmax, masked where the sequence ends inside it
        p, alpha, acc, sums, row_max, row_sum = _overlapped_step_in_registers(
            blocks - 2, p, alpha, acc, sums, ones, row_max, row_sum, q_tile, k_smem, v_smem, k_ready, v_ready,
            k_empty, v_empty, turns, q_scales, k_scales_base, S, K_GROUP, STAGES, s_layout, o_layout, WG,
            SLOT_RELEASE, MMA_SUMS, True)
    # this consumer's last turn is taken: the last block's P.V
    acc, sums, block_sums = _issue_pv_and_sums(p, alpha, acc, sums, ones, v_smem, v_ready, blocks - 1, STAGES,
                                               o_layout, MMA_SUMS)
    _pass_turn(turns, WG)
    acc, sums = _pv_landed(acc, sums, block_sums, MMA_SUMS)
    if MMA_SUMS:
        row_sum = gl.convert_layout(gl.max(sums, 1), row_sum.type.layout)  # every column holds the sums
    mbarrier.arrive(v_empty.index((blocks - 1) % STAGES), count=1)
    return acc, row_max, row_sum


@gluon.jit
def _consumer(q_smem, k_smem, v_smem, p_tiles, ones, q_bars, k_ready, v_ready, k_empty, v_empty, turns, q_scales_ptr,
              k_scales_ptr, v_scales_ptr, v_means_ptr, out_ptr, S, S_pad, H, sob, soh, sos, sod, bh, first_row, blocks,
              Q_GROUP: gl.constexpr, K_GROUP: gl.constexpr, STAGES: gl.constexpr, SCORE_TURNS: gl.constexpr,
              PAIRED_TURNS: gl.constexpr, OVERLAP: gl.constexpr, OVERLAP_REGS: gl.constexpr,
              SLOT_RELEASE: gl.constexpr, MMA_SUMS: gl.constexpr, WG: gl.constexpr):
    """Consumer WG's 64 query rows (first_row + 64 * WG ...) against every key block; writes their output."""
    D: gl.constexpr = q_smem.shape[2]
    KEY_ROWS: gl.constexpr = k_smem.shape[1]
    # Q.K^T in wgmma instructions of 128 keys (Triton does not emit INT8 ones of 256)
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, 128, 32])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, D, 32])
    rows_start = first_row + WG * CONSUMER_ROWS
    rows = rows_start + gl.arange(0, CONSUMER_ROWS, gl.SliceLayout(1, s_layout))
    CONSUMERS: gl.constexpr = q_smem.shape[0]
    if CONSUMERS == 2:  # 128-row programs tile the padded length (a multiple of 256) exactly
        q_scales = gl.load(q_scales_ptr + bh * (S_pad // Q_GROUP) + rows // Q_GROUP)
    else:  # 192-row programs: the last one's rows may pass it (their Q comes from the next head or TMA's zero
        # fill and their output is never stored; their scales must not be read past the buffer)
        q_scales = gl.load(q_scales_ptr + bh * (S_pad // Q_GROUP) + rows // Q_GROUP, mask=rows < S_pad, other=1.0)
    k_scales_base = k_scales_ptr + bh * (S_pad // K_GROUP)
    row_max = gl.full([CONSUMER_ROWS], float("-inf"), gl.float32, gl.SliceLayout(1, s_layout))
    row_sum = gl.zeros([CONSUMER_ROWS], gl.float32, gl.SliceLayout(1, s_layout))
    acc = gl.zeros([CONSUMER_ROWS, D], gl.float32, o_layout)
    q_tile = q_smem.index(WG)
    ones = ones.index(WG)
    mbarrier.wait(q_bars.index(WG), 0)
    if OVERLAP_REGS:
        acc, row_max, row_sum = _attend_overlapped_in_registers(acc, row_max, row_sum, ones, q_tile, k_smem, v_smem,
                                                                k_ready, v_ready, k_empty, v_empty, turns, q_scales,
                                                                k_scales_base, S, blocks, K_GROUP, STAGES, s_layout,
                                                                o_layout, WG, SLOT_RELEASE, MMA_SUMS)
    elif OVERLAP:
        acc, row_max, row_sum = _attend_overlapped(acc, row_max, row_sum, q_tile, p_tiles, k_smem, v_smem,
                                                   k_ready, v_ready, k_empty, v_empty, turns, q_scales,
                                                   k_scales_base, S, blocks, K_GROUP, STAGES, s_layout, o_layout, WG,
                                                   SLOT_RELEASE)
    elif PAIRED_TURNS:
        acc, row_max, row_sum = _attend_paired(acc, row_max, row_sum, q_tile, k_smem, v_smem, k_ready, v_ready,
                                               k_empty, v_empty, turns, q_scales, k_scales_base, S, blocks, K_GROUP,
                                               STAGES, s_layout, o_layout, WG, SLOT_RELEASE)
    else:
        for j in range(0, blocks - 1):
            acc, row_max, row_sum = _consume_block(j, acc, row_max, row_sum, q_tile, k_smem, v_smem, k_ready,
                                                   v_ready, k_empty, v_empty, turns, q_scales, k_scales_base, S,
                                                   K_GROUP, STAGES, s_layout, o_layout, WG, SCORE_TURNS, SLOT_RELEASE,
                                                   False)
        # the last block, masked where the sequence ends inside it
        acc, row_max, row_sum = _consume_block(blocks - 1, acc, row_max, row_sum, q_tile, k_smem, v_smem, k_ready,
                                               v_ready, k_empty, v_empty, turns, q_scales, k_scales_base, S, K_GROUP,
                                               STAGES, s_layout, o_layout, WG, SCORE_TURNS, SLOT_RELEASE, True)

    _store_output(acc, row_sum, rows_start, bh, v_scales_ptr, v_means_ptr, out_ptr, S, H, sob, soh, sos, sod,
                  o_layout, CONSUMER_ROWS, D)

@gluon.jit
def _fp8_attention_ws_kernel(q_desc, k_desc, v_desc, q_scales_ptr, k_scales_ptr, v_scales_ptr, v_means_ptr, out_ptr,
                             S, S_pad, H, sob, soh, sos, sod, Q_GROUP: gl.constexpr, K_GROUP: gl.constexpr,
                             STAGES: gl.constexpr, SCORE_TURNS: gl.constexpr, PAIRED_TURNS: gl.constexpr,
                             OVERLAP: gl.constexpr, OVERLAP_REGS: gl.constexpr, SLOT_RELEASE: gl.constexpr,
                             MMA_SUMS: gl.constexpr, CONSUMERS: gl.constexpr, CONSUMER_REGS: gl.constexpr):
    D: gl.constexpr = q_desc.block_type.shape[1]
    bh = gl.program_id(1).to(gl.int64)
    first_row = gl.program_id(0) * (CONSUMERS * CONSUMER_ROWS)
    q_row = (bh * S_pad + first_row).to(gl.int32)
    k_row = (bh * S_pad).to(gl.int32)
    v_row = (bh * D).to(gl.int32)
    blocks = gl.cdiv(S, k_desc.block_type.shape[0])

    q_smem = gl.allocate_shared_memory(q_desc.dtype, [CONSUMERS] + q_desc.block_type.shape, q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    # each consumer's P of two blocks (turns 'overlap' only: its P.V MMAs read P from there)
    KEY_ROWS: gl.constexpr = k_desc.block_type.shape[0]
    p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([CONSUMER_ROWS, KEY_ROWS], gl.float8e4nv)
    p_first = gl.allocate_shared_memory(gl.float8e4nv, [2, CONSUMER_ROWS, KEY_ROWS], p_layout)
    p_second = gl.allocate_shared_memory(gl.float8e4nv, [2, CONSUMER_ROWS, KEY_ROWS], p_layout)
    # each consumer's tile of ones, 8 x KEY_ROWS (MMA_SUMS only: P times it gives P's row sums)
    ones_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([SUM_COLUMNS, KEY_ROWS], gl.float8e4nv)
    ones = gl.allocate_shared_memory(gl.float8e4nv, [CONSUMERS, SUM_COLUMNS, KEY_ROWS], ones_layout)
    q_bars = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    # whose turn at the MMAs it is: one barrier per consumer, arrived on by the consumer before it
    turns = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(CONSUMERS):
        mbarrier.init(q_bars.index(i), count=1)
        mbarrier.init(turns.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        # every consumer releases each slot (k_empty unused with SLOT_RELEASE)
        mbarrier.init(k_empty.index(i), count=CONSUMERS)
        mbarrier.init(v_empty.index(i), count=CONSUMERS)

    # the argument lists are written out in full for each consumer count: gathered into a tuple variable, the
    # constexpr flags reach the partitions as run-time values (tried: the mode branches then fail to compile)
    if CONSUMERS == 3:
        p_third = gl.allocate_shared_memory(gl.float8e4nv, [2, CONSUMER_ROWS, KEY_ROWS], p_layout)
        gl.warp_specialize([
            (_consumer, (q_smem, k_smem, v_smem, p_first, ones, q_bars, k_ready, v_ready, k_empty, v_empty, turns,
                         q_scales_ptr, k_scales_ptr, v_scales_ptr, v_means_ptr, out_ptr, S, S_pad, H, sob, soh, sos,
                         sod, bh, first_row, blocks, Q_GROUP, K_GROUP, STAGES, SCORE_TURNS, PAIRED_TURNS, OVERLAP,
                         OVERLAP_REGS, SLOT_RELEASE, MMA_SUMS, FIRST_CONSUMER)),
            (_consumer, (q_smem, k_smem, v_smem, p_second, ones, q_bars, k_ready, v_ready, k_empty, v_empty, turns,
                         q_scales_ptr, k_scales_ptr, v_scales_ptr, v_means_ptr, out_ptr, S, S_pad, H, sob, soh, sos,
                         sod, bh, first_row, blocks, Q_GROUP, K_GROUP, STAGES, SCORE_TURNS, PAIRED_TURNS, OVERLAP,
                         OVERLAP_REGS, SLOT_RELEASE, MMA_SUMS, SECOND_CONSUMER)),
            (_consumer, (q_smem, k_smem, v_smem, p_third, ones, q_bars, k_ready, v_ready, k_empty, v_empty, turns,
                         q_scales_ptr, k_scales_ptr, v_scales_ptr, v_means_ptr, out_ptr, S, S_pad, H, sob, soh, sos,
                         sod, bh, first_row, blocks, Q_GROUP, K_GROUP, STAGES, SCORE_TURNS, PAIRED_TURNS, OVERLAP,
                         OVERLAP_REGS, SLOT_RELEASE, MMA_SUMS, THIRD_CONSUMER)),
            (_loader, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bars, k_ready, v_ready, k_empty, v_empty,
                       q_row, k_row, v_row, blocks, STAGES, SLOT_RELEASE)),
        ], [4, 4, 1], [CONSUMER_REGS, CONSUMER_REGS, LOADER_REGISTERS])
    else:
        gl.warp_specialize([
            (_consumer, (q_smem, k_smem, v_smem, p_first, ones, q_bars, k_ready, v_ready, k_empty, v_empty, turns,
                         q_scales_ptr, k_scales_ptr, v_scales_ptr, v_means_ptr, out_ptr, S, S_pad, H, sob, soh, sos,
                         sod, bh, first_row, blocks, Q_GROUP, K_GROUP, STAGES, SCORE_TURNS, PAIRED_TURNS, OVERLAP,
                         OVERLAP_REGS, SLOT_RELEASE, MMA_SUMS, FIRST_CONSUMER)),
            (_consumer, (q_smem, k_smem, v_smem, p_second, ones, q_bars, k_ready, v_ready, k_empty, v_empty, turns,
                         q_scales_ptr, k_scales_ptr, v_scales_ptr, v_means_ptr, out_ptr, S, S_pad, H, sob, soh, sos,
                         sod, bh, first_row, blocks, Q_GROUP, K_GROUP, STAGES, SCORE_TURNS, PAIRED_TURNS, OVERLAP,
                         OVERLAP_REGS, SLOT_RELEASE, MMA_SUMS, SECOND_CONSUMER)),
            (_loader, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bars, k_ready, v_ready, k_empty, v_empty,
                       q_row, k_row, v_row, blocks, STAGES, SLOT_RELEASE)),
        ], [4, 1], [CONSUMER_REGS, LOADER_REGISTERS])

    for i in gl.static_range(CONSUMERS):
        mbarrier.invalidate(q_bars.index(i))
        mbarrier.invalidate(turns.index(i))
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(k_ready.index(i))
        mbarrier.invalidate(v_ready.index(i))
        mbarrier.invalidate(k_empty.index(i))
        mbarrier.invalidate(v_empty.index(i))


@dataclass(frozen=True)
class GluonWsConfig:
    """K/V ring slots, and how the consumers share the tensor cores: 'free' (no coordination), 'scores' (they take
    turns at Q.K^T), 'paired' (they take turns at Q.K[j+1]^T and P[j].V[j] issued together), 'overlap' ('paired',
    and each consumer's softmax of block j+1 runs while its P[j].V[j] does, P through shared memory), 'overlap-regs'
    (the same with P in registers, _overlapped_step_in_registers). mma_sums ('overlap-regs' only): P's row sums
    on the tensor cores (P times a tile of ones) instead of 64 adds per thread and block. slot_release: each
    consumer frees a slot's K and V with one arrive once it has read V (one barrier of its 4 warps per key block
    fewer; the loader refills K a little later). key_rows: keys per block, 128 or 256 (FlashAttention-3 takes 224
    for FP8 at head dim 128: fewer blocks, so fewer rescales of acc, barriers and turns per key; 256 quantises K
    with one scale per 256 keys, one per block). consumers: consumer warpgroups of 64 query rows per program, 2 or
    3 (FlashAttention-3 takes 3 at head dim 64, where the accumulator is half as large: more softmaxes in flight
    per multiprocessor, at 160 registers each)."""
    stages: int = 3
    turns: str = "free"
    slot_release: bool = False
    key_rows: int = BLOCK_N
    mma_sums: bool = False
    consumers: int = 2

    def __post_init__(self):
        if self.consumers not in CONSUMER_REGISTERS:
            raise ValueError(f"consumers must be one of {sorted(CONSUMER_REGISTERS)} (got {self.consumers})")
        if self.mma_sums and self.turns != "overlap-regs":
            raise ValueError(f"mma_sums needs turns 'overlap-regs' (got {self.turns!r}): only that mode takes P's row "
                             "sums on the tensor cores")

    @property
    def name(self) -> str:
        return (f"s{self.stages}" + ("" if self.turns == "free" else f"-{self.turns}")
                + ("-slot" if self.slot_release else "") + ("" if self.key_rows == BLOCK_N else f"-n{self.key_rows}")
                + ("-msum" if self.mma_sums else "") + ("" if self.consumers == 2 else f"-c{self.consumers}"))

    @property
    def query_rows(self) -> int:
        """Rows of the query blocks its descriptor loads: one consumer's."""
        return CONSUMER_ROWS.value

    @property
    def head_dims(self) -> tuple[int, ...]:
        """The head dims it takes: three consumers' 160 registers hold a head dim 64 accumulator only (at 128 they
        spill)."""
        return (64, ) if self.consumers == 3 else (64, 128)

    @property
    def block_m(self) -> int:
        """Query rows per program: every consumer's."""
        return self.consumers * CONSUMER_ROWS.value

    def kernel_constants(self) -> dict:
        """The kernel's meta-parameters this config sets (launch options apart)."""
        return {"STAGES": self.stages, "SCORE_TURNS": self.turns == "scores", "PAIRED_TURNS": self.turns == "paired",
                "OVERLAP": self.turns == "overlap", "OVERLAP_REGS": self.turns == "overlap-regs",
                "SLOT_RELEASE": self.slot_release, "MMA_SUMS": self.mma_sums, "CONSUMERS": self.consumers,
                "CONSUMER_REGS": CONSUMER_REGISTERS[self.consumers]}

    def launch_options(self) -> dict:
        """Triton's compile options: the default partition's 4 warps, the launch register cap (LAUNCH_REGISTERS)."""
        return {"num_warps": 4, "maxnreg": LAUNCH_REGISTERS[self.consumers]}


GLUON_WS_CONFIGS = {c.name: c for c in (
    GluonWsConfig(2), GluonWsConfig(3), GluonWsConfig(4), GluonWsConfig(3, "scores"),
    GluonWsConfig(2, "paired"), GluonWsConfig(3, "paired"), GluonWsConfig(4, "paired"),
    GluonWsConfig(3, "scores", True), GluonWsConfig(3, "paired", True), GluonWsConfig(4, "paired", True),
    GluonWsConfig(2, "scores", key_rows=256), GluonWsConfig(3, "scores", key_rows=256),
    GluonWsConfig(2, "overlap"), GluonWsConfig(3, "overlap"), GluonWsConfig(3, "overlap", True),
    GluonWsConfig(2, "overlap-regs"), GluonWsConfig(3, "overlap-regs"), GluonWsConfig(3, "overlap-regs", True),
    GluonWsConfig(3, "overlap-regs", mma_sums=True), GluonWsConfig(2, "overlap-regs", mma_sums=True),
    GluonWsConfig(3, "paired", consumers=3), GluonWsConfig(3, "overlap-regs", consumers=3))}
DEFAULT_GLUON_WS_CONFIG = GLUON_WS_CONFIGS["s3-paired"]  # the fastest measured


def gluon_ws_fp8_attention(q, k, v, layout: str = "bshd", config: GluonWsConfig = DEFAULT_GLUON_WS_CONFIG):
    """Self-attention of q, k, v like attention_fp8.fp8_attention (INT8 Q.K only), through the warp-specialized
    kernel. Hopper only: Gluon has no CPU interpreter."""
    from .attention_fp8_quant import logical_strides

    if q.shape[-1] not in config.head_dims:
        why = (": three consumers get 160 registers each, too few for a head dim 128 accumulator (it spills). Use a "
               "two-consumer config." if config.consumers == 3 else ".")
        raise InvalidInputError(f"Warp-specialized config {config.name} takes head dim "
                                f"{' or '.join(map(str, config.head_dims))} only (got {q.shape[-1]}){why}")
    qkv, descriptors, out = quantised_inputs(q, k, v, layout, config.query_rows, config.key_rows, v_mma_order=True)
    grid = (triton.cdiv(qkv.tokens, config.block_m), qkv.batch * qkv.heads)
    _fp8_attention_ws_kernel[grid](*descriptors, qkv.q_scales, qkv.k_scales, qkv.v_scales, qkv.v_means,
                                   out, qkv.tokens, qkv.padded, qkv.heads, *logical_strides(out, layout),
                                   Q_GROUP=qkv.q_group, K_GROUP=qkv.k_group, **config.kernel_constants(),
                                   **config.launch_options())
    return out


def gluon_ws_unavailable() -> str | None:
    """Why the warp-specialized kernel cannot run here, or None (the Gluon kernel's reasons)."""
    return gluon_unavailable()


def ws_config(name: str) -> GluonWsConfig:
    """A config by name ('default': DEFAULT_GLUON_WS_CONFIG)."""
    if name == "default":
        return DEFAULT_GLUON_WS_CONFIG
    if name not in GLUON_WS_CONFIGS:
        raise InvalidInputError(f"Unknown warp-specialized config '{name}'. Choose one of: "
                                f"{', '.join(GLUON_WS_CONFIGS)}.")
    return GLUON_WS_CONFIGS[name]


def _gluon_ws_fp8_attention_call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: str) -> torch.Tensor:
    return gluon_ws_fp8_attention(q, k, v, "bshd", ws_config(config))


gluon_ws_fp8_attention_op = attention_custom_op("gluon_ws_fp8_attention", _gluon_ws_fp8_attention_call)
