"""The loaded HunyuanVideo-Avatar bundle: the demo models are the vendor's folder tree, folders are discovered as
Wan/LTX folders are, every missing file is named with its download command before anything is read, options are
refused before loading, the transformer / VAE / encoders / detector load from the demo layout with the precision the
user picked, and encoders of another model are refused."""

import shutil

import pytest
import torch

from reelsmith.engine.demo_avatar import DEMO_TRANSFORMER, TinyAvatarSet, write_avatar_demo_models
from reelsmith.engine.errors import InvalidInputError, ModelFilesError
from reelsmith.engine.models import avatar_model, checkpoint_io
from reelsmith.engine.models.avatar_layouts import discover_avatar_folders, resolve_avatar_folder
from reelsmith.engine.models.avatar_model import AvatarLoadOptions, load_avatar_model
from reelsmith.engine.models.hunyuan_avatar_checkpoint import FORMAT_VENDOR, FORMAT_VENDOR_FP8
from reelsmith.engine.models.precision import Fp8Linear

SEED = 200  # write_avatar_demo_models' default
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_avatar_demo_models(root, seed=SEED)
    return root


@pytest.fixture(scope="module")
def demo_folder(models_root):
    return models_root / "reelsmith-demo" / "HunyuanVideo-Avatar"


@pytest.fixture
def copy_of_demo(demo_folder, tmp_path):
    target = tmp_path / "HunyuanVideo-Avatar"
    shutil.copytree(demo_folder, target)
    return target


def test_demo_models_are_the_vendor_tree(demo_folder):
    ckpts = demo_folder / "ckpts"
    transformers = ckpts / "hunyuan-video-t2v-720p" / "transformers"
    module = torch.load(transformers / "mp_rank_00_model_states.pt", weights_only=True)["module"]
    assert {"img_in.proj.weight", "double_blocks.1.img_attn_qkv.weight", "single_blocks.0.linear1.weight",
            "audio_adapter_blocks.0.to_kv.weight", "ref_in.proj.weight", "motion_exp.mlp.0.weight"} <= set(module)
    fp8 = torch.load(transformers / "mp_rank_00_model_states_fp8.pt", weights_only=True)["module"]
    assert fp8["double_blocks.0.img_attn_qkv.weight"].dtype == torch.float8_e4m3fn
    assert "double_blocks.0.img_attn_qkv" in torch.load(transformers / "mp_rank_00_model_states_fp8_map.pt",
                                                        weights_only=True)["module"]
    assert checkpoint_io.read_config_hint(transformers / "mp_rank_00_model_states.pt")["in_channels"] == 16
    assert (ckpts / "hunyuan-video-t2v-720p" / "vae" / "pytorch_model.pt").is_file()
    assert '"AutoencoderKLCausal3D"' in (ckpts / "hunyuan-video-t2v-720p" / "vae" / "config.json").read_text()
    assert (ckpts / "llava_llama_image" / "model.safetensors.index.json").is_file()  # sharded, as the vendor's
    for part in ("text_encoder_2/config.json", "whisper-tiny/preprocessor_config.json", "det_align/detface.pt",
                 "llava_llama_image/tokenizer.json"):
        assert (ckpts / part).is_file(), part


def test_folders_are_discovered_one_or_two_levels_down(models_root, demo_folder, tmp_path):
    diffusers = tmp_path / "diffusers"
    shutil.copytree(demo_folder, diffusers / "HunyuanVideo-Avatar")
    (diffusers / "wan-t2v" / "high_noise_model").mkdir(parents=True)  # another family's folder is not listed
    found = discover_avatar_folders([models_root, diffusers])
    assert found == {"reelsmith-demo/HunyuanVideo-Avatar": demo_folder,
                     "HunyuanVideo-Avatar": diffusers / "HunyuanVideo-Avatar"}


def test_resolve_picks_the_checkpoint_the_precision_wants(demo_folder):
    assert resolve_avatar_folder(demo_folder).transformer.format == FORMAT_VENDOR
    fp8 = resolve_avatar_folder(demo_folder / "ckpts", prefer_fp8=True)
    assert fp8.transformer.format == FORMAT_VENDOR_FP8 and fp8.root == demo_folder
    assert fp8.vae == demo_folder / "ckpts" / "hunyuan-video-t2v-720p" / "vae"
    assert fp8.detector == demo_folder / "ckpts" / "det_align" / "detface.pt" and fp8.notes == []


