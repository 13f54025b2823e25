"""Avatar sampling loop with dummy denoisers: seeded CPU noise, the guidance schedule applied with the right
inputs per branch (negative prompt / zero audio / 0.6 face mask, then audio-only), batched and separate
guidance equal, long audio through the windows, progress per window and cancellation within a step."""

import pytest
import torch

from reelsmith.engine.errors import CancelledError, InvalidInputError
from reelsmith.engine.pipelines.avatar_sampler import (AvatarConditioning, AvatarSampleRequest, initial_noise,
                                                       sample_avatar)
from reelsmith.engine.pipelines.avatar_schedule import flow_sigmas
from reelsmith.engine.pipelines.avatar_windows import plan_avatar_windows

H, W = 2, 3


def _conditioning(frames=129, reference_frames=33, fps=25.0):
    return AvatarConditioning(
        text_states=torch.ones(1, 6, 4), text_mask=torch.ones(1, 6, dtype=torch.long), pooled=torch.ones(1, 5),
        negative_text_states=-torch.ones(1, 6, 4), negative_text_mask=torch.ones(1, 6, dtype=torch.long),
        negative_pooled=-torch.ones(1, 5),
        reference_latents=torch.randn(1, 16, reference_frames, H, W, generator=torch.Generator().manual_seed(7)),
        audio_features=torch.full((1, frames, 10, 5, 2), 0.5), face_mask=torch.ones(1, 1, 1, H, W), fps=fps)


class RecordingDenoiser:
    """velocity = text mean + 10 * audio mean + 100 * face mask mean (+ `slope` * latents), per batch row."""

    def __init__(self, slope=0.0):
        self.slope = slope
        self.calls = []

    def __call__(self, latents, timestep, inputs):
        self.calls.append((latents.shape[0], timestep.clone(), inputs))
        rows = latents.shape[0]
        value = (inputs.text_states.mean(dim=(1, 2)) + 10 * inputs.audio_features.mean(dim=(1, 2, 3, 4))
                 + 100 * inputs.face_mask.mean(dim=(1, 2, 3, 4)))
        return value.view(rows, 1, 1, 1, 1) + self.slope * latents


def test_noise_is_seeded_on_a_cpu_generator():
    plan = plan_avatar_windows(100)
    expected = torch.randn((1, 16, 33, H, W), generator=torch.Generator("cpu").manual_seed(42))
    torch.testing.assert_close(initial_noise(42, plan, H, W), expected, rtol=0, atol=0)
    result = sample_avatar(lambda x, t, inputs: torch.zeros_like(x), _conditioning(100), AvatarSampleRequest(seed=42,
                           steps=3, cfg_scale=1.0))
    torch.testing.assert_close(result.latents, expected, rtol=0, atol=0)   # zero velocity: the noise comes back
    assert result.video_frames == 100 and result.latents.shape == (1, 16, 33, H, W)
    other = sample_avatar(lambda x, t, inputs: torch.zeros_like(x), _conditioning(100), AvatarSampleRequest(seed=43,
                          steps=3, cfg_scale=1.0))
    assert (other.latents - result.latents).abs().max() > 0.1


def _vendor_scale(i, steps, cfg):
    return (1 - i / steps) * (cfg - 2) + 2 if i < 10 else (1 - i / steps) * (6.5 - 3.5) + 3.5


def test_guidance_schedule_and_branch_inputs():
    steps, cfg = 12, 7.5
    denoiser = RecordingDenoiser()
    conditioning = _conditioning(129)
    result = sample_avatar(denoiser, conditioning, AvatarSampleRequest(seed=0, steps=steps, cfg_scale=cfg))
    sigmas = flow_sigmas(steps, 5.0)
    expected = torch.randn((1, 16, 33, H, W), generator=torch.Generator().manual_seed(0))
    for i in range(steps):
        if i < 10:   # text + audio: uncond = negative text (-1), zero audio, both masks x0.6
            uncond, cond = -1 + 0 + 60, 1 + 5 + 60
        else:        # audio only: uncond = positive text, zero audio, full masks
            uncond, cond = 1 + 0 + 100, 1 + 5 + 100
        velocity = uncond + _vendor_scale(i, steps, cfg) * (cond - uncond)
        expected = expected + (sigmas[i + 1] - sigmas[i]) * velocity
    torch.testing.assert_close(result.latents, expected, rtol=1e-5, atol=1e-4)

    assert len(denoiser.calls) == steps and all(rows == 2 for rows, _, _ in denoiser.calls)
    for i, (_, timestep, inputs) in enumerate(denoiser.calls):
        assert timestep.tolist() == pytest.approx([1000 * sigmas[i].item()] * 2)
        uncond_text, cond_text = inputs.text_states[0, 0, 0].item(), inputs.text_states[1, 0, 0].item()
        assert (uncond_text, cond_text) == ((-1.0, 1.0) if i < 10 else (1.0, 1.0))
        assert inputs.pooled[0, 0].item() == (-1.0 if i < 10 else 1.0)
        assert inputs.audio_features[0].abs().max() == 0 and inputs.audio_features[1].min() == 0.5
        assert inputs.audio_features.shape == (2, 129, 10, 5, 2)
        assert inputs.face_mask.max().item() == pytest.approx(0.6 if i < 10 else 1.0)
        torch.testing.assert_close(inputs.reference_latents, conditioning.reference_latents.expand(2, -1, -1, -1, -1))
        assert inputs.motion_expression.tolist() == [[30.0] * 4] * 2 and inputs.motion_pose.tolist() == [[25.0] * 4] * 2
        assert inputs.fps.tolist() == [25.0, 25.0]


