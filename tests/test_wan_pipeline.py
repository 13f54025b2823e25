"""Engine tier, end to end on tiny random-weight models: every layout loads to identical outputs, every
variant samples, progress/cancel/OOM behave, and bad input gets a clear error before any work."""

import pathlib
import shutil

import pytest
import torch

from reelsmith.engine.demo_models import TinyWanSet
from reelsmith.engine.errors import (CancelledError, CheckpointMismatchError, InvalidInputError, ModelFilesError,
                                     OutOfMemoryError)
from reelsmith.engine.models.wan_layouts import resolve_folder, resolve_single_files
from reelsmith.engine.models.wan_model import WanLoadOptions, load_wan_model
from reelsmith.engine.pipelines.wan_generate import generate_wan_video
from reelsmith.engine.pipelines.wan_sampler import decode_wan_latents

CPU = torch.device("cpu")
FP32 = WanLoadOptions(precision="bf16")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """variant -> {layout name: WanModelFiles}, the same tiny weights written in all three layouts."""
    root = tmp_path_factory.mktemp("wan_layouts")
    out = {}
    for seed, name in enumerate(("t2v-a14b", "i2v-a14b", "ti2v-5b")):
        tiny = TinyWanSet(name, seed=100 + seed)
        models_root = root / name
        single = tiny.write_single_files(models_root, subfolder="", fp8_scaled=False)
        out[name] = {
            "release": resolve_folder(tiny.write_release_folder(models_root / "release"), "release"),
            "diffusers": resolve_folder(tiny.write_diffusers_folder(models_root / "diffusers-folder"), "diffusers"),
            "single": resolve_single_files(single["high"], single.get("low"), single["text_encoder"], single["vae"]),
        }
    return out


def _generate(model, image=None, end=None, **overrides):
    args = dict(prompt="a red fox in snow", negative_prompt="blurry", width=64, height=32, frames=5, steps=3,
                cfg_high=3.0, cfg_low=4.0, flow_shift=5.0, boundary=0.875, scheduler="unipc", seed=7)
    args.update(overrides)
    return generate_wan_video(model, start_image=image, end_image=end, **args)


def _image(seed=0, h=40, w=70):
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", ["t2v-a14b", "i2v-a14b", "ti2v-5b"])
def test_every_layout_loads_to_identical_outputs(layouts, variant):
    image = _image() if variant != "t2v-a14b" else None
    results = {}
    for layout, files in layouts[variant].items():
        model = load_wan_model(files, FP32, CPU)
        assert model.variant.name == variant
        assert (model.low is not None) == (variant != "ti2v-5b")
        results[layout] = _generate(model, image=image)
    reference = results["release"]
    assert reference.frames.shape == (5, 32, 64, 3)
    assert 0.0 <= reference.frames.min() and reference.frames.max() <= 1.0
    assert reference.fps == (24.0 if variant == "ti2v-5b" else 16.0)
    for layout, result in results.items():
        torch.testing.assert_close(result.latents, reference.latents, rtol=0, atol=1e-5, msg=layout)
        torch.testing.assert_close(result.frames, reference.frames, rtol=0, atol=1e-4, msg=layout)


def test_latent_output_decodes_to_the_frames(layouts):
    model = load_wan_model(layouts["t2v-a14b"]["release"], FP32, CPU)
    video = _generate(model)
    assert video.latents.shape == (1, 16, 2, 4, 8)
    torch.testing.assert_close(decode_wan_latents(model.vae, video.latents, CPU), video.frames)


def test_seed_prompt_and_image_change_the_result(layouts):
    model = load_wan_model(layouts["i2v-a14b"]["release"], FP32, CPU)
    base = _generate(model, image=_image(0))
    assert not torch.equal(base.latents, _generate(model, image=_image(0), seed=8).latents)
    assert not torch.equal(base.latents, _generate(model, image=_image(1)).latents)
    assert not torch.equal(base.latents, _generate(model, image=_image(0), prompt="a cat").latents)
    with_end = _generate(model, image=_image(0), end=_image(2))
    assert not torch.equal(base.latents, with_end.latents)
    torch.testing.assert_close(_generate(model, image=_image(0)).latents, base.latents)


def test_native_conditioning_replaces_prompt_text(layouts):
    model = load_wan_model(layouts["t2v-a14b"]["single"], FP32, CPU)
    positive, negative = model.encode_text("a red fox in snow", "blurry")
    from_text = _generate(model)
    # native CONDITIONING holds only the prompt's tokens (not padded): the sampler pads it back to 512
    tokens = int((positive[0].abs().sum(-1) > 0).sum())
    from_conditioning = _generate(model, prompt="ignored", negative_prompt="ignored",
                                  positive_embeds=positive[:, :tokens], negative_embeds=negative[:, :tokens + 1])
    torch.testing.assert_close(from_conditioning.latents, from_text.latents)


