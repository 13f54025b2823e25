"""The peer `scripts/bench.py --comfyui DIR` times beside Reelsmith: ComfyUI's own model code (comfy/ldm) for the
same architecture, built at real size with random weights on the GPU, with the operations ComfyUI picks for a
weight dtype (its `fp8_e4m3fn_fast` = fp8 weights + `fp8_ops`, which multiply in fp8 through comfy_kitchen;
`bf16` = plain bf16 weights) and ComfyUI's default attention (PyTorch SDPA).

ComfyUI is imported from DIR in this process (`comfy.cli_args` keeps its defaults: GPU, no `--cpu`).
"""

from __future__ import annotations

import sys

import torch

from bench_models import Workload
from reelsmith.engine.estimates import TEXT_TOKENS

PEER_PRECISIONS = ("bf16", "fp8_e4m3fn_fast")


def import_comfy(comfyui_dir: str):
    if comfyui_dir not in sys.path:
        sys.path.insert(0, comfyui_dir)
    import comfy.model_management  # noqa: F401  (initialises ComfyUI's device state)
    import comfy.ops

    return comfy.ops


def _operations(ops_module, precision: str, device):
    if precision == "bf16":
        return ops_module.disable_weight_init, torch.bfloat16
    if precision == "fp8_e4m3fn_fast":
        ops = ops_module.pick_operations(torch.float8_e4m3fn, torch.bfloat16, load_device=device,
                                         fp8_optimizations=True)
        if ops is not ops_module.fp8_ops:
            raise RuntimeError("ComfyUI did not pick its fp8 matmul operations here (no fp8 compute on this GPU, "
                               "or comfy_kitchen is missing): the peer would not be ComfyUI's fp8_e4m3fn_fast path")
        return ops, torch.float8_e4m3fn
    raise ValueError(f"peer precision {precision!r}: choose one of {PEER_PRECISIONS}")


def _fill_random(model: torch.nn.Module, device, weight_dtype) -> None:
    """ComfyUI's layers skip initialisation: give every tensor N(0, 0.02) values, cast to the weight dtype for
    matrices (fp8 weights hold no NaN patterns this way) and bf16 elsewhere, as ComfyUI loads them."""
    with torch.no_grad():
        for parameter in model.parameters():
            value = torch.empty(parameter.shape, device=device, dtype=torch.bfloat16).normal_(0.0, 0.02)
            parameter.data = value.to(weight_dtype if parameter.ndim == 2 else torch.bfloat16)


def build_peer(ops_module, workload: Workload, precision: str, device):
    """ComfyUI's native model for `workload` -> a no-argument callable running one forward."""
    operations, weight_dtype = _operations(ops_module, precision, device)
    config = workload.config()
    latents = torch.randn(workload.latent_shape(), device=device, dtype=torch.bfloat16)
    text = torch.randn(1, TEXT_TOKENS[workload.family], 4096, device=device, dtype=torch.bfloat16)
    timestep = torch.tensor([500.0], device=device)
    # ComfyUI's layers skip initialisation, so building straight on the GPU costs no time
    if workload.family == "wan":
        import comfy.ldm.wan.model as native_wan

        model = native_wan.WanModel(
            model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=config["in_channels"],
            dim=config["num_attention_heads"] * config["attention_head_dim"], ffn_dim=config["ffn_dim"],
            freq_dim=config["freq_dim"], text_dim=config["text_dim"], out_dim=config["out_channels"],
            num_heads=config["num_attention_heads"], num_layers=config["num_layers"], eps=config["eps"],
            operations=operations, dtype=weight_dtype, device=device)
    else:
        import comfy.ldm.lightricks.model as native_ltx

        model = native_ltx.LTXVModel(
            in_channels=config["in_channels"], cross_attention_dim=config["cross_attention_dim"],
            attention_head_dim=config["attention_head_dim"], num_attention_heads=config["num_attention_heads"],
            caption_channels=config["caption_channels"], num_layers=config["num_layers"],
            causal_temporal_positioning=True, operations=operations, dtype=weight_dtype, device=device)
    _fill_random(model, device, weight_dtype)
    model.eval().requires_grad_(False)
    if workload.family == "wan":
        return lambda: model(latents, timestep, text)
    mask = torch.ones(1, text.shape[1], device=device, dtype=torch.bfloat16)
    return lambda: model(latents, timestep, text, mask, frame_rate=25)
