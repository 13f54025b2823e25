"""Avatar encoders on tiny in-memory models and tokenizers: LLaVA states equal to transformers 4.45's merge of the
image into the prompt (restated by hand), the template crop, the vendor's mask layout, the prompt prefix and the
negative branch, CLIP-L pooled output, and loading from the vendor folder layout with missing files named
with their download command."""

import json

import numpy as np
import pytest
import torch
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors
from transformers import (CLIPConfig, CLIPModel, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                          PreTrainedTokenizerFast, WhisperConfig, WhisperFeatureExtractor, WhisperModel)

from reelsmith.engine.errors import InvalidInputError, ModelFilesError
from reelsmith.engine.models.avatar_encoders import (
    IMAGE_SUFFIX, LLAVA_TEMPLATE, NEGATIVE_PROMPT, PROMPT_PREFIX, ClipTextEncoder, LlavaTextEncoder,
    avatar_encoder_files, check_avatar_encoder_files, encode_avatar_text, encode_clip_pooled, encode_llava,
    llava_pixel_values, load_clip_text_encoder, load_llava_text_encoder, load_whisper_encoder,
    template_token_count)
from test_avatar_audio_features import TINY_WHISPER

PROMPT = "a person talking to the camera in a bright room"
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<pad>", "<image>",
                  "[UNK]"]
TEXT_TOKENS = 24   # prompt budget of the tiny encoder (the vendor's is 256)


def _words(*texts):
    words = []
    for text in texts:
        for special in LLAMA_SPECIALS:
            text = text.replace(special, " ")
        words += [w for w in text.split() if w not in words]
    return words


def _llama_tokenizer():
    words = _words(LLAVA_TEMPLATE.replace("{}", " "), PROMPT_PREFIX, PROMPT, NEGATIVE_PROMPT, IMAGE_SUFFIX)
    vocab = {token: index for index, token in enumerate(LLAMA_SPECIALS + sorted(set(words)))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in LLAMA_SPECIALS])
    tokenizer.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                             special_tokens=[("<|begin_of_text|>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<pad>", unk_token="[UNK]", additional_special_tokens=["<image>"],
                                   padding_side="right")


def _clip_tokenizer():
    specials = ["<|startoftext|>", "<|endoftext|>", "[UNK]"]
    words = _words(PROMPT_PREFIX, PROMPT, NEGATIVE_PROMPT)
    vocab = {token: index for index, token in enumerate(specials + sorted(set(words)))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="[UNK]")


def _randomise(model):
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def llava():
    torch.manual_seed(0)
    tokenizer = _llama_tokenizer()
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=4,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                       pad_token_id=tokenizer.pad_token_id)
    vision = dict(model_type="clip_vision_model", hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                  num_attention_heads=2, image_size=28, patch_size=14)
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    config = LlavaConfig(text_config=text, vision_config=vision, image_token_id=image_token, vision_feature_layer=-2,
                         vision_feature_select_strategy="default", projector_hidden_act="gelu")
    return LlavaTextEncoder(model=_randomise(LlavaForConditionalGeneration(config)), tokenizer=tokenizer)


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(1)
    tokenizer = _clip_tokenizer()
    config = CLIPConfig(text_config=dict(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16,
                                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
                        vision_config=dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=28, patch_size=14), projection_dim=8)
    return _randomise(CLIPModel(config)), tokenizer


def _legacy_merge_states(encoder, prompt, pixel_values, crop):
    """transformers 4.45's LLaVA path restated: embed the tokens, put the projected patch features (vision layer -2,
    CLS dropped) where <image> was, attend over real tokens, positions cumsum(mask) - 1 (padding at 1)."""
    model, tokenizer = encoder.model, encoder.tokenizer
    tokens = tokenizer(LLAVA_TEMPLATE.format(prompt) + IMAGE_SUFFIX.format("person"), max_length=TEXT_TOKENS + crop,
                       padding="max_length", truncation=True, return_tensors="pt")
    ids, mask = tokens["input_ids"][0], tokens["attention_mask"][0]
    at = int((ids == model.config.image_token_id).nonzero()[0])
    with torch.no_grad():
        vision = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
        image = model.model.multi_modal_projector(vision)[0]
        embeds = model.model.language_model.get_input_embeddings()(ids)
        merged = torch.cat([embeds[:at], image, embeds[at + 1:]])[None]
        merged_mask = torch.cat([mask[:at], torch.ones(image.shape[0], dtype=mask.dtype), mask[at + 1:]])[None]
        positions = (merged_mask.cumsum(-1) - 1).masked_fill(merged_mask == 0, 1)
        out = model.model.language_model(inputs_embeds=merged, attention_mask=merged_mask, position_ids=positions,
                                         output_hidden_states=True)
    return out.hidden_states[-3][:, crop:], mask, image.shape[0]


