#!/usr/bin/env python3
"""Where one forward's GPU time goes: torch.profiler over one transformer forward (or one VAE decode) at real
size with random weights, grouped by kernel, on a CUDA GPU. Companion of scripts/bench.py (same models and
options); prints the GPU time by group (our FP8 self-attention kernel, its quantisation, other attention
kernels such as cross-attention's, matmuls, everything else) with ms per transformer layer, then the top kernels.

    python scripts/profile_forward.py --model ltx-13b --size 720p --path bf16:auto:off [--comfyui DIR]
    python scripts/profile_forward.py --model t2v-a14b --size 720p --vae-decode [--cudnn-benchmark]
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from pack_import import import_engine_only  # noqa: E402

import_engine_only()  # `reelsmith.engine` without the ComfyUI node layer
from bench import MODELS, parse_path  # noqa: E402
from bench_models import DEFAULT_FRAMES, Workload  # noqa: E402

ATTENTION_KERNEL_HINTS = ("flash", "fmha", "attention", "sdpa", "cudnn_generated_fort_native_sdpa", "attn")
# what a forward's GPU time is reported under: the first group whose name fragment a kernel's name holds
KERNEL_GROUPS = (
    ("FP8 self-attention (ours)", ("_fp8_attention_kernel", "_fp8_attention_ws_kernel", "_fp8_attention_gluon_kernel")),
    ("FP8 attention's quantisation (ours)", ("_quantise_qkv_kernel", "_column_stats_kernel")),
    # cross-attention (and all attention off the FP8 path): SDPA, cuDNN, flash kernels
    ("other attention", ATTENTION_KERNEL_HINTS),
    ("matmuls", ("gemm", "nvjet", "xmma", "cutlass", "scaled_mm")),
)
EVERYTHING_ELSE = "everything else"


def kernel_group(name: str) -> str:
    lowered = name.lower()
    for group, fragments in KERNEL_GROUPS:
        if any(fragment.lower() in lowered for fragment in fragments):
            return group
    return EVERYTHING_ELSE


def group_times(kernels: list[tuple[str, float]]) -> dict[str, float]:
    """(kernel name, GPU microseconds) -> microseconds per group, in KERNEL_GROUPS' order, then everything else."""
    groups = {name: 0.0 for name, _ in KERNEL_GROUPS} | {EVERYTHING_ELSE: 0.0}
    for name, microseconds in kernels:
        groups[kernel_group(name)] += microseconds
    return groups


def group_lines(kernels: list[tuple[str, float]], layers: int | None) -> list[str]:
    """The groups as markdown rows: ms, share of the GPU time and, given the model's layer count, ms per layer."""
    groups = group_times(kernels)
    total = max(sum(groups.values()), 1e-9)
    lines = ["| group | ms | share | ms per layer |", "| --- | --- | --- | --- |"]
    for name, microseconds in groups.items():
        per_layer = f"{microseconds / 1e3 / layers:.2f}" if layers else "-"
        lines.append(f"| {name} | {microseconds / 1e3:.1f} | {100 * microseconds / total:.1f} % | {per_layer} |")
    return lines


def profile(fn, rows: int, layers: int | None = None) -> str:
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch.no_grad():
        fn()
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.device_time_total for e in events)
    lines = [f"GPU time {total / 1e3:.1f} ms", "", *group_lines([(e.key, e.device_time_total) for e in events], layers),
             "", "| share | ms | calls | kernel |", "| --- | --- | --- | --- |"]
    for event in sorted(events, key=lambda e: e.device_time_total, reverse=True)[:rows]:
        lines.append(f"| {100 * event.device_time_total / max(total, 1):.1f} % | {event.device_time_total / 1e3:.1f} | "
                     f"{event.count} | {event.key[:110]} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="t2v-a14b", choices=list(MODELS))
    parser.add_argument("--size", default="720p", choices=["480p", "720p"])
    parser.add_argument("--frames", type=int)
    parser.add_argument("--path", type=parse_path, default=("bf16", "auto", "off"))
    parser.add_argument("--comfyui", type=pathlib.Path, help="profile ComfyUI's native model instead")
    parser.add_argument("--vae-decode", action="store_true", help="profile the family's VAE decode instead")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its conv algorithms")
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("profile_forward.py needs a CUDA GPU.", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    device = torch.device("cuda")
    family, variant = MODELS[args.model]
    workload = Workload(family, variant, args.size, args.frames or DEFAULT_FRAMES[family])
    if args.vae_decode:
        from bench_models import build_vae_decode
        fn, label = build_vae_decode(workload, device), "VAE decode"
    elif args.comfyui:
        from bench_peer import build_peer, import_comfy
        fn, label = build_peer(import_comfy(str(args.comfyui)), workload, args.path[0], device), "ComfyUI native"
    else:
        from bench_models import build_ours, ours_forward
        model, _, backend = build_ours(workload, *args.path, device)
        fn, label = ours_forward(model, workload, device), f"Reelsmith {args.path[0]}/{backend}/{args.path[2]}"
    print(f"{label}: {args.model} {args.size} {workload.frames} frames ({workload.tokens()} tokens)")
    print(profile(fn, args.rows, None if args.vae_decode else workload.config().get("num_layers")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
