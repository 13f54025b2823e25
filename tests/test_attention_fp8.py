"""FP8 attention: the quantisation scheme (PyTorch reference) against exact attention, the Triton kernel
(run on CPU by Triton's interpreter) against the reference and exact attention, and the 'fp8' backend's
plumbing on tiny Wan and LTX-Video transformers.

What only a GPU can check (scripts/check_fp8_attention.py): compilation for sm_90 (wgmma with INT8 / FP8
operands), speed, and the Hopper FP8 MMA's reduced-precision accumulation (the interpreter adds exactly).
"""

import importlib.util
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from diffusers import LTXVideoTransformer3DModel, WanTransformer3DModel
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry
from diffusers.models.transformers.transformer_ltx import LTXVideoAttnProcessor
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from reelsmith.engine.errors import BackendUnavailableError, InvalidInputError
from reelsmith.engine.models import attention_fp8_processors as processors
from reelsmith.engine.models.attention import apply_attention_backend, model_attention_backend
from reelsmith.engine.models.attention_fp8_reference import (
    fp8_attention_reference,
    quantise_groups,
    quantise_v_per_channel,
)
from reelsmith.engine.pipelines.ltx_inputs import ltx_timestep, ltx_video_coords

CPU = torch.device("cpu")
KERNEL_MODULE = "reelsmith.engine.models.attention_fp8"


def _interpreted_kernel_module():
    """Import the kernel module with Triton's interpreter on (it is chosen when the kernels are defined; the
    `interpreter` fixture keeps it on while they run), leaving the environment as it was. Returns (module,
    None) or (None, why the kernel tests are skipped)."""
    if importlib.util.find_spec("triton") is None:
        return None, "Triton is not installed (tests/requirements.txt installs it)"
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import importlib as _importlib
        module = _importlib.import_module(KERNEL_MODULE)
    finally:
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous
    if not module.kernels_interpreted():
        return None, f"{KERNEL_MODULE} was imported without TRITON_INTERPRET=1 earlier in this process"
    return module, None


kernel, SKIP_REASON = _interpreted_kernel_module()
needs_kernel = pytest.mark.skipif(kernel is None, reason=SKIP_REASON or "")


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    """Triton also reads TRITON_INTERPRET when an interpreted kernel calls its helpers."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def layer_inputs(batch=2, heads=3, tokens=100, dim=64, layout="bshd", seed=0, k_offset=3.0, v_offset=2.0):
    """q, k, v like one attention layer's: RMS-normed projections times 1-3, K and V with per-channel offsets
    (which smoothing removes; V's comes back through its mean), bf16."""
    generator = torch.Generator().manual_seed(seed)

    def normed(scale):
        x = torch.randn(batch, tokens, heads, dim, generator=generator)
        return x / x.pow(2).mean(-1, keepdim=True).sqrt() * scale

    q = normed(2.0)
    k = normed(2.0) + k_offset * torch.randn(dim, generator=generator)
    v = torch.randn(batch, tokens, heads, dim, generator=generator) + v_offset * torch.randn(dim, generator=generator)
    tensors = [t.to(torch.bfloat16) for t in (q, k, v)]
    if layout == "bhsd":
        tensors = [t.transpose(1, 2).contiguous() for t in tensors]
    return tensors


def exact_attention(q, k, v, layout):
    if layout == "bshd":
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    return out if layout == "bhsd" else out.transpose(1, 2)


def cosine(a, b):
    return F.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0).item()


