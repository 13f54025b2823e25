"""Watermark nodes: a visible logo or text over every frame, an invisible payload in the luma, and a detector.
Thin: parse widgets, call engine/post, wrap results in native ComfyUI types."""

from __future__ import annotations

from ..engine.errors import InvalidInputError
from ..engine.post import invisible_watermark, visible_watermark

CATEGORY = "Reelsmith/Delivery"
MARK_KINDS = ("text", "image", "none")


class ReelsmithWatermark:
    DESCRIPTION = (
        "Puts a visible watermark (a logo from LoadImage, or a line of text) on every frame, and optionally hides "
        f"an invisible payload (up to {invisible_watermark.MAX_PAYLOAD_BYTES} bytes, e.g. a job id) in the picture "
        "that survives H.264 encoding; read it back with Reelsmith Watermark Detect. Frames stay on their device."
    )
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The frames with the watermark(s), same size and count.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The video frames to mark (a batch of IMAGE)."}),
                "mark": (list(MARK_KINDS), {
                    "default": "text",
                    "tooltip": "Visible mark: 'text' draws the text below; 'image' uses the connected mark_image "
                               "(and mark_mask for transparency); 'none' adds only the invisible payload."}),
                "text": ("STRING", {"default": "AI generated", "multiline": False,
                                    "tooltip": "Text of the visible mark when 'mark' is 'text'."}),
                "font_size": ("INT", {"default": 32, "min": 4, "max": 1024, "step": 1,
                                      "tooltip": "Text height in frame pixels (PIL's default font)."}),
                "position": (list(visible_watermark.POSITIONS), {
                    "default": "bottom-right",
                    "tooltip": "Where the mark goes; 'xy' puts its top-left corner at x, y."}),
                "x": ("INT", {"default": 0, "min": -8192, "max": 8192,
                              "tooltip": "Left edge of the mark in pixels when position is 'xy'."}),
                "y": ("INT", {"default": 0, "min": -8192, "max": 8192,
                              "tooltip": "Top edge of the mark in pixels when position is 'xy'."}),
                "margin": ("INT", {"default": 16, "min": 0, "max": 4096,
                                   "tooltip": "Distance from the frame edges in pixels (corner positions)."}),
                "scale": ("FLOAT", {"default": 0.2, "min": 0.01, "max": 1.0, "step": 0.01,
                                    "tooltip": "Image marks: width of the mark as a fraction of the frame width "
                                               "(aspect ratio kept). Text marks use font_size instead."}),
                "opacity": ("FLOAT", {"default": 0.8, "min": 0.0, "max": 1.0, "step": 0.05,
                                      "tooltip": "0 = invisible, 1 = fully opaque (times the mark's own alpha)."}),
                "invisible_payload": ("STRING", {
                    "default": "",
                    "tooltip": f"Text to hide invisibly in every frame (at most {invisible_watermark.MAX_PAYLOAD_BYTES} "
                               "bytes of UTF-8, e.g. a job id). Empty = no invisible watermark."}),
                "invisible_strength": (list(invisible_watermark.STRENGTHS), {
                    "default": "normal",
                    "tooltip": "How strongly the payload is embedded (luma changes of about 1 / 1.5 / 2.6 grey levels "
                               "RMS). 'normal' survives H.264 CRF 23 even on short clips and CRF 28 on 480p ones; "
                               "'subtle' needs longer clips; 'strong' for heavier compression (CRF 35 at 480p)."}),
            },
            "optional": {
                "mark_image": ("IMAGE", {"tooltip": "The logo, from LoadImage (first image used) when 'mark' is 'image'."}),
                "mark_mask": ("MASK", {"tooltip": "LoadImage's MASK of the logo, so its transparent parts stay "
                                                  "transparent. Without it the logo is opaque."}),
            },
        }

    def apply(self, images, mark, text, font_size, position, x, y, margin, scale, opacity,
              invisible_payload, invisible_strength, mark_image=None, mark_mask=None):
        frames = images
        if mark != "none":
            if mark == "image":
                rgba = visible_watermark.mark_from_image(mark_image, mark_mask)
                rgba = visible_watermark.resize_mark(rgba, scale * frames.shape[2])
            elif mark == "text":
                rgba = visible_watermark.mark_from_text(text, font_size)
            else:
                raise InvalidInputError(f"Unknown mark kind {mark!r}; use one of {', '.join(MARK_KINDS)}.")
            placement = visible_watermark.Placement(position, x, y, margin, opacity)
            frames = visible_watermark.apply_visible_watermark(frames, rgba, placement)
        if invisible_payload:
            frames = invisible_watermark.embed_payload(
                frames, invisible_payload, invisible_watermark.STRENGTHS[invisible_strength])
        return (frames,)


class ReelsmithWatermarkDetect:
    DESCRIPTION = (
        "Looks for a Reelsmith invisible watermark in frames or in a video file and reads its payload. Says "
        "'no watermark' rather than guessing: a payload is reported only when its checksum matches and the "
        "confidence is at least 0.5."
    )
    CATEGORY = CATEGORY
    FUNCTION = "detect"
    RETURN_TYPES = ("STRING", "FLOAT", "BOOLEAN")
    RETURN_NAMES = ("report", "confidence", "found")
    OUTPUT_TOOLTIPS = (
        "One line: the payload found, or that there is none.",
        "0..1: how sure the detector is that a mark with this payload is present.",
        "True when a payload was found.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "video_path": ("STRING", {"default": "", "tooltip": "Full path of a video file to check (e.g. "
                                                                    "the path output of an encode node). Ignored "
                                                                    "when images are connected."}),
                "max_frames": ("INT", {"default": 0, "min": 0, "max": 100000,
                                       "tooltip": "Read at most this many frames of the file (0 = all). More "
                                                  "frames give more certainty."}),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "Frames to check instead of a file."}),
            },
        }

    def detect(self, video_path, max_frames, images=None):
        if images is not None:
            frames = images if not max_frames else images[:max_frames]
            detection = invisible_watermark.detect_payload(frames)
        elif video_path.strip():
            detection = invisible_watermark.detect_payload_in_file(video_path.strip(), max_frames)
        else:
            raise InvalidInputError("Nothing to check: connect 'images' or set 'video_path' to a video file.")
        return (detection.report(), float(detection.confidence), bool(detection.found))


NODE_CLASS_MAPPINGS = {
    "ReelsmithWatermark": ReelsmithWatermark,
    "ReelsmithWatermarkDetect": ReelsmithWatermarkDetect,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ReelsmithWatermark": "Reelsmith Watermark",
    "ReelsmithWatermarkDetect": "Reelsmith Watermark Detect",
}
