#!/usr/bin/env python3
"""Benchmark Reelsmith's models at real size with random weights on a CUDA GPU (random weights cost the same
FLOPs as real ones; nothing is downloaded), and ComfyUI's own model code beside them in the same process.

For each model (Wan 2.2 T2V A14B expert, TI2V-5B, LTX-Video 2B / 13B), size and precision/attention/compile
path: seconds per transformer forward, TFLOP/s achieved and the fraction of the GPU's dense peak, peak GPU
memory; per model family the text-encode and VAE-decode times; and a whole-clip estimate (steps x forwards per
step + text encode + VAE decode). With `--comfyui DIR`, ComfyUI's native model for the same architecture and
precision (`bench_peer.py`) is timed in the same run and the table gives Reelsmith's speed-up over it.

    python scripts/bench.py --models t2v-a14b ltx-13b --sizes 480p 720p --paths fp8_e4m3fn_fast:auto:regional \\
        --comfyui ~/ComfyUI --components --out bench.json --table data/benchmarks.json

Output: a JSON file of rows (the schema of `data/benchmarks.json`, which the README's performance table and
the editor's estimates read; `--table` merges the rows into it) and a markdown table on stdout. Each row names
the GPU, driver, torch version and date.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import pathlib
import subprocess
import sys
import time
import traceback

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from pack_import import import_engine_only  # noqa: E402

import_engine_only()  # `reelsmith.engine` without the ComfyUI node layer
from bench_models import DEFAULT_FRAMES, Workload  # noqa: E402

MODELS = {"t2v-a14b": ("wan", "t2v-a14b"), "i2v-a14b": ("wan", "i2v-a14b"), "ti2v-5b": ("wan", "ti2v-5b"),
          "ltx-2b": ("ltx", "2b"), "ltx-13b": ("ltx", "13b")}
# dense peaks (TFLOP/s) by GPU name fragment: bf16, fp8
DENSE_PEAKS = {"H200": (989.0, 1979.0), "H100": (989.0, 1979.0), "B200": (2250.0, 4500.0)}
# whole-clip recipes: (model, recipe, steps, forwards per step: 2 with CFG, 1 at CFG 1). A distillation LoRA is
# merged into the weights at load, so its forward costs the same as the base model's.
CLIP_RECIPES = (("t2v-a14b", "40 steps, CFG", 40, 2), ("t2v-a14b", "4-step distillation LoRA, CFG 1", 4, 1),
                ("i2v-a14b", "40 steps, CFG", 40, 2), ("ti2v-5b", "50 steps, CFG", 50, 2),
                ("ltx-2b", "40 steps", 40, 1), ("ltx-13b", "30 steps, CFG", 30, 2))


def gpu_facts() -> dict:
    import torch

    driver = "unknown"
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, check=False).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        pass
    return {"gpu": torch.cuda.get_device_name(), "driver": driver, "torch": torch.__version__,
            "date": datetime.date.today().isoformat()}


def dense_peak(gpu: str, precision: str) -> float | None:
    for fragment, (bf16, fp8) in DENSE_PEAKS.items():
        if fragment in gpu:
            return fp8 if precision.startswith("fp8") and precision.endswith("fast") else bf16
    return None


def time_call(fn, repeats: int) -> tuple[float, float, float]:
    """-> (median seconds, first-call seconds (warm-up, compile), peak GiB during the timed calls)."""
    import torch

    with torch.no_grad():
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        first = time.perf_counter() - started
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            torch.cuda.synchronize()
            started = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2], first, torch.cuda.max_memory_allocated() / 2**30


def free_gpu() -> None:
    import torch

    torch._dynamo.reset()  # compiled blocks keep their model alive through dynamo's caches
    gc.collect()
    torch.cuda.empty_cache()


def parse_path(text: str) -> tuple[str, str, str]:
    """`precision[:attention[:compile]]` -> the three loader options (attention `auto`, compile `off` when left
    out)."""
    parts = text.split(":")
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected precision[:attention[:compile]]")
    defaults = ["auto", "off"]
    return tuple(parts + defaults[len(parts) - 1:])


def forward_row(facts, name, workload, implementation, precision, attention, compile_mode, seconds, first, peak,
                notes="") -> dict:
    tflops = workload.forward_flops() / seconds / 1e12
    peak_tflops = dense_peak(facts["gpu"], precision)
    width, height = workload.pixels
    return dict(facts, model_family=workload.family, variant=workload.variant, model=name, size=workload.size,
                width=width, height=height, frames=workload.frames, implementation=implementation, precision=precision, attention=attention, compile=compile_mode,
                seconds_per_forward=round(seconds, 3), first_call_s=round(first, 1), tflops=round(tflops, 1),
                fraction_of_peak=round(tflops / peak_tflops, 3) if peak_tflops else None,
                peak_gib=round(peak, 2), tokens=workload.tokens(),
                attention_flop_share=round(workload.attention_share(), 3), notes=notes)


def run_forwards(args, facts, device) -> list[dict]:
    import torch

    from bench_models import build_ours, ours_forward

    rows = []
    for name in args.models:
        family, variant = MODELS[name]
        for precision, attention_name, compile_mode in args.paths:
            try:
                model, notes, backend = build_ours(Workload(family, variant, args.sizes[0], 1), precision,
                                                   attention_name, compile_mode, device)
            except Exception as error:  # one path failing must not lose the others' numbers
                print(f"# {name} {precision}/{attention_name}/{compile_mode}: build failed: {error}", flush=True)
                continue
            for size in args.sizes:
                workload = Workload(family, variant, size, args.frames or DEFAULT_FRAMES[family])
                try:
                    seconds, first, peak = time_call(ours_forward(model, workload, device), args.repeats)
                except Exception as error:
                    print(f"# {name} {size} {precision}: forward failed: {error}", flush=True)
                    traceback.print_exc()
                    continue
                rows.append(forward_row(facts, name, workload, "reelsmith", precision, backend, compile_mode,
                                        seconds, first, peak, "; ".join(notes) if isinstance(notes, list) else notes))
                print(json.dumps(rows[-1]), flush=True)
            del model
            free_gpu()
        if args.comfyui:
            rows += run_peer(args, facts, device, name, family, variant)
    return rows


def run_peer(args, facts, device, name, family, variant) -> list[dict]:
    from bench_peer import PEER_PRECISIONS, build_peer, import_comfy

    ops_module = import_comfy(str(args.comfyui))
    rows = []
    for precision in [p for p in args.peer_precisions if p in PEER_PRECISIONS]:
        for size in args.sizes:
            workload = Workload(family, variant, size, args.frames or DEFAULT_FRAMES[family])
            try:
                seconds, first, peak = time_call(build_peer(ops_module, workload, precision, device), args.repeats)
            except Exception as error:
                print(f"# ComfyUI native {name} {size} {precision}: failed: {error}", flush=True)
                traceback.print_exc()
                free_gpu()
                continue
            rows.append(forward_row(facts, name, workload, "comfyui-native", precision, "sdpa", "off",
                                    seconds, first, peak))
            print(json.dumps(rows[-1]), flush=True)
            free_gpu()
    return rows


def run_components(args, facts, device) -> list[dict]:
    """Text encode (prompt + negative) and VAE decode per model family and size."""
    from bench_models import build_text_encoder, build_vae_decode

    rows = []
    families = {MODELS[name][0]: name for name in args.models}
    for family in families:
        try:
            seconds, _, peak = time_call(build_text_encoder(family, device), args.repeats)
            rows.append(dict(facts, model_family=family, component="text_encode", seconds=round(seconds, 3),
                             peak_gib=round(peak, 2)))
            print(json.dumps(rows[-1]), flush=True)
        except Exception as error:
            print(f"# {family} text encode failed: {error}", flush=True)
        free_gpu()
    for name in args.models:
        family, variant = MODELS[name]
        if variant == "i2v-a14b" or (family == "ltx" and variant == "13b" and "ltx-2b" in args.models):
            continue  # same VAE as another model in this run
        for size in args.sizes:
            workload = Workload(family, variant, size, args.frames or DEFAULT_FRAMES[family])
            try:
                seconds, _, peak = time_call(build_vae_decode(workload, device), max(1, args.repeats - 1))
                rows.append(dict(facts, model_family=family, variant=variant, model=name, size=size,
                                 frames=workload.frames, component="vae_decode", seconds=round(seconds, 3), peak_gib=round(peak, 2)))
                print(json.dumps(rows[-1]), flush=True)
            except Exception as error:
                print(f"# {name} {size} VAE decode failed: {error}", flush=True)
            free_gpu()
    return rows


def clip_estimates(rows: list[dict]) -> list[dict]:
    """Whole clip = steps x forwards per step x the fastest Reelsmith forward + text encode + VAE decode."""
    out = []
    forwards = [r for r in rows if r.get("implementation") == "reelsmith"]
    for name, recipe, steps, per_step in CLIP_RECIPES:
        for size in sorted({r["size"] for r in forwards if r["model"] == name}):
            best = min((r for r in forwards if r["model"] == name and r["size"] == size),
                       key=lambda r: r["seconds_per_forward"])
            text = next((r["seconds"] for r in rows if r.get("component") == "text_encode"
                         and r["model_family"] == best["model_family"]), None)
            decode = next((r["seconds"] for r in rows if r.get("component") == "vae_decode"
                           and r["model_family"] == best["model_family"] and r["size"] == size
                           and (r["model"] == name or best["model_family"] == "ltx")), None)
            total = steps * per_step * best["seconds_per_forward"] + (text or 0) + (decode or 0)
            out.append(dict(variant=name, recipe=recipe, size=size, steps=steps, forwards_per_step=per_step,
                            path=f"{best['precision']}/{best['attention']}/{best['compile']}",
                            text_encode_s=text, vae_decode_s=decode, estimate_s=round(total, 1)))
    return out


def markdown(rows: list[dict], clips: list[dict], facts: dict) -> str:
    lines = [f"{facts['gpu']}, driver {facts['driver']}, torch {facts['torch']}, {facts['date']}", "",
             "| model | size | implementation | precision | attention | compile | s/forward | TFLOP/s | "
             "of peak | peak GiB | vs native fp8_fast |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    forwards = [r for r in rows if "seconds_per_forward" in r]
    for r in forwards:
        native = next((p["seconds_per_forward"] for p in forwards if p["implementation"] == "comfyui-native"
                       and p["precision"] == "fp8_e4m3fn_fast" and p["model"] == r["model"]
                       and p["size"] == r["size"]), None)
        ratio = f"{native / r['seconds_per_forward']:.2f}x" if native else "-"
        lines.append(f"| {r['model']} | {r['size']} | {r['implementation']} | {r['precision']} | {r['attention']} | "
                     f"{r['compile']} | {r['seconds_per_forward']} | {r['tflops']} | {r['fraction_of_peak']} | "
                     f"{r['peak_gib']} | {ratio} |")
    components = [r for r in rows if "component" in r]
    if components:
        lines += ["", "| component | family / model | size | seconds | peak GiB |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['component']} | {r.get('model', r['model_family'])} | {r.get('size', '-')} | "
                  f"{r['seconds']} | {r['peak_gib']} |" for r in components]
    if clips:
        lines += ["", "| whole clip (estimate) | recipe | size | steps x forwards | path | text s | decode s | total s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {c['variant']} | {c['recipe']} | {c['size']} | {c['steps']} x {c['forwards_per_step']} | {c['path']} | "
                  f"{c['text_encode_s']} | {c['vae_decode_s']} | {c['estimate_s']} |" for c in clips]
    return "\n".join(lines)


def table_rows(rows: list[dict]) -> list[dict]:
    """The forward rows as the table keeps them (engine/estimates.py's schema): a run's text-encode and
    VAE-decode times ride on the forward rows of the same family and size (the VAE of the same model)."""
    out = []
    for row in (r for r in rows if "seconds_per_forward" in r):
        row = dict(row)
        text = next((c for c in rows if c.get("component") == "text_encode"
                     and c["model_family"] == row["model_family"]), None)
        decode = next((c for c in rows if c.get("component") == "vae_decode" and c["size"] == row["size"]
                       and c["model_family"] == row["model_family"]
                       and (c["variant"] == row["variant"] or row["model_family"] == "ltx")), None)
        if text:
            row["text_encode_s"] = text["seconds"]
        if decode:
            row["vae_decode_s"] = decode["seconds"]
        out.append(row)
    return out


def merge_into_table(table: pathlib.Path, rows: list[dict]) -> None:
    """Replace the table's rows measured on the same GPU for the same thing, append the rest."""
    def key(r):  # rows without `implementation` are Reelsmith's (the table's first rows predate the field)
        return tuple(r.get(k, "reelsmith" if k == "implementation" else None)
                     for k in ("gpu", "model_family", "variant", "size", "frames", "implementation",
                               "precision", "attention", "compile"))

    existing = json.loads(table.read_text()) if table.is_file() else []  # a JSON list (engine/estimates.py)
    fresh = {key(r) for r in rows}
    merged = [r for r in existing if key(r) not in fresh] + rows
    table.write_text(json.dumps(merged, indent=2) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["t2v-a14b"], choices=list(MODELS))
    parser.add_argument("--sizes", nargs="+", default=["480p", "720p"], choices=["480p", "720p"])
    parser.add_argument("--frames", type=int, default=None, help="video frames (default: Wan 81, LTX 97)")
    parser.add_argument("--paths", nargs="+", type=parse_path, default=[("fp8_e4m3fn_fast", "auto", "regional")],
                        help="Reelsmith loader paths as precision[:attention[:compile]]")
    parser.add_argument("--comfyui", type=pathlib.Path, help="a ComfyUI checkout: also time its native models")
    parser.add_argument("--peer-precisions", nargs="+", default=["fp8_e4m3fn_fast"])
    parser.add_argument("--components", action="store_true", help="also time text encode and VAE decode")
    parser.add_argument("--no-forward", action="store_true", help="components only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("bench.json"))
    parser.add_argument("--table", type=pathlib.Path, help="merge the rows into this data file")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("bench.py needs a CUDA GPU.", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    facts = gpu_facts()
    rows = [] if args.no_forward else run_forwards(args, facts, device)
    if args.components:
        rows += run_components(args, facts, device)
    clips = clip_estimates(rows)
    args.out.write_text(json.dumps({"rows": rows, "clip_estimates": clips}, indent=2))
    if args.table:
        merge_into_table(args.table, table_rows(rows))
    print("\n" + markdown(rows, clips, facts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
