"""Precision choices of the model-options layer: bf16/fp16 casts, fp8 storage, fp8 matmuls and their fallback."""

import logging
import weakref

import pytest
import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel

from reelsmith.engine.errors import CheckpointMismatchError, InvalidInputError
from reelsmith.engine.models import precision
from reelsmith.engine.models.precision import PRECISIONS, Fp8Linear, apply_precision

from tiny_wan import tiny_wan

CPU = torch.device("cpu")


def wan_inputs():
    generator = torch.Generator().manual_seed(1)
    return dict(
        hidden_states=torch.randn(1, 16, 3, 8, 8, generator=generator).to(torch.bfloat16),
        timestep=torch.tensor([500]),
        encoder_hidden_states=torch.randn(1, 7, 32, generator=generator).to(torch.bfloat16),
    )


def run(model, inputs, dtype=torch.bfloat16):
    with torch.no_grad():
        args = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in inputs.items()}
        return model(**args, return_dict=False)[0].float()


def cosine(a, b):
    return F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def test_precision_choices_are_exact():
    assert PRECISIONS == ("bf16", "fp16", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")


def test_unknown_precision_is_refused():
    with pytest.raises(InvalidInputError, match="fp8_e4m3fn_fast"):
        apply_precision(tiny_wan(), "fp8", CPU)


def test_bf16_casts_but_keeps_the_models_fp32_modules():
    model = tiny_wan()
    assert apply_precision(model, "bf16", CPU) == []
    assert model.patch_embedding.weight.dtype == torch.bfloat16
    assert model.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert model.proj_out.weight.dtype == torch.bfloat16
    # _keep_in_fp32_modules of WanTransformer3DModel stay float32, as diffusers' from_pretrained leaves them
    assert model.rope.freqs_cos.dtype == torch.float32
    assert model.scale_shift_table.dtype == torch.float32
    assert model.blocks[1].scale_shift_table.dtype == torch.float32
    assert model.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    assert model.blocks[0].norm2.weight.dtype == torch.float32


def test_fp16_casts_to_half():
    model = tiny_wan()
    apply_precision(model, "fp16", CPU)
    assert model.blocks[0].ffn.net[2].weight.dtype == torch.float16
    assert model.rope.freqs_sin.dtype == torch.float32


@pytest.mark.parametrize("choice, fp8_dtype", [("fp8_e4m3fn", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)])
def test_fp8_storage_is_close_to_bf16_but_not_identical(choice, fp8_dtype):
    inputs = wan_inputs()
    reference = tiny_wan()
    apply_precision(reference, "bf16", CPU)
    expected = run(reference, inputs)

    model = tiny_wan()
    notes = apply_precision(model, choice, CPU)
    assert notes == []
    out = run(model, inputs)
    assert cosine(out, expected) > 0.99
    assert not torch.equal(out, expected)

    block_linears = [m for m in model.blocks.modules() if isinstance(m, torch.nn.Linear)]
    fp8_layers = [m for m in model.blocks.modules() if isinstance(m, Fp8Linear)]
    assert block_linears == []
    assert len(fp8_layers) == 2 * (4 + 4 + 2)  # per block: attn1 q/k/v/out, attn2 q/k/v/out, ffn in/out
    assert all(layer.weight.dtype == fp8_dtype and not layer.weight.requires_grad for layer in fp8_layers)
    assert all(layer.weight_scale.dtype == torch.float32 and layer.weight_scale.ndim == 0 for layer in fp8_layers)
    assert all(not layer.use_scaled_mm for layer in fp8_layers)
    # outside the blocks everything stays a plain bf16 Linear / conv (accuracy)
    assert type(model.proj_out) is torch.nn.Linear and model.proj_out.weight.dtype == torch.bfloat16
    assert model.patch_embedding.weight.dtype == torch.bfloat16
    assert type(model.condition_embedder.text_embedder.linear_1) is torch.nn.Linear
    assert model.rope.freqs_cos.dtype == torch.float32


def test_fp8_fast_on_cpu_falls_back_to_storage_with_a_note(caplog):
    inputs = wan_inputs()
    storage = tiny_wan()
    apply_precision(storage, "fp8_e4m3fn", CPU)
    model = tiny_wan()
    with caplog.at_level(logging.WARNING):
        notes = apply_precision(model, "fp8_e4m3fn_fast", CPU)
    assert len(notes) == 1 and "8.9" in notes[0] and "bf16" in notes[0]
    assert any("fp8_e4m3fn_fast" in record.getMessage() for record in caplog.records)
    layers = [m for m in model.modules() if isinstance(m, Fp8Linear)]
    assert layers and not any(layer.use_scaled_mm for layer in layers)
    assert torch.equal(run(model, inputs), run(storage, inputs))


def test_capability_rules(monkeypatch):
    assert precision.fp8_matmul_supported(CPU) is False
    assert precision.describe_precision_fallback("fp8_e4m3fn", CPU) is None
    assert precision.describe_precision_fallback("bf16", CPU) is None
    assert "CPU" in precision.describe_precision_fallback("fp8_e4m3fn_fast", CPU)
    cuda = torch.device("cuda")
    monkeypatch.setattr(precision, "_cuda_capability", lambda device: (8, 9))
    assert precision.fp8_matmul_supported(cuda) is True
    monkeypatch.setattr(precision, "_cuda_capability", lambda device: (9, 0))
    assert precision.fp8_matmul_supported(cuda) is True
    monkeypatch.setattr(precision, "_cuda_capability", lambda device: (8, 6))
    assert precision.fp8_matmul_supported(cuda) is False


def test_set_weight_and_dequantized_weight_round_trip():
    torch.manual_seed(3)
    linear = torch.nn.Linear(64, 48).to(torch.bfloat16)
    layer = Fp8Linear.from_linear(linear, torch.float8_e4m3fn, torch.bfloat16, False)
    original = linear.weight.float()
    restored = layer.dequantized_weight(torch.float32)
    assert restored.shape == original.shape
    assert ((restored - original).norm() / original.norm()).item() < 0.05
    assert not torch.equal(restored, original)
    assert torch.equal(layer.bias, linear.bias)
    # the scale maps the largest weight onto fp8's largest value
    assert torch.isclose(layer.weight_scale, original.abs().max() / 448.0, rtol=1e-6)

    new_weight = torch.randn(48, 64) * 10
    old_scale = layer.weight_scale.clone()
    layer.set_weight(new_weight)
    assert layer.weight.dtype == torch.float8_e4m3fn
    assert layer.weight_scale.item() > 5 * old_scale.item()  # a fresh scale, not the old one
    restored = layer.dequantized_weight(torch.float32)
    assert ((restored - new_weight).norm() / new_weight.norm()).item() < 0.05
    assert layer.dequantized_weight().dtype == torch.bfloat16

    with pytest.raises(InvalidInputError, match="shape"):
        layer.set_weight(torch.randn(64, 48))


def test_from_quantized_uses_weight_times_scale():
    torch.manual_seed(4)
    weight_fp8 = (torch.randn(48, 64) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    scale = torch.tensor([0.0123])  # ComfyUI stores scale_weight with one element
    bias = torch.randn(48)
    layer = Fp8Linear.from_quantized(weight_fp8, scale, bias, torch.bfloat16, False)
    assert layer.weight.data_ptr() == weight_fp8.data_ptr()  # used as stored, no copy or re-quantization
    expected = weight_fp8.float() * 0.0123
    assert torch.allclose(layer.dequantized_weight(torch.float32), expected, rtol=1e-6, atol=0)
    x = torch.randn(3, 5, 64).to(torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16 and out.shape == (3, 5, 48)
    reference = F.linear(x.float(), expected, bias.float())
    assert cosine(out.float(), reference) > 0.999
    with pytest.raises(InvalidInputError):
        Fp8Linear.from_quantized(weight_fp8, torch.ones(48), bias, torch.bfloat16, False)


def test_apply_precision_reuses_fp8_scaled_weights():
    model = tiny_wan()
    name = "blocks.1.ffn.net.0.proj"
    original = model.get_submodule(name)
    weight_fp8 = (torch.randn(original.weight.shape) * 50).to(torch.float8_e4m3fn)
    scale = torch.tensor(0.002)
    notes = apply_precision(model, "fp8_e4m3fn", CPU, quantized={name: (weight_fp8, scale)})
    layer = model.get_submodule(name)
    assert isinstance(layer, Fp8Linear)
    assert torch.equal(layer.weight.view(torch.uint8), weight_fp8.view(torch.uint8))
    assert layer.weight_scale.item() == pytest.approx(0.002)
    assert any("as stored" in note for note in notes)
    # a layer not in `quantized` was quantized from its own weights
    assert model.get_submodule("blocks.0.ffn.net.0.proj").weight_scale.item() != pytest.approx(0.002)

    # e5m2 asked for, e4m3 stored: re-quantized from the dequantized values, and said so
    model = tiny_wan()
    notes = apply_precision(model, "fp8_e5m2", CPU, quantized={name: (weight_fp8, scale)})
    assert model.get_submodule(name).weight.dtype == torch.float8_e5m2
    assert any("re-quantized" in note for note in notes)

    wrong = torch.zeros(7, 7).to(torch.float8_e4m3fn)
    with pytest.raises(CheckpointMismatchError, match=name):
        apply_precision(tiny_wan(), "fp8_e4m3fn", CPU, quantized={name: (wrong, scale)})


def test_fp8_scope_is_a_parameter():
    model = tiny_wan()
    apply_precision(model, "fp8_e4m3fn", CPU, fp8_layers=lambda m: ["blocks.0.attn1.to_q", "proj_out"])
    assert isinstance(model.blocks[0].attn1.to_q, Fp8Linear)
    assert isinstance(model.proj_out, Fp8Linear)
    assert type(model.blocks[0].attn1.to_k) is torch.nn.Linear
    assert model.blocks[0].attn1.to_k.weight.dtype == torch.bfloat16


def test_conversion_frees_each_layer_before_the_next(monkeypatch):
    """Layer-by-layer conversion: when a layer is quantized, every earlier original Linear is already gone,
    so a real-size model never needs its bf16 and fp8 copies at once."""
    model = tiny_wan()
    originals = [weakref.ref(m) for m in model.blocks.modules() if isinstance(m, torch.nn.Linear)]
    seen_alive = []
    real_from_linear = Fp8Linear.from_linear.__func__

    def counting_from_linear(cls, linear, *args, **kwargs):
        seen_alive.append(sum(ref() is not None for ref in originals))
        return real_from_linear(cls, linear, *args, **kwargs)

    monkeypatch.setattr(Fp8Linear, "from_linear", classmethod(counting_from_linear))
    apply_precision(model, "fp8_e4m3fn", CPU)
    total = len(originals)
    assert len(seen_alive) == total
    assert seen_alive == [total - i for i in range(total)]
    assert all(ref() is None for ref in originals)


def _scaled_mm_runs_on_cpu() -> bool:
    try:
        a = torch.zeros(16, 32).to(torch.float8_e4m3fn)
        b = torch.zeros(16, 32).to(torch.float8_e4m3fn)
        one = torch.ones(())
        torch._scaled_mm(a, b.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        return True
    except (RuntimeError, NotImplementedError, AttributeError):
        return False


@pytest.mark.skipif(not _scaled_mm_runs_on_cpu(), reason="this PyTorch has no CPU torch._scaled_mm")
@pytest.mark.parametrize("scaling", ["row", "tensor"])
def test_scaled_mm_path_math(scaling):
    """The fp8-matmul forward (activation scales, weight scale, bias) gives the layer's result; run on the
    CPU kernel here, on the GPU by scripts/check_gpu_paths.py."""
    torch.manual_seed(5)
    linear = torch.nn.Linear(64, 48).to(torch.bfloat16)
    x = torch.randn(2, 9, 64).to(torch.bfloat16)
    x[0, 0] *= 50  # one loud token: row-wise scales must keep the quiet ones accurate
    fast = Fp8Linear.from_linear(linear, torch.float8_e4m3fn, torch.bfloat16, True, activation_scaling=scaling)
    storage = Fp8Linear.from_linear(linear, torch.float8_e4m3fn, torch.bfloat16, False)
    expected = linear(x).float()
    try:
        out = fast(x)
    except RuntimeError as error:  # older PyTorch CPU kernels take per-tensor scales only
        if scaling == "row" and "per-tensor" in str(error):
            pytest.skip(f"this PyTorch's CPU _scaled_mm has no row-wise scaling ({torch.__version__})")
        raise
    assert out.dtype == torch.bfloat16 and out.shape == (2, 9, 48)
    assert cosine(out.float(), expected) > 0.99
    assert not torch.equal(out, storage(x))  # the activations really went through fp8
    quiet = slice(1, None)
    rel_quiet = ((out[0, quiet].float() - expected[0, quiet]).norm() / expected[0, quiet].norm()).item()
    if scaling == "row":
        assert rel_quiet < 0.08
    with pytest.raises(InvalidInputError):
        Fp8Linear(64, 48, fp8_dtype=torch.float8_e5m2, use_scaled_mm=True)


@pytest.mark.skipif(not _scaled_mm_runs_on_cpu(), reason="this PyTorch has no CPU torch._scaled_mm")
def test_fp8_fast_wires_scaled_mm_where_supported(monkeypatch):
    """With fp8 matmuls reported available, layers whose sizes suit cuBLAS use them (run here on the CPU
    kernel) and the rest keep fp8 storage, with a note."""
    monkeypatch.setattr(precision, "fp8_matmul_supported", lambda device: True)
    torch.manual_seed(0)
    config = dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=64, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )
    reference = WanTransformer3DModel(**config).eval()
    torch.manual_seed(0)
    model = WanTransformer3DModel(**config).eval()
    apply_precision(reference, "bf16", CPU)
    assert apply_precision(model, "fp8_e4m3fn_fast", CPU) == []
    layers = [m for m in model.modules() if isinstance(m, Fp8Linear)]
    assert layers and all(layer.use_scaled_mm and layer.activation_scaling == "tensor" for layer in layers)
    inputs = wan_inputs()
    out, expected = run(model, inputs), run(reference, inputs)
    assert cosine(out, expected) > 0.99 and not torch.equal(out, expected)

    notes = apply_precision(tiny_wan(), "fp8_e4m3fn_fast", CPU)  # width 24: not a multiple of 16
    assert len(notes) == 1 and "divisible by 16" in notes[0]


def _fp8_scaled_file(tmp_path):
    from reelsmith.engine import demo_models

    path = tmp_path / "wan_fp8_scaled.safetensors"
    demo_models.write_transformer_single_file(demo_models.tiny_transformer("t2v-a14b", 5), path, fp8_scaled=True)
    return path


@pytest.mark.parametrize("fp8_scope", ["all blocks", "all but one"])
def test_fp8_load_makes_no_float_copy_and_matches_the_dequantizing_load(tmp_path, fp8_scope):
    """With an fp8 precision the loader leaves placeholders where the fp8_scaled file's weights go; the result
    equals loading with float copies, and any layer the precision leaves as a Linear gets its dequantized weight."""
    from reelsmith.engine.models.wan_transformer import load_wan_transformer

    path = _fp8_scaled_file(tmp_path)
    layers = None
    if fp8_scope == "all but one":
        layers = lambda m: [n for n in precision.repeated_block_linears(m) if n != "blocks.0.attn1.to_q"]  # noqa: E731
    scope = {} if layers is None else {"fp8_layers": layers}

    kept = load_wan_transformer(path, "ComfyUI single file", keep_fp8_as=torch.float8_e4m3fn)
    assert kept.placeholders and kept.placeholders <= set(kept.quantized)
    apply_precision(kept.model, "fp8_e4m3fn", CPU, quantized=kept.quantized, **scope)
    filled = kept.fill_placeholders()
    assert filled == (0 if layers is None else 1)

    copied = load_wan_transformer(path, "ComfyUI single file")
    assert not copied.placeholders
    apply_precision(copied.model, "fp8_e4m3fn", CPU, quantized=copied.quantized, **scope)
    assert copied.fill_placeholders() == 0
    inputs = wan_inputs()
    torch.testing.assert_close(run(kept.model, inputs), run(copied.model, inputs), rtol=0, atol=0)
    if layers is not None:
        leftover = kept.model.blocks[0].attn1.to_q
        assert type(leftover) is torch.nn.Linear
        torch.testing.assert_close(leftover.weight, copied.model.blocks[0].attn1.to_q.weight, rtol=0, atol=0)


def test_fp8_load_placeholders_only_for_the_stored_fp8_format(tmp_path):
    from reelsmith.engine.models.wan_transformer import load_wan_transformer

    path = _fp8_scaled_file(tmp_path)
    # e5m2 asked for, e4m3 stored: the weights are re-quantized from float copies, so every copy is made
    assert not load_wan_transformer(path, "ComfyUI single file", keep_fp8_as=torch.float8_e5m2).placeholders
    assert precision.fp8_storage_dtype("bf16") is None
    assert precision.fp8_storage_dtype("fp8_e4m3fn_fast") == torch.float8_e4m3fn
