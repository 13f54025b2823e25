"""How several GPUs share one Wan clip, and every check that can refuse a choice before a worker starts.

`gpus` (1, 2, 4, 8 or all visible) and `parallel` make a `ParallelPlan`:
- `auto` (the default): each step gets the split measured fastest for it. A step with two passes (CFG above 1)
  runs them on two GPU groups (the CFG split, with a sequence split inside each group on 4 or 8 GPUs); a step
  with one pass (CFG 1) splits its sequence over every GPU. Measured on 2 H200s, Wan A14B 720p: the CFG split
  takes 0.504x of one GPU's step time, the sequence split 0.651x (no communication inside a forward beats
  Ulysses' four all-to-alls per layer). An A14B run with CFG on the high-noise expert only switches split at
  the expert boundary; the workers keep one copy of the model and switch in milliseconds.
- `sequence`: every GPU runs every forward on its slice of the video tokens; attention exchanges heads
  between GPUs (Ulysses, diffusers' context parallelism). Ulysses degree = number of GPUs.
- `cfg`: two GPUs, one runs the conditional pass and the other the unconditional one (no communication
  inside a forward). Only with CFG above 1: with CFG 1 there is one pass and nothing to split, and the run
  is refused with that advice rather than silently leaving a GPU idle.
- `sequence+cfg`: two CFG groups, each splitting its pass by sequence (4 or 8 GPUs).

A world size that does not divide the token count is refused (not padded): the message says which widths
work. Padding would change what attention sees, so the result would no longer equal the one-GPU run.

The CPU test switch: with `REELSMITH_PARALLEL_CPU=1` in the environment (TEST ONLY), a machine without CUDA
runs the workers on the CPU with the gloo backend, so the whole multi-process path is testable without GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..errors import BackendUnavailableError, InvalidInputError

GPU_CHOICES = ("1", "2", "4", "8", "all")
PARALLEL_MODES = ("auto", "sequence", "cfg", "sequence+cfg")
CPU_TEST_SWITCH = "REELSMITH_PARALLEL_CPU"   # test only: CPU workers over gloo
CPU_TEST_DEVICES = 8                          # how many "devices" the switch pretends to have
BRANCHES = ("cond", "uncond")                 # the passes of one guided step, in this order


def cpu_test_switch_on() -> bool:
    return os.environ.get(CPU_TEST_SWITCH, "") == "1"


@dataclass(frozen=True)
class DeviceEnvironment:
    device_type: str                 # "cuda", or "cpu" (test switch, or nothing usable)
    device_names: tuple[str, ...]    # one per visible device
    nccl: bool


def detect_environment() -> DeviceEnvironment:
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        names = tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        nccl = torch.distributed.is_available() and torch.distributed.is_nccl_available()
        return DeviceEnvironment("cuda", names, nccl)
    if cpu_test_switch_on():
        return DeviceEnvironment("cpu", ("CPU",) * CPU_TEST_DEVICES, False)
    return DeviceEnvironment("cpu", (), False)


@dataclass(frozen=True)
class SplitLayout:
    """How the GPUs share one step: `cfg_groups` groups (1, or 2 when a step's two passes run on different
    groups), each splitting its forward by sequence over `ulysses_degree` GPUs (1: no context parallelism).
    Ranks are numbered group by group."""
    cfg_groups: int
    ulysses_degree: int

    @property
    def name(self) -> str:
        if self.cfg_groups == 1:
            return "sequence"
        return "cfg" if self.ulysses_degree == 1 else "sequence+cfg"

    def group_of(self, rank: int) -> int:
        return rank // self.ulysses_degree

    def group_ranks(self, group: int) -> list[int]:
        return list(range(group * self.ulysses_degree, (group + 1) * self.ulysses_degree))

    def is_group_leader(self, rank: int) -> bool:
        """The rank of its group that sends the group's output back (all ranks of a group hold it)."""
        return rank % self.ulysses_degree == 0

    def group_leaders(self) -> list[int]:
        return [group * self.ulysses_degree for group in range(self.cfg_groups)]

    def branches_for_group(self, group: int, branches: tuple[str, ...]) -> tuple[str, ...]:
        """Which passes of a step the group runs: all of them without a CFG split, else one each (a group
        with no pass, as on a step with CFG 1, idles)."""
        if self.cfg_groups == 1:
            return tuple(branches)
        return (branches[group],) if group < len(branches) else ()


