"""FP8 self-attention through cuDNN's fused FP8 flash attention (the cuDNN frontend's `sdpa_fp8` graph, Hopper
and newer; `pip install nvidia-cudnn-frontend`, which uses the cuDNN library PyTorch ships).

cuDNN takes Q, K, V in FP8 e4m3 with one scale per tensor. What keeps that accurate is what keeps our own
kernel's scheme accurate (attention_fp8_reference.py): K is smoothed by its per-channel mean over the tokens
(softmax does not change when a row's scores shift together), and V by its mean, added back to the output
(each output row is a convex combination of V's rows). The probabilities go to e4m3 times 448 (cuDNN's
`scale_s`), products accumulate in fp32. On Hopper cuDNN writes the output in e4m3 too; its scale comes from
V's largest magnitude, which bounds every output value, so nothing overflows.

Entry points: `cudnn_fp8_attention(q, k, v)` with [B, S, H, D] bf16 tensors (diffusers' processor layout) ->
[B, S, H, D] bf16, and the same as the torch custom op `cudnn_fp8_attention_op` for compiled blocks. The graph
of each shape is built once per process and device.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch

from ..errors import BackendUnavailableError
from .attention_custom_op import attention_custom_op

E4M3_MAX = 448.0


def cudnn_frontend_missing() -> str | None:
    """Why the cuDNN FP8 path cannot run here, or None."""
    try:
        import cudnn  # noqa: F401
    except ImportError as error:
        return f"the cuDNN frontend is not installed ({error}); `pip install nvidia-cudnn-frontend`"
    if not torch.cuda.is_available():
        return "it needs a CUDA GPU"
    if torch.cuda.get_device_capability() < (9, 0):
        return "cuDNN's FP8 attention needs a Hopper or newer GPU"
    return None


@dataclass
class _Graph:
    graph: object
    inputs: tuple            # frontend tensors: q, k, v, descale_q, descale_k, descale_v, descale_s, scale_s, scale_o
    out: object
    amax: tuple              # amax_s, amax_o (written by cuDNN; unused)
    fp8_out: bool
    workspace_bytes: int


_graphs: dict[tuple, _Graph] = {}
_handles: dict[int, object] = {}
_lock = threading.Lock()


def _handle(device: torch.device):
    import cudnn
    handle = _handles.get(device.index)
    if handle is None:
        handle = _handles[device.index] = cudnn.create_handle()
    return handle


def _build(shape: tuple[int, int, int, int], device: torch.device, fp8_out: bool) -> _Graph:
    import cudnn
    batch, tokens, heads, dim = shape
    e4m3, fp32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
    graph = cudnn.pygraph(io_data_type=e4m3, intermediate_data_type=fp32, compute_data_type=fp32,
                          handle=_handle(device))
    # the [B, S, H, D] buffers seen as cuDNN's [B, H, S, D] through strides: no transposes
    dims, strides = (batch, heads, tokens, dim), (tokens * heads * dim, dim, heads * dim, 1)
    q, k, v = (graph.tensor(name=n, dim=dims, stride=strides, data_type=e4m3) for n in ("q", "k", "v"))
    scalar = dict(dim=(1, 1, 1, 1), stride=(1, 1, 1, 1), data_type=fp32)
    scales = tuple(graph.tensor(name=n, **scalar)
                   for n in ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o"))
    out, _, amax_s, amax_o = graph.sdpa_fp8(q=q, k=k, v=v, descale_q=scales[0], descale_k=scales[1],
                                            descale_v=scales[2], descale_s=scales[3], scale_s=scales[4],
                                            scale_o=scales[5], attn_scale=1.0 / math.sqrt(dim),
                                            use_causal_mask=False, generate_stats=False, name="sdpa_fp8")
    out.set_output(True).set_dim(dims).set_stride(strides).set_data_type(e4m3 if fp8_out else cudnn.data_type.BFLOAT16)
    for amax in (amax_s, amax_o):
        amax.set_output(True).set_dim((1, 1, 1, 1)).set_stride((1, 1, 1, 1)).set_data_type(fp32)
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    return _Graph(graph, (q, k, v, *scales), out, (amax_s, amax_o), fp8_out, graph.get_workspace_size())


def _graph_for(shape: tuple[int, int, int, int], device: torch.device) -> _Graph:
    """The graph of `shape`: bf16 output where cuDNN offers it (Blackwell), else FP8 output (Hopper). Whether
    cuDNN's FP8 attention can run here is checked once, before the first graph is built."""
    key = (device.index, shape)
    with _lock:
        found = _graphs.get(key)
        if found is None:
            missing = cudnn_frontend_missing()
            if missing is not None:
                raise BackendUnavailableError(f"cuDNN FP8 attention cannot run: {missing}. Choose the fp8 "
                                              "implementation 'triton', or the 'cudnn' attention backend.")
            try:
                found = _build(shape, device, fp8_out=False)
            except Exception:  # noqa: BLE001 - cuDNN refuses bf16 output on this GPU: FP8 output, rescaled below
                found = _build(shape, device, fp8_out=True)
            _graphs[key] = found
    return found


