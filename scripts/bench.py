#!/usr/bin/env python3
"""Benchmark Reelsmith's Wan 2.2 transformer at real size with random weights (same FLOPs as real ones;
nothing is downloaded): seconds per forward, achieved TFLOP/s, peak GPU memory, for each precision and
attention/compile path asked for. Writes a JSON file and prints a markdown table naming GPU, driver,
torch version and date.

    python scripts/bench.py --variant t2v-a14b --size 480p --precision bf16 fp8_e4m3fn_fast --compile off regional

This is the first slice of the benchmark (Wan transformer forward); text-encode, VAE-decode, load times and
the ComfyUI-native peer comparison are still to come.
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

PACK_ROOT = pathlib.Path(__file__).resolve().parent.parent
SIZES = {"480p": (832, 480), "720p": (1280, 720)}


def import_pack():
    sys.path.insert(0, str(PACK_ROOT / "scripts"))
    from make_demo_models import import_pack as _import
    return _import()


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


def forward_flops(config: dict, tokens: int, text_tokens: int = 512) -> float:
    """Matmul FLOPs of one forward (2 per multiply-add): attention projections, self-attention, cross-attention
    and the FFN of every block."""
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    per_block = (
        2 * tokens * dim * dim * 4            # self-attention q, k, v, o
        + 2 * 2 * tokens * tokens * dim       # self-attention scores and values
        + 2 * tokens * dim * dim * 2          # cross-attention q, o
        + 2 * text_tokens * dim * dim * 2     # cross-attention k, v
        + 2 * 2 * tokens * text_tokens * dim  # cross-attention scores and values
        + 2 * tokens * dim * config["ffn_dim"] * 2
    )
    return per_block * config["num_layers"]


def build(variant, precision_name: str, attention_name: str, compile_mode: str):
    import torch
    from diffusers import WanTransformer3DModel
    from reelsmith.engine.models import attention, compile as compile_options, precision

    from accelerate.utils import set_module_tensor_to_device
    from reelsmith.engine.models.checkpoint_io import empty_weights

    device = torch.device("cuda")
    config = {k: v for k, v in variant.transformer_config_dict().items() if not k.startswith("_")}
    with empty_weights():  # parameters on meta, rotary buffers real
        model = WanTransformer3DModel(**config)
    for name, parameter in list(model.named_parameters()):  # random weights straight on the GPU
        value = torch.empty(parameter.shape, device=device, dtype=torch.bfloat16).normal_(0.0, 0.02)
        set_module_tensor_to_device(model, name, device, value=value)
    model.to(device)
    model.eval().requires_grad_(False)
    notes = precision.apply_precision(model, precision_name, device)
    backend = attention.resolve_attention_backend(attention_name, device)
    attention.apply_attention_backend(model, backend)
    compile_options.apply_compile(model, compile_mode)
    return model, config, notes, backend


def time_forward(model, width: int, height: int, frames: int, repeats: int) -> tuple[float, float]:
    import torch
    device = torch.device("cuda")
    channels = model.config.in_channels
    latents = torch.randn(1, channels, (frames - 1) // 4 + 1, height // 8, width // 8, device=device,
                          dtype=torch.bfloat16)
    text = torch.randn(1, 512, 4096, device=device, dtype=torch.bfloat16)
    timestep = torch.tensor([500.0], device=device)

    def forward():
        with torch.no_grad():
            return model(hidden_states=latents, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]

    started = time.perf_counter()
    forward()  # warm-up (and compile)
    torch.cuda.synchronize()
    first = time.perf_counter() - started
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        started = time.perf_counter()
        forward()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2], first


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="t2v-a14b", choices=["t2v-a14b", "i2v-a14b", "ti2v-5b"])
    parser.add_argument("--size", nargs="+", default=["480p"], choices=list(SIZES))
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp8_e4m3fn_fast"])
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--compile", nargs="+", default=["off"], choices=["off", "regional"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100 SXM: 989)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("bench_wan.json"))
    args = parser.parse_args(argv)

    import torch
    if not torch.cuda.is_available():
        print("bench.py needs a CUDA GPU.", file=sys.stderr)
        return 2
    import_pack()
    from reelsmith.engine.models.wan_variants import WAN_VARIANTS

    variant = WAN_VARIANTS[args.variant]
    facts = gpu_facts()
    rows = []
    for precision_name in args.precision:
        for compile_mode in args.compile:
            model, config, notes, backend = build(variant, precision_name, args.attention, compile_mode)
            weights_gib = torch.cuda.memory_allocated() / 2**30
            for size in args.size:
                width, height = SIZES[size]
                seconds, first = time_forward(model, width, height, args.frames, args.repeats)
                tokens = ((args.frames - 1) // 4 + 1) * (height // 16) * (width // 16)
                tflops = forward_flops(config, tokens) / seconds / 1e12
                rows.append(dict(facts, variant=args.variant, size=size, frames=args.frames, precision=precision_name,
                                 attention=backend, compile=compile_mode, seconds_per_forward=round(seconds, 3),
                                 first_call_s=round(first, 1), tflops=round(tflops, 1),
                                 fraction_of_peak=round(tflops / args.peak_tflops, 3),
                                 weights_gib=round(weights_gib, 2),
                                 peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2), notes=notes))
                print(json.dumps(rows[-1]), flush=True)
            del model
            torch._dynamo.reset()  # compiled blocks keep the model alive through dynamo's caches
            gc.collect()
            torch.cuda.empty_cache()
    args.out.write_text(json.dumps(rows, indent=2))
    print(f"\n{facts['gpu']}, driver {facts['driver']}, torch {facts['torch']}, {facts['date']}\n")
    print("| variant | size | precision | attention | compile | s/forward | TFLOP/s | peak GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['variant']} | {r['size']} | {r['precision']} | {r['attention']} | {r['compile']} | "
              f"{r['seconds_per_forward']} | {r['tflops']} | {r['peak_gib']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
