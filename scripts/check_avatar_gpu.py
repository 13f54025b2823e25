#!/usr/bin/env python3
"""Hunyuan Video Avatar's transformer at real size on a CUDA GPU (random weights; nothing downloaded): one
denoising step's forward (CFG: cond + uncond batched, as the sampler runs it) on one 129-frame window at the
given image size, per precision and offload mode: seconds, peak GPU memory, and whether it fits.

    python scripts/check_avatar_gpu.py --size 704 --precision bf16 fp8_e4m3fn_fast --offload none block
"""

from __future__ import annotations

import argparse
import gc
import json
import pathlib
import sys
import time
import traceback

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from pack_import import import_engine_only  # noqa: E402

import_engine_only()

WINDOW_LATENT_FRAMES = 33  # 129 video frames
TEXT_TOKENS = 256          # LLaVA prompt + image tokens after the template crop (padded)


def build(precision: str, offload: str, device):
    import torch

    from bench_models import randomise_on_gpu
    from reelsmith.engine.models import offload as offload_options, precision as precision_options
    from reelsmith.engine.models.checkpoint_io import empty_weights
    from reelsmith.engine.models.hunyuan_avatar_checkpoint import shipped_config
    from reelsmith.engine.models.hunyuan_avatar_transformer import HunyuanAvatarTransformer

    config = {k: v for k, v in shipped_config().items() if not k.startswith("_")}
    with empty_weights():
        model = HunyuanAvatarTransformer(**config)
    # weights are made on the GPU, then offloading (if any) moves them out, as the loader does
    randomise_on_gpu(model, device)
    notes = precision_options.apply_precision(model, precision, device)
    if offload != "none":
        model.to("cpu")
        torch.cuda.empty_cache()
        offload_options.apply_offload(model, offload, device)
    return model, notes


def inputs(model, size: int, device, batch: int = 2):
    import torch

    latent = size // 8
    bf16 = dict(device=device, dtype=torch.bfloat16)
    frames = WINDOW_LATENT_FRAMES
    return dict(
        hidden_states=torch.randn(batch, 16, frames, latent, latent, **bf16),
        timestep=torch.full((batch,), 900.0, device=device),
        encoder_hidden_states=torch.randn(batch, TEXT_TOKENS, 4096, **bf16),
        encoder_attention_mask=torch.ones(batch, TEXT_TOKENS, device=device, dtype=torch.bool),
        pooled_projections=torch.randn(batch, 768, **bf16),
        reference_latents=torch.randn(batch, 16, frames, latent, latent, **bf16),
        audio_features=torch.randn(batch, 4 * frames - 3, 10, 5, 384, **bf16),
        face_mask=torch.ones(batch, 1, 1, latent, latent, **bf16),
        motion_exp=torch.full((batch, 4), 30.0, device=device),
        motion_pose=torch.full((batch, 4), 25.0, device=device),
        fps=torch.full((batch,), 25.0, device=device),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs="+", default=[704], help="square image size (multiple of 64)")
    parser.add_argument("--precision", nargs="+", default=["bf16"])
    parser.add_argument("--offload", nargs="+", default=["none", "block"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("avatar_gpu.json"))
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("check_avatar_gpu.py needs a CUDA GPU.", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    rows = []
    for precision in args.precision:
        for offload in args.offload:
            try:
                model, notes = build(precision, offload, device)
            except Exception as error:
                print(f"# {precision}/{offload}: build failed: {error}", flush=True)
                traceback.print_exc()
                continue
            for size in args.size:
                row = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, precision=precision,
                           offload=offload, size=size, frames=129, batch=2,
                           weights_on_gpu_gib=round(torch.cuda.memory_allocated() / 2**30, 2))
                try:
                    kwargs = inputs(model, size, device)
                    with torch.no_grad():
                        model(**kwargs)  # warm-up
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                        times = []
                        for _ in range(args.repeats):
                            started = time.perf_counter()
                            out = model(**kwargs)
                            torch.cuda.synchronize()
                            times.append(time.perf_counter() - started)
                    row.update(seconds_per_step=round(sorted(times)[len(times) // 2], 2),
                               peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                               output=list(out.shape), finite=bool(torch.isfinite(out).all()))
                    del out, kwargs
                except Exception as error:
                    row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
                    traceback.print_exc()
                rows.append(row)
                print(json.dumps(row), flush=True)
                torch.cuda.empty_cache()
            del model
            gc.collect()
            torch.cuda.empty_cache()
    args.out.write_text(json.dumps(rows, indent=2))
    print("\n| precision | offload | size | s/step (CFG batch 2) | peak GiB | weights on GPU GiB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['precision']} | {r['offload']} | {r['size']} | {r.get('seconds_per_step', r.get('error'))} | "
              f"{r.get('peak_gib', '-')} | {r['weights_on_gpu_gib']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