def relative_error(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


# ------------------------------------------------------------------ the scheme (PyTorch reference)

@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
def test_reference_scheme_is_close_to_exact_attention(dim, layout):
    q, k, v = layer_inputs(dim=dim, layout=layout)
    out = fp8_attention_reference(q, k, v, layout)
    exact = exact_attention(q, k, v, layout)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert cosine(out, exact) >= 0.995
    assert relative_error(out, exact) <= 0.05
    # quantisation happened: the result is not exact attention
    assert relative_error(out, exact) > 1e-3


def test_k_smoothing_is_what_keeps_a_large_k_offset_accurate():
    q, k, v = layer_inputs(k_offset=30.0)
    exact = exact_attention(q, k, v, "bshd")
    smoothed = fp8_attention_reference(q, k, v)
    assert cosine(smoothed, exact) >= 0.995
    # quantising Q and K the same way but without the smoothing (and with exact P.V) is far worse
    qf, kf, vf = (t.transpose(1, 2).float() for t in (q, k, v))
    q_values, q_scales = quantise_groups(qf, 32, "int8")
    k_values, k_scales = quantise_groups(kf, 64, "int8")
    q_restored = (q_values * q_scales.repeat_interleave(32, 2)[..., None])[:, :, :100]
    k_restored = (k_values * k_scales.repeat_interleave(64, 2)[..., None])[:, :, :100]
    unsmoothed = F.scaled_dot_product_attention(q_restored, k_restored, vf).transpose(1, 2)
    assert relative_error(unsmoothed, exact) > 2 * relative_error(smoothed, exact)


def test_group_and_channel_quantisation():
    x = torch.randn(1, 2, 70, 64) * torch.linspace(0.1, 5, 70)[:, None]
    values, scales = quantise_groups(x, 32, "int8")
    assert values.shape == (1, 2, 96, 64) and scales.shape == (1, 2, 3)
    assert values.abs().max() <= 127 and torch.equal(values, values.round())
    assert values[:, :, 70:].abs().max() == 0  # padding tokens are zero
    restored = (values * scales.repeat_interleave(32, 2)[..., None])[:, :, :70]
    assert (restored - x).abs().max() <= scales.max() / 2 + 1e-6
    offset_x = x + 4 * torch.randn(64)  # channel offsets: smoothing takes them out before quantising
    v8, v_scales, v_means = quantise_v_per_channel(offset_x)
    assert v_scales.shape == v_means.shape == (1, 2, 64) and v8.abs().amax(dim=2).min() == 448
    torch.testing.assert_close(v_means, offset_x.mean(dim=2))
    assert torch.equal(v8, v8.to(torch.float8_e4m3fn).float())  # exactly e4m3 numbers
    assert relative_error(v8 * v_scales[:, :, None] + v_means[:, :, None], offset_x) < 0.02


def test_unsupported_inputs_are_refused():
    q, k, v = layer_inputs(dim=64)
    with pytest.raises(InvalidInputError, match="head dims"):
        fp8_attention_reference(*(t[..., :48] for t in (q, k, v)))
    with pytest.raises(InvalidInputError, match="one 4-d shape"):
        fp8_attention_reference(q, k[:, :50], v[:, :50])
    with pytest.raises(InvalidInputError, match="layout"):
        fp8_attention_reference(q, k, v, "sbhd")


# ------------------------------------------------------------------ the Triton kernel (interpreter)

@needs_kernel
@pytest.mark.parametrize("dim, layout, qk_dtype", [(64, "bshd", "int8"), (128, "bshd", "int8"),
                                                   (64, "bhsd", "int8"), (128, "bhsd", "fp8")])
def test_kernel_matches_reference_and_exact(dim, layout, qk_dtype):
    q, k, v = layer_inputs(dim=dim, layout=layout)  # 100 tokens: one full and one partial key block
    config = kernel.default_config(dim, tokens=100)
    out = kernel.fp8_attention(q, k, v, layout, qk_dtype=qk_dtype)
    assert out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous()
    reference = fp8_attention_reference(q, k, v, layout, qk_dtype=qk_dtype, block_n=config.block_n)
    # same scheme, same order: only fp32 rounding and the final bf16 rounding differ
    torch.testing.assert_close(out.float(), reference.float(), atol=0.02, rtol=0.01)  # ~2 bf16 steps
    exact = exact_attention(q, k, v, layout)
    assert cosine(out, exact) >= 0.995
    assert relative_error(out, exact) <= (0.05 if qk_dtype == "int8" else 0.1)  # FP8 Q.K: 3 mantissa bits


@needs_kernel
@pytest.mark.parametrize("config", ["m64n128w4s3", "m128n64w4s3-tma", "m128n64w8s3-fastacc",
                                    "m64n128w4s2-fastacc-tma-r168"])
def test_kernel_takes_strided_views_and_other_configs(config):
    q, k, v = layer_inputs(tokens=70)
    packed = torch.stack((q, k, v), dim=2)  # [B, S, 3, H, D]: q, k, v become strided views
    qv, kv, vv = packed.unbind(2)
    assert not qv.is_contiguous()
    reference = fp8_attention_reference(q, k, v, block_n=kernel.FP8_ATTENTION_CONFIGS[config].block_n)
    out = kernel.fp8_attention(qv, kv, vv, "bshd", config=config)
    torch.testing.assert_close(out.float(), reference.float(), atol=0.02, rtol=0.01)  # ~2 bf16 steps


@needs_kernel
@pytest.mark.parametrize("tokens, k_group", [(100, 128), (300, 256)])  # 256: two quantising chunks per group
def test_quantised_buffers_are_the_reference_quantisation(tokens, k_group):
    from reelsmith.engine.models.attention_fp8_quant import PAD, quantise_qkv

    q, k, v = layer_inputs(tokens=tokens)
    buffers = quantise_qkv(q, k, v, "bshd", k_group=k_group)
    qf, kf, vf = (t.transpose(1, 2).float() for t in (q, k, v))
    q_ref, q_scales = quantise_groups(qf, 32, "int8")
    k_ref, k_scales = quantise_groups(kf - kf.mean(2, keepdim=True), k_group, "int8")
    v_ref, v_scales, v_means = quantise_v_per_channel(vf)
    padded = math.ceil(tokens / PAD) * PAD
    assert buffers.padded == padded and buffers.q.dtype == torch.int8 and buffers.k_group == k_group
    assert torch.equal(buffers.q.float().view(2, 3, padded, 64)[:, :, :tokens], q_ref[:, :, :tokens])
    assert torch.equal(buffers.k.float().view(2, 3, padded, 64)[:, :, :tokens], k_ref[:, :, :tokens])
    assert buffers.k[:, tokens:].abs().max() == 0  # padding stays zero after smoothing
    groups = q_scales.shape[-1]
    torch.testing.assert_close(buffers.q_scales.view(2, 3, -1)[:, :, :groups],
                               q_scales * 64 ** -0.5 * 1.4426950408889634)
    assert buffers.k_scales.shape == (6, padded // k_group)
    torch.testing.assert_close(buffers.k_scales.view(2, 3, -1)[:, :, :k_scales.shape[-1]], k_scales)
    torch.testing.assert_close(buffers.v_scales.view(2, 3, 64), v_scales)
    torch.testing.assert_close(buffers.v_means.view(2, 3, 64), v_means)
    assert torch.equal(buffers.v_t.float().view(2, 3, 64, padded)[..., :tokens].transpose(-1, -2), v_ref)


@needs_kernel
def test_v_in_the_warpgroup_mma_key_order_is_the_same_buffer_permuted_within_every_16_keys():
    from reelsmith.engine.models.attention_fp8_quant import mma_key_positions, quantise_qkv

    q, k, v = layer_inputs(tokens=300)
    natural = quantise_qkv(q, k, v, "bshd")
    reordered = quantise_qkv(q, k, v, "bshd", v_mma_order=True)
    positions = mma_key_positions(natural.padded)
    assert reordered.v_mma_order and not natural.v_mma_order
    assert torch.equal(reordered.v_t[..., positions].float(), natural.v_t.float())
    assert torch.equal(reordered.q.float(), natural.q.float()) and torch.equal(reordered.k.float(), natural.k.float())
    # a permutation inside every 16 keys, in which each lane c of a quad finds its Q.K^T accumulator keys
    # (2c, 2c+1, 8+2c, 9+2c) at the four consecutive places the e4m3 MMA reads from its registers (4c..4c+3)
    groups = torch.arange(0, natural.padded, 16)[:, None]
    assert torch.equal((positions.view(-1, 16) - groups).sort(1).values, torch.arange(16).expand(len(groups), 16))
    for lane in range(4):
        held = positions[[2 * lane, 2 * lane + 1, 8 + 2 * lane, 9 + 2 * lane]]
        assert held.tolist() == [4 * lane, 4 * lane + 1, 4 * lane + 2, 4 * lane + 3]


@needs_kernel
def test_kernel_with_one_k_scale_per_256_keys_matches_the_reference():
    """Groups of 256 keys (the warp-specialized kernel's 256-key blocks quantise K so): the Triton kernel, two
    128-key blocks per K scale, computes the same scheme."""
    q, k, v = layer_inputs(tokens=300)
    out = kernel.fp8_attention(q, k, v, "bshd", config="m64n128w4s3", k_group=256)
    reference = fp8_attention_reference(q, k, v, k_group=256, block_n=128)
    torch.testing.assert_close(out.float(), reference.float(), atol=0.02, rtol=0.01)  # ~2 bf16 steps
    assert cosine(out, exact_attention(q, k, v, "bshd")) >= 0.995


def test_named_configs_and_errors():
    if kernel is None:
        pytest.skip(SKIP_REASON)
    from reelsmith.engine.models.attention_fp8_quant import PAD

    for name, config in kernel.FP8_ATTENTION_CONFIGS.items():
        assert config.name == name and PAD % config.block_m == 0 and PAD % config.block_n == 0
        assert kernel.resolve_config(name, 128, 75600) is config
    assert set(kernel.DEFAULT_CONFIGS) == {64, 128}
    # short sequences (LTX) take three programs per multiprocessor, long ones (Wan) the 3-stage config
    assert kernel.resolve_config("default", 128, 11440).name == "m64n128w4s2-fastacc-tma-r168"
    assert kernel.resolve_config("default", 128, 75600).name == "m64n128w4s3-fastacc-tma"
    assert kernel.resolve_config("default", 64, 11440).name == "m64n128w4s3-fastacc-tma-r128"
    assert kernel.resolve_config("autotune", 64, 100) == "autotune"
    with pytest.raises(InvalidInputError, match="m128n64w4s3"):
        kernel.resolve_config("huge", 64, 100)
    q, k, v = layer_inputs(tokens=20)
    with pytest.raises(InvalidInputError, match="head dims"):
        kernel.fp8_attention(*(t[..., :32] for t in (q, k, v)))
    # a key block must not straddle two K scales
    with pytest.raises(InvalidInputError, match="k_group 64 must be a multiple of the config's key block"):
        kernel.fp8_attention(q, k, v, config="m64n128w4s3", k_group=64)


@needs_kernel
def test_kernel_on_cpu_without_the_interpreter_says_why(monkeypatch):
    monkeypatch.setattr(kernel, "kernels_interpreted", lambda: False)
    q, k, v = layer_inputs(tokens=20)
    with pytest.raises(BackendUnavailableError, match="Hopper GPUs.*'sdpa'"):
        kernel.fp8_attention(q, k, v)


# ------------------------------------------------------------------ backend plumbing on tiny models

@pytest.fixture
def default_backend():
    before = _AttentionBackendRegistry._active_backend
    yield before
    _AttentionBackendRegistry._active_backend = before


def tiny_wan(head_dim=64, seed=0):
    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=head_dim, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ).eval().requires_grad_(False).to(torch.bfloat16)


def run_wan(model):
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # 3 x 6 x 10 = 180 tokens: partial blocks everywhere
        return model(hidden_states=torch.randn(1, 16, 3, 12, 20, generator=generator).to(torch.bfloat16),
                     timestep=torch.tensor([500]),
                     encoder_hidden_states=torch.randn(1, 7, 32, generator=generator).to(torch.bfloat16),
                     return_dict=False)[0]


def tiny_ltx(seed=0):
    torch.manual_seed(seed)
    return LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=64, cross_attention_dim=128,
        num_layers=1, caption_channels=32,
    ).eval().requires_grad_(False).to(torch.bfloat16)


