"""Every shipped workflow in the real graph editor: opened from the templates list, its loader names the missing
model files with the download command, a size and a frame count typed into the sampler snap to values the model
accepts, a resolution preset fills width and height, the sampler shows its estimate, and, with the demo models
swapped in, Run produces the video the editor then shows. The avatar workflow has one size (image_size), no frame
count (the audio sets the length) and ends in core SaveVideo. A screenshot of each step."""

from __future__ import annotations

import json
import pathlib
import re
import urllib.request

import av
import pytest

pytestmark = pytest.mark.e2e

PACK_ROOT = pathlib.Path(__file__).resolve().parents[2]
WORKFLOWS = sorted(p.stem for p in (PACK_ROOT / "workflows").glob("*.json"))
# Wan and LTX: width/height/frames and Encode Video; the avatar workflow: image_size and core SaveVideo.
AVATAR_WORKFLOWS = [w for w in WORKFLOWS if w.startswith("hunyuan_avatar")]
FULL_FLOW_WORKFLOWS = [w for w in WORKFLOWS if w not in AVATAR_WORKFLOWS]
H100_DEVICE = "cuda:0 NVIDIA H100 80GB HBM3 : cudaMallocAsync"


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=30) as response:
        return json.loads(response.read())


def _get(url: str) -> dict:
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=30) as response:
        return json.loads(response.read())


def _on_grid(value: int, step: int, offset: int = 0) -> int:
    """Nearest value on offset + k * step (the test values below are never half-way)."""
    return offset + round((value - offset) / step) * step


def _open_shipped(editor, url: str, name: str) -> dict:
    """Open the shipped workflow `name` from the templates list; returns the editor rules the pack serves."""
    rules = _get(f"{url}/api/reelsmith/editor/rules")
    editor.open()
    editor.open_template("Reelsmith", name)
    editor.shot("loaded")
    return rules


def test_templates_list_has_every_shipped_workflow(editor_server):
    listed = _get(f"{editor_server.url}/api/workflow_templates")
    assert sorted(listed.get("Reelsmith", [])) == WORKFLOWS


@pytest.mark.parametrize("name", AVATAR_WORKFLOWS)
def test_avatar_workflow_in_the_editor(editor, editor_server, name):
    url = editor_server.url
    rules = _open_shipped(editor, url, name)

    # the loader: the vendor folder is not downloaded; every missing part, the model set command, per-part commands
    loader_type = "ReelsmithHunyuanAvatarLoader"
    assert rules["loaders"][loader_type]["family"] == "avatar"
    loader = editor.node_ids(loader_type)[0]
    editor.center_on(loader)
    text = editor.wait_for_info(loader, r"Model files missing")
    status = _post(f"{url}/api/reelsmith/editor/loader_status",
                   {"node_type": loader_type, "widgets": editor.widget_values(loader)})
    assert status["ok"] is False and len(status["missing"]) >= 6
    for item in status["missing"]:
        assert item in text.replace("\n", "")
    for part in ("the transformer", "the VAE", "llava_llama_image", "text_encoder_2", "whisper-tiny", "detface.pt"):
        assert part in text
    assert "download_models.py hunyuan-avatar" in text and "or file by file:" in text
    assert "hf download tencent/HunyuanVideo-Avatar --include 'ckpts/whisper-tiny/*'" in text
    assert editor.info_box(loader).locator("button.reelsmith-copy").is_visible()
    editor.shot("missing-models")

    # the sampler: a typed image size snaps to the engine's rule (a multiple of 64 from 256 to 1280); presets
    sampler = editor.node_ids("ReelsmithHunyuanAvatarSampler")[0]
    assert editor.node_ids_with_rules() == [sampler]
    editor.center_on(sampler)
    size = rules["samplers"]["ReelsmithHunyuanAvatarSampler"]["size"]
    editor.type_into_widget(sampler, "image_size", "1000", shot="typing-image-size")
    assert editor.widget_value(sampler, "image_size") == _on_grid(1000, size["multiple"]) == 1024
    editor.type_into_widget(sampler, "image_size", "1500")
    assert editor.widget_value(sampler, "image_size") == size["limits"]["max"] == 1280
    assert editor.widget_value(sampler, "resolution preset") == "custom"
    offered = editor.pick_from_combo(sampler, "resolution preset", "720p square", shot="presets")
    assert offered[1:] == [p["name"] for p in rules["samplers"]["ReelsmithHunyuanAvatarSampler"]["presets"]["64"]]
    assert editor.widget_value(sampler, "image_size") == 704
    editor.shot("snapped")

    # the estimate, for the GPU the server reports (this server runs on the CPU: no measurement for it)
    estimate = editor.wait_for_info(sampler, r"No measurement for this GPU \(cpu\) with Hunyuan Video Avatar 13b")
    assert "measured on: NVIDIA H100 80GB HBM3" in estimate
    editor.shot("estimate")

    # demo models in (and the demo's short clip), Run, and the editor shows the finished video
    editor.use_demo_models()
    assert editor.widget_value(loader, "model") == "reelsmith-demo/HunyuanVideo-Avatar"
    editor.center_on(loader)
    editor.wait_for_info(loader, r"✓ All files present")
    editor.shot("demo-models")
    save = editor.node_ids("SaveVideo")[0]
    output = editor.run_and_wait_for_output(save)
    written = output["images"][0]
    assert written["filename"].endswith(".mp4") and output["animated"] == [True]
    editor.center_on(save, scale=0.6)
    video = editor.video_in_editor()
    assert written["filename"] in video["src"]
    with av.open(str(editor_server.output_dir / written["subfolder"] / written["filename"])) as container:
        stream = container.streams.video[0]
        # the 320x384 portrait at the demo's image_size 256: 256x320; 0.45 s of speech at 25 fps: 11 frames
        assert (video["width"], video["height"]) == (stream.width, stream.height) == (256, 320)
        assert sum(1 for _ in container.decode(video=0)) == 11 and len(container.streams.audio) == 1
    editor.shot("video")
    assert not editor.page_errors, editor.page_errors
    assert not editor.our_console_problems()


