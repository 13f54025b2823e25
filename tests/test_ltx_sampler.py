"""The LTX-Video sampler on tiny random-weight diffusers components: equal to diffusers' LTXPipeline (T2V) and
LTXImageToVideoPipeline (I2V) on the same noise and schedule, keyframes pinned in place with strength,
progress/cancel, validation, decode noise, explicit (distilled) sigmas and stochastic sampling."""

import pytest
import torch
from diffusers import (AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXImageToVideoPipeline,
                       LTXPipeline, LTXVideoTransformer3DModel)

from reelsmith.engine.errors import InvalidInputError
from reelsmith.engine.models.ltx_variants import VAE_CONFIGS, ltx_config
from reelsmith.engine.pipelines.ltx_inputs import pack_latents, unpack_latents
from reelsmith.engine.pipelines.ltx_sampler import (LTXCondition, LTXSampleRequest, decode_ltx_latents,
                                                    default_ltx_sigmas, encode_ltx_pixels, sample_ltx)
from reelsmith.engine.pipelines.ltx_validation import check_ltx_size, nearest_ltx_frame_counts
from test_ltx_model import LATENT_CHANNELS, TEXT_DIM, TINY_TRANSFORMER, TINY_VAE

CPU = torch.device("cpu")
WIDTH, HEIGHT, FRAMES = 64, 64, 17           # latents 3 x 2 x 2 (12 tokens)
LATENT_SHAPE = (1, LATENT_CHANNELS, 3, 2, 2)
# Lightricks/LTX-Video scheduler/scheduler_config.json
VENDOR_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.95,
                        max_shift=2.05, base_image_seq_len=1024, max_image_seq_len=4096, shift_terminal=0.1)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(**TINY_TRANSFORMER).eval().requires_grad_(False)
    # the tiny VAE compresses like the real ones (32x, 8x): keep the config's ratios, which diffusers' pipelines read
    vae = AutoencoderKLLTXVideo(**{**ltx_config(VAE_CONFIGS["0.9.5"]), **TINY_VAE}).eval().requires_grad_(False)
    with torch.no_grad():
        for parameter in list(transformer.parameters()) + list(vae.parameters()):
            parameter.copy_(torch.randn_like(parameter) * 0.1)
        vae.latents_mean.copy_(torch.rand_like(vae.latents_mean))
        vae.latents_std.copy_(torch.rand_like(vae.latents_std) + 0.5)
    return transformer, vae


def _text(seed, length=6):
    generator = torch.Generator().manual_seed(seed)
    embeds = torch.randn(1, length, TEXT_DIM, generator=generator)
    mask = torch.ones(1, length)
    mask[:, -2:] = 0  # padding, as T5 output carries
    return embeds, mask


def _request(**overrides):
    prompt, prompt_mask = _text(1)
    negative, negative_mask = _text(2)
    args = dict(prompt_embeds=prompt, prompt_mask=prompt_mask, negative_embeds=negative, negative_mask=negative_mask,
                width=WIDTH, height=HEIGHT, frames=FRAMES, frame_rate=25.0, steps=4, cfg=3.0, guidance_rescale=0.5,
                seed=11)
    args.update(overrides)
    return LTXSampleRequest(**args)


def _noise(seed):
    return torch.randn(LATENT_SHAPE, generator=torch.Generator("cpu").manual_seed(seed))


def _pixels(count=1, seed=3):
    return torch.rand(count, HEIGHT, WIDTH, 3, generator=torch.Generator().manual_seed(seed))


def _diffusers_args(request):
    return dict(prompt_embeds=request.prompt_embeds, prompt_attention_mask=request.prompt_mask,
                negative_prompt_embeds=request.negative_embeds,
                negative_prompt_attention_mask=request.negative_mask, height=HEIGHT, width=WIDTH,
                num_frames=FRAMES, frame_rate=25, num_inference_steps=request.steps, guidance_scale=request.cfg,
                guidance_rescale=request.guidance_rescale, output_type="latent", return_dict=False)


