"""HTTP routes the graph editor extension (js/reelsmith.js) asks, all under `/reelsmith/editor/`:

- GET  rules         the snapping rules and resolution presets of every Reelsmith sampler, keyed by node class
                     name, built from the engine's validation constants, so JS and Python cannot drift;
- POST loader_status what a loader's current widget values lack (files, download commands) and, when the files
                     are there, the model variant read from the weights;
- POST estimate      peak GPU memory and run time of a sampler's settings on the server's GPU, from
                     data/benchmarks.json (engine/estimates.py).

The logic is plain functions (tested without a server); `register_routes()` adds the thin aiohttp handlers to
ComfyUI's PromptServer when there is one (ComfyUI also serves them under /api/...).
"""

from __future__ import annotations

import fnmatch
import functools
import importlib.util
import logging
import os
import pathlib
import re
import shlex
import sys
from dataclasses import dataclass
from functools import lru_cache

from ..engine import estimates, host
from ..engine.errors import InvalidInputError, ReelsmithError
from ..engine.models import avatar_layouts, checkpoint_io
from ..engine.models.ltx_variants import detect_ltx_variant
from ..engine.models.wan_variants import WAN_VARIANTS, detect_wan_variant
from ..engine.pipelines import avatar_validation, ltx_validation, wan_validation
from ..engine.pipelines.avatar_audio import DEFAULT_MAX_SECONDS, SAMPLE_RATE, video_frame_count
from ..engine.pipelines.avatar_generate import FIRST_WINDOW
from ..engine.pipelines.avatar_image import long_side_cap, reference_size
from ..engine.pipelines.avatar_windows import WINDOW_VIDEO_FRAMES, plan_avatar_windows
from . import avatar, ltx, wan

log = logging.getLogger("reelsmith")

PACK_ROOT = pathlib.Path(__file__).resolve().parent.parent
ROUTE_PREFIX = "/reelsmith/editor"
# Nominal sizes of the resolution presets (Wan's own 480p is 832x480); each is snapped to the model's step.
PRESET_SIZES = {"480p": (832, 480), "720p": (1280, 720), "1080p": (1920, 1080)}


# ------------------------------------------------------------------------------------------ snapping rules

@dataclass(frozen=True)
class SamplerRule:
    family: str
    model_type: str                    # the input type that leads (through LoRA nodes) to the loader
    size_widgets: tuple[str, ...]      # ("width", "height") or a single square size
    size_multiple: int                 # the step when the variant is not known
    size_multiple_by_variant: dict
    frames_widget: str | None
    frame_stride: int | None           # valid frame counts: 1 + k * stride


_WAN = dict(family="wan", model_type="WAN_MODEL", size_widgets=("width", "height"),
            size_multiple=wan.SIZE_STEP,
            size_multiple_by_variant={name: v.size_multiple for name, v in WAN_VARIANTS.items()},
            frames_widget="frames", frame_stride=wan_validation.FRAME_STRIDE)
_LTX = dict(family="ltx", model_type="LTX_MODEL", size_widgets=("width", "height"),
            size_multiple=ltx_validation.SIZE_MULTIPLE, size_multiple_by_variant={},
            frames_widget="frames", frame_stride=ltx_validation.FRAME_STRIDE)
SAMPLER_RULES = {
    "ReelsmithWan22TextToVideo": SamplerRule(**_WAN),
    "ReelsmithWan22ImageToVideo": SamplerRule(**_WAN),
    "ReelsmithLTXTextToVideo": SamplerRule(**_LTX),
    "ReelsmithLTXImageToVideo": SamplerRule(**_LTX),
    "ReelsmithLTXKeyframes": SamplerRule(**_LTX),
    "ReelsmithHunyuanAvatarSampler": SamplerRule(  # one square size widget; the length comes from the audio
        family="avatar", model_type=avatar.AVATAR_MODEL, size_widgets=("image_size",),
        size_multiple=avatar_validation.SIZE_STEP, size_multiple_by_variant={}, frames_widget=None, frame_stride=None),
}
LOADERS = {"ReelsmithWanModelLoader": ("wan", wan.ReelsmithWanModelLoader),
           "ReelsmithLTXModelLoader": ("ltx", ltx.ReelsmithLTXModelLoader),
           "ReelsmithHunyuanAvatarLoader": ("avatar", avatar.ReelsmithHunyuanAvatarLoader)}


