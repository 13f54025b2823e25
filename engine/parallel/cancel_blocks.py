"""Cancel a Wan forward between two transformer blocks, on every rank at the same block.

The transformer's `forward` iterates `for block in self.blocks`; giving that ModuleList a subclass whose
iteration calls a check before each block puts the check between blocks without touching module names (LoRA
and checkpoint keys stay `blocks.N...`) and outside the regionally compiled blocks. The ranks that share a
forward agree on the flag with a tiny all-reduce over a gloo group (a CPU tensor: no GPU sync), so either all
of them stop at block N or none does: a rank that stopped alone would leave the others waiting forever in the
next attention's all-to-all.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class ForwardCancelled(Exception):
    def __init__(self, blocks_done: int):
        super().__init__(f"forward cancelled after {blocks_done} blocks")
        self.blocks_done = blocks_done


class CancellableBlocks(nn.ModuleList):
    """A ModuleList that calls `before_block(index)` before yielding each block (when it is set)."""

    before_block: Callable[[int], None] | None = None

    def __iter__(self):
        for index, block in enumerate(super().__iter__()):
            if self.before_block is not None:
                self.before_block(index)
            yield block


def make_blocks_cancellable(model: nn.Module) -> CancellableBlocks:
    blocks = model.blocks
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"{type(model).__name__}.blocks is a {type(blocks).__name__}, not a ModuleList")
    blocks.__class__ = CancellableBlocks
    return blocks


def agree_to_stop(local_stop: bool, group) -> bool:
    """True when any rank of `group` wants to stop (every rank of the group must call this at the same point)."""
    if group is None:
        return local_stop
    flag = torch.tensor([1 if local_stop else 0], dtype=torch.int32)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=group)
    return bool(flag.item())
