"""engine/estimates.py: the benchmark table (data/benchmarks.json) and the estimates made from it."""

import copy
import dataclasses
import importlib.util
import json

import pytest

from pack_paths import PACK_ROOT
from reelsmith.engine import estimates
from reelsmith.engine.errors import InvalidInputError

H100 = "NVIDIA H100 80GB HBM3"
H100_DEVICE = f"cuda:0 {H100} : cudaMallocAsync"  # as ComfyUI's /system_stats names it
FORTY_STEPS_CFG = [(40, 3.0)]  # 80 forwards


def _bench_models():
    import sys
    sys.path.insert(0, str(PACK_ROOT / "scripts"))
    import bench_models
    return bench_models


def _request(**overrides):
    values = dict(gpu_device=H100_DEVICE, model_family="wan", variant="t2v-a14b", precision="fp8_e4m3fn_fast",
                  compile="off", width=1280, height=720, frames=81, phases=FORTY_STEPS_CFG)
    values.update(overrides)
    return estimates.EstimateRequest(**values)


@pytest.fixture(scope="module")
def rows():
    return estimates.load_rows()


@pytest.fixture(scope="module")
def raw_rows():
    return json.loads(estimates.BENCHMARKS_PATH.read_text())


# ------------------------------------------------------------------ the table


def test_table_holds_the_h100_wan_measurements(rows):
    """Every precision x compile path of the Wan A14B expert at both sizes, with 720p peak memory recorded
    (the values are measurements; a re-run of bench.py replaces them)."""
    measured = {(r.precision, r.compile, r.size_label): (r.seconds_per_forward, r.peak_gib) for r in rows
                if r.gpu == H100 and r.variant == "t2v-a14b"}
    assert set(measured) == {(p, c, size) for p in ("bf16", "fp8_e4m3fn_fast") for c in ("off", "regional")
                             for size in ("480p", "720p")}
    for (precision, compile_mode, size), (seconds, peak) in measured.items():
        assert 1.0 < seconds < 20.0
        if size == "720p":
            assert 10.0 < peak < 40.0 and seconds > 3 * measured[(precision, compile_mode, "480p")][0]
    assert measured[("fp8_e4m3fn_fast", "regional", "720p")][0] < measured[("bf16", "off", "720p")][0]
    for row in rows:
        assert (row.raw["driver"], row.raw["torch"]) == ("580.159.04", "2.11.0+cu130")
        # bench.py and check_avatar_pipeline_gpu.py ran cuDNN attention, and since session 4 'auto' = the FP8
        # kernel on Hopper (the runs with regional compile); check_avatar_gpu.py set no backend (torch SDPA)
        transformer_only_avatar = row.model_family == "avatar" and (row.width, row.height) == (704, 704)
        fp8_kernel_path = row.model_family != "avatar" and row.compile == "regional"
        assert row.attention in (("sdpa",) if transformer_only_avatar else
                                 ("cudnn", "fp8") if fp8_kernel_path else ("cudnn",))
    assert {(r.model_family, r.variant) for r in rows} == {("wan", "t2v-a14b"), ("wan", "ti2v-5b"), ("ltx", "2b"),
                                                           ("ltx", "13b"), ("avatar", "13b")}


def test_table_holds_the_h100_avatar_measurement(rows):
    """scripts/check_avatar_gpu.py on the H100 (2026-11-22): 704 px, 129 frames, bf16, cond + uncond batched:
    16.8 s per step, 40.2 GiB resident, 17.2 GiB with block offload at the same speed."""
    avatar = {r.offload: r for r in rows if r.model_family == "avatar" and (r.width, r.height) == (704, 704)}
    assert set(avatar) == {"none", "block"}
    for offload, peak in (("none", 40.2), ("block", 17.2)):
        row = avatar[offload]
        assert (row.gpu, row.precision, row.compile, row.width, row.height, row.frames, row.batch) == \
            (H100, "bf16", "off", 704, 704, 129, 2)
        assert (row.seconds_per_forward, row.peak_gib) == (16.8, peak)