@pytest.mark.parametrize("scheduler", ["unipc", "euler", "dpm++"])
def test_schedulers_run_and_differ(layouts, scheduler):
    model = load_wan_model(layouts["ti2v-5b"]["release"], FP32, CPU)
    video = _generate(model, scheduler=scheduler, steps=4)
    assert torch.isfinite(video.latents).all()
    if scheduler != "unipc":
        assert not torch.equal(video.latents, _generate(model, scheduler="unipc", steps=4).latents)


def test_progress_once_per_step_and_cancel_within_a_step(layouts):
    model = load_wan_model(layouts["t2v-a14b"]["release"], FP32, CPU)
    seen = []
    _generate(model, steps=4, on_step=lambda step, total, x0: seen.append((step, total, tuple(x0.shape))))
    assert seen == [(i, 4, (1, 16, 2, 4, 8)) for i in range(1, 5)]

    calls = []

    def cancel_at_two(step, total, x0):
        calls.append(step)
        if step == 2:
            raise CancelledError("cancelled")

    with pytest.raises(CancelledError):
        _generate(model, steps=6, on_step=cancel_at_two)
    assert calls == [1, 2]
    assert _generate(model, steps=2).frames.shape == (5, 32, 64, 3)  # the model still works afterwards


def test_out_of_memory_names_options_and_frees(layouts, monkeypatch):
    model = load_wan_model(layouts["t2v-a14b"]["release"], FP32, CPU)
    released = []
    monkeypatch.setattr(model, "release_after_run", lambda: released.append(True))

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(model.high.model, "forward", no_memory)
    with pytest.raises(OutOfMemoryError, match="fp8_e4m3fn.*offload.*smaller size") as error:
        _generate(model)
    assert error.value.__cause__ is None and error.value.__context__ is None  # no traceback pinning tensors
    assert released == [True]


# ------------------------------------------------------------------ wrong model for the node

def test_i2v_weights_in_the_text_node_say_so(layouts):
    model = load_wan_model(layouts["i2v-a14b"]["release"], FP32, CPU)
    with pytest.raises(InvalidInputError, match="image-to-video model"):
        _generate(model)


def test_t2v_weights_in_the_image_node_say_so(layouts):
    model = load_wan_model(layouts["t2v-a14b"]["release"], FP32, CPU)
    with pytest.raises(InvalidInputError, match="text-to-video model and cannot start from an image"):
        _generate(model, image=_image(), require_image=True)


def test_bad_sizes_rejected_before_any_work(layouts, monkeypatch):
    model = load_wan_model(layouts["ti2v-5b"]["release"], FP32, CPU)
    monkeypatch.setattr(model, "prepare_for_sampling", lambda: pytest.fail("work started"))
    with pytest.raises(InvalidInputError, match="frames 6 is not of the form 4k\\+1: use 5 or 9"):
        _generate(model, frames=6)
    with pytest.raises(InvalidInputError, match="width 48 is not a multiple of 32: use 32 or 64"):
        _generate(model, width=48)


# ------------------------------------------------------------------ bad files