def snap_to_multiple(value: int, multiple: int) -> int:
    """The nearest multiple (ties go down: 720 with step 32 -> 704, as Wan TI2V-5B's own 1280x704), at least one step."""
    below = value // multiple * multiple
    above = below + multiple
    return max(multiple, below if value - below <= above - value else above)


def resolution_presets(multiple: int, square_only: bool = False) -> list[dict]:
    """480p / 720p / 1080p in landscape, portrait and square, each side snapped to `multiple`."""
    presets = []
    for label, (long_side, short_side) in PRESET_SIZES.items():
        width, height = snap_to_multiple(long_side, multiple), snap_to_multiple(short_side, multiple)
        square = snap_to_multiple(short_side, multiple)
        if not square_only:
            presets.append({"name": f"{label} landscape ({width}x{height})", "width": width, "height": height})
            presets.append({"name": f"{label} portrait ({height}x{width})", "width": height, "height": width})
        presets.append({"name": f"{label} square ({square}x{square})", "width": square, "height": square})
    return presets


def _widget_limits(node_class, name: str) -> dict:
    if node_class is None:
        return {}
    inputs = node_class.INPUT_TYPES()
    spec = {**inputs.get("required", {}), **inputs.get("optional", {})}.get(name)
    if not spec or len(spec) < 2:
        return {}
    return {key: spec[1][key] for key in ("min", "max", "step") if key in spec[1]}


def sampler_rules(node_classes: dict | None = None) -> dict:
    """What GET rules answers: per sampler node class its family, snapping rules and presets (per size step)."""
    if node_classes is None:
        from . import NODE_CLASS_MAPPINGS as node_classes
    samplers = {}
    for name, rule in SAMPLER_RULES.items():
        node_class = node_classes.get(name)
        multiples = sorted({rule.size_multiple, *rule.size_multiple_by_variant.values()})
        square_only = len(rule.size_widgets) == 1
        entry = {
            "family": rule.family,
            "model_type": rule.model_type,
            "size": {"widgets": list(rule.size_widgets), "multiple": rule.size_multiple,
                     "by_variant": dict(rule.size_multiple_by_variant),
                     "limits": _widget_limits(node_class, rule.size_widgets[0])},
            "frames": None,
            "presets": {str(m): resolution_presets(m, square_only) for m in multiples},
        }
        if rule.frames_widget:
            entry["frames"] = {"widget": rule.frames_widget, "stride": rule.frame_stride, "offset": 1,
                               "limits": _widget_limits(node_class, rule.frames_widget)}
        samplers[name] = entry
    return {"version": 1, "samplers": samplers,
            "loaders": {name: {"family": family} for name, (family, _) in LOADERS.items()}}


# ------------------------------------------------------------------------------------------ missing models

def _load_download_script():
    """scripts/download_models.py as a private module (scripts/ is not a package; never put it on sys.path)."""
    path = PACK_ROOT / "scripts" / "download_models.py"
    name = "reelsmith_download_models"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is made
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


@lru_cache(maxsize=1)
def shipped_model_sets() -> dict[tuple[str, str], tuple[str, ...]]:
    """(models folder, file name) -> the download_models.py model sets that fetch it, from the shipped
    workflows' own model lists; read again only when a workflow file changes (the editor asks on every
    loader widget change)."""
    workflows = sorted((PACK_ROOT / "workflows").glob("*.json"))
    return dict(_model_sets_of(tuple((str(p), p.stat().st_mtime_ns) for p in workflows)))


