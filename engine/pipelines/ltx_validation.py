"""Checks on LTX-Video sizes, frame counts and conditions, made before any GPU work, naming the nearest valid
values (the same style as wan_validation).

The LTX VAE compresses 32x32 pixels and 8 frames into one latent, the first frame on its own (causal), so
width and height are multiples of 32 and frame counts are 8k+1 (the vendor's and ComfyUI's
EmptyLTXVLatentVideo rule; diffusers' pipelines round silently).
"""

from __future__ import annotations

from ..errors import InvalidInputError
from .wan_validation import nearest_multiples

SIZE_MULTIPLE = 32
FRAME_STRIDE = 8


def nearest_ltx_frame_counts(frames: int) -> list[int]:
    below = max(1, (frames - 1) // FRAME_STRIDE * FRAME_STRIDE + 1)
    above = below + FRAME_STRIDE if below < frames else below
    return sorted({below, above})


def ltx_size_errors(width: int, height: int, frames: int) -> list[str]:
    problems = []
    for name, value in (("width", width), ("height", height)):
        if value < SIZE_MULTIPLE or value % SIZE_MULTIPLE:
            options = " or ".join(str(v) for v in nearest_multiples(value, SIZE_MULTIPLE))
            problems.append(f"{name} {value} is not a multiple of {SIZE_MULTIPLE}: use {options}")
    if frames < 1 or (frames - 1) % FRAME_STRIDE:
        options = " or ".join(str(v) for v in nearest_ltx_frame_counts(frames))
        problems.append(f"frames {frames} is not of the form {FRAME_STRIDE}k+1: use {options}")
    return problems


def check_ltx_size(width: int, height: int, frames: int, model_name: str = "LTX-Video") -> None:
    problems = ltx_size_errors(width, height, frames)
    if problems:
        raise InvalidInputError(f"{model_name}: " + "; ".join(problems) + ".")


def condition_latent_index(frame_index: int) -> int:
    """The latent frame a condition starting at video frame `frame_index` lands on. Latent frame 0 is video frame
    0; latent frame j >= 1 covers video frames 8j-7 .. 8j. A single image at frame f therefore pins latent
    ceil(f / 8) (frame 80 of an 81-frame clip -> the last latent frame); a clip at frame 8m (the vendor's rule)
    puts its own first (single-frame) latent on latent m and its later latents, which each cover 8 frames, on
    m+1, m+2, ... exactly where their frames fall in the video."""
    return -(-frame_index // FRAME_STRIDE)


def check_ltx_conditions(conditions, width: int, height: int, frames: int, in_place=lambda condition: True) -> None:
    """Each condition: pixels [F, H, W, 3] at the target size with F = 1 or 8k+1, strength in 0..1, frame_index
    inside the clip, a multi-frame clip starting at a multiple of 8 and fitting; no two conditions that replace
    latents in place (`in_place(condition)`) on one latent frame (appended guides have tokens of their own)."""
    problems = []
    used: dict[int, int] = {}
    latent_frames = (frames - 1) // FRAME_STRIDE + 1
    for number, condition in enumerate(conditions, start=1):
        name = f"condition {number}"
        pixels = condition.pixels
        if pixels.ndim != 4 or pixels.shape[-1] != 3:
            problems.append(f"{name}: pixels must be [frames, height, width, 3], got {list(pixels.shape)}")
            continue
        count, pixel_h, pixel_w = pixels.shape[:3]
        if (pixel_h, pixel_w) != (height, width):
            problems.append(f"{name}: its frames are {pixel_w}x{pixel_h}, resize them to the video size {width}x{height}")
        if (count - 1) % FRAME_STRIDE:
            options = " or ".join(str(v) for v in nearest_ltx_frame_counts(count))
            problems.append(f"{name}: a clip of {count} frames is not of the form {FRAME_STRIDE}k+1: use {options}")
        if not 0.0 <= condition.strength <= 1.0:
            problems.append(f"{name}: strength {condition.strength} is outside 0..1")
        index = condition.frame_index
        if not 0 <= index < frames:
            problems.append(f"{name}: frame_index {index} is outside the clip (0..{frames - 1})")
            continue
        if count > 1 and index % FRAME_STRIDE:
            below = index // FRAME_STRIDE * FRAME_STRIDE
            problems.append(f"{name}: a multi-frame clip must start at a multiple of {FRAME_STRIDE}: "
                            f"use frame_index {below} or {below + FRAME_STRIDE}")
            continue
        if index + count > frames:
            problems.append(f"{name}: {count} frames from frame {index} run past the last frame ({frames - 1})")
            continue
        if not in_place(condition):
            continue
        start = condition_latent_index(index)
        span = (count - 1) // FRAME_STRIDE + 1
        for latent in range(start, min(start + span, latent_frames)):
            if latent in used:
                problems.append(f"{name} and condition {used[latent]} both pin latent frame {latent} "
                                f"(video frames {max(0, 8 * latent - 7)}..{8 * latent}): move one")
                break
            used[latent] = number
    if problems:
        raise InvalidInputError("LTX-Video conditions: " + "; ".join(problems) + ".")
