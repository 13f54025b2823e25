#!/usr/bin/env python3
"""Where one forward's GPU time goes: torch.profiler over one transformer forward (or one VAE decode) at real
size with random weights, grouped by kernel, on a CUDA GPU. Companion of scripts/bench.py (same models and
options); prints the top kernels with their share of GPU time, and attention's share.

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


def profile(fn, rows: int) -> str:
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch.no_grad():
        fn()
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
    events = prof.key_averages()
    total = sum(e.device_time_total for e in events if e.device_time_total > 0)
    attention = sum(e.device_time_total for e in events
                    if any(h in e.key.lower() for h in ATTENTION_KERNEL_HINTS))
    lines = [f"GPU time {total / 1e3:.1f} ms; attention kernels {100 * attention / max(total, 1):.1f} %", "",
             "| share | ms | calls | kernel |", "| --- | --- | --- | --- |"]
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
    print(profile(fn, args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
