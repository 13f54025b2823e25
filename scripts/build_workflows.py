#!/usr/bin/env python3
"""Build the shipped workflows in `workflows/` from one compact description each: the UI format (what the
graph editor opens, with the model download list in the loader's `properties.models`), the API format
(what POST /prompt takes) and a thumbnail. Keeping both formats generated from one source keeps them equal.

    python scripts/build_workflows.py            # rewrite workflows/
    python scripts/build_workflows.py --check    # fail if workflows/ differs from what would be written
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from dataclasses import dataclass, field

PACK_ROOT = pathlib.Path(__file__).resolve().parent.parent
WORKFLOWS_DIR = PACK_ROOT / "workflows"
REFERENCE_OBJECT_INFO = PACK_ROOT.parent / "shared" / "reference" / "object_info_comfyui-0.8.0_cpu_native.json"
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")

HF = "https://huggingface.co"
WAN22_FILES = f"{HF}/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files"
WAN21_FILES = f"{HF}/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"


def model_entry(name: str, directory: str, base: str = WAN22_FILES) -> dict:
    return {"name": name, "url": f"{base}/{directory}/{name}", "directory": directory}


@dataclass
class Node:
    id: int
    type: str
    widgets: dict                      # input name -> value, for widget inputs
    links: dict = field(default_factory=dict)  # input name -> (source node id, source output slot)
    title: str | None = None
    models: list = field(default_factory=list)
    pos: tuple = (0, 0)


def object_info_of(node_class) -> dict:
    """A pack node class -> its entry as ComfyUI's GET /object_info would list it."""
    def normalize(spec):
        kind = spec[0]
        options = spec[1] if len(spec) > 1 else {}
        return [list(kind), options] if isinstance(kind, (list, tuple)) else [kind, options]

    inputs = node_class.INPUT_TYPES()
    return {
        "input": {section: {name: normalize(spec) for name, spec in inputs.get(section, {}).items()}
                  for section in ("required", "optional") if section in inputs},
        "input_order": {section: list(inputs[section]) for section in ("required", "optional") if section in inputs},
        "output": list(node_class.RETURN_TYPES),
        "output_is_list": [False] * len(node_class.RETURN_TYPES),
        "output_name": list(getattr(node_class, "RETURN_NAMES", node_class.RETURN_TYPES)),
        "name": node_class.__name__,
        "display_name": node_class.__name__,
        "description": getattr(node_class, "DESCRIPTION", ""),
        "category": node_class.CATEGORY,
        "output_node": getattr(node_class, "OUTPUT_NODE", False),
    }


# ComfyUI 0.8.0's audio nodes (comfy_extras/nodes_audio.py) are absent from the reference snapshot: that ComfyUI had
# no torchaudio, which the module imports (LoadAudio itself reads files with PyAV). LoadAudio as ComfyUI 0.8.0's
# GET /object_info lists it (its options are the server's input folder: empty here).
CORE_NODES_MISSING_FROM_SNAPSHOT = {
    "LoadAudio": {
        "input": {"required": {"audio": ["COMBO", {"multiselect": False, "options": [], "audio_upload": True}]}},
        "input_order": {"required": ["audio"]},
        "output": ["AUDIO"], "output_is_list": [False], "output_name": ["AUDIO"], "name": "LoadAudio",
        "display_name": "Load Audio", "description": "", "category": "audio", "output_node": False,
    },
}


def combined_object_info() -> dict:
    """Core ComfyUI 0.8.0 nodes (reference snapshot, plus the audio nodes it lacks) and the pack's own definitions."""
    sys.path.insert(0, str(PACK_ROOT / "scripts"))
    from pack_import import import_pack
    pack = import_pack()
    info = json.loads(REFERENCE_OBJECT_INFO.read_text())
    for name, definition in CORE_NODES_MISSING_FROM_SNAPSHOT.items():
        info.setdefault(name, definition)
    info.update({name: object_info_of(cls) for name, cls in pack.NODE_CLASS_MAPPINGS.items()})
    return info


