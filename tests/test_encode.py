"""Reelsmith Encode Video on the CPU: decode what was written and compare frames, counts, durations and audio."""

from __future__ import annotations

import os
import subprocess
import sys
import pathlib

import av
import numpy as np
import pytest
import torch

from reelsmith.engine import host
from reelsmith.engine.errors import BackendUnavailableError, InvalidInputError
from reelsmith.engine.post import codecs, nvenc_probe
from reelsmith.engine.post.encode import EncodeSettings, choose_encoder, encode_video, settings_errors
from reelsmith.nodes.encode import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, ReelsmithEncodeVideo

FPS = 16


def smooth_clip(frames=12, height=72, width=96) -> torch.Tensor:
    """Soft gradients moving slowly: what a good encoder reproduces above 35 dB PSNR."""
    y = torch.linspace(0, 1, height)[:, None]
    x = torch.linspace(0, 1, width)[None, :]
    clip = []
    for i in range(frames):
        shift = i / (4 * frames)
        clip.append(torch.stack([
            (0.2 + 0.6 * ((x + shift) % 1.0) * 0.5 + 0.3 * y).expand(height, width).clamp(0, 1),
            (0.3 + 0.5 * y * (1 - x) + 0.1 * shift).expand(height, width).clamp(0, 1),
            (0.6 - 0.3 * x + 0.2 * shift).expand(height, width).clamp(0, 1),
        ], dim=-1))
    return torch.stack(clip).float()


def decode(path) -> tuple[np.ndarray, float, str]:
    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        return frames, container.duration / av.time_base, container.streams.video[0].codec_context.name


def psnr(decoded: np.ndarray, clip: torch.Tensor) -> float:
    reference = (clip * 255).round().numpy()
    mse = np.mean((decoded.astype(np.float64) - reference) ** 2)
    return 10 * np.log10(255 ** 2 / mse)


