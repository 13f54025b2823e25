"""The benchmark's arithmetic (token counts, FLOPs, attention share, table merging, path parsing), on the CPU:
the timings themselves only run on a GPU (scripts/bench.py)."""

import json
import sys

import pytest

from pack_paths import PACK_ROOT

sys.path.insert(0, str(PACK_ROOT / "scripts"))
import bench  # noqa: E402
from bench_models import Workload  # noqa: E402


def test_wan_720p_tokens_and_attention_share_match_the_measured_facts():
    workload = Workload("wan", "t2v-a14b", "720p", 81)
    assert workload.latent_shape() == (1, 16, 21, 90, 160)
    assert workload.tokens() == 21 * 45 * 80 == 75600
    # DESIGN.md: at 720p self-attention is 72 % of the FLOPs, about 6.5 PFLOP a forward
    assert workload.attention_share() == pytest.approx(0.72, abs=0.01)
    assert workload.forward_flops() == pytest.approx(6.5e15, rel=0.03)
    assert Workload("wan", "t2v-a14b", "480p", 81).tokens() == 21 * 30 * 52


def test_ltx_and_ti2v_shapes():
    ltx = Workload("ltx", "13b", "720p", 97)
    assert ltx.latent_shape() == (1, 128, 13, 22, 40) and ltx.tokens() == 11440  # DESIGN.md: 11,440 tokens
    shape = ltx.shape()
    assert (shape.dim, shape.ffn_dim, shape.layers) == (4096, 16384, 48)
    ti2v = Workload("wan", "ti2v-5b", "720p", 121)
    assert ti2v.latent_shape() == (1, 48, 31, 44, 80)  # 1280x704: TI2V-5B sizes are multiples of 32


def test_parse_path_defaults_and_errors():
    assert bench.parse_path("bf16") == ("bf16", "auto", "off")
    assert bench.parse_path("fp8_e4m3fn_fast:cudnn") == ("fp8_e4m3fn_fast", "cudnn", "off")
    assert bench.parse_path("bf16:sdpa:regional") == ("bf16", "sdpa", "regional")
    for bad in ("", "a:b:c:d", "bf16::off"):
        with pytest.raises(Exception, match="precision"):
            bench.parse_path(bad)


def _row(implementation, seconds, precision="fp8_e4m3fn_fast", size="720p"):
    workload = Workload("wan", "t2v-a14b", size, 81)
    facts = {"gpu": "NVIDIA H100 80GB HBM3", "driver": "1", "torch": "2", "date": "2026-11-22"}
    return bench.forward_row(facts, "t2v-a14b", workload, implementation, precision, "cudnn", "off", seconds, 1.0, 20.0)


def test_rows_ratio_and_table_merge(tmp_path):
    ours, native = _row("reelsmith", 5.0), _row("comfyui-native", 10.0)
    assert ours["tflops"] == pytest.approx(ours["tokens"] and Workload("wan", "t2v-a14b", "720p", 81).forward_flops()
                                           / 5.0 / 1e12, rel=1e-3)
    assert ours["fraction_of_peak"] == pytest.approx(ours["tflops"] / 1979.0, abs=1e-3)  # fp8 fast: fp8 peak
    table = bench.markdown([ours, native], [], {"gpu": "G", "driver": "D", "torch": "T", "date": "X"})
    assert "| 2.00x |" in table and "| 1.00x |" in table
    path = tmp_path / "benchmarks.json"
    path.write_text(json.dumps([_row("reelsmith", 9.0), _row("reelsmith", 3.0, size="480p")]))
    bench.merge_into_table(path, [ours])
    merged = json.loads(path.read_text())
    assert sorted(r["seconds_per_forward"] for r in merged) == [3.0, 5.0]  # same key replaced, others kept


def test_clip_estimates_use_the_fastest_forward_and_both_a14b_recipes():
    rows = [_row("reelsmith", 8.0), _row("reelsmith", 9.0), _row("comfyui-native", 7.0),
            dict(model_family="wan", component="text_encode", seconds=0.5),
            dict(model_family="wan", variant="t2v-a14b", model="t2v-a14b", size="720p", component="vae_decode",
                 seconds=3.0)]
    clips = {c["recipe"]: c for c in bench.clip_estimates(rows) if c["variant"] == "t2v-a14b"}
    # ComfyUI's forward is never the clip's forward; CFG doubles the forwards per step; 4-step LoRA runs at CFG 1
    assert clips["40 steps, CFG"]["estimate_s"] == pytest.approx(40 * 2 * 8.0 + 0.5 + 3.0)
    assert clips["4-step distillation LoRA, CFG 1"]["estimate_s"] == pytest.approx(4 * 8.0 + 0.5 + 3.0)
    table = bench.markdown([], list(clips.values()), {"gpu": "G", "driver": "D", "torch": "T", "date": "X"})
    assert "| t2v-a14b | 4-step distillation LoRA, CFG 1 | 720p | 4 x 1 |" in table
