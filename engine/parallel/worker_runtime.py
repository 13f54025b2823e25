"""What one rank holds and does: its process group, the Wan experts loaded with the same loader and options as
on one GPU (strict load, precision, attention backend, regional compile), diffusers' context parallelism on
them, and forwards of the passes its CFG group owns.

Used by the worker processes of the pool and by the torchrun entry point (scripts/render_parallel.py).
The model code (diffusers) is imported when an expert is loaded, so a pool without experts starts quickly.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .cancel_blocks import ForwardCancelled, agree_to_stop, make_blocks_cancellable
from .parallel_plan import ParallelPlan, SplitLayout
from .protocol import ExpertInfo, WorkerSpec
from .sequence_split import SequenceSplitSwitch


@dataclass
class LayoutGroups:
    cancel_group: object | None      # gloo group of the ranks that share a forward (None: a group of one)
    mesh: object | None              # device mesh for context parallelism (None: no sequence split)


@dataclass
class RankGroups:
    device: torch.device
    layouts: dict[SplitLayout, LayoutGroups]   # this rank's groups in every layout the plan may use

    def meshes(self) -> dict[SplitLayout, object]:
        return {layout: groups.mesh for layout, groups in self.layouts.items() if groups.mesh is not None}


def init_rank(plan: ParallelPlan, rank: int, init_method: str | None) -> RankGroups:
    """Join the process group (MASTER 127.0.0.1 through `init_method`, or torchrun's environment when None)
    and build the groups of every layout of the plan; every rank creates them in the same order."""
    if plan.device_type == "cuda":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        device = torch.device("cpu")
    kwargs = {"device_id": device} if plan.device_type == "cuda" else {}
    if not dist.is_initialized():
        dist.init_process_group(plan.backend, init_method=init_method, rank=rank, world_size=plan.world_size,
                                **kwargs)
    layouts = {}
    for layout in plan.layouts:
        cancel_groups = []
        for group in range(layout.cfg_groups):
            ranks = layout.group_ranks(group)
            cancel_groups.append(dist.new_group(ranks=ranks, backend="gloo") if len(ranks) > 1 else None)
        mesh = None
        if layout.ulysses_degree > 1:
            from torch.distributed.device_mesh import init_device_mesh
            if layout.cfg_groups == 1:
                mesh = init_device_mesh(plan.device_type, (1, layout.ulysses_degree),
                                        mesh_dim_names=("ring", "ulysses"))
            else:  # diffusers takes the (ring, ulysses) sub-mesh of this rank's CFG group
                mesh = init_device_mesh(plan.device_type, (layout.cfg_groups, 1, layout.ulysses_degree),
                                        mesh_dim_names=("cfg", "ring", "ulysses"))
        layouts[layout] = LayoutGroups(cancel_group=cancel_groups[layout.group_of(rank)], mesh=mesh)
    return RankGroups(device=device, layouts=layouts)


def activation_dtype(model) -> torch.dtype:
    return model.patch_embedding.weight.dtype


class CancelState:
    """The cancel flag of the forward in progress; a cancel for a finished (or not yet started) request id
    applies to that id only."""

    def __init__(self):
        self._lock = threading.Lock()
        self._current: int | None = None
        self._cancelled: set[int] = set()
        self.event = threading.Event()

    def request(self, request_id: int) -> None:
        with self._lock:
            self._cancelled.add(request_id)
            if request_id == self._current:
                self.event.set()

    def begin(self, request_id: int) -> None:
        with self._lock:
            self._current = request_id
            self._cancelled = {r for r in self._cancelled if r >= request_id}
            self.event.clear()
            if request_id in self._cancelled:
                self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()


class RankModels:
    """The experts of one rank, ready for forwards."""

    def __init__(self, spec: WorkerSpec, rank: int, groups: RankGroups, test_hooks: bool = False):
        self.spec = spec
        self.plan = spec.plan
        self.rank = rank
        self.groups = groups
        self.device = groups.device
        self.models: dict[str, torch.nn.Module] = {}
        self.infos: dict[str, ExpertInfo] = {}
        self.patchers: dict = {}  # expert -> WanLoraPatcher
        self.splits: dict[str, SequenceSplitSwitch] = {}
        self.last_layout: SplitLayout | None = None   # the layout of the last forward
        self.notes: list[str] = []
        self.test_hooks = test_hooks
        self._embeds_key: int | None = None
        self._embeds: dict[str, torch.Tensor] = {}
        self._cancel: CancelState | None = None
        self._hold: int | None = None
        for files in spec.experts:
            self._load(files)

    def _load(self, files) -> None:
        import pathlib

        from ..errors import ModelFilesError
        if not pathlib.Path(files.path).exists():  # before importing the model code: a quick, clear error
            raise ModelFilesError(f"{files.label}: {files.path} does not exist (as seen by this worker).")
        from ..models import attention, compile as compile_options
        from ..models.lora import WanLoraPatcher
        from ..models.wan_transformer import load_wan_transformer_at_precision

        loaded, notes = load_wan_transformer_at_precision(files.path, files.layout, files.label, self.spec.precision,
                                                          self.device)
        self.notes += notes
        model = loaded.model
        model.to(self.device)
        backend = attention.apply_attention_backend(model, self.spec.attention, self.device)
        self.notes += attention.auto_choice_notes(self.spec.attention, backend)
        split = SequenceSplitSwitch(model, self.plan.device_type, self.groups.meshes())
        split.use(self.plan.guided)
        self.splits[files.name] = split
        blocks = make_blocks_cancellable(model)
        blocks.before_block = self._before_block
        # compile last, so the traced blocks are the final ones (as compile.py asks)
        self.notes += compile_options.apply_compile(model, self.spec.compile, context_parallel=self.plan.splits_sequence)
        self.models[files.name] = model
        self.patchers[files.name] = WanLoraPatcher()
        config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
        self.infos[files.name] = ExpertInfo(variant=loaded.variant.name, config=config,
                                            activation_dtype=activation_dtype(model))

    def device_text(self) -> str:
        if self.device.type == "cuda":
            return f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        return str(self.device)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------ forwards

    def _before_block(self, index: int) -> None:
        if self._cancel is None:
            return
        if self._hold is not None and index == self._hold:
            self._cancel.event.wait(30)  # TEST ONLY: a deterministic "cancel arrives mid-forward"
        if agree_to_stop(self._cancel.is_set(), self.groups.layouts[self.last_layout].cancel_group):
            raise ForwardCancelled(self._blocks_done + index)

    def set_embeds(self, key: int, embeds: dict[str, torch.Tensor] | None) -> None:
        if embeds is not None:
            self._embeds = {name: tensor.to(self.device) for name, tensor in embeds.items()}
            self._embeds_key = key
        elif key != self._embeds_key:
            raise RuntimeError(f"rank {self.rank}: text embeddings {key} were never sent")

    def set_loras(self, expert: str, loras) -> None:
        from ..models.lora import load_wan_lora_cached
        wanted = [(load_wan_lora_cached(path), strength) for path, strength in loras]
        self.patchers[expert].set_loras(self.models[expert], wanted)

    @torch.no_grad()
    def forward(self, expert: str, hidden_states: torch.Tensor, timestep: torch.Tensor,
                branches: tuple[str, ...], cancel: CancelState | None = None,
                hold_before_block: int | None = None) -> dict[str, torch.Tensor]:
        """Run the passes of `branches` this rank's CFG group owns, in the plan's layout for that many passes;
        returns branch -> output on the device (every rank of a group holds the whole output: the sequence
        split gathers it at the end)."""
        model = self.models[expert]
        dtype = self.infos[expert].activation_dtype
        layout = self.plan.layout_for(len(branches))
        self.splits[expert].use(layout)
        self.last_layout = layout
        mine = layout.branches_for_group(layout.group_of(self.rank), branches)
        self._cancel = cancel
        self._hold = hold_before_block if self.test_hooks else None
        self._blocks_done = 0
        hidden_states = hidden_states.to(self.device, dtype)
        timestep = timestep.to(self.device)
        outputs = {}
        try:
            for branch in mine:
                outputs[branch] = model(hidden_states=hidden_states, timestep=timestep,
                                        encoder_hidden_states=self._embeds[branch].to(dtype),
                                        return_dict=False)[0]
                self._blocks_done += len(model.blocks)
        finally:
            self._cancel = None
        return outputs