def _to_e4m3(x: torch.Tensor, amax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x scaled so its largest magnitude is e4m3's largest, as e4m3; and the descale [1, 1, 1, 1] fp32."""
    amax = amax.float().clamp_min(1e-12)
    return (x * (E4M3_MAX / amax)).to(torch.float8_e4m3fn), (amax / E4M3_MAX).reshape(1, 1, 1, 1)


@dataclass
class Fp8Inputs:
    """What cuDNN's graph reads: Q, K, V in e4m3 and the scales, plus what turns its output back."""
    tensors: tuple           # q8, k8, v8, descale_q, descale_k, descale_v, descale_s, scale_s, scale_o
    v_mean: torch.Tensor     # [B, 1, H, D] fp32, added back to the output
    scale_o: torch.Tensor    # [1, 1, 1, 1] fp32 the output carries (1 with bf16 output)


def quantise_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fp8_out: bool) -> Fp8Inputs:
    """Smooth K and V, quantise per tensor to e4m3 (on the GPU: no host synchronisation)."""
    unit = torch.ones((1, 1, 1, 1), device=q.device, dtype=torch.float32)
    # means accumulate in fp32 without an fp32 copy of the (large) tensors
    k = k - k.mean(dim=1, keepdim=True, dtype=torch.float32).to(k.dtype)   # K smoothing: exact for softmax
    v_mean = v.mean(dim=1, keepdim=True, dtype=torch.float32)
    v = v - v_mean.to(v.dtype)                                       # V smoothing: the mean is added back
    v_amax = v.abs().amax()
    q8, descale_q = _to_e4m3(q.contiguous(), q.abs().amax())
    k8, descale_k = _to_e4m3(k.contiguous(), k.abs().amax())
    v8, descale_v = _to_e4m3(v.contiguous(), v_amax)
    # |output| <= max |V| (a convex combination of V's rows): with FP8 output that bound is e4m3's largest
    scale_o = (E4M3_MAX / v_amax.float().clamp_min(1e-12)).reshape(1, 1, 1, 1) if fp8_out else unit
    tensors = (q8, k8, v8, descale_q, descale_k, descale_v, unit / E4M3_MAX, unit * E4M3_MAX, scale_o)
    return Fp8Inputs(tensors, v_mean, scale_o)


def dequantise_output(out: torch.Tensor, inputs: Fp8Inputs, dtype: torch.dtype) -> torch.Tensor:
    return (out.float() / inputs.scale_o + inputs.v_mean).to(dtype)


def cudnn_fp8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Non-causal self-attention of [B, S, H, D] q, k, v (one shape, head dim a multiple of 16) -> [B, S, H, D]
    in q's dtype."""
    if q.shape != k.shape or q.shape != v.shape or q.shape[-1] % 16:
        raise ValueError(f"cuDNN FP8 attention takes q, k, v of one shape with head dim a multiple of 16; got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    device = q.device
    plan = _graph_for(tuple(q.shape), device)  # raises first where cuDNN's FP8 attention cannot run
    import cudnn
    inputs = quantise_inputs(q, k, v, plan.fp8_out)
    out = torch.empty(q.shape, device=device, dtype=torch.float8_e4m3fn if plan.fp8_out else torch.bfloat16)
    amax_s = torch.empty((1, 1, 1, 1), device=device, dtype=torch.float32)
    amax_o = torch.empty_like(amax_s)
    pack = dict(zip(plan.inputs, inputs.tensors))
    pack.update({plan.out: out, plan.amax[0]: amax_s, plan.amax[1]: amax_o})
    workspace = torch.empty(plan.workspace_bytes, device=device, dtype=torch.uint8)
    handle = _handle(device)
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream(device).cuda_stream)
    plan.graph.execute(pack, workspace, handle=handle)
    return dequantise_output(out, inputs, q.dtype)


def _cudnn_fp8_attention_call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return cudnn_fp8_attention(q, k, v)


cudnn_fp8_attention_op = attention_custom_op("cudnn_fp8_attention", _cudnn_fp8_attention_call)
