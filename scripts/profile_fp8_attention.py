#!/usr/bin/env python3
"""Where the FP8 attention kernel's time goes: one launch at a real shape under Nsight Compute (ncu), then a
summary of its hardware counters (Hopper GPU with ncu's counters readable).

Prints, and writes beside the report (--out DIR): the kernel's duration; how busy the multiprocessors' pipes
were (tensor cores, the exp2 unit, FMA/ALU, issue slots); warps active and eligible per scheduler; what the
warps were stalled on, per issued instruction (ncu's warp-state counters, largest first); memory throughput
(L2, DRAM, shared memory); and, where ncu can print it, the SASS instructions with the most stall samples.

    python scripts/profile_fp8_attention.py --shape wan-720p
    python scripts/profile_fp8_attention.py --shape ltx-13b --config m64n128w4s2-fastacc-tma-r168
    python scripts/profile_fp8_attention.py --shape wan-720p --implementation gluon --config m64k2v2
    python scripts/profile_fp8_attention.py --shape wan-720p --implementation gluon-ws --config s3-paired

Under the hood the script runs itself under ncu with `--launch`: that child builds one layer's q, k, v
(scripts/check_fp8_attention.py's realistic random ones), runs the kernel once to compile it, and once more
for ncu to profile (`--launch-skip 1 --launch-count 1` on the kernel's name). Clocks are left alone
(`--clock-control none`), so the duration is comparable with check_fp8_attention.py's timings.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import pathlib
import re
import shutil
import subprocess
import sys

PACK_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PACK_ROOT / "scripts"))

# implementation -> the profiled kernel's name (ncu matches it as a regular expression)
KERNEL_NAMES = {"triton": "_fp8_attention_kernel", "gluon": "_fp8_attention_gluon_kernel",
                "gluon-ws": "_fp8_attention_ws_kernel"}
# (heading, regular expression over ncu's raw metric names), printed in this order
METRIC_GROUPS = (
    ("time and throughput", r"^(gpu__time_duration\.sum|sm__throughput\.avg\.pct_of_peak_sustained_elapsed|"
                            r"sm__inst_executed\.avg\.per_cycle_active|"
                            r"smsp__issue_active\.avg\.pct_of_peak_sustained_active)$"),
    ("pipes busy (% of peak, active cycles)", r"^sm__(inst_executed_)?pipe_\w+\.avg\.pct_of_peak_sustained_active$"),
    ("warps per scheduler", r"^smsp__warps_(active|eligible)\.avg\.per_cycle_active$|"
                            r"^smsp__maximum_warps_avail_per_scheduler|^sm__warps_active\.avg\.pct_of_peak"),
    ("stall reasons (cycles per issued instruction)",
     r"^smsp__average_warps_issue_stalled_\w+_per_issue_active\.ratio$"),
    ("memory (% of peak)", r"^(lts__t_sectors|lts__throughput|dram__throughput|"
                           r"l1tex__data_pipe_lsu_wavefronts_mem_shared|l1tex__throughput)"
                           r"\S*\.avg\.pct_of_peak_sustained_elapsed$"),
    ("registers and shared memory", r"^launch__(registers_per_thread|shared_mem_per_block\w*|occupancy_limit_\w+|"
                                    r"waves_per_multiprocessor|grid_size|block_size)$"),
)


def find_ncu(explicit: str | None) -> str:
    if explicit:
        return explicit
    found = shutil.which("ncu") or next(iter(sorted(glob.glob("/opt/nvidia/nsight-compute/*/ncu"), reverse=True)), None)
    if not found:
        sys.exit("ncu (Nsight Compute) is not on PATH nor under /opt/nvidia/nsight-compute: pass --ncu PATH")
    return found


def chosen_kernel(implementation: str, name: str, head_dim: int, tokens: int):
    """(config, attend(q, k, v)) of `implementation` in its config `name` ('default': the one it runs by default);
    exits naming the known configs for an unknown one."""
    from check_fp8_attention import import_engine
    import_engine()
    from reelsmith.engine.models import attention_fp8
    from reelsmith.engine.errors import InvalidInputError
    if implementation == "triton":
        try:
            config = attention_fp8.resolve_config(name, head_dim, tokens)
        except InvalidInputError as error:  # it names the known configs
            sys.exit(str(error))
        return config, lambda q, k, v: attention_fp8.fp8_attention(q, k, v, "bshd", config=config)
    if implementation == "gluon":
        from reelsmith.engine.models import attention_fp8_gluon as module
        configs, default, attend = ({c.name: c for c in module.GLUON_CONFIGS}, module.DEFAULT_GLUON_CONFIG,
                                    module.gluon_fp8_attention)
    else:
        from reelsmith.engine.models import attention_fp8_gluon_ws as module
        configs, default, attend = (module.GLUON_WS_CONFIGS, module.DEFAULT_GLUON_WS_CONFIG,
                                    module.gluon_ws_fp8_attention)
    if name not in ("default", *configs):
        sys.exit(f"unknown {implementation} config {name!r}: one of default, {', '.join(configs)}")
    config = default if name == "default" else configs[name]
    return config, lambda q, k, v: attend(q, k, v, "bshd", config)


def launch(args) -> None:
    """The child ncu profiles: two launches of the kernel at the shape (the first compiles it)."""
    import torch

    from check_fp8_attention import SHAPES, layer_qkv
    what, heads, dim, tokens = SHAPES[args.shape]
    config, attend = chosen_kernel(args.implementation, args.config, dim, tokens)
    q, k, v = layer_qkv(1, tokens, heads, dim, torch.device("cuda"))
    for _ in range(2):
        attend(q, k, v)
    torch.cuda.synchronize()
    print(f"profiled: {what}, {heads} heads x {dim}, {tokens} tokens, {args.implementation} {config.name}",
          flush=True)


def raw_metrics(ncu: str, report: pathlib.Path) -> dict[str, str]:
    """ncu's raw page of the one profiled kernel as {metric: 'value unit'}."""
    return parse_raw_page(subprocess.run([ncu, "--import", str(report), "--page", "raw", "--csv"], check=True,
                                         capture_output=True, text=True).stdout)


