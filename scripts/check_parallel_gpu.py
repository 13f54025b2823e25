#!/usr/bin/env python3
"""Several-GPU Wan check for the lead, in one go on N GPUs (default 2 H200s): equality and speed of the sequence
and CFG split against one GPU, with random weights at real size (nothing downloaded).

    python scripts/check_parallel_gpu.py                       # 2 GPUs, A14B expert, 480p + 720p, 81 frames
    python scripts/check_parallel_gpu.py --sizes 720p --paths fp8_e4m3fn_fast:auto:regional --out p.json

Measured, per size and loader path (`precision:attention:compile`, default the fast path
fp8_e4m3fn_fast:auto:regional, where auto is the FP8 attention kernel on Hopper, and bf16:cudnn:off):
1. equality, parallel vs one GPU on the same weights and inputs: one guided step (cond + uncond, CFG 5) and a
   short sample (`--sample-steps` UniPC steps through `sample_wan`, smallest size, first path): cosine and max |diff|;
2. seconds per denoising step with CFG (two forwards): one GPU, `cfg` (`sequence+cfg` on 4/8 GPUs: what `auto`
   runs for such a step) and `sequence` (Ulysses over all GPUs), and the ratio to one GPU, in the same run; and
   a step with CFG 1 (one forward) on one GPU and with the sequence split (what `auto` runs for it);
3. peak memory per GPU in each mode;
4. communication share: NCCL kernel time / step time from a torch.profiler trace of one step (first path only;
   NCCL kernels spin while waiting for a peer, so this is an upper bound on time spent communicating);
5. the protocol overhead of the real worker pool (worker processes driven from a parent process, as inside
   ComfyUI): wall time of a step through the pool minus the workers' own forward time, at real latent and text
   sizes with a narrow 2-block model (what travels per step does not depend on the model's width or depth).

Phases 1-4 run under torchrun (this script starts it: every rank builds the same random model from the same
seed, as the workers would load it from files); phase 5 runs in this process afterwards. Rows are written to
`--out` as they are measured (a cut-off run keeps what it has), in the schema of data/benchmarks.json with
`implementation` "reelsmith-<N>gpu-<mode>" (the editor's estimates ignore them); `--table` merges them.
Prints a markdown table. Runs in about 9 minutes with the defaults on 2 H200s (estimate): reduce with --sizes,
--paths, --repeats, --sample-steps 0, --no-pool. `--tiny` runs the same code on tiny models (CPU smoke test
with REELSMITH_PARALLEL_CPU=1).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import types

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from pack_import import import_engine_only  # noqa: E402

import_engine_only()

TINY_SIZES = {"480p": (64, 32), "720p": (96, 64)}
REAL_SIZES = {"480p": (832, 480), "720p": (1280, 720)}
CFG_SCALE = 5.0


def parse_path(text: str) -> tuple[str, str, str]:
    parts = text.split(":")
    if len(parts) != 3 or not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected precision:attention:compile")
    return tuple(parts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--variant", default="t2v-a14b", choices=["t2v-a14b", "ti2v-5b"])
    parser.add_argument("--sizes", nargs="+", default=["480p", "720p"], choices=list(REAL_SIZES))
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--paths", nargs="+", type=parse_path,
                        default=[("fp8_e4m3fn_fast", "auto", "regional"), ("bf16", "cudnn", "off")])
    parser.add_argument("--repeats", type=int, default=1, help="timed steps after one warm-up step")
    parser.add_argument("--sample-steps", type=int, default=2, help="steps of the equality sample (0: none)")
    parser.add_argument("--no-pool", action="store_true", help="skip the worker-pool overhead phase")
    parser.add_argument("--no-one-pass", dest="one_pass", action="store_false",
                        help="skip the CFG-1 step (one forward: the sequence split that auto uses without CFG)")
    parser.add_argument("--tiny", action="store_true", help="tiny models and sizes (CPU smoke test)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("parallel_check.json"))
    parser.add_argument("--table", type=pathlib.Path, help="merge the rows into this data file (benchmarks.json)")
    parser.add_argument("--rank-phase", action="store_true", help=argparse.SUPPRESS)
    return parser


# ---------------------------------------------------------------- what is measured

def model_config(args) -> dict:
    if args.tiny:
        from reelsmith.engine.demo_models import tiny_transformer_config
        return tiny_transformer_config(args.variant)
    from reelsmith.engine.models.wan_variants import WAN_VARIANTS
    config = WAN_VARIANTS[args.variant].transformer_config_dict()
    return {k: v for k, v in config.items() if not k.startswith("_")}


def pixels(args, size: str) -> tuple[int, int]:
    if args.tiny:
        return TINY_SIZES[size]
    width, height = REAL_SIZES[size]
    return (width, 704) if args.variant == "ti2v-5b" and size == "720p" else (width, height)


def latent_shape(args, config: dict, size: str) -> tuple[int, ...]:
    width, height = pixels(args, size)
    stride = 16 if args.variant == "ti2v-5b" else 8
    return (1, config["in_channels"], (args.frames - 1) // 4 + 1, height // stride, width // stride)


def vae_layout(args):
    """What sample_wan reads off a VAE when no image is given: its config."""
    from reelsmith.engine.models.wan_vae import vae_config
    config = dict(vae_config("2.2" if args.variant == "ti2v-5b" else "2.1"))
    config.setdefault("scale_factor_spatial", 16 if args.variant == "ti2v-5b" else 8)
    config.setdefault("scale_factor_temporal", 4)
    return types.SimpleNamespace(config=types.SimpleNamespace(**config))


def facts(device) -> dict:
    import datetime

    import torch
    if device.type != "cuda":
        return {"gpu": "CPU (smoke test)", "driver": "none", "torch": torch.__version__,
                "date": datetime.date.today().isoformat()}
    from bench import gpu_facts
    return gpu_facts()


# ---------------------------------------------------------------- rank phase (under torchrun)

def rank_phase(args) -> int:
    import torch
    import torch.distributed as dist
    from diffusers import WanTransformer3DModel

    from reelsmith.engine.models import attention, compile as compile_options, precision
    from reelsmith.engine.models.checkpoint_io import empty_weights
    from reelsmith.engine.parallel.parallel_plan import SplitLayout, make_parallel_plan
    from reelsmith.engine.parallel.rank_guidance import RankGuidance
    from reelsmith.engine.parallel.sequence_split import SequenceSplitSwitch
    from reelsmith.engine.parallel.worker_runtime import init_rank
    from reelsmith.engine.pipelines.wan_sampler import WanSampleRequest, guided_velocity, sample_wan

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cfg_mode = "cfg" if world == 2 else "sequence+cfg"
    plans = {mode: make_parallel_plan(str(world), mode) for mode in ("sequence", cfg_mode)}
    # the auto plan's layouts are the CFG split (guided steps) and the sequence split (CFG 1): the groups of
    # both, as the workers build them
    groups = init_rank(make_parallel_plan(str(world), "auto"), rank, None)
    device = groups.device
    cuda = device.type == "cuda"
    info = facts(device)
    config = model_config(args)
    say = print if rank == 0 else (lambda *a, **k: None)
    started = time.perf_counter()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def reset_peak():
        if cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak_per_gpu() -> list[float]:
        mine = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
        every = [None] * world
        dist.all_gather_object(every, round(mine, 2))
        return every

    def timed(step) -> float:
        with torch.no_grad():
            step()  # warm-up (compile)
            sync()
            reset_peak()
            times = []
            for _ in range(args.repeats):
                dist.barrier()
                sync()
                begin = time.perf_counter()
                step()
                sync()
                times.append(time.perf_counter() - begin)
        return sorted(times)[len(times) // 2]

    def comm_share(step) -> float | None:
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with torch.no_grad(), profile(activities=activities) as prof:
            dist.barrier()
            sync()
            begin = time.perf_counter()
            step()
            sync()
            wall = time.perf_counter() - begin
        total = 0.0
        for event in prof.key_averages():
            if "nccl" in event.key.lower() or (not cuda and "gloo" in event.key.lower()):
                total += getattr(event, "device_time_total", 0.0) if cuda else event.cpu_time_total
        return round(total / 1e6 / wall, 3)

    def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
        a, b = a.float().flatten(), b.float().flatten().to(a.device)
        cosine = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
        return {"cosine": round(cosine, 6), "max_abs_diff": round((a - b).abs().max().item(), 5),
                "ref_max_abs": round(b.abs().max().item(), 3)}

    def build(path, compiled: bool, seed=1234):
        """The model of `path` as the loader's workers build it (one copy serves every split: the switch puts
        the sequence split on and takes it off per forward)."""
        precision_name, attention_name, compile_mode = path
        with empty_weights():
            model = WanTransformer3DModel(**config)
        torch.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed(seed)
        from bench_models import randomise_on_gpu
        randomise_on_gpu(model, device)
        notes = precision.apply_precision(model, precision_name, device)
        backend = attention.apply_attention_backend(model, attention_name, device)
        split = SequenceSplitSwitch(model, device.type, groups.meshes())
        if compiled:
            notes += compile_options.apply_compile(model, compile_mode, context_parallel=True)
        return model, split, backend, notes

    def release() -> None:
        if cuda:
            torch._dynamo.reset()
            torch.cuda.empty_cache()

    rows = []
    first_size = args.sizes[0]
    for path_index, path in enumerate(args.paths):
        for size in args.sizes:
            generator = torch.Generator().manual_seed(7)
            shape = latent_shape(args, config, size)
            latents = torch.randn(shape, generator=generator).to(device, torch.bfloat16)
            text = torch.randn(2, 512, config["text_dim"], generator=generator).to(device)
            prompt, negative = text[:1], text[1:]
            timestep = torch.tensor([500.0], device=device)
            request = WanSampleRequest(prompt_embeds=prompt.cpu(), negative_embeds=negative.cpu(),
                                       width=pixels(args, size)[0], height=pixels(args, size)[1], frames=args.frames,
                                       steps=args.sample_steps, cfg_high=CFG_SCALE, cfg_low=CFG_SCALE, flow_shift=12.0,
                                       boundary=0.0, scheduler="unipc", seed=0)
            sampling = args.sample_steps > 0 and size == first_size and path_index == 0
            profiling = path_index == 0
            say(f"[{time.perf_counter() - started:6.0f} s] {size} {':'.join(path)}", flush=True)

            def step_with(model_or_guidance, cfg=CFG_SCALE):
                return lambda: guided_velocity(model_or_guidance, hidden_states=latents, timestep=timestep,
                                               prompt=prompt, negative=negative, cfg=cfg)

            def run_sample(model_or_guidance):
                return sample_wan(high_noise_model=model_or_guidance, low_noise_model=None, vae=vae_layout(args),
                                  request=request, device=device, size_multiple=16 if args.variant != "ti2v-5b" else 32,
                                  image_conditioned=False, expand_timesteps=args.variant == "ti2v-5b").latents

            model, split, backend, notes = build(path, compiled=True)
            with torch.no_grad():
                reference = {CFG_SCALE: step_with(model)(), 1.0: step_with(model, 1.0)()}
            measured = {"1gpu": {"seconds": timed(step_with(model)), "peak": peak_per_gpu(), "cfg": CFG_SCALE}}
            if args.one_pass:
                measured["1gpu-1pass"] = {"seconds": timed(step_with(model, 1.0)), "peak": peak_per_gpu(), "cfg": 1.0}
            reference_sample = run_sample(model) if sampling else None

            def measure(guided, cfg=CFG_SCALE) -> dict:
                """Equality with one GPU, step time, peak memory (and NCCL share, sample equality) of one mode."""
                with torch.no_grad():
                    result = {"equal_step": compare(step_with(guided, cfg)(), reference[cfg]), "cfg": cfg}
                reset_peak()
                result.update(seconds=timed(step_with(guided, cfg)), peak=peak_per_gpu())
                if profiling:
                    result["comm_share"] = comm_share(step_with(guided, cfg))
                if sampling and cfg == CFG_SCALE:
                    result["equal_sample"] = compare(run_sample(guided), reference_sample)
                return result

            wanted = [(cfg_mode, CFG_SCALE), ("sequence", CFG_SCALE)] + ([("sequence-1pass", 1.0)] if args.one_pass else [])
            compile_note = {}
            for name, cfg in wanted:
                plan = plans[name.removesuffix("-1pass")]
                try:
                    measured[name] = measure(RankGuidance(model, plan, rank, split), cfg)
                except Exception as error:  # noqa: BLE001 - torch.compile under the sequence split: measure eager
                    if path[2] == "off" or not plan.layout_for(2 if cfg > 1 else 1).ulysses_degree > 1:
                        raise
                    say(f"# {name} with compile '{path[2]}' failed ({type(error).__name__}: {error}); eager instead",
                        flush=True)
                    del model, split
                    release()
                    model, split, _, _ = build(path, compiled=False)
                    compile_note[name] = f"compile failed under the sequence split ({type(error).__name__}); eager"
                    measured[name] = measure(RankGuidance(model, plan, rank, split), cfg)
                    for later, _ in wanted[wanted.index((name, cfg)) + 1:]:
                        compile_note[later] = compile_note[name]
            split.use(SplitLayout(1, 1))
            del model, split
            release()

            width, height = pixels(args, size)
            for mode, result in measured.items():
                one = measured["1gpu-1pass" if result["cfg"] == 1.0 else "1gpu"]["seconds"]
                single = mode.startswith("1gpu")
                passes = 1 if result["cfg"] == 1.0 else 2
                row = dict(info, model_family="wan", variant=args.variant, size=size, width=width, height=height,
                           frames=args.frames, precision=path[0], attention=backend,
                           compile="off" if mode in compile_note else path[2],
                           implementation=f"reelsmith-1gpu-{'forward' if passes == 1 else 'step'}" if single
                           else f"reelsmith-{world}gpu-{mode}",
                           gpus=1 if single else world, parallel=None if single else mode.removesuffix("-1pass"),
                           cfg=result["cfg"], seconds_per_step=round(result["seconds"], 3),
                           seconds_per_forward=round(result["seconds"] / passes, 3),
                           ratio_vs_1gpu=round(result["seconds"] / one, 3),
                           peak_gib=max(result["peak"][:1 if single else world]),
                           peak_gib_per_gpu=result["peak"][:1] if single else result["peak"],
                           comm_share=result.get("comm_share"), equal_step=result.get("equal_step"),
                           equal_sample=result.get("equal_sample"),
                           notes=(f"one denoising step, CFG {result['cfg']:g} ({passes} forward{'s' * (passes > 1)}), "
                                  "random weights at real size (scripts/check_parallel_gpu.py)"
                                  + "".join("; " + n for n in notes + ([compile_note[mode]] if mode in compile_note
                                                                        else []))))
                rows.append(row)
            if rank == 0:
                args.out.write_text(json.dumps(rows, indent=2) + "\n")
    say(f"[{time.perf_counter() - started:6.0f} s] rank phase done", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 0


# ---------------------------------------------------------------- pool phase (this process)

def pool_phase(args, rows_so_far: list[dict]) -> list[dict]:
    """A step through the real worker pool (processes driven from here, as from ComfyUI): its wall time minus
    the workers' own forward time is what the protocol costs per step."""
    import torch
    from diffusers import WanTransformer3DModel

    from reelsmith.engine.parallel import protocol, worker_pool
    from reelsmith.engine.parallel.parallel_plan import make_parallel_plan
    from reelsmith.engine.parallel.parallel_wan import ParallelWanTransformer

    plan = make_parallel_plan(str(args.gpus), "sequence")
    device = torch.device("cuda", 0) if plan.device_type == "cuda" else torch.device("cpu")
    real = model_config(args)
    narrow = dict(real, num_attention_heads=12 if not args.tiny else real["num_attention_heads"],
                  attention_head_dim=128 if not args.tiny else real["attention_head_dim"],
                  ffn_dim=4096 if not args.tiny else real["ffn_dim"], num_layers=2)
    rows = []
    with tempfile.TemporaryDirectory(prefix="reelsmith-pool-check-") as folder:
        torch.manual_seed(0)
        WanTransformer3DModel(**narrow).save_pretrained(os.path.join(folder, "transformer"))
        spec = protocol.WorkerSpec(plan=plan, experts=(protocol.ExpertFiles(
            "high", os.path.join(folder, "transformer"), "diffusers", "narrow check model"),),
            precision="bf16", attention="cudnn" if plan.device_type == "cuda" else "sdpa")
        pool = worker_pool.pool_for(spec, check_interrupt=lambda: None)
        info = pool.expert_info("high")
        expert = ParallelWanTransformer(spec, "high", info.config, info.activation_dtype,
                                        {"check_interrupt": lambda: None})
        try:
            for size in args.sizes:
                generator = torch.Generator().manual_seed(3)
                latents = torch.randn(latent_shape(args, real, size), generator=generator).to(device, torch.bfloat16)
                text = torch.randn(2, 512, real["text_dim"], generator=generator).to(device)
                walls, inner = [], []
                for attempt in range(1 + max(args.repeats, 2)):
                    begin = time.perf_counter()
                    expert.guided_velocity(hidden_states=latents, timestep=torch.tensor([500.0], device=device),
                                           prompt=text[:1], negative=text[1:], cfg=CFG_SCALE)
                    if attempt:  # the first step also sends the text embeddings and warms up
                        walls.append(time.perf_counter() - begin)
                        inner.append(pool.last_forward_seconds)
                wall, forward = sorted(walls)[len(walls) // 2], sorted(inner)[len(inner) // 2]
                width, height = pixels(args, size)
                rows.append(dict(facts(device), model_family="wan", variant=args.variant, size=size, width=width,
                                 height=height, frames=args.frames, precision="bf16", attention=spec.attention,
                                 compile="off", implementation=f"reelsmith-{args.gpus}gpu-pool-overhead",
                                 gpus=args.gpus, parallel="sequence", seconds_per_step=round(wall, 4),
                                 worker_forward_s=round(forward, 4), protocol_overhead_s=round(wall - forward, 4),
                                 latent_mib=round(latents.numel() * 2 / 2**20, 1),
                                 notes="a guided step through the worker pool with a narrow 2-block model at real "
                                       "latent and text sizes; overhead = wall - the workers' own forward time"))
                args.out.write_text(json.dumps(rows_so_far + rows, indent=2) + "\n")
        finally:
            worker_pool.stop_active_pool()
    return rows


# ---------------------------------------------------------------- report

def markdown(rows: list[dict]) -> str:
    def equal(value):
        return f"{value['cosine']:.6f} / {value['max_abs_diff']:g}" if value else ""

    lines = ["| size | path | mode | CFG | s / step | vs 1 GPU | peak GiB per GPU | comm share | step cos / max diff "
             "| sample cos / max diff |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in (r for r in rows if "ratio_vs_1gpu" in r):
        mode = row["parallel"] or "1 GPU"
        share = "" if row.get("comm_share") is None else f"{row['comm_share']:.0%}"
        lines.append(f"| {row['size']} | {row['precision']}:{row['attention']}:{row['compile']} | {mode} | "
                     f"{row.get('cfg', CFG_SCALE):g} | "
                     f"{row['seconds_per_step']:.3f} | {row['ratio_vs_1gpu']:.3f}x | {row['peak_gib_per_gpu']} | "
                     f"{share} | {equal(row.get('equal_step'))} | {equal(row.get('equal_sample'))} |")
    pool = [r for r in rows if "protocol_overhead_s" in r]
    if pool:
        lines += ["", "| size | through the pool s / step | workers' forward s | protocol overhead s | latent MiB |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['size']} | {r['seconds_per_step']:.4f} | {r['worker_forward_s']:.4f} | "
                  f"{r['protocol_overhead_s']:.4f} | {r['latent_mib']} |" for r in pool]
    return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.rank_phase:
        return rank_phase(args)
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--rank-phase"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.gpus),
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(pathlib.Path(__file__).resolve()),
               "--rank-phase", *passthrough]
    print("$ " + " ".join(command), flush=True)
    started = time.perf_counter()
    code = subprocess.run(command).returncode
    rows = json.loads(args.out.read_text()) if args.out.is_file() else []
    if code != 0:
        print(f"# the torchrun phase failed (exit {code}); reporting what it measured", flush=True)
    if not args.no_pool:
        try:
            rows += pool_phase(args, rows)
        except Exception as error:  # noqa: BLE001 - the other numbers are still worth printing
            print(f"# pool phase failed: {type(error).__name__}: {error}", flush=True)
            code = code or 1
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(markdown(rows))
    print(f"\n{len(rows)} rows in {args.out} ({time.perf_counter() - started:.0f} s)")
    if args.table:
        from bench import merge_into_table
        merge_into_table(args.table, rows)
        print(f"merged into {args.table}")
    return code


if __name__ == "__main__":
    sys.exit(main())
