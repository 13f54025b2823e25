"""LoRA for the Wan transformer: every file layout, strength, chaining, exact restore, fp8 layers, errors.

LoRA files are written at test time with random rank-4 factors onto a tiny random Wan transformer. The
original (Wan-AI/ComfyUI) names of the layers are written out below by hand, so the key conversion is
checked against facts, not against itself.
"""

import dataclasses
import os

import pytest
import torch
from diffusers import WanTransformer3DModel
from reelsmith.engine.errors import (
    CheckpointMismatchError,
    InvalidInputError,
    ModelFilesError,
)
from reelsmith.engine.models.lora import (
    LoraStackEntry,
    WanLoraPatcher,
    clear_lora_cache,
    entries_for_expert,
    load_wan_lora,
    load_wan_lora_cached,
)
from reelsmith.engine.models.precision import Fp8Linear
from safetensors.torch import save_file

TINY_WAN = {  # DESIGN.md's tiny Wan config
    "patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 12, "in_channels": 16,
    "out_channels": 16, "text_dim": 32, "freq_dim": 256, "ffn_dim": 32, "num_layers": 2,
    "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 32,
}
RANK = 4

# diffusers module name -> original Wan name of the same layer
ORIGINAL = {
    "blocks.0.attn1.to_q": "blocks.0.self_attn.q",
    "blocks.1.attn1.to_out.0": "blocks.1.self_attn.o",
    "blocks.0.attn2.to_k": "blocks.0.cross_attn.k",
    "blocks.1.attn2.to_v": "blocks.1.cross_attn.v",
    "blocks.1.attn2.to_q": "blocks.1.cross_attn.q",
    "blocks.0.ffn.net.0.proj": "blocks.0.ffn.0",
    "blocks.1.ffn.net.2": "blocks.1.ffn.2",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_proj": "time_projection.1",
    "proj_out": "head.head",
    "patch_embedding": "patch_embedding",  # a Conv3d: conv LoRA factors
}
TARGETS = [
    "blocks.0.attn1.to_q", "blocks.1.attn1.to_out.0", "blocks.0.attn2.to_k", "blocks.1.attn2.to_v",
    "blocks.0.ffn.net.0.proj", "blocks.1.ffn.net.2", "condition_embedder.text_embedder.linear_1",
    "condition_embedder.time_proj", "proj_out", "patch_embedding",
]

# format -> (key prefix of a layer, down suffix, up suffix)
FORMATS = {
    "diffusers": (lambda name: f"transformer.{name}", ".lora_A.weight", ".lora_B.weight"),
    "comfyui": (lambda name: f"diffusion_model.{ORIGINAL[name]}", ".lora_down.weight", ".lora_up.weight"),
    "kohya": (lambda name: "lora_unet_" + ORIGINAL[name].replace(".", "_"), ".lora_down.weight", ".lora_up.weight"),
    "lightx2v": (lambda name: f"diffusion_model.{ORIGINAL[name]}", ".lora_A.weight", ".lora_B.weight"),
}


# ------------------------------------------------------------------------------------------ helpers


def make_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**TINY_WAN)
    with torch.no_grad():  # norms start at 1 and biases at 0: randomise all so no comparison is trivial
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.5)
    return model.to(dtype).eval()


def snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    return torch.equal(a, b)


def assert_same_state(model, expected: dict, skip=()):
    state = model.state_dict()
    assert set(state) == set(expected)
    different = [k for k in expected if k not in skip and not same_tensor(state[k], expected[k])]
    assert not different, f"changed: {different}"


