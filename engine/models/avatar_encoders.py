"""HunyuanVideo-Avatar's encoders: LLaVA-Llama-3-8B (prompt + reference image), CLIP-L (pooled prompt) and
whisper-tiny (audio), loaded from the vendor's folder layout.

Folder layout (`hf download tencent/HunyuanVideo-Avatar`; vendor `hymm_sp/constants.py`, `weights/README.md`,
the Hugging Face file listing): under `ckpts/`
- `llava_llama_image/`: LlavaForConditionalGeneration (Llama-3-8B + CLIP ViT-L/14-336), config.json, sharded
  `model-0000k-of-00004.safetensors` + `model.safetensors.index.json`, tokenizer.json (LlamaTokenizerFast).
- `text_encoder_2/`: the whole openai/clip-vit-large-patch14 (CLIPModel: config.json, model.safetensors,
  pytorch_model.bin, vocab.json, merges.txt, tokenizer.json); the vendor loads `CLIPTextModel` from it.
- `whisper-tiny/`: openai/whisper-tiny (config.json, model.safetensors, preprocessor_config.json, ...).
- `det_align/detface.pt`: the face detector (avatar_face_detector.py).

Text encoding (vendor `hymm_sp/text_encoder/__init__.py` as shipped compiled in the repo and as published
in its forks, `hymm_sp/constants.py`, `hymm_sp/config.py`, `hymm_sp/data_kits/audio_dataset.py`,
`hymm_sp/sample_inference_audio.py`, `pipeline_hunyuan_video_audio.py`; transformers 4.45.1 per its
requirements.txt):
- The prompt gets the prefix "Authentic, Realistic, Natural, High-quality, Lens-Fixed, " (PROMPT_PREFIX); the
  negative prompt is fixed (NEGATIVE_PROMPT) and has no prefix. Both go through both encoders.
- LLaVA: text = template.format(prompt) + "\nThe person looks like<image>" with the video template
  (LLAVA_TEMPLATE, crop_start 95 = the template's tokens before the prompt, BOS included; ComfyUI's
  `comfy/text_encoders/hunyuan_video.py` notes the same "95 tokens"). Tokenized right-padded and truncated to
  256 + 95 = 351 tokens. The image (the reference at generation size, resized to 336 x 336 bilinear, CLIP mean/std
  normalised) replaces the `<image>` token by its 576 patch features (LLaVA's default strategy drops CLS).
  The negative branch uses the same image. Hidden state: `hidden_states[-3]` (hidden_state_skip_layer 2), no
  final norm. The first 95 positions are dropped: states [1, 351 + 575 - 95 = 831, 4096].
- The mask the vendor returns with them is NOT aligned with the states: it is the 351-token text mask with 575
  ones appended (for the expanded image), then cropped by 95. Its sum is the number of real tokens (text +
  576 image positions, which lead the sequence), which is how the transformer's attention uses it (valid
  length); its element-wise layout is what the transformer's token refiner saw in training. `encode_llava`
  returns exactly that mask, and the transformer uses it as the vendor's does (hunyuan_avatar_transformer).
- Inside the model (transformers 4.45's "legacy" LLaVA merge) the sequence is [text before <image>, 576 image
  features, text after], attention over real tokens only, position ids cumsum(mask) - 1 with padding at 1.
  Transformers 5 needs the <image> token expanded in input_ids instead; the same sequence, mask and position
  ids are passed explicitly here.
- CLIP-L: the (prefixed) prompt tokenized to 77 tokens, padded, with attention mask; `pooler_output` [1, 768].
- Whisper: `WhisperModel.from_pretrained(ckpts/whisper-tiny)` in float32 and
  `AutoFeatureExtractor.from_pretrained(ckpts/whisper-tiny)` (sample_batch.py).
"""

from __future__ import annotations

import contextlib
import pathlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import InvalidInputError, ModelFilesError
from .checkpoint_io import folder_has_weights, missing_shards

VENDOR_REPO = "tencent/HunyuanVideo-Avatar"
LLAVA_DIR = "llava_llama_image"
CLIP_DIR = "text_encoder_2"
WHISPER_DIR = "whisper-tiny"
DETECTOR_FILE = "det_align/detface.pt"

