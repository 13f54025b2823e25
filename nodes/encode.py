"""Delivery: Reelsmith Encode Video. Thin: parse widgets, call the engine encoder, wrap the file as a native VIDEO."""

from __future__ import annotations

import logging

from ..engine import host
from ..engine.post import codecs
from ..engine.post.encode import EncodeSettings, encode_video, settings_errors

log = logging.getLogger("reelsmith")

CATEGORY = "Reelsmith/Delivery"


class ReelsmithEncodeVideo:
    DESCRIPTION = (
        "Encodes IMAGE frames (and optional AUDIO) into an MP4 or WebM file in ComfyUI's output folder, on NVENC "
        "where the GPU has it (L4, L40S, RTX) or on the CPU (H100, H200 and B200 have no NVENC). Returns a native "
        "VIDEO for core nodes, the file path, and a one-line report of the encoder used and why."
    )
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    OUTPUT_NODE = True
    RETURN_TYPES = ("VIDEO", "STRING", "STRING")
    RETURN_NAMES = ("video", "path", "report")
    OUTPUT_TOOLTIPS = (
        "The encoded file as a native VIDEO (core Save Video, Get Video Components and preview nodes accept it).",
        "Full path of the written file.",
        "Which encoder was used and why (e.g. why NVENC was not), with size, frame count and duration.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The video frames (an IMAGE batch, one image per frame)."}),
                "fps": ("FLOAT", {"default": 16.0, "min": 1.0, "max": 240.0, "step": 0.001,
                                  "tooltip": "Frame rate; connect the Wan sampler's fps output (16 for A14B, 24 for "
                                             "TI2V-5B)."}),
                "filename_prefix": ("STRING", {"default": "video/Reelsmith",
                                               "tooltip": "Name of the file in the output folder; may contain a "
                                                          "subfolder and %date:yyyy-MM-dd% like core Save Video."}),
                "container": (list(codecs.CONTAINERS), {"default": "mp4",
                                                        "tooltip": "mp4 (h264, hevc, av1; plays everywhere) or webm "
                                                                   "(vp9, av1; for browsers)."}),
                "codec": (list(codecs.CODECS), {"default": "h264",
                                                "tooltip": "h264: most compatible. hevc/av1: smaller files at the "
                                                           "same quality. vp9: webm only. av1 fits both containers."}),
                "encoder": (list(codecs.ENCODER_CHOICES), {
                    "default": "auto",
                    "tooltip": "auto: NVENC if a session really opens on this GPU, else the CPU encoder (the report "
                               "says why). nvenc: fail if unavailable. cpu: libx264 / libx265 / libsvtav1 / libvpx."}),
                "rate_control": (list(codecs.RATE_CONTROLS), {
                    "default": "quality",
                    "tooltip": "quality: constant quality (CRF on CPU, CQ on NVENC), size varies. bitrate: target "
                               "average bitrate in kbps."}),
                "quality": ("INT", {"default": 23, "min": 0, "max": 63,
                                    "tooltip": "CRF / CQ, lower is better and bigger. h264/hevc 0-51 (18-28 usual), "
                                               "av1 1-63 (25-40 usual), vp9 0-63 (24-36 usual)."}),
                "bitrate_kbps": ("INT", {"default": 8000, "min": 100, "max": 500000, "step": 100,
                                         "tooltip": "Target bitrate in kbps when rate_control is bitrate (720p: "
                                                    "4000-8000, 1080p: 8000-16000)."}),
                "preset": (list(codecs.PRESETS), {
                    "default": "medium",
                    "tooltip": "Speed vs compression: x264/x265 presets of the same name, NVENC p1/p2/p4/p6/p7, "
                               "SVT-AV1 presets 12/10/8/5/3, VP9 cpu-used 5/4/2/1/0."}),
                "pixel_format": (list(codecs.PIXEL_FORMATS), {
                    "default": "yuv420p",
                    "tooltip": "yuv420p: 8-bit, plays everywhere. yuv420p10le: 10-bit (less banding) with h264 (CPU), "
                               "hevc or av1; not vp9."}),
                "faststart": ("BOOLEAN", {"default": True,
                                          "tooltip": "mp4: put the index at the front so playback starts while "
                                                     "downloading. Ignored for webm."}),
                "bt709": ("BOOLEAN", {"default": True,
                                      "tooltip": "Convert with BT.709 and tag colour primaries, transfer, matrix and "
                                                 "tv range, so players show the colours as generated."}),
                "odd_size": (list(codecs.ODD_SIZE_POLICIES), {
                    "default": "pad",
                    "tooltip": "4:2:0 needs an even width and height. pad: add one edge-replicated row/column. fail: "
                               "stop with an error."}),
            },
            "optional": {
                "audio": ("AUDIO", {"tooltip": "Optional soundtrack: resampled to 48 kHz, encoded AAC (mp4) or Opus "
                                               "(webm), trimmed or padded with silence to the video's length."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, container, codec, encoder, pixel_format):
        problems = settings_errors(EncodeSettings(container=container, codec=codec, encoder=encoder,
                                                  pixel_format=pixel_format))
        return True if not problems else "Encode Video: " + "; ".join(problems) + "."

    def encode(self, images, fps, filename_prefix, container, codec, encoder, rate_control, quality, bitrate_kbps,
               preset, pixel_format, faststart, bt709, odd_size, audio=None):
        settings = EncodeSettings(container=container, codec=codec, encoder=encoder, rate_control=rate_control,
                                  quality=int(quality), bitrate_kbps=int(bitrate_kbps), preset=preset,
                                  pixel_format=pixel_format, faststart=bool(faststart), bt709=bool(bt709),
                                  odd_size=odd_size)
        height, width = (int(images.shape[1]), int(images.shape[2])) if images.ndim == 4 else (0, 0)
        path, filename, subfolder = host.unique_output_path(filename_prefix, container, width, height)
        total = int(images.shape[0]) if images.ndim == 4 else 1
        progress = host.StepReporter(max(total, 1))
        report = encode_video(images, fps, path, settings, audio=audio, on_frame=lambda done, _: progress.step(done))
        log.info("Reelsmith Encode Video: %s -> %s", report.line, report.path)
        video = host.video_from_file(report.path)
        return {
            "ui": {"images": [{"filename": filename, "subfolder": subfolder, "type": "output"}], "animated": (True,)},
            "result": (video, str(report.path), report.line),
        }


NODE_CLASS_MAPPINGS = {"ReelsmithEncodeVideo": ReelsmithEncodeVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"ReelsmithEncodeVideo": "Reelsmith Encode Video"}
