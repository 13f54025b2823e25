"""The Hunyuan Avatar nodes without ComfyUI: the loader lists and loads vendor folders (and names the download
command for a missing one), the sampler's input checks (what ComfyUI's own checks would say: VALIDATE_INPUTS takes
over for image_size and fps), the licence notice, and the `--demo` rewrite of the shipped avatar workflow."""

import json
import sys

import pytest
import torch

from pack_paths import PACK_ROOT
from reelsmith.engine import host
from reelsmith.engine.demo_avatar import write_avatar_demo_models
from reelsmith.engine.errors import InvalidInputError
from reelsmith.engine.models.avatar_layouts import resolve_avatar_folder
from reelsmith.nodes import avatar

sys.path.insert(0, str(PACK_ROOT / "scripts"))
import build_workflows  # noqa: E402
import comfyui_client  # noqa: E402


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_avatar_demo_models(root)
    return root


@pytest.fixture
def demo_roots(models_root, monkeypatch):
    monkeypatch.setattr(host, "models_roots", lambda: [models_root])
    return models_root


def test_loader_lists_the_default_name_and_the_folders_found(demo_roots):
    choices = avatar.ReelsmithHunyuanAvatarLoader.INPUT_TYPES()["required"]["model"][0]
    assert choices == ["HunyuanVideo-Avatar", "reelsmith-demo/HunyuanVideo-Avatar"]


def test_loader_loads_a_demo_folder_and_names_the_download_for_a_missing_one(demo_roots):
    loader = avatar.ReelsmithHunyuanAvatarLoader()
    (model,) = loader.load("reelsmith-demo/HunyuanVideo-Avatar", "fp8_e4m3fn", "sdpa", "model")
    assert model.files.transformer.format.startswith("vendor fp8") and model.options.offload == "model"
    with pytest.raises(InvalidInputError) as error:
        loader.load("HunyuanVideo-Avatar", "bf16", "auto", "none")
    assert (f"hf download tencent/HunyuanVideo-Avatar --local-dir {demo_roots / 'HunyuanVideo-Avatar'}"
            in str(error.value))


@pytest.mark.parametrize("image_size, fps, problem", [
    (704, "25", None), (256, "12.5", None), (704, 12.5, None), (704, 25.0, None),
    (300, "25", "image_size 300 must be a multiple of 64 from 256 to 1280"),
    (192, "25", "image_size 192 must be a multiple of 64"),
    (704, "30", "fps 30 is not 25 or 12.5"),
    (704, "fast", "fps fast is not 25 or 12.5"),
])
def test_sampler_validates_image_size_and_fps(image_size, fps, problem):
    result = avatar.ReelsmithHunyuanAvatarSampler.VALIDATE_INPUTS(image_size=image_size, fps=fps)
    if problem is None:
        assert result is True
    else:
        assert isinstance(result, str) and result.startswith("Hunyuan Avatar: ") and problem in result
        with pytest.raises(InvalidInputError, match=problem):  # the same from the node itself
            avatar.ReelsmithHunyuanAvatarSampler().generate(
                None, torch.zeros(1, 256, 256, 3), {}, "", "", image_size, fps, 1, 1.0, 5.0, 0, "whole audio", 60.0,
                "largest")


def test_both_nodes_show_the_licence_notice():
    for node in (avatar.ReelsmithHunyuanAvatarLoader, avatar.ReelsmithHunyuanAvatarSampler):
        for words in ("European Union", "United Kingdom", "South Korea", "improve other AI models"):
            assert words in node.DESCRIPTION
    assert "South Korea" in avatar.ReelsmithHunyuanAvatarLoader.INPUT_TYPES()["required"]["model"][1]["tooltip"]


def test_sampler_outputs_feed_core_create_video():
    sampler = avatar.ReelsmithHunyuanAvatarSampler
    assert sampler.RETURN_TYPES == ("IMAGE", "AUDIO", "FLOAT")
    inputs = sampler.INPUT_TYPES()
    assert inputs["required"]["fps"][0] == ["25", "12.5"] and inputs["required"]["image_size"][1]["step"] == 64
    assert inputs["required"]["negative_prompt"][1]["default"].startswith("Aerial view, aerial view, overexposed")
    assert inputs["optional"]["mask"][0] == "MASK"


def test_demo_rewrite_of_the_shipped_workflow(demo_roots):
    info = build_workflows.combined_object_info()  # the loader's combo now lists the demo folder
    api = json.loads((PACK_ROOT / "workflows" / "api" / "hunyuan_avatar_portrait_talking.json").read_text())
    changes = comfyui_client.apply_demo(api, info)
    assert api["1"]["inputs"]["model"] == "reelsmith-demo/HunyuanVideo-Avatar"
    sampler = api["2"]["inputs"]
    assert (sampler["image_size"], sampler["steps"], sampler["length"]) == (256, 2, "first 129 frames")
    assert sampler["fps"] == "25" and sampler["cfg"] == 7.5 and sampler["max_audio_seconds"] == 60.0
    assert api["5"]["inputs"] == {"image": "portrait.png"} and api["9"]["inputs"] == {"audio": "speech.wav"}
    assert any("image_size 704 -> 256" in change for change in changes)
    assert any("length 'whole audio' -> 'first 129 frames'" in change for change in changes)


def test_the_workflow_model_list_fills_a_folder_the_loader_accepts(tmp_path):
    """download_models.py puts each listed file at <models>/<directory>/<name>: for the avatar workflow that is the
    vendor tree under models/HunyuanVideo-Avatar, complete for the fp8 workflow (and nothing the loader refuses)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("download_models", PACK_ROOT / "scripts" / "download_models.py")
    download = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, download)  # its dataclasses look their module up
    spec.loader.exec_module(download)
    models = download.collect_models(download.resolve_targets(["hunyuan-avatar"]))
    assert {(m.repo_id, m.revision, m.directory) for m in models} == {("tencent/HunyuanVideo-Avatar", "main",
                                                                       "HunyuanVideo-Avatar")}
    for model in models:  # stand-ins at the places the downloader writes to
        target = tmp_path / model.directory / model.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"x")
        assert model.filename == model.name and model.name.startswith("ckpts/")
    llava = tmp_path / "HunyuanVideo-Avatar" / "ckpts" / "llava_llama_image"
    shards = sorted(p.name for p in llava.glob("model-*.safetensors"))
    assert shards == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
    (llava / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {str(i): s for i, s in
                                                                                   enumerate(shards)}}))
    files = resolve_avatar_folder(tmp_path / "HunyuanVideo-Avatar", prefer_fp8=True)
    assert files.transformer.format.startswith("vendor fp8") and files.detector is not None and files.notes == []
