"""The editor's server side (nodes/routes.py): what a loader lacks and how to download it, the estimate for a
sampler's widgets, and the thin aiohttp routes, on tiny models written at test time."""

import asyncio
import concurrent.futures
import shutil
import sys
import types

import pytest

from reelsmith.engine import host
from reelsmith.engine.demo_avatar import write_avatar_demo_models
from reelsmith.engine.demo_ltx import TinyLTXSet
from reelsmith.engine.demo_models import TinyWanSet
from reelsmith.engine.pipelines.schedulers import make_flow_scheduler
from reelsmith.nodes import routes
from reelsmith.nodes.wan import SINGLE_FILES

WAN_T2V_FILES = dict(diffusion_model="wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
                     diffusion_model_low_noise="wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors",
                     text_encoder="umt5_xxl_fp8_e4m3fn_scaled.safetensors", vae="wan_2.1_vae.safetensors")
LOADER_OPTIONS = dict(precision="fp8_e4m3fn_fast", attention="auto", compile="off", offload="none")
H100_DEVICE = "cuda:0 NVIDIA H100 80GB HBM3 : cudaMallocAsync"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    t2v = TinyWanSet("t2v-a14b", seed=1)
    t2v.write_release_folder(root / "wan-t2v-14b")
    t2v.write_diffusers_folder(root / "diffusers" / "Wan2.2-T2V-A14B-Diffusers")
    singles = t2v.write_single_files(root, subfolder="")
    ti2v = TinyWanSet("ti2v-5b", seed=2)
    ti2v_singles = ti2v.write_single_files(root, subfolder="ti2v")
    ltx = TinyLTXSet(seed=3)
    ltx_checkpoint = ltx.write_vendor_file(root / "checkpoints" / "ltxv-2b-0.9.8-distilled.safetensors", distilled=True)
    ltx_encoder = ltx.write_text_encoder_file(root / "text_encoders" / "t5xxl_fp16.safetensors")
    return types.SimpleNamespace(root=root, singles=singles, ti2v=ti2v_singles, ltx_checkpoint=ltx_checkpoint,
                                 ltx_encoder=ltx_encoder)


@pytest.fixture
def roots(models, monkeypatch):
    monkeypatch.setattr(host, "models_roots", lambda: [models.root, models.root / "diffusers"])
    return models


def _wan_singles(paths):
    return dict(model=SINGLE_FILES, diffusion_model=str(paths["high"]),
                diffusion_model_low_noise=str(paths["low"]) if "low" in paths else "none",
                text_encoder=str(paths["text_encoder"]), vae=str(paths["vae"]), **LOADER_OPTIONS)


# ------------------------------------------------------------------ loader status


def test_shipped_single_files_missing_name_files_and_the_model_set_command():
    status = routes.loader_status("ReelsmithWanModelLoader", dict(model=SINGLE_FILES, **WAN_T2V_FILES, **LOADER_OPTIONS),
                                  models_dir="/data/models", file_exists=lambda folder, name: False)
    assert status["ok"] is False
    assert status["missing"] == [f"diffusion_models/{WAN_T2V_FILES['diffusion_model']}",
                                 f"diffusion_models/{WAN_T2V_FILES['diffusion_model_low_noise']}",
                                 f"text_encoders/{WAN_T2V_FILES['text_encoder']}", f"vae/{WAN_T2V_FILES['vae']}"]
    assert status["commands"] == [
        f"{sys.executable} {routes.PACK_ROOT / 'scripts' / 'download_models.py'} wan22-t2v-a14b --models-dir /data/models"]
    assert (status["variant"], status["variant_source"]) == ("t2v-a14b", "file name")


def test_one_missing_file_still_names_only_it():
    present = {("vae", WAN_T2V_FILES["vae"]), ("text_encoders", WAN_T2V_FILES["text_encoder"]),
               ("diffusion_models", WAN_T2V_FILES["diffusion_model"])}
    status = routes.loader_status("ReelsmithWanModelLoader", dict(model=SINGLE_FILES, **WAN_T2V_FILES, **LOADER_OPTIONS),
                                  models_dir="/m", file_exists=lambda folder, name: (folder, name) in present)
    assert status["missing"] == [f"diffusion_models/{WAN_T2V_FILES['diffusion_model_low_noise']}"]
    assert len(status["commands"]) == 1 and "wan22-t2v-a14b" in status["commands"][0]


