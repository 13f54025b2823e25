"""Checks on Wan sizes and frame counts, made before any GPU work, naming the nearest valid values.

diffusers rounds bad values silently; a production tool says so instead.
"""

from __future__ import annotations

from ..errors import InvalidInputError

FRAME_STRIDE = 4  # the Wan VAE compresses time 4x: valid frame counts are 4k+1


def nearest_multiples(value: int, multiple: int) -> list[int]:
    below = max(multiple, value // multiple * multiple)
    above = below + multiple if below < value else below
    return sorted({below, above})


def nearest_frame_counts(frames: int) -> list[int]:
    below = max(1, (frames - 1) // FRAME_STRIDE * FRAME_STRIDE + 1)
    above = below + FRAME_STRIDE if below < frames else below
    return sorted({below, above})


def wan_size_errors(width: int, height: int, frames: int, size_multiple: int) -> list[str]:
    problems = []
    for name, value in (("width", width), ("height", height)):
        if value % size_multiple:
            options = " or ".join(str(v) for v in nearest_multiples(value, size_multiple))
            problems.append(f"{name} {value} is not a multiple of {size_multiple}: use {options}")
    if frames < 1 or (frames - 1) % FRAME_STRIDE:
        options = " or ".join(str(v) for v in nearest_frame_counts(frames))
        problems.append(f"frames {frames} is not of the form 4k+1: use {options}")
    return problems


def check_wan_size(width: int, height: int, frames: int, size_multiple: int, model_name: str = "Wan 2.2") -> None:
    problems = wan_size_errors(width, height, frames, size_multiple)
    if problems:
        raise InvalidInputError(f"{model_name}: " + "; ".join(problems) + ".")
