"""diffusers' context parallelism (the Ulysses sequence split) on a loaded Wan transformer, switchable between the
layouts of a plan, so one copy of the model serves every layout of an `auto` plan.

diffusers applies it once (`enable_parallelism`: a config holding its device mesh, recorded on the model and on
every attention processor, plus the split and gather hooks of the model's `_cp_plan`) and has no way back. The
first use of a layout calls `enable_parallelism`; later switches take the hooks and configs off and put the same
ones back (diffusers' `remove_context_parallel` / `apply_context_parallel`), so each layout's mesh and process
groups are built once. A switch touches a few dozen hooks: milliseconds, against seconds per forward.
"""

from __future__ import annotations

import contextlib

import torch

from ..models.attention import attention_processors
from .parallel_plan import SplitLayout


@contextlib.contextmanager
def _cpu_device_count_shim(device_type: str):
    """diffusers picks the rank's device as `rank % torch.accelerator.device_count()`, which divides by zero on
    a CPU-only machine (the CPU test switch). Only there, the count reads 1 while parallelism is enabled."""
    if device_type != "cpu":
        yield
        return
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original


class SequenceSplitSwitch:
    """Puts `model` in the layout of each forward: Ulysses over the layout's group mesh, or no split at all
    (a layout with `ulysses_degree` 1, such as the CFG split on 2 GPUs)."""

    def __init__(self, model, device_type: str, meshes: dict[SplitLayout, object]):
        self.model = model
        self.device_type = device_type
        self.meshes = meshes             # layout -> its device mesh (layouts with a sequence split)
        self._configs: dict = {}         # layout -> diffusers ParallelConfig, resolved at first use
        self.active: SplitLayout | None = None  # the layout whose split is on the model (None: none)

    def use(self, layout: SplitLayout) -> None:
        wanted = layout if layout.ulysses_degree > 1 else None
        if wanted == self.active:
            return
        if self.active is not None:
            self._take_off()
        if wanted is not None:
            self._put_on(wanted)
        self.active = wanted

    def _put_on(self, layout: SplitLayout) -> None:
        from diffusers import ContextParallelConfig
        from diffusers.hooks.context_parallel import apply_context_parallel

        config = self._configs.get(layout)
        if config is None:
            with _cpu_device_count_shim(self.device_type):
                self.model.enable_parallelism(config=ContextParallelConfig(
                    ulysses_degree=layout.ulysses_degree, mesh=self.meshes[layout]))
            self._configs[layout] = self.model._parallel_config
            return
        self.model._parallel_config = config
        for processor in attention_processors(self.model):
            processor._parallel_config = config
        apply_context_parallel(self.model, config.context_parallel_config, self.model._cp_plan)

    def _take_off(self) -> None:
        from diffusers.hooks.context_parallel import remove_context_parallel

        remove_context_parallel(self.model, self.model._cp_plan)
        for processor in attention_processors(self.model):
            processor._parallel_config = None
        self.model._parallel_config = None