@pytest.mark.parametrize("name", FULL_FLOW_WORKFLOWS)
def test_shipped_workflow_in_the_editor(editor, editor_server, name):
    url = editor_server.url
    rules = _open_shipped(editor, url, name)

    # the loader: which files are missing, and the command that fetches them
    loader_type = next(t for t in rules["loaders"] if editor.node_ids(t))
    loader = editor.node_ids(loader_type)[0]
    editor.center_on(loader)
    text = editor.wait_for_info(loader, r"Model files missing")
    status = _post(f"{url}/api/reelsmith/editor/loader_status",
                   {"node_type": loader_type, "widgets": editor.widget_values(loader)})
    assert status["ok"] is False and status["missing"]
    for item in status["missing"]:
        assert item in text.replace("\n", "")
    assert "download_models.py" in text and editor.info_box(loader).locator("button.reelsmith-copy").is_visible()
    editor.shot("missing-models")

    # the sampler: typed values snap to the model's grid (per variant: TI2V-5B's is 32)
    sampler = editor.node_ids_with_rules()[0]
    sampler_type = editor.evaluate("(id) => app.graph.getNodeById(id).comfyClass", sampler)
    rule = rules["samplers"][sampler_type]
    step = rule["size"]["by_variant"].get(status["variant"], rule["size"]["multiple"])
    editor.type_into_widget(sampler, "width", "1003", shot="typing-width")
    assert editor.widget_value(sampler, "width") == _on_grid(1003, step)
    editor.type_into_widget(sampler, "frames", "100")
    frames_rule = rule["frames"]
    assert editor.widget_value(sampler, "frames") == _on_grid(100, frames_rule["stride"], frames_rule["offset"])
    assert editor.widget_value(sampler, "resolution preset") == "custom"
    editor.shot("snapped")

    # a preset fills width and height with a size already on the grid
    offered = editor.pick_from_combo(sampler, "resolution preset", "720p portrait", shot="presets")
    presets = {p["name"]: p for p in rule["presets"][str(step)]}
    assert offered[1:] == list(presets)
    chosen = next(p for p in presets.values() if p["name"].startswith("720p portrait"))
    assert (editor.widget_value(sampler, "width"), editor.widget_value(sampler, "height")) == \
        (chosen["width"], chosen["height"])
    assert editor.widget_value(sampler, "resolution preset") == chosen["name"]

    # the estimate, for the GPU the server reports (this server runs on the CPU: no measurement for it)
    estimate = editor.wait_for_info(sampler, r"No measurement for this GPU \(cpu\)")
    assert status["variant"] in estimate
    editor.shot("estimate")

    # demo models in, Run, and the editor shows the finished video
    editor.use_demo_models()
    editor.center_on(loader)
    editor.wait_for_info(loader, r"✓ All files present")
    editor.shot("demo-models")
    encoder = editor.node_ids("ReelsmithEncodeVideo")[0]
    output = editor.run_and_wait_for_output(encoder)
    assert output["images"][0]["filename"].endswith(".mp4") and output["animated"] == [True]
    editor.center_on(encoder, scale=0.6)
    video = editor.video_in_editor()
    written = output["images"][0]
    assert written["filename"] in video["src"]
    with av.open(str(editor_server.output_dir / written["subfolder"] / written["filename"])) as container:
        stream = container.streams.video[0]
        assert (video["width"], video["height"]) == (stream.width, stream.height)
    editor.shot("video")
    assert not editor.page_errors, editor.page_errors
    assert not editor.our_console_problems()


