#!/usr/bin/env python3
"""Compile the FP8 attention kernel (engine/models/attention_fp8.py) for Hopper ahead of time, on any machine:
no GPU needed, Triton's own ptxas does it. For each named config, head dim and Q.K dtype: whether it compiles
for sm_90, its shared memory and registers per program and how many programs they let share one multiprocessor
(the default configs rely on two: one's MMAs run while the other computes its softmax), the MMA instructions it
emits, and — where Triton's cuobjdump is there — the instruction mix of the main loop per warp and key block
(total, special-function-unit ops such as exp2, conversions to FP8): a static profile to read before spending
GPU time on a variant. `--gluon` adds the Gluon kernel (engine/models/attention_fp8_gluon.py) in each of its
GluonConfigs; "exp2 during MMA" counts the softmax's exp2s issued while a warpgroup MMA is in flight, which is what
that kernel exists for. `--gluon-ws s2 s3` adds the warp-specialized one (attention_fp8_gluon_ws.py) with 2 and 3
K/V slots; its rows give the registers its partitions ask for at run time ("register_reallocations").

    python scripts/compile_fp8_attention.py                               # every named config, head dims 64, 128
    python scripts/compile_fp8_attention.py --configs m64n128w4s3-fastacc-tma --gluon --gluon-ws s3 s3-paired
    python scripts/compile_fp8_attention.py --configs m64n128w4s3-fastacc-tma --head-dims 128 --json out.json

Exits 1 if any config fails to compile (each failure is reported; the others go on).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

# the kernels must be real JIT functions, not the CPU interpreter's
os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from pack_import import import_engine_only  # noqa: E402

import_engine_only()  # `reelsmith.engine` without the ComfyUI node layer

HOPPER_SHARED_MEMORY = 228 * 1024  # per multiprocessor, H100 and H200
SHARED_MEMORY_RESERVED_PER_PROGRAM = 1024  # the driver keeps 1 KB of each block's shared memory
HOPPER_REGISTERS = 64 * 1024  # 32-bit registers per multiprocessor
# the arguments both kernels take after their three Q, K, V sources
SCALES_AND_OUTPUT = {"q_scales_ptr": "*fp32", "k_scales_ptr": "*fp32", "v_scales_ptr": "*fp32", "v_means_ptr": "*fp32",
                     "out_ptr": "*bf16", "S": "i32", "S_pad": "i32", "H": "i32",
                     "sob": "i64", "soh": "i64", "sos": "i64", "sod": "i64"}
SASS_LINE = re.compile(r"\s+/\*([0-9a-f]+)\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)(.*);")


def kernel_signature(config, head_dim: int, qk_int8: bool) -> tuple[dict, dict]:
    """Argument types and constants of `_fp8_attention_kernel` as `attend_quantised` launches it."""
    from reelsmith.engine.models.attention_fp8_reference import K_GROUP, Q_GROUP

    qk_type = "i8" if qk_int8 else "fp8e4nv"
    if config.loads == "tma":
        sources = {"q_src": f"tensordesc<{qk_type}[{config.block_m},{head_dim}]>",
                   "k_src": f"tensordesc<{qk_type}[{config.block_n},{head_dim}]>",
                   "v_src": f"tensordesc<fp8e4nv[{head_dim},{config.block_n}]>"}
    else:
        sources = {"q_src": f"*{qk_type}", "k_src": f"*{qk_type}", "v_src": "*fp8e4nv"}
    signature = {**sources, **SCALES_AND_OUTPUT}
    constants = {"D": head_dim, "Q_GROUP": Q_GROUP, "K_GROUP": K_GROUP, "QK_INT8": qk_int8, "ROUND_FIRST": False,
                 **config.kernel_constants()}
    signature.update({name: "constexpr" for name in constants})
    return signature, constants


def sass_profile(cubin: bytes) -> dict | None:
    """Registers per thread, spills, and the instruction counts of the kernel's main loop (the first backward
    branch's body: the full key blocks) per warp, from Triton's cuobjdump; None where that tool is missing."""
    import triton

    tool = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        sass = subprocess.run([str(tool), "-sass", handle.name], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run([str(tool), "-res-usage", handle.name], capture_output=True, text=True,
                               check=True).stdout
    profile = {"registers": int(re.search(r"REG:(\d+)", usage).group(1)),
               "spill_bytes": int(re.search(r"LOCAL:(\d+)", usage).group(1)),
               # a warp-specialized kernel's partitions reallocate registers (setmaxnreg): the values they ask for
               "register_reallocations": sorted({int(value, 16) for value in
                                                 re.findall(r"USETMAXREG\.\S+ (?:\w+, )?0x([0-9a-f]+)", sass)})}
    instructions = [(int(m.group(1), 16), m.group(2), m.group(3)) for m in map(SASS_LINE.match, sass.splitlines())
                    if m]
    index_of = {address: i for i, (address, _, _) in enumerate(instructions)}
    for i, (address, opcode, operands) in enumerate(instructions):
        target = re.search(r"0x([0-9a-f]+)", operands) if opcode.startswith("BRA") else None
        start = index_of.get(int(target.group(1), 16)) if target else None
        if start is not None and start < i and i - start > 100:  # the loop, not a barrier's spin wait
            loop = [op for _, op, _ in instructions[start:i + 1]]
            counts = collections.Counter(op.split(".")[0] for op in loop)
            overlapped, in_flight = 0, 0  # exp2s issued while a group of MMAs is outstanding
            for _, op, operands in instructions[start:i + 1]:
                if "GMMA" in op and "gsb0" in operands:  # the last MMA of a group
                    in_flight += 1
                elif op.startswith("WARPGROUP.DEPBAR"):  # wait until at most N groups are outstanding
                    in_flight = min(in_flight, int(operands.rsplit(",", 1)[1], 16))
                overlapped += in_flight > 0 and op.startswith("MUFU.EX2")
            profile["main_loop"] = {
                "instructions": i + 1 - start, "special_function": counts["MUFU"], "fp8_conversions": counts["F2FP"],
                "fma_pipe": counts["FFMA"] + counts["FADD"] + counts["FMUL"],
                # waits for warpgroup MMAs, and exp2s issued while an MMA runs: the Triton kernel waits for each
                # Q.K^T before the softmax; the Gluon kernel leaves the next block's in flight through it (ptxas
                # adds a wait after every MMA wherever it cannot prove that safe)
                "mma_waits": sum(op.startswith("WARPGROUP.DEPBAR") for op in loop),
                # spilled registers reloaded or stored inside the loop (a spill outside it costs once per program)
                "local_memory_ops": counts["LDL"] + counts["STL"],
                "exp2_during_mma": overlapped}
            break
    return profile


def profile_compiled(row: dict, compiled) -> dict:
    """Shared memory, registers, programs per multiprocessor, MMA kinds and the main loop's instruction mix."""
    shared = compiled.metadata.shared
    ptx = compiled.asm["ptx"]
    profile = sass_profile(compiled.asm["cubin"]) or {}
    programs = HOPPER_SHARED_MEMORY // (shared + SHARED_MEMORY_RESERVED_PER_PROGRAM)
    if "registers" in profile:  # 64K registers per multiprocessor
        # all the program's warps (a warp-specialized kernel's partitions included), at their launch registers
        programs = min(programs, HOPPER_REGISTERS // (profile["registers"] * 32 * compiled.metadata.num_warps))
    row.update(shared_bytes=shared, programs_per_sm=programs, registers=profile.get("registers"),
               spill_bytes=profile.get("spill_bytes"), warps=compiled.metadata.num_warps,
               register_reallocations=profile.get("register_reallocations"),
               # the warpgroup MMA shapes and operand types: INT8 (Q.K) and e4m3 (P.V, and Q.K with fp8)
               mma=sorted(set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.(\S+?) ", ptx))),
               main_loop=profile.get("main_loop"))
    return row


def compile_for_hopper(row: dict, source, options: dict) -> dict:
    """Compile `source` for sm_90 and profile it into `row`; a failure is reported in the row (the others go on)."""
    import triton
    from triton.backends.compiler import GPUTarget

    try:
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 128), options=options)
    except Exception as error:
        row["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[-1][:300]}"
        return row
    return profile_compiled(row, compiled)


def compile_config(name: str, head_dim: int, qk_dtype: str) -> dict:
    """The Triton kernel with one named config."""
    from triton.compiler import ASTSource

    from reelsmith.engine.models import attention_fp8

    config = attention_fp8.FP8_ATTENTION_CONFIGS[name]
    row = {"config": name, "head_dim": head_dim, "qk_dtype": qk_dtype}
    signature, constants = kernel_signature(config, head_dim, qk_dtype == "int8")
    return compile_for_hopper(row, ASTSource(attention_fp8._fp8_attention_kernel, signature, constants),
                              config.launch_options())


def compile_gluon_kernel(row: dict, kernel, head_dim: int, config) -> dict:
    """A Gluon kernel taking the quantised buffers as descriptors (attention_fp8_gluon.quantised_inputs' blocks, of
    the config's query and key rows) with `config`'s constants and launch options."""
    from triton.experimental.gluon._runtime import GluonASTSource

    from reelsmith.engine.models.attention_fp8_gluon import key_group, shared_layouts
    from reelsmith.engine.models.attention_fp8_reference import Q_GROUP

    query_rows, key_rows = config.query_rows, config.key_rows
    query, key, value = shared_layouts(head_dim, query_rows, key_rows)
    signature = {"q_desc": f"tensordesc<i8[{query_rows},{head_dim}],{query!r}>",
                 "k_desc": f"tensordesc<i8[{key_rows},{head_dim}],{key!r}>",
                 "v_desc": f"tensordesc<fp8e4nv[{head_dim},{key_rows}],{value!r}>", **SCALES_AND_OUTPUT}
    constants = {"Q_GROUP": Q_GROUP, "K_GROUP": key_group(key_rows), **config.kernel_constants()}
    signature.update({name: "constexpr" for name in constants})
    return compile_for_hopper(row, GluonASTSource(kernel, signature, constants), config.launch_options())


def compile_gluon(head_dim: int, config) -> dict:
    """The Gluon kernel (engine/models/attention_fp8_gluon.py) in one of its GluonConfigs."""
    from reelsmith.engine.models import attention_fp8_gluon as gluon_kernel

    row = {"config": f"gluon-{config.name}", "head_dim": head_dim, "qk_dtype": "int8"}
    return compile_gluon_kernel(row, gluon_kernel._fp8_attention_gluon_kernel, head_dim, config)


def compile_gluon_ws(head_dim: int, config) -> dict:
    """The warp-specialized Gluon kernel (engine/models/attention_fp8_gluon_ws.py) in one of its configs. The
    registers ptxas reports are the launch cap; setmaxnreg then gives the consumers more."""
    from reelsmith.engine.models import attention_fp8_gluon_ws as ws_kernel

    row = {"config": f"gluon-ws-{config.name}", "head_dim": head_dim, "qk_dtype": "int8"}
    return compile_gluon_kernel(row, ws_kernel._fp8_attention_ws_kernel, head_dim, config)


def main(argv=None) -> int:
    from reelsmith.engine.models import attention_fp8

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=list(attention_fp8.FP8_ATTENTION_CONFIGS),
                        default=list(attention_fp8.FP8_ATTENTION_CONFIGS))
    parser.add_argument("--head-dims", nargs="+", type=int, choices=[64, 128], default=[64, 128])
    parser.add_argument("--qk-dtype", nargs="+", choices=["int8", "fp8"], default=["int8"])
    parser.add_argument("--gluon", action="store_true", help="also the Gluon kernel, every GluonConfig")
    parser.add_argument("--gluon-ws", nargs="*", default=[], metavar="CONFIG",
                        help="also the warp-specialized Gluon kernel in these configs "
                             "(attention_fp8_gluon_ws.GLUON_WS_CONFIGS)")
    parser.add_argument("--json", type=pathlib.Path, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = [compile_config(name, dim, qk) for name in args.configs for dim in args.head_dims for qk in args.qk_dtype]
    if args.gluon:
        from reelsmith.engine.models.attention_fp8_gluon import GLUON_CONFIGS
        rows += [compile_gluon(dim, config) for config in GLUON_CONFIGS for dim in args.head_dims]
    if args.gluon_ws:
        from reelsmith.engine.models.attention_fp8_gluon_ws import GLUON_WS_CONFIGS
        rows += [compile_gluon_ws(dim, GLUON_WS_CONFIGS[name]) for name in args.gluon_ws for dim in args.head_dims]
    print("| config | head dim | Q.K | shared KB | registers | programs/SM | loop instr. | exp2 (MUFU) | FP8 cvt | "
          "FMA pipe | exp2 during MMA |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        if "error" in row:
            print(f"| {row['config']} | {row['head_dim']} | {row['qk_dtype']} | failed: {row['error']} | | | | | | | |")
            continue
        loop = row["main_loop"] or {}
        print(f"| {row['config']} | {row['head_dim']} | {row['qk_dtype']} | {row['shared_bytes'] / 1024:.1f} | "
              f"{row['registers']} | {row['programs_per_sm']} | {loop.get('instructions', '')} | {loop.get('special_function', '')} | "
              f"{loop.get('fp8_conversions', '')} | {loop.get('fma_pipe', '')} | {loop.get('exp2_during_mma', '')} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
