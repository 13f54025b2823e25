"""An expert as the sampler loop sees it inside a torchrun job: every rank runs the same loop (`sample_wan`)
with the same inputs, and this stand-in runs the passes this rank's CFG group owns and shares the results,
so every rank ends each step with the same guided velocity (and the same latents).

The counterpart of parallel_wan.ParallelWanTransformer (workers driven from ComfyUI's process) for
scripts/render_parallel.py and scripts/check_parallel_gpu.py.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..pipelines.wan_sampler import combine_guidance
from .parallel_plan import BRANCHES, ParallelPlan
from .sequence_split import SequenceSplitSwitch


class RankGuidance:
    """`split`: the model's sequence-split switch (None: the model is never split by sequence, as for the
    CFG split on 2 GPUs)."""

    def __init__(self, model, plan: ParallelPlan, rank: int, split: SequenceSplitSwitch | None = None):
        self.model = model
        self.plan = plan
        self.rank = rank
        self.split = split
        self.activation_dtype = model.patch_embedding.weight.dtype

    def branch_outputs(self, hidden_states, timestep, prompt, negative, branches) -> dict[str, torch.Tensor]:
        """Every branch's output on every rank: each group runs its own, the group leaders broadcast."""
        embeds = {"cond": prompt, "uncond": negative}
        dtype = hidden_states.dtype
        layout = self.plan.layout_for(len(branches))
        if self.split is not None:
            self.split.use(layout)
        mine = layout.branches_for_group(layout.group_of(self.rank), branches)
        outputs = {branch: self.model(hidden_states=hidden_states, timestep=timestep,
                                      encoder_hidden_states=embeds[branch].to(dtype), return_dict=False)[0]
                   for branch in mine}
        if layout.cfg_groups > 1:
            shape = (hidden_states.shape[0], self.model.config.out_channels, *hidden_states.shape[2:])
            for group, branch in enumerate(branches):
                buffer = outputs.get(branch)
                if buffer is None:
                    buffer = hidden_states.new_empty(shape)
                dist.broadcast(buffer, src=layout.group_leaders()[group])
                outputs[branch] = buffer
        return outputs

    @torch.no_grad()
    def guided_velocity(self, *, hidden_states, timestep, prompt, negative, cfg) -> torch.Tensor:
        branches = BRANCHES[:1] if cfg == 1.0 or negative is None else BRANCHES
        outputs = self.branch_outputs(hidden_states, timestep, prompt, negative, branches)
        cond = outputs["cond"].float()
        if len(branches) == 1:
            return cond
        return combine_guidance(cond, outputs["uncond"].float(), cfg)
