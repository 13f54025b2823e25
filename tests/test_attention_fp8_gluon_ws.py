"""The warp-specialized Gluon FP8 attention kernel (engine/models/attention_fp8_gluon_ws.py). Gluon has no CPU
interpreter, so its arithmetic is checked on a GPU (scripts/check_fp8_attention.py against exact attention). Here:
it compiles for Hopper into the structure it exists for: three partitions in 12 warps (two consumer warpgroups,
a loader), registers moved from the loader to the consumers at run time, no spills, INT8 Q.K^T and e4m3 P.V."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from pack_paths import PACK_ROOT

HOPPER_SHARED_MEMORY = 227 * 1024

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="Triton is not installed (tests/requirements.txt installs it)")


def test_warp_specialized_kernel_compiles_for_hopper_with_its_partitions(tmp_path):
    out = tmp_path / "rows.json"
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, str(PACK_ROOT / "scripts" / "compile_fp8_attention.py"), "--configs",
         "m64n128w4s3-fastacc-tma", "--head-dims", "64", "128", "--gluon-ws", "s2", "s3", "s3-scores", "s3-paired",
         "s3-paired-slot", "s2-scores-n256", "s3-overlap", "s3-overlap-regs", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {(row["config"], row["head_dim"]): row for row in json.loads(out.read_text())}
    assert {key for key in rows if key[0].startswith("gluon-ws")} == {
        (f"gluon-ws-{name}", dim) for name in ("s2", "s3", "s3-scores", "s3-paired", "s3-paired-slot", "s2-scores-n256",
                                             "s3-overlap", "s3-overlap-regs")
        for dim in (64, 128)}
    for (config, dim), row in rows.items():
        if not config.startswith("gluon-ws"):
            continue
        assert "error" not in row, row
        assert row["warps"] == 12 and row["programs_per_sm"] == 1  # 4 + 4 consumer warps, the loader's warpgroup
        assert row["shared_bytes"] <= HOPPER_SHARED_MEMORY
        # no spill in the main loop; with P carried across it in registers ('overlap-regs') ptxas keeps one value
        # of the prologue in local memory until the epilogue (a few bytes, once per program)
        assert row["main_loop"]["local_memory_ops"] == 0, (config, dim)
        assert row["spill_bytes"] <= (16 if "overlap-regs" in config else 0), row["spill_bytes"]
        # launched at 168 registers a thread; the consumers rise to 240, the loader drops to 24
        assert row["registers"] == 168 and {24, 240} <= set(row["register_reallocations"])
        assert any(shape.endswith("s32.s8.s8") for shape in row["mma"])      # Q.K^T in INT8
        assert any(shape.endswith("f32.e4m3.e4m3") for shape in row["mma"])  # P.V in e4m3
    # one more K/V slot: a K and a V block of 128 x 128 bytes more shared memory at head dim 128 (and its barriers)
    growth = rows[("gluon-ws-s3", 128)]["shared_bytes"] - rows[("gluon-ws-s2", 128)]["shared_bytes"]
    assert 32 * 1024 <= growth <= 32 * 1024 + 256
    # 256-key blocks: each of the two slots holds a K and a V block twice as large
    growth = rows[("gluon-ws-s2-scores-n256", 128)]["shared_bytes"] - rows[("gluon-ws-s2", 128)]["shared_bytes"]
    assert 64 * 1024 - 256 <= growth <= 64 * 1024 + 256
    # 'overlap' stages each consumer's P of two blocks in shared memory (64 x 128 e4m3 each); the other modes
    # keep P in registers and allocate none
    growth = rows[("gluon-ws-s3-overlap", 128)]["shared_bytes"] - rows[("gluon-ws-s3-paired", 128)]["shared_bytes"]
    assert 32 * 1024 - 256 <= growth <= 32 * 1024 + 256
    # 'overlap-regs' leaves P.V in flight through the next block's softmax: every exp2 of the main loop is issued
    # while an MMA runs ('paired' waits for its MMAs first)
    for dim in (64, 128):
        paired, overlapped = (rows[(f"gluon-ws-{name}", dim)]["main_loop"] for name in ("s3-paired", "s3-overlap-regs"))
        assert paired["exp2_during_mma"] == 0
        assert overlapped["exp2_during_mma"] == overlapped["special_function"] >= 64
    # the Triton kernel it is measured against: 4 warps a program, no reallocation
    triton_row = rows[("m64n128w4s3-fastacc-tma", 128)]
    assert triton_row["warps"] == 4 and triton_row["register_reallocations"] == []


def test_row_sums_on_the_tensor_cores_are_a_mode_of_the_register_overlap_only():
    from reelsmith.engine.models.attention_fp8_gluon_ws import GLUON_WS_CONFIGS, GluonWsConfig

    summed = GluonWsConfig(3, "overlap-regs", mma_sums=True)
    assert summed.name == "s3-overlap-regs-msum" and GLUON_WS_CONFIGS[summed.name] == summed
    assert summed.kernel_constants()["MMA_SUMS"] and summed.kernel_constants()["OVERLAP_REGS"]
    assert not GLUON_WS_CONFIGS["s3-paired"].kernel_constants()["MMA_SUMS"]
    with pytest.raises(ValueError, match="overlap-regs"):
        GluonWsConfig(3, "paired", mma_sums=True)


def test_three_consumer_configs_compile_for_head_dim_64(tmp_path):
    """Three consumer warpgroups (192-row programs, 16 warps) for head dim 64, where the accumulator is half as
    large: 160 registers each after the loader's 24, and still no spill in the main loop."""
    out = tmp_path / "rows.json"
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, str(PACK_ROOT / "scripts" / "compile_fp8_attention.py"), "--configs",
         "m64n128w4s3-fastacc-tma", "--head-dims", "64", "--gluon-ws", "s3-paired", "s3-paired-c3",
         "s3-overlap-regs-c3", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {row["config"]: row for row in json.loads(out.read_text())}
    for config in ("gluon-ws-s3-paired-c3", "gluon-ws-s3-overlap-regs-c3"):
        row = rows[config]
        assert "error" not in row, row
        assert row["warps"] == 16 and row["programs_per_sm"] == 1  # 3 x 4 consumer warps, the loader's warpgroup
        assert row["registers"] == 128 and {24, 160} <= set(row["register_reallocations"])
        assert row["spill_bytes"] <= 16 and row["main_loop"]["local_memory_ops"] == 0, row
    # a third consumer's Q tile (64 rows x 64 bytes) is all the shared memory it adds
    growth = rows["gluon-ws-s3-paired-c3"]["shared_bytes"] - rows["gluon-ws-s3-paired"]["shared_bytes"]
    assert 4 * 1024 <= growth <= 4 * 1024 + 256
    overlapped = rows["gluon-ws-s3-overlap-regs-c3"]["main_loop"]
    assert overlapped["exp2_during_mma"] == overlapped["special_function"] >= 64