def test_default_schedule_is_diffusers_with_the_vendor_config():
    scheduler = FlowMatchEulerDiscreteScheduler(**VENDOR_SCHEDULER)
    for steps, tokens in ((4, 12), (30, 4 * 22 * 40), (8, 13 * 22 * 40)):
        sigmas = [1.0 - i / steps for i in range(steps)]
        mu = 0.95 + (tokens - 1024) * (2.05 - 0.95) / (4096 - 1024)
        scheduler.set_timesteps(sigmas=sigmas, mu=mu)
        torch.testing.assert_close(default_ltx_sigmas(steps, tokens), scheduler.sigmas)
        assert abs(float(default_ltx_sigmas(steps, tokens)[-2]) - 0.1) < 1e-6


def test_text_to_video_equals_diffusers(models):
    transformer, vae = models
    request = _request()
    ours = sample_ltx(transformer, vae, request, CPU)
    pipe = LTXPipeline(FlowMatchEulerDiscreteScheduler(**VENDOR_SCHEDULER), vae, None, None, transformer)
    theirs = pipe(latents=pack_latents(_noise(request.seed)), **_diffusers_args(request))[0]
    theirs = unpack_latents(theirs, 3, 2, 2)
    assert ours.latents.shape == LATENT_SHAPE
    torch.testing.assert_close(ours.latents, theirs, rtol=1e-5, atol=2e-5)  # positions: a wrong rope shifts ~1e-4
    # native LATENT holds the normalized latents; raw is the VAE's own space
    mean, std = vae.latents_mean.view(1, -1, 1, 1, 1), vae.latents_std.view(1, -1, 1, 1, 1)
    torch.testing.assert_close(ours.raw, ours.latents * std + mean)


def test_image_to_video_equals_diffusers(models):
    transformer, vae = models
    image = _pixels()
    request = _request(conditions=[LTXCondition(image, 0, 1.0)])
    ours = sample_ltx(transformer, vae, request, CPU)

    with torch.no_grad():
        raw = vae.encode(image.permute(3, 0, 1, 2).unsqueeze(0) * 2 - 1).latent_dist.mode()
    encoded = (raw - vae.latents_mean.view(1, -1, 1, 1, 1)) / vae.latents_std.view(1, -1, 1, 1, 1)
    start = _noise(request.seed)
    start[:, :, :1] = encoded  # diffusers takes given latents as already holding the image at frame 0
    pipe = LTXImageToVideoPipeline(FlowMatchEulerDiscreteScheduler(**VENDOR_SCHEDULER), vae, None, None, transformer)
    theirs = pipe(image=image.permute(0, 3, 1, 2), latents=pack_latents(start), **_diffusers_args(request))[0]
    theirs = unpack_latents(theirs, 3, 2, 2)
    torch.testing.assert_close(ours.latents, theirs, rtol=1e-5, atol=2e-5)  # positions: a wrong rope shifts ~1e-4
    assert torch.equal(ours.latents[:, :, 0], encoded[:, :, 0])


def _timesteps_seen(transformer):
    seen = []
    handle = transformer.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["timestep"].clone()),
                                                   with_kwargs=True)
    return seen, handle


def test_image_condition_gets_timestep_zero(models):
    transformer, vae = models
    seen, handle = _timesteps_seen(transformer)
    try:
        sample_ltx(transformer, vae, _request(cfg=1.0, negative_embeds=None, negative_mask=None,
                                              conditions=[LTXCondition(_pixels(), 0, 1.0)]), CPU)
    finally:
        handle.remove()
    assert len(seen) == 4
    for timestep in seen:  # [1, 12] per token: 4 tokens of latent frame 0 at zero, the rest at t
        assert timestep.shape == (1, 12)
        assert torch.all(timestep[0, :4] == 0) and torch.all(timestep[0, 4:] > 0)


def test_in_place_keyframe_at_last_frame_and_strength(models):
    transformer, vae = models
    keyframe = _pixels(seed=5)
    encoded = encode_ltx_pixels(vae, keyframe, CPU)
    plain = sample_ltx(transformer, vae, _request(), CPU).latents
    results = {s: sample_ltx(transformer, vae, _request(conditions=[LTXCondition(keyframe, FRAMES - 1, s)],
                                                     keyframe_method="in_place"), CPU).latents
               for s in (0.0, 0.5, 1.0)}
    assert torch.equal(results[1.0][:, :, -1], encoded[:, :, 0])       # the last latent frame is the keyframe
    torch.testing.assert_close(results[0.0], plain, rtol=1e-5, atol=1e-5)  # strength 0 is no condition
    distance = {s: (r[:, :, -1] - encoded[:, :, 0]).norm().item() for s, r in results.items()}
    assert distance[1.0] == 0 < distance[0.5] < distance[0.0]
    assert not torch.allclose(results[0.5], results[0.0])


