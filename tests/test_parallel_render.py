"""scripts/render_parallel.py under torchrun on 2 CPU processes (test switch, gloo): every rank runs the loop, rank 0
writes the video, and the latents equal the one-process run on the same seed (cfg mode: the two passes on
different ranks, shared by broadcast)."""

import os
import socket
import subprocess
import sys

import torch

from pack_paths import PACK_ROOT
from reelsmith.engine.demo_models import TinyWanSet
from reelsmith.engine.models.wan_layouts import resolve_folder
from reelsmith.engine.models.wan_model import WanLoadOptions, load_wan_model
from reelsmith.engine.pipelines.wan_generate import generate_wan_video

ARGS = dict(width=64, height=32, frames=5, steps=3, cfg_high=3.0, cfg_low=4.0, flow_shift=5.0, boundary=0.875,
            seed=7)


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_torchrun_render_equals_the_one_process_run(tmp_path):
    folder = TinyWanSet("t2v-a14b", seed=31).write_release_folder(tmp_path / "Wan2.2-T2V-A14B")
    out, latents_out = tmp_path / "clip.mp4", tmp_path / "latents.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(_free_port()), str(PACK_ROOT / "scripts" / "render_parallel.py"),
               "--model", str(folder), "--prompt", "a red fox in snow", "--negative", "blurry", "--parallel", "cfg",
               "--out", str(out), "--latents-out", str(latents_out), "--scheduler", "unipc"]
    for name, value in ARGS.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    result = subprocess.run(command, env=dict(os.environ, REELSMITH_PARALLEL_CPU="1", OMP_NUM_THREADS="1"),
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "step 3/3" in result.stdout and out.stat().st_size > 0

    model = load_wan_model(resolve_folder(folder, "x"), WanLoadOptions(precision="bf16"), torch.device("cpu"))
    expected = generate_wan_video(model, prompt="a red fox in snow", negative_prompt="blurry", scheduler="unipc",
                                  **ARGS).latents
    got = torch.load(latents_out)
    assert got.shape == expected.shape and (got - expected).abs().max() <= 1e-4