def test_table_holds_the_h100_avatar_pipeline_measurements(rows):
    """scripts/check_avatar_pipeline_gpu.py on the H100 (2026-11-22): the whole pipeline at 704x896, 129 frames:
    24.9 s per step in bf16 and in fp8_e4m3fn_fast, with text-encode and decode times; block offload 34.5 s."""
    pipeline = {(r.precision, r.offload): r for r in rows if r.model_family == "avatar" and (r.width, r.height) == (704, 896)}
    assert set(pipeline) == {("bf16", "none"), ("fp8_e4m3fn_fast", "none"), ("bf16", "block")}
    for key, seconds, peak in ((("bf16", "none"), 24.9, 41.1), (("fp8_e4m3fn_fast", "none"), 24.9, 29.5),
                               (("bf16", "block"), 34.5, 17.2)):
        row = pipeline[key]
        assert (row.gpu, row.frames, row.batch, row.seconds_per_forward, row.peak_gib) == (H100, 129, 2, seconds, peak)
        assert 15 < row.raw["text_encode_s"] < 22 and 20 < row.raw["vae_decode_s"] < 21


def test_peer_rows_are_not_estimated_from(raw_rows, rows):
    peers = [r for r in raw_rows if r.get("implementation", "reelsmith") != "reelsmith"]
    assert peers and {r["implementation"] for r in peers} == {"comfyui-native"}
    assert len(rows) == len(raw_rows) - len(peers)


def test_rows_have_the_bench_schema_plus_model_family(raw_rows):
    """Every field bench.py writes for a row (except its own extras) and the family are in every row."""
    schema = {"gpu", "driver", "torch", "date", "variant", "size", "frames", "precision", "attention", "compile",
              "seconds_per_forward", "tflops", "peak_gib", "notes", "model_family"}
    for row in raw_rows:
        assert schema <= set(row), sorted(schema - set(row))


def test_tflops_follow_bench_flop_count(raw_rows):
    workload = _bench_models().Workload
    for row in raw_rows:
        if row["tflops"] is None:  # not recorded (check_avatar_gpu.py reports none)
            continue
        width, height = row.get("width"), row.get("height")
        flops = sum(estimates.model_shape(row["model_family"], row["variant"]).forward_flops(
            estimates.model_shape(row["model_family"], row["variant"]).tokens(
                width or estimates.SIZE_LABELS[row["size"]][0], height or estimates.SIZE_LABELS[row["size"]][1],
                row["frames"])))
        # bench.py divides by the unrounded time, the row keeps it to the millisecond (0.4 % of 0.136 s)
        assert row["tflops"] == pytest.approx(flops / row["seconds_per_forward"] / 1e12, rel=5e-3)
        if width:  # rows bench.py wrote name the size it measured; its Workload agrees
            assert workload(row["model_family"], row["variant"], row["size"], row["frames"]).pixels == (width, height)


@pytest.mark.parametrize("field, value, words", [
    ("seconds_per_forward", None, "seconds_per_forward"),
    ("frames", "81", "frames"),
    ("model_family", "sora", "model_family"),
    ("size", "4k", "size"),
    ("peak_gib", "big", "peak_gib"),
])
def test_malformed_row_is_named(raw_rows, field, value, words):
    broken = copy.deepcopy(raw_rows)
    broken[3][field] = value
    with pytest.raises(InvalidInputError, match=rf"row 3: .*{words}"):
        estimates.parse_rows(broken)


def test_missing_peak_field_must_be_null_not_absent(raw_rows):
    broken = copy.deepcopy(raw_rows)
    del broken[0]["peak_gib"]
    with pytest.raises(InvalidInputError, match="row 0: field 'peak_gib' is missing .*null"):
        estimates.parse_rows(broken)


def test_size_labels_are_bench_sizes():
    assert estimates.SIZE_LABELS == _bench_models().WAN_SIZES


# ------------------------------------------------------------------ model arithmetic


def test_flop_split_matches_the_measured_attention_share():
    shape = estimates.model_shape("wan", "t2v-a14b")
    tokens = shape.tokens(1280, 720, 81)
    assert tokens == 21 * 45 * 80
    attention, rest = shape.forward_flops(tokens)
    assert _bench_models().Workload("wan", "t2v-a14b", "720p", 81).forward_flops() == attention + rest
    assert 0.71 < attention / (attention + rest) < 0.73  # DESIGN.md: self-attention is 72 % of the FLOPs at 720p
    assert (attention + rest) / 1e15 == pytest.approx(6.5, abs=0.1)  # 6.5 PFLOP a forward


