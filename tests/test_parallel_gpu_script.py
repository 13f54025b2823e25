"""scripts/check_parallel_gpu.py runs end to end on tiny models on 2 CPU processes (test switch): the torchrun
phase (equality, timing, memory, profile) and the worker-pool phase, and writes rows and a table. A smoke test of
the script the lead runs on GPUs: it checks the plumbing and the equality columns, never the timings."""

import json
import os
import subprocess
import sys

from pack_paths import PACK_ROOT


def test_gpu_check_script_smoke(tmp_path):
    out = tmp_path / "rows.json"
    result = subprocess.run(
        [sys.executable, str(PACK_ROOT / "scripts" / "check_parallel_gpu.py"), "--tiny", "--paths", "bf16:sdpa:off",
         "--sizes", "480p", "--frames", "5", "--out", str(out)],
        env=dict(os.environ, REELSMITH_PARALLEL_CPU="1", OMP_NUM_THREADS="1"), cwd=tmp_path,
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads(out.read_text())
    modes = {row["implementation"]: row for row in rows}
    assert set(modes) == {"reelsmith-1gpu-step", "reelsmith-2gpu-sequence", "reelsmith-2gpu-cfg",
                          "reelsmith-1gpu-forward", "reelsmith-2gpu-sequence-1pass", "reelsmith-2gpu-pool-overhead"}
    for mode in ("reelsmith-2gpu-sequence", "reelsmith-2gpu-cfg", "reelsmith-2gpu-sequence-1pass"):
        row = modes[mode]
        assert row["equal_step"]["cosine"] > 0.9999 and row["equal_step"]["max_abs_diff"] <= 1e-2
        assert len(row["peak_gib_per_gpu"]) == 2 and row["comm_share"] is not None
        assert row["ratio_vs_1gpu"] > 0 and row["gpu"] and row["date"]
    for mode in ("reelsmith-2gpu-sequence", "reelsmith-2gpu-cfg"):  # the short sample runs guided steps
        assert modes[mode]["equal_sample"]["max_abs_diff"] <= 1e-3
    # a step with CFG 1 is one forward, compared with one forward on one GPU
    assert modes["reelsmith-2gpu-sequence-1pass"]["cfg"] == 1.0 and modes["reelsmith-1gpu-forward"]["cfg"] == 1.0
    assert modes["reelsmith-1gpu-forward"]["seconds_per_forward"] == modes["reelsmith-1gpu-forward"]["seconds_per_step"]
    assert modes["reelsmith-2gpu-pool-overhead"]["worker_forward_s"] > 0
    assert "| 480p | bf16:sdpa:off | sequence |" in result.stdout and "protocol overhead" in result.stdout
