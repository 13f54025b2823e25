"""The face detector HunyuanVideo-Avatar ships: a TorchScript YOLOv5-face style model, `ckpts/det_align/detface.pt`.

Its input/output convention (vendor `hymm_sp/data_kits/face_align/detface.py` and `align.py`, read for facts only):
- Input: the image resized (cv2 INTER_LINEAR) so its shorter side is 416, each side then rounded up to a multiple
  of 32: h1 = int(h0 * r + 31) // 32 * 32 with r = 416 / min(h0, w0) (w1 likewise); RGB, float 0..1, [1, 3, h1, w1].
  Second argument: a list of three grids, one per stride 8, 16, 32: [1, 1, h1 / s, w1 / s, 2] float holding
  (x, y) cell indices (meshgrid of arange).
- Output: [1, N, 16] rows: box centre x, centre y, width, height (pixels of the resized input), objectness,
  five landmarks (x, y) x 5, one class score.
- Post-processing: keep rows with objectness > 0.5; score = objectness * class score, keep score > 0.5; boxes to
  corners; non-maximum suppression at IoU 0.45; boxes scaled back by w0 / w1, h0 / h1 and returned as
  (x, y, width, height) in input pixels. The vendor keeps one face (`maxface=True`): the box that the largest
  area rule picks (its loop compares every box with the first box's area, which for two faces is the larger).

Loading uses torch.jit.load (a TorchScript archive, not a pickle; the file holds the network's code and weights).
"""

from __future__ import annotations

import pathlib
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ModelFilesError

DETECTOR_SHORT_SIDE = 416
DETECTOR_STRIDES = (8, 16, 32)
CONFIDENCE_THRESHOLD = 0.5
IOU_THRESHOLD = 0.45
VENDOR_REPO = "tencent/HunyuanVideo-Avatar"
DETECTOR_RELATIVE_PATH = "ckpts/det_align/detface.pt"


@dataclass(frozen=True)
class FaceBox:
    x: float       # left, input-image pixels
    y: float       # top
    width: float
    height: float
    score: float

    @property
    def area(self) -> float:
        return self.width * self.height


def detector_input_size(width: int, height: int) -> tuple[int, int]:
    """(w1, h1) the detector sees an image of (width, height) at: shorter side 416, sides up to multiples of 32."""
    ratio = DETECTOR_SHORT_SIDE / min(width, height)
    return int(width * ratio + 31) // 32 * 32, int(height * ratio + 31) // 32 * 32


def detector_grids(width: int, height: int, device=None) -> list[torch.Tensor]:
    """The three (x, y) cell grids the detector takes beside its input, for strides 8, 16, 32."""
    grids = []
    for stride in DETECTOR_STRIDES:
        ys, xs = torch.meshgrid(torch.arange(height // stride), torch.arange(width // stride), indexing="ij")
        grids.append(torch.stack((xs, ys), dim=2).view(1, 1, height // stride, width // stride, 2).float().to(device))
    return grids


def _box_iou(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    top_left = torch.maximum(box[:2], boxes[:, :2])
    bottom_right = torch.minimum(box[2:], boxes[:, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    area = (box[2:] - box[:2]).prod()
    areas = (boxes[:, 2:] - boxes[:, :2]).prod(dim=1)
    return inter / (area + areas - inter)


def non_max_suppression(prediction: torch.Tensor, confidence: float = CONFIDENCE_THRESHOLD,
                        iou: float = IOU_THRESHOLD) -> torch.Tensor:
    """[N, 16] raw rows -> [M, 5] kept (x1, y1, x2, y2, score), highest score first."""
    rows = prediction[prediction[:, 4] > confidence].float()
    if rows.numel() == 0:
        return rows.new_zeros(0, 5)
    scores = (rows[:, 15:] * rows[:, 4:5]).max(dim=1).values
    centre, size = rows[:, :2], rows[:, 2:4]
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    keep = scores > confidence
    boxes, scores = boxes[keep], scores[keep]
    order = scores.argsort(descending=True)
    kept = []
    while order.numel():
        best = order[0]
        kept.append(best)
        rest = order[1:]
        order = rest[_box_iou(boxes[best], boxes[rest]) <= iou]
    kept = torch.stack(kept)
    return torch.cat([boxes[kept], scores[kept, None]], dim=1)


class FaceDetector:
    """The vendor's TorchScript detector with its pre- and post-processing."""

    def __init__(self, module, device: torch.device | str = "cpu"):
        self.module = module
        self.device = torch.device(device)

    @classmethod
    def load(cls, path, device: torch.device | str = "cpu") -> "FaceDetector":
        path = pathlib.Path(path)
        if not path.is_file():
            raise ModelFilesError(
                f"Face detector {path} is missing. Download it with:\n  hf download {VENDOR_REPO} --include "
                f"'{DETECTOR_RELATIVE_PATH}' --local-dir <folder that holds ckpts/>\n"
                "or connect a face MASK instead of using the detector.")
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format the vendor ships
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location=torch.device(device))
        except Exception as error:  # TorchScript raises RuntimeError / ValueError variants for a bad archive
            raise ModelFilesError(f"{path}: cannot load this TorchScript face detector ({error}). It is truncated or "
                                  "not the vendor's det_align/detface.pt: download it again.") from error
        return cls(module.eval(), device)

    @torch.no_grad()
    def detect(self, pixels: np.ndarray) -> list[FaceBox]:
        """Faces in an [H, W, 3] uint8 RGB image, highest score first, in that image's pixels."""
        height, width = pixels.shape[:2]
        in_w, in_h = detector_input_size(width, height)
        image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float()
        # cv2.resize INTER_LINEAR samples at half-pixel centres without antialiasing, then rounds to uint8
        image = F.interpolate(image, size=(in_h, in_w), mode="bilinear", align_corners=False).round().clamp(0, 255)
        prediction = self.module(image.div(255.0).to(self.device), detector_grids(in_w, in_h, self.device))
        kept = non_max_suppression(prediction[0].cpu())
        faces = []
        for x1, y1, x2, y2, score in kept.tolist():
            left, top = x1 * width / in_w, y1 * height / in_h
            faces.append(FaceBox(x=left, y=top, width=x2 * width / in_w - left, height=y2 * height / in_h - top,
                                 score=score))
        return faces