@functools.lru_cache(maxsize=2)
def _model_sets_of(stamps: tuple) -> tuple:
    script = _load_download_script()
    found: dict[tuple[str, str], tuple[str, ...]] = {}
    for set_name in script.MODEL_SETS:
        try:
            models = script.collect_models(script.resolve_targets([set_name]))
        except script.InputError as error:
            log.warning("Reelsmith: model set %s unreadable: %s", set_name, error)
            continue
        for model in models:
            found[(model.directory, model.name)] = found.get((model.directory, model.name), ()) + (set_name,)
    return tuple(found.items())


def download_models_command(set_name: str, models_dir: str | None) -> str:
    where = f"--models-dir {shlex.quote(models_dir)}" if models_dir else "--comfyui /path/to/ComfyUI"
    script = PACK_ROOT / "scripts" / "download_models.py"
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} {set_name} {where}"


def download_commands(files, models_dir: str | None, listed: dict) -> list[str]:
    """Commands that fetch missing single files [(models folder, name)]: the pack's downloader for the fewest
    shipped model sets that hold them (it fetches a whole set, verified, skipping what is present), then a
    resumable curl for a file only the workflow's own model list (`listed`: name -> entry) knows."""
    sets_of = shipped_model_sets()
    uncovered = [f for f in files if sets_of.get(f)]
    commands = []
    while uncovered:  # greedy set cover: the set holding most of what is still missing
        counts: dict[str, int] = {}
        for f in uncovered:
            for name in sets_of[f]:
                counts[name] = counts.get(name, 0) + 1
        best = max(counts, key=lambda name: counts[name])
        commands.append(download_models_command(best, models_dir))
        uncovered = [f for f in uncovered if best not in sets_of[f]]
    for folder, name in files:
        entry = listed.get(name)
        if sets_of.get((folder, name)) or not entry or not str(entry.get("url", "")).startswith("https://"):
            continue
        target = pathlib.PurePosixPath(models_dir or "models") / entry.get("directory", folder) / name
        commands.append(f"curl -L -C - --create-dirs -o {shlex.quote(str(target))} {shlex.quote(entry['url'])}")
    return commands


_HF_COMMAND = re.compile(r"hf download [^\n]*?(?=\s+\((?:if|then) |\s+—|,\s+then |$)", re.MULTILINE)


def _commands_in(message: str) -> list[str]:
    return [m.group(0).strip() for m in _HF_COMMAND.finditer(message)]


def _missing_in(message: str) -> list[str]:
    """The bulleted lines of an engine message ("  - path"), without their command part."""
    return [line.strip()[2:].split(" — ")[0] for line in message.splitlines() if line.startswith("  - ")]


def variant_from_names(family: str, names) -> str | None:
    """What file or folder names suggest, for the editor's estimate while the files are missing (loading
    always reads the variant from the weights)."""
    text = " ".join(n for n in names if n).lower()
    if family == "wan":
        for marker, variant in (("ti2v", "ti2v-5b"), ("5b", "ti2v-5b"), ("i2v", "i2v-a14b"), ("t2v", "t2v-a14b")):
            if marker in text:
                return variant
    if family == "ltx":
        for marker, variant in (("13b", "13b"), ("2b", "2b")):
            if re.search(rf"(?<![0-9]){marker}", text):
                return variant
    return None


def _variant_from_weights(family: str, files) -> str:
    shapes = checkpoint_io.read_shapes(files.transformer)
    if family == "wan":
        key = next((k for k in shapes if k.endswith("patch_embedding.weight")), None)
        if key is None:
            raise InvalidInputError(f"{files.transformer}: no patch_embedding.weight: not a Wan transformer.")
        return detect_wan_variant(shapes[key], str(files.transformer), tiny_ok=True).name
    return detect_ltx_variant(shapes, str(files.transformer), tiny_ok=True).name


