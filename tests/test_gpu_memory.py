"""GPU memory rules (run on a CUDA machine; skipped elsewhere): after a run, a cancel or an error, GPU memory
returns to its level before the run; with ComfyUI importable, loaded models are registered with its model
management and can be evicted and brought back."""

import os
import sys

import pytest
import torch

from reelsmith.engine.demo_models import TinyWanSet
from reelsmith.engine.errors import CancelledError, OutOfMemoryError
from reelsmith.engine.models.wan_layouts import resolve_single_files
from reelsmith.engine.models.wan_model import WanLoadOptions, load_wan_model
from reelsmith.engine.pipelines.wan_generate import generate_wan_video

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tiny = TinyWanSet("t2v-a14b", seed=3)
    paths = tiny.write_single_files(tmp_path_factory.mktemp("gpu"), subfolder="", fp8_scaled=True)
    return resolve_single_files(paths["high"], paths["low"], paths["text_encoder"], paths["vae"])


def _generate(model, **overrides):
    args = dict(prompt="a fox", negative_prompt="blurry", width=128, height=64, frames=9, steps=4, cfg_high=3.0,
                cfg_low=4.0, flow_shift=5.0, boundary=0.875, scheduler="unipc", seed=1)
    args.update(overrides)
    return generate_wan_video(model, **args)


@pytest.mark.parametrize("options", [WanLoadOptions(precision="bf16"),
                                     WanLoadOptions(precision="fp8_e4m3fn_fast", offload="model"),
                                     WanLoadOptions(precision="fp8_e4m3fn", offload="block")],
                         ids=["bf16", "fp8fast-model-offload", "fp8-block-offload"])
def test_memory_returns_after_run_cancel_and_error(files, options, monkeypatch):
    model = load_wan_model(files, options, CUDA)
    _generate(model)  # warm-up: resident weights and caches settle
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()

    video = _generate(model)
    assert video.frames.device.type == "cpu" and torch.isfinite(video.frames).all()
    assert torch.cuda.memory_allocated() == baseline

    def cancel(step, total, x0):
        if step == 2:
            raise CancelledError("cancelled")

    with pytest.raises(CancelledError):
        _generate(model, on_step=cancel)
    assert torch.cuda.memory_allocated() == baseline

    original_forward = model.low.model.forward

    def out_of_memory(*args, **kwargs):
        torch.empty(1 << 20, device=CUDA)  # some memory taken before the failure
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(model.low.model, "forward", out_of_memory)
    with pytest.raises(OutOfMemoryError):
        _generate(model)
    monkeypatch.setattr(model.low.model, "forward", original_forward)
    assert torch.cuda.memory_allocated() == baseline


@pytest.mark.skipif(not os.environ.get("COMFYUI_DIR"), reason="needs COMFYUI_DIR (ComfyUI's model management)")
def test_models_are_registered_with_comfyui_and_evictable(files):
    sys.path.insert(0, os.environ["COMFYUI_DIR"])
    import comfy.model_management as mm

    model = load_wan_model(files, WanLoadOptions(precision="fp8_e4m3fn"), CUDA)  # plain "cuda", as scripts pass it
    _generate(model, steps=2)
    loaded = [m.model for m in mm.current_loaded_models]
    assert any(p is model.high.resident.patcher for p in loaded)
    assert any(p is model.low.resident.patcher for p in loaded)
    assert any(p is model.vae_resident.patcher for p in loaded)
    assert any(p is model.text_resident.patcher for p in loaded)
    assert model.high.model.proj_out.weight.device.type == "cuda"

    mm.unload_all_models()  # what ComfyUI does when another model needs the room
    assert model.high.model.proj_out.weight.device.type == "cpu"
    assert _generate(model, steps=2).frames.shape == (9, 64, 128, 3)  # reloaded on demand
    assert model.high.model.proj_out.weight.device.type == "cuda"
