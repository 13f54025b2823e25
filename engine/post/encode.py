"""Encode frames (+ optional audio) into an MP4 or WebM file with PyAV, on NVENC or a CPU encoder.

Frames stream into the encoder one at a time (tensor frame -> uint8 array -> av.VideoFrame -> yuv), so no
second copy of the clip is made. The file is written under a temporary name beside its destination and
renamed at the end; on any error the partial file is deleted.
"""

from __future__ import annotations

import dataclasses
import fractions
import itertools
import logging
import os
import pathlib
import uuid
from typing import Any, Callable, Iterable

import av
import numpy as np
import torch

from ..errors import BackendUnavailableError, InvalidInputError
from . import codecs
from .nvenc_probe import gpu_name, probe_nvenc

log = logging.getLogger("reelsmith")


@dataclasses.dataclass(frozen=True)
class EncodeSettings:
    container: str = "mp4"              # mp4 | webm
    codec: str = "h264"                 # h264 | hevc | av1 | vp9
    encoder: str = "auto"               # auto | nvenc | cpu
    rate_control: str = "quality"       # quality (CRF/CQ) | bitrate
    quality: int = 23                   # CRF / CQ value, in the encoder's own scale
    bitrate_kbps: int = 8000            # used when rate_control == "bitrate"
    preset: str = "medium"              # one of codecs.PRESETS
    pixel_format: str = "yuv420p"       # yuv420p | yuv420p10le
    faststart: bool = True              # mp4: move the index to the front (plays while downloading)
    bt709: bool = True                  # convert with BT.709 and tag primaries/trc/matrix + tv range
    odd_size: str = "pad"               # pad (edge replication to even) | fail


@dataclasses.dataclass(frozen=True)
class EncodeReport:
    path: pathlib.Path
    codec: str
    encoder: str            # the FFmpeg encoder used, e.g. "libx264"
    hardware: bool          # True for NVENC
    why: str                # why this encoder was used
    frames: int
    width: int              # encoded size (after padding)
    height: int
    fps: float
    duration: float         # frames / fps, in seconds
    padded: bool            # an odd size was padded to even
    audio: str              # "" or e.g. "aac 48 kHz stereo, padded 0.50 s of silence"
    audio_samples: int      # samples per channel written (0 without audio)

    @property
    def line(self) -> str:
        """One line for the log and the node's report output."""
        where = "NVENC" if self.hardware else "CPU"
        text = f"{self.codec} via {self.encoder} ({where}): {self.why}"
        size = f"{self.width}x{self.height}" + (" (padded to even)" if self.padded else "")
        text += f" | {self.frames} frames {size} @ {self.fps:g} fps, {self.duration:.2f} s"
        if self.audio:
            text += f" | audio {self.audio}"
        return text


@dataclasses.dataclass(frozen=True)
class EncoderChoice:
    codec: str
    family: str           # "cpu" | "nvenc"
    spec: dict
    why: str


# ---------------------------------------------------------------- validation and encoder choice