SINGLE_FILE_WIDGETS = {  # loader widget -> ComfyUI models folder, in single-file mode
    "ReelsmithWanModelLoader": {"diffusion_model": "diffusion_models", "diffusion_model_low_noise": "diffusion_models",
                                "text_encoder": "text_encoders", "vae": "vae"},
    "ReelsmithLTXModelLoader": {"checkpoint": "checkpoints", "text_encoder": "text_encoders"},
}


def loader_status(node_type: str, widgets: dict, listed_models=(), models_dir: str | None = None,
                  file_exists=None) -> dict:
    """What POST loader_status answers for a loader's widget values (and its workflow's model list):
    {"ok", "family", "variant", "variant_source", "message", "missing", "commands", "alternatives"}: `commands`
    fetch everything missing (run them all), `alternatives` fetch the same files one by one."""
    if node_type not in LOADERS:
        raise InvalidInputError(f"{node_type!r} is not a Reelsmith model loader ({', '.join(LOADERS)}).")
    family, node_class = LOADERS[node_type]
    if models_dir is None:
        roots = host.models_roots()
        models_dir = str(roots[0]) if roots else None
    if family == "avatar":
        return avatar_loader_status(widgets, models_dir)
    listed = {m["name"]: m for m in listed_models if isinstance(m, dict) and isinstance(m.get("name"), str)}
    names = [str(v) for v in widgets.values() if isinstance(v, str)]
    try:
        files = node_class.resolve_files(**widgets)
    except ReelsmithError as error:
        message = str(error)
        missing, commands, alternatives = _missing_in(message), _commands_in(message), []
        if widgets.get("model") == wan.SINGLE_FILES:
            exists = file_exists or (lambda folder, name: host.model_file_path(folder, name).is_file())
            absent = []
            for widget, folder in SINGLE_FILE_WIDGETS[node_type].items():
                name = widgets.get(widget)
                if isinstance(name, str) and name != wan.NONE and not exists(folder, name):
                    absent.append((folder, name))
                    if not any(name in m for m in missing):
                        missing.append(f"{folder}/{name}")
            preferred = download_commands(absent, models_dir, listed)
            if preferred:
                commands, alternatives = preferred, [c for c in commands if c not in preferred]
        return {"ok": False, "family": family, "variant": variant_from_names(family, names),
                "variant_source": "file name", "message": message, "missing": missing, "commands": commands,
                "alternatives": alternatives}
    except TypeError as error:  # widget values of another pack version
        return {"ok": False, "family": family, "variant": None, "variant_source": None,
                "message": f"Cannot check this loader's widgets ({error}).", "missing": [], "commands": [],
                "alternatives": []}
    try:
        variant, source = _variant_from_weights(family, files), "weights"
    except (ReelsmithError, OSError) as error:
        variant, source = variant_from_names(family, names), "file name"
        log.info("Reelsmith: variant of %s not read from the weights: %s", node_type, error)
    return {"ok": True, "family": family, "variant": variant, "variant_source": source,
            "message": f"All files present ({files.layout}: {files.label}).", "missing": [], "commands": [],
            "alternatives": []}


def _shown(paths, models_dir: str | None) -> str:
    """Paths as the node shows them: relative to the models folder when inside it, several in one folder on one line
    ("folder/: a, b")."""
    prefix = f"{models_dir.rstrip('/')}/" if models_dir else None
    shown = [p[len(prefix):] if prefix and p.startswith(prefix) else p for p in paths]
    if len(shown) == 1:
        return shown[0]
    folder = os.path.commonpath(shown)
    return f"{folder}/: " + ", ".join(p[len(folder):].lstrip("/").strip() for p in shown)


def _avatar_set_commands(folder: pathlib.Path, parts, models_dir: str | None) -> tuple[list[str], list]:
    """The shipped model set commands that fetch these missing parts (only where download_models.py writes the
    set: the folder named by the workflows' model list, right under `models_dir`), and the parts no set covers."""
    try:
        relative = folder.relative_to(models_dir).as_posix() if models_dir else None
    except ValueError:
        relative = None
    listed = [name for directory, name in shipped_model_sets() if directory == relative]
    covered = [p for p in parts if any(fnmatch.fnmatchcase(name, p.include) for name in listed)]
    wanted = [(relative, name) for name in listed if any(fnmatch.fnmatchcase(name, p.include) for p in covered)]
    return download_commands(wanted, models_dir, {}), [p for p in parts if p not in covered]