def run_ltx(model):
    generator = torch.Generator().manual_seed(1)
    frames, height, width = 2, 6, 7
    with torch.no_grad():
        return model(hidden_states=torch.randn(1, frames * height * width, 8, generator=generator).to(torch.bfloat16),
                     encoder_hidden_states=torch.randn(1, 5, 32, generator=generator).to(torch.bfloat16),
                     timestep=ltx_timestep([0.7]), encoder_attention_mask=torch.ones(1, 5),
                     video_coords=ltx_video_coords(1, frames, height, width, 25.0, True), return_dict=False)[0]


FAMILIES = {"wan": (tiny_wan, run_wan, WanAttnProcessor), "ltx": (tiny_ltx, run_ltx, LTXVideoAttnProcessor)}
REFERENCE = {"implementation": "reference"}


def attention_modules(model):
    return {name: module for name, module in model.named_modules() if hasattr(module, "processor")}


@pytest.mark.parametrize("family", FAMILIES)
def test_fp8_backend_routes_self_attention_only(family, default_backend):
    build, run, stock = FAMILIES[family]
    untouched, chosen = build(), build()
    assert apply_attention_backend(chosen, "fp8", fp8_options=REFERENCE) == "fp8"
    assert model_attention_backend(chosen) == "fp8"
    modules = attention_modules(chosen)
    self_attention = {n for n in modules if n.endswith("attn1")}
    assert self_attention and len(self_attention) == len(modules) // 2
    for name, module in modules.items():
        if name in self_attention:
            assert processors.is_fp8_processor(module.processor) and isinstance(module.processor, stock)
        else:  # cross-attention stays on PyTorch SDPA
            assert type(module.processor) is stock
        assert module.processor._attention_backend == AttentionBackendName.NATIVE
    assert {m.processor._attention_backend for m in attention_modules(untouched).values()} == {None}
    assert _AttentionBackendRegistry._active_backend == default_backend
    out, exact = run(chosen), run(untouched)
    assert not torch.equal(out, exact)  # the quantised path really ran
    assert cosine(out, exact) >= 0.995