def test_token_counts_follow_each_family_compression():
    assert estimates.model_shape("wan", "ti2v-5b").tokens(1280, 704, 121) == 31 * 22 * 40  # 16x VAE, 2x2 patch
    assert estimates.model_shape("ltx", "13b").tokens(1280, 704, 97) == 11440  # DESIGN.md's LTX token count
    assert estimates.model_shape("avatar", "whatever") is None
    # one 129-frame window at 704x704: 33 latent frames of 44 x 44 tokens (8x VAE, 2x2 patch)
    assert estimates.model_shape("avatar", "13b").tokens(704, 704, 129) == 33 * 44 * 44


@pytest.mark.parametrize("source, target", [("720p", "480p"), ("480p", "720p")])
def test_extrapolation_lands_near_the_other_measured_size(rows, source, target):
    """The quadratic/linear split predicts the other measured size within 15 % (2-13 % off on the H100 rows; the
    largest miss is fp8 + regional compile, whose 480p forward is relatively faster than its 720p one)."""
    paths = {(r.precision, r.compile, r.attention) for r in rows if r.variant == "t2v-a14b"}
    assert len(paths) == 5  # bf16 / fp8_e4m3fn_fast x compile off / regional, cuDNN; fp8 + regional with FP8 attention
    for precision, compile_mode, attention in sorted(paths):
        same = [r for r in rows if (r.precision, r.compile, r.attention) == (precision, compile_mode, attention)
                and r.variant == "t2v-a14b"]
        measured = next(r for r in same if r.size_label == target)
        # the forward alone: text encoding and decoding (which rows may carry) are not extrapolated here
        only_source = [dataclasses.replace(r, text_encode_s=None, vae_decode_s=None)
                       for r in same if r.size_label == source]
        result = estimates.estimate(only_source, _request(
            precision=precision, compile=compile_mode, attention=attention, width=measured.width,
            height=measured.height, phases=[(1, 1.0)]))
        assert result.status == "extrapolated"
        assert result.seconds == pytest.approx(measured.seconds_per_forward, rel=0.15)
        assert result.seconds != pytest.approx(measured.seconds_per_forward, rel=0.001)


def test_forwards_per_run_counts_cfg():
    assert estimates.forwards_per_run([(40, 3.0)]) == 80
    assert estimates.forwards_per_run([(4, 1.0)]) == 4
    assert estimates.forwards_per_run([(26, 3.0), (14, 1.0)]) == 66


@pytest.mark.parametrize("device, name", [
    (H100_DEVICE, H100),
    ("cuda:1 NVIDIA H200 : native", "NVIDIA H200"),
    ("CUDA cuda:0: NVIDIA B200", "NVIDIA B200"),
    ("cpu", "cpu"),
    (H100, H100),
])
def test_gpu_name_from_comfyui_device_names(device, name):
    assert estimates.gpu_name_from_device(device) == name


# ------------------------------------------------------------------ estimates


def test_measured_row(rows):
    result = estimates.estimate(rows, _request())
    assert result.status == "measured"
    assert result.forwards == 80 and result.seconds == pytest.approx(80 * 11.99)
    assert (result.peak_gib, result.peak_kind) == (21.6, "measured")
    assert result.row["size"] == "720p" and result.row["precision"] == "fp8_e4m3fn_fast"
    assert H100 in result.lines[1] and "measured" in result.lines[1] and "720p" in result.lines[1]
    assert "16 min" in result.lines[0]
    assert any("text encode and VAE decode not measured" in line for line in result.lines)


def test_auto_attention_takes_the_row_auto_would_run_and_an_explicit_choice_its_own(rows):
    """fp8_e4m3fn_fast + regional compile at 720p on the H100 is measured with the FP8 kernel (what 'auto'
    picks there) and with cuDNN: 'auto' gets the FP8 row, 'cudnn' the cuDNN row, no note either way."""
    auto = estimates.estimate(rows, _request(compile="regional"))
    cudnn = estimates.estimate(rows, _request(compile="regional", attention="cudnn"))
    assert auto.row["attention"] == "fp8" and cudnn.row["attention"] == "cudnn"
    assert auto.row["seconds_per_forward"] < cudnn.row["seconds_per_forward"] and auto.seconds < cudnn.seconds
    assert not any("measured with attention" in line for line in auto.lines + cudnn.lines)
    sage = estimates.estimate(rows, _request(compile="regional", attention="sage"))  # not measured: said
    assert any("measured with attention" in line and "not sage" in line for line in sage.lines)