def random_factors(model, names, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    weights = dict(model.named_parameters())
    factors = {}
    for name in names:
        shape = weights[f"{name}.weight"].shape
        down = torch.randn((RANK, *shape[1:]), generator=generator)
        up = torch.randn((shape[0], RANK, *([1] * (len(shape) - 2))), generator=generator)
        factors[name] = (down, up)
    return factors


def lora_delta(down: torch.Tensor, up: torch.Tensor, shape) -> torch.Tensor:
    return (up.reshape(shape[0], RANK) @ down.reshape(RANK, -1)).reshape(shape)


def write_lora(path, fmt: str, factors: dict, alpha=None, extra=None):
    prefix_of, down_suffix, up_suffix = FORMATS[fmt]
    tensors = {}
    for name, (down, up) in factors.items():
        prefix = prefix_of(name)
        tensors[prefix + down_suffix] = down.contiguous()
        tensors[prefix + up_suffix] = up.contiguous()
        if alpha is not None:
            tensors[prefix + ".alpha"] = torch.tensor(float(alpha))
    tensors.update(extra or {})
    save_file(tensors, str(path))
    return path


def expected_after(base: dict, terms) -> dict:
    """base + Σ coef * up @ down for [(factors, coef), ...], in float32 then cast to the base dtype."""
    expected = dict(base)
    deltas = {}
    for factors, coef in terms:
        for name, (down, up) in factors.items():
            key = f"{name}.weight"
            term = lora_delta(down, up, base[key].shape) * coef
            deltas[key] = term if key not in deltas else deltas[key] + term
    for key, delta in deltas.items():
        expected[key] = (base[key].float() + delta).to(base[key].dtype)
    return expected


# ------------------------------------------------------------------------------------------ formats


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_adds_strength_times_scale_times_up_down_on_the_named_layers(tmp_path, fmt):
    model = make_model()
    base = snapshot(model)
    factors = random_factors(model, TARGETS, seed=1)
    lora = load_wan_lora(write_lora(tmp_path / f"{fmt}.safetensors", fmt, factors, alpha=8))

    assert lora.format == fmt
    assert set(lora.patches) == set(TARGETS)
    assert {p.scale for p in lora.patches.values()} == {2.0}  # alpha 8 / rank 4

    assert WanLoraPatcher().set_loras(model, [(lora, 0.75)]) is True
    state = model.state_dict()
    for key, value in base.items():
        name = key.rpartition(".")[0]
        if key.endswith(".weight") and name in factors:
            expected = value + 1.5 * lora_delta(*factors[name], value.shape)
            torch.testing.assert_close(state[key], expected, rtol=1e-6, atol=1e-6)
            assert not torch.equal(state[key], value)
        else:
            assert torch.equal(state[key], value), f"{key} should be untouched"


def test_the_four_formats_of_one_lora_patch_identically(tmp_path):
    results = {}
    for fmt in FORMATS:
        model = make_model()
        factors = random_factors(model, TARGETS, seed=1)
        lora = load_wan_lora(write_lora(tmp_path / f"{fmt}.safetensors", fmt, factors, alpha=8))
        WanLoraPatcher().set_loras(model, [(lora, 0.6)])
        results[fmt] = snapshot(model)
    reference = results.pop("diffusers")
    assert not torch.equal(reference["blocks.0.attn1.to_q.weight"], make_model().state_dict()["blocks.0.attn1.to_q.weight"])
    for fmt, state in results.items():
        assert all(torch.equal(state[k], reference[k]) for k in reference), fmt


def test_without_alpha_the_scale_is_one(tmp_path):
    model = make_model()
    base = snapshot(model)
    factors = random_factors(model, TARGETS[:3], seed=2)
    lora = load_wan_lora(write_lora(tmp_path / "plain.safetensors", "diffusers", factors))
    assert {p.scale for p in lora.patches.values()} == {1.0}
    WanLoraPatcher().set_loras(model, [(lora, 1.25)])
    expected = expected_after(base, [(factors, 1.25)])
    for key in expected:
        torch.testing.assert_close(model.state_dict()[key], expected[key], rtol=1e-6, atol=1e-6)


def test_peft_adapter_names_and_unprefixed_keys_are_read(tmp_path):
    model = make_model()
    down, up = random_factors(model, ["blocks.1.attn2.to_q"], seed=3)["blocks.1.attn2.to_q"]
    save_file({
        "base_model.model.blocks.1.attn2.to_q.lora_A.default.weight": down,
        "base_model.model.blocks.1.attn2.to_q.lora_B.default.weight": up,
        "blocks.0.self_attn.q.lora_A.weight": down.clone(),
        "blocks.0.self_attn.q.lora_B.weight": up.clone(),
    }, str(tmp_path / "peft.safetensors"))
    lora = load_wan_lora(tmp_path / "peft.safetensors")
    assert set(lora.patches) == {"blocks.1.attn2.to_q", "blocks.0.attn1.to_q"}
    assert torch.equal(lora.patches["blocks.1.attn2.to_q"].down, down)


# ------------------------------------------------------------------------------------------ applying


def test_two_loras_add_up(tmp_path):
    model = make_model()
    base = snapshot(model)
    first = random_factors(model, TARGETS, seed=1)
    second = random_factors(model, ["blocks.0.attn1.to_q", "blocks.1.ffn.net.2", "blocks.1.attn2.to_q"], seed=2)
    lora_1 = load_wan_lora(write_lora(tmp_path / "a.safetensors", "comfyui", first, alpha=4))      # scale 1
    lora_2 = load_wan_lora(write_lora(tmp_path / "b.safetensors", "diffusers", second, alpha=2))   # scale 0.5
    WanLoraPatcher().set_loras(model, [(lora_1, 1.0), (lora_2, -0.5)])
    expected = expected_after(base, [(first, 1.0), (second, -0.25)])
    state = model.state_dict()
    for key in expected:
        torch.testing.assert_close(state[key], expected[key], rtol=1e-6, atol=1e-6)
    only_first = expected_after(base, [(first, 1.0)])
    assert not torch.allclose(state["blocks.0.attn1.to_q.weight"], only_first["blocks.0.attn1.to_q.weight"])


def test_strength_zero_leaves_every_tensor_identical_even_fp8_layers(tmp_path):
    model = make_model()
    model.blocks[0].attn1.to_q = Fp8Linear.from_linear(model.blocks[0].attn1.to_q, compute_dtype=torch.float32)
    base = snapshot(model)
    lora = load_wan_lora(write_lora(tmp_path / "l.safetensors", "diffusers", random_factors(make_model(), TARGETS, 1)))
    patcher = WanLoraPatcher()
    assert patcher.set_loras(model, [(lora, 0.0)]) is False  # nothing to do at all
    assert_same_state(model, base)
    # and a zero-strength entry beside a real one changes nothing more than the real one alone
    other = load_wan_lora(write_lora(tmp_path / "o.safetensors", "kohya", random_factors(make_model(), TARGETS[1:3], 5)))
    patcher.set_loras(model, [(lora, 0.0), (other, 1.0)])
    with_zero = snapshot(model)
    patcher.set_loras(model, [])
    WanLoraPatcher().set_loras(model, [(other, 1.0)])
    assert_same_state(model, with_zero)


def test_empty_list_restores_bit_exactly_in_bf16_and_a_new_list_starts_from_the_originals(tmp_path):
    model = make_model(dtype=torch.bfloat16)
    base = snapshot(model)
    first = random_factors(model, TARGETS, seed=1)
    second = random_factors(model, TARGETS[2:6], seed=2)
    bias_diff = torch.randn(24)  # on a layer the second LoRA changes only the weight of
    lora_1 = load_wan_lora(write_lora(tmp_path / "a.safetensors", "lightx2v", first, alpha=8,
                                      extra={"diffusion_model.blocks.0.cross_attn.k.diff_b": bias_diff}))
    lora_2 = load_wan_lora(write_lora(tmp_path / "b.safetensors", "kohya", second))
    assert "blocks.0.attn2.to_k" in second
    patcher = WanLoraPatcher()

    patcher.set_loras(model, [(lora_1, 0.3)])
    expected = expected_after(base, [(first, 0.6)])  # float32 sum, one rounding to bf16
    bias = "blocks.0.attn2.to_k.bias"
    expected[bias] = (base[bias].float() + bias_diff * 0.3).to(torch.bfloat16)
    assert_same_state(model, expected)

    assert patcher.set_loras(model, []) is True
    assert_same_state(model, base)  # bf16 (w + d) - d != w: this needs the saved originals

    patcher.set_loras(model, [(lora_1, 0.3)])
    patcher.set_loras(model, [(lora_2, 0.9)])
    assert_same_state(model, expected_after(base, [(second, 0.9)]))
    patcher.set_loras(model, [])
    assert_same_state(model, base)


def test_the_same_list_again_is_a_no_op(tmp_path):
    model = make_model()
    lora = load_wan_lora(write_lora(tmp_path / "l.safetensors", "diffusers", random_factors(model, TARGETS, 1)))
    patcher = WanLoraPatcher()
    assert patcher.set_loras(model, [(lora, 0.5)]) is True
    with torch.no_grad():  # a mark the patcher would wipe if it restored and re-applied
        model.blocks[0].attn1.to_q.weight[0, 0] = 1234.0
    assert patcher.set_loras(model, [(lora, 0.5)]) is False
    assert model.blocks[0].attn1.to_q.weight[0, 0].item() == 1234.0
    assert patcher.set_loras(model, [(lora, 0.25)]) is True
    assert model.blocks[0].attn1.to_q.weight[0, 0].item() != 1234.0


def test_diff_diff_b_and_diff_m_change_norms_biases_and_modulation(tmp_path):
    model = make_model()
    base = snapshot(model)
    generator = torch.Generator().manual_seed(7)
    factors = random_factors(model, ["blocks.0.attn1.to_q"], seed=4)
    # file key -> the model tensor it is a full delta of
    diffs = {
        "diffusion_model.blocks.0.norm3.diff": "blocks.0.norm2.weight",
        "diffusion_model.blocks.0.norm3.diff_b": "blocks.0.norm2.bias",
        "diffusion_model.blocks.1.self_attn.norm_q.diff": "blocks.1.attn1.norm_q.weight",
        "diffusion_model.blocks.0.cross_attn.norm_k.diff": "blocks.0.attn2.norm_k.weight",
        "diffusion_model.blocks.0.self_attn.q.diff_b": "blocks.0.attn1.to_q.bias",
        "diffusion_model.head.head.diff_b": "proj_out.bias",
        "diffusion_model.blocks.1.diff_m": "blocks.1.scale_shift_table",
        "diffusion_model.head.modulation.diff": "scale_shift_table",
        "diffusion_model.patch_embedding.diff": "patch_embedding.weight",
        "diffusion_model.text_embedding.2.diff": "condition_embedder.text_embedder.linear_2.weight",
    }
    extra = {key: torch.randn(base[target].shape, generator=generator) for key, target in diffs.items()}
    lora = load_wan_lora(write_lora(tmp_path / "x.safetensors", "lightx2v", factors, alpha=2, extra=extra))
    assert lora.format == "lightx2v"
    WanLoraPatcher().set_loras(model, [(lora, 0.5)])

    expected = expected_after(base, [(factors, 0.25)])
    for key, target in diffs.items():
        expected[target] = expected[target] + 0.5 * extra[key]
    state = model.state_dict()
    for key in base:
        torch.testing.assert_close(state[key], expected[key], rtol=1e-6, atol=1e-6, msg=key)
    for target in diffs.values():
        assert not torch.equal(state[target], base[target]), target


def test_kohya_flattened_names_map_back_to_the_exact_layers(tmp_path):
    model = make_model()
    flat = {  # flattened key part -> diffusers layer
        "blocks_0_ffn_0": "blocks.0.ffn.net.0.proj",
        "blocks_1_ffn_2": "blocks.1.ffn.net.2",
        "blocks_0_self_attn_o": "blocks.0.attn1.to_out.0",
        "blocks_1_cross_attn_q": "blocks.1.attn2.to_q",
        "text_embedding_2": "condition_embedder.text_embedder.linear_2",
        "time_embedding_0": "condition_embedder.time_embedder.linear_1",
        "time_projection_1": "condition_embedder.time_proj",
        "head_head": "proj_out",
        "blocks_1_attn1_to_v": "blocks.1.attn1.to_v",  # diffusers names, flattened (OneTrainer-style)
    }
    diff_only = {
        "blocks_0_self_attn_norm_q": "blocks.0.attn1.norm_q",
        "blocks_1_cross_attn_norm_k": "blocks.1.attn2.norm_k",
        "blocks_0_norm3": "blocks.0.norm2",
        "blocks_1_modulation": "blocks.1.scale_shift_table",
    }
    factors = random_factors(model, flat.values(), seed=6)
    weights = dict(model.named_parameters())
    tensors = {}
    for flat_name, layer in flat.items():
        tensors[f"lora_unet_{flat_name}.lora_down.weight"], tensors[f"lora_unet_{flat_name}.lora_up.weight"] = factors[layer]
    for flat_name, layer in diff_only.items():
        shape = weights[layer if layer.endswith("scale_shift_table") else f"{layer}.weight"].shape
        tensors[f"lora_unet_{flat_name}.diff"] = torch.randn(shape)
    save_file(tensors, str(tmp_path / "kohya.safetensors"))

    lora = load_wan_lora(tmp_path / "kohya.safetensors")
    assert lora.format == "kohya"
    by_key = {patch.keys[0].split(".")[0][len("lora_unet_"):]: name for name, patch in lora.patches.items()}
    assert by_key == {**flat, **diff_only}
    WanLoraPatcher().set_loras(model, [(lora, 1.0)])  # every layer exists with the right shape


def test_unknown_kohya_name_is_an_error_naming_key_and_file(tmp_path):
    path = tmp_path / "typo.safetensors"
    save_file({
        "lora_unet_blocks_0_self_attn_q.lora_down.weight": torch.zeros(4, 24),
        "lora_unet_blocks_0_self_attn_q.lora_up.weight": torch.zeros(24, 4),
        "lora_unet_blocks_0_self_attn_qkv.lora_down.weight": torch.zeros(4, 24),
        "lora_unet_blocks_0_self_attn_qkv.lora_up.weight": torch.zeros(72, 4),
    }, str(path))
    with pytest.raises(ModelFilesError) as error:
        load_wan_lora(path)
    assert "lora_unet_blocks_0_self_attn_qkv" in str(error.value) and str(path) in str(error.value)


def test_either_naming_is_read_after_any_prefix_and_norm2_norm3_are_told_apart(tmp_path):
    # diffusers `norm2` is the affine cross-attention norm, original `norm3`; diffusers `norm3` and the
    # original `norm2` have no weights. A file may also put diffusers names under `diffusion_model.`.
    down, up = torch.randn(4, 24), torch.randn(24, 4)
    path = tmp_path / "mixed.safetensors"
    save_file({
        "diffusion_model.blocks.0.norm3.diff": torch.randn(24),
        "transformer.blocks.1.norm2.diff": torch.randn(24),
        "diffusion_model.blocks.0.attn2.to_v.lora_A.weight": down,
        "diffusion_model.blocks.0.attn2.to_v.lora_B.weight": up,
    }, str(path))
    assert set(load_wan_lora(path).patches) == {"blocks.0.norm2", "blocks.1.norm2", "blocks.0.attn2.to_v"}
    swapped = tmp_path / "swapped.safetensors"  # the names decide, whatever the prefix suggests
    save_file({"transformer.blocks.0.norm3.diff": torch.randn(24),
               "diffusion_model.blocks.1.norm2.diff": torch.randn(24)}, str(swapped))
    assert set(load_wan_lora(swapped).patches) == {"blocks.0.norm2", "blocks.1.norm2"}
    bad = tmp_path / "weightless.safetensors"  # norm1 has no weights in either naming
    save_file({"diffusion_model.blocks.0.norm1.diff": torch.randn(24),
               "diffusion_model.blocks.0.self_attn.norm_q.diff": torch.randn(24)}, str(bad))
    with pytest.raises(ModelFilesError) as error:
        load_wan_lora(bad)
    assert "diffusion_model.blocks.0.norm1.diff" in str(error.value) and str(bad) in str(error.value)


# ------------------------------------------------------------------------------------------ fp8 layers


def test_fp8_layers_are_patched_through_dequantize_and_restored_to_the_same_bytes(tmp_path):
    model = make_model()
    for parent, child in ((model.blocks[0].attn1, "to_q"), (model.blocks[1].ffn.net, "2")):
        setattr(parent, child, Fp8Linear.from_linear(getattr(parent, child), compute_dtype=torch.float32))
    base = snapshot(model)
    factors = random_factors(make_model(), TARGETS, seed=1)
    bias_delta = torch.randn(24)
    lora = load_wan_lora(write_lora(tmp_path / "l.safetensors", "diffusers", factors, alpha=8,
                                    extra={"transformer.blocks.0.attn1.to_q.diff_b": bias_delta}))
    patcher = WanLoraPatcher()
    patcher.set_loras(model, [(lora, 0.5)])

    for name, layer in (("blocks.0.attn1.to_q", model.blocks[0].attn1.to_q), ("blocks.1.ffn.net.2", model.blocks[1].ffn.net[2])):
        original = base[f"{name}.weight"].float() * base[f"{name}.weight_scale"]
        reference = torch.nn.Linear(layer.in_features, layer.out_features, bias=False)
        reference.weight.data = original + 1.0 * lora_delta(*factors[name], original.shape)
        reference = Fp8Linear.from_linear(reference, compute_dtype=torch.float32)
        assert layer.weight.dtype == torch.float8_e4m3fn
        assert torch.equal(layer.dequantized_weight(torch.float32), reference.dequantized_weight(torch.float32)), name
    assert torch.equal(model.blocks[0].attn1.to_q.bias, base["blocks.0.attn1.to_q.bias"] + 0.5 * bias_delta)
    assert not same_tensor(model.blocks[0].attn1.to_q.weight, base["blocks.0.attn1.to_q.weight"])

    patcher.set_loras(model, [(lora, -1.0)])  # another list: from the original bytes, not from the patched ones
    patcher.set_loras(model, [])
    assert_same_state(model, base)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="diffusers' streamed block offload needs CUDA")
