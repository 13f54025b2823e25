"""An attention function as a `reelsmith::` torch custom op, so torch.compile keeps a block that calls it in one
graph (dynamo does not trace into Triton launches or cuDNN graphs). Registered once per process: the pack may
be imported under two names, and torch refuses a second registration of the same name."""

from __future__ import annotations

from typing import Callable

import torch


def _like_query(q: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """The fake (shape-only) implementation: attention returns a tensor shaped like its queries."""
    return torch.empty(q.shape, device=q.device, dtype=q.dtype)


def attention_custom_op(name: str, fn: Callable[..., torch.Tensor]):
    """`torch.ops.reelsmith.<name>` running `fn` (annotated arguments, query first; returns a tensor like it)."""
    namespace = getattr(torch.ops, "reelsmith", None)
    if namespace is not None and hasattr(namespace, name):
        return getattr(namespace, name)
    op = torch.library.custom_op(f"reelsmith::{name}", fn, mutates_args=())
    op.register_fake(_like_query)
    return getattr(torch.ops.reelsmith, name)
