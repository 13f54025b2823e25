"""The Wan transformer key map converts the full original key lists exactly onto diffusers' model."""

import json

import pytest
import torch
from diffusers import WanTransformer3DModel

from pack_paths import SHARED_REFERENCE
from reelsmith.engine.models import wan_keys
from reelsmith.engine.models.wan_variants import WAN_VARIANTS, detect_wan_variant

REFERENCE = json.loads((SHARED_REFERENCE / "wan22_original_keys.json").read_text())["variants"]
VARIANT_OF_REFERENCE = {"wan2.2_t2v_a14b_expert": "t2v-a14b", "wan2.2_i2v_a14b_expert": "i2v-a14b",
                        "wan2.2_ti2v_5b": "ti2v-5b"}


@pytest.mark.parametrize("reference_name", sorted(VARIANT_OF_REFERENCE))
def test_full_key_list_converts_onto_meta_model(reference_name):
    variant = WAN_VARIANTS[VARIANT_OF_REFERENCE[reference_name]]
    original = REFERENCE[reference_name]["keys"]
    config = {k: v for k, v in variant.transformer_config_dict().items() if not k.startswith("_")}
    with torch.device("meta"):
        model = WanTransformer3DModel(**config)
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    converted = {wan_keys.original_key_to_diffusers(k): shape for k, shape in original.items()}
    assert None not in converted
    assert converted == expected
    assert sum(torch.Size(s).numel() for s in original.values()) == int(REFERENCE[reference_name]["params"])
    # and back: diffusers names -> the original list, one to one
    assert {wan_keys.diffusers_key_to_original(k) for k in expected} == set(original)


@pytest.mark.parametrize("reference_name", sorted(VARIANT_OF_REFERENCE))
def test_variant_detected_from_weights(reference_name):
    shape = REFERENCE[reference_name]["keys"]["patch_embedding.weight"]
    assert detect_wan_variant(shape, "file").name == VARIANT_OF_REFERENCE[reference_name]


def test_comfyui_prefix_is_stripped():
    assert wan_keys.original_key_to_diffusers("model.diffusion_model.blocks.3.self_attn.o.weight") == \
        "blocks.3.attn1.to_out.0.weight"
    assert wan_keys.original_key_to_diffusers("blocks.3.norm3.bias") == "blocks.3.norm2.bias"
    assert wan_keys.original_key_to_diffusers("blocks.0.modulation") == "blocks.0.scale_shift_table"
    assert wan_keys.original_key_to_diffusers("vace_blocks.0.before_proj.weight") is None


def test_wan21_and_unknown_widths_are_refused_with_reason():
    from reelsmith.engine.errors import ModelFilesError
    with pytest.raises(ModelFilesError, match="Wan 2.1"):
        detect_wan_variant([1536, 16, 1, 2, 2], "wan2.1_t2v_1.3B.safetensors")
    with pytest.raises(ModelFilesError, match="not a Wan transformer"):
        detect_wan_variant([3072, 48], "x.safetensors")