@pytest.mark.parametrize("family", FAMILIES)
def test_fp8_processors_compute_q_k_v_like_the_stock_ones(family, monkeypatch):
    """With exact attention in place of the kernel, our processors give the stock output bit for bit:
    projections, norms and rotary embedding are the same."""
    build, run, _ = FAMILIES[family]
    untouched, chosen = build(), build()
    apply_attention_backend(chosen, "fp8", fp8_options=REFERENCE)

    def exact(self, q, k, v):
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    monkeypatch.setattr(processors._Fp8SelfAttention, "attend", exact)
    assert torch.equal(run(chosen), run(untouched))


@pytest.mark.parametrize("family", FAMILIES)
def test_another_choice_puts_the_stock_processors_back(family, default_backend):
    build, run, stock = FAMILIES[family]
    untouched, model = build(), build()
    apply_attention_backend(model, "fp8", fp8_options=REFERENCE)
    assert apply_attention_backend(model, "sdpa", CPU) == "sdpa"
    assert all(type(m.processor) is stock for m in attention_modules(model).values())
    assert model_attention_backend(model) == "sdpa"
    assert torch.equal(run(model), run(untouched))


def test_auto_takes_fp8_on_hopper_where_the_kernel_fits_and_says_so(monkeypatch, default_backend):
    from reelsmith.engine.models import attention

    monkeypatch.setattr(attention, "_capability", lambda device: (9, 0) if device.type == "cuda" else None)
    monkeypatch.setattr(attention, "_triton_importable", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    cuda = torch.device("cuda")
    model = tiny_wan()
    assert apply_attention_backend(model, "auto", cuda, fp8_options=REFERENCE) == "fp8"  # CI has no Triton
    assert model_attention_backend(model) == "fp8"
    narrow = tiny_wan(head_dim=12)  # a head dim the kernel does not take: cuDNN, the processors untouched
    assert apply_attention_backend(narrow, "auto", cuda) == "cudnn"
    assert all(type(m.processor) is WanAttnProcessor for m in attention_modules(narrow).values())
    assert apply_attention_backend(tiny_wan(), "auto", CPU) == "sdpa"
    # the loader's note names the quality change and the exact alternative, only when 'auto' chose fp8
    assert "cudnn" in " ".join(attention.auto_choice_notes("auto", "fp8"))
    assert attention.auto_choice_notes("fp8", "fp8") == attention.auto_choice_notes("auto", "cudnn") == []


def test_fp8_is_refused_on_cpu_and_for_unsupported_models(default_backend):
    with pytest.raises(BackendUnavailableError, match="Hopper"):
        apply_attention_backend(tiny_wan(), "fp8", CPU)
    narrow = tiny_wan(head_dim=12)  # DESIGN.md's tiny test config
    with pytest.raises(InvalidInputError, match="head dim 12"):
        apply_attention_backend(narrow, "fp8", fp8_options=REFERENCE)
    assert all(type(m.processor) is WanAttnProcessor for m in attention_modules(narrow).values())  # unchanged
    with pytest.raises(InvalidInputError, match="implementation"):
        apply_attention_backend(tiny_wan(), "fp8", fp8_options={"implementation": "cuda"})


def test_auto_takes_the_warp_specialized_kernel_where_the_table_says(monkeypatch):
    """'auto' (the default) sends a head dim listed in WARP_SPECIALIZED from its length on to the warp-specialized
    kernel, in its config, where that kernel runs; everything else to the Triton kernel with the asked config;
    without it (no Hopper, no Gluon) it stays on the Triton kernel. The ops are stand-ins that record what they
    were given."""
    calls = []
    monkeypatch.setitem(processors._OP_LOADERS, "triton",
                        lambda: lambda q, k, v, *options: calls.append(("triton", q.shape[1], options[1])) or q)
    monkeypatch.setitem(processors._OP_LOADERS, "gluon-ws",
                        lambda: lambda q, k, v, config: calls.append(("gluon-ws", q.shape[1], config)) or q)

    def attend(tokens, dim=128, **options):
        processor = processors._Fp8SelfAttention()
        processor._parallel_config = None
        processor.setup_fp8(None, options.pop("implementation", "auto"), options.pop("config", "default"), "int8")
        q = torch.zeros(1, tokens, 1, dim)
        processor.attend(q, q, q)
        return calls.pop()

    long = processors.WARP_SPECIALIZED[128].from_tokens
    assert attend(long) == ("gluon-ws", long, "default")
    assert attend(long - 1) == ("triton", long - 1, "default")  # short sequences: not measured, the Triton kernel
    assert attend(long, dim=64) == ("triton", long, "default")  # head dim 64 is not in the table
    assert attend(long, config="m64n128w4s3") == ("triton", long, "m64n128w4s3")  # a Triton config asked for
    assert attend(long, implementation="triton") == ("triton", long, "default")
    assert attend(64, implementation="gluon-ws") == ("gluon-ws", 64, "default")  # asked for: any length

    # a head dim added to the table, with its own config and length
    monkeypatch.setitem(processors.WARP_SPECIALIZED, 64, processors.WarpSpecialized(4096, "s3-paired-c3"))
    assert attend(4096, dim=64) == ("gluon-ws", 4096, "s3-paired-c3")
    assert attend(4095, dim=64) == ("triton", 4095, "default")
    assert attend(64, dim=64, implementation="gluon-ws") == ("gluon-ws", 64, "s3-paired-c3")

    def not_here():
        raise BackendUnavailableError("FP8 attention implementation 'gluon-ws' cannot run: no Hopper GPU.")

    monkeypatch.setitem(processors._OP_LOADERS, "gluon-ws", not_here)
    assert attend(long) == ("triton", long, "default")
    with pytest.raises(BackendUnavailableError, match="gluon-ws"):
        attend(long, implementation="gluon-ws")


def test_every_config_in_the_table_is_a_warp_specialized_config():
    ws = pytest.importorskip("reelsmith.engine.models.attention_fp8_gluon_ws", reason="this Triton has no Gluon")
    for dim, choice in processors.WARP_SPECIALIZED.items():
        config = ws.ws_config(choice.config)
        assert config.consumers == 2 or dim == 64  # three consumers hold a head dim 64 accumulator only
    assert ws.ws_config("default") is ws.DEFAULT_GLUON_WS_CONFIG
    with pytest.raises(InvalidInputError, match="Unknown warp-specialized config 's9'"):
        ws.ws_config("s9")


def test_without_triton_the_triton_implementation_says_what_to_install(default_backend, monkeypatch):
    # Triton made unimportable here, the kernel module not yet imported (monkeypatch puts both back)
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.delitem(sys.modules, KERNEL_MODULE, raising=False)
    with pytest.raises(BackendUnavailableError, match="pip install triton"):
        apply_attention_backend(tiny_wan(), "fp8")


@needs_kernel
@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_models_run_the_kernel(family, default_backend):
    build, run, _ = FAMILIES[family]
    with_kernel, with_reference, untouched = build(), build(), build()
    apply_attention_backend(with_kernel, "fp8")  # no device: recorded, runs where the tensors are
    apply_attention_backend(with_reference, "fp8", fp8_options=REFERENCE)
    out = run(with_kernel)
    assert cosine(out, run(with_reference)) >= 0.9999
    assert cosine(out, run(untouched)) >= 0.995


@needs_kernel
def test_kernel_backend_on_cpu_without_the_interpreter_fails_clearly(monkeypatch, default_backend):
    model = tiny_wan()
    apply_attention_backend(model, "fp8")
    monkeypatch.setattr(kernel, "kernels_interpreted", lambda: False)
    with pytest.raises(BackendUnavailableError, match="'sdpa'"):
        run_wan(model)


@needs_kernel
def test_compiled_blocks_keep_the_kernel_in_one_graph(default_backend):
    """The kernel is a torch custom op: regional compile with fullgraph=True traces through it (eager backend
    here, inductor on the GPU)."""
    model, untouched = tiny_wan(), tiny_wan()
    apply_attention_backend(model, "fp8")
    eager = run_wan(model)
    for block in model.blocks:
        block.compile(backend="eager", fullgraph=True)
    try:
        compiled = run_wan(model)
    finally:
        torch._dynamo.reset()
    assert torch.equal(compiled, eager)
    assert cosine(compiled, run_wan(untouched)) >= 0.995


@pytest.mark.parametrize("capability, runs", [((9, 0), True), ((10, 0), False), ((12, 0), False), ((8, 9), False)])
def test_gluon_kernels_run_on_hopper_only_and_auto_falls_back_to_triton_elsewhere(monkeypatch, capability, runs):
    """Their warpgroup MMAs exist on sm_90 only: on a Blackwell GPU (B200: 10.0) 'auto' must keep the Triton kernel,
    not pick a kernel that cannot compile there."""
    gluon_kernels = pytest.importorskip("reelsmith.engine.models.attention_fp8_gluon",
                                        reason="this Triton has no Gluon")
    pytest.importorskip("reelsmith.engine.models.attention_fp8_gluon_ws", reason="this Triton has no Gluon")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    reason = gluon_kernels.gluon_unavailable()
    if runs:
        assert reason is None and processors._warp_specialized_op_if_it_runs() is not None
    else:
        assert f"Hopper GPU (H100, H200: compute capability 9.x; this one is {capability[0]}.{capability[1]})" in reason
        assert processors._warp_specialized_op_if_it_runs() is None
        with pytest.raises(BackendUnavailableError, match="implementation 'gluon-ws' cannot run: it needs a Hopper"):
            processors._OP_LOADERS["gluon-ws"]()


@needs_kernel
def test_gluon_kernels_host_side_describes_the_quantised_buffers():
    """The Gluon kernels run on Hopper only; their shared host side (quantise, then tensor descriptors of the
    padded buffers in the blocks the kernels load) runs here."""
    gluon_kernels = pytest.importorskip("reelsmith.engine.models.attention_fp8_gluon",
                                        reason="this Triton has no Gluon")
    q, k, v = layer_inputs(batch=1, heads=2, tokens=300, dim=128)
    qkv, (q_desc, k_desc, v_desc), out = gluon_kernels.quantised_inputs(q, k, v, "bshd", 64)
    assert qkv.padded == 512 and qkv.qk_dtype == "int8"
    assert q_desc.base is qkv.q and list(q_desc.shape) == [2 * 512, 128] and list(q_desc.block_shape) == [64, 128]
    assert k_desc.base is qkv.k and list(k_desc.block_shape) == [128, 128]
    # V transposed: head dim rows, tokens contiguous (the P.V MMA's operand), key blocks of 128 tokens
    assert v_desc.base is qkv.v_t and list(v_desc.shape) == [2 * 128, 512] and list(v_desc.block_shape) == [128, 128]
    assert out.shape == q.shape and out.dtype == q.dtype
    # 256-key blocks (the warp-specialized kernel's -n256 configs): K quantised with one scale per block
    qkv, (_, k_desc, v_desc), _ = gluon_kernels.quantised_inputs(q, k, v, "bshd", 64, 256)
    assert qkv.k_group == 256 and list(qkv.k_scales.shape) == [2, 2]
    assert list(k_desc.block_shape) == [256, 128] and list(v_desc.block_shape) == [128, 256]