@dataclass(frozen=True)
class ParallelPlan:
    world_size: int
    mode: str                      # one of PARALLEL_MODES
    guided: SplitLayout            # the split of a step with two passes (CFG above 1)
    unguided: SplitLayout          # the split of a step with one pass (CFG 1)
    device_type: str               # "cuda" | "cpu"
    backend: str                   # torch.distributed backend of the forward: "nccl" | "gloo"

    def layout_for(self, passes: int) -> SplitLayout:
        return self.guided if passes > 1 else self.unguided

    @property
    def layouts(self) -> tuple[SplitLayout, ...]:
        """Every layout this plan may use, in the order every rank builds their process groups."""
        return (self.guided,) if self.guided == self.unguided else (self.guided, self.unguided)

    @property
    def splits_sequence(self) -> bool:
        return any(layout.ulysses_degree > 1 for layout in self.layouts)

    def describe(self) -> str:
        def one(layout: SplitLayout) -> str:
            if layout.name == "cfg":
                return "CFG split (one pass per GPU)"
            if layout.name == "sequence":
                return f"sequence split (Ulysses {layout.ulysses_degree})"
            return (f"CFG split over {layout.cfg_groups} groups of {layout.ulysses_degree} "
                    "(sequence split inside each)")
        if self.mode == "auto":
            text = f"{self.world_size} GPUs, auto: {one(self.guided)} for steps with CFG"
            return text + ("" if self.guided == self.unguided else f", {one(self.unguided)} for steps without")
        return f"{self.world_size} GPUs, {one(self.guided)}"


def parse_gpus(gpus, visible: int) -> int:
    text = str(gpus).strip().lower()
    if text not in GPU_CHOICES:
        raise InvalidInputError(f"gpus '{gpus}' is not one of {', '.join(GPU_CHOICES)}.")
    return max(visible, 1) if text == "all" else int(text)


