// Reelsmith front-end extension: size and frame widgets of the Wan samplers snap to valid values as they
// are edited (multiples of 16, frames 4k+1), so a workflow is never queued with values the model rejects.
// Everything is guarded: with a front end that lacks these hooks the extension does nothing, quietly.
import { app } from "../../scripts/app.js";

const WAN_SAMPLERS = new Set(["ReelsmithWan22TextToVideo", "ReelsmithWan22ImageToVideo"]);

const snapMultiple = (value, multiple) => Math.max(multiple, Math.round(value / multiple) * multiple);
const snapFrames = (value) => Math.max(1, Math.round((value - 1) / 4) * 4 + 1);

function attachSnap(node, name, snap) {
  const widget = node.widgets?.find((w) => w.name === name);
  if (!widget) return;
  const original = widget.callback;
  widget.callback = function (value, ...rest) {
    const snapped = snap(Number(value));
    if (Number.isFinite(snapped) && snapped !== widget.value) widget.value = snapped;
    return original?.call(this, widget.value, ...rest);
  };
}

app.registerExtension({
  name: "reelsmith.wan.snapping",
  nodeCreated(node) {
    try {
      if (!WAN_SAMPLERS.has(node?.comfyClass)) return;
      attachSnap(node, "width", (v) => snapMultiple(v, 16));
      attachSnap(node, "height", (v) => snapMultiple(v, 16));
      attachSnap(node, "frames", snapFrames);
    } catch (error) {
      console.debug("Reelsmith: widget snapping unavailable", error);
    }
  },
});
