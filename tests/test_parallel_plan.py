"""Plan and validation of several-GPU Wan runs: every refusal happens before a worker starts and says what to do."""

import pytest

from reelsmith.engine.errors import BackendUnavailableError, InvalidInputError
from reelsmith.engine.parallel.parallel_plan import (DeviceEnvironment, SplitLayout, check_head_split,
                                                     check_request_split, make_parallel_plan, passes_per_step,
                                                     wan_token_count)

H200 = "NVIDIA H200"
EIGHT = DeviceEnvironment("cuda", (H200,) * 8, True)
TWO = DeviceEnvironment("cuda", (H200,) * 2, True)


def plan(gpus, parallel="sequence", environment=EIGHT, **kw):
    return make_parallel_plan(gpus, parallel, environment=environment, **kw)


def test_one_gpu_is_the_ordinary_path():
    assert plan("1") is None
    assert plan(1, "cfg") is None
    assert plan("all", environment=DeviceEnvironment("cuda", (H200,), True)) is None


@pytest.mark.parametrize("gpus, parallel, world, groups, ulysses", [
    ("2", "sequence", 2, 1, 2), ("4", "sequence", 4, 1, 4), ("8", "sequence", 8, 1, 8),
    ("2", "cfg", 2, 2, 1), ("4", "sequence+cfg", 4, 2, 2), ("8", "sequence+cfg", 8, 2, 4),
    ("all", "sequence", 8, 1, 8),
])
def test_plans(gpus, parallel, world, groups, ulysses):
    p = plan(gpus, parallel)
    assert (p.world_size, p.backend) == (world, "nccl")
    assert p.layouts == (SplitLayout(groups, ulysses),)  # a fixed mode: the same split on every step
    assert p.layout_for(1) == p.layout_for(2) == SplitLayout(groups, ulysses)
    layout = p.guided
    assert layout.name == parallel.replace("all", "sequence")
    assert [layout.group_of(r) for r in range(world)] == [r // ulysses for r in range(world)]
    assert layout.group_leaders() == [g * ulysses for g in range(groups)]


@pytest.mark.parametrize("gpus, guided, unguided", [
    ("2", SplitLayout(2, 1), SplitLayout(1, 2)),   # CFG split with CFG; sequence split without
    ("4", SplitLayout(2, 2), SplitLayout(1, 4)),
    ("8", SplitLayout(2, 4), SplitLayout(1, 8)),
])
def test_auto_picks_the_split_per_step(gpus, guided, unguided):
    p = plan(gpus, "auto")
    assert (p.layout_for(2), p.layout_for(1)) == (guided, unguided)
    assert p.layouts == (guided, unguided) and p.splits_sequence
    assert "auto" in p.describe() and "for steps without" in p.describe()
    # three GPUs ('all' on a 3-GPU machine) have no even CFG split: the sequence split on every step
    three = plan("all", "auto", environment=DeviceEnvironment("cuda", (H200,) * 3, True))
    assert three.layouts == (SplitLayout(1, 3),)


def test_branches_per_group():
    seq, cfg = SplitLayout(1, 2), SplitLayout(2, 1)
    assert seq.branches_for_group(0, ("cond", "uncond")) == ("cond", "uncond")
    assert cfg.branches_for_group(0, ("cond", "uncond")) == ("cond",)
    assert cfg.branches_for_group(1, ("cond", "uncond")) == ("uncond",)
    assert cfg.branches_for_group(1, ("cond",)) == ()  # a step with CFG 1: the second group idles


def test_more_gpus_than_visible():
    with pytest.raises(InvalidInputError, match=r"asks for 4 GPUs but only 2 are visible.*at most 2 or 'all'"):
        plan("4", environment=TWO)


def test_no_cuda_and_no_nccl():
    with pytest.raises(BackendUnavailableError, match="needs NVIDIA GPUs with CUDA.*Set gpus to 1"):
        plan("2", environment=DeviceEnvironment("cpu", (), False))
    with pytest.raises(BackendUnavailableError, match="needs NCCL.*set gpus to 1"):
        plan("2", environment=DeviceEnvironment("cuda", (H200,) * 2, False))


def test_mixed_gpu_models():
    mixed = DeviceEnvironment("cuda", (H200, "NVIDIA H100 80GB HBM3"), True)
    with pytest.raises(InvalidInputError, match=r"mix GPU models \(0: NVIDIA H200, 1: NVIDIA H100.*CUDA_VISIBLE_DEVICES"):
        plan("2", environment=mixed)
    # only the GPUs in use count
    assert plan("1", environment=mixed) is None


def test_offload_refused():
    with pytest.raises(InvalidInputError, match="offload 'block' cannot be combined with gpus 2.*Set offload to 'none'"):
        plan("2", offload="block")


def test_mode_and_gpu_count_mismatches():
    with pytest.raises(InvalidInputError, match="sequence\\+cfg' needs an even number of GPUs, at least 4"):
        plan("2", "sequence+cfg")
    with pytest.raises(InvalidInputError, match="parallel 'cfg' splits.*over 2 GPUs.*'sequence\\+cfg' for 4 or 8"):
        plan("4", "cfg")
    with pytest.raises(InvalidInputError, match="gpus '3' is not one of"):
        plan("3")
    with pytest.raises(InvalidInputError, match="parallel 'tensor' is not one of"):
        plan("2", "tensor")


def test_head_count_must_divide():
    check_head_split(plan("8"), 40, "Wan A14B")   # 40 heads / 8
    check_head_split(plan("8"), 24, "TI2V-5B")    # 24 / 8
    six = plan("all", environment=DeviceEnvironment("cuda", (H200,) * 6, True))
    with pytest.raises(InvalidInputError, match="has 40 attention heads, which 6 GPUs cannot share evenly.*2, 4, 8"):
        check_head_split(six, 40, "model.safetensors")
    check_head_split(plan("2", "cfg"), 7, "x")    # no sequence split: any head count
    with pytest.raises(InvalidInputError, match="7 attention heads, which 2 GPUs"):
        check_head_split(plan("2", "auto"), 7, "x")  # auto splits by sequence on steps without CFG


def test_token_split_refused_with_a_size_that_works():
    assert wan_token_count(1280, 720, 81, 16) == 21 * 45 * 80
    seq2 = plan("2")
    check_request_split(seq2, width=1280, height=720, frames=81, size_multiple=16, passes={2})
    with pytest.raises(InvalidInputError, match=r"1296x720 with 81 frames makes 21 x 45 x 81 = 76545 tokens.*"
                                                r"refuses rather than pads.*multiple of 32.*1280x720"):
        check_request_split(seq2, width=1296, height=720, frames=81, size_multiple=16, passes={2})
    # auto on 2 GPUs splits a guided step by CFG, which takes any size; a step without CFG needs the division
    auto = plan("2", "auto")
    check_request_split(auto, width=1296, height=720, frames=81, size_multiple=16, passes={2})
    with pytest.raises(InvalidInputError, match="76545 tokens, which the sequence split over 2 GPUs"):
        check_request_split(auto, width=1296, height=720, frames=81, size_multiple=16, passes={1, 2})


def test_cfg_split_without_cfg_is_refused():
    with pytest.raises(InvalidInputError, match="with CFG 1 there is only one pass.*'sequence'"):
        check_request_split(plan("2", "cfg"), width=832, height=480, frames=81, size_multiple=16, passes={1})
    check_request_split(plan("2", "cfg"), width=832, height=480, frames=81, size_multiple=16, passes={1, 2})
    check_request_split(plan("2"), width=832, height=480, frames=81, size_multiple=16, passes={1})
    check_request_split(plan("2", "auto"), width=832, height=480, frames=81, size_multiple=16, passes={1})
    check_request_split(None, width=8, height=8, frames=1, size_multiple=16, passes={1})


def test_passes_per_step():
    assert passes_per_step(5.0, 5.0) == {2}
    assert passes_per_step(3.5, 1.0) == {1, 2}   # A14B with CFG on the high-noise expert only
    assert passes_per_step(1.0, 1.0) == {1}
    assert passes_per_step(5.0, None) == {2}     # one expert (TI2V-5B): cfg_low is not used


def test_cpu_test_switch(monkeypatch):
    from reelsmith.engine.parallel import parallel_plan
    monkeypatch.setattr(parallel_plan.torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("REELSMITH_PARALLEL_CPU", raising=False)
    with pytest.raises(BackendUnavailableError):
        make_parallel_plan("2", "sequence")
    monkeypatch.setenv("REELSMITH_PARALLEL_CPU", "1")
    p = make_parallel_plan("2", "sequence")
    assert (p.device_type, p.backend, p.world_size) == ("cpu", "gloo", 2)