def test_ti2v_files_shared_with_other_sets_need_one_command():
    widgets = dict(model=SINGLE_FILES, diffusion_model="wan2.2_ti2v_5B_fp16.safetensors", diffusion_model_low_noise="none",
                   text_encoder="umt5_xxl_fp8_e4m3fn_scaled.safetensors", vae="wan2.2_vae.safetensors", **LOADER_OPTIONS)
    status = routes.loader_status("ReelsmithWanModelLoader", widgets, models_dir="/m", file_exists=lambda f, n: False)
    assert [c.split()[2] for c in status["commands"]] == ["wan22-ti2v-5b"]  # not also wan22-t2v-a14b for the umt5
    assert status["variant"] == "ti2v-5b"


def test_a_file_only_the_workflow_lists_gets_a_resumable_curl():
    listed = [{"name": "my_finetune.safetensors", "directory": "diffusion_models",
               "url": "https://huggingface.co/someone/finetune/resolve/main/my_finetune.safetensors"}]
    widgets = dict(model=SINGLE_FILES, diffusion_model="my_finetune.safetensors", diffusion_model_low_noise="none",
                   text_encoder="none", vae="wan2.2_vae.safetensors", **LOADER_OPTIONS)
    status = routes.loader_status("ReelsmithWanModelLoader", widgets, listed, models_dir="/m",
                                  file_exists=lambda folder, name: name == "wan2.2_vae.safetensors")
    assert status["commands"] == ["curl -L -C - --create-dirs -o /m/diffusion_models/my_finetune.safetensors "
                                  f"{listed[0]['url']}"]
    assert status["variant"] is None


def test_unknown_file_without_a_url_has_no_command_but_is_named():
    widgets = dict(model=SINGLE_FILES, diffusion_model="mystery.safetensors", diffusion_model_low_noise="none",
                   text_encoder="none", vae="none", **LOADER_OPTIONS)
    status = routes.loader_status("ReelsmithWanModelLoader", widgets, models_dir="/m", file_exists=lambda f, n: False)
    assert status["ok"] is False and status["commands"] == []
    assert "Single-file mode needs at least 'diffusion_model' and 'vae'" in status["message"]


def test_ltx_single_files_get_the_set_command_and_the_per_file_alternatives():
    status = routes.loader_status("ReelsmithLTXModelLoader", dict(
        model=SINGLE_FILES, checkpoint="ltxv-13b-0.9.8-dev.safetensors", text_encoder="t5xxl_fp16.safetensors",
        **LOADER_OPTIONS), models_dir="/m", file_exists=lambda f, n: False)
    assert [c.split()[2] for c in status["commands"]] == ["ltx-13b"]
    assert any(a.startswith("hf download Lightricks/LTX-Video ltxv-13b-0.9.8-dev.safetensors --local-dir")
               for a in status["alternatives"])
    assert not any(a.endswith(")") for a in status["alternatives"]), "a hint in parentheses is not part of a command"
    assert status["variant"] == "13b"


def test_complete_single_files_report_the_variant_from_the_weights(models):
    status = routes.loader_status("ReelsmithWanModelLoader", _wan_singles(models.singles), models_dir="/m")
    assert status["ok"] is True, status["message"]
    assert (status["variant"], status["variant_source"]) == ("t2v-a14b", "weights")
    assert status["missing"] == [] and status["commands"] == []
    ti2v = routes.loader_status("ReelsmithWanModelLoader", _wan_singles(models.ti2v), models_dir="/m")
    assert (ti2v["ok"], ti2v["variant"]) == (True, "ti2v-5b")