def _copy(files_root: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    target = tmp_path / files_root.name
    shutil.copytree(files_root, target)
    return target


def test_incomplete_release_folder_names_every_missing_file_and_the_command(layouts, tmp_path):
    folder = _copy(layouts["t2v-a14b"]["release"].transformer.parent, tmp_path)
    (folder / "Wan2.1_VAE.pth").unlink()
    next((folder / "low_noise_model").glob("*-00002-of-00002.safetensors")).unlink()
    shutil.rmtree(folder / "google")
    with pytest.raises(ModelFilesError) as error:
        resolve_folder(folder, "wan-t2v-14b")
    message = str(error.value)
    assert "Wan-AI release" in message
    assert "Wan2.1_VAE.pth" in message and "00002-of-00002" in message and "google/umt5-xxl" in message
    assert f"hf download Wan-AI/Wan2.2-T2V-A14B --local-dir {folder}" in message


def test_incomplete_diffusers_folder_names_missing_components(layouts, tmp_path):
    folder = _copy(layouts["ti2v-5b"]["diffusers"].transformer.parent, tmp_path)
    shutil.rmtree(folder / "vae")
    with pytest.raises(ModelFilesError, match=r"(?s)diffusers.*vae/config\.json.*hf download"):
        resolve_folder(folder, "ti2v")


def test_truncated_file_is_named(layouts, tmp_path):
    files = layouts["ti2v-5b"]["single"]
    broken = tmp_path / files.transformer.name
    data = files.transformer.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    (tmp_path / (broken.name + ".reelsmith.json")).write_text(
        (files.transformer.parent / (files.transformer.name + ".reelsmith.json")).read_text())
    with pytest.raises(ModelFilesError, match=f"{broken.name}.*truncated or corrupt"):
        load_wan_model(resolve_single_files(broken, None, None, files.vae), FP32, CPU)


def test_unknown_key_and_wrong_shape_are_named(layouts, tmp_path):
    from safetensors.torch import load_file, save_file
    files = layouts["ti2v-5b"]["single"]
    state = load_file(str(files.transformer))
    hint = (files.transformer.parent / (files.transformer.name + ".reelsmith.json")).read_text()

    extra = tmp_path / "extra.safetensors"
    save_file({**state, "model.diffusion_model.blocks.0.mystery.weight": torch.zeros(2)}, str(extra))
    (tmp_path / "extra.safetensors.reelsmith.json").write_text(hint)
    with pytest.raises(CheckpointMismatchError, match="extra.safetensors.*blocks.0.mystery.weight"):
        load_wan_model(resolve_single_files(extra, None, None, files.vae), FP32, CPU)

    shaped = tmp_path / "shaped.safetensors"
    key = "model.diffusion_model.blocks.1.ffn.0.weight"
    save_file({**state, key: torch.zeros(8, 32)}, str(shaped))
    (tmp_path / "shaped.safetensors.reelsmith.json").write_text(hint)
    with pytest.raises(CheckpointMismatchError, match="shaped.safetensors.*blocks.1.ffn.net.0.proj.weight.*shape"):
        load_wan_model(resolve_single_files(shaped, None, None, files.vae), FP32, CPU)


def test_mismatched_parts_are_refused(layouts):
    t2v, i2v, ti2v = (layouts[v]["single"] for v in ("t2v-a14b", "i2v-a14b", "ti2v-5b"))
    with pytest.raises(ModelFilesError, match="different models"):
        load_wan_model(resolve_single_files(t2v.transformer, i2v.transformer_2, None, t2v.vae), FP32, CPU)
    with pytest.raises(ModelFilesError, match="needs both experts"):
        load_wan_model(resolve_single_files(t2v.transformer, None, None, t2v.vae), FP32, CPU)
    with pytest.raises(ModelFilesError, match="needs the Wan 2.2 VAE"):
        load_wan_model(resolve_single_files(ti2v.transformer, None, None, t2v.vae), FP32, CPU)
    with pytest.raises(CheckpointMismatchError, match="wan_2.1_vae.*not a Wan 2.2 transformer"):  # VAE as transformer
        load_wan_model(resolve_single_files(t2v.vae, None, None, t2v.vae), FP32, CPU)


def test_pickles_that_need_code_are_refused(layouts, tmp_path):
    import collections
    folder = _copy(layouts["t2v-a14b"]["release"].transformer.parent, tmp_path)
    # an OrderedDict subclass cannot be loaded with weights_only=True
    Evil = type("Evil", (collections.OrderedDict,), {})
    globals()["Evil"] = Evil
    Evil.__module__ = __name__
    torch.save(Evil(a=torch.zeros(1)), str(folder / "Wan2.1_VAE.pth"))
    with pytest.raises(ModelFilesError, match="weights_only=True"):
        load_wan_model(resolve_folder(folder, "x"), FP32, CPU)


def test_lora_handles_share_the_model_and_never_leak(layouts, tmp_path):
    from safetensors.torch import save_file

    from reelsmith.engine.models.lora import LoraStackEntry

    model = load_wan_model(layouts["t2v-a14b"]["release"], FP32, CPU)
    dim = model.high.model.config.num_attention_heads * model.high.model.config.attention_head_dim
    generator = torch.Generator().manual_seed(3)
    lora = tmp_path / "style.safetensors"  # lightx2v-style names
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.randn(4, dim, generator=generator),
               "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.randn(dim, 4, generator=generator)},
              str(lora))
    base = _generate(model).latents
    high_only = _generate(model.with_loras([LoraStackEntry(str(lora), 1.0, "high")])).latents
    low_only = _generate(model.with_loras([LoraStackEntry(str(lora), 1.0, "low")])).latents
    assert not torch.equal(high_only, base) and not torch.equal(low_only, base)
    assert not torch.equal(high_only, low_only)
    # the plain handle, used again after the LoRA ones, gets the original weights back exactly
    torch.testing.assert_close(_generate(model).latents, base, rtol=0, atol=0)
    # strength 0 is the base model
    torch.testing.assert_close(_generate(model.with_loras([LoraStackEntry(str(lora), 0.0, "both")])).latents, base,
                               rtol=0, atol=0)
