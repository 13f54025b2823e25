"""Several-GPU Wan sampling on 2 CPU workers (test switch, gloo): equal to the in-process run on the same seed in
`sequence` (diffusers' Ulysses over gloo), `cfg` and `auto` mode (switching split per step), LoRAs applied by the workers, Cancel inside a forward
with the workers staying warm, and a killed worker failing the run clearly with fresh workers next time."""

import os
import signal

import pytest
import torch
from safetensors.torch import save_file

from parallel_helpers import running, wait_gone
from reelsmith.engine.demo_models import TinyWanSet
from reelsmith.engine.errors import CancelledError, InvalidInputError, ParallelWorkerError
from reelsmith.engine.models.lora import LoraStackEntry
from reelsmith.engine.models.wan_layouts import resolve_single_files
from reelsmith.engine.models.wan_model import WanLoadOptions, load_wan_model
from reelsmith.engine.parallel import protocol, worker_pool
from reelsmith.engine.parallel.parallel_wan import ParallelWanTransformer
from reelsmith.engine.pipelines.wan_generate import generate_wan_video

CPU = torch.device("cpu")
TOLERANCE = 1e-4  # measured: the split runs give the same bits on CPU; any split/gather mistake is O(1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel_wan")
    single = TinyWanSet("t2v-a14b", seed=21).write_single_files(root, subfolder="", fp8_scaled=False)
    return resolve_single_files(single["high"], single["low"], single["text_encoder"], single["vae"])


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    generator = torch.Generator().manual_seed(5)
    path = tmp_path_factory.mktemp("lora") / "tiny_lora.safetensors"
    save_file({f"transformer.blocks.{b}.attn1.to_q.lora_{ab}.weight": torch.randn(shape, generator=generator) * 0.3
               for b in (0, 1) for ab, shape in (("A", (4, 32)), ("B", (32, 4)))}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def reference(files):
    return load_wan_model(files, WanLoadOptions(precision="bf16"), CPU)


@pytest.fixture(scope="module")
def expected(reference, lora_file):
    """In-process latents by case, computed once for every test of the file."""
    cache = {}

    def latents(case="plain"):
        if case not in cache:
            if case == "lora":
                cache[case] = generate(reference.with_loras([LoraStackEntry(lora_file, 0.8, "both")])).latents
            else:
                cache[case] = generate(reference, **({"cfg_low": 1.0} if case == "cfg_low 1" else {})).latents
        return cache[case]

    return latents


@pytest.fixture(autouse=True)
def cpu_switch(monkeypatch):
    monkeypatch.setenv("REELSMITH_PARALLEL_CPU", "1")


@pytest.fixture(scope="module", autouse=True)
def stop_pool_at_end():
    yield
    worker_pool.stop_active_pool()


def generate(model, **overrides):
    args = dict(prompt="a red fox in snow", negative_prompt="blurry", width=64, height=32, frames=5, steps=3,
                cfg_high=3.0, cfg_low=4.0, flow_shift=5.0, boundary=0.875, scheduler="unipc", seed=7)
    args.update(overrides)
    return generate_wan_video(model, **args)


def assert_close(parallel, local):
    assert parallel.shape == local.shape
    assert (parallel - local).abs().max().item() <= TOLERANCE


def test_cfg_mode_without_cfg_is_refused_before_any_step(files):
    model = load_wan_model(files, WanLoadOptions(precision="bf16", gpus="2", parallel="cfg"), CPU)
    with pytest.raises(InvalidInputError, match="with CFG 1 there is only one pass"):
        generate(model, cfg_high=1.0, cfg_low=1.0, on_step=lambda *a: pytest.fail("a step ran"))


@pytest.mark.parametrize("mode", ["cfg", "sequence", "auto"])
def test_parallel_run_equals_the_one_process_run(files, expected, lora_file, mode):
    model = load_wan_model(files, WanLoadOptions(precision="bf16", gpus="2", parallel=mode), CPU)
    assert isinstance(model.high.model, ParallelWanTransformer) and model.parallel_plan.mode == mode
    assert "2 GPUs" in model.describe()
    pool = worker_pool.active_pool()
    assert len(pool.pids) == 2 and all(running(pid) for pid in pool.pids)

    # 3 steps with boundary 0.875 use both experts; cfg_low 1 makes the low expert's steps single-pass
    pool.splits_used.clear()
    assert_close(generate(model).latents, expected())
    assert_close(generate(model, cfg_low=1.0).latents, expected("cfg_low 1"))
    # which split the workers ran: auto takes the CFG split for guided steps and the sequence split otherwise
    used = {"cfg": {"cfg"}, "sequence": {"sequence"}, "auto": {"cfg", "sequence"}}[mode]
    assert set(pool.splits_used) == used, pool.splits_used
    if mode == "sequence":  # LoRAs from the LoRA node reach the workers, and are taken off again
        with_lora = generate(model.with_loras([LoraStackEntry(lora_file, 0.8, "both")])).latents
        assert_close(with_lora, expected("lora"))
        assert (with_lora - expected()).abs().max() > 1e-2
        assert_close(generate(model).latents, expected())
    assert worker_pool.active_pool() is pool  # warm between runs


def _held_forward(expert="high"):
    """A forward whose workers wait before block 1 until cancelled (test hook of the CPU switch)."""
    generator = torch.Generator().manual_seed(0)
    return protocol.Forward(0, expert, (), torch.randn(1, 16, 2, 4, 8, generator=generator).to(torch.bfloat16),
                            torch.tensor([900.0]), ("cond", "uncond"), embeds_key=-1,
                            embeds={"cond": torch.randn(1, 512, 32, generator=generator),
                                    "uncond": torch.randn(1, 512, 32, generator=generator)},
                            hold_before_block=1)


def test_cancel_stops_inside_the_forward_and_workers_stay_warm(files, expected):
    model = load_wan_model(files, WanLoadOptions(precision="bf16", gpus="2", parallel="sequence"), CPU)
    pool = worker_pool.active_pool()
    pids = pool.pids
    polls = []

    def interrupt():
        polls.append(1)
        if len(polls) == 3:
            raise CancelledError("Cancel pressed")

    pool.check_interrupt = interrupt
    with pytest.raises(CancelledError, match="Cancel pressed"):
        pool.forward(_held_forward())
    assert pool.last_cancel == {0: 1, 1: 1}  # both ranks stopped after block 0 of the first pass
    pool.check_interrupt = lambda: None
    assert pool.alive() and pool.pids == pids
    assert_close(generate(model).latents, expected())  # still warm and correct
    assert worker_pool.active_pool() is pool


def test_a_killed_worker_fails_the_run_clearly_and_the_next_run_starts_fresh(files, expected):
    model = load_wan_model(files, WanLoadOptions(precision="bf16", gpus="2", parallel="sequence"), CPU)
    pool = worker_pool.active_pool()
    victim = pool.pids[1]

    def kill_rank_1():
        if running(victim):
            os.kill(victim, signal.SIGKILL)

    pool.check_interrupt = kill_rank_1
    with pytest.raises(ParallelWorkerError, match=r"(?s)rank 1 \(cpu\) exited during a forward, exit code -9.*next run starts fresh"):
        pool.forward(_held_forward())
    assert wait_gone(pool.pids) == [] and not pool.alive()
    assert_close(generate(model).latents, expected())
    fresh = worker_pool.active_pool()
    assert fresh is not pool and set(fresh.pids).isdisjoint(pool.pids)