def _is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _ordered_inputs(info: dict) -> list[tuple[str, list]]:
    order = info.get("input_order") or {s: list(info["input"].get(s, {})) for s in ("required", "optional")}
    return [(name, info["input"][section][name]) for section in ("required", "optional")
            for name in order.get(section, []) if name in info["input"].get(section, {})]


def to_api(nodes: list[Node], object_info: dict) -> dict:
    """API format: every widget value spelled out (defaults included), links as [source id, slot]."""
    api = {}
    for node in nodes:
        inputs = {name: node.widgets.get(name, spec[1].get("default"))
                  for name, spec in _ordered_inputs(object_info[node.type])
                  if _is_widget(spec) and name not in node.links and (name in node.widgets or "default" in spec[1])}
        inputs.update({name: [str(src), slot] for name, (src, slot) in node.links.items()})
        api[str(node.id)] = {"inputs": inputs, "class_type": node.type,
                             "_meta": {"title": node.title or node.type}}
    return api


def to_ui(nodes: list[Node], object_info: dict) -> dict:
    links, ui_nodes = [], []
    outgoing: dict[tuple[int, int], list[int]] = {}
    link_id = 0
    incoming: dict[tuple[int, str], int] = {}
    for node in nodes:
        for name, (src, slot) in node.links.items():
            link_id += 1
            src_type = object_info[next(n.type for n in nodes if n.id == src)]["output"][slot]
            links.append([link_id, src, slot, node.id, name, src_type])
            outgoing.setdefault((src, slot), []).append(link_id)
            incoming[(node.id, name)] = link_id
    for order, node in enumerate(nodes):
        info = object_info[node.type]
        inputs, widgets_values = [], []
        slot_of = {}
        for name, spec in _ordered_inputs(info):
            linked = (node.id, name) in incoming
            if _is_widget(spec):
                if linked:
                    slot_of[name] = len(inputs)
                    inputs.append({"name": name, "type": spec[0] if isinstance(spec[0], str) else "COMBO",
                                   "widget": {"name": name}, "link": incoming[(node.id, name)]})
                if name in node.widgets or not linked:
                    widgets_values.append(node.widgets.get(name, spec[1].get("default")))
                elif linked:
                    widgets_values.append(spec[1].get("default"))
                if spec[1].get("control_after_generate"):
                    widgets_values.append("fixed")
            else:
                slot_of[name] = len(inputs)
                inputs.append({"name": name, "type": spec[0], "link": incoming.get((node.id, name))})
        outputs = [{"name": out_name, "type": out_type, "slot_index": slot,
                    "links": outgoing.get((node.id, slot), [])}
                   for slot, (out_type, out_name) in enumerate(zip(info["output"], info.get("output_name", info["output"])))]
        properties = {"Node name for S&R": node.type}
        if node.models:
            properties["models"] = node.models
        entry = {"id": node.id, "type": node.type, "pos": list(node.pos), "size": [360, 200], "flags": {},
                 "order": order, "mode": 0, "inputs": inputs, "outputs": outputs, "properties": properties,
                 "widgets_values": widgets_values}
        if node.title:
            entry["title"] = node.title
        ui_nodes.append(entry)
    # UI links name the target slot by index
    for link in links:
        target = next(n for n in ui_nodes if n["id"] == link[3])
        link[4] = next(i for i, inp in enumerate(target["inputs"]) if inp["name"] == link[4])
    return {"last_node_id": max(n.id for n in nodes), "last_link_id": link_id, "nodes": ui_nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4}


# ---------------------------------------------------------------- the shipped workflows

COLUMN = 420  # node width (360) plus a gap: nodes side by side never overlap
BELOW_LOADER = 700  # image inputs sit under the loader, clear of its missing-model message


