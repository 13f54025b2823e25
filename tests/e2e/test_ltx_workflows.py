"""End-to-end tier: every shipped LTX-Video workflow renders on a real ComfyUI with demo models, delivers a
watermarked video, reports progress per step, and stops within a step when cancelled."""

from __future__ import annotations

import pathlib

import pytest

import comfyui_client
from reelsmith.engine.post.invisible_watermark import detect_payload_in_file
from test_wan_workflows import _demo_prompt, _video_frames, server  # noqa: F401  (shared fixture and helpers)

pytestmark = pytest.mark.e2e

PACK_ROOT = pathlib.Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((PACK_ROOT / "workflows").glob("ltx_*.json"))
WORKFLOW_FILES = WORKFLOWS + [PACK_ROOT / "workflows" / "api" / p.name for p in WORKFLOWS]
DEMO_SIZE = (512, 256)  # what --demo shrinks the samplers to
UPSCALED = {"ltx_two_stage_upscale_720p": (1024, 512)}  # the latent upscaler doubles width and height


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_shipped_ltx_workflow_renders_with_demo_models(server, path, tmp_path):  # noqa: F811
    client = server.client
    events: list[comfyui_client.Progress] = []
    entry = client.wait(client.queue(_demo_prompt(client, path)), on_progress=events.append, timeout=300)
    videos = [f for f in client.download_outputs(entry, tmp_path) if f.suffix == ".mp4"]
    assert len(videos) == 1
    width, height = UPSCALED.get(path.stem, DEMO_SIZE)
    assert _video_frames(videos[0]) == (9, width, height)  # the shortest LTX clip, 8k+1
    detection = detect_payload_in_file(videos[0])
    assert detection.found and detection.payload == "reelsmith", detection.report()
    progress = [e for e in events if e.event == "progress" and e.class_type.startswith("ReelsmithLTX")]
    assert progress
    for class_type in {e.class_type for e in progress}:  # each sampling node: one update per denoising step
        steps = [(e.value, e.total) for e in progress if e.class_type == class_type]
        total = steps[-1][1]
        assert steps == [(i, total) for i in range(1, total + 1)], class_type


def test_ltx_cancel_stops_within_a_step(server):  # noqa: F811
    client = server.client
    path = PACK_ROOT / "workflows" / "api" / "ltx_keyframes_720p.json"
    prompt_id = client.queue(_demo_prompt(client, path, ["LTX Keyframes.steps=200"]))
    seen = []

    def on_progress(event):
        if event.event == "progress" and event.class_type == "ReelsmithLTXKeyframes":
            seen.append(event.value)
            if event.value == 3:
                client.interrupt(prompt_id)

    with pytest.raises(comfyui_client.Interrupted):
        client.wait(prompt_id, on_progress=on_progress, timeout=300)
    assert 3 <= max(seen) <= 5, seen
