"""Avatar long-audio windows with a dummy predictor: the vendor's lengths and shift rule, wrap-around, exact
averaging of overlaps, every latent frame covered at every step, audio aligned with its latents, short clips
and the first-129-frames mode as one unshifted window."""

import pytest
import torch

from reelsmith.engine.errors import InvalidInputError
from reelsmith.engine.pipelines.avatar_windows import (AvatarWindowPlan, pad_audio_features, plan_avatar_windows,
                                                       window_audio_indices, window_latent_indices, window_shift,
                                                       window_starts, windowed_prediction)


@pytest.mark.parametrize("frames, latent, output, windows", [
    (1, 33, 33, 1), (100, 33, 33, 1), (129, 33, 33, 1),       # one window
    (130, 65, 34, 2),                                        # A = 135: (135 // 128 + 1) * 32 + 1 = 65
    (251, 97, 65, 3),                                        # A = 256
    (400, 129, 102, 4),                                      # the vendor's 400-frame cap: A = 405
    (1052, 289, 265, 9),                                     # A = 1057: 9 windows, 8 frames covered twice
    (4300, 1089, 1077, 33),                                  # 33 windows cover 1089 frames exactly
])
def test_plan_lengths_follow_the_vendor(frames, latent, output, windows):
    plan = plan_avatar_windows(frames)
    assert (plan.latent_frames, plan.output_latent_frames, plan.windows_per_step) == (latent, output, windows)
    assert plan.audio_frames == 4 * latent
    assert plan.output_video_frames >= frames                 # enough frames to cut the video to the audio
    assert plan.shifting == (frames > 129)


def test_first_window_only_plans_one_unshifted_window():
    plan = plan_avatar_windows(1000, first_window_only=True)
    assert plan == AvatarWindowPlan(video_frames=129, latent_frames=33, audio_frames=132, output_latent_frames=33,
                                    shifting=False)
    assert all(window_starts(plan, step) == [0] for step in range(50))


def test_short_clip_is_one_window_over_frames_0_to_32_reading_audio_0_to_128():
    plan = plan_avatar_windows(80)
    assert plan.video_frames == 80 and plan.output_video_frames == 129
    for step in range(50):
        assert window_starts(plan, step) == [0]
    assert window_latent_indices(plan, 0) == list(range(33))
    assert window_audio_indices(plan, 0) == list(range(129))


def test_shift_grows_by_10_mod_33_each_step():
    plan = plan_avatar_windows(400)
    assert [window_shift(plan, step) for step in range(6)] == [0, 10, 20, 30, 7, 17]
    assert window_starts(plan, 0) == [0, 33, 66, 99]
    assert window_starts(plan, 1) == [-10, 23, 56, 89]
    assert window_starts(plan, 4) == [-7, 26, 59, 92]


def test_windows_wrap_around_the_clip_end():
    plan = plan_avatar_windows(400)                           # 129 latent frames, 516 audio frames
    assert window_latent_indices(plan, -10) == list(range(119, 129)) + list(range(0, 23))
    assert window_latent_indices(plan, 99) == list(range(99, 129)) + [0, 1, 2]
    audio = window_audio_indices(plan, -10)
    assert audio[:40] == list(range(476, 516)) and audio[40:] == list(range(0, 89))


@pytest.mark.parametrize("frames", [130, 251, 400, 1052, 4300])
def test_every_latent_frame_is_covered_at_every_step(frames):
    plan = plan_avatar_windows(frames)
    for step in range(50):
        covered = set()
        for start in window_starts(plan, step):
            covered.update(window_latent_indices(plan, start))
        assert covered == set(range(plan.latent_frames)), step


def _coverage(plan, step):
    counts = [0] * plan.latent_frames
    for start in window_starts(plan, step):
        for index in window_latent_indices(plan, start):
            counts[index] += 1
    return counts


@pytest.mark.parametrize("step", [0, 1, 4, 13])
def test_overlapping_predictions_are_averaged_exactly(step):
    plan = plan_avatar_windows(400)                           # 4 windows over 129 frames: 3 frames twice
    latents = torch.zeros(1, 2, plan.latent_frames, 1, 1)
    audio = torch.zeros(1, plan.audio_frames, 1)
    seen = []

    def predict(latent_window, audio_window, window, windows):
        seen.append((window, windows))
        return torch.full_like(latent_window, float(10 ** window))  # window j predicts 10^j everywhere

    out = windowed_prediction(latents, audio, plan, step, predict)
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4)]
    expected = torch.zeros(plan.latent_frames)
    counts = torch.tensor(_coverage(plan, step), dtype=torch.float32)
    for window, start in enumerate(window_starts(plan, step)):
        expected[window_latent_indices(plan, start)] += 10 ** window
    expected /= counts
    assert sorted(set(counts.tolist())) == [1.0, 2.0]
    torch.testing.assert_close(out[0, 1, :, 0, 0], expected, rtol=0, atol=0)
    # the wrapped frames are the mean of the last and the first window: (1000 + 1) / 2
    if step == 0:
        assert out[0, 0, 0, 0, 0].item() == pytest.approx(500.5)


