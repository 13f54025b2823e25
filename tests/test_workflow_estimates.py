"""scripts/workflow_estimates.py: the README's per-workflow table comes from the editor's estimator."""

import sys

from pack_paths import PACK_ROOT

sys.path.insert(0, str(PACK_ROOT / "scripts"))
import workflow_estimates  # noqa: E402


def test_every_shipped_sampler_gets_a_row_per_gpu():
    text = workflow_estimates.table(["NVIDIA H100 80GB HBM3", "NVIDIA B200"], PACK_ROOT / "workflows")
    rows = [line for line in text.splitlines()[2:]]
    workflows = sorted(p.stem for p in (PACK_ROOT / "workflows" / "api").glob("*.json"))
    for stem in workflows:
        mine = [r for r in rows if r.startswith(f"| {stem} |")]
        assert {r.split(" | ")[1] for r in mine} >= {"NVIDIA H100 80GB HBM3", "NVIDIA B200"}, stem
    h100_wan = next(r for r in rows if r.startswith("| wan22_t2v_720p | NVIDIA H100"))
    assert "11.99 s/forward x 80 forwards" in h100_wan and "16 min" in h100_wan  # 40 steps x CFG, both experts
    assert all("not measured" in r for r in rows if "| NVIDIA B200 |" in r)
    # the avatar workflow's own loader settings are used (fp8, measured with the whole pipeline at 704x896)
    h100_avatar = next(r for r in rows if r.startswith("| hunyuan_avatar_portrait_talking | NVIDIA H100"))
    assert "fp8_e4m3fn_fast" in h100_avatar and "704x896: 24.9 s/forward" in h100_avatar
