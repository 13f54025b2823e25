"""End-to-end tier: every shipped Wan workflow, queued over HTTP on a real ComfyUI with the pack and demo
models (what `render.py --demo` does), produces its video; progress and previews arrive per step; the loaded
model stays resident between prompts; Cancel stops a run within a step and leaves the server as it was."""

from __future__ import annotations

import itertools
import json
import pathlib

import av
import psutil
import pytest
from PIL import Image

import comfyui_client
from reelsmith.engine.post.invisible_watermark import detect_payload_in_file

pytestmark = pytest.mark.e2e

PACK_ROOT = pathlib.Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((PACK_ROOT / "workflows").glob("wan22_*.json"))
WORKFLOW_FILES = WORKFLOWS + [PACK_ROOT / "workflows" / "api" / p.name for p in WORKFLOWS]


@pytest.fixture(scope="module")
def server(comfyui_server):
    # the I2V workflows load ComfyUI's stock example.png from the (scratch) input folder
    Image.new("RGB", (96, 64), (200, 120, 40)).save(comfyui_server.input_dir / "example.png")
    return comfyui_server


_seeds = itertools.count(1000)


def _demo_prompt(client, path: pathlib.Path, sets=()) -> dict:
    """The workflow as render.py --demo sends it, with a fresh seed (ComfyUI would reuse a cached result)."""
    workflow = json.loads(path.read_text())
    info = client.object_info()
    api = comfyui_client.to_api_format(workflow, info)
    comfyui_client.apply_demo(api, info)
    for node in api.values():
        if node["class_type"].startswith("Reelsmith") and isinstance(node["inputs"].get("seed"), int):
            node["inputs"]["seed"] = next(_seeds)
    comfyui_client.apply_sets(api, list(sets), info)
    return api


def _video_frames(path: pathlib.Path) -> tuple[int, int, int]:
    with av.open(str(path)) as container:
        frames = [f for f in container.decode(video=0)]
        return len(frames), frames[0].width, frames[0].height


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_shipped_workflow_renders_with_demo_models(server, path, tmp_path):
    client = server.client
    events: list[comfyui_client.Progress] = []
    prompt_id = client.queue(_demo_prompt(client, path))
    entry = client.wait(prompt_id, on_progress=events.append, timeout=300)
    files = client.download_outputs(entry, tmp_path)
    videos = [f for f in files if f.suffix == ".mp4"]
    assert len(videos) == 1, files
    count, width, height = _video_frames(videos[0])
    assert (count, width, height) == (5, 512, 256)
    # the delivered file carries the workflow's invisible watermark through the H.264 encode
    detection = detect_payload_in_file(videos[0])
    assert detection.found and detection.payload == "reelsmith", detection.report()
    steps = [(e.value, e.total) for e in events if e.event == "progress" and e.class_type.startswith("ReelsmithWan22")]
    assert steps == [(1, 2), (2, 2)]  # one update per denoising step
    assert any(e.event == "preview" and e.class_type.startswith("ReelsmithWan22") for e in events)


def test_loaded_model_stays_resident_between_prompts(server):
    client = server.client
    path = PACK_ROOT / "workflows" / "api" / "wan22_t2v_480p.json"
    first = client.wait(client.queue(_demo_prompt(client, path, ["Wan 2.2 Text to Video.seed=1"])), timeout=300)
    second = client.wait(client.queue(_demo_prompt(client, path, ["Wan 2.2 Text to Video.seed=2"])), timeout=300)
    cached = [data["nodes"] for event, data in second["status"]["messages"] if event == "execution_cached"]
    assert "1" in cached[0], "the loader ran again instead of reusing the loaded model"
    assert first["outputs"] and second["outputs"]


def test_cancel_stops_within_a_step_and_leaves_no_memory(server, tmp_path):
    client = server.client
    process = psutil.Process(server.server.process.pid)
    path = PACK_ROOT / "workflows" / "api" / "wan22_i2v_720p.json"
    client.wait(client.queue(_demo_prompt(client, path, ["Wan 2.2 Image to Video.seed=5"])), timeout=300)
    memory_after_run = process.memory_info().rss

    long_run = _demo_prompt(client, path, ["Wan 2.2 Image to Video.steps=200", "Wan 2.2 Image to Video.seed=6"])
    prompt_id = client.queue(long_run)
    steps_seen = []

    def on_progress(event):
        if event.event == "progress":
            steps_seen.append(event.value)
            if event.value == 3:
                client.interrupt(prompt_id)

    with pytest.raises(comfyui_client.Interrupted):
        client.wait(prompt_id, on_progress=on_progress, timeout=300)
    assert 3 <= max(steps_seen) <= 5, steps_seen  # stopped within a step or two of the request
    assert process.memory_info().rss < memory_after_run + 150 * 2**20

    # and the server is fine afterwards: the same workflow renders again
    entry = client.wait(client.queue(_demo_prompt(client, path, ["Wan 2.2 Image to Video.seed=7"])), timeout=300)
    assert any(f.suffix == ".mp4" for f in client.download_outputs(entry, tmp_path))


def test_bad_input_is_refused_at_validation(server):
    client = server.client
    path = PACK_ROOT / "workflows" / "api" / "wan22_t2v_480p.json"
    api = _demo_prompt(client, path, ["Wan 2.2 Text to Video.frames=6", "Wan 2.2 Text to Video.width=70"])
    with pytest.raises(comfyui_client.WorkflowRejected) as rejected:
        client.queue(api)
    text = rejected.value.format()
    assert "frames 6 is not of the form 4k+1: use 5 or 9" in text
    assert "width 70 is not a multiple of 16: use 64 or 80" in text


def test_wrong_model_for_the_node_names_the_problem(server):
    client = server.client
    api = _demo_prompt(client, PACK_ROOT / "workflows" / "api" / "wan22_t2v_480p.json")
    loader = api["1"]["inputs"]
    loader["diffusion_model"] = "reelsmith-demo/wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"
    loader["diffusion_model_low_noise"] = "reelsmith-demo/wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors"
    with pytest.raises(comfyui_client.NodeExecutionError) as error:
        client.wait(client.queue(api), timeout=300)
    assert error.value.node_type == "ReelsmithWan22TextToVideo"
    assert "image-to-video model" in error.value.exception_message


def test_nsfw_stop_prevents_the_encode(server):
    client = server.client
    api = _demo_prompt(client, PACK_ROOT / "workflows" / "api" / "wan22_t2v_480p.json", ["NSFW Gate.threshold=0"])
    api["8"]["inputs"]["filename_prefix"] = "reelsmith/must_not_exist"
    with pytest.raises(comfyui_client.NodeExecutionError) as error:
        client.wait(client.queue(api), timeout=300)
    assert error.value.node_type == "ReelsmithNSFWGate"
    assert not list(server.output_dir.rglob("must_not_exist*")), "a file was delivered despite the gate"
