"""Checks on Hunyuan Video Avatar's image size and frame rate, made before any GPU work, naming the nearest valid
values (the same style as wan_validation and ltx_validation).

The rule, in one place for the sampler node (VALIDATE_INPUTS and its run), the engine's generation entry point
(`generate_avatar_video`, so a script gets the same refusal) and the editor's snapping rules (nodes/routes.py):
- image_size, the video's shorter side: a multiple of 64 (the vendor rounds both sides to 64, avatar_image.py)
  from 256 (MIN_INPUT_SIDE) to 1280 (MAX_IMAGE_SIZE: the model was trained at 704, and one 129-frame window at
  1280 already holds about 3.3x the tokens of 704);
- fps: 25 or 12.5, the rates its fps embedding and whisper windowing were trained on (avatar_audio_features).
"""

from __future__ import annotations

from ..errors import InvalidInputError
from .avatar_audio_features import SUPPORTED_FPS
from .avatar_image import DEFAULT_IMAGE_SIZE, MIN_INPUT_SIDE, SIZE_STEP
from .wan_validation import nearest_multiples

MAX_IMAGE_SIZE = 1280
FPS_CHOICES = tuple(f"{fps:g}" for fps in SUPPORTED_FPS)  # ("25", "12.5"): the node's combo
MODEL_NAME = "Hunyuan Avatar"


def parse_fps(fps) -> float | None:
    """25 / 12.5 as a number or as the node's combo text ("25", "12.5"); None for anything else."""
    if isinstance(fps, bool):
        return None
    try:
        value = float(fps)
    except (TypeError, ValueError):
        return None
    return next((supported for supported in SUPPORTED_FPS if abs(value - supported) < 1e-6), None)


def nearest_image_sizes(image_size: int) -> list[int]:
    """The valid sizes next to `image_size` (one when it is outside the range)."""
    if image_size <= MIN_INPUT_SIDE:
        return [MIN_INPUT_SIDE]
    if image_size >= MAX_IMAGE_SIZE:
        return [MAX_IMAGE_SIZE]
    return nearest_multiples(image_size, SIZE_STEP)


def avatar_input_errors(image_size, fps) -> list[str]:
    """Every problem with these two inputs (empty: valid)."""
    problems = []
    whole = isinstance(image_size, int) and not isinstance(image_size, bool)
    if not whole or image_size < MIN_INPUT_SIDE or image_size > MAX_IMAGE_SIZE or image_size % SIZE_STEP:
        problem = (f"image_size {image_size} must be a multiple of {SIZE_STEP} from {MIN_INPUT_SIDE} to "
                   f"{MAX_IMAGE_SIZE} (the model was trained at {DEFAULT_IMAGE_SIZE})")
        if whole:
            problem += ": use " + " or ".join(str(v) for v in nearest_image_sizes(image_size))
        problems.append(problem)
    if parse_fps(fps) is None:
        problems.append(f"fps {fps} is not 25 or 12.5 fps (the frame rates the model was trained on)")
    return problems


def check_avatar_inputs(image_size, fps) -> float:
    """Raise one InvalidInputError naming every problem; return the frame rate as a number."""
    problems = avatar_input_errors(image_size, fps)
    if problems:
        raise InvalidInputError(f"{MODEL_NAME}: " + "; ".join(problems) + ".")
    return parse_fps(fps)
