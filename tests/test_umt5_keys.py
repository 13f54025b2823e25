"""UMT5 text encoder key conversion (Wan-AI original .pth, ComfyUI text_encoders files <-> transformers
UMT5EncoderModel), fp8_scaled dequantization, and the offline tokenizers."""

import io
import json
import math

import pytest
import sentencepiece
import torch
from reelsmith.engine.errors import CheckpointMismatchError, ModelFilesError
from reelsmith.engine.models import checkpoint_io
from reelsmith.engine.models.umt5_keys import (
    build_tiny_umt5_tokenizer,
    convert_umt5_comfyui_to_transformers,
    convert_umt5_original_to_transformers,
    convert_umt5_transformers_to_comfyui,
    convert_umt5_transformers_to_original,
    spiece_normalizer_spec,
    tiny_spiece_model_bytes,
    tokenizer_from_spiece_bytes,
)
from reelsmith.engine.models.wan_variants import CONFIG_DIR
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

# Real UMT5 uses 32 buckets and a max distance of 128 (Wan's own module hard-codes the 128).
TINY = dict(vocab_size=256, d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=2, feed_forward_proj="gated-gelu",
            relative_attention_num_buckets=32, relative_attention_max_distance=128)
PROMPTS = ["A cat sits on the red mat.", "  leading and   repeated   spaces ", "Fullwidth ＡＢＣ, ½ and the ﬁ ligature",
           "一只猫在垫子上。", "tab\tand\nnewline", "", "ÉCOLE café naïve", "Ein Hund läuft im Park!"]


def tiny_encoder(seed: int = 0) -> UMT5EncoderModel:
    torch.manual_seed(seed)
    model = UMT5EncoderModel(UMT5Config(**TINY)).eval()
    with torch.no_grad():  # norms start at one: re-randomise so a swapped tensor shows in the output
        for name, parameter in model.named_parameters():
            parameter.copy_(1 + 0.1 * torch.randn_like(parameter) if "norm" in name else torch.randn_like(parameter) * 0.2)
    return model


def full_size_meta_encoder() -> UMT5EncoderModel:
    data = json.loads((CONFIG_DIR / "umt5_xxl_encoder.json").read_text())
    with torch.device("meta"):
        return UMT5EncoderModel(UMT5Config(**{k: v for k, v in data.items() if not k.startswith("_")}))


