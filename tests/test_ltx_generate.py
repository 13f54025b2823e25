"""LTX-Video end to end in the engine on tiny models: every layout generates the same video; text-to-video,
image-to-video and keyframes; distilled checkpoints use their own schedule; bad input is refused early."""

import dataclasses

import pytest
import torch

from reelsmith.engine.demo_ltx import TinyLTXSet
from reelsmith.engine.errors import InvalidInputError
from reelsmith.engine.models.ltx_layouts import resolve_diffusers_folder, resolve_single_files
from reelsmith.engine.models.ltx_loaded import LTXLoadOptions, load_ltx_model
from reelsmith.engine.pipelines.ltx_generate import Keyframe, generate_ltx_video

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ltx_demo")
    tiny = TinyLTXSet(7)
    folder = tiny.write_diffusers_folder(root / "diffusers-folder")
    tiny.write_single_files(root, subfolder="")
    text = root / "text_encoders" / "t5xxl_fp16.safetensors"
    load = lambda files: load_ltx_model(files, LTXLoadOptions(precision="bf16"), CPU)  # noqa: E731
    return {
        "diffusers": load(resolve_diffusers_folder(folder, "diffusers")),
        "dev": load(resolve_single_files(root / "checkpoints" / "ltxv-13b-0.9.8-dev.safetensors", text)),
        "distilled": load(resolve_single_files(root / "checkpoints" / "ltxv-2b-0.9.8-distilled.safetensors", text)),
    }


def _generate(model, **overrides):
    args = dict(prompt="a lighthouse at dusk", negative_prompt="blurry", width=64, height=64, frames=9,
                frame_rate=25.0, steps=3, cfg=3.0, guidance_rescale=0.0, stochastic=False, decode_timestep=0.05,
                decode_noise_scale=0.025, seed=3)
    args.update(overrides)
    return generate_ltx_video(model, **args)


def _image(seed=0):
    return torch.rand(1, 48, 80, 3, generator=torch.Generator().manual_seed(seed))


def test_layouts_give_the_same_video(models):
    vendor = models["dev"]
    assert vendor.facts.causal_temporal_positioning is True  # the vendor file's metadata says so
    causal = _generate(vendor).latents
    # a diffusers folder does not say; with the same positions both layouts give the same video
    vendor.facts = dataclasses.replace(vendor.facts, causal_temporal_positioning=None)
    try:
        a, b = _generate(models["diffusers"]), _generate(vendor)
    finally:
        vendor.facts = dataclasses.replace(vendor.facts, causal_temporal_positioning=True)
    assert a.frames.shape == (9, 64, 64, 3) and a.fps == 25.0
    torch.testing.assert_close(a.latents, b.latents, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(causal, b.latents, atol=1e-4)  # the metadata's positions are really used


def test_image_to_video_and_keyframes_change_the_result(models):
    model = models["dev"]
    base = _generate(model).latents
    first = _generate(model, keyframes=[Keyframe(_image(1), 0, 1.0)]).latents
    both = _generate(model, keyframes=[Keyframe(_image(1), 0, 1.0), Keyframe(_image(2), 8, 1.0)]).latents
    assert not torch.equal(base, first) and not torch.equal(first, both)
    assert torch.equal(first, _generate(model, keyframes=[Keyframe(_image(1), 0, 1.0)]).latents)


def test_distilled_checkpoint_uses_its_schedule(models):
    steps = []
    _generate(models["distilled"], cfg=1.0, steps=40, on_step=lambda step, total, x0: steps.append(total))
    assert steps and len(steps) == steps[0] == len(models["distilled"].facts.allowed_inference_steps)


def test_bad_sizes_and_frames_are_refused(models):
    with pytest.raises(InvalidInputError, match="frames 10 is not of the form 8k\\+1: use 9 or 17"):
        _generate(models["dev"], frames=10)
    with pytest.raises(InvalidInputError, match="width 70 is not a multiple of 32: use 64 or 96"):
        _generate(models["dev"], width=70)