@pytest.mark.parametrize("step", [0, 3, 7])
def test_each_window_gets_its_own_latents_and_the_audio_aligned_with_them(step):
    plan = plan_avatar_windows(251)
    latents = torch.arange(plan.latent_frames, dtype=torch.float32).view(1, 1, -1, 1, 1).repeat(1, 2, 1, 2, 3)
    audio = torch.arange(plan.audio_frames, dtype=torch.float32).view(1, -1, 1)

    def predict(latent_window, audio_window, window, windows):
        frame_ids = latent_window[0, 0, :, 0, 0]
        # latent frame k of the window sits at audio frame 4k of its window (both wrap with the clip)
        torch.testing.assert_close(audio_window[0, ::4, 0][:33], 4 * frame_ids, rtol=0, atol=0)
        assert audio_window.shape[1] == 129
        return latent_window.clone()

    # an identity predictor returns the clip unchanged: gathering and scattering line up exactly
    torch.testing.assert_close(windowed_prediction(latents, audio, plan, step, predict), latents, rtol=0, atol=0)


def test_pad_audio_features_appends_zero_frames_or_cuts():
    plan = plan_avatar_windows(400)
    features = torch.randn(1, 400, 10, 5, 4)
    padded = pad_audio_features(features, plan)
    assert padded.shape == (1, 516, 10, 5, 4)
    torch.testing.assert_close(padded[:, :400], features, rtol=0, atol=0)
    assert padded[:, 400:].abs().max() == 0
    single = plan_avatar_windows(400, first_window_only=True)
    torch.testing.assert_close(pad_audio_features(features, single), features[:, :132], rtol=0, atol=0)


def test_mismatched_inputs_are_refused():
    plan = plan_avatar_windows(400)
    audio = torch.zeros(1, plan.audio_frames, 1)
    with pytest.raises(InvalidInputError, match="latents have 33 frames"):
        windowed_prediction(torch.zeros(1, 1, 33, 1, 1), audio, plan, 0, lambda x, a, w, n: x)
    with pytest.raises(InvalidInputError, match="pad_audio_features"):
        windowed_prediction(torch.zeros(1, 1, 129, 1, 1), audio[:, :400], plan, 0, lambda x, a, w, n: x)
    with pytest.raises(InvalidInputError, match="denoiser returned shape"):
        windowed_prediction(torch.zeros(1, 1, 129, 1, 1), audio, plan, 0, lambda x, a, w, n: x[:, :, :5])
    with pytest.raises(InvalidInputError):
        plan_avatar_windows(0)


def _vendor_loop(latents, sigmas, velocity_of):
    """The vendor's loop restated for a long clip: windows at range(0, L, 33) moved back by `shift`, indices mod L,
    each window stepped on its own, the stepped windows summed and divided by their count; shift += 10 mod 33."""
    length = latents.shape[2]
    shift = 0
    for i in range(len(sigmas) - 1):
        summed, counter = torch.zeros_like(latents), torch.zeros(length)
        for index_start in range(0, length, 33):
            index_start -= shift
            idx = [ii % length for ii in range(index_start, index_start + 33)]
            window = latents[:, :, idx]
            stepped = window + (sigmas[i + 1] - sigmas[i]) * velocity_of(window, index_start)
            for k in range(33):
                summed[:, :, (index_start + k) % length] += stepped[:, :, k]
                counter[(index_start + k) % length] += 1
        shift = (shift + 10) % 33
        latents = summed / counter.view(1, 1, -1, 1, 1)
    return latents


def test_six_steps_match_the_vendor_loop_restated():
    from reelsmith.engine.pipelines.avatar_schedule import euler_step, flow_sigmas
    plan = plan_avatar_windows(251)
    torch.manual_seed(0)
    start = torch.randn(1, 2, plan.latent_frames, 2, 2, dtype=torch.float64)
    sigmas = flow_sigmas(6, 5.0).double()

    def velocity_of(window, index_start):   # depends on the window's content and on where it starts
        return torch.tanh(window) * (1 + 0.01 * index_start)

    expected = _vendor_loop(start, sigmas, velocity_of)
    latents = start.clone()
    for step in range(6):
        def predict(x, audio, window, windows, starts=window_starts(plan, step)):
            return velocity_of(x.double(), starts[window]).float()

        prediction = windowed_prediction(latents, torch.zeros(1, plan.audio_frames, 1), plan, step, predict)
        latents = euler_step(latents.float(), prediction, sigmas[step], sigmas[step + 1]).double()
    torch.testing.assert_close(latents, expected, rtol=0, atol=1e-5)