def test_consumer_count_configs():
    from reelsmith.engine.models.attention_fp8_gluon_ws import GLUON_WS_CONFIGS, GluonWsConfig

    three = GLUON_WS_CONFIGS["s3-paired-c3"]
    assert three == GluonWsConfig(3, "paired", consumers=3) and three.block_m == 192
    assert three.kernel_constants()["CONSUMERS"] == 3 and three.kernel_constants()["CONSUMER_REGS"] == 160
    assert three.launch_options()["maxnreg"] == 128
    two = GLUON_WS_CONFIGS["s3-paired"]
    assert two.block_m == 128 and two.kernel_constants()["CONSUMER_REGS"] == 240
    assert two.launch_options()["maxnreg"] == 168
    with pytest.raises(ValueError, match="consumers must be one of"):
        GluonWsConfig(3, "paired", consumers=4)


def test_three_consumers_refuse_head_dim_128_before_any_gpu_work():
    import torch

    from reelsmith.engine.errors import InvalidInputError
    from reelsmith.engine.models.attention_fp8_gluon_ws import GLUON_WS_CONFIGS, gluon_ws_fp8_attention

    q = torch.zeros(1, 256, 2, 128, dtype=torch.bfloat16)
    with pytest.raises(InvalidInputError, match="s3-paired-c3 takes head dim 64 only"):
        gluon_ws_fp8_attention(q, q, q, "bshd", GLUON_WS_CONFIGS["s3-paired-c3"])
