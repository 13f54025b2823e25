#!/usr/bin/env python3
"""Time the fast Wan VAE decode against diffusers' decode on a CUDA GPU, and check it gives the same frames.

Builds the real-size Wan 2.1 VAE (and the Wan 2.2 48-channel VAE) with random bf16 weights on the GPU
(nothing is downloaded; random weights cost the same FLOPs), decodes 81 frames at 480p [1,16,21,60,104]
and 720p [1,16,21,90,160] (2.2: 1280x704 [1,48,21,44,80]) with diffusers' decode and with
`engine/models/wan_vae_fast_decode.py` in several configurations (chunk sizes, layout, norm kernel,
cudnn.benchmark), both ending in float32 CPU frames as `decode_wan_latents` returns them. Reports seconds
(median of --reps after one warm-up, whose time is reported too), peak GPU memory, and PSNR / max abs
difference of each variant's frames against diffusers' frames (0..1 scale). A variant that fails is
reported with its error and the rest go on; variants past --time-budget are skipped and listed.

    python scripts/check_vae_decode.py [--versions 2.1 2.2] [--sizes 480p 720p] [--chunks 1 2 4]
                                       [--reps 3] [--time-budget 240] [--out DIR] [--profile] [--tiny]

Writes DIR/vae_decode.json and DIR/vae_decode.md (default DIR: out/vae_decode) and prints the table.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import pathlib
import statistics
import sys
import time
import traceback

PACK_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PACK_ROOT / "scripts"))

# (version, size) -> latent shape [1, C, T, h, w]: 81 frames; 2.2 compresses 16x in space, at 1280x704
WORKLOADS = {
    ("2.1", "480p"): (1, 16, 21, 60, 104),
    ("2.1", "720p"): (1, 16, 21, 90, 160),
    ("2.2", "480p"): (1, 48, 21, 30, 52),
    ("2.2", "720p"): (1, 48, 21, 44, 80),
}
TINY_LATENTS = {"2.1": (1, 16, 5, 6, 8), "2.2": (1, 48, 5, 4, 6)}


def build_vae(version: str, device, tiny: bool):
    import torch
    from diffusers import AutoencoderKLWan

    if tiny:
        from reelsmith.engine.demo_models import tiny_vae

        vae = tiny_vae(version, seed=0).to(device)
        with torch.no_grad():
            for parameter in vae.parameters():
                parameter.copy_(torch.randn_like(parameter) * 0.3)
        return vae
    from bench_models import randomise_on_gpu
    from reelsmith.engine.models.checkpoint_io import empty_weights
    from reelsmith.engine.models.wan_vae import vae_config

    config = {k: v for k, v in vae_config(version).items() if not k.startswith("_")}
    with empty_weights():
        vae = AutoencoderKLWan(**config)
    return randomise_on_gpu(vae, device)


def variants(version: str, size: str, chunks: list[int], default_chunk: int, tiny: bool) -> list[dict]:
    """Most informative first: the time budget cuts from the end. The layout / norm / cuDNN-autotune
    comparisons run once, on the 2.1 VAE at 720p (the issue's workload)."""
    rows = [dict(name="diffusers", fast=False), dict(name="fast (defaults)", fast=True),
            dict(name="fast, sub-pixel upsampling", fast=True, subpixel_upsample=True)]
    rows += [dict(name=f"fast chunk={c}", fast=True, chunk_latent_frames=c) for c in chunks if c != default_chunk]
    if (version, size) == ("2.1", "720p") or tiny:
        rows += [dict(name="fast, NCDHW layout", fast=True, memory_format="contiguous"),
                 dict(name="fast, torch norm", fast=True, use_triton=False),
                 dict(name="fast, cudnn.benchmark", fast=True, cudnn_benchmark=True)]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", nargs="+", default=["2.1", "2.2"], choices=["2.1", "2.2"])
    parser.add_argument("--sizes", nargs="+", default=["480p", "720p"], choices=["480p", "720p"])
    parser.add_argument("--sizes-2.2", dest="sizes_22", nargs="+", default=["720p"], choices=["480p", "720p"],
                        help="sizes for the 2.2 VAE (default 720p only, to stay within the time budget)")
    parser.add_argument("--chunks", nargs="+", type=int, default=[1, 2, 4], help="latent frames per decoder call")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--time-budget", type=float, default=240.0, help="seconds after which variants are skipped")
    parser.add_argument("--out", type=pathlib.Path, default=PACK_ROOT / "out" / "vae_decode")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one default fast decode per workload and print its top CUDA kernels")
    parser.add_argument("--tiny", action="store_true", help="logic check: tiny VAEs on whatever device is here")
    args = parser.parse_args()

    import torch
    from pack_import import import_engine_only

    import_engine_only()
    from reelsmith.engine.models import channel_rms_norm
    from reelsmith.engine.models.wan_vae_fast_decode import decode_wan_latents_fast, default_chunk_latent_frames
    from reelsmith.engine.pipelines.wan_sampler import decode_wan_latents

    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        print("check_vae_decode: no CUDA GPU here (--tiny runs a logic check on the CPU).", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    started = time.time()
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    environment = {
        "device": torch.cuda.get_device_name(device) if cuda else "CPU",
        "torch": torch.__version__, "cudnn": torch.backends.cudnn.version() if cuda else None,
        "triton": triton_version, "date": datetime.date.today().isoformat(), "tiny": args.tiny,
    }
    if cuda:
        import subprocess
        try:
            environment["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except Exception:
            environment["driver"] = None
    print(json.dumps(environment))

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def run_variant(vae, latents, variant):
        options = {k: variant[k] for k in ("chunk_latent_frames", "memory_format", "use_triton", "subpixel_upsample")
                   if k in variant}
        benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = variant.get("cudnn_benchmark", False)
        try:
            if variant["fast"]:
                return decode_wan_latents_fast(vae, latents, device, **options)
            return decode_wan_latents(vae, latents, device, fast=False)
        finally:
            torch.backends.cudnn.benchmark = benchmark

    results = []
    skipped = []
    for version in args.versions:
        sizes = args.sizes if version == "2.1" else args.sizes_22
        if time.time() - started > args.time_budget:
            skipped += [f"{version} {s} (all variants)" for s in sizes]
            continue
        try:
            vae = build_vae(version, device, args.tiny)
        except Exception as error:
            traceback.print_exc()
            results.append(dict(version=version, size="-", variant="build", error=repr(error)))
            continue
        for size in sizes:
            shape = TINY_LATENTS[version] if args.tiny else WORKLOADS[(version, size)]
            latents = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
            reference = None
            default_chunk = default_chunk_latent_frames(shape[3], shape[4], 16 if version == "2.2" else 8)
            for variant in variants(version, size, args.chunks, default_chunk, args.tiny):
                label = f"{version} {size} {variant['name']}"
                if time.time() - started > args.time_budget:
                    skipped.append(label)
                    continue
                row = dict(version=version, size=size, latents=list(shape), variant=variant["name"])
                if variant["fast"]:
                    row["chunk_latent_frames"] = variant.get("chunk_latent_frames", default_chunk)
                try:
                    gc.collect()
                    if cuda:
                        torch.cuda.empty_cache()
                        baseline = torch.cuda.memory_allocated()
                    t0 = time.perf_counter()
                    frames = run_variant(vae, latents, variant)
                    sync()
                    row["first_s"] = round(time.perf_counter() - t0, 3)
                    del frames
                    if cuda:
                        torch.cuda.reset_peak_memory_stats()
                    times = []
                    for _ in range(args.reps):
                        t0 = time.perf_counter()
                        frames = run_variant(vae, latents, variant)
                        sync()
                        times.append(time.perf_counter() - t0)
                    row["seconds"] = round(statistics.median(times), 3)
                    row["all_seconds"] = [round(t, 3) for t in times]
                    if cuda:
                        row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                        row["peak_above_weights_gib"] = round((torch.cuda.max_memory_allocated() - baseline) / 2**30, 2)
                    row["frames_shape"] = list(frames.shape)
                    if variant["name"] == "diffusers":
                        reference = frames
                        # random weights can give nearly flat frames, on which any PSNR is high: say how flat
                        row["frames_std"] = round(frames.std().item(), 4)
                    elif reference is not None:
                        mse = (frames - reference).pow(2).mean().item()
                        row["psnr_db"] = round(10 * math.log10(1.0 / mse), 2) if mse > 0 else "identical"
                        row["max_abs_diff"] = round((frames - reference).abs().max().item(), 5)
                    if variant["fast"]:
                        row["triton_norm"] = (cuda and variant.get("use_triton", True)
                                              and channel_rms_norm.triton_available())
                    del frames
                except Exception as error:  # keep going: one broken variant must not hide the others
                    traceback.print_exc()
                    row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
                    gc.collect()
                    if cuda:
                        torch.cuda.empty_cache()
                print(json.dumps(row), flush=True)
                results.append(row)
            if args.profile and time.time() - started < args.time_budget:
                profile_fast_decode(vae, latents, device, decode_wan_latents_fast)
            diffusers_s = next((r.get("seconds") for r in results if r.get("version") == version
                                and r.get("size") == size and r["variant"] == "diffusers"), None)
            for r in results:
                if (r.get("version"), r.get("size")) == (version, size) and diffusers_s and r.get("seconds"):
                    r["speedup_vs_diffusers"] = round(diffusers_s / r["seconds"], 2)
            del latents, reference
        del vae
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()

    summary = dict(environment=environment, results=results, skipped=skipped,
                   wall_s=round(time.time() - started, 1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vae_decode.json").write_text(json.dumps(summary, indent=2))
    table = markdown(summary)
    (args.out / "vae_decode.md").write_text(table)
    print(table)
    return 0 if all("error" not in r for r in results) else 1


def profile_fast_decode(vae, latents, device, decode) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    try:
        with profile(activities=activities) as prof:
            decode(vae, latents, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=20), flush=True)
    except Exception:
        traceback.print_exc()


def markdown(summary: dict) -> str:
    env = summary["environment"]
    lines = [
        f"Wan VAE decode, 81 frames, bf16 random weights; {env['device']}, driver {env.get('driver')}, "
        f"torch {env['torch']}, cuDNN {env['cudnn']}, Triton {env['triton']}, {env['date']}"
        + (" (TINY logic check)" if env["tiny"] else ""),
        "",
        "| VAE | size | variant | chunk | s (median) | first s | vs diffusers | peak GiB | PSNR dB | max abs diff | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in summary["results"]:
        note = r.get("error", "") or (f"frames std {r['frames_std']}" if "frames_std" in r else "")
        if r.get("triton_norm") is False and "torch norm" not in r["variant"]:
            note = (note + " Triton norm unavailable: torch ops used").strip()
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r.get("version"), r.get("size"), r["variant"], r.get("chunk_latent_frames", ""), r.get("seconds", ""),
            r.get("first_s", ""), f"{r['speedup_vs_diffusers']}x" if r.get("speedup_vs_diffusers") else "",
            r.get("peak_gib", ""), r.get("psnr_db", ""), r.get("max_abs_diff", ""), note))
    if summary["skipped"]:
        lines += ["", "Skipped (time budget): " + "; ".join(summary["skipped"])]
    lines += ["", f"Wall time {summary['wall_s']} s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
