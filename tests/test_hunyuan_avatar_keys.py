"""HunyuanVideo-Avatar key conversion (vendor <-> ours) and strict checkpoint loading in every format."""

import json

import pytest
import torch

from reelsmith.engine.errors import CheckpointMismatchError, InvalidInputError, ModelFilesError
from reelsmith.engine.models import checkpoint_io, hunyuan_avatar_keys as keys
from reelsmith.engine.models.hunyuan_avatar_checkpoint import (
    FORMAT_SAFETENSORS, FORMAT_VENDOR, FORMAT_VENDOR_FP8, FP8_MAP_FILE, find_avatar_transformer_files,
    load_hunyuan_avatar_transformer, shipped_config,
)
from reelsmith.engine.models.hunyuan_avatar_transformer import HunyuanAvatarTransformer
from reelsmith.engine.models.precision import Fp8Linear

from pack_paths import SHARED_REFERENCE
from tiny_hunyuan_avatar import (
    HIDDEN, TINY_CONFIG, inputs, quantize, snap_to_fp8, tiny_avatar, transformers_folder, write_all_formats,
    write_safetensors, write_vendor_fp8, write_vendor_pt,
)

REFERENCE = json.loads((SHARED_REFERENCE / "hunyuan_avatar_transformer_keys.json").read_text())
F32 = torch.float32
BLOCK_LINEARS = 34  # nn.Linear layers inside the tiny model's double and single blocks


def full_size_meta_model():
    with checkpoint_io.empty_weights():
        return HunyuanAvatarTransformer(**shipped_config())


def forward(model, batch=2):
    with torch.no_grad():
        return model(**inputs(batch=batch)).float()


# ------------------------------------------------------------------ full size, meta device


def test_full_size_vendor_keys_map_onto_every_parameter():
    model = full_size_meta_model()
    vendor = {k: torch.empty(v, device="meta") for k, v in REFERENCE["keys"].items()}
    assert len(vendor) == 946
    ours = keys.vendor_to_ours(vendor, 3072, "reference")
    params = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(ours) == set(params)  # nothing missing, nothing left over
    assert {k: tuple(v.shape) for k, v in ours.items()} == params
    assert sum(p.numel() for p in model.parameters()) == REFERENCE["total_params"] == 12_991_493_184
    # and back: the vendor keys and shapes a full-size model expects are exactly the reference's
    assert keys.expected_vendor_shapes(model) == {k: tuple(v) for k, v in REFERENCE["keys"].items()}


def test_shipped_config_matches_the_vendor_structure():
    config = shipped_config()
    assert (config["num_layers"], config["num_single_layers"], config["num_attention_heads"],
            config["attention_head_dim"]) == (20, 40, 24, 128)
    assert config["rope_axes_dim"] == [16, 56, 56] and config["rope_theta"] == 256.0
    assert REFERENCE["keys"]["audio_proj.proj1.weight"] == [1024, config["audio_window"] * config["audio_layers"]
                                                            * config["audio_channels"]]
    assert sum(k.startswith("audio_adapter_blocks.") and k.endswith("to_q.weight") for k in REFERENCE["keys"]) == 10


# ------------------------------------------------------------------ the conversion rules


def vendor_tensors(seed=0):
    model = tiny_avatar(seed)
    return model, {k: v.clone() for k, v in keys.ours_to_vendor(model.state_dict()).items()}


def test_round_trip_is_exact():
    model, vendor = vendor_tensors()
    ours = keys.vendor_to_ours(vendor, HIDDEN, "test")
    assert set(ours) == set(model.state_dict())
    assert all(torch.equal(ours[k], v) for k, v in model.state_dict().items())
    back = keys.ours_to_vendor(ours)
    assert set(back) == set(vendor) and all(torch.equal(back[k], vendor[k]) for k in vendor)