def make_parallel_plan(gpus, parallel: str, *, offload: str = "none",
                       environment: DeviceEnvironment | None = None) -> ParallelPlan | None:
    """The plan for these choices, or None for one GPU (the ordinary in-process path). Raises with advice
    for every combination that cannot work, before anything is started."""
    if parallel not in PARALLEL_MODES:
        raise InvalidInputError(f"parallel '{parallel}' is not one of {', '.join(PARALLEL_MODES)}.")
    environment = environment or detect_environment()
    visible = len(environment.device_names)
    world = parse_gpus(gpus, visible)
    if world == 1:
        return None
    if environment.device_type != "cuda":
        if visible == 0:
            raise BackendUnavailableError(
                f"gpus {gpus} needs NVIDIA GPUs with CUDA, and none is visible to this process (CUDA not "
                "available in this PyTorch, or CUDA_VISIBLE_DEVICES hides them). Set gpus to 1.")
    elif not environment.nccl:
        raise BackendUnavailableError(
            f"gpus {gpus} needs NCCL (torch.distributed's GPU backend), which this PyTorch build lacks: install "
            "the CUDA build of PyTorch for Linux from pytorch.org, or set gpus to 1.")
    if world > visible:
        raise InvalidInputError(
            f"gpus {gpus} asks for {world} GPUs but only {visible} {'is' if visible == 1 else 'are'} visible "
            f"({', '.join(environment.device_names)}); choose at most {visible} or 'all'"
            " (check CUDA_VISIBLE_DEVICES).")
    names = environment.device_names[:world]
    if len(set(names)) > 1:
        listing = ", ".join(f"{i}: {name}" for i, name in enumerate(names))
        raise InvalidInputError(
            f"gpus {gpus} would mix GPU models ({listing}): every GPU must be the same model, or the fastest "
            "waits for the slowest at every step. Limit CUDA_VISIBLE_DEVICES to identical GPUs.")
    if offload != "none":
        raise InvalidInputError(
            f"offload '{offload}' cannot be combined with gpus {gpus}: with several GPUs every GPU holds the "
            "whole model. Set offload to 'none' (or gpus to 1 to offload).")
    if parallel == "auto":
        guided = SplitLayout(2, world // 2) if world % 2 == 0 else SplitLayout(1, world)
        unguided = SplitLayout(1, world)
    elif parallel == "cfg":
        if world != 2:
            raise InvalidInputError(
                f"parallel 'cfg' splits a step's two passes (conditional, unconditional) over 2 GPUs; gpus {gpus} "
                f"gives {world}. Use gpus 2, or parallel 'sequence+cfg' for 4 or 8 GPUs.")
        guided = unguided = SplitLayout(2, 1)
    elif parallel == "sequence+cfg":
        if world < 4 or world % 2:
            raise InvalidInputError(
                f"parallel 'sequence+cfg' needs an even number of GPUs, at least 4 (two CFG groups that each split "
                f"the sequence); gpus {gpus} gives {world}. Use 'sequence' or 'cfg' with 2 GPUs.")
        guided = unguided = SplitLayout(2, world // 2)
    else:
        guided = unguided = SplitLayout(1, world)
    backend = "nccl" if environment.device_type == "cuda" else "gloo"
    return ParallelPlan(world_size=world, mode=parallel, guided=guided, unguided=unguided,
                        device_type=environment.device_type, backend=backend)


def check_head_split(plan: ParallelPlan | None, num_heads: int, source: str) -> None:
    """Ulysses gives each GPU a share of the attention heads: every degree the plan uses must divide the count."""
    if plan is None:
        return
    for layout in plan.layouts:
        if layout.ulysses_degree == 1 or num_heads % layout.ulysses_degree == 0:
            continue
        working = [n for n in (2, 4, 8) if num_heads % n == 0]
        raise InvalidInputError(
            f"{source} has {num_heads} attention heads, which {layout.ulysses_degree} GPUs cannot share evenly "
            f"(parallel '{plan.mode}', {plan.world_size} GPUs). Use a GPU count whose sequence split divides "
            f"{num_heads}: {', '.join(map(str, working)) or 'none'}; or parallel 'cfg' with 2 GPUs.")


def wan_token_count(width: int, height: int, frames: int, size_multiple: int) -> int:
    """Tokens of one Wan forward: latent frames x (h/2) x (w/2); `size_multiple` is the VAE stride times the
    2x2 patch (16 for the Wan 2.1 VAE, 32 for the 2.2 VAE)."""
    return ((frames - 1) // 4 + 1) * (height // size_multiple) * (width // size_multiple)


def passes_per_step(cfg_high: float, cfg_low: float | None) -> set[int]:
    """The forwards per step a run makes: 2 with CFG above 1, else 1; `cfg_low` None for a one-expert model."""
    return {1 if cfg == 1.0 else 2 for cfg in (cfg_high, cfg_low) if cfg is not None}


def check_request_split(plan: ParallelPlan | None, *, width: int, height: int, frames: int,
                        size_multiple: int, passes: set[int]) -> None:
    """Checks of one run against the plan, made before the first step. `passes`: the passes per step the run
    makes ({2} with CFG throughout, {1} without, {1, 2} for an A14B run with CFG on one expert only)."""
    if plan is None:
        return
    if plan.mode in ("cfg", "sequence+cfg") and 2 not in passes:
        raise InvalidInputError(
            f"parallel '{plan.mode}' runs the conditional and unconditional passes on different GPUs, but with "
            "CFG 1 there is only one pass: nothing to split, half the GPUs would idle. Set the loader's parallel "
            "to 'auto' or 'sequence' for CFG 1 (e.g. with a distillation LoRA), or raise CFG above 1.")
    tokens = wan_token_count(width, height, frames, size_multiple)
    for degree in sorted({plan.layout_for(count).ulysses_degree for count in passes}):
        if degree == 1 or tokens % degree == 0:
            continue
        latent_frames = (frames - 1) // 4 + 1
        raise InvalidInputError(
            f"{width}x{height} with {frames} frames makes {latent_frames} x {height // size_multiple} x "
            f"{width // size_multiple} = {tokens} tokens, which the sequence split over {degree} GPUs cannot "
            f"divide evenly (Reelsmith refuses rather than pads, so the result equals the one-GPU run). A width "
            f"or height that is a multiple of {size_multiple * degree} always works (e.g. "
            f"{_nearest_multiple(width, size_multiple * degree)}x{height}).")


def _nearest_multiple(value: int, step: int) -> int:
    return max(step, round(value / step) * step)