def audio_end(path) -> tuple[float, str]:
    """End time of the audio stream from its packets (start + duration of the last one), and its codec."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        end = max((p.pts + p.duration) * p.time_base for p in container.demux(stream) if p.size)
        return float(end), stream.codec_context.name


def has_encoder(name):
    return name in av.codecs_available


def test_h264_mp4_round_trip(tmp_path):
    clip = smooth_clip()
    report = encode_video(clip, FPS, tmp_path / "clip.mp4", EncodeSettings(encoder="cpu"))
    frames, duration, codec = decode(report.path)
    assert codec == "h264" and report.encoder == "libx264" and not report.hardware
    assert frames.shape == (12, 72, 96, 3)
    assert duration == pytest.approx(12 / FPS, abs=1e-3)
    assert psnr(frames, clip) > 35
    assert list(tmp_path.iterdir()) == [report.path]  # no temporary file left beside it
    with av.open(str(report.path)) as container:
        context = container.streams.video[0].codec_context
        assert (context.color_primaries, context.color_trc, context.colorspace, context.color_range) == (1, 1, 1, 1)
    assert report.path.read_bytes()[4:8] == b"ftyp"
    data = report.path.read_bytes()
    assert -1 < data.find(b"moov") < data.find(b"mdat")  # faststart: the index comes before the media


@pytest.mark.parametrize("seconds", [0.5, 2.0], ids=["trimmed", "padded"])
def test_audio_length_equals_video_duration(tmp_path, seconds):
    clip = smooth_clip(frames=16)  # 1.0 s
    audio = {"waveform": torch.sin(torch.linspace(0, 2000, int(44100 * seconds)))[None, None].repeat(1, 2, 1) * 0.3,
             "sample_rate": 44100}
    report = encode_video(clip, FPS, tmp_path / "a.mp4", EncodeSettings(encoder="cpu"), audio=audio)
    assert report.audio_samples == 48000  # exactly the video's duration at 48 kHz
    assert ("trimmed" if seconds > 1 else "padded") in report.audio
    end, codec = audio_end(report.path)
    assert codec == "aac"
    assert end == pytest.approx(1.0, abs=1e-3)
    frames, duration, _ = decode(report.path)
    assert len(frames) == 16 and duration == pytest.approx(1.0, abs=0.03)


def test_webm_vp9_opus(tmp_path):
    clip = smooth_clip()
    audio = {"waveform": torch.randn(1, 1, 16000) * 0.1, "sample_rate": 16000}  # mono, 1 s, longer than the video
    settings = EncodeSettings(container="webm", codec="vp9")
    report = encode_video(clip, FPS, tmp_path / "v.webm", settings, audio=audio)
    frames, duration, codec = decode(report.path)
    assert codec == "vp9" and report.encoder == "libvpx-vp9" and "NVENC has no vp9" in report.why
    assert len(frames) == 12 and psnr(frames, clip) > 35
    end, audio_codec = audio_end(report.path)
    assert audio_codec in ("opus", "libopus")
    assert end == pytest.approx(12 / FPS, abs=0.021)  # within one 20 ms Opus frame (webm keeps ms timestamps)
    assert report.audio_samples == round(12 / FPS * 48000)


@pytest.mark.parametrize("codec,encoder", [("hevc", "libx265"), ("av1", "libsvtav1")])
def test_ten_bit(tmp_path, codec, encoder):
    if not has_encoder(encoder):
        pytest.skip(f"this PyAV build has no {encoder}")
    clip = smooth_clip(frames=6, height=64, width=64)
    report = encode_video(clip, FPS, tmp_path / "ten.mp4",
                          EncodeSettings(codec=codec, encoder="cpu", pixel_format="yuv420p10le",
                                         quality=23 if codec == "hevc" else 30))
    with av.open(str(report.path)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p10le"
    frames, _, _ = decode(report.path)
    assert len(frames) == 6 and psnr(frames, clip) > 35


def test_ten_bit_vp9_is_refused():
    problems = settings_errors(EncodeSettings(container="webm", codec="vp9", pixel_format="yuv420p10le"))
    assert problems and "libvpx-vp9 cannot encode yuv420p10le" in problems[0]


def test_odd_size_pad_and_fail(tmp_path):
    clip = smooth_clip(frames=4, height=33, width=47)
    report = encode_video(clip, FPS, tmp_path / "odd.mp4", EncodeSettings(encoder="cpu"))
    frames, _, _ = decode(report.path)
    assert frames.shape == (4, 34, 48, 3) and report.padded and "padded to even" in report.line
    # the added row and column repeat the edge
    assert np.abs(frames[:, 33].astype(int) - frames[:, 32].astype(int)).mean() < 4
    with pytest.raises(InvalidInputError, match="47x33.*even width and height"):
        encode_video(clip, FPS, tmp_path / "fail.mp4", EncodeSettings(encoder="cpu", odd_size="fail"))
    assert not (tmp_path / "fail.mp4").exists()


def test_empty_batch_is_an_error(tmp_path):
    with pytest.raises(InvalidInputError, match="no frames"):
        encode_video(torch.zeros(0, 32, 32, 3), FPS, tmp_path / "empty.mp4", EncodeSettings(encoder="cpu"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("container,codec", [("webm", "h264"), ("webm", "hevc"), ("mp4", "vp9")])
def test_codec_container_mismatch(tmp_path, container, codec):
    settings = EncodeSettings(container=container, codec=codec)
    with pytest.raises(InvalidInputError, match=f"{container} file cannot hold {codec}"):
        encode_video(smooth_clip(frames=2), FPS, tmp_path / f"x.{container}", settings)
    message = ReelsmithEncodeVideo.VALIDATE_INPUTS(container=container, codec=codec, encoder="auto",
                                                   pixel_format="yuv420p")
    assert isinstance(message, str) and f"cannot hold {codec}" in message


def test_nvenc_vp9_is_refused():
    assert "NVENC has no vp9" in settings_errors(EncodeSettings(container="webm", codec="vp9", encoder="nvenc"))[0]


@pytest.mark.parametrize("codec", ["h264", "hevc", "av1"])
def test_nvenc_encodes_where_a_session_opens(tmp_path, codec):
    spec = codecs.encoder_spec(codec, "nvenc")
    probe = nvenc_probe.probe_nvenc(spec["ffmpeg"])
    if not probe.available:
        with pytest.raises(BackendUnavailableError) as error:
            choose_encoder(EncodeSettings(codec=codec, encoder="nvenc"))
        assert probe.gpu in str(error.value) and "set encoder to cpu" in str(error.value)
        pytest.skip(f"{spec['ffmpeg']} cannot open a session on {probe.gpu}: {probe.reason}")
    clip = smooth_clip()
    report = encode_video(clip, FPS, tmp_path / "nv.mp4", EncodeSettings(codec=codec, encoder="nvenc"))
    assert report.hardware and report.encoder == spec["ffmpeg"]
    frames, _, _ = decode(report.path)
    assert len(frames) == 12 and psnr(frames, clip) > 30


def test_auto_falls_back_and_says_why(tmp_path):
    probe = nvenc_probe.probe_nvenc("h264_nvenc")
    report = encode_video(smooth_clip(frames=3), FPS, tmp_path / "auto.mp4", EncodeSettings(encoder="auto"))
    if probe.available:
        assert report.hardware and "NVENC session opened" in report.line
    else:
        assert report.encoder == "libx264" and not report.hardware
        assert report.line.startswith(f"h264 via libx264 (CPU): NVENC could not open a session on {probe.gpu} (")
        assert probe.reason in report.line
    assert nvenc_probe.probe_nvenc("h264_nvenc") is probe  # cached once per process


def test_failure_mid_encode_leaves_no_file(tmp_path):
    def frames():
        yield torch.rand(32, 32, 3)
        yield torch.rand(32, 32, 3)
        yield torch.rand(48, 32, 3)  # wrong size

    with pytest.raises(InvalidInputError, match="frame 2 is 32x48 but the first frame is 32x32"):
        encode_video(frames(), FPS, tmp_path / "broken.mp4", EncodeSettings(encoder="cpu"))
    assert list(tmp_path.iterdir()) == []


def test_interrupt_mid_encode_leaves_no_file(tmp_path):
    class Stop(Exception):
        pass

    def on_frame(done, total):
        if done == 3:
            raise Stop

    with pytest.raises(Stop):
        encode_video(smooth_clip(frames=6), FPS, tmp_path / "stopped.mp4", EncodeSettings(encoder="cpu"),
                     on_frame=on_frame)
    assert list(tmp_path.iterdir()) == []


def test_bitrate_mode_and_presets(tmp_path):
    report = encode_video(smooth_clip(), FPS, tmp_path / "b.mp4",
                          EncodeSettings(encoder="cpu", rate_control="bitrate", bitrate_kbps=500, preset="veryfast"))
    frames, _, _ = decode(report.path)
    assert len(frames) == 12


def test_node_contract():
    assert NODE_DISPLAY_NAME_MAPPINGS == {"ReelsmithEncodeVideo": "Reelsmith Encode Video"}
    node = NODE_CLASS_MAPPINGS["ReelsmithEncodeVideo"]
    assert node.CATEGORY == "Reelsmith/Delivery" and node.DESCRIPTION and node.OUTPUT_NODE
    assert node.RETURN_TYPES == ("VIDEO", "STRING", "STRING")
    spec = node.INPUT_TYPES()
    for section in spec.values():
        for name, (kind, options) in section.items():
            assert options.get("tooltip"), name
    assert spec["required"]["fps"][0] == "FLOAT" and spec["optional"]["audio"][0] == "AUDIO"


def test_node_writes_into_the_output_folder(tmp_path, monkeypatch):
    # outside ComfyUI the output folder is ./output (even if another test put ComfyUI on sys.path)
    monkeypatch.setattr(host, "comfyui_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    out = ReelsmithEncodeVideo().encode(
        smooth_clip(frames=5), 16.0, "video/test", "mp4", "h264", "cpu", "quality", 23, 8000, "fast", "yuv420p",
        True, True, "pad")
    video, path, line = out["result"]
    assert out["ui"] == {"images": [{"filename": "test_00001_.mp4", "subfolder": "video", "type": "output"}],
                         "animated": (True,)}
    assert pathlib.Path(path) == tmp_path / "output" / "video" / "test_00001_.mp4" and pathlib.Path(path).is_file()
    assert line.startswith("h264 via libx264 (CPU): encoder set to cpu")
    second = ReelsmithEncodeVideo().encode(
        smooth_clip(frames=5), 16.0, "video/test", "mp4", "h264", "cpu", "quality", 23, 8000, "fast", "yuv420p",
        True, True, "pad")
    assert second["ui"]["images"][0]["filename"] == "test_00002_.mp4"


def test_video_wrapper_where_comfy_api_imports(tmp_path):
    comfyui_dir = os.environ.get("COMFYUI_DIR")
    if not comfyui_dir:
        pytest.skip("set COMFYUI_DIR to check the native VIDEO wrapper (comfy_api.latest.VideoFromFile)")
    report = encode_video(smooth_clip(frames=5), FPS, tmp_path / "w.mp4", EncodeSettings(encoder="cpu"))
    # a fresh interpreter with ComfyUI importable, so this session's processes keep running without it
    tests_dir = pathlib.Path(__file__).resolve().parent
    code = (f"import sys; sys.path.insert(0, {str(tests_dir)!r}); import conftest; sys.path.append({comfyui_dir!r});"
            f"from reelsmith.engine import host; v = host.video_from_file({str(report.path)!r});"
            f"print(type(v).__name__, v.get_dimensions(), v.get_frame_count(), round(v.get_duration(), 3))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if "No module named 'comfy_api'" in result.stderr:
        pytest.skip("comfy_api does not import here")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[-2] == "VideoFromFile (96, 72) 5 0.312"


def test_probe_reason_names_the_nvenc_status():
    # FFmpeg's log lines from opening h264_nvenc on an H100 (recorded there): the status code gets its NVENC name
    logs = [(16, "h264_nvenc", "OpenEncodeSessionEx failed: unsupported device (2): (no details)\n"),
            (16, "h264_nvenc", "No capable devices found\n"), (40, "h264_nvenc", "Nvenc unloaded\n")]
    assert nvenc_probe._reason(PermissionError("avcodec_open2"), logs) == (
        "NV_ENC_ERR_UNSUPPORTED_DEVICE: OpenEncodeSessionEx failed: unsupported device (2): (no details); "
        "No capable devices found")