def settings_errors(settings: EncodeSettings) -> list[str]:
    """Problems that no runtime can fix (a codec the container cannot hold, a 10-bit request the encoder lacks)."""
    s = settings
    problems = []
    if s.container not in codecs.CONTAINERS:
        return [f"container '{s.container}' is not one of {', '.join(codecs.CONTAINERS)}"]
    if s.codec not in codecs.CODECS:
        return [f"codec '{s.codec}' is not one of {', '.join(codecs.CODECS)}"]
    allowed = codecs.CONTAINERS[s.container]
    if s.codec not in allowed:
        holders = [c for c, held in codecs.CONTAINERS.items() if s.codec in held]
        problems.append(f"a {s.container} file cannot hold {s.codec}: use codec {' or '.join(allowed)}, "
                        f"or container {' or '.join(holders)}")
    if s.encoder not in codecs.ENCODER_CHOICES:
        problems.append(f"encoder '{s.encoder}' is not one of {', '.join(codecs.ENCODER_CHOICES)}")
    elif s.encoder == "nvenc" and codecs.encoder_spec(s.codec, "nvenc") is None:
        problems.append(f"NVENC has no {s.codec} encoder: set encoder to cpu (or auto), or pick h264, hevc or av1")
    if s.rate_control not in codecs.RATE_CONTROLS:
        problems.append(f"rate control '{s.rate_control}' is not one of {', '.join(codecs.RATE_CONTROLS)}")
    if s.preset not in codecs.PRESETS:
        problems.append(f"preset '{s.preset}' is not one of {', '.join(codecs.PRESETS)}")
    if s.odd_size not in codecs.ODD_SIZE_POLICIES:
        problems.append(f"odd size policy '{s.odd_size}' is not one of {', '.join(codecs.ODD_SIZE_POLICIES)}")
    if s.pixel_format not in codecs.PIXEL_FORMATS:
        problems.append(f"pixel format '{s.pixel_format}' is not one of {', '.join(codecs.PIXEL_FORMATS)}")
    elif not problems:
        # auto ends on the CPU encoder where NVENC is missing, so the CPU encoder must allow the format too
        family = "nvenc" if s.encoder == "nvenc" else "cpu"
        spec = codecs.encoder_spec(s.codec, family)
        if s.pixel_format not in spec["pix_fmts"]:
            able = [f"{c} ({fam})" for (c, fam), e in codecs.ENCODERS.items() if s.pixel_format in e["pix_fmts"]]
            problems.append(f"{s.codec} via {spec['ffmpeg']} cannot encode {s.pixel_format}: use yuv420p, or one of "
                            f"{', '.join(able)}")
        low, high = spec["quality_range"]
        if s.rate_control == "quality" and not low <= s.quality <= high:
            problems.append(f"quality {s.quality} is outside {spec['ffmpeg']}'s {spec['quality_option']} range "
                            f"{low}..{high}")
    if s.rate_control == "bitrate" and s.bitrate_kbps <= 0:
        problems.append(f"bitrate {s.bitrate_kbps} kbps must be positive")
    return problems


def validate_settings(settings: EncodeSettings) -> None:
    problems = settings_errors(settings)
    if problems:
        raise InvalidInputError("Encode Video: " + "; ".join(problems) + ".")


def choose_encoder(settings: EncodeSettings) -> EncoderChoice:
    """The encoder to use and why. `auto` opens a real NVENC session (cached per process) and falls back to CPU."""
    validate_settings(settings)
    codec = settings.codec
    nvenc = codecs.encoder_spec(codec, "nvenc")
    cpu = codecs.encoder_spec(codec, "cpu")
    if settings.encoder == "cpu":
        return EncoderChoice(codec, "cpu", cpu, "encoder set to cpu")
    if nvenc is None:  # auto + vp9 (nvenc + vp9 was refused by validation)
        return EncoderChoice(codec, "cpu", cpu, f"NVENC has no {codec} encoder")
    probe = probe_nvenc(nvenc["ffmpeg"])
    if probe.available:
        return EncoderChoice(codec, "nvenc", nvenc, f"NVENC session opened on {probe.gpu}")
    if settings.encoder == "nvenc":
        raise BackendUnavailableError(
            f"Encode Video: NVENC ({nvenc['ffmpeg']}) could not open a session on {probe.gpu} ({probe.reason}). "
            f"H100, H200 and B200 have no NVENC engine; set encoder to cpu (uses {cpu['ffmpeg']}) or auto.")
    return EncoderChoice(codec, "cpu", cpu, f"NVENC could not open a session on {probe.gpu} ({probe.reason})")


# ---------------------------------------------------------------- frames