def test_fused_tensors_are_split_in_vendor_row_order():
    _, vendor = vendor_tensors()
    ours = keys.vendor_to_ours(vendor, HIDDEN, "test")
    qkv = vendor["double_blocks.1.img_attn_qkv.weight"]
    assert torch.equal(ours["transformer_blocks.1.attn.to_q.weight"], qkv[:HIDDEN])
    assert torch.equal(ours["transformer_blocks.1.attn.to_k.weight"], qkv[HIDDEN:2 * HIDDEN])
    assert torch.equal(ours["transformer_blocks.1.attn.to_v.weight"], qkv[2 * HIDDEN:])
    txt = vendor["double_blocks.0.txt_attn_qkv.bias"]
    assert torch.equal(ours["transformer_blocks.0.attn.add_k_proj.bias"], txt[HIDDEN:2 * HIDDEN])
    refiner = vendor["txt_in.individual_token_refiner.blocks.0.self_attn_qkv.weight"]
    assert torch.equal(ours["context_embedder.token_refiner.refiner_blocks.0.attn.to_v.weight"], refiner[2 * HIDDEN:])
    linear1 = vendor["single_blocks.0.linear1.weight"]
    assert linear1.shape[0] == 3 * HIDDEN + 4 * HIDDEN
    assert torch.equal(ours["single_transformer_blocks.0.attn.to_k.weight"], linear1[HIDDEN:2 * HIDDEN])
    assert torch.equal(ours["single_transformer_blocks.0.proj_mlp.weight"], linear1[3 * HIDDEN:])
    # the final modulation is stored (shift, scale); diffusers' AdaLayerNormContinuous reads (scale, shift)
    final = vendor["final_layer.adaLN_modulation.1.weight"]
    assert torch.equal(ours["norm_out.linear.weight"][:HIDDEN], final[HIDDEN:])
    assert torch.equal(ours["norm_out.linear.weight"][HIDDEN:], final[:HIDDEN])
    assert torch.equal(ours["motion_exp.linear_2.weight"], vendor["motion_exp.mlp.2.weight"])


def test_prefix_is_accepted():
    _, vendor = vendor_tensors()
    plain = keys.vendor_to_ours(vendor, HIDDEN, "test")
    prefixed = keys.vendor_to_ours({"model.diffusion_model." + k: v for k, v in vendor.items()}, HIDDEN, "test")
    assert set(prefixed) == set(plain) and all(torch.equal(prefixed[k], plain[k]) for k in plain)


@pytest.mark.parametrize("stray", ["double_blocks.0.img_attn_mystery.weight", "guidance_in.mlp.0.weight",
                                   "double_blocks.0.img_attn_qkv.scale", "emotion_proj.weight"])
def test_unknown_key_is_named(stray):
    _, vendor = vendor_tensors()
    vendor[stray] = torch.zeros(3)
    with pytest.raises(CheckpointMismatchError) as error:
        keys.vendor_to_ours(vendor, HIDDEN, "avatar.pt")
    message = str(error.value)
    assert stray in message and "avatar.pt" in message and keys.LAYOUT_VENDOR in message


def test_a_fused_tensor_that_cannot_be_split_is_named():
    _, vendor = vendor_tensors()
    vendor["double_blocks.0.img_attn_qkv.weight"] = torch.zeros(3 * HIDDEN + 1, HIDDEN)
    with pytest.raises(CheckpointMismatchError, match=r"avatar.pt: key 'double_blocks.0.img_attn_qkv.weight' has shape \[61, 20\]"):
        keys.vendor_to_ours(vendor, HIDDEN, "avatar.pt")


def test_fp8_map_module_names_map_to_our_linears():
    assert keys.vendor_module_to_ours("single_blocks.3.linear1", 3072, 21504) == [
        ("single_transformer_blocks.3.attn.to_q", 0, 3072), ("single_transformer_blocks.3.attn.to_k", 3072, 3072),
        ("single_transformer_blocks.3.attn.to_v", 6144, 3072), ("single_transformer_blocks.3.proj_mlp", 9216, 12288)]
    assert keys.vendor_module_to_ours("double_blocks.0.txt_mlp.fc2", 3072, 3072) == [
        ("transformer_blocks.0.ff_context.net.2", 0, 3072)]
    assert keys.vendor_module_to_ours("double_blocks.0.nothing", 3072, 3072) is None


def test_other_families_are_recognised():
    wan = json.loads((SHARED_REFERENCE / "wan22_original_keys.json").read_text())
    assert "Wan" in keys.describe_foreign_checkpoint(wan["variants"]["wan2.2_t2v_a14b_expert"]["keys"])
    ltx_keys = json.loads((SHARED_REFERENCE / "ltxv_original_keys.json").read_text())["variants"]["ltxv_2b_0.9.x"]["keys"]
    assert "LTX-Video" in keys.describe_foreign_checkpoint(["model.diffusion_model." + k for k in ltx_keys])
    backbone = [k for k in REFERENCE["keys"] if not k.startswith(
        ("ref_in", "audio", "motion", "fps_proj", "before_proj"))] + ["guidance_in.mlp.0.weight"]
    assert "HunyuanVideo guidance-distilled" in keys.describe_foreign_checkpoint(backbone)
    diffusers_hunyuan = [k for k in full_size_meta_model().state_dict() if not k.startswith(("ref_in", "audio", "motion"))]
    assert "HunyuanVideo transformer (diffusers layout)" in keys.describe_foreign_checkpoint(diffusers_hunyuan)
    assert keys.describe_foreign_checkpoint(REFERENCE["keys"]) is None


# ------------------------------------------------------------------ loading every format


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("avatar")
    model = tiny_avatar()
    files = write_all_formats(model, root)
    return model, root, files