def test_renamed_files_still_report_the_weights_variant(models, tmp_path):
    renamed = {key: tmp_path / f"ti2v_looking_name_{path.name}" for key, path in models.singles.items()}
    for key, path in models.singles.items():
        shutil.copy(path, renamed[key])
        hint = path.parent / (path.name + ".reelsmith.json")
        if hint.exists():
            shutil.copy(hint, renamed[key].parent / (renamed[key].name + ".reelsmith.json"))
    status = routes.loader_status("ReelsmithWanModelLoader", _wan_singles(renamed), models_dir="/m")
    assert (status["ok"], status["variant"], status["variant_source"]) == (True, "t2v-a14b", "weights")


def test_complete_ltx_checkpoint(models):
    status = routes.loader_status("ReelsmithLTXModelLoader", dict(
        model=SINGLE_FILES, checkpoint=str(models.ltx_checkpoint), text_encoder=str(models.ltx_encoder),
        **LOADER_OPTIONS), models_dir="/m")
    assert (status["ok"], status["variant"], status["variant_source"]) == (True, "2b", "weights")


def test_release_folder_missing_an_expert_shard(roots):
    folder = roots.root / "wan-t2v-14b"
    shard = sorted((folder / "low_noise_model").glob("*.safetensors"))[-1]
    kept = shard.read_bytes()
    shard.unlink()
    try:
        status = routes.loader_status("ReelsmithWanModelLoader", dict(
            model="wan-t2v-14b", diffusion_model="none", diffusion_model_low_noise="none", text_encoder="none",
            vae="none", **LOADER_OPTIONS))
    finally:
        shard.write_bytes(kept)
    assert status["ok"] is False
    assert status["missing"] == [str(shard)]
    assert status["commands"] == [f"hf download Wan-AI/Wan2.2-T2V-A14B --local-dir {folder}"]
    healthy = routes.loader_status("ReelsmithWanModelLoader", dict(
        model="wan-t2v-14b", diffusion_model="none", diffusion_model_low_noise="none", text_encoder="none",
        vae="none", **LOADER_OPTIONS))
    assert (healthy["ok"], healthy["variant"]) == (True, "t2v-a14b")


def test_diffusers_folder_missing_a_component(roots):
    folder = roots.root / "diffusers" / "Wan2.2-T2V-A14B-Diffusers"
    moved = folder.parent / "transformer_2.moved"
    (folder / "transformer_2").rename(moved)
    try:
        status = routes.loader_status("ReelsmithWanModelLoader", dict(
            model="Wan2.2-T2V-A14B-Diffusers", diffusion_model="none", diffusion_model_low_noise="none",
            text_encoder="none", vae="none", **LOADER_OPTIONS))
    finally:
        moved.rename(folder / "transformer_2")
    assert status["ok"] is False
    assert status["missing"] == [f"{folder / 'transformer_2'}/config.json",
                                 f"{folder / 'transformer_2'}/ (weights: *.safetensors)"]
    assert status["commands"] == [f"hf download Wan-AI/Wan2.2-T2V-A14B-Diffusers --local-dir {folder}"]


def test_not_a_loader_is_refused():
    with pytest.raises(routes.InvalidInputError, match="not a Reelsmith model loader"):
        routes.loader_status("KSampler", {})


# ------------------------------------------------------------------ Hunyuan Avatar loader

AVATAR_LOADER = "ReelsmithHunyuanAvatarLoader"
AVATAR_OPTIONS = dict(precision="fp8_e4m3fn_fast", attention="auto", offload="none")
TRANSFORMERS = "ckpts/hunyuan-video-t2v-720p/transformers"


@pytest.fixture(scope="module")
def avatar_demo(tmp_path_factory):
    """A tiny complete vendor tree at <models>/reelsmith-demo/HunyuanVideo-Avatar."""
    root = tmp_path_factory.mktemp("avatar-models")
    write_avatar_demo_models(root)
    return root / "reelsmith-demo" / "HunyuanVideo-Avatar"


@pytest.fixture
def avatar_root(tmp_path, monkeypatch):
    root = tmp_path / "models"
    root.mkdir()
    monkeypatch.setattr(host, "models_roots", lambda: [root])
    return root


def _avatar_status(root, model="HunyuanVideo-Avatar", **options):
    return routes.loader_status(AVATAR_LOADER, dict(model=model, **dict(AVATAR_OPTIONS, **options)),
                                models_dir=str(root))


