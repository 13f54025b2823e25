"""Is NVENC usable here? Found out by opening a real encoder session, never from the GPU name or NVML.

H100, H200 and B200 have no NVENC engine although NVML reports encoder capacity, so the only honest test is
to open a tiny encoder and encode one frame. The answer is cached once per process per encoder.
"""

from __future__ import annotations

import dataclasses
import fractions
import re
import threading

import av
import av.logging
import numpy as np

_PROBE_SIZE = 256  # above every NVENC minimum size
_cache: dict[str, "NvencProbe"] = {}
# NVENCSTATUS codes FFmpeg prints as "... failed: <text> (<code>)", named as in NVIDIA's nvEncodeAPI.h
NVENC_STATUS_NAMES = {
    1: "NV_ENC_ERR_NO_ENCODE_DEVICE", 2: "NV_ENC_ERR_UNSUPPORTED_DEVICE", 3: "NV_ENC_ERR_INVALID_ENCODERDEVICE",
    4: "NV_ENC_ERR_INVALID_DEVICE", 5: "NV_ENC_ERR_DEVICE_NOT_EXIST", 10: "NV_ENC_ERR_OUT_OF_MEMORY",
    15: "NV_ENC_ERR_INVALID_VERSION",
}
_STATUS_CODE = re.compile(r"failed: [^()]*\((\d+)\)")
_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class NvencProbe:
    encoder: str        # FFmpeg encoder name, e.g. "h264_nvenc"
    available: bool
    reason: str         # why not (FFmpeg's own words), or "" when available
    gpu: str            # the CUDA device name, or "no NVIDIA GPU"


def gpu_name() -> str:
    """Name of the current CUDA device, or "no NVIDIA GPU" (for messages only, never for decisions)."""
    try:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(torch.cuda.current_device())
    except Exception:  # noqa: BLE001 - a broken CUDA install still deserves a readable message
        pass
    return "no NVIDIA GPU"


def _reason(error: Exception, logs: list) -> str:
    """FFmpeg's error-level log lines of the encoder (they carry NV_ENC_ERR_... and libcuda problems)."""
    lines = []
    for level, _name, message in logs:
        text = str(message).strip()
        if level <= av.logging.ERROR and text and text not in lines:
            lines.append(text)
    if not lines:
        return f"{type(error).__name__}: {error}"
    text = "; ".join(lines)
    match = _STATUS_CODE.search(text)
    name = NVENC_STATUS_NAMES.get(int(match.group(1))) if match else None
    return f"{name}: {text}" if name else text


def _try_open(encoder: str) -> str | None:
    """None when a session opened and encoded a frame, else the reason."""
    if encoder not in av.codecs_available:
        return f"this FFmpeg build has no {encoder}"
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.VERBOSE)
    logs: list = []
    try:
        with av.logging.Capture() as logs:
            context = av.codec.CodecContext.create(encoder, "w")
            context.width = context.height = _PROBE_SIZE
            context.pix_fmt = "yuv420p"
            context.time_base = fractions.Fraction(1, 25)
            context.framerate = fractions.Fraction(25, 1)
            context.open()
            frame = av.VideoFrame.from_ndarray(np.zeros((_PROBE_SIZE, _PROBE_SIZE, 3), np.uint8), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = 0
            packets = list(context.encode(frame)) + list(context.encode(None))
            if not packets:
                return "the encoder opened but produced no output for a test frame"
            return None
    except Exception as error:  # noqa: BLE001 - any failure to open means "not usable here"
        return _reason(error, logs)
    finally:
        av.logging.set_level(previous)


def probe_nvenc(encoder: str) -> NvencProbe:
    """Open `encoder` (h264_nvenc, hevc_nvenc, av1_nvenc) for real, once per process; the cached answer after."""
    with _lock:
        cached = _cache.get(encoder)
        if cached is None:
            reason = _try_open(encoder)
            cached = NvencProbe(encoder=encoder, available=reason is None, reason=reason or "", gpu=gpu_name())
            _cache[encoder] = cached
        return cached


def clear_cache() -> None:
    """Forget the cached answers (tests; a driver installed while the process runs)."""
    with _lock:
        _cache.clear()
