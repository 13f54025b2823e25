"""HunyuanVideo-Avatar generation end to end on the CPU with the demo models (portrait + short speech -> frames,
trimmed audio, fps), progress per step and window with a latent preview, cancellation within a step, the cleanup
after a run / cancel / error, out-of-memory advice, and every bad input refused before any model runs."""

import numpy as np
import pytest
import torch

from reelsmith.engine import host
from reelsmith.engine.demo_avatar import demo_portrait, demo_speech, write_avatar_demo_models
from reelsmith.engine.errors import CancelledError, InvalidInputError, OutOfMemoryError
from reelsmith.engine.models.avatar_layouts import resolve_avatar_folder
from reelsmith.engine.models.avatar_model import AvatarLoadOptions, load_avatar_model
from reelsmith.engine.pipelines import avatar_generate
from reelsmith.engine.pipelines.avatar_generate import FIRST_WINDOW, generate_avatar_video

RATE = 44100


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_avatar_demo_models(root)
    files = resolve_avatar_folder(root / "reelsmith-demo" / "HunyuanVideo-Avatar")
    return load_avatar_model(files, AvatarLoadOptions(precision="bf16"), torch.device("cpu"))


def _image(width=256, height=256, flat=False):
    picture = np.asarray(demo_portrait(width, height), dtype=np.float32) / 255.0
    if flat:
        picture = np.full_like(picture, 0.5)
    return torch.from_numpy(picture.copy())[None]


def _audio(seconds=0.4, scale=1.0, rate=RATE):
    return {"waveform": torch.from_numpy(demo_speech(seconds, rate) * scale)[None], "sample_rate": rate}


@pytest.fixture
def runs(model, monkeypatch):
    """Counts transformer calls and cleanups."""
    counts = {"transformer": 0, "released": 0}
    forward = model.transformer.forward

    def counting_forward(*args, **kwargs):
        counts["transformer"] += 1
        return forward(*args, **kwargs)

    release = model.release_after_run

    def counting_release():
        counts["released"] += 1
        release()

    monkeypatch.setattr(model.transformer, "forward", counting_forward)
    monkeypatch.setattr(model, "release_after_run", counting_release)
    return counts


def test_portrait_and_speech_become_frames_with_trimmed_audio(model, runs):
    steps_seen = []
    video = generate_avatar_video(model, image=_image(), audio=_audio(0.4), prompt="A woman talks to the camera.",
                                  image_size=256, steps=2, cfg=1.0, seed=3,
                                  on_step=lambda step, total, x0: steps_seen.append((step, total, tuple(x0.shape))))
    assert video.frames.shape == (10, 256, 256, 3)  # 0.4 s at 25 fps
    assert video.frames.dtype == torch.float32 and 0.0 <= float(video.frames.min()) <= float(video.frames.max()) <= 1.0
    assert float(video.frames.std()) > 0.01
    assert video.fps == 25.0
    # the input audio (44.1 kHz stereo) cut to the video's 10 / 25 s, same rate and channels
    assert video.audio["sample_rate"] == RATE and video.audio["waveform"].shape == (1, 2, int(0.4 * RATE))
    torch.testing.assert_close(video.audio["waveform"], _audio(0.4)["waveform"])
    # one update per step (one window), each with the window's x0 in the 16-channel latent space
    assert steps_seen == [(1, 2, (1, 16, 33, 32, 32)), (2, 2, (1, 16, 33, 32, 32))]
    assert runs == {"transformer": 2, "released": 1}  # cfg 1: one branch, one call a step
    assert video.face_mask.shape == (1, 256, 256) and 0 < float(video.face_mask.mean()) < 1
    assert video.latents.shape == (1, 16, 33, 32, 32)


def _fake_decode(record):
    def decode(vae, latents, frames):  # decoding is tested on its own (test_hunyuan_vae)
        record["shape"], record["frames"] = tuple(latents.shape), frames
        return torch.zeros(frames, 256, 256, 3)
    return decode


def test_guidance_at_half_frame_rate_in_first_window_mode(model, runs, monkeypatch):
    decoded = {}
    monkeypatch.setattr(avatar_generate, "decode_avatar_latents", _fake_decode(decoded))
    video = generate_avatar_video(model, image=_image(), audio=_audio(0.5), prompt="", image_size=256, steps=1, cfg=7.5,
                                  fps=12.5, length=FIRST_WINDOW, seed=4)
    assert video.frames.shape[0] == 6 and video.fps == 12.5   # floor(0.5 s x 12.5)
    assert video.audio["waveform"].shape[-1] == int(round(6 / 12.5 * RATE))
    assert runs["transformer"] == 1                             # both guidance branches in one batch of two
    assert decoded == {"shape": (1, 16, 33, 32, 32), "frames": 6} and torch.isfinite(video.latents).all()