def test_every_format_loads_to_identical_outputs(written):
    model, root, files = written
    expected = forward(model)
    for name in ("pt", "fp8", "safetensors", "prefixed", "ours"):
        loaded = load_hunyuan_avatar_transformer(files[name], dtype=F32)
        assert all(not p.is_meta for p in loaded.model.parameters())
        assert torch.equal(forward(loaded.model), expected), name
    # the weights did change something: another random model gives another output
    assert not torch.allclose(forward(tiny_avatar(seed=5)), expected)


def test_vendor_folder_layout_is_found(written):
    _, root, files = written
    assert find_avatar_transformer_files(root).format == FORMAT_VENDOR
    assert find_avatar_transformer_files(root / "ckpts").weights == files["pt"]
    fp8 = find_avatar_transformer_files(root, prefer_fp8=True)
    assert fp8.format == FORMAT_VENDOR_FP8 and fp8.weights == files["fp8"] and fp8.fp8_map.name == FP8_MAP_FILE
    assert find_avatar_transformer_files(files["safetensors"]).format == FORMAT_SAFETENSORS
    loaded = load_hunyuan_avatar_transformer(root, prefer_fp8=True, dtype=F32)
    assert loaded.files.format == FORMAT_VENDOR_FP8
    # every Linear of the blocks, split as ours: per double block img/txt modulation, q, k, v, out, fc1, fc2
    # (14), per single block modulation, q, k, v, mlp in, out (6)
    assert len(loaded.quantized) == BLOCK_LINEARS == 2 * 14 + 6
    weight, scale = loaded.quantized["transformer_blocks.0.attn.to_k"]
    assert weight.dtype == torch.float8_e4m3fn and weight.shape == (HIDDEN, HIDDEN) and scale.ndim == 0


def test_fp8_pair_kept_as_fp8_storage(written):
    model, _, files = written
    with pytest.raises(InvalidInputError, match="bfloat16"):
        load_hunyuan_avatar_transformer(files["fp8"], keep_fp8=True, dtype=F32)
    loaded = load_hunyuan_avatar_transformer(files["fp8"], keep_fp8=True, dtype=torch.bfloat16)
    layers = [m for m in loaded.model.modules() if isinstance(m, Fp8Linear)]
    assert len(layers) == BLOCK_LINEARS and loaded.model.single_transformer_blocks[0].proj_mlp in layers
    assert not any(isinstance(m, torch.nn.Linear) for m in loaded.model.transformer_blocks.modules())
    reference = dict(model.named_modules())
    for name, module in loaded.model.named_modules():
        if isinstance(module, Fp8Linear):  # the fp8 values and scale as stored: exactly the snapped weights
            assert torch.equal(module.dequantized_weight(F32), reference[name].weight)
    adapter = loaded.model.audio_adapter_blocks[0].to_q
    assert type(adapter) is torch.nn.Linear and adapter.weight.dtype == torch.bfloat16  # outside the blocks: not fp8
    out, expected = forward(loaded.model), forward(model)
    assert torch.nn.functional.cosine_similarity(out.flatten(), expected.flatten(), dim=0) > 0.99


def test_vendor_scales_are_applied_in_bf16(tmp_path):
    """The vendor multiplies in the model dtype: a float32 scale is rounded to bf16 before use."""
    model = tiny_avatar()
    vendor = snap_to_fp8(model)
    folder = transformers_folder(tmp_path)
    path, map_path = write_vendor_fp8(vendor, folder)
    scales = torch.load(map_path, weights_only=True)["module"]
    scales = {k: v * (1 + 2 ** -12) for k, v in scales.items()}  # not representable in bf16
    torch.save({"module": scales}, map_path)
    loaded = load_hunyuan_avatar_transformer(path, dtype=F32)
    _, scale = loaded.quantized["transformer_blocks.0.attn.to_q"]
    assert scale.item() == scales["double_blocks.0.img_attn_qkv"].to(torch.bfloat16).item()
    assert torch.equal(forward(loaded.model), forward(model))


# ------------------------------------------------------------------ bad files


def _vendor_file(tmp_path, change):
    model = tiny_avatar()
    vendor = {k: v.clone() for k, v in keys.ours_to_vendor(model.state_dict()).items()}
    change(vendor)
    return write_vendor_pt(vendor, tmp_path / "mp_rank_00_model_states.pt")