def _set_command(root):
    return f"{sys.executable} {routes.PACK_ROOT / 'scripts' / 'download_models.py'} hunyuan-avatar --models-dir {root}"


def test_avatar_folder_absent_names_every_part_and_the_model_set(avatar_root):
    status = _avatar_status(avatar_root)
    folder = avatar_root / "HunyuanVideo-Avatar"
    assert status["ok"] is False and status["family"] == "avatar" and status["variant"] is None
    assert "is not downloaded yet" in status["message"] and str(folder) in status["message"]
    model_files = ": config.json, (weights: *.safetensors)"
    tokenizer = ", (tokenizer: tokenizer.json, or vocab.json + merges.txt)"
    assert status["missing"] == [  # one line per part, relative to the models folder
        f"HunyuanVideo-Avatar/{TRANSFORMERS}/mp_rank_00_model_states.pt (bf16) or mp_rank_00_model_states_fp8.pt + "
        "mp_rank_00_model_states_fp8_map.pt (fp8) — the transformer",
        "HunyuanVideo-Avatar/ckpts/hunyuan-video-t2v-720p/vae/: pytorch_model.pt, config.json — the VAE",
        f"HunyuanVideo-Avatar/ckpts/llava_llama_image/{model_files}{tokenizer} — the LLaVA-Llama-3 text + image "
        "encoder",
        f"HunyuanVideo-Avatar/ckpts/text_encoder_2/{model_files}{tokenizer} — the CLIP-L text encoder",
        f"HunyuanVideo-Avatar/ckpts/whisper-tiny/{model_files} — the whisper-tiny audio encoder",
        "HunyuanVideo-Avatar/ckpts/det_align/detface.pt — the face detector (optional: or connect a face MASK to the "
        "sampler)"]
    assert status["commands"] == [_set_command(avatar_root)]  # the shipped workflow's set fills exactly this folder
    hf = f"hf download tencent/HunyuanVideo-Avatar --include '{{}}' --local-dir {folder}"
    assert status["alternatives"] == [hf.format(include) for include in (
        f"{TRANSFORMERS}/mp_rank_00_model_states_fp8*", "ckpts/hunyuan-video-t2v-720p/vae/*",
        "ckpts/llava_llama_image/*", "ckpts/text_encoder_2/*", "ckpts/whisper-tiny/*", "ckpts/det_align/detface.pt")]


def test_avatar_incomplete_tree_names_only_what_is_missing(avatar_root, avatar_demo):
    folder = avatar_root / "HunyuanVideo-Avatar"
    shutil.copytree(avatar_demo, folder)
    (folder / "ckpts" / "hunyuan-video-t2v-720p" / "vae" / "pytorch_model.pt").unlink()
    shutil.rmtree(folder / "ckpts" / "whisper-tiny")
    status = _avatar_status(avatar_root)
    assert status["ok"] is False and "is incomplete" in status["message"]
    assert status["missing"] == [
        "HunyuanVideo-Avatar/ckpts/hunyuan-video-t2v-720p/vae/pytorch_model.pt — the VAE",
        "HunyuanVideo-Avatar/ckpts/whisper-tiny/: config.json, (weights: *.safetensors) — the whisper-tiny audio encoder"]
    assert status["commands"] == [_set_command(avatar_root)]  # it skips what is there
    assert [c.split("--include ")[1].split()[0] for c in status["alternatives"]] == \
        ["'ckpts/hunyuan-video-t2v-720p/vae/*'", "'ckpts/whisper-tiny/*'"]


def test_avatar_folder_elsewhere_gets_hf_commands_for_its_own_place(avatar_root, avatar_demo):
    """The model set writes to models/HunyuanVideo-Avatar only; another folder gets commands for itself."""
    folder = avatar_root / "my-avatar"
    shutil.copytree(avatar_demo, folder)
    transformers = folder / TRANSFORMERS
    (transformers / "mp_rank_00_model_states.pt").unlink()
    (transformers / "mp_rank_00_model_states_fp8_map.pt").unlink()
    status = _avatar_status(avatar_root, model="my-avatar")
    assert status["missing"] == [f"my-avatar/{TRANSFORMERS}/mp_rank_00_model_states_fp8_map.pt — the fp8 "
                                 "transformer's scale map"]
    assert status["commands"] == [f"hf download tencent/HunyuanVideo-Avatar --include "
                                  f"'{TRANSFORMERS}/mp_rank_00_model_states_fp8_map.pt' --local-dir {folder}"]
    assert status["alternatives"] == []