def test_480p_peak_not_recorded_is_said_and_bounded(rows):
    result = estimates.estimate(rows, _request(width=832, height=480))
    assert result.status == "measured" and result.seconds == pytest.approx(80 * 3.19)
    assert (result.peak_gib, result.peak_kind) == (21.6, "at most")
    assert any("not recorded at 480p" in line for line in result.lines)
    assert "≤ 21.6 GiB" in result.lines[0]


def test_other_size_is_extrapolated_from_the_nearest_row(rows):
    result = estimates.estimate(rows, _request(width=1280, height=720, frames=121, phases=[(1, 1.0)]))
    assert result.status == "extrapolated"
    assert result.row["size"] == "720p"
    shape = estimates.model_shape("wan", "t2v-a14b")
    expected = 11.99 * shape.time_scale(shape.tokens(1280, 720, 81), shape.tokens(1280, 720, 121))
    assert result.seconds == pytest.approx(expected, abs=0.05)
    ratio = 31 / 21
    assert 11.99 * ratio < result.seconds < 11.99 * ratio * ratio  # between linear and quadratic
    assert result.lines[1].startswith(f"{H100}: extrapolated from t2v-a14b fp8_e4m3fn_fast, compile off")
    assert result.peak_kind == "at least"


def test_no_measurement_for_another_gpu(rows):
    result = estimates.estimate(rows, _request(gpu_device="cpu"))
    assert result.status == "no_measurement" and result.seconds is None
    assert result.lines == [f"No measurement for this GPU (cpu) with Wan 2.2 t2v-a14b (measured on: {H100})."]


def test_unmeasured_precision_names_what_was_measured(rows):
    result = estimates.estimate(rows, _request(precision="fp16"))
    assert result.status == "no_measurement"
    assert "precision fp16 (measured: bf16, fp8_e4m3fn_fast)" in result.lines[0]


def test_unknown_variant_gives_no_numbers(rows):
    result = estimates.estimate(rows, _request(variant=None))
    assert result.status == "unknown_model" and result.seconds is None


def test_i2v_uses_the_t2v_rows_and_says_so(rows):
    result = estimates.estimate(rows, _request(variant="i2v-a14b"))
    assert result.status == "measured" and result.seconds == pytest.approx(80 * 11.99)
    assert any("i2v-a14b measured as t2v-a14b" in line for line in result.lines)


def test_a_variant_without_rows_says_no_measurement(rows):
    without_ti2v = [r for r in rows if r.variant != "ti2v-5b"]
    result = estimates.estimate(without_ti2v, _request(variant="ti2v-5b", width=1280, height=704))
    assert result.status == "no_measurement" and result.seconds is None
    measured = estimates.estimate(rows, _request(variant="ti2v-5b", width=1280, height=704, compile="regional"))
    assert measured.status == "measured" and measured.row["width"] == 1280 and measured.row["height"] == 704


def test_unmeasured_compile_mode_falls_back_and_says_so(rows):
    only_off = [r for r in rows if r.compile == "off"]
    result = estimates.estimate(only_off, _request(compile="regional"))
    assert result.status == "measured" and result.seconds == pytest.approx(80 * 11.99)
    assert any("compile regional not measured: using compile off" in line for line in result.lines)


def test_variant_from_file_name_is_said(rows):
    result = estimates.estimate(rows, _request(variant_source="file name"))
    assert any("read from the file name" in line for line in result.lines)


