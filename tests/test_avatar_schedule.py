"""Avatar schedule: shifted flow-matching sigmas against hand-computed values, the Euler step, and the
vendor's guidance schedule (text + audio guidance for ten steps, audio-only after)."""

import pytest
import torch

from reelsmith.engine.errors import InvalidInputError
from reelsmith.engine.pipelines.avatar_schedule import (apply_guidance, euler_step, flow_sigmas, flow_timesteps,
                                                        guidance_for_step)


def test_sigmas_for_50_steps_with_shift_5_match_hand_computed_values():
    sigmas = flow_sigmas(50, 5.0)
    assert sigmas.shape == (51,) and sigmas.dtype == torch.float32
    # sigma = 5 s / (1 + 4 s), s = 1 - i / 50
    hand = {0: 1.0, 1: 4.9 / 4.92, 10: 4.0 / 4.2, 25: 2.5 / 3.0, 40: 1.0 / 1.8, 49: 0.1 / 1.08, 50: 0.0}
    for i, value in hand.items():
        assert sigmas[i].item() == pytest.approx(value, abs=1e-7), i
    assert bool((sigmas[1:] < sigmas[:-1]).all())


def test_sigmas_are_bit_equal_to_the_vendor_formula_in_float32():
    s = torch.linspace(1, 0, 51)
    vendor = (5.0 * s) / (1 + (5.0 - 1) * s)
    torch.testing.assert_close(flow_sigmas(50, 5.0), vendor, rtol=0, atol=0)


def test_shift_1_is_the_plain_linear_schedule():
    torch.testing.assert_close(flow_sigmas(4, 1.0), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))


def test_timesteps_are_1000_sigma_without_the_final_zero():
    sigmas = flow_sigmas(50, 5.0)
    timesteps = flow_timesteps(sigmas)
    assert timesteps.shape == (50,)
    assert timesteps[0].item() == pytest.approx(1000.0)
    assert timesteps[1].item() == pytest.approx(4900 / 4.92, abs=1e-3)
    assert timesteps[-1].item() == pytest.approx(100 / 1.08, abs=1e-3)


def test_bad_schedule_arguments_are_refused():
    with pytest.raises(InvalidInputError, match="steps"):
        flow_sigmas(0)
    with pytest.raises(InvalidInputError, match="shift"):
        flow_sigmas(10, 0.0)


def test_euler_step_moves_along_the_velocity_by_the_sigma_gap():
    x, v = torch.randn(2, 3), torch.randn(2, 3)
    torch.testing.assert_close(euler_step(x, v, 0.8, 0.6), x - 0.2 * v)
    # a velocity of noise - x0 from x_t = (1 - s) x0 + s noise lands on x0 at sigma 0
    x0, noise = torch.randn(4), torch.randn(4)
    x_t = 0.3 * x0 + 0.7 * noise
    torch.testing.assert_close(euler_step(x_t, noise - x0, 0.7, 0.0), x0)


def test_text_phase_guidance_for_the_first_ten_steps():
    first = guidance_for_step(0, 50, 7.5)
    assert first.guided and first.phase == "text+audio" and first.uncond_prompt == "negative"
    assert first.scale == pytest.approx(7.5) and first.face_mask_scale == pytest.approx(0.6)
    ninth = guidance_for_step(9, 50, 7.5)                        # (1 - 9/50) * 5.5 + 2
    assert ninth.scale == pytest.approx(6.51) and ninth.phase == "text+audio"
    assert guidance_for_step(5, 50, 4.0).scale == pytest.approx(0.9 * 2.0 + 2.0)


def test_audio_phase_guidance_after_ten_steps_ignores_cfg_scale():
    tenth = guidance_for_step(10, 50, 7.5)                        # (1 - 10/50) * 3 + 3.5
    assert tenth.guided and tenth.phase == "audio" and tenth.uncond_prompt == "positive"
    assert tenth.scale == pytest.approx(5.9) and tenth.face_mask_scale == 1.0
    assert guidance_for_step(49, 50, 7.5).scale == pytest.approx(3.56)
    assert guidance_for_step(30, 50, 3.0).scale == guidance_for_step(30, 50, 9.0).scale == pytest.approx(4.7)


def test_no_guidance_at_cfg_1():
    step = guidance_for_step(0, 50, 1.0)
    assert not step.guided and step.scale == 1.0 and step.face_mask_scale == 1.0 and step.phase == "none"


def test_step_outside_the_schedule_is_refused():
    with pytest.raises(InvalidInputError):
        guidance_for_step(50, 50)


def test_apply_guidance():
    uncond, cond = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 1.0])
    torch.testing.assert_close(apply_guidance(uncond, cond, 2.0), torch.tensor([5.0, 0.0]))
    torch.testing.assert_close(apply_guidance(uncond, cond, 1.0), cond)