def avatar_loader_status(widgets: dict, models_dir: str | None) -> dict:
    """loader_status of the Hunyuan Avatar loader: what its vendor folder lacks (each part of the download, the
    face detector as optional), with download_models.py's shipped set when the folder is where that set goes, else
    (and as the per-part alternatives) `hf download --include` commands. The family has one model: no variant."""
    answer = {"family": "avatar", "variant": None, "variant_source": None, "missing": [], "commands": [],
              "alternatives": []}
    model, precision = widgets.get("model"), str(widgets.get("precision", "bf16"))
    if not isinstance(model, str) or not model:
        return {**answer, "ok": False, "message": "Cannot check this loader's widgets (no model folder named)."}
    folder = avatar.avatar_folder(model)
    parts = avatar_layouts.missing_avatar_parts(folder, avatar.uses_fp8_checkpoint(precision))
    optional = [p for p in parts if p.optional]
    if len(optional) == len(parts):
        files = avatar.ReelsmithHunyuanAvatarLoader.resolve_files(model, precision)
        notes = "".join(f" Note: {note}." for note in files.notes)
        return {**answer, "ok": True, "message": f"All files present ({files.layout}: {files.label}).{notes}"}
    per_part = [avatar_layouts.download_command(folder, p.include) for p in parts]
    from_sets, uncovered = _avatar_set_commands(folder, parts, models_dir)
    commands = from_sets + [avatar_layouts.download_command(folder, p.include) for p in uncovered]
    where = "is incomplete" if folder.is_dir() else "is not downloaded yet"
    return {**answer, "ok": False,
            "message": f"HunyuanVideo-Avatar folder '{model}' ({folder}) {where}.",
            "missing": [f"{_shown(p.paths, models_dir)} — {p.what}" for p in parts],
            "commands": commands, "alternatives": [c for c in per_part if c not in commands]}


# ------------------------------------------------------------------------------------------ estimates

def _number(values: dict, name: str, kind=float, default=None):
    value = values.get(name, default)
    if value is None or isinstance(value, bool):
        raise InvalidInputError(f"estimate: '{name}' is missing.")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"estimate: '{name}' = {value!r} is not a number.") from None


def wan_phases(variant: str | None, steps: int, cfg_high: float, cfg_low: float, boundary: float,
               flow_shift: float, scheduler: str) -> list[tuple[int, float]]:
    """[(steps, cfg)] per expert: A14B's high-noise expert runs the steps whose timestep is at or above the
    boundary, as the sampler decides it (same scheduler, same shift)."""
    found = WAN_VARIANTS.get(variant or "")
    if found is None or not found.two_experts:
        return [(steps, cfg_high)]
    from ..engine.pipelines.schedulers import make_flow_scheduler
    schedule = make_flow_scheduler(scheduler, flow_shift)
    schedule.set_timesteps(steps)
    high = sum(1 for t in schedule.timesteps if float(t) >= boundary * schedule.config.num_train_timesteps)
    return [(high, cfg_high), (len(schedule.timesteps) - high, cfg_low)]


def size_problems(family: str, variant: str | None, width: int, height: int, frames: int) -> list[str]:
    """The engine's own validation of these values (what queueing would refuse)."""
    if family == "wan":
        multiple = WAN_VARIANTS[variant].size_multiple if variant in WAN_VARIANTS else wan.SIZE_STEP
        return wan_validation.wan_size_errors(width, height, frames, multiple)
    if family == "ltx":
        return ltx_validation.ltx_size_errors(width, height, frames)
    return []


