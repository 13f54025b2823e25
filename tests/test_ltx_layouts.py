"""LTX-Video layouts: the tiny demo models written in every layout (diffusers folder, vendor checkpoint +
ComfyUI T5 file) load to identical transformer, VAE and text encoder outputs; incomplete layouts name every
missing file with the download command; fp8_scaled T5 files are dequantized; a T5 file without a tokenizer
outside ComfyUI is a clear error."""

import json
import pathlib
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import T5Config, T5EncoderModel

from reelsmith.engine import demo_ltx, host
from reelsmith.engine.errors import CheckpointMismatchError, ModelFilesError
from reelsmith.engine.models import checkpoint_io, ltx_keys, ltx_layouts, t5_encoder
from reelsmith.engine.models.ltx_model import load_ltx_transformer, load_ltx_vae
from reelsmith.engine.models.ltx_variants import CONFIG_DIR, TEXT_ENCODER_CONFIG
from reelsmith.engine.models.umt5_keys import convert_umt5_comfyui_to_transformers, convert_umt5_transformers_to_comfyui

CPU = torch.device("cpu")
PROMPTS = ["A cat walks in the rain at night, cinematic shot.", "dog", ""]
COMFYUI_T5_TOKENIZER = pathlib.Path("/work/comfyui/comfy/text_encoders/t5_tokenizer")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    written = demo_ltx.write_ltx_demo_models(root)
    return root, written


def _paths(root):
    demo_dir = demo_ltx.DEMO_DIR
    return dict(
        folder=root / demo_dir / demo_ltx.DIFFUSERS_NAME,
        distilled=root / "checkpoints" / demo_dir / "ltxv-2b-0.9.8-distilled.safetensors",
        dev=root / "checkpoints" / demo_dir / "ltxv-13b-0.9.8-dev.safetensors",
        t5=root / "text_encoders" / demo_dir / "t5xxl_fp16.safetensors",
        t5_fp8=root / "text_encoders" / demo_dir / "t5xxl_fp8_e4m3fn_scaled.safetensors",
        upscaler=root / "latent_upscale_models" / demo_dir / "ltxv-spatial-upscaler-0.9.8.safetensors",
    )


def _every_layout(root) -> list[ltx_layouts.LTXModelFiles]:
    p = _paths(root)
    return [ltx_layouts.resolve_diffusers_folder(p["folder"]),
            ltx_layouts.resolve_single_files(p["distilled"], p["t5"], upscaler=p["upscaler"]),
            ltx_layouts.resolve_single_files(p["dev"], p["t5"])]


def _transformer_out(model):
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(1, 2 * 4 * 4, demo_ltx.LATENT_CHANNELS, generator=generator)
    text = torch.randn(1, 6, demo_ltx.TEXT_DIM, generator=generator)
    with torch.no_grad():
        return model(hidden_states=hidden, encoder_hidden_states=text, timestep=torch.tensor([500]),
                     encoder_attention_mask=torch.ones(1, 6), num_frames=2, height=4, width=4, return_dict=False)[0]


def test_demo_writes_every_layout(demo):
    root, written = demo
    for path in _paths(root).values():
        assert path in written and path.exists(), path
    assert ltx_layouts.discover_ltx_folders([root]) == {"reelsmith-demo/LTX-Video-Diffusers": _paths(root)["folder"]}
    assert list(ltx_layouts.find_upscalers([root]).values()) == [_paths(root)["upscaler"]]
    files = _every_layout(root)
    assert [f.text_encoder_format for f in files] == ["transformers", "comfyui", "comfyui"]
    assert files[1].tokenizer == root / "text_encoders" / "reelsmith-demo" / ltx_layouts.SIDE_TOKENIZER_DIR
    assert files[1].upscaler == _paths(root)["upscaler"] and files[0].upscaler is None


