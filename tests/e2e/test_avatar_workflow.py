"""End-to-end tier: the shipped Hunyuan Video Avatar workflow, queued over HTTP on a real ComfyUI with the pack and
the demo models (what `render.py --demo` does), turns a portrait and a speech clip from the server's input folder into
an MP4 whose audio track is the speech trimmed to the video; progress and previews arrive per step; Cancel stops a
run within a step; a picture without a face is refused with a pointer to the MASK input."""

from __future__ import annotations

import pathlib

import av
import pytest
from PIL import Image

import comfyui_client
from reelsmith.engine.demo_avatar import demo_portrait, write_speech_wav
from test_wan_workflows import _demo_prompt

pytestmark = pytest.mark.e2e

PACK_ROOT = pathlib.Path(__file__).resolve().parents[2]
WORKFLOW = PACK_ROOT / "workflows" / "hunyuan_avatar_portrait_talking.json"
WORKFLOW_FILES = [WORKFLOW, PACK_ROOT / "workflows" / "api" / WORKFLOW.name]
SAMPLER = "ReelsmithHunyuanAvatarSampler"
SPEECH_SECONDS = 0.45   # 11 frames at 25 fps (0.44 s): the audio is longer than the video by 10 ms
AUDIO_RATE = 44100


@pytest.fixture(scope="module")
def server(comfyui_server):
    """The workflow's inputs in the server's input folder: a portrait (320x384) and a stereo speech clip."""
    demo_portrait(320, 384).save(comfyui_server.input_dir / "portrait.png")
    Image.new("RGB", (320, 384), (128, 128, 128)).save(comfyui_server.input_dir / "flat.png")
    write_speech_wav(comfyui_server.input_dir / "speech.wav", SPEECH_SECONDS, AUDIO_RATE)
    if "LoadAudio" not in comfyui_server.client.object_info(refresh=True):
        pytest.fail(f"ComfyUI's LoadAudio did not load (see {comfyui_server.log_path}); the avatar workflow needs it")
    return comfyui_server


def _streams(path: pathlib.Path) -> tuple[int, int, int, float, float, int]:
    """(video frames, width, height, video seconds, audio seconds, audio channels) of a media file."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = [frame for frame in container.decode(video=0)]
        rate = float(video.average_rate)
    with av.open(str(path)) as container:
        audio = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(audio=0))
        audio_rate, channels = audio.rate, audio.channels
    return len(frames), frames[0].width, frames[0].height, len(frames) / rate, samples / audio_rate, channels


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_shipped_avatar_workflow_renders_with_demo_models(server, path, tmp_path):
    client = server.client
    events: list[comfyui_client.Progress] = []
    entry = client.wait(client.queue(_demo_prompt(client, path)), on_progress=events.append, timeout=300)
    videos = [f for f in client.download_outputs(entry, tmp_path) if f.suffix == ".mp4"]
    assert len(videos) == 1
    frames, width, height, video_seconds, audio_seconds, channels = _streams(videos[0])
    # the portrait at image_size 256 (the --demo size): 256 x 320, aspect kept; 0.45 s of speech -> 11 frames
    assert (frames, width, height) == (11, 256, 320)
    assert video_seconds == pytest.approx(11 / 25)
    # the speech trimmed to the video (0.44 s of 0.45 s), give or take one AAC frame of encoder padding
    assert channels == 2 and abs(audio_seconds - video_seconds) <= 1024 / AUDIO_RATE + 1e-3
    assert audio_seconds < SPEECH_SECONDS + 1024 / AUDIO_RATE
    steps = [(e.value, e.total) for e in events if e.event == "progress" and e.class_type == SAMPLER]
    assert steps == [(1, 2), (2, 2)]  # one window: one update per denoising step
    assert any(e.event == "preview" and e.class_type == SAMPLER for e in events)


def test_avatar_cancel_stops_within_a_step(server, tmp_path):
    client = server.client
    path = PACK_ROOT / "workflows" / "api" / WORKFLOW.name
    prompt_id = client.queue(_demo_prompt(client, path, ["Hunyuan Avatar Sampler.steps=200"]))
    seen = []

    def on_progress(event):
        if event.event == "progress" and event.class_type == SAMPLER:
            seen.append(event.value)
            if event.value == 3:
                client.interrupt(prompt_id)

    with pytest.raises(comfyui_client.Interrupted):
        client.wait(prompt_id, on_progress=on_progress, timeout=300)
    assert 3 <= max(seen) <= 5, seen
    # and the server is fine afterwards: the workflow renders again
    entry = client.wait(client.queue(_demo_prompt(client, path)), timeout=300)
    assert any(f.suffix == ".mp4" for f in client.download_outputs(entry, tmp_path))


def test_a_picture_without_a_face_points_at_the_mask_input(server):
    client = server.client
    api = _demo_prompt(client, PACK_ROOT / "workflows" / "api" / WORKFLOW.name, ["Portrait.image=\"flat.png\""])
    with pytest.raises(comfyui_client.NodeExecutionError) as error:
        client.wait(client.queue(api), timeout=300)
    assert error.value.node_type == SAMPLER
    assert "No face found" in error.value.exception_message and "MASK" in error.value.exception_message