def test_optional_stage_times_and_weights(raw_rows):
    row = dict(raw_rows[1], text_encode_s=2.0, vae_decode_s=4.0, load_s=90.0, weights_gib=13.0)  # bf16, off, 720p
    assert row["size"] == "720p"
    table = estimates.parse_rows([row])
    result = estimates.estimate(table, _request(precision=row["precision"], compile=row["compile"]))
    assert result.seconds == pytest.approx(80 * row["seconds_per_forward"] + 2.0 + 4.0)
    assert not any("not measured: not included" in line for line in result.lines)
    assert any("loads the model (~2 min)" in line for line in result.lines)
    # another size: decode scales with tokens, peak memory extrapolates through the weights' share
    small = estimates.estimate(table, _request(precision=row["precision"], compile=row["compile"], width=832,
                                               height=480, phases=[(1, 1.0)]))
    ratio = 32760 / 75600
    shape = estimates.model_shape("wan", "t2v-a14b")
    assert small.seconds == pytest.approx(row["seconds_per_forward"] * shape.time_scale(75600, 32760) + 2.0
                                          + 4.0 * ratio, abs=0.05)
    assert (small.peak_kind, small.peak_gib) == ("extrapolated", pytest.approx(13.0 + (row["peak_gib"] - 13.0) * ratio, abs=0.01))
    both = estimates.estimate(table, _request(precision=row["precision"], compile=row["compile"],
                                              two_experts_resident=True))
    assert both.peak_gib == pytest.approx(row["peak_gib"] + 13.0)


def _avatar_request(**overrides):
    values = dict(gpu_device=H100_DEVICE, model_family="avatar", variant=None, precision="bf16", compile="off",
                  width=704, height=704, frames=129, phases=[(50, 7.5)], batched_guidance=True)
    values.update(overrides)
    return estimates.EstimateRequest(**values)


def test_avatar_step_is_one_batched_forward_per_window(rows):
    result = estimates.estimate(rows, _avatar_request())
    assert (result.status, result.forwards) == ("measured", 50)  # the family's one model: no variant needed
    assert result.seconds == pytest.approx(50 * 16.8) and (result.peak_gib, result.peak_kind) == (40.2, "measured")
    assert result.lines[0].startswith("≈ 14 min for 50 steps x 1 window (16.80 s per step, cond + uncond in one "
                                      "batch) · peak ≈ 40.2 GiB")
    assert result.lines[1] == ("NVIDIA H100 80GB HBM3: measured 13b bf16, compile off, attention sdpa, 704x704 x 129 "
                               "frames (16.8 s/forward at batch 2, 2026-11-22)")
    assert not any("variant" in line for line in result.lines)
    three = estimates.estimate(rows, _avatar_request(windows=3))
    assert (three.forwards, three.seconds) == (150, pytest.approx(150 * 16.8))
    assert "50 steps x 3 windows (16.80 s per step and window" in three.lines[0]


def test_avatar_without_guidance_halves_the_batch_and_says_so(rows):
    result = estimates.estimate(rows, _avatar_request(phases=[(50, 1.0)]))
    assert result.seconds == pytest.approx(50 * 8.4) and result.peak_kind == "at most"
    assert "one branch, no guidance" in result.lines[0]
    assert any("cfg 1 runs 1 branch per step: taken as 1/2 of the measured batch of 2 (not measured)" in line
               for line in result.lines)


def test_avatar_offload_picks_its_row_and_another_size_extrapolates(rows):
    block = estimates.estimate(rows, _avatar_request(offload="block"))
    assert (block.seconds, block.peak_gib) == (pytest.approx(50 * 16.8), 17.2)
    assert "offload block" in block.lines[1]
    model = estimates.estimate(rows, _avatar_request(offload="model"))
    assert model.peak_gib == 40.2 and any("offload model not measured: figures for offload none" in line
                                          for line in model.lines)
    smaller = estimates.estimate(rows, _avatar_request(width=512, height=512))
    shape = estimates.model_shape("avatar", "13b")
    assert smaller.status == "extrapolated"
    assert smaller.seconds == pytest.approx(50 * 16.8 * shape.time_scale(33 * 44 * 44, 33 * 32 * 32), rel=1e-3)
    assert smaller.seconds < 50 * 16.8 * (32 * 32) / (44 * 44)  # attention shrinks faster than the tokens
    assert (smaller.peak_gib, smaller.peak_kind) == (40.2, "at most")


def test_estimate_json_is_serialisable(rows):
    json.dumps(estimates.estimate(rows, _request()).to_json())


def test_format_duration():
    assert estimates.format_duration(42) == "42 s"
    assert estimates.format_duration(959) == "16 min"
    assert estimates.format_duration(2 * 3600 + 5 * 60) == "2 h 05 min"