def test_every_missing_file_is_named_with_its_command_before_anything_loads(copy_of_demo, monkeypatch):
    monkeypatch.setattr(avatar_model, "load_hunyuan_avatar_transformer",
                        lambda *a, **k: pytest.fail("nothing may be read while files are missing"))
    for name in ("mp_rank_00_model_states.pt", "mp_rank_00_model_states_fp8.pt"):
        (copy_of_demo / "ckpts" / "hunyuan-video-t2v-720p" / "transformers" / name).unlink()
    (copy_of_demo / "ckpts" / "hunyuan-video-t2v-720p" / "vae" / "pytorch_model.pt").unlink()
    shard = sorted((copy_of_demo / "ckpts" / "llava_llama_image").glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(ModelFilesError) as error:
        resolve_avatar_folder(copy_of_demo, "HunyuanVideo-Avatar")
    message = str(error.value)
    root = copy_of_demo
    assert "mp_rank_00_model_states.pt (bf16) or mp_rank_00_model_states_fp8.pt + mp_rank_00_model_states_fp8_map.pt" \
        in message
    assert (f"hf download tencent/HunyuanVideo-Avatar --include "
            f"'ckpts/hunyuan-video-t2v-720p/transformers/mp_rank_00_model_states_fp8*' --local-dir {root}") in message
    assert "vae/pytorch_model.pt — the VAE" in message
    assert f"--include 'ckpts/hunyuan-video-t2v-720p/vae/*' --local-dir {root}" in message
    assert str(shard) in message and f"--include 'ckpts/llava_llama_image/*' --local-dir {root}" in message
    assert f"hf download tencent/HunyuanVideo-Avatar --local-dir {root}" in message
    assert "whisper-tiny" not in message and "text_encoder_2" not in message   # complete parts are not listed
    with pytest.raises(ModelFilesError, match="does not exist. Download it with"):
        resolve_avatar_folder(root.parent / "nowhere")


def test_a_missing_face_detector_is_a_note_not_an_error(copy_of_demo):
    (copy_of_demo / "ckpts" / "det_align" / "detface.pt").unlink()
    files = resolve_avatar_folder(copy_of_demo)
    assert files.detector is None
    assert "face MASK" in files.notes[0] and "--include 'ckpts/det_align/*'" in files.notes[0]


def test_options_are_refused_before_loading(demo_folder, monkeypatch):
    monkeypatch.setattr(avatar_model, "load_hunyuan_avatar_transformer", lambda *a, **k: pytest.fail("loaded"))
    files = resolve_avatar_folder(demo_folder)
    with pytest.raises(InvalidInputError, match="precision 'fp32'"):
        load_avatar_model(files, AvatarLoadOptions(precision="fp32"), CPU)
    with pytest.raises(InvalidInputError, match="offload 'disk'"):
        load_avatar_model(files, AvatarLoadOptions(offload="disk"), CPU)
    with pytest.raises(InvalidInputError, match="Unknown attention backend"):
        load_avatar_model(files, AvatarLoadOptions(attention="xformers"), CPU)


def test_bundle_loads_from_the_demo_layout(demo_folder):
    expected = TinyAvatarSet(SEED)
    model = load_avatar_model(resolve_avatar_folder(demo_folder), AvatarLoadOptions(precision="bf16"), CPU)
    assert model.transformer.config.in_channels == DEMO_TRANSFORMER["in_channels"] == 16
    ours = model.transformer.state_dict()
    for key, value in expected.transformer.state_dict().items():
        torch.testing.assert_close(ours[key].float(), value.to(torch.bfloat16).float(), msg=key)
    assert next(model.transformer.parameters()).dtype == torch.bfloat16
    for key, value in expected.vae.state_dict().items():
        assert torch.equal(model.vae.state_dict()[key], value), key
    assert model.llava.model.config.text_config.hidden_size == 16 and model.clip.model.config.hidden_size == 8
    assert model.whisper.encoder.config.d_model == 4 and model.detector is not None
    assert "precision bf16" in model.describe() and "vendor .pt" in model.describe()
    assert len(model.residents) == 2 and model.options.offload == "none"


def test_fp8_precision_keeps_the_fp8_checkpoint_as_stored(demo_folder):
    files = resolve_avatar_folder(demo_folder, prefer_fp8=True)
    model = load_avatar_model(files, AvatarLoadOptions(precision="fp8_e4m3fn", offload="model"), CPU)
    layers = [m for m in model.transformer.modules() if isinstance(m, Fp8Linear)]
    assert len(layers) == 34                                            # every block Linear
    stored = torch.load(files.transformer.weights, weights_only=True)["module"]["single_blocks.0.linear2.weight"]
    assert torch.equal(model.transformer.single_transformer_blocks[0].proj_out.weight, stored)
    assert any("used 34 fp8 weights" in note for note in model.notes)
    assert model.residents == []  # offload "model": moved for the stage, not registered


def test_only_fp8_files_at_bf16_say_they_were_dequantized(copy_of_demo):
    (copy_of_demo / "ckpts" / "hunyuan-video-t2v-720p" / "transformers" / "mp_rank_00_model_states.pt").unlink()
    model = load_avatar_model(resolve_avatar_folder(copy_of_demo), AvatarLoadOptions(precision="bf16"), CPU)
    assert model.files.transformer.format == FORMAT_VENDOR_FP8
    assert any("dequantized" in note for note in model.notes)


def test_encoders_of_another_model_are_refused(copy_of_demo):
    from reelsmith.engine.demo_avatar import clip_tokenizer
    from transformers import CLIPConfig, CLIPModel

    tokenizer = clip_tokenizer()
    wide = CLIPModel(CLIPConfig(text_config=dict(vocab_size=len(tokenizer), hidden_size=12, intermediate_size=16,
                                                 num_hidden_layers=1, num_attention_heads=2,
                                                 max_position_embeddings=77, eos_token_id=1),
                                vision_config=dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=28, patch_size=14)))
    shutil.rmtree(copy_of_demo / "ckpts" / "text_encoder_2")
    wide.save_pretrained(copy_of_demo / "ckpts" / "text_encoder_2")
    tokenizer.save_pretrained(copy_of_demo / "ckpts" / "text_encoder_2")
    with pytest.raises(ModelFilesError, match="CLIP text model of width 12.*pooled output of width 8"):
        load_avatar_model(resolve_avatar_folder(copy_of_demo), AvatarLoadOptions(), CPU)