def shapes(state_dict: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def encode(model, ids, mask):
    with torch.no_grad():
        return model(ids, attention_mask=mask).last_hidden_state


def sample_batch(length: int = 150):
    ids = torch.randint(3, TINY["vocab_size"], (2, length), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, 90:] = 0
    return ids, mask


# ------------------------------------------------------------------ a reference forward in Wan's own naming

def _rms_norm(x, weight, eps=1e-6):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _wan_bucket(rel_pos, num_buckets, max_dist=128):
    """Wan's T5RelativeEmbedding bucketing (bidirectional)."""
    num_buckets //= 2
    buckets = (rel_pos > 0).long() * num_buckets
    rel_pos = rel_pos.abs()
    max_exact = num_buckets // 2
    large = max_exact + (torch.log(rel_pos.float() / max_exact) / math.log(max_dist / max_exact)
                         * (num_buckets - max_exact)).long()
    large = torch.minimum(large, torch.full_like(large, num_buckets - 1))
    return buckets + torch.where(rel_pos < max_exact, rel_pos, large)


def wan_t5_encoder_reference(sd: dict, ids, mask, num_heads: int, num_layers: int):
    """The math of Wan's T5Encoder (wan/modules/t5.py, shared_pos=False), written from its original key names."""
    x = sd["token_embedding.weight"][ids]
    batch, length, _ = x.shape
    positions = torch.arange(length)
    key_mask = (mask == 0).view(batch, 1, 1, length)
    for i in range(num_layers):
        p = f"blocks.{i}."
        bucket = _wan_bucket(positions[None, :] - positions[:, None], sd[p + "pos_embedding.embedding.weight"].shape[0])
        bias = sd[p + "pos_embedding.embedding.weight"][bucket].permute(2, 0, 1)[None]
        h = _rms_norm(x, sd[p + "norm1.weight"])
        q, k, v = (torch.nn.functional.linear(h, sd[p + f"attn.{n}.weight"]).view(batch, length, num_heads, -1)
                   for n in "qkv")
        scores = torch.einsum("binc,bjnc->bnij", q, k) + bias  # T5: no 1/sqrt(d) scaling
        scores = scores.masked_fill(key_mask, torch.finfo(x.dtype).min)
        attended = torch.einsum("bnij,bjnc->binc", scores.softmax(-1), v).reshape(batch, length, -1)
        x = x + torch.nn.functional.linear(attended, sd[p + "attn.o.weight"])
        h = _rms_norm(x, sd[p + "norm2.weight"])
        gate = torch.nn.functional.gelu(torch.nn.functional.linear(h, sd[p + "ffn.gate.0.weight"]), approximate="tanh")
        x = x + torch.nn.functional.linear(torch.nn.functional.linear(h, sd[p + "ffn.fc1.weight"]) * gate,
                                           sd[p + "ffn.fc2.weight"])
    return _rms_norm(x, sd["norm.weight"])


def test_original_naming_means_what_wans_module_computes():
    model = tiny_encoder(seed=1)
    original = convert_umt5_transformers_to_original(model.state_dict())
    ids, mask = sample_batch()
    with torch.no_grad():
        reference = wan_t5_encoder_reference(original, ids, mask, TINY["num_heads"], TINY["num_layers"])
    out = encode(model, ids, mask)
    valid = mask.bool()
    assert reference.abs().max() > 0.1
    torch.testing.assert_close(out[valid], reference[valid], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", ["original", "comfyui"])
def test_round_trip_loads_strictly_with_identical_outputs(layout):
    source = tiny_encoder(seed=2)
    if layout == "original":
        converted = convert_umt5_original_to_transformers(convert_umt5_transformers_to_original(source.state_dict()))
    else:
        file = convert_umt5_transformers_to_comfyui(source.state_dict(), spiece_model=tiny_spiece_model_bytes(256))
        assert "encoder.embed_tokens.weight" not in file and file["spiece_model"].dtype == torch.uint8
        converted = convert_umt5_comfyui_to_transformers(file, dtype=torch.float32)
    assert set(converted) == set(source.state_dict())
    target = UMT5EncoderModel(UMT5Config(**TINY)).eval()
    checkpoint_io.load_into_meta_model(target, converted, "tiny", layout)
    ids, mask = sample_batch()
    assert torch.equal(encode(target, ids, mask), encode(source, ids, mask))


# Block 0 of models_t5_umt5-xxl-enc-bf16.pth, as wan/modules/t5.py names it (T5SelfAttention, shared_pos=False).
WAN_BLOCK_0 = {
    "blocks.0.norm1.weight": (4096,), "blocks.0.attn.q.weight": (4096, 4096), "blocks.0.attn.k.weight": (4096, 4096),
    "blocks.0.attn.v.weight": (4096, 4096), "blocks.0.attn.o.weight": (4096, 4096), "blocks.0.norm2.weight": (4096,),
    "blocks.0.ffn.gate.0.weight": (10240, 4096), "blocks.0.ffn.fc1.weight": (10240, 4096),
    "blocks.0.ffn.fc2.weight": (4096, 10240), "blocks.0.pos_embedding.embedding.weight": (32, 64),
}


def test_full_size_original_layout():
    model = full_size_meta_encoder()
    original = shapes(convert_umt5_transformers_to_original(model.state_dict()))
    assert len(original) == 242  # token embedding + 24 blocks x 10 + final norm
    assert original["token_embedding.weight"] == (256384, 4096) and original["norm.weight"] == (4096,)
    assert {k: v for k, v in original.items() if k.startswith("blocks.0.")} == WAN_BLOCK_0
    assert "blocks.23.pos_embedding.embedding.weight" in original  # a relative-position table in every block
    meta = {k: torch.empty(s, device="meta") for k, s in original.items()}
    assert shapes(convert_umt5_original_to_transformers(meta)) == shapes(model.state_dict())


def test_full_size_comfyui_layout():
    model = full_size_meta_encoder()
    file = shapes(convert_umt5_transformers_to_comfyui(model.state_dict()))
    assert len(file) == 242 and "encoder.embed_tokens.weight" not in file
    # what ComfyUI's detect_te_model reads to call a file T5-XXL (CLIPLoader type "wan" needs that)
    assert file["encoder.block.23.layer.1.DenseReluDense.wi_1.weight"][-1] == 4096
    assert file["encoder.block.5.layer.0.SelfAttention.relative_attention_bias.weight"] == (32, 64)
    meta = {k: torch.empty(s, device="meta") for k, s in file.items()}
    assert shapes(convert_umt5_comfyui_to_transformers(meta)) == shapes(model.state_dict())


def test_shipped_config():
    config = full_size_meta_encoder().config
    assert (config.d_model, config.d_ff, config.d_kv, config.num_heads, config.num_layers, config.vocab_size) == \
        (4096, 10240, 64, 64, 24, 256384)
    assert (config.dense_act_fn, config.is_gated_act, config.layer_norm_epsilon) == ("gelu_new", True, 1e-6)
    assert (config.relative_attention_num_buckets, config.relative_attention_max_distance) == (32, 128)


# ------------------------------------------------------------------ fp8 files

def test_fp8_scaled_file_is_dequantized_exactly():
    source = tiny_encoder(seed=3)
    file = convert_umt5_transformers_to_comfyui(source.state_dict(), fp8_scaled=True)
    q = "encoder.block.0.layer.0.SelfAttention.q"
    assert file[q + ".weight"].dtype == torch.float8_e4m3fn and file["scaled_fp8"].dtype == torch.float8_e4m3fn
    assert file["shared.weight"].dtype == torch.float32  # only the blocks' Linear weights are quantized
    converted = convert_umt5_comfyui_to_transformers(file, dtype=torch.float32)
    assert torch.equal(converted[q + ".weight"], file[q + ".weight"].float() * file[q + ".scale_weight"])
    original = source.state_dict()[q + ".weight"]
    assert (converted[q + ".weight"] - original).abs().max() < 0.07 * original.abs().max()
    assert (file[q + ".weight"].float() - original).abs().max() > 10 * original.abs().max()  # unscaled: far off
    assert converted[q + ".weight"].dtype == torch.float32
    assert convert_umt5_comfyui_to_transformers(file)[q + ".weight"].dtype == torch.bfloat16  # default
    target = UMT5EncoderModel(UMT5Config(**TINY)).eval()
    checkpoint_io.load_into_meta_model(target, converted, "fp8 file", "ComfyUI fp8_scaled")
    ids, mask = sample_batch()
    reference = encode(source, ids, mask)
    # fp8 keeps 3 mantissa bits: close, not equal (random weights amplify the error over the layers)
    assert (encode(target, ids, mask) - reference).abs().mean() < 0.25 * reference.abs().mean()


def test_newer_comfyui_quant_naming_and_unsupported_formats():
    file = convert_umt5_transformers_to_comfyui(tiny_encoder().state_dict(), fp8_scaled=True)
    layer = "encoder.block.1.layer.1.DenseReluDense.wo"
    expected = file[layer + ".weight"].float() * file[layer + ".scale_weight"]
    newer = {k.replace(".scale_weight", ".weight_scale"): v for k, v in file.items() if k != "scaled_fp8"}
    quant = lambda fmt: torch.tensor(list(json.dumps({"format": fmt}).encode()), dtype=torch.uint8)
    newer[layer + ".comfy_quant"] = quant("float8_e4m3fn")
    newer[layer + ".input_scale"] = torch.ones(1)
    converted = convert_umt5_comfyui_to_transformers(newer, dtype=torch.float32)
    assert torch.equal(converted[layer + ".weight"], expected)
    newer[layer + ".comfy_quant"] = quant("nvfp4")
    with pytest.raises(CheckpointMismatchError, match=f"'{layer}' is quantized as 'nvfp4'"):
        convert_umt5_comfyui_to_transformers(newer)


def test_unscaled_fp8_is_cast_and_orphan_scale_is_named():
    file = convert_umt5_transformers_to_comfyui(tiny_encoder().state_dict())
    key = "encoder.block.0.layer.0.SelfAttention.k.weight"
    file[key] = file[key].to(torch.float8_e4m3fn)
    converted = convert_umt5_comfyui_to_transformers(file, dtype=torch.float32)
    assert torch.equal(converted[key], file[key].float())
    file["encoder.block.0.layer.0.SelfAttention.x.scale_weight"] = torch.ones(1)
    with pytest.raises(CheckpointMismatchError, match=r"'encoder\.block\.0\.layer\.0\.SelfAttention\.x'"):
        convert_umt5_comfyui_to_transformers(file)


# ------------------------------------------------------------------ bad files

@pytest.mark.parametrize("layout, extra", [
    ("original", "blocks.0.attn.q.bias"),
    ("original", "pos_embedding.embedding.weight"),  # a shared table: a T5 with shared_pos, not UMT5
    ("comfyui", "decoder.block.0.layer.0.SelfAttention.q.weight"),  # a full encoder-decoder
    ("comfyui", "encoder.block.0.layer.0.SelfAttention.q.bias"),
])
def test_unexpected_key_is_named(layout, extra):
    state_dict = tiny_encoder().state_dict()
    if layout == "original":
        file, convert = convert_umt5_transformers_to_original(state_dict), convert_umt5_original_to_transformers
    else:
        file, convert = convert_umt5_transformers_to_comfyui(state_dict), convert_umt5_comfyui_to_transformers
    file[extra] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError, match=f"unexpected key '{extra}'") as error:
        convert(file, source="te.safetensors")
    assert "te.safetensors" in str(error.value)


def test_unknown_key_is_named_in_reverse():
    state_dict = dict(tiny_encoder().state_dict(), **{"lm_head.weight": torch.zeros(1)})
    for convert in (convert_umt5_transformers_to_original, convert_umt5_transformers_to_comfyui):
        with pytest.raises(CheckpointMismatchError, match="'lm_head.weight'"):
            convert(state_dict)


def test_missing_and_misshaped_keys_are_named_on_load():
    original = convert_umt5_transformers_to_original(tiny_encoder().state_dict())
    del original["blocks.1.ffn.fc1.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"missing key 'encoder\.block\.1\.layer\.1\.DenseReluDense\.wi_1"):
        checkpoint_io.load_into_meta_model(UMT5EncoderModel(UMT5Config(**TINY)),
                                           convert_umt5_original_to_transformers(original), "te.pth", "Wan original")
    original = convert_umt5_transformers_to_original(tiny_encoder().state_dict())
    original["blocks.0.pos_embedding.embedding.weight"] = torch.zeros(8, 4)
    with pytest.raises(CheckpointMismatchError, match=r"relative_attention_bias\.weight' has shape \[8, 4\]"):
        checkpoint_io.load_into_meta_model(UMT5EncoderModel(UMT5Config(**TINY)),
                                           convert_umt5_original_to_transformers(original), "te.pth", "Wan original")


def test_t5_with_a_single_position_table_is_refused_on_load():
    """T5-XXL (Flux/SD3) files use the same names but keep the relative-position table in block 0 only."""
    file = convert_umt5_transformers_to_comfyui(tiny_encoder().state_dict())
    del file["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"block\.1\.layer\.0\.SelfAttention\.relative_attention_bias"):
        checkpoint_io.load_into_meta_model(UMT5EncoderModel(UMT5Config(**TINY)),
                                           convert_umt5_comfyui_to_transformers(file), "t5xxl.safetensors", "ComfyUI")


# ------------------------------------------------------------------ tokenizers

def test_tiny_spiece_model_is_deterministic_and_umt5_shaped():
    data = tiny_spiece_model_bytes(256)
    assert data == tiny_spiece_model_bytes.__wrapped__(256)  # retrained from scratch: same bytes
    processor = sentencepiece.SentencePieceProcessor(model_proto=data)
    assert 100 < processor.get_piece_size() <= 256
    assert (processor.pad_id(), processor.eos_id(), processor.unk_id(), processor.bos_id()) == (0, 1, 2, -1)
    assert len(spiece_normalizer_spec(data)["precompiled_charsmap"]) > 1000  # NFKC normalisation table


def test_tokenizer_from_spiece_bytes_matches_sentencepiece():
    data = tiny_spiece_model_bytes(256)
    processor = sentencepiece.SentencePieceProcessor(model_proto=data)
    tokenizer = tokenizer_from_spiece_bytes(data)
    for prompt in PROMPTS:
        assert tokenizer(prompt).input_ids == processor.encode(prompt) + [1], prompt
    # the normaliser is in effect (fullwidth letters fold to ASCII), not just matching by luck
    assert tokenizer("ＡＢＣ").input_ids == tokenizer("ABC").input_ids
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)


def test_tokenizer_from_a_comfyui_file_tensor():
    file = convert_umt5_transformers_to_comfyui(tiny_encoder().state_dict(), spiece_model=tiny_spiece_model_bytes(256))
    tokenizer = tokenizer_from_spiece_bytes(bytes(file["spiece_model"].numpy().tobytes()))
    ids = tokenizer(PROMPTS, padding="max_length", max_length=64, return_tensors="pt")
    assert ids.input_ids.max() < TINY["vocab_size"] and ids.input_ids.shape == (len(PROMPTS), 64)


def _train(vocab_size: int = 300, **options) -> bytes:
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(PROMPTS * 20), model_writer=model, vocab_size=vocab_size, hard_vocab_limit=False,
        model_type="unigram", num_threads=1, minloglevel=2, **options)
    return model.getvalue()


def test_byte_fallback_models_spell_unknown_characters_in_bytes():
    data = _train(vocab_size=400, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, byte_fallback=True,
                  character_coverage=0.98)
    processor = sentencepiece.SentencePieceProcessor(model_proto=data)
    tokenizer = tokenizer_from_spiece_bytes(data)
    prompt = "an emoji 🙂 and 猫"
    expected = processor.encode(prompt)
    assert any(processor.is_byte(i) for i in expected)
    assert tokenizer(prompt).input_ids == expected + [1]


def test_invalid_or_non_umt5_spiece_models_are_refused():
    with pytest.raises(ModelFilesError, match="not a valid sentencepiece"):
        tokenizer_from_spiece_bytes(b"\x00not a model")
    with pytest.raises(ModelFilesError, match="pad/eos/unk ids"):
        tokenizer_from_spiece_bytes(_train())  # sentencepiece's defaults: unk=0, bos=1, eos=2


def test_normalizer_spec_reader_agrees_with_protobuf():
    model_pb2 = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    data = _train(pad_id=0, eos_id=1, unk_id=2, bos_id=-1, add_dummy_prefix=False)
    proto = model_pb2.ModelProto()
    proto.ParseFromString(data)
    spec = spiece_normalizer_spec(data)
    assert spec["precompiled_charsmap"] == proto.normalizer_spec.precompiled_charsmap
    assert spec["add_dummy_prefix"] is False and spec["remove_extra_whitespaces"] is True


@pytest.mark.parametrize("vocab_size", [16, 256])
def test_build_tiny_umt5_tokenizer(vocab_size, tmp_path):
    tokenizer = build_tiny_umt5_tokenizer(vocab_size)
    assert len(tokenizer) == vocab_size
    ids = tokenizer("A cat walks in the city at night, 4K!  Zürich 猫").input_ids
    assert max(ids) < vocab_size and ids[-1] == 1
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    tokenizer.save_pretrained(str(tmp_path))  # how demo folders ship it; loaded back offline
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert reloaded("A cat walks in the city at night").input_ids == tokenizer("A cat walks in the city at night").input_ids
    with pytest.raises(ValueError, match="at least 4"):
        build_tiny_umt5_tokenizer(3)