def _frame_to_uint8(frame: Any, index: int) -> np.ndarray:
    """One IMAGE frame [H,W,C] (float 0..1 tensor or array, or uint8 array) -> contiguous uint8 RGB [H,W,3]."""
    if isinstance(frame, torch.Tensor):
        frame = frame.detach()
        if frame.dtype == torch.uint8:
            array = frame.cpu().numpy()
        elif frame.device.type != "cpu":  # convert on the GPU, move a quarter of the bytes
            array = (frame.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        else:
            array = _float_to_uint8(frame.float().numpy())  # numpy: ~10x faster than torch's CPU kernels here
    else:
        array = np.asarray(frame)
        if array.dtype != np.uint8:
            array = _float_to_uint8(array.astype(np.float32, copy=False))
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise InvalidInputError(f"Encode Video: frame {index} has shape {tuple(array.shape)}; expected [height, width, "
                                f"3] (an IMAGE batch is [frames, height, width, 3]).")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        array = array[:, :, :3]  # alpha is dropped: neither 4:2:0 format carries it
    return np.ascontiguousarray(array)


def _float_to_uint8(array: np.ndarray) -> np.ndarray:
    """0..1 floats -> rounded uint8, with one temporary of the frame's size."""
    scaled = np.multiply(array, 255.0, dtype=np.float32)
    scaled += 0.5
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)


def _pad_even(array: np.ndarray) -> np.ndarray:
    height, width = array.shape[:2]
    if height % 2 == 0 and width % 2 == 0:
        return array
    return np.pad(array, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def _frame_iter(frames: Any) -> Iterable:
    if isinstance(frames, torch.Tensor):
        if frames.ndim == 3:  # a single image
            return iter([frames])
        if frames.ndim != 4:
            raise InvalidInputError(f"Encode Video: images have shape {tuple(frames.shape)}; expected an IMAGE "
                                    f"batch [frames, height, width, 3].")
        return (frames[i] for i in range(frames.shape[0]))  # views: no copy of the clip
    return iter(frames)


# ---------------------------------------------------------------- audio

def _prepare_audio(audio: dict, duration: float, spec: dict) -> tuple[np.ndarray, str]:
    """AUDIO {"waveform": [B,C,T], "sample_rate"} -> float32 [C', N] at spec's rate, N = duration exactly."""
    try:
        waveform, sample_rate = audio["waveform"], int(audio["sample_rate"])
    except (TypeError, KeyError) as error:
        raise InvalidInputError("Encode Video: audio must be an AUDIO value {'waveform': [batch, channels, samples], "
                                "'sample_rate': int} (from a core audio node).") from error
    waveform = torch.as_tensor(waveform).detach().float().cpu()
    if waveform.ndim == 3:
        waveform = waveform[0]  # first item of the batch
    if waveform.ndim == 1:
        waveform = waveform[None]
    if waveform.ndim != 2 or waveform.shape[0] < 1 or sample_rate <= 0:
        raise InvalidInputError(f"Encode Video: audio waveform has shape {tuple(waveform.shape)} at {sample_rate} Hz; "
                                f"expected [batch, channels, samples] and a positive sample rate.")
    notes = []
    if waveform.shape[0] > 2:
        notes.append(f"first 2 of {waveform.shape[0]} channels")
        waveform = waveform[:2]
    channels = waveform.shape[0]
    layout = "mono" if channels == 1 else "stereo"
    rate = spec["sample_rate"]
    target = int(round(duration * rate))

    pieces = []
    if waveform.shape[1] > 0:
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        source = av.AudioFrame.from_ndarray(np.ascontiguousarray(waveform.numpy()), format="fltp", layout=layout)
        source.sample_rate = sample_rate
        source.pts = None
        for frame in itertools.chain(resampler.resample(source), resampler.resample(None)):
            pieces.append(frame.to_ndarray())
    samples = np.concatenate(pieces, axis=1) if pieces else np.zeros((channels, 0), np.float32)
    have = samples.shape[1]
    if have > target:
        notes.append(f"trimmed {(have - target) / rate:.2f} s")
        samples = samples[:, :target]
    elif have < target:
        notes.append(f"padded {(target - have) / rate:.2f} s of silence")
        samples = np.concatenate([samples, np.zeros((channels, target - have), np.float32)], axis=1)
    description = f"{spec['name']} {rate / 1000:g} kHz {layout}"
    if sample_rate != rate:
        description += f" (resampled from {sample_rate} Hz)"
    if notes:
        description += ", " + ", ".join(notes)
    return np.ascontiguousarray(samples.astype(np.float32)), description


def _audio_frame(chunk: np.ndarray, spec: dict, layout: str, pts: int) -> av.AudioFrame:
    if spec["sample_format"] == "fltp":
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout=layout)
    else:  # packed: [1, samples * channels], interleaved
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk.T.reshape(1, -1)), format=spec["sample_format"],
                                           layout=layout)
    frame.sample_rate = spec["sample_rate"]
    frame.pts = pts
    frame.time_base = fractions.Fraction(1, spec["sample_rate"])
    return frame