def delivery_tail(sampler: int, prefix: str, x: int = 880) -> list[Node]:
    """generate -> NSFW gate (stop) -> watermark (visible text + invisible payload) -> Encode Video (auto)."""
    return [
        Node(6, "ReelsmithNSFWGate", dict(threshold=0.8, stride=4, action="stop"), {"images": (sampler, 0)},
             title="NSFW Gate", pos=(x, 120)),
        Node(7, "ReelsmithWatermark", dict(mark="text", text="AI generated", position="bottom-right",
                                           opacity=0.7, invisible_payload="reelsmith", invisible_strength="normal"),
             {"images": (6, 0)}, title="Watermark", pos=(x + COLUMN, 120)),
        Node(8, "ReelsmithEncodeVideo", dict(filename_prefix=prefix, container="mp4", codec="h264", encoder="auto"),
             {"images": (7, 0), "fps": (sampler, 2)}, title="Encode Video", pos=(x + 2 * COLUMN, 120)),
    ]


LOADER_DEFAULTS = dict(precision="fp8_e4m3fn_fast", attention="auto", compile="off", offload="none")


def wan_a14b(kind: str, width: int, height: int) -> tuple[list[Node], str]:
    t2v = kind == "t2v"
    high = f"wan2.2_{kind}_high_noise_14B_fp8_scaled.safetensors"
    low = f"wan2.2_{kind}_low_noise_14B_fp8_scaled.safetensors"
    loader = Node(1, "ReelsmithWanModelLoader", dict(
        model="single files (pick below)", diffusion_model=high, diffusion_model_low_noise=low,
        text_encoder="umt5_xxl_fp8_e4m3fn_scaled.safetensors", vae="wan_2.1_vae.safetensors", **LOADER_DEFAULTS),
        title="Wan Model Loader", pos=(40, 120), models=[
            model_entry(high, "diffusion_models"), model_entry(low, "diffusion_models"),
            model_entry("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "text_encoders", WAN21_FILES),
            model_entry("wan_2.1_vae.safetensors", "vae"),
        ])
    sampler_widgets = dict(
        prompt=("A red fox trots through fresh snow in a birch forest at golden hour, breath steaming, "
                "the camera tracking beside it at eye level, cinematic, shallow depth of field."
                if t2v else "The woman turns towards the camera and smiles as wind moves her hair; gentle handheld camera."),
        width=width, height=height, frames=81, steps=40,
        cfg_high=3.0 if t2v else 3.5, cfg_low=4.0 if t2v else 3.5,
        flow_shift=12.0 if t2v else 5.0, boundary=0.875 if t2v else 0.9, scheduler="unipc", seed=42,
    )
    nodes = [loader]
    if t2v:
        nodes.append(Node(2, "ReelsmithWan22TextToVideo", sampler_widgets, {"wan_model": (1, 0)},
                          title="Wan 2.2 Text to Video", pos=(460, 120)))
    else:
        nodes.append(Node(5, "LoadImage", {"image": "example.png"}, title="Start Image", pos=(40, BELOW_LOADER)))
        nodes.append(Node(2, "ReelsmithWan22ImageToVideo", dict(sampler_widgets, fit="crop"),
                          {"wan_model": (1, 0), "start_image": (5, 0)}, title="Wan 2.2 Image to Video", pos=(460, 120)))
    nodes += delivery_tail(2, f"reelsmith/wan22_{kind}_{height}p")
    return nodes, f"Wan 2.2 {kind.upper()} A14B {height}p"


def wan_ti2v_5b() -> tuple[list[Node], str]:
    model = "wan2.2_ti2v_5B_fp16.safetensors"
    loader = Node(1, "ReelsmithWanModelLoader", dict(
        model="single files (pick below)", diffusion_model=model, diffusion_model_low_noise="none",
        text_encoder="umt5_xxl_fp8_e4m3fn_scaled.safetensors", vae="wan2.2_vae.safetensors", **LOADER_DEFAULTS),
        title="Wan Model Loader", pos=(40, 120), models=[
            model_entry(model, "diffusion_models"),
            model_entry("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "text_encoders", WAN21_FILES),
            model_entry("wan2.2_vae.safetensors", "vae"),
        ])
    nodes = [
        loader,
        Node(5, "LoadImage", {"image": "example.png"}, title="Start Image", pos=(40, BELOW_LOADER)),
        Node(2, "ReelsmithWan22ImageToVideo", dict(
            prompt="The product rotates slowly on a marble pedestal under soft studio light; subtle reflections.",
            width=1280, height=704, frames=121, steps=50, cfg_high=5.0, cfg_low=5.0, flow_shift=5.0, boundary=0.0,
            scheduler="unipc", seed=42, fit="crop"), {"wan_model": (1, 0), "start_image": (5, 0)},
            title="Wan 2.2 Image to Video", pos=(460, 120)),
    ] + delivery_tail(2, "reelsmith/wan22_ti2v_5b_720p")
    return nodes, "Wan 2.2 TI2V-5B 720p"


LTX_REPO = f"{HF}/Lightricks/LTX-Video/resolve/main"
T5_URL = f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors"
LTX_PROMPT = ("A sailboat glides across a calm bay at sunrise, gulls circling above the mast, soft golden light on "
              "the water, the camera slowly tracking alongside at deck height, cinematic, shallow depth of field.")


def ltx(kind: str, checkpoint: str) -> tuple[list[Node], str]:
    """LTX-Video at 1280x704 (720p rounded to a multiple of 32), 97 frames, 25 fps."""
    distilled = "distilled" in checkpoint
    loader = Node(1, "ReelsmithLTXModelLoader", dict(
        model="single files (pick below)", checkpoint=checkpoint, text_encoder="t5xxl_fp16.safetensors",
        precision="fp8_e4m3fn_fast", attention="auto", compile="off", offload="none"),
        title="LTX Model Loader", pos=(40, 120), models=[
            {"name": checkpoint, "url": f"{LTX_REPO}/{checkpoint}", "directory": "checkpoints"},
            {"name": "t5xxl_fp16.safetensors", "url": T5_URL, "directory": "text_encoders"},
        ])
    widgets = dict(prompt=LTX_PROMPT, width=1280, height=704, frames=97, frame_rate=25.0, steps=40,
                   cfg=1.0 if distilled else 3.0, stochastic=distilled, seed=42)
    nodes = [loader]
    if kind == "t2v":
        nodes.append(Node(2, "ReelsmithLTXTextToVideo", widgets, {"ltx_model": (1, 0)},
                          title="LTX Text to Video", pos=(460, 120)))
        title = "LTX-Video 2B T2V 720p"
    elif kind == "i2v":
        nodes.append(Node(5, "LoadImage", {"image": "example.png"}, title="Start Image", pos=(40, BELOW_LOADER)))
        nodes.append(Node(2, "ReelsmithLTXImageToVideo", dict(widgets, strength=1.0, fit="crop"),
                          {"ltx_model": (1, 0), "image": (5, 0)}, title="LTX Image to Video", pos=(460, 120)))
        title = "LTX-Video 13B distilled I2V 720p"
    else:
        nodes += [
            Node(5, "LoadImage", {"image": "example.png"}, title="First Frame", pos=(40, BELOW_LOADER)),
            Node(9, "LoadImage", {"image": "example.png"}, title="Last Frame", pos=(40, BELOW_LOADER + 380)),
            Node(10, "ReelsmithLTXKeyframe", dict(frame_index=0, strength=1.0), {"images": (5, 0)},
                 title="Keyframe: first", pos=(460, BELOW_LOADER + 180)),
            Node(11, "ReelsmithLTXKeyframe", dict(frame_index=96, strength=1.0), {"images": (9, 0), "keyframes": (10, 0)},
                 title="Keyframe: last", pos=(460, BELOW_LOADER + 380)),
            Node(2, "ReelsmithLTXKeyframes", dict(widgets, fit="crop"), {"ltx_model": (1, 0), "keyframes": (11, 0)},
                 title="LTX Keyframes", pos=(460, 120)),
        ]
        title = "LTX-Video keyframes: first and last frame"
    return nodes + delivery_tail(2, f"reelsmith/ltx_{kind}_720p"), title


UPSCALER = "ltxv-spatial-upscaler-0.9.8.safetensors"


def ltx_two_stage_upscale() -> tuple[list[Node], str]:
    """The vendor's multi-scale recipe: LTX 13B distilled text-to-video at 640x352, then the spatial latent
    upscaler (2x) and a short refinement pass -> 1280x704."""
    nodes, _ = ltx("t2v", "ltxv-13b-0.9.8-distilled.safetensors")
    for node in nodes:
        if node.type == "ReelsmithLTXTextToVideo":
            node.widgets.update(width=640, height=352)
    nodes = [node for node in nodes if node.id not in (6, 7, 8)]  # the delivery tail moves after the upscale
    nodes.append(Node(3, "ReelsmithLTXLatentUpscale", dict(
        upscaler=UPSCALER, prompt=LTX_PROMPT, frame_rate=25.0, steps=10, cfg=1.0, denoise=0.4, seed=42),
        {"ltx_model": (1, 0), "latent": (2, 1)}, title="LTX Latent Upscale", pos=(880, 120),
        models=[{"name": UPSCALER, "url": f"{LTX_REPO}/{UPSCALER}", "directory": "latent_upscale_models"}]))
    return nodes + delivery_tail(3, "reelsmith/ltx_two_stage_upscale_720p", x=880 + COLUMN), "LTX-Video 13B distilled two-stage upscale 720p"


AVATAR_REPO = f"{HF}/tencent/HunyuanVideo-Avatar/resolve/main"
AVATAR_FOLDER = "HunyuanVideo-Avatar"  # models/HunyuanVideo-Avatar/ckpts/... as `hf download --local-dir` leaves it
# The files the fp8 workflow needs from tencent/HunyuanVideo-Avatar (paths in the repository).
AVATAR_FILES = (
    [f"ckpts/hunyuan-video-t2v-720p/transformers/{name}"
     for name in ("mp_rank_00_model_states_fp8.pt", "mp_rank_00_model_states_fp8_map.pt")]
    + [f"ckpts/hunyuan-video-t2v-720p/vae/{name}" for name in ("pytorch_model.pt", "config.json")]
    + [f"ckpts/llava_llama_image/{name}" for name in (
        "config.json", "model.safetensors.index.json", *[f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)],
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")]
    + [f"ckpts/text_encoder_2/{name}" for name in (
        "config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json",
        "special_tokens_map.json")]
    + [f"ckpts/whisper-tiny/{name}" for name in ("config.json", "model.safetensors", "preprocessor_config.json")]
    + ["ckpts/det_align/detface.pt"]
)
AVATAR_PROMPT = ("A woman in a light blue blouse speaks warmly to the camera in a bright modern office, natural "
                 "facial expressions and small head movements, soft daylight from a window.")


def hunyuan_avatar() -> tuple[list[Node], str]:
    """Portrait + speech -> HunyuanVideo-Avatar -> core CreateVideo (frames, trimmed audio, fps) -> core SaveVideo."""
    loader = Node(1, "ReelsmithHunyuanAvatarLoader", dict(
        model=AVATAR_FOLDER, precision="fp8_e4m3fn_fast", attention="auto", offload="none"),
        title="Hunyuan Avatar Loader", pos=(40, 120),
        models=[{"name": name, "url": f"{AVATAR_REPO}/{name}", "directory": AVATAR_FOLDER} for name in AVATAR_FILES])
    nodes = [
        loader,
        Node(5, "LoadImage", {"image": "portrait.png"}, title="Portrait", pos=(40, 420)),
        Node(9, "LoadAudio", {"audio": "speech.wav"}, title="Speech", pos=(40, 820)),
        Node(2, "ReelsmithHunyuanAvatarSampler", dict(
            prompt=AVATAR_PROMPT, image_size=704, fps="25", steps=50, cfg=7.5, flow_shift=5.0, seed=42,
            length="whole audio", max_audio_seconds=60.0, faces="largest"),
            {"avatar_model": (1, 0), "image": (5, 0), "audio": (9, 0)}, title="Hunyuan Avatar Sampler",
            pos=(460, 120)),
        Node(3, "CreateVideo", {}, {"images": (2, 0), "audio": (2, 1), "fps": (2, 2)}, title="Create Video",
             pos=(900, 120)),
        Node(4, "SaveVideo", dict(filename_prefix="reelsmith/hunyuan_avatar", format="auto", codec="auto"),
             {"video": (3, 0)}, title="Save Video", pos=(1140, 120)),
    ]
    return nodes, "Hunyuan Video Avatar: portrait + speech to talking video"


WORKFLOWS = {
    "wan22_t2v_480p": lambda: wan_a14b("t2v", 832, 480),
    "wan22_t2v_720p": lambda: wan_a14b("t2v", 1280, 720),
    "wan22_i2v_720p": lambda: wan_a14b("i2v", 1280, 720),
    "wan22_ti2v_5b_720p": wan_ti2v_5b,
    "ltx_2b_t2v_720p": lambda: ltx("t2v", "ltxv-2b-0.9.8-distilled.safetensors"),
    "ltx_13b_distilled_i2v_720p": lambda: ltx("i2v", "ltxv-13b-0.9.8-distilled.safetensors"),
    "ltx_keyframes_720p": lambda: ltx("keyframes", "ltxv-13b-0.9.8-dev.safetensors"),
    "ltx_two_stage_upscale_720p": ltx_two_stage_upscale,
    "hunyuan_avatar_portrait_talking": hunyuan_avatar,
}


def thumbnail(title: str, path: pathlib.Path) -> None:
    """A 400x225 title card: the workflow's name on a dark gradient."""
    from PIL import Image, ImageDraw, ImageFont
    image = Image.new("RGB", (400, 225))
    draw = ImageDraw.Draw(image)
    for y in range(225):
        shade = int(20 + 50 * y / 225)
        draw.line([(0, y), (400, y)], fill=(shade, shade // 2 + 10, shade + 40))
    try:
        font = ImageFont.load_default(size=26)
    except TypeError:  # Pillow < 10.1 has no sized default font
        font = ImageFont.load_default()
    draw.text((20, 20), "Reelsmith", fill=(255, 170, 60), font=font)
    words, lines = title.split(), [""]
    for word in words:
        if len(lines[-1]) + len(word) > 22:
            lines.append("")
        lines[-1] = (lines[-1] + " " + word).strip()
    for index, line in enumerate(lines):
        draw.text((20, 90 + 34 * index), line, fill=(240, 240, 240), font=font)
    image.save(path, "JPEG", quality=88)


def render_all() -> dict[str, bytes | str]:
    object_info = combined_object_info()
    files: dict[str, str] = {}
    for name, build in WORKFLOWS.items():
        nodes, title = build()
        files[f"{name}.json"] = json.dumps(to_ui(nodes, object_info), indent=2) + "\n"
        files[f"api/{name}.json"] = json.dumps(to_api(nodes, object_info), indent=2) + "\n"
        files[f"{name}.title"] = title
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if anything differs")
    args = parser.parse_args(argv)
    files = render_all()
    stale = []
    for rel, content in files.items():
        if rel.endswith(".title"):
            continue
        path = WORKFLOWS_DIR / rel
        if not path.exists() or path.read_text() != content:
            stale.append(rel)
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
    if not args.check:
        for rel, title in files.items():
            if rel.endswith(".title"):
                thumbnail(title, WORKFLOWS_DIR / rel.replace(".title", ".jpg"))
    if args.check and stale:
        print("Out of date (run scripts/build_workflows.py): " + ", ".join(stale))
        return 1
    print(("Checked" if args.check else "Wrote") + f" {len(WORKFLOWS)} workflows in {WORKFLOWS_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
