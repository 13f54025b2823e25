"""cuDNN's FP8 attention path (engine/models/attention_fp8_cudnn.py) on the CPU: the quantisation around cuDNN's
`sdpa_fp8` (K and V smoothing, per-tensor e4m3 scales, the output's scale and V's mean added back) with the
graph's documented arithmetic emulated in PyTorch, against exact attention. The cuDNN call itself runs on a
Hopper GPU only (scripts/check_fp8_attention.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

from reelsmith.engine.errors import BackendUnavailableError
from reelsmith.engine.models import attention_fp8_cudnn as cudnn_fp8


def layer_inputs(tokens=96, heads=2, dim=64, seed=0):
    """[B, S, H, D] bf16 with the offsets smoothing exists for: K per channel (a softmax shift), V per channel."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(1, tokens, heads, dim, generator=generator)
    k = torch.randn(1, tokens, heads, dim, generator=generator) + 4.0 * torch.randn(heads, dim, generator=generator)
    v = torch.randn(1, tokens, heads, dim, generator=generator) + 3.0 * torch.randn(heads, dim, generator=generator)
    return q.to(torch.bfloat16), k.to(torch.bfloat16), v.to(torch.bfloat16)


def exact(q, k, v):
    q, k, v = (t.float().transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)


def emulated_sdpa_fp8(tensors, fp8_out):
    """cuDNN's sdpa_fp8 arithmetic: S = Q.K^T x descale_q x descale_k x 1/sqrt(D); P = exp(S - row max) in e4m3
    times scale_s; O = P.V x descale_s x descale_v / row sum, written times scale_o (e4m3 or bf16)."""
    q8, k8, v8, descale_q, descale_k, descale_v, descale_s, scale_s, scale_o = tensors
    q, k, v = (t.float().transpose(1, 2) for t in (q8, k8, v8))
    scores = q @ k.transpose(-1, -2) * descale_q * descale_k / math.sqrt(q.shape[-1])
    p = torch.exp(scores - scores.amax(-1, keepdim=True))
    p8 = (p * scale_s).to(torch.float8_e4m3fn).float()
    out = (p8 @ v) * descale_s * descale_v / p.sum(-1, keepdim=True)
    out = (out * scale_o).transpose(1, 2)
    return out.to(torch.float8_e4m3fn if fp8_out else torch.bfloat16)


def cosine(a, b):
    return F.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0).item()


@pytest.mark.parametrize("fp8_out", [False, True], ids=["bf16-output", "fp8-output"])
def test_quantisation_around_cudnn_is_close_to_exact_attention(fp8_out):
    q, k, v = layer_inputs()
    inputs = cudnn_fp8.quantise_inputs(q, k, v, fp8_out)
    q8, k8, v8 = inputs.tensors[:3]
    assert {t.dtype for t in (q8, k8, v8)} == {torch.float8_e4m3fn}
    # each tensor's largest magnitude lands on e4m3's largest value: the whole range is used, nothing overflows
    for quantised in (q8, k8, v8):
        assert quantised.float().abs().max().item() == cudnn_fp8.E4M3_MAX
    out = cudnn_fp8.dequantise_output(emulated_sdpa_fp8(inputs.tensors, fp8_out), inputs, torch.bfloat16)
    reference = exact(q, k, v)
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    assert cosine(out, reference) > 0.998
    assert not torch.equal(out.float(), reference)  # the quantised path really is what was compared


def test_smoothing_is_what_keeps_the_offsets_accurate():
    """The same quantisation without the K and V smoothing loses the small differences under the offsets."""
    q, k, v = layer_inputs()
    inputs = cudnn_fp8.quantise_inputs(q, k, v, fp8_out=True)
    smoothed = cudnn_fp8.dequantise_output(emulated_sdpa_fp8(inputs.tensors, True), inputs, torch.bfloat16)
    unit = torch.ones(1, 1, 1, 1)
    q8, dq = cudnn_fp8._to_e4m3(q, q.abs().amax())
    k8, dk = cudnn_fp8._to_e4m3(k, k.abs().amax())
    v8, dv = cudnn_fp8._to_e4m3(v, v.abs().amax())
    scale_o = cudnn_fp8.E4M3_MAX / v.float().abs().amax().reshape(1, 1, 1, 1)
    plain = emulated_sdpa_fp8((q8, k8, v8, dq, dk, dv, unit / 448, unit * 448, scale_o), True).float() / scale_o
    reference = exact(q, k, v)
    assert cosine(smoothed, reference) > cosine(plain, reference)
    relative = lambda out: ((out.float() - reference).norm() / reference.norm()).item()  # noqa: E731
    assert relative(smoothed) < 0.5 * relative(plain)


def test_without_the_frontend_or_a_gpu_the_error_says_what_to_do():
    q, k, v = layer_inputs()
    with pytest.raises(BackendUnavailableError, match="cuDNN FP8 attention cannot run.*nvidia-cudnn-frontend|"
                                                      "cuDNN FP8 attention cannot run.*CUDA GPU"):
        cudnn_fp8.cudnn_fp8_attention(q, k, v)