def _inputs_seen(transformer):
    seen = []
    handle = transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append({k: kwargs[k].clone() for k in ("hidden_states", "timestep", "video_coords")}),
        with_kwargs=True)
    return seen, handle


@pytest.mark.parametrize("causal", [False, True])
def test_appended_keyframe_has_its_own_tokens_and_positions(models, causal):
    transformer, vae = models
    keyframe = _pixels(seed=5)
    encoded = pack_latents(encode_ltx_pixels(vae, keyframe, CPU))[0]  # [4 tokens, C]
    plain = sample_ltx(transformer, vae, _request(causal_temporal_positioning=causal), CPU).latents
    seen, handle = _inputs_seen(transformer)
    try:
        steps = []
        request = _request(conditions=[LTXCondition(keyframe, 12, 1.0)], causal_temporal_positioning=causal)
        result = sample_ltx(transformer, vae, request, CPU, on_step=lambda s, t, x0: steps.append(x0.shape))
    finally:
        handle.remove()
    assert result.latents.shape == LATENT_SHAPE and steps == [LATENT_SHAPE] * 4  # guides cropped off
    assert not torch.allclose(result.latents, plain)
    assert len(seen) == 8
    for inputs in seen:  # 12 video tokens + 4 guide tokens: the guide is the keyframe, at timestep 0
        assert inputs["hidden_states"].shape == (1, 16, LATENT_CHANNELS)
        torch.testing.assert_close(inputs["hidden_states"][0, 12:], encoded)
        assert torch.all(inputs["timestep"][0, 12:] == 0) and torch.all(inputs["timestep"][0, :12] > 0)
        times = inputs["video_coords"][0, 0]
        torch.testing.assert_close(times[12:], torch.full((4,), 12 / 25.0))  # the keyframe's own frame
        last_video_frame = (16 - 7) if causal else 16  # latent frame 2 of the video
        torch.testing.assert_close(times[8:12], torch.full((4,), last_video_frame / 25.0))
    # strength scales an appended guide too: its timestep is t * (1 - strength)
    seen, handle = _inputs_seen(transformer)
    try:
        sample_ltx(transformer, vae, _request(conditions=[LTXCondition(keyframe, 12, 0.5)]), CPU)
    finally:
        handle.remove()
    torch.testing.assert_close(seen[0]["timestep"][0, 12:], seen[0]["timestep"][0, 0].expand(4) * 0.5)


def test_start_image_and_clip_keyframe_together(models):
    transformer, vae = models
    image, clip = _pixels(seed=6), _pixels(9, seed=7)  # a 9-frame clip at frame 8 -> latent frames 1 and 2
    result = sample_ltx(transformer, vae, _request(conditions=[LTXCondition(image, 0, 1.0), LTXCondition(clip, 8, 1.0)],
                                                   keyframe_method="in_place"), CPU).latents
    assert torch.equal(result[:, :, :1], encode_ltx_pixels(vae, image, CPU))
    assert torch.equal(result[:, :, 1:], encode_ltx_pixels(vae, clip, CPU))


def test_progress_once_per_step_and_cancel_within_a_step(models):
    transformer, vae = models
    calls = []
    sample_ltx(transformer, vae, _request(), CPU, on_step=lambda step, total, x0: calls.append((step, total, x0.shape)))
    assert calls == [(i, 4, LATENT_SHAPE) for i in range(1, 5)]

    class Stop(Exception):
        pass

    def cancel(step, total, x0):
        if step == 2:
            raise Stop

    seen, handle = _timesteps_seen(transformer)
    try:
        with pytest.raises(Stop):
            sample_ltx(transformer, vae, _request(), CPU, on_step=cancel)
    finally:
        handle.remove()
    assert len(seen) == 4  # two steps, cond + uncond each; nothing after the cancel


