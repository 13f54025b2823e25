#!/usr/bin/env python3
"""Check every precision / attention-backend path of the model-options layer on a CUDA GPU.

Builds a Wan 2.2 A14B-width transformer with a few layers (random weights, width 5120, 40 heads, ffn 13824),
then for each precision and each attention backend usable here runs one forward at a 480p-like token count
(81 frames of 480x832 -> 21 x 30 x 52 = 32,760 tokens) and reports cosine similarity and relative error
against bf16 + sdpa, milliseconds per forward and the GPU memory of the weights. It also checks an fp8
layer on its own at real size, block offloading against no offloading, and (unless --no-compile) regional
compile. Exits non-zero if any path errors.

    python scripts/check_gpu_paths.py [--layers 4] [--frames 21 --height 60 --width 104] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
import traceback
import types

PACK_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _import_engine():
    sys.path.insert(0, str(PACK_ROOT / "scripts"))
    from pack_import import import_engine_only

    import_engine_only()
    from reelsmith.engine.models import attention, compile as compile_mod, offload, precision

    return attention, compile_mod, offload, precision


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--frames", type=int, default=21, help="latent frames (81 video frames -> 21)")
    parser.add_argument("--height", type=int, default=60, help="latent height (480 px -> 60)")
    parser.add_argument("--width", type=int, default=104, help="latent width (832 px -> 104)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="skip the regional-compile runs")
    parser.add_argument("--compile-all", action="store_true",
                        help="compile bf16 as well as fp8_e4m3fn_fast (each compile takes a minute or so)")
    parser.add_argument("--time-budget", type=float, default=240.0,
                        help="seconds after which optional runs (compile, offload) are skipped")
    parser.add_argument("--json", type=pathlib.Path, help="also write the results here")
    parser.add_argument("--tiny", action="store_true",
                        help="logic check only: a tiny model on whatever device is here (CPU allowed)")
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    if not torch.cuda.is_available() and not args.tiny:
        print("check_gpu_paths: no CUDA GPU here; this script checks GPU paths only (--tiny runs a logic "
              "check on the CPU).", file=sys.stderr)
        return 2
    attention, compile_mod, offload, precision = _import_engine()
    from diffusers import WanTransformer3DModel
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    started = time.time()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    gpu = torch.cuda.get_device_name(device) if cuda else "CPU"
    capability = torch.cuda.get_device_capability(device) if cuda else (0, 0)
    print(f"device: {gpu}, capability {capability[0]}.{capability[1]}, torch {torch.__version__}, "
          f"cuDNN {torch.backends.cudnn.version()}")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def allocated() -> int:
        return torch.cuda.memory_allocated() if cuda else 0

    def peak() -> int:
        return torch.cuda.max_memory_allocated() if cuda else 0

    def reset_peak():
        if cuda:
            torch.cuda.reset_peak_memory_stats()

    def empty_cache():
        if cuda:
            torch.cuda.empty_cache()

    def timed_ms(fn, reps):
        """Mean milliseconds of `reps` calls (after the caller's warm-up), wall clock around a synchronize."""
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            result = fn()
        sync()
        return (time.perf_counter() - t0) * 1000 / reps, result
    print(f"fp8 matmul supported: {precision.fp8_matmul_supported(device)}; "
          f"attention backends: {attention.available_attention_backends(device)}; "
          f"auto -> {attention.resolve_attention_backend('auto', device)}")
    default_backend = _AttentionBackendRegistry._active_backend
    results: list[dict] = []
    failures: list[str] = []

    # --- one fp8 layer at real size ----------------------------------------------------------------
    if args.tiny:
        args.frames, args.height, args.width = 3, 8, 8
    tokens = args.frames * (args.height // 2) * (args.width // 2)

    def time_ms(fn, reps=10):
        fn()
        return timed_ms(fn, reps)[0]

    torch.manual_seed(0)
    for in_f, out_f in ((64, 96),) if args.tiny else ((5120, 13824), (13824, 5120)):
        try:
            linear = torch.nn.Linear(in_f, out_f, device=device, dtype=torch.bfloat16)
            x = torch.randn(tokens, in_f, device=device, dtype=torch.bfloat16)
            with torch.no_grad():
                ref = linear(x).float()
                row = {"case": f"Fp8Linear {in_f}->{out_f}, {tokens} tokens", "bf16_ms": time_ms(lambda: linear(x))}
                for label, kwargs in (
                    ("storage", dict(use_scaled_mm=False)),
                    ("scaled_mm_row", dict(use_scaled_mm=True, activation_scaling="row")),
                    ("scaled_mm_tensor", dict(use_scaled_mm=True, activation_scaling="tensor")),
                ):
                    layer = precision.Fp8Linear.from_linear(linear, torch.float8_e4m3fn, torch.bfloat16, **kwargs)
                    out = layer(x).float()
                    row[f"{label}_ms"] = time_ms(lambda: layer(x))
                    row[f"{label}_cos"] = F.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item()
                    row[f"{label}_rel"] = ((out - ref).norm() / ref.norm()).item()
                    del layer, out
            print(json.dumps(row))
            results.append(row)
            del linear, x, ref
        except Exception:  # noqa: BLE001 - report every failing path, then exit non-zero
            failures.append(f"Fp8Linear {in_f}->{out_f}")
            traceback.print_exc()
    empty_cache()

    # --- attention kernels alone (one self-attention of one layer) ----------------------------------
    if cuda and not args.tiny:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        try:
            q, k, v = (torch.randn(1, 40, tokens, 128, device=device, dtype=torch.bfloat16) for _ in range(3))
            with torch.no_grad():
                default_out = F.scaled_dot_product_attention(q, k, v)
                row = {"case": f"SDPA kernels, 40 heads x 128, {tokens} tokens",
                       "default_ms": time_ms(lambda: F.scaled_dot_product_attention(q, k, v), reps=5)}
                for label, kernel in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                                      ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
                    try:
                        with sdpa_kernel([kernel]):
                            out = F.scaled_dot_product_attention(q, k, v)
                            row[f"{label}_ms"] = time_ms(lambda: F.scaled_dot_product_attention(q, k, v), reps=5)
                        row[f"{label}_equals_default"] = bool(torch.equal(out, default_out))
                    except RuntimeError as error:
                        row[f"{label}_ms"] = f"unavailable: {str(error)[:120]}"
            print(json.dumps(row))
            results.append(row)
            del q, k, v, default_out
        except Exception:  # noqa: BLE001
            failures.append("SDPA kernel timing")
            traceback.print_exc()
        empty_cache()

    # --- the transformer --------------------------------------------------------------------------
    config = dict(
        patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=args.layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
    )
    if args.tiny:
        config.update(num_attention_heads=2, attention_head_dim=16, text_dim=32, ffn_dim=64, rope_max_seq_len=32)
    text_dim = config["text_dim"]
    torch.manual_seed(0)
    with torch.device(device):
        master_model = WanTransformer3DModel(**config).eval()
    master = {k: v.detach().to(torch.bfloat16).clone() for k, v in master_model.state_dict().items()}
    del master_model
    empty_cache()

    generator = torch.Generator(device=device).manual_seed(1)
    inputs = dict(
        hidden_states=torch.randn(1, 16, args.frames, args.height, args.width, device=device,
                                  generator=generator).to(torch.bfloat16),
        timestep=torch.tensor([700], device=device),
        encoder_hidden_states=torch.randn(1, 512, text_dim, device=device, generator=generator).to(torch.bfloat16),
    )

    def build(precision_name: str, scaling: str | None = None):
        base = allocated()
        with torch.device(device):
            model = WanTransformer3DModel(**config).eval().requires_grad_(False)
        model.load_state_dict(master, strict=True)  # same weights for every path (bf16 values)
        sync()
        reset_peak()
        before = allocated()
        notes = precision.apply_precision(model, precision_name, device, activation_scaling=scaling)
        sync()
        info = {
            "weights_gib": round((allocated() - base) / 2**30, 3),
            "conversion_peak_over_start_gib": round((peak() - before) / 2**30, 3),
            "notes": notes,
        }
        return model, info

    def forward(model, dtype=torch.bfloat16):
        """One forward, inputs in the model's compute dtype (the sampler feeds it that way)."""
        with torch.no_grad():
            args_ = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in inputs.items()}
            return model(**args_, return_dict=False)[0]

    baseline = None

    def measure(precision_name: str, backend: str, *, compile_mode: str = "off", offload_mode: str = "none",
                compare_to=None, reps: int = args.reps, scaling: str | None = None):
        nonlocal baseline
        label = f"{precision_name}" + (f" ({scaling}-wise)" if scaling else "") + f" + {backend}" + (f" + compile {compile_mode}" if compile_mode != "off" else "") + (
            f" + offload {offload_mode}" if offload_mode != "none" else "")
        model = None
        try:
            model, info = build(precision_name, scaling)
            attention.apply_attention_backend(model, backend, device)
            offload.apply_offload(model, offload_mode, device)
            notes = compile_mod.apply_compile(model, compile_mode)
            reset_peak()
            t0 = time.time()
            dtype = torch.float16 if precision_name == "fp16" else torch.bfloat16
            forward(model, dtype)  # warm-up (and compile)
            sync()
            first_s = time.time() - t0
            ms, out = timed_ms(lambda: forward(model, dtype), reps)
            out = out.float()
            if not torch.isfinite(out).all():
                raise RuntimeError("non-finite output")
            row = {"path": label, "ms_per_forward": round(ms, 1), "first_call_s": round(first_s, 1), **info}
            row["notes"] = info["notes"] + notes
            reference = compare_to if compare_to is not None else baseline
            if reference is None:
                baseline = out
                row.update(cosine=1.0, rel_err=0.0)
            else:
                row["cosine"] = round(F.cosine_similarity(out.flatten(), reference.flatten(), dim=0).item(), 6)
                row["rel_err"] = round(((out - reference).norm() / reference.norm()).item(), 5)
                if compare_to is not None:
                    row["identical_to_reference"] = bool(torch.equal(out, compare_to))
            row["forward_peak_gib"] = round(peak() / 2**30, 2)
            print(json.dumps(row))
            results.append(row)
            return out
        except Exception as error:  # noqa: BLE001
            failures.append(f"{label}: {type(error).__name__}: {error}")
            traceback.print_exc()
            return None
        finally:
            del model
            empty_cache()
            torch._dynamo.reset()

    measure("bf16", "sdpa")
    if baseline is None:
        print("baseline bf16 + sdpa failed; nothing to compare against", file=sys.stderr)
        return 1
    for name in ("fp16", "fp8_e4m3fn", "fp8_e5m2", "fp8_e4m3fn_fast"):
        measure(name, "sdpa")
    for backend in attention.available_attention_backends(device):
        if backend == "sdpa":
            continue
        measure("bf16", backend)
        measure("fp8_e4m3fn_fast", backend)
    if precision.fp8_matmul_supported(device):
        for scaling in ("row", "tensor"):  # both activation scalings, whichever the device default is
            measure("fp8_e4m3fn_fast", "sdpa", scaling=scaling)

    best = attention.resolve_attention_backend("auto", device)
    if time.time() - started < args.time_budget:
        fp8_ref = measure("fp8_e4m3fn", "sdpa", reps=1)
        if fp8_ref is not None:
            measure("fp8_e4m3fn", "sdpa", offload_mode="block", compare_to=fp8_ref, reps=1)
    else:
        print("skipped: block offload (time budget)")
    if not args.no_compile:
        runs = [("fp8_e4m3fn_fast", None)]
        if args.compile_all:
            runs = [("bf16", None), ("fp8_e4m3fn_fast", "row"), ("fp8_e4m3fn_fast", "tensor")]
        for name, scaling in runs:
            if time.time() - started < args.time_budget:
                measure(name, best, compile_mode="regional", scaling=scaling)
            else:
                print(f"skipped: {name} + compile (time budget)")

    if _AttentionBackendRegistry._active_backend != default_backend:
        failures.append(f"diffusers' global attention backend changed: {default_backend} -> "
                        f"{_AttentionBackendRegistry._active_backend}")

    print("\n%-60s %9s %9s %9s %8s" % ("path", "ms/fwd", "cosine", "rel_err", "GiB"))
    for row in results:
        if "path" in row:
            print("%-60s %9.1f %9.5f %9.5f %8.3f" % (row["path"], row["ms_per_forward"], row["cosine"],
                                                      row["rel_err"], row["weights_gib"]))
    summary = {"device": gpu, "capability": list(capability), "torch": torch.__version__, "tokens": tokens,
               "layers": args.layers, "results": results, "failures": failures,
               "elapsed_s": round(time.time() - started, 1)}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    if failures:
        print("\nFAILED paths:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print(f"\nall paths ran ({summary['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