PROMPT_PREFIX = "Authentic, Realistic, Natural, High-quality, Lens-Fixed, "
NEGATIVE_PROMPT = ("Aerial view, aerial view, overexposed, low quality, deformation, a poor composition, bad hands, "
                   "bad teeth, bad eyes, bad limbs, distortion, blurring, Lens changes")
LLAVA_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)
IMAGE_SUFFIX = "\nThe {} looks like<image>"
IMAGE_SUBJECT = "person"
TEXT_TOKENS = 256                 # prompt tokens after the template (vendor --text-len)
HIDDEN_STATE_SKIP_LAYER = 2       # hidden_states[-(2 + 1)]
CLIP_MAX_TOKENS = 77
CLIP_MEAN = (0.48145466, 0.4578275, 0.4082107)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


# ---------------------------------------------------------------- folder layout

@dataclass
class AvatarEncoderFiles:
    root: pathlib.Path      # the folder that holds ckpts/ (what `hf download --local-dir` was given)
    llava: pathlib.Path
    clip: pathlib.Path
    whisper: pathlib.Path
    detector: pathlib.Path


def avatar_encoder_files(folder) -> AvatarEncoderFiles:
    """Paths of the encoders under a vendor download: `folder` may be the download root or its `ckpts/`."""
    folder = pathlib.Path(folder)
    ckpts = folder / "ckpts" if (folder / "ckpts").is_dir() or folder.name != "ckpts" else folder
    return AvatarEncoderFiles(root=ckpts.parent, llava=ckpts / LLAVA_DIR, clip=ckpts / CLIP_DIR,
                              whisper=ckpts / WHISPER_DIR, detector=ckpts / DETECTOR_FILE)


def download_command(files: AvatarEncoderFiles, component: str) -> str:
    return f"hf download {VENDOR_REPO} --include 'ckpts/{component}/*' --local-dir {files.root}"


def _missing_model_files(folder: pathlib.Path, needs_tokenizer: bool) -> list[str]:
    missing = []
    if not (folder / "config.json").is_file():
        missing.append(f"{folder}/config.json")
    if not folder_has_weights(folder):
        missing.append(f"{folder}/ (weights: *.safetensors)")
    else:
        missing += missing_shards(folder)
    if needs_tokenizer and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"{folder}/ (tokenizer: tokenizer.json, or vocab.json + merges.txt)")
    return missing


def missing_encoder_files(files: AvatarEncoderFiles) -> list[tuple[str, list[str]]]:
    """(component folder under ckpts/, what is missing in it) for each encoder that is not complete."""
    found = []
    for folder, component, tokenizer in ((files.llava, LLAVA_DIR, True), (files.clip, CLIP_DIR, True),
                                         (files.whisper, WHISPER_DIR, False)):
        missing = _missing_model_files(folder, tokenizer)
        if missing:
            found.append((component, missing))
    return found


def check_avatar_encoder_files(files: AvatarEncoderFiles, detector: bool = True) -> None:
    """Raise one error naming every missing file, each part with the command that downloads it."""
    problems = ["\n    ".join(missing) + f"\n    -> {download_command(files, component)}"
                for component, missing in missing_encoder_files(files)]
    if detector and not files.detector.is_file():
        problems.append(f"{files.detector}\n    -> hf download {VENDOR_REPO} --include 'ckpts/{DETECTOR_FILE}' "
                        f"--local-dir {files.root}  (or connect a face MASK instead)")
    if problems:
        raise ModelFilesError(
            f"HunyuanVideo-Avatar encoder files are missing under {files.root} (assumed layout: the vendor's "
            f"{VENDOR_REPO} download, ckpts/{LLAVA_DIR}, ckpts/{CLIP_DIR}, ckpts/{WHISPER_DIR}, "
            f"ckpts/{DETECTOR_FILE}). Missing:\n  - " + "\n  - ".join(problems))