def _reference_pixels(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (64, 48, 3), dtype=np.uint8)


def test_template_crop_counts_the_tokens_before_the_prompt(llava):
    expected = 1 + len(LLAVA_TEMPLATE.split("{}")[0].replace("<|start_header_id|>", " x ")
                       .replace("<|end_header_id|>", " x ").replace("<|eot_id|>", " x ").split())
    assert template_token_count(llava.tokenizer) == expected


def test_llava_states_equal_the_legacy_merge_with_the_vendor_mask(llava):
    pixel_values = llava_pixel_values(_reference_pixels(), 28)
    crop = template_token_count(llava.tokenizer)
    out = encode_llava(llava, PROMPT, pixel_values, text_tokens=TEXT_TOKENS)
    expected, text_mask, features = _legacy_merge_states(llava, PROMPT, pixel_values, crop)
    assert features == 4                                            # (28 / 14)^2 patches, CLS dropped
    assert out.states.shape == (1, TEXT_TOKENS + features - 1, 16)  # 351 + 575 - 95 = 831 at full size
    torch.testing.assert_close(out.states, expected, rtol=1e-4, atol=1e-5)
    # the vendor's mask: the text mask with (features - 1) ones appended, cropped like the states
    vendor_mask = torch.cat([text_mask, torch.ones(features - 1, dtype=text_mask.dtype)])[crop:]
    assert out.mask.tolist() == [vendor_mask.tolist()]
    real = int(text_mask.sum()) - crop + features - 1                # prompt + suffix tokens and the image
    assert int(out.mask.sum()) == real and out.mask[0, -1] == 1 and out.mask[0, real] == 0


def test_the_image_reaches_the_states_after_its_position_only(llava):
    crop = template_token_count(llava.tokenizer)
    a = encode_llava(llava, PROMPT, llava_pixel_values(_reference_pixels(0), 28), text_tokens=TEXT_TOKENS)
    b = encode_llava(llava, PROMPT, llava_pixel_values(_reference_pixels(1), 28), text_tokens=TEXT_TOKENS)
    image_at = len(llava.tokenizer(LLAVA_TEMPLATE.format(PROMPT) + "\nThe person looks like")["input_ids"]) - crop
    torch.testing.assert_close(a.states[:, :image_at], b.states[:, :image_at])    # causal: text before the image
    assert (a.states[:, image_at:image_at + 4] - b.states[:, image_at:image_at + 4]).abs().max() > 1e-3


def test_too_long_prompt_is_refused(llava):
    with pytest.raises(InvalidInputError, match="prompt is too long"):
        encode_llava(llava, " ".join([PROMPT] * 5), llava_pixel_values(_reference_pixels(), 28),
                     text_tokens=TEXT_TOKENS)


def test_llava_pixel_values_resize_and_normalise():
    gray = np.full((100, 60, 3), 128, np.uint8)
    values = llava_pixel_values(gray)
    assert values.shape == (1, 3, 336, 336)
    expected = (128 / 255 - torch.tensor([0.48145466, 0.4578275, 0.4082107])) / torch.tensor(
        [0.26862954, 0.26130258, 0.27577711])
    torch.testing.assert_close(values[0, :, 100, 200], expected)


def test_clip_pooled_output(clip):
    model, tokenizer = clip
    encoder = ClipTextEncoder(model=model.text_model, tokenizer=tokenizer)
    pooled = encode_clip_pooled(encoder, PROMPT)
    assert pooled.shape == (1, 8)
    tokens = tokenizer(PROMPT, max_length=77, padding="max_length", truncation=True, return_tensors="pt")
    assert tokens["input_ids"].shape == (1, 77)
    with torch.no_grad():
        hidden = model.text_model(input_ids=tokens["input_ids"],
                                  attention_mask=tokens["attention_mask"]).last_hidden_state
    eos_at = int(tokens["attention_mask"].sum()) - 1                # pooled = the end-of-text token's state
    torch.testing.assert_close(pooled, hidden[:, eos_at])
    assert (encode_clip_pooled(encoder, NEGATIVE_PROMPT) - pooled).abs().max() > 1e-3


def test_text_conditioning_prefixes_the_prompt_and_encodes_the_negative_with_the_same_image(llava, clip):
    clip_encoder = ClipTextEncoder(model=clip[0].text_model, tokenizer=clip[1])
    pixels = _reference_pixels()
    out = encode_avatar_text(llava, clip_encoder, PROMPT, pixels)
    values = llava_pixel_values(pixels, 28)
    torch.testing.assert_close(out.text.states, encode_llava(llava, PROMPT_PREFIX + PROMPT, values).states)
    torch.testing.assert_close(out.negative_text.states, encode_llava(llava, NEGATIVE_PROMPT, values).states)
    torch.testing.assert_close(out.pooled, encode_clip_pooled(clip_encoder, PROMPT_PREFIX + PROMPT))
    torch.testing.assert_close(out.negative_pooled, encode_clip_pooled(clip_encoder, NEGATIVE_PROMPT))
    assert (out.text.states - out.negative_text.states).abs().max() > 1e-3


