"""End-to-end: Reelsmith Encode Video on a real ComfyUI. EmptyImage (a batch of frames) -> ReelsmithEncodeVideo writes
an MP4 in the output folder that /view serves and PyAV decodes, shows it as an animated (video) preview, and core
SaveVideo accepts its VIDEO output."""

from __future__ import annotations

import itertools

import av
import pytest

pytestmark = pytest.mark.e2e

_colors = itertools.count(0x203040, 0x010101)  # a new input each prompt, so ComfyUI never serves a cached result


@pytest.fixture(scope="module")
def server(comfyui_server):
    if "ReelsmithEncodeVideo" not in comfyui_server.client.object_info():
        pytest.skip("ReelsmithEncodeVideo is not registered in nodes/__init__.py of this checkout")
    return comfyui_server


def _prompt(prefix: str, frames: int = 9, width: int = 64, height: int = 48, save: bool = False, **encode) -> dict:
    inputs = {"images": ["1", 0], "fps": 16.0, "filename_prefix": prefix, "container": "mp4", "codec": "h264",
              "encoder": "auto", "rate_control": "quality", "quality": 23, "bitrate_kbps": 8000, "preset": "fast",
              "pixel_format": "yuv420p", "faststart": True, "bt709": True, "odd_size": "pad"}
    inputs.update(encode)
    prompt = {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": width, "height": height, "batch_size": frames, "color": next(_colors)}},
        "2": {"class_type": "ReelsmithEncodeVideo", "inputs": inputs},
    }
    if save:
        prompt["3"] = {"class_type": "SaveVideo", "inputs": {"video": ["2", 0], "filename_prefix": prefix + "_saved",
                                                             "format": "auto", "codec": "auto"}}
    return prompt


def _decode(path) -> tuple[int, int, int, float]:
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
        return len(frames), frames[0].width, frames[0].height, container.duration / av.time_base


def test_encode_node_writes_a_playable_mp4(server, tmp_path):
    client = server.client
    entry = client.wait(client.queue(_prompt("e2e/encode")), timeout=300)
    output = entry["outputs"]["2"]
    assert output["animated"] == [True]  # the frontend shows "animated" non-image files in a <video> element
    (record,) = output["images"]
    assert record["type"] == "output" and record["subfolder"] == "e2e" and record["filename"].endswith(".mp4")
    (path,) = client.download_outputs(entry, tmp_path)
    assert _decode(path) == (9, 64, 48, pytest.approx(9 / 16, abs=1e-3))
    assert (server.output_dir / "e2e" / record["filename"]).is_file()
    assert not [p for p in (server.output_dir / "e2e").iterdir() if ".partial-" in p.name]


def test_core_save_video_accepts_our_video(server, tmp_path):
    client = server.client
    entry = client.wait(client.queue(_prompt("e2e/chain", save=True, width=63)), timeout=300)
    files = client.download_outputs(entry, tmp_path)
    saved = [f for f in files if "_saved" in f.name]
    assert len(saved) == 1 and saved[0].suffix == ".mp4"
    assert _decode(saved[0])[:3] == (9, 64, 48)  # odd width padded to even, carried through SaveVideo


def test_codec_mismatch_is_refused_at_validation(server):
    from comfyui_client import WorkflowRejected

    client = server.client
    with pytest.raises(WorkflowRejected) as error:
        client.queue(_prompt("e2e/bad", container="webm", codec="h264"))
    assert "cannot hold h264" in str(error.value.format())