def test_transformer_and_vae_identical_in_every_layout(demo):
    root, _ = demo
    reference = demo_ltx.TinyLTXSet(seed=100)
    expected = _transformer_out(reference.transformer)
    latents = torch.randn(1, demo_ltx.LATENT_CHANNELS, 2, 2, 2, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected_video = reference.vae.decode(latents, torch.tensor([0.05]), return_dict=False)[0]
    facts, outputs, videos = [], [], []
    for files in _every_layout(root):
        loaded = load_ltx_transformer(files.transformer, files.layout)
        outputs.append(_transformer_out(loaded.model))
        facts.append(loaded.facts.distilled)
        vae, _ = load_ltx_vae(files.vae, files.layout)
        with torch.no_grad():
            videos.append(vae.decode(latents, torch.tensor([0.05]), return_dict=False)[0])
    assert facts == [None, True, False]  # diffusers: caller chooses; the vendor metadata says distilled / dev
    for output, video in zip(outputs, videos):
        # the same weights in every layout (state dicts are equal); tensors' memory layout differs between a
        # diffusers folder and a converted vendor file, which changes CPU float summation order (differences ~1e-6)
        torch.testing.assert_close(output, outputs[0])
        torch.testing.assert_close(video, videos[0], rtol=1e-4, atol=2e-4)  # 128-wide convs: more terms summed
    torch.testing.assert_close(outputs[0], expected)
    torch.testing.assert_close(videos[0], expected_video, rtol=1e-4, atol=2e-4)


def test_text_encoder_identical_in_every_layout(demo):
    root, _ = demo
    outputs = []
    for files in _every_layout(root):
        encoder = t5_encoder.load_t5_encoder(files.text_encoder, files.text_encoder_format, files.tokenizer,
                                             dtype=torch.float32)
        outputs.append(encoder.encode(PROMPTS, CPU))
    embeds, mask = outputs[0]
    assert embeds.shape == (3, 128, demo_ltx.TEXT_DIM) and embeds.dtype == torch.float32 and mask.shape == (3, 128)
    assert mask[2].sum() == 1 and mask[0].sum() > mask[1].sum() > 1  # "" still gets </s>, as LTXPipeline's T5
    assert torch.all(mask[:, :-1] >= mask[:, 1:])  # padding only at the end
    for other_embeds, other_mask in outputs[1:]:
        assert torch.equal(other_embeds, embeds) and torch.equal(other_mask, mask)
    short, short_mask = encoder.encode(PROMPTS[:1], CPU, max_tokens=16)
    assert short.shape == (1, 16, demo_ltx.TEXT_DIM) and short_mask.shape == (1, 16)


def test_fp8_scaled_t5_is_dequantized(demo):
    root, _ = demo
    p = _paths(root)
    raw = load_file(str(p["t5_fp8"]))
    q = "encoder.block.0.layer.0.SelfAttention.q"
    assert raw[q + ".weight"].dtype == torch.float8_e4m3fn and q + ".scale_weight" in raw and "scaled_fp8" in raw
    converted = convert_umt5_comfyui_to_transformers(raw, dtype=torch.float32)
    torch.testing.assert_close(converted[q + ".weight"], raw[q + ".weight"].float() * raw[q + ".scale_weight"])
    tokenizer = root / "text_encoders" / "reelsmith-demo" / ltx_layouts.SIDE_TOKENIZER_DIR
    fp16 = t5_encoder.load_t5_encoder(p["t5"], "comfyui", tokenizer, dtype=torch.float32).encode(PROMPTS, CPU)[0]
    fp8 = t5_encoder.load_t5_encoder(p["t5_fp8"], "comfyui", tokenizer, dtype=torch.float32).encode(PROMPTS, CPU)[0]
    error = (fp8 - fp16).norm() / fp16.norm()
    assert error < 0.25  # fp8 rounding only (4096-wide layers; ignoring the scales gives ~1)
    # read as plain weights (scales ignored) the encoder would be far off: the dequantization is what matters
    naive = {k: v for k, v in raw.items() if not k.endswith(".scale_weight")}
    naive_weights = convert_umt5_comfyui_to_transformers(naive, dtype=torch.float32)
    assert (naive_weights[q + ".weight"] - converted[q + ".weight"]).abs().max() > 10


def test_real_t5_xxl_names_and_shapes_convert_both_ways():
    data = json.loads((CONFIG_DIR / TEXT_ENCODER_CONFIG).read_text())
    with torch.device("meta"):
        model = T5EncoderModel(T5Config(**{k: v for k, v in data.items() if not k.startswith("_")}))
    state_dict = model.state_dict()
    file = convert_umt5_transformers_to_comfyui(state_dict)
    assert "encoder.embed_tokens.weight" not in file and len([k for k in file if "relative_attention_bias" in k]) == 1
    assert file["shared.weight"].shape == (32128, 4096)
    back = convert_umt5_comfyui_to_transformers(file)
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in state_dict.items()}


