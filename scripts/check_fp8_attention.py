#!/usr/bin/env python3
"""Check the FP8 attention kernel (engine/models/attention_fp8.py) on a Hopper GPU: accuracy and speed at the
real shapes, against cuDNN and flash SDPA.

Kernel mode (default): for each shape, one layer's q, k, v (random with realistic structure: RMS-normed
projections times per-channel gains of 1-3, K with a per-channel offset that smoothing must remove), the
cosine similarity and relative error of each path against exact attention (fp32 inputs, fp32 accumulation),
and the time per call of every kernel config (with the quantisation's share), cuDNN SDPA and flash SDPA,
with TFLOP/s = 4 * S^2 * D * heads * batch / t, plus cuDNN's FP8 attention and the Gluon kernel
(engine/models/attention_fp8_gluon.py) in each of its GluonConfigs and the warp-specialized one
(attention_fp8_gluon_ws.py) in each of --ws-configs. A config that fails to compile or run is
reported and the others go on. Writes a JSON file and a markdown table (same name, .md).

    python scripts/check_fp8_attention.py                                  # all shapes, all configs
    python scripts/check_fp8_attention.py --shapes wan-720p --configs m128n128w8s3 m128n64w8s3 --autotune
    python scripts/check_fp8_attention.py --qk-dtype int8 fp8

Forward mode: one full Wan 2.2 A14B expert forward at real size (81 frames, random weights, built as
scripts/bench.py builds it) with the 'fp8' backend vs 'cudnn': seconds per forward and the cosine /
relative error of the output.

    python scripts/check_fp8_attention.py --forward --size 480p 720p [--config m128n128w8s3] [--sample-steps 10]

`--tiny` runs the kernel mode's logic at tiny shapes on the CPU through Triton's interpreter (no timing
meaning; SDPA rows for cuDNN / flash fail there and are reported as such).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import pathlib
import statistics
import sys
import time
import traceback

PACK_ROOT = pathlib.Path(__file__).resolve().parent.parent
# name: (what, heads, head dim, tokens)
SHAPES = {
    "wan-480p": ("Wan 2.2 A14B 480p 81f (21x30x52)", 40, 128, 21 * 30 * 52),
    "wan-720p": ("Wan 2.2 A14B 720p 81f (21x45x80)", 40, 128, 21 * 45 * 80),
    "ltx-2b": ("LTX-Video 2B 704x1280 97f", 32, 64, 11440),
    "ltx-13b": ("LTX-Video 13B 704x1280 97f", 32, 128, 11440),
}
TINY_SHAPES = {
    "tiny-64": ("tiny, head dim 64", 3, 64, 100),
    "tiny-128": ("tiny, head dim 128", 3, 128, 150),
}


def import_engine():
    """`reelsmith.engine` without the ComfyUI node layer (scripts/pack_import.py)."""
    sys.path.insert(0, str(PACK_ROOT / "scripts"))
    from pack_import import import_engine_only

    import_engine_only()


def facts() -> dict:
    import torch
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"gpu": gpu, "torch": torch.__version__, "triton": triton_version,
            "date": datetime.datetime.now().isoformat(timespec="seconds")}


def timed(fn, repeats: int, warmup: int = 1) -> float:
    """Median seconds of `fn()` (CUDA events on a GPU, wall clock on the CPU)."""
    import torch
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def layer_qkv(batch: int, tokens: int, heads: int, dim: int, device, seed: int = 0):
    """q, k, v [B, S, H, D] bf16 shaped like one layer's: RMS norm over all heads (Wan's qk_norm) times gains
    of 1-3 per channel, K and V with per-channel offsets (a V offset grows the P.V accumulator with every key
    block: what the FP8 MMA's short accumulation mishandles unless V is smoothed)."""
    import torch
    generator = torch.Generator(device=device).manual_seed(seed)

    def projected(offset_scale: float):
        x = torch.randn(batch, tokens, heads * dim, generator=generator, device=device)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        gains = torch.rand(heads * dim, generator=generator, device=device) * 2 + 1
        offset = torch.randn(heads * dim, generator=generator, device=device) * offset_scale
        return (x * gains + offset).view(batch, tokens, heads, dim).to(torch.bfloat16)

    q, k = projected(0.0), projected(2.0)
    v = torch.randn(batch, tokens, heads, dim, generator=generator, device=device)
    v = (v + torch.randn(heads, dim, generator=generator, device=device)).to(torch.bfloat16)
    return q, k, v


def exact_attention(q, k, v):
    """fp32 attention of bf16 q, k, v ([B, S, H, D]), fp32 accumulation; [B, S, H, D] fp32."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    q, k, v = (t.transpose(1, 2).float() for t in (q, k, v))
    if q.is_cuda:
        try:
            with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):  # takes fp32, never materialises S x S
                return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        except RuntimeError as error:
            print(f"  (fp32 memory-efficient SDPA unavailable: {error}; using math per head)", flush=True)
        heads = [F.scaled_dot_product_attention(q[:, h:h + 1], k[:, h:h + 1], v[:, h:h + 1])
                 for h in range(q.shape[1])]
        return torch.cat(heads, dim=1).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)


def compare(out, exact) -> dict:
    import torch
    out, exact = out.float(), exact.float()
    cosine = torch.nn.functional.cosine_similarity(out.flatten(), exact.flatten(), dim=0).item()
    relative = ((out - exact).norm() / exact.norm()).item()
    return {"cosine": round(cosine, 6), "rel_error": round(relative, 5)}


def short_error(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"[:300]


def check_kernels(args) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from reelsmith.engine.models import attention_fp8
    from reelsmith.engine.models.attention_fp8_quant import quantise_qkv

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes = TINY_SHAPES if args.tiny else SHAPES
    names = args.shapes or list(shapes)
    configs = args.configs or list(attention_fp8.FP8_ATTENTION_CONFIGS)
    if args.autotune:
        configs = configs + ["autotune"]
    deadline = time.monotonic() + args.time_budget
    rows = []
    for shape_name in names:
        what, heads, dim, tokens = shapes[shape_name]
        flops = 4.0 * tokens * tokens * dim * heads * args.batch
        print(f"\n== {shape_name}: {what}, batch {args.batch}, {heads} heads x {dim}, {tokens} tokens", flush=True)
        q, k, v = layer_qkv(args.batch, tokens, heads, dim, device)
        exact = exact_attention(q, k, v)
        base = {"shape": shape_name, "what": what, "batch": args.batch, "heads": heads, "head_dim": dim,
                "tokens": tokens}

        def record(path: str, fn, quant_s=None):
            row = dict(base, path=path)
            if time.monotonic() > deadline:
                row["error"] = "skipped: --time-budget spent"
                print(f"  {path:34s} {row['error']}", flush=True)
                rows.append(row)
                return
            try:
                out = fn()
                row.update(compare(out, exact))
                del out
                seconds = timed(fn, args.repeats)
                row.update(ms=round(seconds * 1e3, 2), tflops=round(flops / seconds / 1e12, 1))
                if quant_s is not None:
                    row.update(quant_ms=round(quant_s * 1e3, 2), quant_share=round(quant_s / seconds, 3))
                print(f"  {path:34s} {row['ms']:9.2f} ms {row['tflops']:7.1f} TFLOP/s  cos {row['cosine']:.6f}  "
                      f"rel {row['rel_error']:.5f}" + (f"  quant {row['quant_ms']:.2f} ms" if quant_s else ""),
                      flush=True)
            except Exception as error:  # one path failing must not stop the others
                row["error"] = short_error(error)
                print(f"  {path:34s} FAILED {row['error']}", flush=True)
                if args.verbose:
                    traceback.print_exc()
            rows.append(row)
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.empty_cache()

        bhsd = [t.transpose(1, 2) for t in (q, k, v)]  # the views diffusers' native backend hands to SDPA
        for label, backend in () if args.kernels_only else (("sdpa cudnn (bf16)", SDPBackend.CUDNN_ATTENTION),
                                                            ("sdpa flash (bf16)", SDPBackend.FLASH_ATTENTION)):
            def run_sdpa(backend=backend):
                with sdpa_kernel(backend):
                    return F.scaled_dot_product_attention(*bhsd).transpose(1, 2)
            record(label, run_sdpa)

        for qk_dtype in args.qk_dtype:
            try:
                quant_s = timed(lambda: quantise_qkv(q, k, v, "bshd", qk_dtype=qk_dtype), args.repeats)
            except Exception as error:
                print(f"  quantise ({qk_dtype}) FAILED {short_error(error)}", flush=True)
                if args.verbose:
                    traceback.print_exc()
                quant_s = None
            for config in configs:
                def run_fp8(config=config, qk_dtype=qk_dtype):
                    return attention_fp8.fp8_attention(q, k, v, "bshd", config=config, qk_dtype=qk_dtype)
                record(f"fp8 {qk_dtype} {config}", run_fp8, quant_s)
                if config == "autotune" and not rows[-1].get("error"):
                    best = getattr(attention_fp8._autotuned(), "best_config", None)
                    rows[-1]["autotune_choice"] = str(best)
                    print(f"    autotune chose {best}", flush=True)
        if not args.tiny and "int8" in args.qk_dtype:  # the same scheme in Gluon, MMAs left in flight
            try:
                from reelsmith.engine.models.attention_fp8_gluon import GLUON_CONFIGS, gluon_fp8_attention
            except ImportError as error:
                print(f"  gluon: not importable ({error})", flush=True)
            else:
                for gluon_config in () if args.kernels_only else GLUON_CONFIGS:
                    record(f"fp8 int8 gluon {gluon_config.name}",
                           lambda c=gluon_config: gluon_fp8_attention(q, k, v, "bshd", c), quant_s)
                # warp-specialized: a loader warp and two consumer warpgroups sharing each K / V block
                from reelsmith.engine.models.attention_fp8_gluon_ws import GLUON_WS_CONFIGS, gluon_ws_fp8_attention
                for name in args.ws_configs:
                    if dim not in GLUON_WS_CONFIGS[name].head_dims:
                        continue
                    record(f"fp8 int8 gluon-ws {name}",
                           lambda c=GLUON_WS_CONFIGS[name]: gluon_ws_fp8_attention(q, k, v, "bshd", c), quant_s)
        # cuDNN's own FP8 flash attention (per-tensor scales), with our smoothing
        if not args.tiny and not args.kernels_only:
            from reelsmith.engine.models.attention_fp8_cudnn import cudnn_fp8_attention
            record("cudnn fp8 (frontend sdpa_fp8)", lambda: cudnn_fp8_attention(q, k, v))
        del q, k, v, exact, bhsd
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def check_forward(args) -> list[dict]:
    """One Wan 2.2 A14B expert forward at real size: cuDNN vs the fp8 backend, same weights and inputs."""
    import torch

    sys.path.insert(0, str(PACK_ROOT / "scripts"))
    from bench_models import Workload, build_ours
    from reelsmith.engine.models import attention
    from reelsmith.engine.models.attention_fp8_processors import self_attention_modules

    device = torch.device("cuda")
    model, notes, _ = build_ours(Workload("wan", "t2v-a14b", args.size[0], args.frames), args.precision, "cudnn",
                                 args.compile, device)
    fp8_options = {"config": args.config, "qk_dtype": args.qk_dtype[0], "implementation": args.implementation}
    rows = []
    for size in args.size:
        generator = torch.Generator(device=device).manual_seed(0)
        latents = torch.randn(Workload("wan", "t2v-a14b", size, args.frames).latent_shape(),
                              generator=generator, device=device).to(torch.bfloat16)
        text = torch.randn(1, 512, 4096, generator=generator, device=device).to(torch.bfloat16)
        timestep = torch.tensor([500.0], device=device)

        def forward():
            with torch.no_grad():
                return model(hidden_states=latents, timestep=timestep, encoder_hidden_states=text,
                             return_dict=False)[0]

        row = {"mode": "forward", "variant": "t2v-a14b", "size": size, "frames": args.frames,
               "precision": args.precision, "compile": args.compile, "fp8_config": args.config, "qk_dtype": args.qk_dtype[0],
               "implementation": args.implementation}
        try:
            attention.apply_attention_backend(model, "cudnn", device)
            reference = forward()
            row["cudnn_s"] = round(timed(forward, args.forward_repeats, warmup=0), 3)
            attention.apply_attention_backend(model, "fp8", device, fp8_options=fp8_options)
            row["fp8_layers"] = len(self_attention_modules(model))
            out = forward()
            row.update(compare(out, reference))
            row["fp8_s"] = round(timed(forward, args.forward_repeats, warmup=0), 3)
            row["speedup"] = round(row["cudnn_s"] / row["fp8_s"], 3)
            if args.sample_steps:  # the same sample with each backend: do the attention errors compound?
                fp8_sample = euler_flow_sample(model, latents, timestep, text, args.sample_steps)
                attention.apply_attention_backend(model, "cudnn", device)
                exact_sample = euler_flow_sample(model, latents, timestep, text, args.sample_steps)
                row["sample_steps"] = args.sample_steps
                row.update({f"sample_{key}": value for key, value in compare(fp8_sample, exact_sample).items()})
            del out, reference
            print(json.dumps(row), flush=True)
        except Exception as error:
            row["error"] = short_error(error)
            print(f"forward {size} FAILED {row['error']}", flush=True)
            traceback.print_exc()
        finally:
            attention.apply_attention_backend(model, "cudnn", device)
        rows.append(row)
        torch.cuda.empty_cache()
    return rows


def euler_flow_sample(model, noise, timestep, text, steps: int, shift: float = 5.0):
    """`steps` Euler steps of flow matching from `noise` (shifted sigmas 1 -> 0), no guidance."""
    import torch
    from reelsmith.engine.pipelines.avatar_schedule import euler_step, flow_sigmas, flow_timesteps

    sigmas = flow_sigmas(steps, shift)
    x = noise.clone()
    with torch.no_grad():
        for i, t in enumerate(flow_timesteps(sigmas)):
            velocity = model(hidden_states=x, timestep=torch.full_like(timestep, float(t)),
                             encoder_hidden_states=text, return_dict=False)[0]
            x = euler_step(x, velocity, sigmas[i], sigmas[i + 1]).to(x.dtype)
    return x


def markdown(rows: list[dict], info: dict) -> str:
    lines = [f"{info['gpu']}, torch {info['torch']}, triton {info['triton']}, {info['date']}", ""]
    kernel_rows = [r for r in rows if "path" in r]
    if kernel_rows:
        lines += ["| shape | path | ms | TFLOP/s | quant ms (share) | cosine | rel. error |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in kernel_rows:
            if r.get("error"):
                lines.append(f"| {r['shape']} | {r['path']} | failed: {r['error']} | | | | |")
                continue
            quant = f"{r['quant_ms']} ({r['quant_share']:.0%})" if "quant_ms" in r else ""
            lines.append(f"| {r['shape']} | {r['path']} | {r['ms']} | {r['tflops']} | {quant} | {r['cosine']} | "
                         f"{r['rel_error']} |")
    forward_rows = [r for r in rows if r.get("mode") == "forward"]
    if forward_rows:
        lines += ["", "| Wan A14B forward | precision | cuDNN s | fp8 s | speedup | cosine | rel. error | sample: steps, "
                  "cosine, rel. error |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in forward_rows:
            if r.get("error"):
                lines.append(f"| {r['size']} | {r['precision']} | failed: {r['error']} | | | | | |")
                continue
            lines.append(f"| {r['size']} {r['frames']}f | {r['precision']} | {r['cudnn_s']} | {r['fp8_s']} | "
                         f"{r['speedup']} | {r['cosine']} | {r['rel_error']} | "
                         f"{r.get('sample_steps', '')} {r.get('sample_cosine', '')} {r.get('sample_rel_error', '')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", help=f"default: all of {', '.join(SHAPES)}")
    parser.add_argument("--configs", nargs="+", help="kernel configs (default: all named ones)")
    parser.add_argument("--autotune", action="store_true", help="also run config 'autotune' (Triton times all)")
    parser.add_argument("--qk-dtype", nargs="+", default=["int8"], choices=["int8", "fp8"])
    parser.add_argument("--ws-configs", nargs="*",
                        default=["s3-paired", "s3-overlap-regs", "s3-overlap-regs-msum", "s3-paired-c3",
                                 "s3-overlap-regs-c3"],
                        help="configs of the warp-specialized Gluon kernel to time (attention_fp8_gluon_ws.py; "
                             "default: the default one and those not yet timed; the others measured slower). "
                             "Three-consumer ones ('-c3') run at head dim 64 only")
    parser.add_argument("--kernels-only", action="store_true",
                        help="only --configs and --ws-configs (no SDPA, GluonConfig or cuDNN FP8 rows)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--time-budget", type=float, default=240.0,
                        help="seconds after which the remaining kernel paths are skipped (and reported so)")
    parser.add_argument("--forward", action="store_true", help="full Wan A14B forward: fp8 backend vs cuDNN")
    parser.add_argument("--size", nargs="+", default=["480p", "720p"], choices=["480p", "720p"])
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--precision", default="bf16", help="weight precision of the forward (bench.py's names)")
    parser.add_argument("--config", default="default", help="kernel config of the forward's fp8 backend")
    parser.add_argument("--implementation", default="auto", choices=["auto", "triton", "cudnn", "gluon", "gluon-ws"],
                        help="the forward's fp8 implementation: auto (the loader's default), our Triton kernel, "
                             "cuDNN's FP8 attention or one of our Gluon kernels")
    parser.add_argument("--compile", default="off", choices=["off", "regional"], help="compile mode of the forward")
    parser.add_argument("--forward-repeats", type=int, default=2)
    parser.add_argument("--sample-steps", type=int, default=0,
                        help="forward mode: also compare an N-step sample (Euler, flow matching) fp8 vs cuDNN")
    parser.add_argument("--tiny", action="store_true", help="CPU logic check through Triton's interpreter")
    parser.add_argument("--verbose", action="store_true", help="print full tracebacks of failures")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("fp8_attention.json"))
    args = parser.parse_args(argv)

    if args.tiny:
        os.environ["TRITON_INTERPRET"] = "1"  # before Triton is first imported
    import torch
    if not torch.cuda.is_available() and not args.tiny:
        print("check_fp8_attention.py needs a CUDA GPU (Hopper); --tiny checks its logic on the CPU.",
              file=sys.stderr)
        return 2
    if args.forward and args.tiny:
        print("--forward builds the real-size model: it needs the GPU.", file=sys.stderr)
        return 2
    import_engine()
    info = facts()
    print(json.dumps(info), flush=True)
    rows = check_forward(args) if args.forward else check_kernels(args)
    args.out.write_text(json.dumps({"facts": info, "rows": rows}, indent=2))
    table = markdown(rows, info)
    args.out.with_suffix(".md").write_text(table)
    print("\n" + table)
    return 1 if rows and all(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