def test_avatar_complete_tree_is_ok_and_a_missing_detector_is_a_note(avatar_root, avatar_demo):
    folder = avatar_root / "HunyuanVideo-Avatar"
    shutil.copytree(avatar_demo, folder)
    status = _avatar_status(avatar_root)
    assert status["ok"] is True, status
    assert status["message"] == "All files present (tencent/HunyuanVideo-Avatar vendor folder: HunyuanVideo-Avatar)."
    assert (status["missing"], status["commands"], status["variant"]) == ([], [], None)
    (folder / "ckpts" / "det_align" / "detface.pt").unlink()
    without = _avatar_status(avatar_root, precision="bf16")
    assert without["ok"] is True and "no face detector" in without["message"] and "face MASK" in without["message"]
    assert "--include 'ckpts/det_align/*'" in without["message"]


def test_avatar_loader_and_status_agree(avatar_root, avatar_demo):
    """The status calls the loader's own resolve_files: what it says is missing, loading refuses."""
    shutil.copytree(avatar_demo, avatar_root / "HunyuanVideo-Avatar")
    (avatar_root / "HunyuanVideo-Avatar" / "ckpts" / "text_encoder_2" / "config.json").unlink()
    with pytest.raises(routes.ReelsmithError, match="text_encoder_2/config.json"):
        routes.LOADERS[AVATAR_LOADER][1].resolve_files("HunyuanVideo-Avatar", "bf16")
    assert _avatar_status(avatar_root)["missing"] == [
        "HunyuanVideo-Avatar/ckpts/text_encoder_2/config.json — the CLIP-L text encoder"]


# ------------------------------------------------------------------ estimates


def _wan_sampler(**overrides):
    values = dict(width=1280, height=720, frames=81, steps=40, cfg_high=3.0, cfg_low=4.0, boundary=0.875,
                  flow_shift=12.0, scheduler="unipc", seed=1, prompt="a fox")
    values.update(overrides)
    return values


def test_wan_phases_split_steps_as_the_sampler_does():
    phases = routes.wan_phases("t2v-a14b", 40, 3.0, 1.0, 0.875, 12.0, "unipc")
    schedule = make_flow_scheduler("unipc", 12.0)
    schedule.set_timesteps(40)
    high = sum(1 for t in schedule.timesteps if t >= 875)
    assert phases == [(high, 3.0), (40 - high, 1.0)] and 0 < high < 40
    assert routes.wan_phases("ti2v-5b", 50, 5.0, 1.0, 0.0, 5.0, "unipc") == [(50, 5.0)]


def test_estimate_for_a_wan_sampler_on_h100():
    result = routes.estimate_for(dict(node_type="ReelsmithWan22TextToVideo", gpu_device=H100_DEVICE,
                                      variant="t2v-a14b", variant_source="weights", sampler=_wan_sampler(cfg_low=1.0),
                                      loader=LOADER_OPTIONS))
    high, low = routes.wan_phases("t2v-a14b", 40, 3.0, 1.0, 0.875, 12.0, "unipc")
    assert result["status"] == "measured"
    assert result["forwards"] == 2 * high[0] + low[0]
    assert result["seconds"] == pytest.approx(result["forwards"] * 11.99, abs=0.1)
    assert result["problems"] == []
    assert any("both A14B experts" in line for line in result["lines"])
    offloaded = routes.estimate_for(dict(node_type="ReelsmithWan22TextToVideo", gpu_device=H100_DEVICE,
                                         variant="t2v-a14b", sampler=_wan_sampler(),
                                         loader=dict(LOADER_OPTIONS, offload="model")))
    assert not any("both A14B experts" in line for line in offloaded["lines"])