def _avatar_windows(payload: dict, sampler: dict) -> tuple[int, str | None, float | None]:
    """(windows per step, what was assumed, the most audio the node accepts): whole audio runs as many 129-frame
    windows as the audio needs (engine/pipelines/avatar_windows.py); without `audio_seconds` (the editor cannot
    know the clip's length) one window is assumed."""
    if sampler.get("length") == FIRST_WINDOW:
        return 1, None, None
    fps = avatar_validation.parse_fps(sampler.get("fps", "25")) or 25.0
    if payload.get("audio_seconds") is not None:
        seconds = _number(payload, "audio_seconds")
        frames = video_frame_count(int(seconds * SAMPLE_RATE), fps)
        windows = plan_avatar_windows(max(frames, 1)).windows_per_step
        said = f"whole audio: {seconds:g} s is {frames} frames at {fps:g} fps, {windows} window(s) a step"
        return windows, said, None
    return 1, None, _number(sampler, "max_audio_seconds", float, DEFAULT_MAX_SECONDS)


def avatar_estimate(payload: dict, rows=None) -> dict:
    """estimate_for the Hunyuan Avatar sampler: one batched cond + uncond forward per step and window, at a square
    portrait of `image_size` (the editor does not know the portrait's aspect), and the windows its audio needs."""
    sampler, loader = payload.get("sampler") or {}, payload.get("loader") or {}
    image_size = _number(sampler, "image_size", int)
    steps, cfg = _number(sampler, "steps", int), _number(sampler, "cfg", float, 1.0)
    windows, assumed, max_seconds = _avatar_windows(payload, sampler)
    table = estimates.load_rows() if rows is None else rows

    def run(width: int, height: int, windows: int) -> estimates.Estimate:
        return estimates.estimate(table, estimates.EstimateRequest(
            gpu_device=str(payload.get("gpu_device") or ""), model_family="avatar", variant=None,
            precision=str(loader.get("precision", "bf16")), compile="off",
            attention=str(loader.get("attention", "auto")), offload=str(loader.get("offload", "none")), width=width, height=height, frames=WINDOW_VIDEO_FRAMES,
            phases=[(steps, cfg)], batched_guidance=True, windows=windows))

    result = run(image_size, image_size, windows)
    problems = avatar_validation.avatar_input_errors(image_size, sampler.get("fps", "25"))
    if result.seconds is not None:
        if max_seconds is not None:
            fps = avatar_validation.parse_fps(sampler.get("fps", "25")) or 25.0
            most = plan_avatar_windows(max(1, video_frame_count(int(max_seconds * SAMPLE_RATE), fps))).windows_per_step
            result.lines.append(f"whole audio: 1 window assumed (the audio's length is not known here); each further "
                                f"window adds ≈ {estimates.format_duration(result.seconds)}, up to {most} windows "
                                f"(≈ {estimates.format_duration(result.seconds * most)}) at max_audio_seconds "
                                f"{max_seconds:g}")
        elif assumed:
            result.lines.append(assumed)
        if not problems:
            width, height = reference_size(image_size, round(long_side_cap(image_size)), image_size)
            tall = run(width, height, windows)
            if tall.seconds is not None:
                result.lines.append(f"size: a square portrait assumed ({image_size}x{image_size}); the tallest one at "
                                    f"this image_size renders {width}x{height}: "
                                    f"≈ {estimates.format_duration(tall.seconds)}")
    answer = result.to_json()
    answer["problems"] = problems
    return answer