def _vendor_folder(tmp_path, llava, clip):
    ckpts = tmp_path / "HunyuanVideo-Avatar" / "ckpts"
    llava.model.save_pretrained(ckpts / "llava_llama_image", max_shard_size="20KB")   # sharded, with an index
    llava.tokenizer.save_pretrained(ckpts / "llava_llama_image")
    clip[0].save_pretrained(ckpts / "text_encoder_2")                                  # the whole CLIPModel
    clip[1].save_pretrained(ckpts / "text_encoder_2")
    torch.manual_seed(2)
    whisper = WhisperModel(WhisperConfig(**TINY_WHISPER)).eval()
    whisper.save_pretrained(ckpts / "whisper-tiny")
    WhisperFeatureExtractor().save_pretrained(ckpts / "whisper-tiny")
    (ckpts / "det_align").mkdir()
    (ckpts / "det_align" / "detface.pt").write_bytes(b"stand-in")
    return tmp_path / "HunyuanVideo-Avatar", whisper


def test_encoders_load_from_the_vendor_layout(tmp_path, llava, clip):
    root, whisper = _vendor_folder(tmp_path, llava, clip)
    assert len(list((root / "ckpts" / "llava_llama_image").glob("model-*.safetensors"))) > 1
    for given in (root, root / "ckpts"):
        files = avatar_encoder_files(given)
        assert files.llava == root / "ckpts" / "llava_llama_image" and files.root == root
    files = avatar_encoder_files(root)
    check_avatar_encoder_files(files)
    loaded_llava = load_llava_text_encoder(files.llava, dtype=torch.float32)
    values = llava_pixel_values(_reference_pixels(), 28)
    torch.testing.assert_close(encode_llava(loaded_llava, PROMPT, values, text_tokens=TEXT_TOKENS).states,
                               encode_llava(llava, PROMPT, values, text_tokens=TEXT_TOKENS).states)
    loaded_clip = load_clip_text_encoder(files.clip, dtype=torch.float32)
    in_memory = ClipTextEncoder(model=clip[0].text_model, tokenizer=clip[1])
    torch.testing.assert_close(encode_clip_pooled(loaded_clip, PROMPT), encode_clip_pooled(in_memory, PROMPT))
    audio = load_whisper_encoder(files.whisper)
    assert audio.feature_extractor.feature_size == 80 and audio.feature_extractor.n_samples == 480000
    mel = torch.randn(1, 80, 3000)
    with torch.no_grad():
        torch.testing.assert_close(audio.encoder(mel, output_hidden_states=True).hidden_states[4],
                                   whisper.encoder(mel, output_hidden_states=True).hidden_states[4])


def test_missing_files_are_named_with_their_download_command(tmp_path, llava, clip):
    root, _ = _vendor_folder(tmp_path, llava, clip)
    llava_dir = root / "ckpts" / "llava_llama_image"
    index = json.loads((llava_dir / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (llava_dir / shard).unlink()
    (root / "ckpts" / "text_encoder_2" / "tokenizer.json").unlink()
    (root / "ckpts" / "det_align" / "detface.pt").unlink()
    with pytest.raises(ModelFilesError) as caught:
        check_avatar_encoder_files(avatar_encoder_files(root))
    message = str(caught.value)
    assert f"{llava_dir / shard}" in message
    command = f"hf download tencent/HunyuanVideo-Avatar --include 'ckpts/llava_llama_image/*' --local-dir {root}"
    assert command in message
    assert "text_encoder_2/ (tokenizer" in message and "'ckpts/text_encoder_2/*'" in message
    assert "'ckpts/det_align/detface.pt'" in message and "face MASK" in message
    assert "whisper-tiny" not in message.split("Missing:")[1]
    with pytest.raises(ModelFilesError, match=r"whisper-tiny/config\.json"):
        check_avatar_encoder_files(avatar_encoder_files(tmp_path / "nowhere"), detector=False)


def test_a_checkpoint_without_weights_is_refused(tmp_path, clip):
    folder = tmp_path / "text_encoder_2"
    clip[0].save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] = 3                  # the file holds only 2 layers
    (folder / "config.json").write_text(json.dumps(config))
    clip[1].save_pretrained(folder)
    with pytest.raises(ModelFilesError, match="lacks weights"):
        load_clip_text_encoder(folder, dtype=torch.float32)