def test_patches_reach_the_copies_kept_by_diffusers_block_offloading(tmp_path):
    # With CUDA streams, group offloading keeps its own pinned CPU copy of every block tensor and onloads
    # from it: a patch written only to the live tensors would be silently lost.
    import copy

    from diffusers.hooks import apply_group_offloading

    cuda = torch.device("cuda")
    model = make_model()
    model.blocks[0].attn1.to_q = Fp8Linear.from_linear(model.blocks[0].attn1.to_q, compute_dtype=torch.float32)
    reference = copy.deepcopy(model).to(cuda)
    apply_group_offloading(model, onload_device=cuda, offload_device=torch.device("cpu"),
                           offload_type="block_level", num_blocks_per_group=1, use_stream=True)
    generator = torch.Generator().manual_seed(3)
    inputs = {
        "hidden_states": torch.randn(1, 16, 2, 8, 8, generator=generator).to(cuda),
        "timestep": torch.tensor([500.0], device=cuda),
        "encoder_hidden_states": torch.randn(1, 8, 32, generator=generator).to(cuda),
    }

    def run(m):
        with torch.no_grad():
            return m(**inputs, return_dict=False)[0].float().cpu()

    base_output = run(reference)
    first = load_wan_lora(write_lora(tmp_path / "a.safetensors", "diffusers", random_factors(make_model(), TARGETS, 1),
                                     extra={"transformer.blocks.1.attn1.to_v.diff_b": torch.randn(24)}))
    second = load_wan_lora(write_lora(tmp_path / "b.safetensors", "kohya", random_factors(make_model(), TARGETS[:4], 2)))
    patcher, reference_patcher = WanLoraPatcher(), WanLoraPatcher()
    for loras in ([(first, 0.5)], [(second, 1.0), (first, -0.5)], []):  # the first before any forward
        patcher.set_loras(model, loras)
        reference_patcher.set_loras(reference, loras)
        expected = run(reference)
        torch.testing.assert_close(run(model), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(run(model), expected, rtol=1e-5, atol=1e-5)  # after an offload round trip
        assert torch.equal(expected, base_output) == (not loras)


# ------------------------------------------------------------------------------------------ errors


def test_shape_mismatch_names_file_key_and_expected_shape_and_changes_nothing(tmp_path):
    model = make_model()
    good = load_wan_lora(write_lora(tmp_path / "good.safetensors", "diffusers", random_factors(model, TARGETS, 1)))
    patcher = WanLoraPatcher()
    patcher.set_loras(model, [(good, 1.0)])
    patched = snapshot(model)
    path = tmp_path / "wide.safetensors"
    save_file({  # a LoRA for a wider model: in-features 40, not 24
        "transformer.blocks.0.attn1.to_k.lora_A.weight": torch.randn(4, 40),
        "transformer.blocks.0.attn1.to_k.lora_B.weight": torch.randn(24, 4),
    }, str(path))
    wide = load_wan_lora(path)
    with pytest.raises(CheckpointMismatchError) as error:
        patcher.set_loras(model, [(good, 1.0), (wide, 1.0)])
    message = str(error.value)
    assert str(path) in message and "transformer.blocks.0.attn1.to_k.lora_A.weight" in message
    assert "(24, 24)" in message and "(4, 24)" in message
    assert_same_state(model, patched)  # the checks come before any change
    assert patcher.set_loras(model, [(good, 1.0)]) is False  # and the applied list is still the old one


def test_a_diff_of_the_wrong_shape_is_refused(tmp_path):
    path = tmp_path / "norm.safetensors"
    save_file({"diffusion_model.blocks.0.norm3.diff": torch.randn(48)}, str(path))
    with pytest.raises(CheckpointMismatchError) as error:
        WanLoraPatcher().set_loras(make_model(), [(load_wan_lora(path), 1.0)])
    assert "diffusion_model.blocks.0.norm3.diff" in str(error.value) and "(24,)" in str(error.value)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("key", [
    "diffusion_model.blocks.0.cross_attn.k_img",   # Wan 2.1 I2V CLIP image branch
    "diffusion_model.img_emb.proj.1",
    "diffusion_model.blocks.7.self_attn.q",        # more blocks than the model has
])
def test_layers_the_model_lacks_are_errors_naming_the_key(tmp_path, key):
    path = tmp_path / "wan21.safetensors"
    save_file({f"{key}.lora_down.weight": torch.randn(4, 24), f"{key}.lora_up.weight": torch.randn(24, 4)}, str(path))
    model = make_model()
    base = snapshot(model)
    with pytest.raises(CheckpointMismatchError) as error:
        WanLoraPatcher().set_loras(model, [(load_wan_lora(path), 1.0)])
    assert key in str(error.value) and str(path) in str(error.value)
    if "img" in key:
        assert "Wan 2.1" in str(error.value)
    assert_same_state(model, base)


@pytest.mark.parametrize("keys", [
    ["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight", "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"],
    ["transformer.transformer_blocks.0.attn1.to_q.lora_A.weight", "transformer.transformer_blocks.0.attn1.to_q.lora_B.weight"],
])
def test_a_lora_for_another_family_is_not_a_wan_lora(tmp_path, keys):
    path = tmp_path / "other.safetensors"
    save_file({keys[0]: torch.randn(4, 24), keys[1]: torch.randn(24, 4)}, str(path))
    with pytest.raises(ModelFilesError) as error:
        load_wan_lora(path)
    assert "not a Wan LoRA" in str(error.value) and str(path) in str(error.value)


@pytest.mark.parametrize("kind,suffixes", [
    ("LoHa", (".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b")),
    ("LoKr", (".lokr_w1", ".lokr_w2")),
])
def test_loha_and_lokr_are_refused_by_name(tmp_path, kind, suffixes):
    path = tmp_path / f"{kind}.safetensors"
    module = "lora_unet_blocks_0_self_attn_q"
    save_file({module + s: torch.randn(4, 4) for s in suffixes} | {module + ".alpha": torch.tensor(4.0)}, str(path))
    with pytest.raises(ModelFilesError) as error:
        load_wan_lora(path)
    message = str(error.value)
    assert kind in message and str(path) in message and module + suffixes[0] in message


def test_factors_that_do_not_fit_together_are_errors(tmp_path):
    path = tmp_path / "ranks.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.randn(4, 24),
               "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.randn(24, 3)}, str(path))
    with pytest.raises(ModelFilesError) as error:
        load_wan_lora(path)
    assert "diffusion_model.blocks.0.self_attn.q.lora_up.weight" in str(error.value)
    half = tmp_path / "half.safetensors"
    save_file({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.randn(4, 24)}, str(half))
    with pytest.raises(ModelFilesError) as error:
        load_wan_lora(half)
    assert "transformer.blocks.0.attn1.to_q.lora_A.weight" in str(error.value) and str(half) in str(error.value)


def test_one_patcher_serves_one_model(tmp_path):
    lora = load_wan_lora(write_lora(tmp_path / "l.safetensors", "diffusers", random_factors(make_model(), TARGETS, 1)))
    patcher, first = WanLoraPatcher(), make_model()
    patcher.set_loras(first, [(lora, 1.0)])
    with pytest.raises(InvalidInputError):
        patcher.set_loras(make_model(), [(lora, 1.0)])
    with pytest.raises(InvalidInputError):
        WanLoraPatcher().set_loras(make_model(), [(lora, float("nan"))])


# ------------------------------------------------------------------------------------------ stack and cache


def test_stack_entries_are_frozen_and_split_per_expert():
    stack = (LoraStackEntry("a.safetensors", 1.0, "high"), LoraStackEntry("b.safetensors", 0.5, "low"),
             LoraStackEntry("c.safetensors", -1, "both"))
    assert entries_for_expert(stack, "high") == [("a.safetensors", 1.0), ("c.safetensors", -1.0)]
    assert entries_for_expert(stack, "low") == [("b.safetensors", 0.5), ("c.safetensors", -1.0)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        stack[0].strength = 2.0
    with pytest.raises(InvalidInputError):
        LoraStackEntry("a.safetensors", 1.0, "middle")
    with pytest.raises(InvalidInputError):
        entries_for_expert(stack, "both")


def test_cache_returns_the_same_object_until_the_file_changes(tmp_path):
    clear_lora_cache()
    model = make_model()
    path = write_lora(tmp_path / "l.safetensors", "diffusers", random_factors(model, TARGETS[:2], 1))
    first = load_wan_lora_cached(path)
    assert load_wan_lora_cached(str(path)) is first
    patcher = WanLoraPatcher()
    assert patcher.set_loras(model, [(load_wan_lora_cached(path), 1.0)]) is True
    assert patcher.set_loras(model, [(load_wan_lora_cached(path), 1.0)]) is False

    stat = os.stat(path)
    write_lora(path, "diffusers", random_factors(model, TARGETS[:3], 2))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = load_wan_lora_cached(path)
    assert second is not first and len(second.patches) == 3
    assert patcher.set_loras(model, [(second, 1.0)]) is True
