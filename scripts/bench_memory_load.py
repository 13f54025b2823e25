#!/usr/bin/env python3
"""Wan 2.2 T2V A14B from files on local disk, the way the loader node reads them: model-load time of both fp8
experts and the peak GPU memory of one whole clip with both experts resident (no offload), on a CUDA GPU.

It first writes real-size files with random weights in the layout most users have (ComfyUI's
`wan2.2_t2v_{high,low}_noise_14B_fp8_scaled.safetensors` + `wan_2.1_vae.safetensors`; skipped when present), then:
1. load: `load_wan_model` (read, convert, apply the precision) and `prepare_for_sampling` (both experts and the
   VAE onto the GPU), timed apart; cold (the page cache dropped first where the machine allows it; the output says
   whether it was) with the files' read-ahead off and on (`--prefetch`), then once more warm;
2. memory: `sample_wan` with CFG over `--steps` steps (the boundary puts the first step on the high-noise expert
   and the rest on the low-noise one) and the VAE decode, at the given size, with peak allocated and reserved GPU
   memory for the whole clip.

    python scripts/bench_memory_load.py --dir /tmp/wan-files --size 720p --frames 81 --steps 2
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from pack_import import import_engine_only  # noqa: E402

import_engine_only()
from bench_models import Workload  # noqa: E402
from reelsmith.engine.models.file_prefetch import ENVIRONMENT_SWITCH  # noqa: E402

HIGH, LOW, VAE = ("wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors",
                  "wan_2.1_vae.safetensors")


def write_files(folder: pathlib.Path, device) -> None:
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from bench_models import randomise_on_gpu
    from reelsmith.engine import demo_models
    from reelsmith.engine.models.checkpoint_io import empty_weights

    folder.mkdir(parents=True, exist_ok=True)
    config = Workload("wan", "t2v-a14b", "720p", 81).config()
    for name in (HIGH, LOW):
        if (folder / name).is_file():
            continue
        with empty_weights():
            model = WanTransformer3DModel(**config)
        randomise_on_gpu(model, device)
        # quantized on the GPU (minutes on the CPU), written as ComfyUI writes them
        demo_models.write_transformer_single_file(model, folder / name, fp8_scaled=True)
        del model
        torch.cuda.empty_cache()
    if not (folder / VAE).is_file():
        vae = AutoencoderKLWan().eval()  # the Wan 2.1 VAE's architecture is diffusers' default config
        demo_models.write_vae_original(vae, "2.1", folder / VAE)


def drop_page_cache(folder: pathlib.Path) -> str:
    """'cold' when the kernel dropped its cached copy of the files, else 'warm (...)'."""
    try:
        os.sync()
        pathlib.Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "cold (page cache dropped)"
    except OSError as error:
        return f"warm (page cache could not be dropped: {error.strerror})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=pathlib.Path, default=pathlib.Path("/tmp/reelsmith-wan-files"))
    parser.add_argument("--size", default="720p", choices=["480p", "720p"])
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--prefetch", nargs="+", choices=["off", "on"], default=["off", "on", "off"],
                        help="one cold load for each (where the page cache can be dropped), with the files' read-ahead "
                             "(engine/models/file_prefetch.py) off or on, in this order (the default brackets 'on' "
                             "between two 'off', so the first load's one-time costs favour neither); then one warm "
                             "load with it on")
    parser.add_argument("--precision", default="fp8_e4m3fn_fast")
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--compile", default="off")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("memory_load.json"))
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("bench_memory_load.py needs a CUDA GPU.", file=sys.stderr)
        return 2
    from reelsmith.engine.models.wan_layouts import WanModelFiles
    from reelsmith.engine.models.wan_model import WanLoadOptions, load_wan_model
    from reelsmith.engine.pipelines.wan_sampler import WanSampleRequest, decode_wan_latents, sample_wan

    device = torch.device("cuda", 0)
    started = time.perf_counter()
    write_files(args.dir, device)
    print(f"# files ready in {time.perf_counter() - started:.0f} s: "
          + ", ".join(f"{p.name} {p.stat().st_size / 2**30:.1f} GiB" for p in sorted(args.dir.glob("*.safetensors"))),
          flush=True)
    files = WanModelFiles(layout="comfyui single files", label="random weights", transformer=args.dir / HIGH,
                          transformer_2=args.dir / LOW, vae=args.dir / VAE, vae_format="original", text_encoder=None,
                          text_encoder_format=None, tokenizer=None)
    options = WanLoadOptions(precision=args.precision, attention=args.attention, compile=args.compile, offload="none")
    loads = []
    runs = [(prefetch, True) for prefetch in args.prefetch] + [("on", False)]
    for prefetch, cold in runs:
        model = None  # the last load's memory-mapped pages released first, or dropping the cache cannot drop them
        gc.collect()
        torch.cuda.empty_cache()
        cache = drop_page_cache(args.dir) if cold else "warm (read again)"
        os.environ[ENVIRONMENT_SWITCH] = "1" if prefetch == "on" else "0"
        started = time.perf_counter()
        model = load_wan_model(files, options, device)
        read_s = time.perf_counter() - started
        started = time.perf_counter()
        model.prepare_for_sampling()
        torch.cuda.synchronize()
        to_gpu_s = time.perf_counter() - started
        loads.append(dict(page_cache=cache, prefetch=prefetch, read_convert_s=round(read_s, 1),
                          to_gpu_s=round(to_gpu_s, 1), total_s=round(read_s + to_gpu_s, 1)))
        print(f"# load: read + convert {read_s:.1f} s, to the GPU {to_gpu_s:.1f} s ({cache}, read-ahead {prefetch})",
              flush=True)
    resident_gib = torch.cuda.memory_allocated() / 2**30

    width, height = Workload("wan", "t2v-a14b", args.size, args.frames).pixels
    text_dim = model.high.model.config.text_dim
    generator = torch.Generator().manual_seed(0)
    request = WanSampleRequest(
        prompt_embeds=torch.randn(1, 120, text_dim, generator=generator),
        negative_embeds=torch.randn(1, 80, text_dim, generator=generator), width=width, height=height,
        frames=args.frames, steps=args.steps, cfg_high=4.0, cfg_low=3.0,
        # shift 5, boundary 0.9: the first step's t (1000) is on the high-noise expert, the later ones below it
        flow_shift=5.0, boundary=0.9, scheduler="unipc", seed=0)
    step_times, experts = [], []
    last = [time.perf_counter()]

    def on_step(step, total, x0):
        torch.cuda.synchronize()
        now = time.perf_counter()
        step_times.append(round(now - last[0], 2))
        last[0] = now
        print(f"  step {step}/{total}: {step_times[-1]} s", flush=True)

    def stage(expert_model):
        experts.append("high" if expert_model is model.high.model else "low")
        return model.stage(expert_model)

    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    with torch.no_grad():
        result = sample_wan(high_noise_model=model.high.model, low_noise_model=model.low.model, vae=model.vae,
                            request=request, device=device, size_multiple=model.variant.size_multiple,
                            image_conditioned=False, expand_timesteps=False, on_step=on_step, stage=stage)
        sample_peak = torch.cuda.max_memory_allocated() / 2**30
        decode_started = time.perf_counter()
        frames = decode_wan_latents(model.vae, result.latents, device)
        torch.cuda.synchronize()
    decode_s = time.perf_counter() - decode_started
    row = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, precision=args.precision,
               attention=args.attention, compile=args.compile, size=args.size, frames=args.frames, steps=args.steps,
               experts_used=experts, loads=loads, resident_gib=round(resident_gib, 2),
               step_seconds=step_times, decode_s=round(decode_s, 2), clip_s=round(time.perf_counter() - started, 1),
               peak_sampling_gib=round(sample_peak, 2),
               peak_allocated_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
               peak_reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 2),
               frames_out=list(frames.shape), finite=bool(torch.isfinite(frames).all()))
    args.out.write_text(json.dumps(row, indent=2))
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