def test_long_audio_reports_every_window_of_every_step(model, runs, monkeypatch):
    decoded = {}
    monkeypatch.setattr(avatar_generate, "decode_avatar_latents", _fake_decode(decoded))
    seen = []
    video = generate_avatar_video(model, image=_image(), audio=_audio(6.0), prompt="", image_size=256, steps=1, cfg=1.0,
                                  seed=5, on_step=lambda step, total, x0: seen.append((step, total)))
    # 150 frames: a circle of 65 latent frames, two 33-frame windows per step
    assert seen == [(1, 2), (2, 2)] and runs["transformer"] == 2
    assert decoded == {"shape": (1, 16, 39, 32, 32), "frames": 150} and video.frames.shape[0] == 150


def test_cancel_stops_within_the_step_and_cleans_up(model, runs, monkeypatch):
    def cancel(step, total, x0):
        raise CancelledError("stop")

    monkeypatch.setattr(avatar_generate, "decode_avatar_latents", lambda *a: pytest.fail("decoded after a cancel"))
    with pytest.raises(CancelledError):
        generate_avatar_video(model, image=_image(), audio=_audio(), prompt="", image_size=256, steps=5, cfg=1.0,
                              on_step=cancel)
    assert runs == {"transformer": 1, "released": 1}


def test_interrupt_hook_stops_before_the_next_window(model, runs, monkeypatch):
    calls = {"n": 0}

    def interrupt_on_second_window():
        calls["n"] += 1
        if calls["n"] >= 3:
            raise CancelledError("interrupted")

    monkeypatch.setattr(host, "throw_if_interrupted", interrupt_on_second_window)
    monkeypatch.setattr(host.StepReporter, "step", lambda self, step, x0=None: None)  # only the sampler's hook asks
    with pytest.raises(CancelledError):
        generate_avatar_video(model, image=_image(), audio=_audio(6.0), prompt="", image_size=256, steps=3, cfg=1.0)
    # asked after the audio features (1), then before each window (2, 3): step 1's second window never runs
    assert calls["n"] == 3 and runs["transformer"] == 1
    assert runs["released"] == 1


def test_out_of_memory_says_what_would_fit_and_cleans_up(model, runs, monkeypatch):
    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(model.transformer, "forward", no_memory)
    with pytest.raises(OutOfMemoryError) as error:
        generate_avatar_video(model, image=_image(), audio=_audio(), prompt="", image_size=256, steps=1)
    message = str(error.value)
    assert "Out of GPU memory animating a 256x256 portrait, 10 frames" in message
    assert "precision fp8_e4m3fn" in message and "offload" in message and "first 129 frames" in message
    assert runs["released"] == 1


@pytest.mark.parametrize("change, expected", [
    (dict(image=_image(flat=True)), "No face found in the reference image.*face MASK"),
    (dict(image=_image(200, 300)), "200x300 px.*at least 256 px"),
    (dict(image_size=300), "multiple of 64"),
    (dict(audio=_audio(scale=0.0)), "audio is silent"),
    (dict(audio={"waveform": torch.zeros(1, 2, 0), "sample_rate": RATE}), "audio is empty"),
    (dict(audio=_audio(3.0), max_audio_seconds=2.0), r"3\.0 s long; the limit is 2 s"),
    (dict(audio=_audio(0.02)), "shorter than one video frame"),
    (dict(fps=30), "25 or 12.5 fps"),
    (dict(length="everything"), "length must be one of"),
    (dict(steps=0), "steps must be at least 1"),
    (dict(faces="biggest"), "faces must be one of"),
    (dict(face_mask=torch.zeros(1, 256, 256)), "MASK is empty"),
])
def test_bad_input_is_refused_before_any_model_runs(model, monkeypatch, change, expected):
    monkeypatch.setattr(model, "encode_text", lambda *a: pytest.fail("a model ran before the input was checked"))
    inputs = dict(image=_image(), audio=_audio(), prompt="", image_size=256, steps=1)
    inputs.update(change)
    with pytest.raises(InvalidInputError, match=expected):
        generate_avatar_video(model, **inputs)


def test_a_face_mask_replaces_the_detector(model, monkeypatch):
    class Reached(Exception):
        pass

    def stop(*args):
        raise Reached

    monkeypatch.setattr(model, "detector", None)
    monkeypatch.setattr(model, "encode_text", stop)
    with pytest.raises(InvalidInputError, match="(?s)no face MASK connected.*--include 'ckpts/det_align/\\*'"):
        generate_avatar_video(model, image=_image(), audio=_audio(), prompt="", image_size=256, steps=1)
    mask = torch.zeros(1, 256, 256)
    mask[0, 60:160, 80:180] = 1.0
    with pytest.raises(Reached):  # a flat picture has no face, but the MASK says where to move it
        generate_avatar_video(model, image=_image(flat=True), audio=_audio(), prompt="", image_size=256, steps=1,
                              face_mask=mask)