def estimate_for(payload: dict, rows=None) -> dict:
    """What POST estimate answers: {"node_type", "gpu_device", "variant", "variant_source", "sampler": {widgets},
    "loader": {widgets}} -> the estimate (engine/estimates.py) plus the size problems validation would report."""
    node_type = payload.get("node_type")
    rule = SAMPLER_RULES.get(node_type)
    if rule is None:
        raise InvalidInputError(f"{node_type!r} is not a Reelsmith sampler.")
    if rule.family == "avatar":
        return avatar_estimate(payload, rows)
    sampler, loader = payload.get("sampler") or {}, payload.get("loader") or {}
    variant = payload.get("variant")
    width, height = _number(sampler, "width", int), _number(sampler, "height", int)
    frames = _number(sampler, "frames", int)
    steps = _number(sampler, "steps", int)
    if rule.family == "wan":
        phases = wan_phases(variant, steps, _number(sampler, "cfg_high"), _number(sampler, "cfg_low", float, 1.0),
                            _number(sampler, "boundary", float, 0.875), _number(sampler, "flow_shift", float, 5.0),
                            str(sampler.get("scheduler", "unipc")))
    else:
        phases = [(steps, _number(sampler, "cfg", float, 1.0))]
    two_experts = (rule.family == "wan" and variant in WAN_VARIANTS and WAN_VARIANTS[variant].two_experts
                   and loader.get("offload", "none") == "none")
    request = estimates.EstimateRequest(
        gpu_device=str(payload.get("gpu_device") or ""), model_family=rule.family, variant=variant,
        precision=str(loader.get("precision", "bf16")), compile=str(loader.get("compile", "off")),
        attention=str(loader.get("attention", "auto")), width=width, height=height, frames=frames, phases=phases,
        two_experts_resident=two_experts, variant_source=str(payload.get("variant_source") or "weights"),
        offload=str(loader.get("offload", "none")))
    result = estimates.estimate(estimates.load_rows() if rows is None else rows, request).to_json()
    result["problems"] = size_problems(rule.family, variant, width, height, frames)
    return result


# ------------------------------------------------------------------------------------------ aiohttp glue

def _inside_model_folders(name: str) -> bool:
    """A combo value as ComfyUI lists model files and folders: relative, no '..'."""
    parts = name.replace("\\", "/").split("/")
    return not name.startswith(("/", "\\")) and ".." not in parts and ":" not in parts[0]


def register_routes() -> bool:
    """Add the routes to ComfyUI's server; False (quietly) when there is none (tests, scripts)."""
    if importlib.util.find_spec("server") is None:
        return False
    try:
        from aiohttp import web
        from server import PromptServer
        routes = PromptServer.instance.routes
    except Exception as error:  # no running PromptServer (e.g. imported by a script with ComfyUI on the path)
        log.debug("Reelsmith: editor routes not registered: %s", error)
        return False

    async def read_json(request) -> dict:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise InvalidInputError("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise InvalidInputError("the request body must be a JSON object")
        return body

    def answer(compute):
        try:
            return web.json_response(compute())
        except ReelsmithError as error:
            return web.json_response({"error": str(error)}, status=400)
        except Exception as error:  # never a 500 page for the editor: say what failed
            log.exception("Reelsmith editor route failed")
            return web.json_response({"error": f"{type(error).__name__}: {error}"}, status=500)

    @routes.get(f"{ROUTE_PREFIX}/rules")
    async def get_rules(request):
        return answer(sampler_rules)

    @routes.post(f"{ROUTE_PREFIX}/loader_status")
    async def post_loader_status(request):
        try:
            body = await read_json(request)
        except InvalidInputError as error:
            return web.json_response({"error": str(error)}, status=400)
        widgets = body.get("widgets") if isinstance(body.get("widgets"), dict) else {}
        models = body.get("models") if isinstance(body.get("models"), list) else []
        outside = [v for v in widgets.values() if isinstance(v, str) and not _inside_model_folders(v)]
        if outside:  # the editor only sends names from ComfyUI's own lists; never look outside them
            return web.json_response({"error": f"not a model name: {outside[0]!r}"}, status=400)
        return answer(lambda: loader_status(str(body.get("node_type")), widgets, models))

    @routes.post(f"{ROUTE_PREFIX}/estimate")
    async def post_estimate(request):
        try:
            body = await read_json(request)
        except InvalidInputError as error:
            return web.json_response({"error": str(error)}, status=400)
        return answer(lambda: estimate_for(body))

    return True
