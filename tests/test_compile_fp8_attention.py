"""scripts/compile_fp8_attention.py compiles the FP8 attention kernel for Hopper (sm_90) on this CPU machine with
Triton's own ptxas: what the Triton interpreter cannot check (the kernel lowers to Hopper's warpgroup MMAs with
INT8 / e4m3 operands, and the default configs fit two programs on one multiprocessor, which their speed relies
on). An early `return` inside a constexpr branch ran in the interpreter and failed only when compiled: caught
here now."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from pack_paths import PACK_ROOT

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="Triton is not installed (tests/requirements.txt installs it)")


def test_default_configs_compile_for_hopper(tmp_path):
    out = tmp_path / "rows.json"
    configs = ["m64n128w4s3-fastacc-tma", "m128n64w8s3-fastacc"]
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, str(PACK_ROOT / "scripts" / "compile_fp8_attention.py"), "--configs", *configs,
         "--head-dims", "64", "128", "--qk-dtype", "int8", "fp8", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {(row["config"], row["head_dim"], row["qk_dtype"]): row for row in json.loads(out.read_text())}
    assert len(rows) == 8 and not any("error" in row for row in rows.values())
    for (config, dim, qk_dtype), row in rows.items():
        qk_mma = "s32.s8.s8" if qk_dtype == "int8" else "f32.e4m3.e4m3"
        assert any(shape.endswith(qk_mma) for shape in row["mma"]), row["mma"]
        assert any(shape.endswith("f32.e4m3.e4m3") for shape in row["mma"]), row["mma"]  # P.V in FP8
        assert row["spill_bytes"] == 0
    for dim in (64, 128):  # the defaults: two programs per multiprocessor at least
        assert rows[("m64n128w4s3-fastacc-tma", dim, "int8")]["programs_per_sm"] >= 2
    loop = rows[("m64n128w4s3-fastacc-tma", 128, "int8")]["main_loop"]
    # a 64x128 score tile over 128 threads: 64 exp2 per thread and key block (+ the rescale factors), and the
    # 64 probabilities go to e4m3 two per conversion
    assert 64 <= loop["special_function"] <= 70 and loop["fp8_conversions"] == 32
    assert loop["instructions"] > loop["special_function"] + loop["fma_pipe"]
    assert "| m64n128w4s3-fastacc-tma | 128 | int8 |" in result.stdout


def test_short_sequence_defaults_fit_more_programs_per_multiprocessor(tmp_path):
    """The register caps the short-sequence defaults exist for: three programs per multiprocessor at head dim 128
    (168 registers, two stages), four at head dim 64 (128 registers), without spilling."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    rows = {}
    for config, dim in (("m64n128w4s2-fastacc-tma-r168", "128"), ("m64n128w4s3-fastacc-tma-r128", "64")):
        out = tmp_path / f"{config}.json"
        result = subprocess.run(
            [sys.executable, str(PACK_ROOT / "scripts" / "compile_fp8_attention.py"), "--configs", config,
             "--head-dims", dim, "--json", str(out)], env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        rows[config] = json.loads(out.read_text())[0]
    r168, r128 = rows["m64n128w4s2-fastacc-tma-r168"], rows["m64n128w4s3-fastacc-tma-r128"]
    assert r168["registers"] <= 168 and r168["spill_bytes"] == 0 and r168["programs_per_sm"] == 3
    assert r128["registers"] <= 128 and r128["spill_bytes"] == 0 and r128["programs_per_sm"] == 4
