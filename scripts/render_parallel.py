#!/usr/bin/env python3
"""Render one Wan 2.2 text-to-video clip on several GPUs without ComfyUI, with the same engine as the nodes:

    torchrun --nproc-per-node 2 scripts/render_parallel.py --model ~/ComfyUI/models/Wan2.2-T2V-A14B \\
        --prompt "A red fox trots through fresh snow" --width 832 --height 480 --frames 81 --out fox.mp4

Every rank loads the experts on its GPU (the loader's code and options: --precision, --attention, --compile)
and runs the same sampler loop; --parallel picks how a step is split (auto, sequence, cfg, sequence+cfg, as the
loader's `parallel` input). Rank 0 also holds the text encoder and the VAE: it encodes the prompt, shares the
embeddings, and decodes and writes the video. --model is a Wan-AI release folder or a diffusers folder.
With one process it is the ordinary one-GPU path. CPU tests run it with REELSMITH_PARALLEL_CPU=1 (gloo).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from pack_import import import_engine_only  # noqa: E402

import_engine_only()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=pathlib.Path, help="Wan-AI release or diffusers folder")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative", default=None, help="negative prompt (default: Wan's recommended one)")
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--cfg-high", type=float, default=3.0)
    parser.add_argument("--cfg-low", type=float, default=4.0)
    parser.add_argument("--flow-shift", type=float, default=None, help="default: the variant's")
    parser.add_argument("--boundary", type=float, default=None, help="default: the variant's")
    parser.add_argument("--scheduler", default="unipc")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parallel", default="auto", choices=["auto", "sequence", "cfg", "sequence+cfg"])
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--compile", default="off")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("clip.mp4"))
    parser.add_argument("--latents-out", type=pathlib.Path, help="also save the raw latents (torch.save)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import torch
    import torch.distributed as dist

    from reelsmith.engine.models.umt5_encoder import load_umt5_encoder
    from reelsmith.engine.models.wan_layouts import resolve_folder
    from reelsmith.engine.models.wan_model import WanLoadOptions, load_wan_model
    from reelsmith.engine.models.wan_transformer import probe_wan_transformer
    from reelsmith.engine.models.wan_vae import load_wan_vae
    from reelsmith.engine.parallel.parallel_plan import (check_head_split, check_request_split, make_parallel_plan,
                                                              passes_per_step)
    from reelsmith.engine.parallel.parallel_wan import worker_spec
    from reelsmith.engine.parallel.rank_guidance import RankGuidance
    from reelsmith.engine.parallel.worker_runtime import RankModels, init_rank
    from reelsmith.engine.pipelines.wan_generate import generate_wan_video
    from reelsmith.engine.pipelines.wan_sampler import (MAX_TEXT_TOKENS, WanSampleRequest, decode_wan_latents,
                                                        pad_text_embeds, sample_wan)
    from reelsmith.engine.post.encode import EncodeSettings, encode_video

    negative = args.negative
    if negative is None:
        try:  # the node's default (the node layer may be unimportable on a bare GPU box: then none)
            from reelsmith.nodes.wan import DEFAULT_NEGATIVE as negative
        except ImportError:
            negative = ""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    files = resolve_folder(args.model.expanduser().resolve(), args.model.name)
    variant, heads = probe_wan_transformer(files.transformer)
    flow_shift = args.flow_shift if args.flow_shift is not None else variant.default_flow_shift
    boundary = args.boundary if args.boundary is not None else variant.default_boundary
    options = WanLoadOptions(precision=args.precision, attention=args.attention, compile=args.compile)
    uses_cfg = args.cfg_high != 1.0 or (variant.two_experts and args.cfg_low != 1.0)
    say = print if rank == 0 else (lambda *a, **k: None)

    if world == 1:  # the ordinary one-GPU path
        model = load_wan_model(files, options)
        video = generate_wan_video(model, prompt=args.prompt, negative_prompt=negative, width=args.width,
                                   height=args.height, frames=args.frames, steps=args.steps, cfg_high=args.cfg_high,
                                   cfg_low=args.cfg_low, flow_shift=flow_shift, boundary=boundary,
                                   scheduler=args.scheduler, seed=args.seed,
                                   on_step=lambda step, total, x0: say(f"step {step}/{total}", flush=True))
        latents, frames, fps = video.latents, video.frames, video.fps
    else:
        plan = make_parallel_plan(str(world), args.parallel)
        check_head_split(plan, heads, variant.display_name)
        check_request_split(plan, width=args.width, height=args.height, frames=args.frames,
                            size_multiple=variant.size_multiple,
                            passes=passes_per_step(args.cfg_high, args.cfg_low if variant.two_experts else None))
        groups = init_rank(plan, rank, None)  # torchrun's MASTER_ADDR / MASTER_PORT
        device = groups.device
        models = RankModels(worker_spec(files, options, plan, variant.two_experts), rank, groups)
        say(f"{plan.describe()}: experts loaded on every rank", flush=True)

        # rank 0 encodes the text; every rank gets the embeddings and the VAE's latent layout
        text_dim = models.infos["high"].config["text_dim"]
        embeds = torch.zeros(2, MAX_TEXT_TOKENS, text_dim, device=device)
        vae, vae_box = None, [None]
        if rank == 0:
            vae_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
            vae, _ = load_wan_vae(files.vae, files.vae_format, dtype=vae_dtype)
            encoder = load_umt5_encoder(files.text_encoder, files.text_encoder_format, files.tokenizer, vae_dtype)
            encoder.model.to(device)
            texts = [args.prompt] + ([negative] if uses_cfg else [])
            encoded = encoder.encode(texts, device)
            embeds[: len(texts)] = pad_text_embeds(encoded).to(device, embeds.dtype)
            del encoder
            vae_box = [dict(vae.config)]
        dist.broadcast(embeds, src=0)
        dist.broadcast_object_list(vae_box, src=0)
        if vae is None:
            vae = type("VaeLayout", (), {"config": type("Config", (), vae_box[0])})()
        request = WanSampleRequest(
            prompt_embeds=embeds[:1].cpu(), negative_embeds=embeds[1:2].cpu() if uses_cfg else None,
            width=args.width, height=args.height, frames=args.frames, steps=args.steps, cfg_high=args.cfg_high,
            cfg_low=args.cfg_low, flow_shift=flow_shift, boundary=boundary, scheduler=args.scheduler, seed=args.seed)
        experts = {name: RankGuidance(model, plan, rank, models.splits[name]) for name, model in models.models.items()}
        result = sample_wan(high_noise_model=experts["high"], low_noise_model=experts.get("low"), vae=vae,
                            request=request, device=device, size_multiple=variant.size_multiple,
                            image_conditioned=variant.image_conditioned, expand_timesteps=variant.name == "ti2v-5b",
                            on_step=lambda step, total, x0: say(f"step {step}/{total}", flush=True))
        latents, frames, fps = result.latents, None, float(variant.default_fps)
        if rank == 0:
            del models, experts
            frames = decode_wan_latents(vae, latents, device)
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        if args.latents_out:
            torch.save(latents, args.latents_out)
        report = encode_video(frames, fps, args.out, EncodeSettings(encoder="cpu"))
        say(f"wrote {args.out} ({report})" if report else f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
