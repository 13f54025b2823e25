"""Where a transformer's weights live while it samples.

Choices (`OFFLOAD_MODES`):
- `none`: the model lives on the GPU.
- `model`: the model is kept in CPU memory and moved to the GPU for its sampling stage only
  (`stage_on_device` around the stage); with Wan 2.2's two A14B experts this keeps one expert resident at
  a time.
- `block`: diffusers group offloading, one transformer block per group: each block's weights are copied to
  the GPU just before it runs (on a side CUDA stream, overlapping the previous block's compute) and
  dropped after; the small modules outside the blocks stay on the GPU. Lowest GPU memory; costs CPU RAM
  (pinned copies of all block weights) and PCIe bandwidth.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from ..errors import BackendUnavailableError, InvalidInputError

OFFLOAD_MODES = ("none", "model", "block")

_CPU = torch.device("cpu")


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _is_compiled(model: nn.Module) -> bool:
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


def apply_offload(model: nn.Module, mode: str, device) -> None:
    """Place `model` for offload `mode`, computing on `device`. Call it after apply_precision (so what gets
    offloaded is the final weights) and before apply_compile."""
    if mode not in OFFLOAD_MODES:
        raise InvalidInputError(f"Unknown offload mode '{mode}'. Choose one of: {', '.join(OFFLOAD_MODES)}.")
    device = torch.device(device)
    if mode == "none":
        model.to(device)
        return
    if mode == "model":
        model.to(_CPU)
        return
    # block
    if _is_compiled(model):
        raise InvalidInputError(
            "Block offloading must be applied before torch.compile (the compiled blocks would not see the "
            "offload hooks); apply the offload first, then compile."
        )
    try:
        from diffusers.hooks import apply_group_offloading
    except ImportError as error:  # pragma: no cover - diffusers is a hard requirement of the pack
        raise BackendUnavailableError(f"Block offloading needs diffusers' group offloading: {error}") from error
    model.to(_CPU)
    use_stream = device.type == "cuda"
    apply_group_offloading(
        model,
        onload_device=device,
        offload_device=_CPU,
        offload_type="block_level",
        num_blocks_per_group=1,
        use_stream=use_stream,
        # record_stream lets the allocator reuse a finished block's memory without a full synchronisation.
        record_stream=use_stream,
        non_blocking=use_stream,
    )
    _keep_top_level_resident(model, device)


def _keep_top_level_resident(model: nn.Module, device: torch.device) -> bool:
    """Keep the modules outside the repeated blocks (patch embedding, text/time embedders, norms, proj_out:
    ~0.6 GB for Wan A14B) on the GPU for good.

    diffusers puts them in one "unmatched" group that it moves synchronously, without a side stream, from
    pageable memory to the GPU and back around every forward; measured on an H100 with a 4-block Wan at
    480p that cost ~0.44 s a forward (789 vs 353 ms). Pointing that group's offload device at the GPU
    makes both moves no-ops. Returns False (and changes nothing) if diffusers' hook layout is not the one
    this was written against (diffusers 0.42), so offloading still works, just slower."""
    registry = getattr(model, "_diffusers_hook", None)
    hook = registry.get_hook("group_offloading") if registry is not None else None
    group = getattr(hook, "group", None)
    if group is None or getattr(group, "stream", "missing") is not None or not hasattr(group, "offload_device"):
        return False
    if getattr(group, "offload_to_disk_path", None):
        return False
    group.offload_device = device
    group.onload_()
    return True


@contextlib.contextmanager
def on_device(model: nn.Module, device) -> Iterator[nn.Module]:
    """Move `model` to `device` for the body, back to the CPU afterwards (also on error or cancel)."""
    device = torch.device(device)
    model.to(device)
    try:
        yield model
    finally:
        model.to(_CPU)
        _empty_cache(device)


@contextlib.contextmanager
def stage_on_device(model: nn.Module, mode: str, device) -> Iterator[nn.Module]:
    """Context for one sampling stage of `model`: with offload 'model' the weights come to `device` for the
    stage and go back after; with 'none' and 'block' the placement is already right and nothing moves."""
    if mode not in OFFLOAD_MODES:
        raise InvalidInputError(f"Unknown offload mode '{mode}'. Choose one of: {', '.join(OFFLOAD_MODES)}.")
    if mode == "model":
        with on_device(model, device):
            yield model
    else:
        yield model
