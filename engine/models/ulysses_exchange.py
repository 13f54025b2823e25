"""The Ulysses head exchange around an attention call that diffusers' dispatcher does not make (our FP8 kernel).

Under the sequence split each GPU holds a slice of the tokens for every head. Before attention, one all-to-all
gives each GPU every token for its share of the heads (GPU r takes heads r*H/W .. (r+1)*H/W, the order
diffusers' own Ulysses uses); attention then runs over the whole sequence, exactly as on one GPU for those heads
(the FP8 kernel's per-head scales and smoothing see the same tokens); a second all-to-all gives each GPU its
token slice back with every head. Functional collectives, so torch.compile can keep them in its graph.
"""

from __future__ import annotations

from typing import Callable

import torch


def _ulysses_group(parallel_config):
    """(process group, degree) of diffusers' context-parallel config, or None when it is not a pure Ulysses split."""
    config = getattr(parallel_config, "context_parallel_config", None)
    if config is None or config.ring_degree != 1 or config.ulysses_degree < 2:
        return None
    return config._ulysses_mesh.get_group(), config.ulysses_degree


def _all_to_all(x: torch.Tensor, group) -> torch.Tensor:
    """Exchange the equal chunks of dim 0 (chunk r goes to rank r of `group`, comes back from it)."""
    import torch.distributed._functional_collectives as funcol
    shape = x.shape
    out = funcol.all_to_all_single(x.flatten(), None, None, group)
    return funcol.wait_tensor(out).reshape(shape)


def can_exchange(parallel_config) -> bool:
    return _ulysses_group(parallel_config) is not None


def attend_across_ranks(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                        parallel_config) -> torch.Tensor:
    """`attend` ([B, S, H, D] q, k, v -> [B, S, H, D]) over the whole sequence, for [B, S/W, H, D] local slices."""
    group, world = _ulysses_group(parallel_config)
    batch, local_tokens, heads, dim = query.shape
    if heads % world:
        raise ValueError(f"{heads} attention heads cannot be shared by a sequence split over {world} GPUs")

    def to_head_share(x):  # [B, S/W, H, D] -> [B, S, H/W, D]
        x = x.reshape(batch, local_tokens, world, heads // world, dim).permute(2, 0, 1, 3, 4).contiguous()
        x = _all_to_all(x, group)  # chunk r now holds rank r's tokens of this rank's heads
        return x.permute(1, 0, 2, 3, 4).reshape(batch, world * local_tokens, heads // world, dim)

    out = attend(to_head_share(query), to_head_share(key), to_head_share(value))
    out = out.reshape(batch, world, local_tokens, heads // world, dim).permute(1, 0, 2, 3, 4).contiguous()
    out = _all_to_all(out, group)  # chunk r now holds this rank's tokens of rank r's heads
    return out.permute(1, 2, 0, 3, 4).reshape(batch, local_tokens, heads, dim)
