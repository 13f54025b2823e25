"""The Gluon FP8 attention kernel (engine/models/attention_fp8_gluon.py), the FP8 implementation 'gluon'. Gluon has
no CPU interpreter, so its arithmetic is checked on a GPU (scripts/check_fp8_attention.py, kernel mode, against
exact attention). Here: it compiles for Hopper with the structure it exists for (both MMAs of a key block in
flight while the next block's softmax runs, two MMA waits per key block, nothing serialised by ptxas). Choosing it where it cannot
run: tests/test_attention_backend.py."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from pack_paths import PACK_ROOT

GLUON_CONFIGS = ("m64k2v2", "m64k2v3", "m128k2v2")

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="Triton is not installed (tests/requirements.txt installs it)")


@needs_triton
def test_gluon_kernel_compiles_for_hopper_with_the_scores_in_flight_during_the_softmax(tmp_path):
    out = tmp_path / "rows.json"
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, str(PACK_ROOT / "scripts" / "compile_fp8_attention.py"), "--configs",
         "m64n128w4s3-fastacc-tma", "--head-dims", "64", "128", "--gluon", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads(out.read_text())
    gluon_rows = [row for row in rows if row["config"].startswith("gluon-")]
    assert sorted({row["config"] for row in gluon_rows}) == sorted(f"gluon-{name}" for name in GLUON_CONFIGS)
    assert len(gluon_rows) == 2 * len(GLUON_CONFIGS) and not any("error" in row for row in gluon_rows)
    for row in gluon_rows:
        # two warpgroups per multiprocessor: two 64-row programs or one 128-row program
        warpgroups = row["programs_per_sm"] * (2 if row["config"].startswith("gluon-m128") else 1)
        assert row["spill_bytes"] == 0 and warpgroups >= 2
        assert any(shape.endswith("s32.s8.s8") for shape in row["mma"])       # Q.K^T in INT8
        assert any(shape.endswith("f32.e4m3.e4m3") for shape in row["mma"])   # P.V in e4m3
        loop = row["main_loop"]
        # per key block: wait for Q.K^T leaving P.V in flight, then for P.V (ptxas serialising the MMAs would put
        # one after each of the 8); at least half of the block's 64 softmax exp2 per thread issued while an MMA
        # runs (the Triton kernel: none)
        assert loop["mma_waits"] == 2
        assert loop["exp2_during_mma"] >= 32
        assert loop["instructions"] < 700  # P through shared memory: no register repacking of e4m3 pairs (786)
    triton_row = next(row for row in rows if row["config"] == "m64n128w4s3-fastacc-tma" and row["head_dim"] == 128)
    assert triton_row["main_loop"]["mma_waits"] >= 1