def test_validation_names_the_nearest_values(models):
    transformer, vae = models
    assert nearest_ltx_frame_counts(80) == [73, 81]
    with pytest.raises(InvalidInputError, match="frames 80 is not of the form 8k\\+1: use 73 or 81"):
        check_ltx_size(704, 480, 80)
    with pytest.raises(InvalidInputError, match="width 700 is not a multiple of 32: use 672 or 704"):
        check_ltx_size(700, 480, 97)
    check_ltx_size(1280, 704, 97)
    bad = [
        ([LTXCondition(_pixels(9), 4, 1.0)], "must start at a multiple of 8: use frame_index 0 or 8"),
        ([LTXCondition(_pixels(9), 16, 1.0)], "9 frames from frame 16 run past the last frame \\(16\\)"),
        ([LTXCondition(_pixels(5), 0, 1.0)], "5 frames is not of the form 8k\\+1: use 1 or 9"),
        ([LTXCondition(_pixels(), 17, 1.0)], "frame_index 17 is outside the clip \\(0..16\\)"),
        ([LTXCondition(_pixels(), 0, 1.5)], "strength 1.5 is outside 0..1"),
        ([LTXCondition(_pixels(), 5, 1.0), LTXCondition(_pixels(), 8, 1.0)], "both pin latent frame 1"),
        ([LTXCondition(torch.rand(1, 32, 64, 3), 0, 1.0)], "resize them to the video size 64x64"),
    ]
    for conditions, message in bad:
        with pytest.raises(InvalidInputError, match=message):
            sample_ltx(transformer, vae, _request(conditions=conditions, keyframe_method="in_place"), CPU)
    with pytest.raises(InvalidInputError, match="keyframe_method 'middle' is not one of append, in_place"):
        sample_ltx(transformer, vae, _request(keyframe_method="middle"), CPU)
    with pytest.raises(InvalidInputError, match="needs negative embeddings"):
        sample_ltx(transformer, vae, _request(negative_embeds=None, negative_mask=None), CPU)
    with pytest.raises(InvalidInputError, match="sigmas must decrease"):
        sample_ltx(transformer, vae, _request(sigmas=[1.0, 0.5, 0.7]), CPU)


def test_decode_with_timestep_and_noise_is_seeded(models):
    _, vae = models
    latents = _noise(4)
    first = decode_ltx_latents(vae, latents, CPU, decode_timestep=0.05, decode_noise_scale=0.025, seed=1)
    again = decode_ltx_latents(vae, latents, CPU, decode_timestep=0.05, decode_noise_scale=0.025, seed=1)
    other = decode_ltx_latents(vae, latents, CPU, decode_timestep=0.05, decode_noise_scale=0.025, seed=2)
    clean = decode_ltx_latents(vae, latents, CPU, decode_timestep=0.05, decode_noise_scale=0.0, seed=1)
    assert first.shape == (FRAMES, HEIGHT, WIDTH, 3) and 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, again)
    assert not torch.equal(first, other) and not torch.equal(first, clean)
    # noise 0 is the plain decode of the denormalized latents at the decode timestep
    raw = latents * vae.latents_std.view(1, -1, 1, 1, 1) + vae.latents_mean.view(1, -1, 1, 1, 1)
    with torch.no_grad():
        video = vae.decode(raw, torch.tensor([0.05]), return_dict=False)[0]
    torch.testing.assert_close(clean, ((video[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0))


def test_explicit_sigmas_are_used_as_given_and_stochastic_is_seeded(models):
    transformer, vae = models
    sigmas = [1.0, 0.9937, 0.9875, 0.9812, 0.9750, 0.9094, 0.7250, 0.4219]  # a distilled-style schedule
    steps = []
    seen, handle = _timesteps_seen(transformer)
    try:
        base = _request(cfg=1.0, negative_embeds=None, negative_mask=None, sigmas=sigmas, steps=30)
        deterministic = sample_ltx(transformer, vae, base, CPU, on_step=lambda s, t, x0: steps.append((s, t)))
    finally:
        handle.remove()
    assert steps == [(i, len(sigmas)) for i in range(1, len(sigmas) + 1)]
    torch.testing.assert_close(torch.cat([t.flatten() for t in seen]), torch.tensor(sigmas) * 1000)

    stochastic = _request(cfg=1.0, negative_embeds=None, negative_mask=None, sigmas=sigmas, stochastic=True)
    first = sample_ltx(transformer, vae, stochastic, CPU).latents
    again = sample_ltx(transformer, vae, stochastic, CPU).latents
    assert torch.equal(first, again)
    assert not torch.allclose(first, deterministic.latents)
    stochastic.seed = 12
    assert not torch.allclose(sample_ltx(transformer, vae, stochastic, CPU).latents, first)
