"""The reference image for HunyuanVideo-Avatar: its size, the resize, and the video the VAE encodes from it.

Facts (vendor `hymm_sp/data_kits/audio_dataset.py`, `VideoAudioTextLoaderVal.get_batch_data`, and
`hymm_sp/sample_inference_audio.py`; `--image-size 704` in the vendor's scripts):
- Size: scale = image_size / min(w, h); new_w = round(w * scale / 64) * 64, new_h likewise (Python round).
- Area cap: if new_w * new_h > image_size * long, with long = 1216 for 704, 768 for 512, 576 for 384, 384 for
  256 and 1.5 * image_size otherwise, the size is recomputed from scale = sqrt(image_size * long / (w * h)) with
  the same rounding to 64. At 704 the cap is 704 x 1216 = 856064 pixels, so a 9:16 portrait becomes 704 x 1216
  and a very tall one is shrunk until its area fits.
- The vendor resizes the whole image to (new_w, new_h) with PIL LANCZOS, which stretches it by up to half a
  64-pixel step per side. Ours keeps the aspect exactly: LANCZOS-resize to cover (new_w, new_h), then cut the
  few surplus pixels evenly from both sides (centre crop). A user MASK goes through the same resize and crop
  (`fit_mask_to_reference`) so it stays on the face.
- The VAE sees the reference as a 129-frame still video, pixel / 127.5 - 1 (`predict`: `pixel_value_ref.repeat
  (1, 129, 1, 1, 1)`), encoded to 33 latent frames (`reference_video`).

Ours: an input image under 256 pixels on its shorter side is refused (it would be upscaled 3x or more and the
face detector and LLaVA get little to work with); `image_size` must be a multiple of 64, at least 256.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import InvalidInputError

DEFAULT_IMAGE_SIZE = 704
MIN_INPUT_SIDE = 256
SIZE_STEP = 64
LONG_SIDE_CAP = {704: 1216, 512: 768, 384: 576, 256: 384}  # vendor: area cap = image_size * long side
REFERENCE_VIDEO_FRAMES = 129


@dataclass
class AvatarReference:
    pixels: np.ndarray             # [height, width, 3] uint8 RGB at the generation size
    source_size: tuple[int, int]   # (width, height) of the input image
    resized_size: tuple[int, int]  # (width, height) after the cover resize, before the crop
    crop: tuple[int, int]          # (left, top) of the crop in the resized image

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    def as_image(self) -> torch.Tensor:
        """[1, height, width, 3] float32 0..1, a ComfyUI IMAGE."""
        return torch.from_numpy(self.pixels).float().div(255.0).unsqueeze(0)


def check_image_size(image_size: int) -> None:
    if image_size < MIN_INPUT_SIDE or image_size % SIZE_STEP:
        raise InvalidInputError(f"image size must be a multiple of {SIZE_STEP} and at least {MIN_INPUT_SIDE} "
                                f"(got {image_size}); the model was trained at 704.")


def long_side_cap(image_size: int) -> float:
    return LONG_SIDE_CAP.get(image_size, image_size * 1.5)


def reference_size(width: int, height: int, image_size: int = DEFAULT_IMAGE_SIZE) -> tuple[int, int]:
    """(width, height) the vendor renders an input of (width, height) at: shorter side -> image_size, both
    sides rounded to 64, area capped at image_size * long_side_cap(image_size)."""
    check_image_size(image_size)
    scale = image_size / min(width, height)
    new_w, new_h = round(width * scale / SIZE_STEP) * SIZE_STEP, round(height * scale / SIZE_STEP) * SIZE_STEP
    if new_w * new_h > image_size * long_side_cap(image_size):
        scale = math.sqrt(image_size * long_side_cap(image_size) / width / height)
        new_w, new_h = round(width * scale / SIZE_STEP) * SIZE_STEP, round(height * scale / SIZE_STEP) * SIZE_STEP
    return max(new_w, SIZE_STEP), max(new_h, SIZE_STEP)


def _first_image(image) -> np.ndarray:
    """A ComfyUI IMAGE ([B, H, W, C] or [H, W, C], float 0..1) -> [H, W, 3] uint8 of its first image."""
    image = torch.as_tensor(image)
    if image.ndim == 4:
        if image.shape[0] == 0:
            raise InvalidInputError("The reference image batch is empty; connect an image.")
        image = image[0]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise InvalidInputError(f"The reference image must be a ComfyUI IMAGE [batch, height, width, 3]; "
                                f"got shape {tuple(image.shape)}.")
    image = image[..., :3] if image.shape[-1] >= 3 else image.repeat(1, 1, 3)
    return (image.float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()


def _cover_geometry(source: tuple[int, int], target: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Resize size that covers `target` keeping the aspect of `source`, and the centred crop's (left, top)."""
    (width, height), (target_w, target_h) = source, target
    scale = max(target_w / width, target_h / height)
    resized = (max(target_w, round(width * scale)), max(target_h, round(height * scale)))
    return resized, ((resized[0] - target_w) // 2, (resized[1] - target_h) // 2)


def prepare_reference_image(image, image_size: int = DEFAULT_IMAGE_SIZE) -> AvatarReference:
    """The first image of a ComfyUI IMAGE at the vendor's generation size, aspect kept (cover resize + crop)."""
    pixels = _first_image(image)
    height, width = pixels.shape[:2]
    if min(width, height) < MIN_INPUT_SIDE:
        raise InvalidInputError(
            f"The reference image is {width}x{height} px; HunyuanVideo-Avatar needs at least {MIN_INPUT_SIDE} px on "
            f"the shorter side (it renders at {image_size}). Use a larger image, or upscale this one first.")
    target = reference_size(width, height, image_size)
    resized, (left, top) = _cover_geometry((width, height), target)
    picture = Image.fromarray(pixels).resize(resized, Image.Resampling.LANCZOS)
    picture = picture.crop((left, top, left + target[0], top + target[1]))
    return AvatarReference(pixels=np.asarray(picture, dtype=np.uint8).copy(), source_size=(width, height),
                           resized_size=resized, crop=(left, top))


def fit_mask_to_reference(mask, reference: AvatarReference) -> torch.Tensor:
    """A ComfyUI MASK ([B, H, W] or [H, W], 0..1) drawn on the input image -> [height, width] float32 on the
    reference, through the same resize and crop (bilinear). Only the first mask of a batch is used."""
    mask = torch.as_tensor(mask).float()
    if mask.ndim == 3:
        if mask.shape[0] == 0:
            raise InvalidInputError("The face MASK batch is empty.")
        mask = mask[0]
    if mask.ndim != 2:
        raise InvalidInputError(f"The face MASK must be a ComfyUI MASK [batch, height, width]; got shape "
                                f"{tuple(mask.shape)}.")
    source = np.clip(mask.cpu().numpy(), 0.0, 1.0).astype(np.float32)
    if (source.shape[1], source.shape[0]) != reference.source_size:
        # a mask of another size is taken to span the whole input image
        source = np.asarray(Image.fromarray(source).resize(reference.source_size, Image.Resampling.BILINEAR))
    resized = Image.fromarray(source).resize(reference.resized_size, Image.Resampling.BILINEAR)
    left, top = reference.crop
    cropped = resized.crop((left, top, left + reference.width, top + reference.height))
    return torch.from_numpy(np.clip(np.asarray(cropped, dtype=np.float32), 0.0, 1.0).copy())


def reference_video(reference: AvatarReference, frames: int = REFERENCE_VIDEO_FRAMES) -> torch.Tensor:
    """[1, 3, frames, height, width] float32 in -1..1: the still reference as the video the VAE encodes."""
    picture = torch.from_numpy(reference.pixels).float().permute(2, 0, 1) / 127.5 - 1.0
    return picture[None, :, None].expand(1, 3, frames, reference.height, reference.width).contiguous()
