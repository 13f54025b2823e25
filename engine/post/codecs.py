"""What Reelsmith can encode, as data: containers, codecs, encoders and how each encoder takes its settings.

`ENCODERS[(codec, family)]` (family "cpu" or "nvenc") describes one FFmpeg encoder:
- `ffmpeg`: the encoder name in FFmpeg (PyAV's wheels carry all of them, NVENC ones included);
- `pix_fmts`: the pixel formats a user may ask for, mapped to the format the encoder is fed;
- `preset_option` / `presets`: the option that sets speed vs compression, and the value per common preset;
- `quality_option` / `quality_range`: the constant-quality option (CRF or CQ) and its valid range;
- `options`: always set; `quality_options` / `bitrate_options`: set only in that rate-control mode.
"""

from __future__ import annotations

CONTAINERS: dict[str, tuple[str, ...]] = {
    "mp4": ("h264", "hevc", "av1"),
    "webm": ("vp9", "av1"),
}
CODECS = ("h264", "hevc", "av1", "vp9")
ENCODER_CHOICES = ("auto", "nvenc", "cpu")
RATE_CONTROLS = ("quality", "bitrate")
PRESETS = ("veryfast", "fast", "medium", "slow", "veryslow")
PIXEL_FORMATS = ("yuv420p", "yuv420p10le")
ODD_SIZE_POLICIES = ("pad", "fail")

# Container tag FFmpeg's muxers expect for hevc in mp4 (hvc1 plays in QuickTime/Safari; hev1 does not).
CODEC_TAGS: dict[tuple[str, str], str] = {("mp4", "hevc"): "hvc1"}

_NVENC_PRESETS = {"veryfast": "p1", "fast": "p2", "medium": "p4", "slow": "p6", "veryslow": "p7"}
_X26X_PRESETS = {p: p for p in PRESETS}

ENCODERS: dict[tuple[str, str], dict] = {
    ("h264", "cpu"): {
        "ffmpeg": "libx264",
        "pix_fmts": {"yuv420p": "yuv420p", "yuv420p10le": "yuv420p10le"},
        "preset_option": "preset", "presets": _X26X_PRESETS,
        "quality_option": "crf", "quality_range": (0, 51),
        "options": {}, "quality_options": {}, "bitrate_options": {},
    },
    ("hevc", "cpu"): {
        "ffmpeg": "libx265",
        "pix_fmts": {"yuv420p": "yuv420p", "yuv420p10le": "yuv420p10le"},
        "preset_option": "preset", "presets": _X26X_PRESETS,
        "quality_option": "crf", "quality_range": (0, 51),
        "options": {"x265-params": "log-level=error"}, "quality_options": {}, "bitrate_options": {},
    },
    ("av1", "cpu"): {
        "ffmpeg": "libsvtav1",
        "pix_fmts": {"yuv420p": "yuv420p", "yuv420p10le": "yuv420p10le"},
        "preset_option": "preset", "presets": {"veryfast": "12", "fast": "10", "medium": "8", "slow": "5", "veryslow": "3"},
        "quality_option": "crf", "quality_range": (1, 63),
        "options": {}, "quality_options": {}, "bitrate_options": {},
    },
    ("vp9", "cpu"): {
        "ffmpeg": "libvpx-vp9",
        "pix_fmts": {"yuv420p": "yuv420p"},  # PyAV's libvpx is built without high bit depth
        "preset_option": "cpu-used", "presets": {"veryfast": "5", "fast": "4", "medium": "2", "slow": "1", "veryslow": "0"},
        "quality_option": "crf", "quality_range": (0, 63),
        "options": {"deadline": "good", "row-mt": "1"}, "quality_options": {"b": "0"}, "bitrate_options": {},
    },
    ("h264", "nvenc"): {
        "ffmpeg": "h264_nvenc",
        "pix_fmts": {"yuv420p": "yuv420p"},
        "preset_option": "preset", "presets": _NVENC_PRESETS,
        "quality_option": "cq", "quality_range": (0, 51),
        "options": {"tune": "hq"}, "quality_options": {"rc": "vbr", "b": "0"}, "bitrate_options": {"rc": "vbr"},
    },
    ("hevc", "nvenc"): {
        "ffmpeg": "hevc_nvenc",
        "pix_fmts": {"yuv420p": "yuv420p", "yuv420p10le": "p010le"},
        "preset_option": "preset", "presets": _NVENC_PRESETS,
        "quality_option": "cq", "quality_range": (0, 51),
        "options": {"tune": "hq"}, "quality_options": {"rc": "vbr", "b": "0"}, "bitrate_options": {"rc": "vbr"},
    },
    ("av1", "nvenc"): {
        "ffmpeg": "av1_nvenc",
        "pix_fmts": {"yuv420p": "yuv420p", "yuv420p10le": "p010le"},
        "preset_option": "preset", "presets": _NVENC_PRESETS,
        "quality_option": "cq", "quality_range": (0, 63),
        "options": {"tune": "hq"}, "quality_options": {"rc": "vbr", "b": "0"}, "bitrate_options": {"rc": "vbr"},
    },
}

# Audio per container: encoder, the sample format it is fed, samples per encoded frame, sample rate, bit rate.
AUDIO_ENCODERS: dict[str, dict] = {
    "mp4": {"ffmpeg": "aac", "name": "aac", "sample_format": "fltp", "frame_size": 1024, "sample_rate": 48000,
            "bit_rate": 192_000},
    "webm": {"ffmpeg": "libopus", "name": "opus", "sample_format": "flt", "frame_size": 960, "sample_rate": 48000,
             "bit_rate": 128_000},
}


def encoder_spec(codec: str, family: str) -> dict | None:
    """The table entry of (codec, "cpu"|"nvenc"), or None when that codec has no such encoder (vp9 + nvenc)."""
    return ENCODERS.get((codec, family))
