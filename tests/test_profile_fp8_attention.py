"""scripts/profile_fp8_attention.py reads Nsight Compute's CSV pages: the parsing and ranking, on text shaped as
ncu prints it (ncu itself needs a GPU)."""

import importlib.util

from pack_paths import PACK_ROOT

spec = importlib.util.spec_from_file_location("profile_fp8_attention",
                                              PACK_ROOT / "scripts" / "profile_fp8_attention.py")
profile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(profile)

RAW_PAGE = (
    '"ID","Kernel Name","gpu__time_duration.sum","smsp__average_warps_issue_stalled_wait_per_issue_active.ratio",'
    '"smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio",'
    '"smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio",'
    '"sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active",'
    '"sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active","lts__t_sectors.avg.pct_of_peak_sustained_elapsed"\n'
    '"","","ms","ratio","ratio","ratio","%","%","%"\n'
    '"0","_fp8_attention_kernel","140.71","0.61","1.84","0","42.3","44.1","1,234.5"\n')

SOURCE_PAGE = (
    '"Address","Source","Warp Stall Sampling (All Samples)","Instructions Executed"\n'
    '"7f00","MUFU.EX2 R4, R4","300","10"\n'
    '"7f10","WARPGROUP.DEPBAR.LE gsb0, 0x0","600","10"\n'
    '"7f20","FADD R1, R2, R3","100","10"\n')


def test_raw_page_maps_each_metric_to_value_and_unit():
    metrics = profile.parse_raw_page(RAW_PAGE)
    assert metrics["gpu__time_duration.sum"] == "140.71 ms"
    assert metrics["Kernel Name"] == "_fp8_attention_kernel"
    assert profile.number(metrics["lts__t_sectors.avg.pct_of_peak_sustained_elapsed"]) == 1234.5


def test_a_raw_page_without_values_is_refused():
    try:
        profile.parse_raw_page(RAW_PAGE.split("\n")[0])
    except ValueError as error:
        assert "rows" in str(error)
    else:
        raise AssertionError("a raw page with no kernel row was accepted")


def test_summary_ranks_stall_reasons_and_pipes_and_drops_the_absent_ones():
    lines = profile.summarise(profile.parse_raw_page(RAW_PAGE))
    text = "\n".join(lines)
    stalls = [line for line in lines if "issue_stalled" in line]
    assert [line.split("stalled_")[1].split("_per")[0] for line in stalls] == ["math_pipe_throttle", "wait"]
    assert "barrier" not in text  # zero: not a reason here
    pipes_at = lines.index("## pipes busy (% of peak, active cycles)")
    assert "pipe_xu" in lines[pipes_at + 1] and "tensor_op_gmma" in lines[pipes_at + 2]  # 44.1 before 42.3
    assert "gpu__time_duration.sum" in text and "140.71 ms" in text
    assert "## registers and shared memory: (none in this report)" in lines


def test_source_page_lists_the_most_stalled_instructions_first_with_their_share():
    lines = profile.rank_source_page(SOURCE_PAGE, count=2)
    assert "1000 stall samples" in lines[0]
    assert lines[1].split() == ["60.0%", "7f10", "WARPGROUP.DEPBAR.LE", "gsb0,", "0x0"]
    assert "MUFU.EX2" in lines[2] and "30.0%" in lines[2]
    assert len(lines) == 3


def test_source_page_without_stall_samples_says_so():
    lines = profile.rank_source_page('"Address","Source","Instructions Executed"\n"7f00","FADD","3"\n', count=5)
    assert lines[0].startswith("(no stall-sampling column")