def test_estimate_reports_what_validation_would_refuse():
    result = routes.estimate_for(dict(node_type="ReelsmithWan22ImageToVideo", gpu_device="cpu", variant="ti2v-5b",
                                      sampler=_wan_sampler(width=1296, frames=80), loader=LOADER_OPTIONS))
    assert result["status"] == "no_measurement"
    assert any(p.startswith("width 1296 is not a multiple of 32") for p in result["problems"])
    assert any(p.startswith("frames 80 is not of the form 4k+1") for p in result["problems"])
    ltx = routes.estimate_for(dict(node_type="ReelsmithLTXTextToVideo", gpu_device=H100_DEVICE, variant="2b",
                                   sampler=dict(width=1280, height=720, frames=97, steps=8, cfg=1.0),
                                   loader=LOADER_OPTIONS))
    assert ltx["problems"] == ["height 720 is not a multiple of 32: use 704 or 736"]
    assert ltx["status"] == "extrapolated"  # from the 1280x704 row: the estimate still shows, beside the problem


def test_estimate_without_a_known_variant():
    result = routes.estimate_for(dict(node_type="ReelsmithWan22TextToVideo", gpu_device=H100_DEVICE, variant=None,
                                      sampler=_wan_sampler(), loader=LOADER_OPTIONS))
    assert result["status"] == "unknown_model" and result["seconds"] is None


def _avatar_payload(gpu=H100_DEVICE, loader=None, **sampler):
    values = dict(prompt="", image_size=704, fps="25", steps=50, cfg=7.5, flow_shift=5.0, seed=42,
                  length="whole audio", max_audio_seconds=60.0, faces="largest")
    values.update(sampler)
    return dict(node_type="ReelsmithHunyuanAvatarSampler", gpu_device=gpu, variant=None, sampler=values,
                loader={**dict(model="HunyuanVideo-Avatar", precision="bf16", attention="auto", offload="none"),
                        **(loader or {})})


def test_avatar_estimate_comes_from_the_h100_measurement():
    result = routes.estimate_for(_avatar_payload())
    assert (result["status"], result["forwards"], result["seconds"]) == ("measured", 50, pytest.approx(840.0))
    assert (result["peak_gib"], result["peak_kind"]) == (40.2, "measured")
    assert result["row"]["model_family"] == "avatar" and result["row"]["offload"] == "none"
    lines = result["lines"]
    assert lines[0] == ("≈ 14 min for 50 steps x 1 window (16.80 s per step, cond + uncond in one batch) · "
                        "peak ≈ 40.2 GiB")
    assert lines[1] == ("NVIDIA H100 80GB HBM3: measured 13b bf16, compile off, attention sdpa, 704x704 x 129 frames "
                        "(16.8 s/forward at batch 2, 2026-11-22)")
    # whole audio, audio unknown: one window assumed, said, with the bound at max_audio_seconds (60 s at 25 fps =
    # 1500 frames: 385 latent frames on the circle, 12 windows of 33)
    assert ("whole audio: 1 window assumed (the audio's length is not known here); each further window adds "
            "≈ 14 min, up to 12 windows (≈ 2 h 48 min) at max_audio_seconds 60") in lines
    assert any(line.startswith("size: a square portrait assumed (704x704); the tallest one at this image_size renders "
                               "704x1216: ≈ ") for line in lines)
    assert result["problems"] == []