def parse_raw_page(text: str) -> dict[str, str]:
    """ncu's `--page raw --csv`: a row of metric names, a row of units, a row of values per kernel (one here)."""
    rows = [row for row in csv.reader(io.StringIO(text)) if row]
    if len(rows) < 3:
        raise ValueError(f"ncu's raw page has {len(rows)} rows, not names, units and one kernel's values")
    header, units, values = rows[0], rows[1], rows[2]
    return {name: f"{value} {unit}".strip() for name, unit, value in zip(header, units, values)}


def number(text: str) -> float:
    try:
        return float(text.split()[0].replace(",", ""))
    except (ValueError, IndexError):
        return float("nan")


def summarise(metrics: dict[str, str]) -> list[str]:
    """METRIC_GROUPS' metrics, a heading each; pipes and stall reasons largest first, the idle ones left out."""
    lines = []
    for heading, pattern in METRIC_GROUPS:
        chosen = [(name, value) for name, value in metrics.items() if re.search(pattern, name)]
        ranked = heading.startswith(("pipes", "stall"))
        if ranked:
            chosen = sorted((item for item in chosen if number(item[1]) > 0.005), key=lambda item: -number(item[1]))
        lines.append(f"## {heading}" + ("" if chosen else ": (none in this report)"))
        lines += [f"  {name:80s} {value}" for name, value in chosen]
    return lines


def hottest_instructions(ncu: str, report: pathlib.Path, count: int) -> list[str]:
    """The SASS instructions with the most warp stall samples, where ncu prints the source page as CSV."""
    result = subprocess.run([ncu, "--import", str(report), "--page", "source", "--csv", "--print-source", "sass"],
                            capture_output=True, text=True)
    if result.returncode != 0 or not result.stdout.strip():
        return [f"(ncu printed no source page: {result.stderr.strip()[-300:]})"]
    return rank_source_page(result.stdout, count)


def rank_source_page(text: str, count: int) -> list[str]:
    """The `count` rows of ncu's source page (CSV) with the most stall samples, with their share of all."""
    rows = list(csv.reader(io.StringIO(text)))
    header_at = next((i for i, row in enumerate(rows) if "Source" in row), None)
    if header_at is None:
        return ["(source page without a 'Source' column)"]
    header = rows[header_at]
    sample_column = next((header.index(c) for c in ("Warp Stall Sampling (All Samples)", "Warp Stall Sampling")
                          if c in header), None)
    if sample_column is None:
        return [f"(no stall-sampling column; columns: {', '.join(header)[:300]})"]
    body = [row for row in rows[header_at + 1:] if len(row) == len(header)]
    total = sum(number(row[sample_column]) for row in body) or 1.0
    body.sort(key=lambda row: -number(row[sample_column]))
    address = header.index("Address") if "Address" in header else 0
    lines = [f"## hottest SASS instructions (share of {total:.0f} stall samples)"]
    for row in body[:count]:
        lines.append(f"  {number(row[sample_column]) / total:6.1%}  {row[address]:>8}  {row[header.index('Source')]}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="wan-720p", help="a shape of scripts/check_fp8_attention.py")
    parser.add_argument("--implementation", default="triton", choices=sorted(KERNEL_NAMES))
    parser.add_argument("--config", default="default", help="kernel config name (default: the kernel's default)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("fp8_attention_profile"))
    parser.add_argument("--ncu", help="path of ncu (default: on PATH or under /opt/nvidia/nsight-compute)")
    parser.add_argument("--sections", default="full", help="ncu --set (full: every section, ~40 replays)")
    parser.add_argument("--top", type=int, default=25, help="how many SASS instructions to list")
    parser.add_argument("--launch", action="store_true", help=argparse.SUPPRESS)  # the child run under ncu
    args = parser.parse_args()

    from check_fp8_attention import SHAPES
    if args.shape not in SHAPES:
        parser.error(f"unknown shape {args.shape!r}: one of {', '.join(SHAPES)}")
    if args.launch:
        launch(args)
        return 0

    _, _, dim, tokens = SHAPES[args.shape]
    chosen_kernel(args.implementation, args.config, dim, tokens)  # an unknown config fails here, not under ncu
    ncu = find_ncu(args.ncu)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.shape}-{args.implementation}-{args.config}"
    report = args.out / f"{stem}.ncu-rep"
    command = [ncu, "--clock-control", "none", "--set", args.sections, "--import-source", "no",
               "--kernel-name", f"regex:{KERNEL_NAMES[args.implementation]}$", "--launch-skip", "1",
               "--launch-count", "1", "--export", str(report.with_suffix("")), "--force-overwrite",
               sys.executable, str(pathlib.Path(__file__).resolve()), "--launch", "--shape", args.shape,
               "--implementation", args.implementation, "--config", args.config]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)

    metrics = raw_metrics(ncu, report)
    lines = [f"# {stem}", *summarise(metrics), *hottest_instructions(ncu, report, args.top)]
    print("\n".join(lines), flush=True)
    (args.out / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    (args.out / f"{stem}.json").write_text(json.dumps(metrics, indent=1))
    details = subprocess.run([ncu, "--import", str(report), "--page", "details"], capture_output=True, text=True)
    (args.out / f"{stem}-details.txt").write_text(details.stdout + details.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