@pytest.mark.parametrize("change, expected", [
    (lambda sd: sd.pop("double_blocks.1.txt_mlp.fc2.bias"), "missing key 'double_blocks.1.txt_mlp.fc2.bias'"),
    (lambda sd: sd.update({"single_blocks.1.linear2.weight": torch.zeros(HIDDEN, 5 * HIDDEN)}),
     "unexpected key 'single_blocks.1.linear2.weight'"),
    (lambda sd: sd.update({"before_proj.weight": torch.zeros(HIDDEN, HIDDEN + 1)}),
     "key 'before_proj.weight' has shape [20, 21], expected [20, 20]"),
    (lambda sd: sd.update({"audio_adapter_blocks.0.to_kv.weight": torch.zeros(8, HIDDEN)}),
     "key 'audio_adapter_blocks.0.to_kv.weight' has shape [8, 20], expected [16, 20]"),
])
def test_bad_keys_are_named_with_file_and_layout(tmp_path, change, expected):
    path = _vendor_file(tmp_path, change)
    with pytest.raises(CheckpointMismatchError) as error:
        load_hunyuan_avatar_transformer(path)
    message = str(error.value)
    assert expected in message and str(path) in message
    assert FORMAT_VENDOR in message and keys.LAYOUT_VENDOR in message


def test_wrong_family_says_what_the_file_looks_like(tmp_path):
    wan = write_safetensors({"patch_embedding.weight": torch.zeros(4, 4, 1, 2, 2),
                             "blocks.0.self_attn.q.weight": torch.zeros(4, 4)}, tmp_path / "wan.safetensors")
    with pytest.raises(ModelFilesError, match=r"wan.safetensors: this file looks like a Wan transformer"):
        load_hunyuan_avatar_transformer(wan)
    ltx = write_safetensors({"model.diffusion_model.patchify_proj.weight": torch.zeros(4, 4)}, tmp_path / "ltx.safetensors")
    with pytest.raises(ModelFilesError, match="looks like an LTX-Video checkpoint"):
        load_hunyuan_avatar_transformer(ltx)
    vendor = {k: v for k, v in keys.ours_to_vendor(tiny_avatar().state_dict()).items()
              if not k.startswith(("ref_in", "audio", "motion", "fps_proj", "before_proj"))}
    t2v = write_vendor_pt(vendor, tmp_path / "hunyuan_t2v.pt")
    with pytest.raises(ModelFilesError, match="HunyuanVideo .* without the avatar modules"):
        load_hunyuan_avatar_transformer(t2v)


def test_truncated_files_are_named(written, tmp_path):
    _, _, files = written
    for name in ("pt", "safetensors"):
        data = files[name].read_bytes()
        broken = tmp_path / files[name].name
        broken.write_bytes(data[: len(data) // 2])
        checkpoint_io.write_config_hint(broken, TINY_CONFIG)
        with pytest.raises(ModelFilesError, match=f"{broken}.*(truncated or corrupt|cannot be read)"):
            load_hunyuan_avatar_transformer(broken)


def test_fp8_pair_problems(tmp_path):
    vendor = snap_to_fp8(tiny_avatar())
    folder = transformers_folder(tmp_path)
    path, map_path = write_vendor_fp8(vendor, folder)
    scales = torch.load(map_path, weights_only=True)["module"]

    map_path.unlink()
    with pytest.raises(ModelFilesError, match=f"{path}.*scale map .*{FP8_MAP_FILE}.* missing"):
        load_hunyuan_avatar_transformer(path)

    torch.save({"module": {k: v for k, v in scales.items() if k != "single_blocks.0.linear2"}}, map_path)
    with pytest.raises(CheckpointMismatchError, match="'single_blocks.0.linear2.weight' has no scale"):
        load_hunyuan_avatar_transformer(path)

    torch.save({"module": {**scales, "before_proj": torch.tensor(1.0)}}, map_path)
    with pytest.raises(CheckpointMismatchError, match="scale for 'before_proj', which is not an fp8 weight"):
        load_hunyuan_avatar_transformer(path)

    torch.save({"module": {**scales, "double_blocks.0.img_mod.linear": torch.ones(3)}}, map_path)
    with pytest.raises(CheckpointMismatchError, match="'double_blocks.0.img_mod.linear' has shape \\[3\\]"):
        load_hunyuan_avatar_transformer(path)

    # fp8 weights in a single file without any scale would load ~1000x off: refused
    unscaled = {k: (quantize(v)[0] if k == "double_blocks.0.img_mlp.fc1.weight" else v) for k, v in vendor.items()}
    single = write_safetensors(unscaled, tmp_path / "unscaled.safetensors")
    with pytest.raises(CheckpointMismatchError, match="'double_blocks.0.img_mlp.fc1.weight' is stored as fp8 without a scale"):
        load_hunyuan_avatar_transformer(single)


def test_missing_checkpoint_folder_says_what_to_download(tmp_path):
    with pytest.raises(ModelFilesError, match="hf download tencent/HunyuanVideo-Avatar"):
        find_avatar_transformer_files(tmp_path)
