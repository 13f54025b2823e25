"""Wan experts held by GPU workers, seen from the ComfyUI process: the stand-in the sampler loop calls, and the
loading step of a several-GPU WanModel.

The sampler loop, scheduler, seeds, progress and previews stay in ComfyUI's process, exactly as on one GPU;
only the transformer passes go to the workers, through the loop's one seam (`guided_velocity`). The text
encoder and the VAE stay in ComfyUI's process as well.
"""

from __future__ import annotations

import types

import torch

from ..errors import ModelFilesError
from ..models.wan_transformer import probe_wan_transformer
from ..pipelines.wan_sampler import combine_guidance
from . import worker_pool
from .parallel_plan import BRANCHES, ParallelPlan, check_head_split
from .protocol import ExpertFiles, Forward, WorkerSpec


class ParallelWanTransformer:
    """One expert (high or low) living in the worker pool of `spec`. Not an nn.Module: it has no weights here.

    The pool is looked up at every step, so a pool that died or was replaced (another model, ComfyUI's
    unload, a failed run) is started again with the same spec at the next run."""

    def __init__(self, spec: WorkerSpec, expert: str, config: dict, activation_dtype: torch.dtype,
                 pool_options: dict | None = None):
        self.spec = spec
        self.expert = expert
        self.config = types.SimpleNamespace(**config)
        self.activation_dtype = activation_dtype
        self.loras: tuple[tuple[str, float], ...] = ()
        self.pool_options = pool_options or {}

    def set_loras(self, loras) -> None:
        """(file, strength) pairs for this expert; the workers patch their copy before the next forward."""
        self.loras = tuple((str(path), float(strength)) for path, strength in loras)

    def pool(self) -> worker_pool.WorkerPool:
        return worker_pool.pool_for(self.spec, **self.pool_options)

    def guided_velocity(self, *, hidden_states: torch.Tensor, timestep: torch.Tensor, prompt: torch.Tensor,
                        negative: torch.Tensor | None, cfg: float) -> torch.Tensor:
        pool = self.pool()
        branches = BRANCHES[:1] if cfg == 1.0 or negative is None else BRANCHES
        key, embeds = pool.text_embeds(prompt, negative)
        outputs = pool.forward(Forward(request_id=0, expert=self.expert, loras=self.loras,
                                       hidden_states=hidden_states.cpu(), timestep=timestep.cpu(),
                                       branches=branches, embeds_key=key, embeds=embeds))
        device = hidden_states.device
        cond = outputs["cond"].to(device).float()
        if len(branches) == 1:
            return cond
        return combine_guidance(cond, outputs["uncond"].to(device).float(), cfg)

    def __repr__(self) -> str:
        return f"ParallelWanTransformer({self.expert}, {self.spec.plan.describe()})"


def is_parallel(model) -> bool:
    return isinstance(model, ParallelWanTransformer)


def worker_spec(files, options, plan: ParallelPlan, two_experts: bool) -> WorkerSpec:
    experts = [ExpertFiles("high", str(files.transformer), files.layout, f"{files.label} (high) {files.transformer}")]
    if two_experts:
        experts.append(ExpertFiles("low", str(files.transformer_2), files.layout,
                                   f"{files.label} (low) {files.transformer_2}"))
    return WorkerSpec(plan=plan, experts=tuple(experts), precision=options.precision,
                      attention=options.attention, compile=options.compile)


def load_parallel_experts(files, options, plan: ParallelPlan, notes: list[str], pool_options: dict | None = None):
    """Check the files against the plan, start (or reuse) the workers, and return (variant, high, low) as
    stand-ins. Everything that can be refused from the files' shapes is refused before a worker starts."""
    variant, heads = probe_wan_transformer(files.transformer, f"{files.label} (high) {files.transformer}")
    check_head_split(plan, heads, f"{variant.display_name} ('{files.label}')")
    if variant.two_experts and files.transformer_2 is None:
        raise ModelFilesError(
            f"{variant.display_name} needs both experts: '{files.label}' has only one. In single-file mode pick "
            "the low-noise file in 'diffusion_model_low_noise'.")
    if not variant.two_experts and files.transformer_2 is not None:
        raise ModelFilesError(
            f"{variant.display_name} has a single transformer; '{files.transformer_2}' was given as a low-noise "
            "expert. Set diffusion_model_low_noise to 'none'.")
    if variant.two_experts:
        low_variant, _ = probe_wan_transformer(files.transformer_2, f"{files.label} (low) {files.transformer_2}")
        if low_variant.name != variant.name:
            raise ModelFilesError(
                f"The two experts are different models: {files.transformer} is {variant.display_name} but "
                f"{files.transformer_2} is {low_variant.display_name}. Pick the matching pair.")
    spec = worker_spec(files, options, plan, variant.two_experts)
    pool = worker_pool.pool_for(spec, **(pool_options or {}))
    notes += pool.notes()

    def stand_in(name):
        info = pool.expert_info(name)
        return ParallelWanTransformer(spec, name, info.config, info.activation_dtype, pool_options)

    return variant, stand_in("high"), stand_in("low") if variant.two_experts else None