@pytest.fixture
def h100_editor(editor):
    """The editor as it is on an H100 box: /system_stats names that GPU (the rest of the answer is the server's)."""
    def name_an_h100(route):
        response = route.fetch()
        stats = response.json()
        stats["devices"][0].update(name=H100_DEVICE, type="cuda")
        route.fulfill(response=response, json=stats)

    editor.page.route(re.compile(r".*/system_stats$"), name_an_h100)
    return editor


def test_estimate_on_an_h100_from_the_measured_table(h100_editor):
    editor = h100_editor
    editor.open()
    editor.open_template("Reelsmith", "wan22_t2v_720p")
    sampler = editor.node_ids("ReelsmithWan22TextToVideo")[0]
    editor.center_on(sampler)
    text = editor.wait_for_info(sampler, r"NVIDIA H100 80GB HBM3: measured")
    # 40 steps, CFG above 1 on both experts: 80 forwards of 11.99 s (fp8_e4m3fn_fast, compile off, 720p x 81)
    assert "≈ 16 min for 80 forwards (11.99 s each)" in text and "peak ≈ 21.6 GiB" in text
    assert "read from the file name" in text
    editor.shot("estimate-h100-measured")

    editor.pick_from_combo(sampler, "resolution preset", "1080p landscape")
    text = editor.wait_for_info(sampler, r"extrapolated from t2v-a14b fp8_e4m3fn_fast, compile off")
    assert "720p x 81 frames (11.99 s/forward" in text and "peak > 21.6 GiB" in text
    editor.shot("estimate-h100-extrapolated")

    editor.pick_from_combo(sampler, "resolution preset", "480p landscape")
    text = editor.wait_for_info(sampler, r"measured t2v-a14b .* 480p")
    assert "not recorded at 480p" in text and "peak ≤ 21.6 GiB" in text
    editor.shot("estimate-h100-480p")
    assert not editor.page_errors and not editor.our_console_problems()


def test_avatar_estimate_on_an_h100_from_the_measured_table(h100_editor):
    editor = h100_editor
    editor.open()
    editor.open_template("Reelsmith", "hunyuan_avatar_portrait_talking")
    sampler = editor.node_ids("ReelsmithHunyuanAvatarSampler")[0]
    loader = editor.node_ids("ReelsmithHunyuanAvatarLoader")[0]
    editor.center_on(sampler)
    # the shipped workflow loads fp8, measured with the whole pipeline at 704x896: extrapolated to a square 704
    text = editor.wait_for_info(sampler, r"extrapolated from 13b fp8_e4m3fn_fast")
    assert "704x896 x 129 frames (24.9 s/forward at batch 2" in text and "peak ≤ 29.5 GiB" in text
    editor.shot("estimate-h100-fp8")

    editor.pick_from_combo(loader, "precision", "bf16")
    editor.center_on(sampler)
    text = editor.wait_for_info(sampler, r"NVIDIA H100 80GB HBM3: measured 13b bf16")
    # 50 steps, one batched cond + uncond forward each (16.8 s on the H100, check_avatar_gpu.py), one window assumed
    assert "≈ 14 min for 50 steps x 1 window (16.80 s per step, cond + uncond in one batch)" in text
    assert "peak ≈ 40.2 GiB" in text and "1 window assumed (the audio's length is not known here)" in text
    assert "a square portrait assumed (704x704)" in text
    editor.shot("estimate-h100-bf16")

    editor.pick_from_combo(loader, "offload", "block")
    editor.center_on(sampler)
    text = editor.wait_for_info(sampler, r"offload block")
    assert "peak ≈ 17.2 GiB" in text and "≈ 14 min" in text
    editor.shot("estimate-h100-block-offload")
    assert not editor.page_errors and not editor.our_console_problems()
