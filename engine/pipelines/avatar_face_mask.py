"""The face mask of HunyuanVideo-Avatar: where the audio may move the picture, over the latent grid.

Facts (vendor `hymm_sp/data_kits/audio_preprocessor.py` `get_facemask`, called with `area=3.0` from
`hymm_sp/sample_inference_audio.py`; read for facts only):
- The detector runs on the reference image at its generation size; its box (x, y, w, h) is enlarged 3x about
  its centre: w', h' = 3w, 3h; centre = (floor((x1 + x2) / 2), floor((y1 + y2) / 2)); x1' = max(cx - floor(w'/2), 0),
  x2' = min(cx + floor(w'/2), W) (y likewise), and pixels [int(y1'):int(y2'), int(x1'):int(x2')] are 1, the rest 0.
- That pixel mask is resized to the latent grid (H / 8, W / 8) with bilinear interpolation (align_corners
  False, no antialiasing): cells on the box edge get fractional values. Shape [B, 1, 1, H/8, W/8].
- The sampler multiplies it by 0.6 during the text-guided steps (see avatar_schedule).
- With no face found the vendor falls back to the whole image.

Ours: several faces may be used (`faces="all"`: the union of their enlarged boxes; `"largest"`, the vendor's
choice, is the default); a user MASK (ComfyUI MASK, drawn on the input image) replaces the detector; with no
face and no MASK the run stops with an error that points at the MASK input, rather than silently animating
the whole frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError
from ..models.avatar_face_detector import FaceBox, FaceDetector
from .avatar_image import AvatarReference, fit_mask_to_reference

FACE_BOX_SCALE = 3.0
LATENT_SPATIAL_COMPRESSION = 8
FACE_CHOICES = ("largest", "all")


@dataclass
class AvatarFaceMask:
    latent: torch.Tensor      # [1, 1, 1, H/8, W/8] float32 0..1, the transformer's face_mask
    pixels: torch.Tensor      # [H, W] float32 0..1 on the reference image (for a preview)
    faces: list[FaceBox]      # the faces used (empty when a MASK was given)
    source: str               # "detector" or "mask"


def enlarged_face_region(face: FaceBox, width: int, height: int,
                         scale: float = FACE_BOX_SCALE) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) pixel slice bounds of a face box enlarged `scale` times about its centre, clipped."""
    x1, y1 = face.x, face.y
    x2, y2 = x1 + face.width, y1 + face.height
    grown_w, grown_h = face.width * scale, face.height * scale
    centre_x, centre_y = math.floor((x1 + x2) / 2), math.floor((y1 + y2) / 2)
    left = max(centre_x - math.floor(grown_w / 2), 0)
    top = max(centre_y - math.floor(grown_h / 2), 0)
    right = min(centre_x + math.floor(grown_w / 2), width)
    bottom = min(centre_y + math.floor(grown_h / 2), height)
    return int(left), int(top), int(right), int(bottom)


def face_pixel_mask(faces: list[FaceBox], width: int, height: int, scale: float = FACE_BOX_SCALE) -> torch.Tensor:
    """[height, width] float32: 1 inside any enlarged face box, 0 elsewhere."""
    mask = torch.zeros(height, width)
    for face in faces:
        left, top, right, bottom = enlarged_face_region(face, width, height, scale)
        mask[top:bottom, left:right] = 1.0
    return mask


def latent_face_mask(pixel_mask: torch.Tensor) -> torch.Tensor:
    """[H, W] pixel mask -> [1, 1, 1, H/8, W/8] over the latent grid (bilinear, as the vendor resizes it)."""
    height, width = pixel_mask.shape
    size = (height // LATENT_SPATIAL_COMPRESSION, width // LATENT_SPATIAL_COMPRESSION)
    latent = F.interpolate(pixel_mask.float()[None, None], size=size, mode="bilinear", align_corners=False)
    return latent.unsqueeze(2)


def choose_faces(faces: list[FaceBox], faces_mode: str) -> list[FaceBox]:
    if faces_mode not in FACE_CHOICES:
        raise InvalidInputError(f"faces must be one of {', '.join(FACE_CHOICES)} (got {faces_mode!r}).")
    if faces_mode == "all" or len(faces) <= 1:
        return list(faces)
    return [max(faces, key=lambda face: face.area)]


def avatar_face_mask(reference: AvatarReference, detector: FaceDetector | None = None, user_mask=None,
                     faces: str = "largest") -> AvatarFaceMask:
    """The face mask for a reference image: from a user MASK when one is given, else from the detector."""
    if user_mask is not None:
        pixels = fit_mask_to_reference(user_mask, reference)
        if float(pixels.max()) <= 0.0:
            raise InvalidInputError("The face MASK is empty (all zero over the reference image): paint the face "
                                    "region (the part the audio should move) white, or disconnect the MASK to use "
                                    "the face detector.")
        return AvatarFaceMask(latent=latent_face_mask(pixels), pixels=pixels, faces=[], source="mask")
    if detector is None:
        raise InvalidInputError("No face detector and no face MASK: load the HunyuanVideo-Avatar detector "
                                "(ckpts/det_align/detface.pt) or connect a MASK over the face.")
    found = choose_faces(detector.detect(reference.pixels), faces)
    if not found:
        raise InvalidInputError(
            "No face found in the reference image. HunyuanVideo-Avatar drives the lips and face from the audio only "
            "inside a face region: use a picture with a clearly visible face, or connect a face MASK (paint the "
            "face region white in the mask editor) to the node's mask input.")
    pixels = face_pixel_mask(found, reference.width, reference.height)
    return AvatarFaceMask(latent=latent_face_mask(pixels), pixels=pixels, faces=found, source="detector")
