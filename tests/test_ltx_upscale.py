"""LTX-Video latent upscale (the vendor's multi-scale recipe) on tiny models: the upscaler loads from the demo
file, doubles height and width, and a partial-denoise refinement runs only the low-noise end of the schedule."""

import pytest
import torch
from reelsmith.engine.demo_ltx import UPSCALER_FILE, TinyLTXSet
from reelsmith.engine.errors import InvalidInputError
from reelsmith.engine.models.ltx_layouts import resolve_single_files
from reelsmith.engine.models.ltx_loaded import LTXLoadOptions, load_ltx_model
from reelsmith.engine.models.ltx_upscaler import load_ltx_upscaler, upscale_ltx_latents
from reelsmith.engine.pipelines.ltx_generate import (
    generate_ltx_video,
    upscale_and_refine_ltx,
)
from reelsmith.engine.pipelines.ltx_sampler import default_ltx_sigmas

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ltx_upscale")
    TinyLTXSet(7).write_single_files(root, subfolder="")
    model = load_ltx_model(resolve_single_files(root / "checkpoints" / "ltxv-13b-0.9.8-dev.safetensors",
                                                root / "text_encoders" / "t5xxl_fp16.safetensors"),
                           LTXLoadOptions(precision="bf16"), CPU)
    first = generate_ltx_video(model, prompt="a lighthouse at dusk", negative_prompt="blurry", width=64, height=32,
                               frames=9, frame_rate=25.0, steps=3, cfg=1.0, guidance_rescale=0.0, stochastic=False,
                               decode_timestep=0.05, decode_noise_scale=0.025, seed=3)
    return model, root / "latent_upscale_models" / UPSCALER_FILE, first


def _refine(model, path, latents, **overrides):
    args = dict(prompt="a lighthouse at dusk", negative_prompt="blurry", frame_rate=25.0, steps=10, cfg=1.0,
                denoise=0.4, seed=5, decode_timestep=0.05, decode_noise_scale=0.025)
    args.update(overrides)
    return upscale_and_refine_ltx(model, path, latents, **args)


def test_upscaler_loads_from_the_demo_file_and_doubles_height_and_width(setup):
    model, path, first = setup
    upsampler = load_ltx_upscaler(path)
    assert upsampler.config.in_channels == first.latents.shape[1]
    assert all(p.device.type == "cpu" for p in upsampler.parameters())
    up = upscale_ltx_latents(upsampler, model.vae, first.latents, CPU)
    t, h, w = first.latents.shape[2:]
    assert up.shape == (1, first.latents.shape[1], t, 2 * h, 2 * w)
    assert torch.isfinite(up).all()


def test_refinement_runs_the_low_noise_steps_and_changes_the_upscaled_latents(setup):
    model, path, first = setup
    calls = []
    video = _refine(model, path, first.latents, on_step=lambda *a: calls.append(a))
    t, h, w = first.latents.shape[2:]
    assert video.latents.shape == (1, first.latents.shape[1], t, 2 * h, 2 * w)
    assert video.frames.shape == (9, 64, 128, 3) and video.fps == 25.0
    full = default_ltx_sigmas(10, t * 2 * h * 2 * w)
    expected = int((full[:-1] <= 0.4 + 1e-6).sum())
    assert 1 <= expected < 10
    upsampler = load_ltx_upscaler(path)
    upscaled = upscale_ltx_latents(upsampler, model.vae, first.latents, CPU)
    assert not torch.allclose(video.latents, upscaled, atol=1e-3)  # the refinement really changed it
    # deterministic for a seed, and a different denoise gives a different result
    again = _refine(model, path, first.latents)
    torch.testing.assert_close(again.latents, video.latents)
    assert not torch.allclose(_refine(model, path, first.latents, denoise=0.9).latents, video.latents, atol=1e-4)


def test_refinement_reports_only_the_steps_it_runs(setup, monkeypatch):
    from reelsmith.engine.pipelines import ltx_generate
    model, path, first = setup
    seen = []
    real = ltx_generate.sample_ltx

    def spy(transformer, vae, request, device, on_step=None, stage=None):
        def count(step, total, x0):
            seen.append((step, total))
            if on_step is not None:
                on_step(step, total, x0)
        return real(transformer, vae, request, device, on_step=count, stage=stage)

    monkeypatch.setattr(ltx_generate, "sample_ltx", spy)
    _refine(model, path, first.latents)
    t, h, w = first.latents.shape[2:]
    full = default_ltx_sigmas(10, t * 2 * h * 2 * w)
    expected = int((full[:-1] <= 0.4 + 1e-6).sum())
    assert seen == [(i, expected) for i in range(1, expected + 1)] and expected < 10


def test_denoise_below_the_schedule_is_refused(setup):
    model, path, first = setup
    with pytest.raises(InvalidInputError, match="denoise"):
        _refine(model, path, first.latents, denoise=0.05)