# ---------------------------------------------------------------- encoding

def _frame_rate(fps: float) -> fractions.Fraction:
    if not fps or fps <= 0 or fps != fps:
        raise InvalidInputError(f"Encode Video: fps {fps} must be a positive number (e.g. 16 for Wan A14B).")
    return fractions.Fraction(fps).limit_denominator(1001)


def _video_options(choice: EncoderChoice, settings: EncodeSettings) -> tuple[dict, int]:
    spec = choice.spec
    options = dict(spec["options"])
    options[spec["preset_option"]] = spec["presets"][settings.preset]
    bit_rate = 0
    if settings.rate_control == "quality":
        options.update(spec["quality_options"])
        options[spec["quality_option"]] = str(int(settings.quality))
    else:
        options.update(spec["bitrate_options"])
        bit_rate = int(settings.bitrate_kbps) * 1000
    return options, bit_rate


def _remove_quietly(path: pathlib.Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as error:  # pragma: no cover - e.g. a read-only folder; the original error matters more
        log.warning("Reelsmith: could not delete the partial file %s: %s", path, error)


def encode_video(frames: torch.Tensor | Iterable, fps: float, path: str | os.PathLike, settings: EncodeSettings,
                 audio: dict | None = None, total_frames: int | None = None,
                 on_frame: Callable[[int, int | None], None] | None = None) -> EncodeReport:
    """Encode `frames` (an IMAGE batch [B,H,W,C] in 0..1, or an iterable of [H,W,C] frames) at `fps` into `path`.

    `audio` (AUDIO dict) is resampled to 48 kHz and trimmed or padded with silence to the video's duration.
    `on_frame(done, total)` is called after each frame (progress, and the place an interrupt can raise).
    The file appears at `path` only when complete; on any error nothing is left behind.
    """
    path = pathlib.Path(path)
    rate = _frame_rate(fps)
    choice = choose_encoder(settings)
    if isinstance(frames, torch.Tensor):
        total_frames = int(frames.shape[0]) if frames.ndim == 4 else 1
    iterator = _frame_iter(frames)
    first = next(iterator, None)
    if first is None:
        raise InvalidInputError("Encode Video: no frames to encode (the image batch is empty).")
    first = _frame_to_uint8(first, 0)
    source_h, source_w = first.shape[:2]
    padded = source_h % 2 == 1 or source_w % 2 == 1
    if padded and settings.odd_size == "fail":
        raise InvalidInputError(
            f"Encode Video: frames are {source_w}x{source_h}; {settings.pixel_format} (4:2:0) needs an even width and "
            f"height. Set odd_size to pad (adds one edge-replicated row/column), or resize to "
            f"{source_w + source_w % 2}x{source_h + source_h % 2}.")
    width, height = source_w + source_w % 2, source_h + source_h % 2

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.parent / f".{path.stem}.partial-{uuid.uuid4().hex[:8]}{path.suffix}"
    container_options = {}
    if settings.container == "mp4" and settings.faststart:
        container_options["movflags"] = "+faststart"
    count = 0
    audio_spec = codecs.AUDIO_ENCODERS[settings.container]
    audio_description = ""
    audio_samples = None
    try:
        with av.open(str(partial), mode="w", format=settings.container, options=container_options) as output:
            stream = output.add_stream(choice.spec["ffmpeg"], rate=rate)
            stream.width, stream.height = width, height
            stream.pix_fmt = choice.spec["pix_fmts"][settings.pixel_format]
            stream.time_base = 1 / rate
            options, bit_rate = _video_options(choice, settings)
            stream.options = options
            if bit_rate:
                stream.bit_rate = bit_rate
            tag = codecs.CODEC_TAGS.get((settings.container, settings.codec))
            if tag:
                stream.codec_tag = tag
            convert = {"format": stream.pix_fmt}
            if settings.bt709:
                context = stream.codec_context
                context.color_primaries = 1   # BT.709
                context.color_trc = 1         # BT.709
                context.colorspace = 1        # BT.709 matrix
                context.color_range = 1       # tv / limited
                convert.update(dst_colorspace="ITU709", dst_color_range="MPEG", src_color_range="JPEG")

            audio_stream = None
            if audio is not None:
                if total_frames is not None:  # else: prepared once the frame count is known, after the video
                    audio_samples, audio_description = _prepare_audio(audio, total_frames / float(rate), audio_spec)
                audio_stream = output.add_stream(audio_spec["ffmpeg"], rate=audio_spec["sample_rate"])
                audio_stream.layout = "mono" if _audio_channels(audio) == 1 else "stereo"
                audio_stream.bit_rate = audio_spec["bit_rate"]
                audio_stream.time_base = fractions.Fraction(1, audio_spec["sample_rate"])
            audio_written = 0

            def write_audio_until(sample_end: int) -> None:
                nonlocal audio_written
                if audio_stream is None or audio_samples is None:
                    return
                size = audio_spec["frame_size"]
                sample_end = min(sample_end, audio_samples.shape[1])
                while audio_written < sample_end:
                    end = min(audio_written + size, audio_samples.shape[1])
                    if end - audio_written < size and end < audio_samples.shape[1]:
                        break
                    chunk = audio_samples[:, audio_written:end]
                    output.mux(audio_stream.encode(_audio_frame(chunk, audio_spec, audio_stream.layout.name,
                                                                audio_written)))
                    audio_written = end

            for index, array in enumerate(itertools.chain([first], iterator)):
                if index:
                    array = _frame_to_uint8(array, index)
                if array.shape[:2] != (source_h, source_w):
                    raise InvalidInputError(
                        f"Encode Video: frame {index} is {array.shape[1]}x{array.shape[0]} but the first frame is "
                        f"{source_w}x{source_h}; every frame of a video must have the same size.")
                if padded:
                    array = _pad_even(array)
                frame = av.VideoFrame.from_ndarray(array, format="rgb24").reformat(**convert)
                frame.pts = index
                output.mux(stream.encode(frame))
                count = index + 1
                write_audio_until(int((count / rate) * audio_spec["sample_rate"]))
                if on_frame is not None:
                    on_frame(count, total_frames)
            output.mux(stream.encode(None))

            if audio_stream is not None:
                if audio_samples is None:
                    audio_samples, audio_description = _prepare_audio(audio, count / float(rate), audio_spec)
                write_audio_until(audio_samples.shape[1])
                output.mux(audio_stream.encode(None))
        os.replace(partial, path)
    except BaseException:
        _remove_quietly(partial)
        raise

    duration = count / float(rate)
    report = EncodeReport(
        path=path, codec=settings.codec, encoder=choice.spec["ffmpeg"], hardware=choice.family == "nvenc",
        why=choice.why, frames=count, width=width, height=height, fps=float(fps), duration=duration, padded=padded,
        audio=audio_description, audio_samples=0 if audio_samples is None else int(audio_samples.shape[1]),
    )
    return report


def _audio_channels(audio: dict) -> int:
    waveform = audio.get("waveform") if isinstance(audio, dict) else None
    if waveform is None or getattr(waveform, "ndim", 0) < 2:
        return 1
    return 1 if waveform.shape[-2] == 1 else 2


__all__ = ["EncodeSettings", "EncodeReport", "EncoderChoice", "encode_video", "choose_encoder", "validate_settings",
           "settings_errors", "gpu_name"]