@contextlib.contextmanager
def _quiet_transformers():
    """transformers prints a load report (e.g. CLIP-L's unused vision weights); strictness is checked instead."""
    from transformers.utils import logging as hf_logging
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def _from_pretrained(model_class, folder: pathlib.Path, dtype: torch.dtype, what: str):
    try:
        with _quiet_transformers():
            model, info = model_class.from_pretrained(str(folder), dtype=dtype, local_files_only=True,
                                                      output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise ModelFilesError(f"{folder}: cannot load the {what} ({error}). The download is incomplete or corrupt: "
                              "download it again.") from error
    if info.get("missing_keys"):
        keys = ", ".join(sorted(info["missing_keys"])[:5])
        raise ModelFilesError(f"{folder}: the {what} checkpoint lacks weights ({len(info['missing_keys'])} missing, "
                              f"e.g. {keys}); assumed layout: the vendor's ckpts/{folder.name}. Download it again.")
    return model.eval().requires_grad_(False)


def _tokenizer(folder: pathlib.Path, what: str):
    from transformers import AutoTokenizer
    try:
        with _quiet_transformers():
            return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ModelFilesError(f"{folder}: cannot load the {what} tokenizer ({error}).") from error


# ---------------------------------------------------------------- loading

@dataclass
class LlavaTextEncoder:
    model: object       # LlavaForConditionalGeneration
    tokenizer: object


@dataclass
class ClipTextEncoder:
    model: object       # CLIPTextModel
    tokenizer: object


@dataclass
class WhisperAudioEncoder:
    encoder: object            # WhisperEncoder
    feature_extractor: object  # WhisperFeatureExtractor


def load_llava_text_encoder(folder, dtype: torch.dtype = torch.float16, device="cpu") -> LlavaTextEncoder:
    from transformers import LlavaForConditionalGeneration
    folder = pathlib.Path(folder)
    model = _from_pretrained(LlavaForConditionalGeneration, folder, dtype, "LLaVA-Llama-3 text encoder")
    return LlavaTextEncoder(model=model.to(device), tokenizer=_tokenizer(folder, "LLaVA-Llama-3"))


def load_clip_text_encoder(folder, dtype: torch.dtype = torch.float16, device="cpu") -> ClipTextEncoder:
    from transformers import CLIPTextModel
    folder = pathlib.Path(folder)
    model = _from_pretrained(CLIPTextModel, folder, dtype, "CLIP-L text encoder")
    return ClipTextEncoder(model=model.to(device), tokenizer=_tokenizer(folder, "CLIP-L"))


def load_whisper_encoder(folder, dtype: torch.dtype = torch.float32, device="cpu") -> WhisperAudioEncoder:
    from transformers import WhisperFeatureExtractor, WhisperModel
    folder = pathlib.Path(folder)
    model = _from_pretrained(WhisperModel, folder, dtype, "whisper-tiny audio encoder")
    if (folder / "preprocessor_config.json").is_file():
        extractor = WhisperFeatureExtractor.from_pretrained(str(folder), local_files_only=True)
    else:  # whisper-tiny's preprocessor is the stock one; only the mel bin count comes from the model
        extractor = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
    return WhisperAudioEncoder(encoder=model.encoder.to(device), feature_extractor=extractor)


# ---------------------------------------------------------------- encoding

@dataclass
class AvatarTextEmbedding:
    states: torch.Tensor   # [1, L, 4096] LLaVA hidden states (template cropped)
    mask: torch.Tensor     # [1, L] the vendor's mask (see module docstring): sum = valid leading tokens


def llava_pixel_values(pixels: np.ndarray, size: int = 336) -> torch.Tensor:
    """[H, W, 3] uint8 reference -> [1, 3, size, size] LLaVA input (bilinear resize, CLIP normalisation)."""
    picture = Image.fromarray(np.ascontiguousarray(pixels)).convert("RGB")
    picture = picture.resize((size, size), Image.Resampling.BILINEAR)
    tensor = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    return ((tensor - mean) / std).unsqueeze(0)


def template_token_count(tokenizer, template: str = LLAVA_TEMPLATE) -> int:
    """Tokens of the template before the prompt, BOS included (95 for Llama-3's tokenizer: the vendor's crop_start)."""
    return len(tokenizer(template.split("{}")[0])["input_ids"])


def image_feature_count(model) -> int:
    """Positions one image takes in LLaVA's sequence: (image_size / patch_size)^2, plus CLS for the "full" strategy."""
    vision = model.config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    return patches + (1 if model.config.vision_feature_select_strategy == "full" else 0)


@torch.no_grad()
def encode_llava(encoder: LlavaTextEncoder, prompt: str, pixel_values: torch.Tensor,
                 text_tokens: int = TEXT_TOKENS, subject: str = IMAGE_SUBJECT) -> AvatarTextEmbedding:
    """LLaVA hidden states of template(prompt) + image, as the vendor computes them (see module docstring)."""
    model, tokenizer = encoder.model, encoder.tokenizer
    config = model.config
    image_token = config.image_token_id if hasattr(config, "image_token_id") else config.image_token_index
    crop_start = template_token_count(tokenizer)
    if tokenizer.pad_token_id is None:  # the vendor's tokenizer has one; stay usable with one that does not
        tokenizer.pad_token = tokenizer.eos_token
    text = LLAVA_TEMPLATE.format(prompt) + IMAGE_SUFFIX.format(subject)
    tokens = tokenizer(text, max_length=text_tokens + crop_start, padding="max_length", truncation=True,
                       return_tensors="pt")
    ids, text_mask = tokens["input_ids"][0], tokens["attention_mask"][0]
    where = (ids == image_token).nonzero().flatten()
    if where.numel() != 1:
        raise InvalidInputError(f"The prompt is too long for HunyuanVideo-Avatar's text encoder: it takes "
                                f"{text_tokens} tokens of prompt (about 180 words); shorten it.")
    at, features = int(where[0]), image_feature_count(model)
    expanded_ids = torch.cat([ids[:at], ids.new_full((features,), image_token), ids[at + 1:]])
    expanded_mask = torch.cat([text_mask[:at], text_mask.new_ones(features), text_mask[at + 1:]])
    position_ids = (expanded_mask.cumsum(0) - 1).masked_fill(expanded_mask == 0, 1)
    device = next(model.parameters()).device
    outputs = model(input_ids=expanded_ids[None].to(device), attention_mask=expanded_mask[None].to(device),
                    position_ids=position_ids[None].to(device),
                    pixel_values=pixel_values.to(device, next(model.parameters()).dtype), output_hidden_states=True)
    states = outputs.hidden_states[-(HIDDEN_STATE_SKIP_LAYER + 1)]
    vendor_mask = torch.cat([text_mask, text_mask.new_ones(features - 1)])  # the 575 ones go at the end
    return AvatarTextEmbedding(states=states[:, crop_start:].float().cpu(), mask=vendor_mask[None, crop_start:].cpu())


@torch.no_grad()
def encode_clip_pooled(encoder: ClipTextEncoder, prompt: str) -> torch.Tensor:
    """[1, 768] CLIP-L pooled output of the prompt (77 tokens, padded, with attention mask)."""
    tokens = encoder.tokenizer(prompt, max_length=CLIP_MAX_TOKENS, padding="max_length", truncation=True,
                               return_tensors="pt")
    device = next(encoder.model.parameters()).device
    output = encoder.model(input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device))
    return output.pooler_output.float().cpu()


@dataclass
class AvatarTextConditioning:
    text: AvatarTextEmbedding           # prompt + image
    negative_text: AvatarTextEmbedding  # negative prompt + the same image
    pooled: torch.Tensor                # [1, 768]
    negative_pooled: torch.Tensor       # [1, 768]


def encode_avatar_text(llava: LlavaTextEncoder, clip: ClipTextEncoder, prompt: str, reference_pixels: np.ndarray,
                       negative_prompt: str = NEGATIVE_PROMPT) -> AvatarTextConditioning:
    """Both branches of the vendor's text conditioning for a prompt and the reference image."""
    image_size = llava.model.config.vision_config.image_size
    pixel_values = llava_pixel_values(reference_pixels, image_size)
    prompt = PROMPT_PREFIX + prompt
    return AvatarTextConditioning(
        text=encode_llava(llava, prompt, pixel_values),
        negative_text=encode_llava(llava, negative_prompt, pixel_values),
        pooled=encode_clip_pooled(clip, prompt),
        negative_pooled=encode_clip_pooled(clip, negative_prompt),
    )