def test_wrong_text_encoder_file_is_named(tmp_path, demo):
    root, _ = demo
    file = load_file(str(_paths(root)["t5"]))
    file["decoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(2, 2)
    bad = tmp_path / "not_t5.safetensors"
    save_file(file, str(bad))
    shutil.copy(_paths(root)["t5"].parent / (_paths(root)["t5"].name + ".reelsmith.json"),
                tmp_path / "not_t5.safetensors.reelsmith.json")
    tokenizer = root / "text_encoders" / "reelsmith-demo" / ltx_layouts.SIDE_TOKENIZER_DIR
    with pytest.raises(CheckpointMismatchError, match=r"not_t5\.safetensors.*'decoder\.block\.0.*T5-XXL.*t5xxl_fp16"):
        t5_encoder.load_t5_encoder(bad, "comfyui", tokenizer)


def test_missing_tokenizer_outside_comfyui_is_a_clear_error(tmp_path, demo, monkeypatch):
    root, _ = demo
    lone = tmp_path / "text_encoders" / "t5xxl_fp16.safetensors"
    lone.parent.mkdir(parents=True)
    shutil.copy(_paths(root)["t5"], lone)
    shutil.copy(str(_paths(root)["t5"]) + ".reelsmith.json", str(lone) + ".reelsmith.json")
    files = ltx_layouts.resolve_single_files(_paths(root)["distilled"], lone)
    assert files.tokenizer is None and files.notes  # ComfyUI's own tokenizer, at load time
    monkeypatch.setattr(host, "comfyui_t5_tokenizer_dir", lambda: None)  # outside ComfyUI (even if on sys.path)
    with pytest.raises(ModelFilesError, match=r"carries no tokenizer.*t5_tokenizer.*tokenizer/"):
        t5_encoder.load_t5_encoder(lone, "comfyui", None)
    # inside ComfyUI its own folder is used
    monkeypatch.setattr(host, "comfyui_t5_tokenizer_dir",
                        lambda: root / "text_encoders" / "reelsmith-demo" / ltx_layouts.SIDE_TOKENIZER_DIR)
    encoder = t5_encoder.load_t5_encoder(lone, "comfyui", None, dtype=torch.float32)
    assert encoder.encode(["cat"], CPU)[0].shape == (1, 128, demo_ltx.TEXT_DIM)


@pytest.mark.skipif(not COMFYUI_T5_TOKENIZER.is_dir(), reason="no ComfyUI checkout with its T5 tokenizer")
def test_comfyui_own_t5_tokenizer_loads_and_pads_like_ltx():
    tokenizer = t5_encoder._load_tokenizer(COMFYUI_T5_TOKENIZER, "test")
    tokens = tokenizer(["a cat"], padding="max_length", max_length=128, truncation=True, return_tensors="pt")
    assert tokens.input_ids.shape == (1, 128) and tokens.input_ids[0, -1] == 0
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1) and len(tokenizer) <= 32128


def test_incomplete_diffusers_folder_names_every_file(tmp_path, demo):
    root, _ = demo
    folder = tmp_path / "LTX-Video"
    shutil.copytree(_paths(root)["folder"], folder)
    for weights in (folder / "vae").glob("*.safetensors"):
        weights.unlink()
    shutil.rmtree(folder / "tokenizer")
    (folder / "text_encoder" / "config.json").unlink()
    with pytest.raises(ModelFilesError) as error:
        ltx_layouts.resolve_diffusers_folder(folder, "LTX-Video")
    message = str(error.value)
    for expected in ("assumed layout: diffusers", f"{folder / 'vae'}/ (weights", f"{folder / 'tokenizer'}/",
                     f"{folder / 'text_encoder'}/config.json", "hf download Lightricks/LTX-Video --include",
                     f"--local-dir {folder}"):
        assert expected in message, (expected, message)
    assert str(folder / "transformer") not in message
    versioned = tmp_path / "LTX-Video-0.9.5"
    versioned.mkdir()
    (versioned / "model_index.json").write_text('{"_class_name": "LTXConditionPipeline"}')
    with pytest.raises(ModelFilesError, match=f"hf download Lightricks/LTX-Video-0.9.5 --local-dir {versioned}"):
        ltx_layouts.resolve_diffusers_folder(versioned)
    (tmp_path / "Wan").mkdir()
    (tmp_path / "Wan" / "model_index.json").write_text('{"_class_name": "WanPipeline"}')
    assert set(ltx_layouts.discover_ltx_folders([tmp_path])) == {"LTX-Video", "LTX-Video-0.9.5"}


def test_missing_single_files_are_named_with_commands(tmp_path):
    models = tmp_path / "models"
    checkpoint = models / "checkpoints" / "ltxv-13b-0.9.8-distilled.safetensors"
    t5 = models / "text_encoders" / "t5xxl_fp16.safetensors"
    upscaler = models / "latent_upscale_models" / "ltxv-spatial-upscaler-0.9.8.safetensors"
    with pytest.raises(ModelFilesError) as error:
        ltx_layouts.resolve_single_files(checkpoint, t5, upscaler=upscaler)
    message = str(error.value)
    for expected in (
        f"hf download Lightricks/LTX-Video ltxv-13b-0.9.8-distilled.safetensors --local-dir {checkpoint.parent}",
        f"hf download comfyanonymous/flux_text_encoders t5xxl_fp16.safetensors --local-dir {t5.parent}",
        f"hf download Lightricks/LTX-Video ltxv-spatial-upscaler-0.9.8.safetensors --local-dir {upscaler.parent}",
        "assumed layout: LTX-Video vendor checkpoint",
    ):
        assert expected in message, (expected, message)


def test_upscaler_file_is_the_vendor_layout(demo):
    root, _ = demo
    path = _paths(root)["upscaler"]
    config = json.loads(checkpoint_io.read_metadata(path)["config"])  # what ComfyUI's loader reads
    assert config["in_channels"] == demo_ltx.LATENT_CHANNELS and config["dims"] == 3
    from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel
    model = LTXLatentUpsamplerModel(**checkpoint_io.read_config_hint(path))
    state_dict = ltx_keys.convert_upscaler_state_dict(load_file(str(path)), str(path))
    checkpoint_io.load_into_meta_model(model, state_dict, str(path), "vendor upscaler")
    reference = demo_ltx.TinyLTXSet(seed=100).upscaler
    latents = torch.randn(1, demo_ltx.LATENT_CHANNELS, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(latents), reference(latents), rtol=0, atol=0)
