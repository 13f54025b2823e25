"""scripts/profile_forward.py groups a forward's GPU time by kernel name (the profile itself needs a GPU): our
self-attention kernel apart from the cross-attention's SDPA kernels, whose names also say attention."""

import importlib.util
import sys

import pytest

from pack_paths import PACK_ROOT

sys.path.insert(0, str(PACK_ROOT / "scripts"))
spec = importlib.util.spec_from_file_location("profile_forward", PACK_ROOT / "scripts" / "profile_forward.py")
profile_forward = importlib.util.module_from_spec(spec)
spec.loader.exec_module(profile_forward)

KERNELS = [  # (name as torch.profiler shows it, GPU microseconds)
    ("_fp8_attention_ws_kernel", 5_000_000.0),
    ("_fp8_attention_kernel", 200_000.0),
    ("_quantise_qkv_kernel", 60_000.0),
    ("_column_stats_kernel", 20_000.0),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x128x128_4x1x1_kernel0_0", 100_000.0),
    ("nvjet_qqtst_128x256_64x4_2x1_v_bz_coopA_NNT", 1_200_000.0),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", 30_000.0),
    ("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0", 400_000.0),
    ("Memcpy HtoD (Pageable -> Device)", 1_000.0),
]


def test_our_self_attention_is_apart_from_the_other_attention_kernels():
    groups = profile_forward.group_times(KERNELS)
    assert groups == {"FP8 self-attention (ours)": 5_200_000.0, "FP8 attention's quantisation (ours)": 80_000.0,
                      "other attention": 100_000.0, "matmuls": 1_230_000.0, "everything else": 401_000.0}
    assert list(groups)[-1] == "everything else"


@pytest.mark.parametrize("name, group", [
    ("_fp8_attention_gluon_kernel", "FP8 self-attention (ours)"),
    ("flash_fwd_kernel", "other attention"),
    ("fmha_cutlassF_bf16_aligned_64x128_rf_sm80", "other attention"),  # an attention kernel first, though CUTLASS
    ("triton_poi_fused_gelu_1", "everything else"),
])
def test_kernel_groups_first_match_wins(name, group):
    assert profile_forward.kernel_group(name) == group


def test_group_rows_give_ms_share_and_ms_per_layer():
    lines = profile_forward.group_lines(KERNELS, layers=40)
    assert lines[:2] == ["| group | ms | share | ms per layer |", "| --- | --- | --- | --- |"]
    assert "| FP8 self-attention (ours) | 5200.0 | 74.2 % | 130.00 |" in lines
    assert "| other attention | 100.0 | 1.4 % | 2.50 |" in lines
    assert all(line.endswith("| - |") for line in profile_forward.group_lines(KERNELS, layers=None)[2:])