def test_avatar_estimate_windows_offload_and_precision():
    block = routes.estimate_for(_avatar_payload(loader=dict(offload="block")))
    assert (block["peak_gib"], block["seconds"]) == (17.2, pytest.approx(840.0))
    first = routes.estimate_for(_avatar_payload(length="first 129 frames", fps="12.5"))
    assert first["forwards"] == 50 and not any("window assumed" in line for line in first["lines"])
    # a script that knows the clip: 12 s at 25 fps = 300 frames -> (305 // 128 + 1) * 32 + 1 = 97 latent frames,
    # 3 windows a step
    known = routes.estimate_for(dict(_avatar_payload(), audio_seconds=12.0))
    assert (known["forwards"], known["seconds"]) == (150, pytest.approx(150 * 16.8))
    assert "whole audio: 12 s is 300 frames at 25 fps, 3 window(s) a step" in known["lines"]
    # fp8 was measured with the whole pipeline at 704x896 only: a square 704 portrait is extrapolated from it
    fp8 = routes.estimate_for(_avatar_payload(loader=dict(precision="fp8_e4m3fn_fast")))
    assert fp8["status"] == "extrapolated" and 0 < fp8["seconds"] < 50 * 24.9
    assert any("704x896" in line for line in fp8["lines"])
    no_fp8_16 = routes.estimate_for(_avatar_payload(loader=dict(precision="fp16")))
    assert no_fp8_16["status"] == "no_measurement" and "at precision fp16" in no_fp8_16["lines"][0]
    cpu = routes.estimate_for(_avatar_payload(gpu="cpu", image_size=700, fps="30"))
    assert cpu["status"] == "no_measurement" and "measured on: NVIDIA H100 80GB HBM3" in cpu["lines"][0]
    assert cpu["problems"] == [
        "image_size 700 must be a multiple of 64 from 256 to 1280 (the model was trained at 704): use 640 or 704",
        "fps 30 is not 25 or 12.5 fps (the frame rates the model was trained on)"]


def test_estimate_bad_payloads_are_named():
    with pytest.raises(routes.InvalidInputError, match="not a Reelsmith sampler"):
        routes.estimate_for(dict(node_type="KSampler"))
    with pytest.raises(routes.InvalidInputError, match="'width' = 'wide' is not a number"):
        routes.estimate_for(dict(node_type="ReelsmithWan22TextToVideo", sampler=_wan_sampler(width="wide")))


# ------------------------------------------------------------------ the aiohttp glue


def test_routes_answer_through_a_prompt_server(monkeypatch):
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    table = web.RouteTableDef()
    fake_server = types.ModuleType("server")
    fake_server.PromptServer = types.SimpleNamespace(instance=types.SimpleNamespace(routes=table))
    monkeypatch.setitem(sys.modules, "server", fake_server)
    find_spec = routes.importlib.util.find_spec
    monkeypatch.setattr(routes.importlib.util, "find_spec",
                        lambda name, *rest: object() if name == "server" else find_spec(name, *rest))
    assert routes.register_routes() is True

    async def exercise():
        app = web.Application()
        app.add_routes(table)
        async with TestClient(TestServer(app)) as client:
            rules = await (await client.get("/reelsmith/editor/rules")).json()
            estimate = await client.post("/reelsmith/editor/estimate", json=dict(
                node_type="ReelsmithWan22TextToVideo", gpu_device=H100_DEVICE, variant="t2v-a14b",
                sampler=_wan_sampler(), loader=LOADER_OPTIONS))
            bad = await client.post("/reelsmith/editor/estimate", json=dict(node_type="KSampler"))
            not_json = await client.post("/reelsmith/editor/loader_status", data=b"{oops")
            status = await client.post("/reelsmith/editor/loader_status", json=dict(
                node_type="ReelsmithWanModelLoader", widgets=dict(model=SINGLE_FILES, **WAN_T2V_FILES, **LOADER_OPTIONS)))
            outside = await client.post("/reelsmith/editor/loader_status", json=dict(
                node_type="ReelsmithWanModelLoader", widgets=dict(model=SINGLE_FILES, diffusion_model="../../etc/passwd")))
            return rules, estimate.status, await estimate.json(), bad.status, await bad.json(), not_json.status, \
                status.status, await status.json(), outside.status

    # a thread of its own: a browser test's Playwright may leave an event loop running in this one
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answers = pool.submit(asyncio.run, exercise()).result()
    rules, code, estimate, bad_code, bad, not_json_code, status_code, status, outside_code = answers
    assert outside_code == 400
    assert rules == routes.sampler_rules()
    assert code == 200 and estimate["status"] == "measured"
    assert bad_code == 400 and "not a Reelsmith sampler" in bad["error"]
    assert not_json_code == 400
    assert status_code == 200 and status["ok"] is False and len(status["missing"]) == 4


def test_no_server_no_routes():
    assert routes.register_routes() is False  # tests run without ComfyUI's server module
