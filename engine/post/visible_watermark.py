"""Visible watermark: a logo (RGBA) or a line of text composited over every frame of a clip.

The mark is rasterised once, moved to the frames' device and alpha-blended over the whole batch in one
tensor operation. ComfyUI-free: frames are IMAGE tensors [B,H,W,C] float 0..1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from ..errors import InvalidInputError

POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "centre", "xy")


@dataclass(frozen=True)
class Placement:
    position: str = "bottom-right"
    x: int = 0            # top-left corner of the mark when position is "xy"
    y: int = 0
    margin: int = 16      # distance from the frame edges, in frame pixels (corner positions)
    opacity: float = 1.0  # 0 = invisible, 1 = the mark's own alpha


def mark_from_image(image: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """A ComfyUI IMAGE [B,H,W,C] (first image used) plus optional MASK → RGBA mark [h,w,4] on the CPU.

    ComfyUI's LoadImage returns MASK = 1 - alpha (1 where the picture is transparent), so the mark's alpha
    is `1 - mask`. Without a mask the image's own 4th channel is used if present, else it is opaque.
    """
    if image is None:
        raise InvalidInputError("The watermark is set to 'image' but no mark image is connected: connect a LoadImage "
                                "IMAGE (and its MASK for transparency) to 'mark_image', or switch 'mark' to 'text'.")
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4 or image.shape[-1] not in (3, 4):
        raise InvalidInputError(f"The mark image must be an IMAGE [B,H,W,3|4], got shape {tuple(image.shape)}.")
    first = image[0].float().cpu()
    rgb = first[..., :3]
    if mask is not None:
        m = mask.float().cpu()
        m = m[0] if m.ndim == 3 else m
        if m.shape != rgb.shape[:2]:
            raise InvalidInputError(f"The mark's MASK is {tuple(m.shape)} but its IMAGE is {tuple(rgb.shape[:2])}: "
                                    "connect the MASK from the same LoadImage node as the image.")
        alpha = 1.0 - m
    elif first.shape[-1] == 4:
        alpha = first[..., 3]
    else:
        alpha = torch.ones(rgb.shape[:2])
    return torch.cat([rgb, alpha.unsqueeze(-1)], dim=-1).clamp(0, 1)


def mark_from_text(text: str, font_size: int, color: tuple[int, int, int] = (255, 255, 255),
                   outline: bool = True) -> torch.Tensor:
    """Rasterise one line of text with PIL's default font at `font_size` pixels → RGBA mark [h,w,4]."""
    if not text.strip():
        raise InvalidInputError("The watermark is set to 'text' but the text is empty: type the text, or switch "
                                "'mark' to 'image'.")
    if font_size < 4:
        raise InvalidInputError(f"Watermark font size {font_size} is too small; use 4 pixels or more.")
    font = ImageFont.load_default(size=font_size)
    stroke = max(1, font_size // 12) if outline else 0
    left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
    canvas = Image.new("RGBA", (right - left + 2, bottom - top + 2), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((1 - left, 1 - top), text, font=font, fill=color + (255,),
                                stroke_width=stroke, stroke_fill=(0, 0, 0, 255))
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)


def resize_mark(mark: torch.Tensor, width: float) -> torch.Tensor:
    """Scale an RGBA mark to `width` pixels wide, keeping its aspect ratio (premultiplied, antialiased)."""
    h, w = mark.shape[:2]
    width = max(1, round(width))
    height = max(1, round(h * width / w))
    if (height, width) == (h, w):
        return mark
    rgb, alpha = mark[..., :3], mark[..., 3:]
    premultiplied = torch.cat([rgb * alpha, alpha], dim=-1).permute(2, 0, 1).unsqueeze(0)
    scaled = F.interpolate(premultiplied, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    scaled = scaled[0].permute(1, 2, 0).clamp(0, 1)
    a = scaled[..., 3:]
    rgb = torch.where(a > 1e-6, scaled[..., :3] / a.clamp_min(1e-6), torch.zeros_like(scaled[..., :3]))
    return torch.cat([rgb.clamp(0, 1), a], dim=-1)


def mark_origin(frame_hw: tuple[int, int], mark_hw: tuple[int, int], placement: Placement) -> tuple[int, int]:
    """Top-left corner (x, y) of the mark in frame pixels; may lie partly outside the frame."""
    fh, fw = frame_hw
    mh, mw = mark_hw
    m = placement.margin
    if placement.position not in POSITIONS:
        raise InvalidInputError(f"Unknown watermark position {placement.position!r}; use one of {', '.join(POSITIONS)}.")
    return {
        "top-left": (m, m),
        "top-right": (fw - mw - m, m),
        "bottom-left": (m, fh - mh - m),
        "bottom-right": (fw - mw - m, fh - mh - m),
        "centre": ((fw - mw) // 2, (fh - mh) // 2),
        "xy": (placement.x, placement.y),
    }[placement.position]


def apply_visible_watermark(frames: torch.Tensor, mark: torch.Tensor, placement: Placement) -> torch.Tensor:
    """Alpha-blend an RGBA `mark` (already at its final pixel size) over IMAGE frames [B,H,W,C] 0..1.

    One batched blend on the frames' device; returns a new tensor of the same shape and dtype.
    """
    if frames.ndim != 4 or frames.shape[-1] not in (3, 4):
        raise InvalidInputError(f"Expected IMAGE frames [B,H,W,3|4], got shape {tuple(frames.shape)}.")
    if not 0.0 <= placement.opacity <= 1.0:
        raise InvalidInputError(f"Watermark opacity {placement.opacity} must be between 0 and 1.")
    out = frames.clone()
    fh, fw = frames.shape[1:3]
    mh, mw = mark.shape[:2]
    x, y = mark_origin((fh, fw), (mh, mw), placement)
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + mw, fw), min(y + mh, fh)
    if x0 >= x1 or y0 >= y1 or placement.opacity == 0.0:
        return out  # entirely outside the frame, or invisible
    tile = mark[y0 - y:y1 - y, x0 - x:x1 - x].to(device=frames.device, dtype=frames.dtype)
    alpha = tile[..., 3:] * placement.opacity          # [h, w, 1], broadcast over the batch
    region = out[:, y0:y1, x0:x1, :3]
    out[:, y0:y1, x0:x1, :3] = region + (tile[..., :3] - region) * alpha
    return out