def test_no_guidance_at_cfg_1_is_one_branch_with_the_full_face_mask():
    denoiser = RecordingDenoiser()
    result = sample_avatar(denoiser, _conditioning(129), AvatarSampleRequest(seed=0, steps=4, cfg_scale=1.0))
    noise = torch.randn((1, 16, 33, H, W), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(result.latents, noise - 106.0)       # sigma 1 -> 0 at a constant velocity of 106
    assert all(rows == 1 for rows, _, _ in denoiser.calls)
    assert all(inputs.face_mask.max() == 1.0 for _, _, inputs in denoiser.calls)


def test_batched_and_separate_guidance_agree():
    request = dict(seed=3, steps=11, cfg_scale=6.0)
    batched = sample_avatar(RecordingDenoiser(slope=0.3), _conditioning(200), AvatarSampleRequest(**request))
    separate_denoiser = RecordingDenoiser(slope=0.3)
    separate = sample_avatar(separate_denoiser, _conditioning(200),
                             AvatarSampleRequest(**request, batch_guidance=False))
    torch.testing.assert_close(batched.latents, separate.latents, rtol=1e-5, atol=1e-5)
    assert all(rows == 1 for rows, _, _ in separate_denoiser.calls)
    assert len(separate_denoiser.calls) == 11 * 2 * 2          # steps x windows x branches


def test_long_audio_runs_through_the_windows():
    denoiser = RecordingDenoiser(slope=0.1)
    result = sample_avatar(denoiser, _conditioning(200), AvatarSampleRequest(seed=1, steps=3))
    plan = plan_avatar_windows(200)                              # 65 latent frames, 2 windows, keep 52
    assert result.plan == plan and result.video_frames == 200
    assert result.latents.shape == (1, 16, 52, H, W)
    assert len(denoiser.calls) == 3 * 2
    assert all(inputs.audio_features.shape[1] == 129 for _, _, inputs in denoiser.calls)
    # the second window of step 0 starts at latent 33 and reads audio 132..260 of 260 (mod 260): 132..199 are
    # audio, 200..259 zero padding, and its last frame wraps to audio frame 0
    second = denoiser.calls[1][2].audio_features[1]
    assert second[:68].min() == 0.5 and second[68:128].abs().max() == 0 and second[128].min() == 0.5


def test_first_window_only_renders_129_frames_of_a_long_clip():
    denoiser = RecordingDenoiser()
    result = sample_avatar(denoiser, _conditioning(400), AvatarSampleRequest(seed=1, steps=2, first_window_only=True))
    assert result.latents.shape == (1, 16, 33, H, W) and result.video_frames == 129
    assert len(denoiser.calls) == 2


def test_progress_follows_every_window():
    seen = []
    sample_avatar(RecordingDenoiser(), _conditioning(200), AvatarSampleRequest(seed=0, steps=3),
                  on_progress=lambda *args: seen.append(args))
    assert seen == [(1, 3, 1, 2), (1, 3, 2, 2), (2, 3, 1, 2), (2, 3, 2, 2), (3, 3, 1, 2), (3, 3, 2, 2)]


def test_cancel_stops_within_a_step():
    denoiser = RecordingDenoiser()
    asked = []

    def is_cancelled():
        asked.append(1)
        return len(asked) == 4                                    # step 2, window 2

    with pytest.raises(CancelledError, match="step 2/5, window 2/2"):
        sample_avatar(denoiser, _conditioning(200), AvatarSampleRequest(seed=0, steps=5), is_cancelled=is_cancelled)
    assert len(denoiser.calls) == 3

    def interrupt(step, steps, window, windows):                  # a progress hook may stop the run too
        if (step, window) == (1, 2):
            raise CancelledError("interrupted")

    with pytest.raises(CancelledError, match="interrupted"):
        sample_avatar(RecordingDenoiser(), _conditioning(200), AvatarSampleRequest(seed=0, steps=5),
                      on_progress=interrupt)


def test_invalid_conditioning_is_refused():
    good = _conditioning(129)
    cases = [
        (dict(face_mask=torch.ones(1, 1, 1, 4, 4)), "face mask"),
        (dict(reference_latents=torch.zeros(1, 16, 5, H, W)), "33 frames"),
        (dict(reference_latents=torch.zeros(1, 8, 33, H, W)), r"\[1, 16, frames"),
        (dict(negative_text_states=None), "negative prompt"),
        (dict(text_mask=torch.ones(1, 3)), "differ in length"),
    ]
    for change, message in cases:
        bad = AvatarConditioning(**{**good.__dict__, **change})
        with pytest.raises(InvalidInputError, match=message):
            sample_avatar(RecordingDenoiser(), bad, AvatarSampleRequest(seed=0, steps=1))
    with pytest.raises(InvalidInputError, match="steps"):
        sample_avatar(RecordingDenoiser(), good, AvatarSampleRequest(seed=0, steps=0))
    # a single reference frame is accepted (the transformer decides what it needs)
    sample_avatar(RecordingDenoiser(), AvatarConditioning(**{**good.__dict__, "reference_latents":
                                                              torch.zeros(1, 16, 1, H, W)}),
                  AvatarSampleRequest(seed=0, steps=1))


def test_negative_text_of_another_length_is_padded_for_the_batch():
    conditioning = _conditioning(129)
    conditioning.negative_text_states = -torch.ones(1, 4, 4)
    conditioning.negative_text_mask = torch.ones(1, 4, dtype=torch.long)
    denoiser = RecordingDenoiser()
    sample_avatar(denoiser, conditioning, AvatarSampleRequest(seed=0, steps=1))
    inputs = denoiser.calls[0][2]
    assert inputs.text_states.shape == (2, 6, 4) and inputs.text_mask[0].tolist() == [1, 1, 1, 1, 0, 0]
