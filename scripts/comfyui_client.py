"""A small client for ComfyUI's HTTP + websocket API: start a server, queue a workflow, follow it, fetch outputs.

Importable on its own (standard library + the `websocket-client` package; it never imports the pack), so it
works on a laptop that reaches a rented GPU's ComfyUI through an SSH tunnel, in the end-to-end tests, and in
`scripts/render.py`.

Protocol facts it relies on (ComfyUI 0.8.0, server.py / execution.py / main.py):
- POST /prompt {"prompt", "client_id", "prompt_id"} -> 200 {"prompt_id", "number", "node_errors"} or
  400 {"error": {...}, "node_errors": {node_id: {"errors": [...], "class_type", "dependent_outputs"}}}.
- GET /ws?clientId=ID: JSON text messages {"type", "data"} for that client (binary frames are previews):
  execution_start, execution_cached {nodes}, executing {node}, progress {value, max, node}, executed,
  execution_success, execution_error {node_id, node_type, exception_message, exception_type, traceback},
  execution_interrupted; finally executing {node: None, prompt_id} after the history entry is written.
- GET /history/ID -> {ID: {"prompt", "outputs": {node_id: {"images"|"gifs"|...: [{filename, subfolder, type}]}},
  "status": {"status_str", "completed", "messages": [[event, data], ...]}}} once the prompt has finished.
- GET /view?filename&subfolder&type streams a file; POST /interrupt {"prompt_id"}; POST /queue {"delete": [ID]}.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

DEMO_SUBFOLDER = "reelsmith-demo"
"""Demo models live in this subfolder of each model folder, so object_info lists them as `reelsmith-demo/<name>`."""

DEMO_SIZE_UNIT = 256  # the invisible watermark needs room (>= 128 px, 32 px blocks); still quick on a CPU
DEMO_INT_LIMITS = {"frames": 5, "length": 5, "steps": 2}
DEMO_TO_MINIMUM = ("image_size",)  # set to the widget's declared minimum (Hunyuan Avatar: 256 px)
# combo widgets set to their cheapest choice where the node offers it (Hunyuan Avatar: one 129-frame window, however
# long the audio; the clip itself stays as long as the audio up to that)
DEMO_COMBO_CHOICES = {"length": "first 129 frames"}
DEMO_LAST_KEYFRAME = 8
DEMO_NODE_PREFIX = "Reelsmith"

MODEL_FOLDER_KEYS = {
    # ComfyUI folder name -> sub-directories of a models base directory (as in extra_model_paths.yaml.example)
    "checkpoints": ["checkpoints"],
    "configs": ["configs"],
    "diffusion_models": ["diffusion_models", "unet"],
    "text_encoders": ["text_encoders", "clip"],
    "vae": ["vae"],
    "loras": ["loras"],
    "clip_vision": ["clip_vision"],
    "diffusers": ["diffusers"],
    "controlnet": ["controlnet"],
    "embeddings": ["embeddings"],
    "upscale_models": ["upscale_models"],
    "latent_upscale_models": ["latent_upscale_models"],
    "style_models": ["style_models"],
    "vae_approx": ["vae_approx"],
    "audio_encoders": ["audio_encoders"],
    "model_patches": ["model_patches"],
    "classifiers": ["classifiers"],
}

_UI_ONLY_NODE_TYPES = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute", "GetNode", "SetNode"}
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


# --------------------------------------------------------------------------------------------- errors


class ComfyUIError(Exception):
    """Anything that went wrong talking to, or starting, ComfyUI."""


class ServerStartError(ComfyUIError):
    """ComfyUI did not come up; the message carries the tail of its log."""


class WorkflowError(ComfyUIError):
    """The workflow file, its conversion, a --set or the demo rewrite is not usable."""


class SetError(WorkflowError):
    """A --set names a node or input that the workflow does not have, or is malformed."""


class WorkflowRejected(ComfyUIError):
    """POST /prompt answered 400: the prompt failed validation."""

    def __init__(self, error: Any, node_errors: Mapping[str, Any] | None, prompt: Mapping[str, Any] | None = None):
        self.error = error if isinstance(error, dict) else {"message": str(error)}
        self.node_errors = dict(node_errors or {})
        self.prompt = prompt or {}
        super().__init__(self.format())

    def format(self) -> str:
        lines = [f"ComfyUI rejected the workflow: {self.error.get('message', 'invalid prompt')}"]
        if self.error.get("details") and not self.node_errors:
            lines.append(f"  {self.error['details']}")
        for node_id, info in sorted(self.node_errors.items(), key=lambda kv: _node_sort_key(kv[0])):
            class_type = info.get("class_type") or _class_of(self.prompt, node_id)
            lines.append(f"  node {node_id} ({class_type}, title {_title_of(self.prompt, node_id)!r}):")
            for err in info.get("errors", []):
                detail = f": {err['details']}" if err.get("details") else ""
                lines.append(f"    - {err.get('message', err.get('type', 'error'))}{detail}")
        return "\n".join(lines)


class NodeExecutionError(ComfyUIError):
    """A node raised while the prompt ran (websocket `execution_error`)."""

    def __init__(self, prompt_id: str, node_id: str | None, node_type: str | None, title: str | None,
                 exception_type: str, exception_message: str, traceback: Sequence[str] = ()):
        self.prompt_id = prompt_id
        self.node_id = node_id
        self.node_type = node_type
        self.title = title
        self.exception_type = exception_type
        self.exception_message = exception_message
        self.traceback = list(traceback or [])
        super().__init__(self.format(with_traceback=False))

    @classmethod
    def from_message(cls, data: Mapping[str, Any], prompt: Mapping[str, Any] | None) -> NodeExecutionError:
        node_id = data.get("node_id")
        node_id = None if node_id is None else str(node_id)
        return cls(
            prompt_id=str(data.get("prompt_id", "")),
            node_id=node_id,
            node_type=data.get("node_type") or _class_of(prompt or {}, node_id),
            title=_title_of(prompt or {}, node_id) if node_id is not None else None,
            exception_type=str(data.get("exception_type", "")),
            exception_message=str(data.get("exception_message", "")).strip(),
            traceback=data.get("traceback") or [],
        )

    def format(self, with_traceback: bool = True) -> str:
        message = "\n    ".join(self.exception_message.splitlines())
        head = (f"ComfyUI reported an error in node {self.node_id} "
                f"(class {self.node_type}, title {self.title!r}):\n  {self.exception_type}: {message}")
        if with_traceback and self.traceback:
            body = "".join(self.traceback).rstrip()
            head += "\nTraceback (from ComfyUI):\n" + "\n".join("  " + line for line in body.splitlines())
        return head


class Interrupted(ComfyUIError):
    """The prompt was interrupted on the server (`execution_interrupted`)."""

    def __init__(self, prompt_id: str, node_id: str | None = None, node_type: str | None = None):
        self.prompt_id, self.node_id, self.node_type = prompt_id, node_id, node_type
        where = f" in node {node_id} ({node_type})" if node_id is not None else ""
        super().__init__(f"execution of prompt {prompt_id} was interrupted{where}")


# --------------------------------------------------------------------------------------------- helpers


def _node_sort_key(node_id: Any):
    text = str(node_id)
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def _title_of(prompt: Mapping[str, Any], node_id: Any) -> str | None:
    node = prompt.get(str(node_id)) if isinstance(prompt, Mapping) else None
    if not isinstance(node, Mapping):
        return None
    meta = node.get("_meta") or {}
    return meta.get("title") or node.get("class_type")


def _class_of(prompt: Mapping[str, Any], node_id: Any) -> str | None:
    node = prompt.get(str(node_id)) if isinstance(prompt, Mapping) and node_id is not None else None
    return node.get("class_type") if isinstance(node, Mapping) else None


def find_free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _input_specs(object_info: Mapping[str, Any] | None, class_type: str) -> dict[str, Any]:
    """{input name: spec list} of a node class (required + optional), {} when unknown."""
    info = (object_info or {}).get(class_type)
    if not isinstance(info, Mapping):
        return {}
    specs: dict[str, Any] = {}
    for section in ("required", "optional"):
        specs.update((info.get("input") or {}).get(section) or {})
    return specs


def combo_options(spec: Any) -> list | None:
    """The option list of a COMBO input spec in either object_info style, else None."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return None
    kind = spec[0]
    if isinstance(kind, list):
        return kind
    if kind == "COMBO" and len(spec) > 1 and isinstance(spec[1], Mapping):
        options = spec[1].get("options")
        return list(options) if isinstance(options, (list, tuple)) else []
    return None


def _spec_type(spec: Any) -> Any:
    return spec[0] if isinstance(spec, (list, tuple)) and spec else None


def _spec_opts(spec: Any) -> Mapping[str, Any]:
    return spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], Mapping) else {}


# --------------------------------------------------------------------------------------------- workflow format


def is_api_format(workflow: Any) -> bool:
    return (isinstance(workflow, Mapping) and len(workflow) > 0
            and all(isinstance(node, Mapping) and "class_type" in node for node in workflow.values()))


def is_ui_format(workflow: Any) -> bool:
    return isinstance(workflow, Mapping) and isinstance(workflow.get("nodes"), list) and "links" in workflow


def unwrap_workflow(workflow: Any) -> Any:
    """Accept the body POST /prompt takes ({"prompt": {...}, ...}) as well as a bare API-format prompt."""
    if isinstance(workflow, Mapping) and "prompt" in workflow and is_api_format(workflow["prompt"]):
        return workflow["prompt"]
    return workflow


def workflow_format(workflow: Any) -> str:
    """'api' or 'ui'; raises WorkflowError for anything else."""
    workflow = unwrap_workflow(workflow)
    if is_api_format(workflow):
        return "api"
    if is_ui_format(workflow):
        return "ui"
    raise WorkflowError("not a ComfyUI workflow: expected UI format (a JSON object with 'nodes' and 'links', as the "
                        "graph editor saves it) or API format ({node_id: {'class_type', 'inputs'}}, as POST /prompt "
                        "takes)")


def load_ui_converter() -> Callable[[dict, dict], dict]:
    try:
        from comfy_cli.workflow_to_api import convert_ui_to_api
    except ImportError as exc:
        raise WorkflowError(
            "this workflow is in UI format (as the graph editor saves it); converting it to API format needs "
            f"comfy-cli ({exc}). Run `pip install comfy-cli`, or pass an API-format file "
            "(in the editor: Workflow > Export (API)).") from exc
    return convert_ui_to_api


def _ui_node_types(workflow: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """(node types used, subgraph ids defined) of a UI workflow, including nodes inside subgraph definitions."""
    subgraphs = ((workflow.get("definitions") or {}).get("subgraphs") or [])
    subgraph_ids = {sg.get("id") for sg in subgraphs if isinstance(sg, Mapping)}
    types: set[str] = set()
    for nodes in [workflow.get("nodes") or []] + [sg.get("nodes") or [] for sg in subgraphs if isinstance(sg, Mapping)]:
        for node in nodes:
            if isinstance(node, Mapping) and isinstance(node.get("type"), str):
                types.add(node["type"])
    return types, subgraph_ids


def to_api_format(workflow: Any, object_info: Mapping[str, Any]) -> dict:
    """A deep copy of the workflow in API format; UI format is converted with comfy-cli's converter."""
    workflow = unwrap_workflow(workflow)
    kind = workflow_format(workflow)
    if kind == "api":
        return copy.deepcopy(dict(workflow))
    convert = load_ui_converter()
    types, subgraph_ids = _ui_node_types(workflow)
    unknown = sorted(t for t in types - _UI_ONLY_NODE_TYPES - subgraph_ids if t not in object_info)
    if unknown:
        raise WorkflowError("the server does not know these node types (is the custom node pack that provides them "
                            f"installed and did it import?): {', '.join(unknown)}")

    class _Collect(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages: list[str] = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    collector = _Collect()
    converter_logger = logging.getLogger("comfy_cli.workflow_to_api")
    converter_logger.addHandler(collector)
    try:
        api = convert(copy.deepcopy(dict(workflow)), dict(object_info))
    except Exception as exc:  # the converter's own error types vary between comfy-cli releases
        raise WorkflowError(f"could not convert the UI-format workflow to API format: {exc}") from exc
    finally:
        converter_logger.removeHandler(collector)
    failed = [m for m in collector.messages if m.startswith("Failed to convert")]
    if failed:
        raise WorkflowError("could not convert the UI-format workflow to API format:\n  " + "\n  ".join(failed))
    if not api:
        raise WorkflowError("the UI-format workflow converted to an empty prompt (all nodes muted or bypassed?)")
    return api


# --------------------------------------------------------------------------------------------- --set


def parse_set(text: str) -> tuple[str, str, Any]:
    """'TITLE.input=value' -> (TITLE, input, value). TITLE may contain dots; the input name is after the last dot
    before '='. The value is parsed as JSON when possible (42, 1.5, true, "quoted text", [..]), else kept as text."""
    if "=" not in text:
        raise SetError(f"--set {text!r}: expected TITLE.input=value")
    target, raw = text.split("=", 1)
    if "." not in target:
        raise SetError(f"--set {text!r}: expected TITLE.input=value (no '.' between node title and input name)")
    title, name = target.rsplit(".", 1)
    title, name = title.strip(), name.strip()
    if not title or not name:
        raise SetError(f"--set {text!r}: empty node title or input name")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return title, name, _RawValue(raw, value)


class _RawValue:
    """A parsed --set value that remembers its text, so a STRING input gets the text as typed."""

    def __init__(self, raw: str, parsed: Any):
        self.raw, self.parsed = raw, parsed

    def __repr__(self):
        return repr(self.parsed)


def _node_label(api: Mapping[str, Any], node_id: str) -> str:
    return f"node {node_id} {_title_of(api, node_id)!r} ({_class_of(api, node_id)})"


def find_nodes(api: Mapping[str, Any], selector: str) -> list[str]:
    """Node ids whose title (_meta.title) is `selector`; else whose class_type is; else the node id itself."""
    for key in (lambda n: (n.get("_meta") or {}).get("title"), lambda n: n.get("class_type")):
        found = [nid for nid, node in api.items() if key(node) == selector]
        if found:
            return sorted(found, key=_node_sort_key)
    return [selector] if selector in api else []


def apply_sets(api: dict, sets: Iterable[str | tuple], object_info: Mapping[str, Any] | None = None) -> list[str]:
    """Set node inputs in place from 'TITLE.input=value' strings (or parsed (title, input, value) tuples).

    TITLE matches `_meta.title` (what UI-format titles become), else class_type, else a node id. An input is known
    when the node already has it or, given object_info, when its class declares it. Returns the changes made."""
    changes = []
    for item in sets:
        title, name, value = parse_set(item) if isinstance(item, str) else item
        matches = find_nodes(api, title)
        if not matches:
            listing = "\n  ".join(_node_label(api, nid) for nid in sorted(api, key=_node_sort_key))
            raise SetError(f"--set: no node titled {title!r} (nor of that class or id). Nodes:\n  {listing}")
        if len(matches) > 1:
            raise SetError(f"--set: {title!r} matches several nodes ({', '.join(matches)}); give one a unique "
                                f"title, or use its node id, e.g. --set '{matches[0]}.{name}=...'")
        node_id = matches[0]
        node = api[node_id]
        inputs = node.setdefault("inputs", {})
        specs = _input_specs(object_info, node.get("class_type", ""))
        if name not in inputs and name not in specs:
            known = list(inputs) + [k for k in specs if k not in inputs]
            raise SetError(f"--set: {_node_label(api, node_id)} has no input {name!r}. "
                                f"Inputs: {', '.join(known) or '(none)'}")
        if isinstance(value, _RawValue):
            spec = specs.get(name)
            options = combo_options(spec)
            if _spec_type(spec) == "STRING" or (options is not None and value.raw in options):
                value = value.raw
            else:
                value = value.parsed
        old = inputs.get(name, "<unset>")
        inputs[name] = value
        note = " (was a link; now a fixed value)" if _is_link(old) else ""
        changes.append(f"{_node_label(api, node_id)}: {name} = {value!r} (was {old!r}){note}")
    return changes


# --------------------------------------------------------------------------------------------- --demo


def _demo_option(value: str, options: Sequence[Any]) -> str | None:
    for sep in ("/", "\\"):
        candidate = f"{DEMO_SUBFOLDER}{sep}{value}"
        if candidate in options:
            return candidate
    return None


_LABEL_VALUES = {"none", "auto", "default", "off", "disabled"}


def _is_label(value: str) -> bool:
    """A combo value that names a choice, not a model ("single files (pick below)", "none"): needs no demo twin."""
    return any(ch.isspace() for ch in value) or value.strip().lower() in _LABEL_VALUES


def _is_demo_name(value: Any) -> bool:
    return isinstance(value, str) and value.startswith((DEMO_SUBFOLDER + "/", DEMO_SUBFOLDER + "\\"))


def _demo_unit(specs: Mapping[str, Any]) -> int:
    unit = DEMO_SIZE_UNIT
    for name in ("width", "height"):
        minimum = _spec_opts(specs.get(name)).get("min")
        if isinstance(minimum, (int, float)) and minimum > unit:
            unit = int(math.ceil(minimum / DEMO_SIZE_UNIT) * DEMO_SIZE_UNIT)
    return unit


def apply_demo(api: dict, object_info: Mapping[str, Any]) -> list[str]:
    """Point model selections at demo models and shrink the job, in place. Returns the changes made.

    Models: any string input V whose COMBO (per object_info) offers `reelsmith-demo/V` becomes that option; a combo
    that offers any `reelsmith-demo/` option but none for V is an error (all such inputs listed together), unless V
    is one of its options and a label rather than a model name (has whitespace, or is none/auto/default/off/disabled).
    Shrink, on nodes whose class_type starts with 'Reelsmith': width/height -> 512x256 landscape, 256x512
    portrait, 256x256 square (multiples of 256, raised to the declared minimum); frames/length -> the shortest valid clip (5, or 9
    when the widget steps by 8), steps -> 2 (never raised); keyframe frame_index values past 8 -> 8; image_size -> its
    minimum; a `length` combo offering 'first 129 frames' (audio-driven clips) -> that."""
    changes: list[str] = []
    missing: list[str] = []
    for node_id in sorted(api, key=_node_sort_key):
        node = api[node_id]
        class_type = node.get("class_type", "")
        inputs = node.get("inputs") or {}
        specs = _input_specs(object_info, class_type)
        label = _node_label(api, node_id)
        for name, value in list(inputs.items()):
            options = combo_options(specs.get(name))
            if not isinstance(value, str) or not options or _is_demo_name(value):
                continue
            demo = _demo_option(value, options)
            if demo is not None:
                inputs[name] = demo
                changes.append(f"{label}: {name} {value!r} -> {demo!r}")
            elif any(_is_demo_name(o) for o in options) and not (value in options and _is_label(value)):
                offered = ", ".join(repr(o) for o in options if _is_demo_name(o))
                missing.append(f"{label}: {name} = {value!r} has no demo model {DEMO_SUBFOLDER}/{value} "
                               f"(demo options: {offered})")
        if not class_type.startswith(DEMO_NODE_PREFIX):
            continue
        width, height = inputs.get("width"), inputs.get("height")
        unit = _demo_unit(specs)
        if _is_int(width) and _is_int(height):
            new_w, new_h = (2 * unit, unit) if width > height else (unit, 2 * unit) if width < height else (unit, unit)
            if (new_w, new_h) != (width, height):
                inputs["width"], inputs["height"] = new_w, new_h
                changes.append(f"{label}: width x height {width}x{height} -> {new_w}x{new_h}")
        else:
            for name, value in (("width", width), ("height", height)):
                if _is_int(value) and value != unit:
                    inputs[name] = unit
                    changes.append(f"{label}: {name} {value} -> {unit}")
        for name, limit in DEMO_INT_LIMITS.items():
            value = inputs.get(name)
            options = _spec_opts(specs.get(name))
            minimum, step = options.get("min"), options.get("step")
            if name in ("frames", "length") and isinstance(step, int) and step > 1:
                limit = step + 1  # the shortest valid clip: 4k+1 -> 5 frames, 8k+1 -> 9
            target = max(limit, int(minimum)) if isinstance(minimum, (int, float)) else limit
            if _is_int(value) and value > target:
                inputs[name] = target
                changes.append(f"{label}: {name} {value} -> {target}")
        # a keyframe pinned later in the clip moves to the last frame of the shortest clip (9 frames)
        value = inputs.get("frame_index")
        if _is_int(value) and value > DEMO_LAST_KEYFRAME:
            inputs["frame_index"] = DEMO_LAST_KEYFRAME
            changes.append(f"{label}: frame_index {value} -> {DEMO_LAST_KEYFRAME}")
        for name in DEMO_TO_MINIMUM:
            value, minimum = inputs.get(name), _spec_opts(specs.get(name)).get("min")
            if _is_int(value) and isinstance(minimum, (int, float)) and value > minimum:
                inputs[name] = int(minimum)
                changes.append(f"{label}: {name} {value} -> {int(minimum)}")
        for name, choice in DEMO_COMBO_CHOICES.items():
            value, options = inputs.get(name), combo_options(specs.get(name))
            if isinstance(value, str) and options and choice in options and value != choice:
                inputs[name] = choice
                changes.append(f"{label}: {name} {value!r} -> {choice!r}")
    if missing:
        raise WorkflowError("--demo: these model selections have no demo counterpart (make them with "
                            "scripts/make_demo_models.py --models-dir DIR):\n  " + "\n  ".join(missing))
    return changes


# --------------------------------------------------------------------------------------------- client


@dataclasses.dataclass
class Progress:
    """One progress event of a running prompt, passed to wait()'s callback."""

    event: str  # "start", "executing", "progress", "preview", "executed"; "tick" about once a second while idle
    prompt_id: str
    node_id: str | None = None
    class_type: str | None = None
    title: str | None = None
    value: int | None = None  # step, on "progress"
    total: int | None = None  # steps, on "progress"
    nodes_done: int = 0
    nodes_total: int = 0


class ComfyUIClient:
    """Talks to one ComfyUI server. queue() opens the websocket first, so wait() sees every message."""

    def __init__(self, url: str = "http://127.0.0.1:8188", timeout: float = 60.0, client_id: str | None = None):
        if "://" not in url:
            url = "http://" + url
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.client_id = client_id or uuid.uuid4().hex
        self.host = urllib.parse.urlsplit(self.url).hostname or ""
        handlers = [urllib.request.ProxyHandler({})] if self.host in _LOOPBACK_HOSTS else []
        self._opener = urllib.request.build_opener(*handlers)
        self._ws = None
        self.ws_error: str | None = None
        self._object_info: dict | None = None
        self._prompts: dict[str, dict] = {}
        self.last_node_errors: dict = {}

    # --- plumbing

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                ws.close()

    def _open(self, method: str, path: str, body: Any = None, timeout: float | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            return self._opener.open(request, timeout=timeout or self.timeout)
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, OSError) as exc:
            raise ComfyUIError(f"cannot reach ComfyUI at {self.url} ({method} {path}): "
                               f"{getattr(exc, 'reason', exc)}") from exc

    def _json(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        try:
            with self._open(method, path, body, timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")[:2000]
            raise ComfyUIError(f"ComfyUI answered {exc.code} to {method} {path}: {text}") from exc

    # --- endpoints

    def system_stats(self, timeout: float | None = None) -> dict:
        return self._json("GET", "/system_stats", timeout=timeout)

    def object_info(self, refresh: bool = False) -> dict:
        if self._object_info is None or refresh:
            self._object_info = self._json("GET", "/object_info")
        return self._object_info

    def history(self, prompt_id: str) -> dict | None:
        return (self._json("GET", f"/history/{urllib.parse.quote(prompt_id)}") or {}).get(prompt_id)

    def queue(self, prompt_api: Mapping[str, Any], extra_data: Mapping[str, Any] | None = None) -> str:
        """POST /prompt; returns the prompt id. Raises WorkflowRejected with node_errors on a 400."""
        self._connect_ws()
        prompt_id = uuid.uuid4().hex
        body = {"prompt": prompt_api, "client_id": self.client_id, "prompt_id": prompt_id}
        if extra_data:
            body["extra_data"] = dict(extra_data)
        try:
            with self._open("POST", "/prompt", body) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            try:
                answer = json.loads(text)
            except ValueError:
                answer = None
            if exc.code == 400 and isinstance(answer, dict):
                raise WorkflowRejected(answer.get("error"), answer.get("node_errors"), prompt_api) from None
            raise ComfyUIError(f"ComfyUI answered {exc.code} to POST /prompt: {text[:2000]}") from None
        prompt_id = str(answer.get("prompt_id", prompt_id))
        self.last_node_errors = answer.get("node_errors") or {}
        self._prompts[prompt_id] = copy.deepcopy(dict(prompt_api))
        return prompt_id

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop a prompt: drop it from the queue if it waits there, interrupt it if it runs (all, without an id)."""
        if prompt_id:
            self._json("POST", "/queue", {"delete": [prompt_id]})
            self._json("POST", "/interrupt", {"prompt_id": prompt_id})
        else:
            self._json("POST", "/interrupt", {})

    # --- websocket

    def _connect_ws(self) -> None:
        if self._ws is not None:
            return
        try:
            import websocket  # websocket-client
        except ImportError:
            self.ws_error = "the websocket-client package is not installed (pip install websocket-client)"
            return
        scheme = "wss" if self.url.startswith("https://") else "ws"
        ws_url = f"{scheme}://{self.url.split('://', 1)[1]}/ws?clientId={self.client_id}"
        try:
            self._ws = websocket.create_connection(ws_url, timeout=self.timeout)
            self.ws_error = None
        except Exception as exc:
            self._ws = None
            self.ws_error = f"websocket {ws_url} failed: {exc}"

    def _recv(self, wait_s: float):
        """One websocket message (str or bytes), None on timeout; drops the socket when it breaks."""
        if self._ws is None:
            time.sleep(wait_s)
            return None
        import websocket

        try:
            self._ws.settimeout(wait_s)
            return self._ws.recv()
        except websocket.WebSocketTimeoutException:
            return None
        except Exception as exc:
            self.ws_error = f"websocket closed: {exc}"
            self.close()
            return None

    def wait(self, prompt_id: str, on_progress: Callable[[Progress], Any] | None = None,
             timeout: float | None = None, poll_s: float = 5.0) -> dict:
        """Follow a queued prompt until it finishes; return its history entry.

        Raises NodeExecutionError (execution_error), Interrupted (execution_interrupted), ComfyUIError on timeout.
        The history is also polled every poll_s seconds (every 0.5 s without a websocket), so a lost websocket
        costs the progress display, not the result."""
        prompt = self._prompts.get(prompt_id, {})
        deadline = None if timeout is None else time.monotonic() + timeout
        cached: set[str] = set()
        done: set[str] = set()
        current: str | None = None
        last_step: tuple = (None, None)
        started = False
        last_poll = time.monotonic()
        reconnects = 0

        def emit(event: str, node_id: str | None = None, value=None, total=None):
            if on_progress is None:
                return
            nodes_total = max(len(prompt) - len(cached), len(done), 1) if prompt else len(done)
            on_progress(Progress(event, prompt_id, node_id, _class_of(prompt, node_id), _title_of(prompt, node_id),
                                 value, total, len(done), nodes_total))

        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise ComfyUIError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")
            if self._ws is None and self.ws_error and reconnects < 3 and "not installed" not in self.ws_error:
                reconnects += 1
                self._connect_ws()
            message = self._recv(1.0 if self._ws is not None else 0.5)
            interval = poll_s if self._ws is not None else 0.5
            if message is None and started:
                emit("tick", current, *last_step)
            if isinstance(message, bytes) and started:
                emit("preview", current, *last_step)  # binary frames carry the nodes' preview images
            if isinstance(message, str):
                try:
                    message = json.loads(message)
                except ValueError:
                    message = None
                kind, data = None, {}
                if isinstance(message, dict) and isinstance(message.get("data"), dict):
                    kind, data = message.get("type"), message["data"]
                if data.get("prompt_id") in (None, prompt_id):  # messages about other prompts are not ours
                    if kind == "execution_start":
                        started = True
                        emit("start")
                    elif kind == "execution_cached":
                        cached.update(str(n) for n in data.get("nodes") or [])
                    elif kind == "executing":
                        node = data.get("node")
                        if node is None and data.get("prompt_id") == prompt_id:
                            return self._finished(prompt_id, self._history_soon(prompt_id))
                        if node is not None:
                            node = str(data.get("display_node") or node)
                            if current is not None and current != node:
                                done.add(current)
                            current, last_step, started = node, (None, None), True
                            emit("executing", node)
                    elif kind == "progress":
                        node = data.get("node")
                        node = str(node) if node is not None else current
                        last_step = (data.get("value"), data.get("max"))
                        emit("progress", node, *last_step)
                    elif kind == "executed":
                        node = str(data.get("display_node") or data.get("node"))
                        done.add(node)
                        emit("executed", node)
                    elif kind == "execution_error" and data.get("prompt_id") == prompt_id:
                        raise NodeExecutionError.from_message(data, prompt)
                    elif kind == "execution_interrupted" and data.get("prompt_id") == prompt_id:
                        raise Interrupted(prompt_id, data.get("node_id"), data.get("node_type"))
                    elif kind == "execution_success" and data.get("prompt_id") == prompt_id:
                        interval = 0.0
            if time.monotonic() - last_poll >= interval:
                last_poll = time.monotonic()
                entry = self.history(prompt_id)
                if entry is not None:
                    return self._finished(prompt_id, entry)

    def _history_soon(self, prompt_id: str, wait_s: float = 10.0) -> dict:
        end = time.monotonic() + wait_s
        while True:
            entry = self.history(prompt_id)
            if entry is not None or time.monotonic() > end:
                if entry is None:
                    raise ComfyUIError(f"prompt {prompt_id} finished but has no history entry")
                return entry
            time.sleep(0.2)

    def _finished(self, prompt_id: str, entry: dict) -> dict:
        status = entry.get("status") or {}
        if status.get("status_str", "success") == "success":
            return entry
        prompt = self._prompts.get(prompt_id) or {}
        for event, data in status.get("messages") or []:
            if event == "execution_error":
                raise NodeExecutionError.from_message({"prompt_id": prompt_id, **data}, prompt)
            if event == "execution_interrupted":
                raise Interrupted(prompt_id, data.get("node_id"), data.get("node_type"))
        raise ComfyUIError(f"prompt {prompt_id} ended with status {status.get('status_str')!r}")

    # --- outputs

    @staticmethod
    def output_files(history_entry: Mapping[str, Any]) -> list[dict]:
        """Every file record ({filename, subfolder, type, ...}) under the entry's outputs, any key (images, gifs...)."""
        files = []
        outputs = history_entry.get("outputs") or {}
        for node_id in sorted(outputs, key=_node_sort_key):
            for key, items in (outputs[node_id] or {}).items():
                if isinstance(items, list):
                    for item in items:
                        if isinstance(item, Mapping) and isinstance(item.get("filename"), str):
                            files.append({"node_id": node_id, "key": key, **item})
        return files

    def download(self, file_info: Mapping[str, Any], out_dir: str | os.PathLike) -> pathlib.Path:
        """Fetch one file through /view into out_dir/[type unless 'output']/subfolder/filename."""
        filename = os.path.basename(str(file_info["filename"]).replace("\\", "/"))
        subfolder = str(file_info.get("subfolder") or "")
        kind = str(file_info.get("type") or "output")
        parts = [p for p in subfolder.replace("\\", "/").split("/") if p not in ("", ".", "..")]
        target_dir = pathlib.Path(out_dir, *([] if kind == "output" else [kind]), *parts)
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / filename
        query = urllib.parse.urlencode({"filename": file_info["filename"], "subfolder": subfolder, "type": kind})
        partial = target.with_name(target.name + ".part")
        try:
            with self._open("GET", f"/view?{query}", timeout=max(self.timeout, 300)) as response, \
                    open(partial, "wb") as handle:
                shutil.copyfileobj(response, handle, 1 << 20)
        except urllib.error.HTTPError as exc:
            partial.unlink(missing_ok=True)
            raise ComfyUIError(f"could not download {kind}/{subfolder}/{filename}: HTTP {exc.code}") from exc
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, target)
        return target

    def download_outputs(self, history_entry: Mapping[str, Any], out_dir: str | os.PathLike) -> list[pathlib.Path]:
        return [self.download(info, out_dir) for info in self.output_files(history_entry)]


# --------------------------------------------------------------------------------------------- server


def _parent_death_signal_hook() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGTERM when this (thread of the) process dies; Linux only.

    The libc function is looked up here, in the parent: the child only calls it (no imports after fork)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def hook() -> None:
        prctl(pr_set_pdeathsig, sigterm)

    return hook


def accelerator_available(python: str) -> bool:
    """True when torch in `python` sees CUDA/ROCm (or Apple MPS); False when torch is missing or sees none."""
    code = ("import torch,sys; mps=getattr(torch.backends,'mps',None); "
            "sys.exit(0 if torch.cuda.is_available() or (mps is not None and mps.is_available()) else 3)")
    try:
        return subprocess.run([python, "-c", code], check=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=300).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def extra_model_paths_yaml(custom_nodes_dir: str | os.PathLike | None, models_dirs: Sequence[str | os.PathLike]) -> str:
    """The text of an --extra-model-paths-config file: one custom_nodes dir plus models base dirs."""

    def q(path) -> str:
        return json.dumps(str(path))  # a JSON string is a valid YAML double-quoted scalar

    lines = ["# generated by Reelsmith's comfyui_client.py"]
    if custom_nodes_dir is not None:
        lines += ["reelsmith_custom_nodes:", f"  custom_nodes: {q(os.path.abspath(custom_nodes_dir))}"]
    for index, models_dir in enumerate(models_dirs):
        lines += [f"reelsmith_models_{index}:", f"  base_path: {q(os.path.abspath(models_dir))}"]
        for key, subdirs in MODEL_FOLDER_KEYS.items():
            lines.append(f"  {key}: {q(chr(10).join(subdirs))}")
    return "\n".join(lines) + "\n"


class ComfyUIServer:
    """Start ComfyUI from `comfyui_dir` on 127.0.0.1 (a free port) with extra node packs and model dirs; stop it.

    packs: {name: pack root} — each is loaded as custom node `name` through a custom_nodes dir of symlinks, named in a
    generated --extra-model-paths-config yaml (which also lists models_dirs with the standard folder keys).
    cpu: True/False, or None to pass --cpu when torch in `python` sees no accelerator.
    Use as a context manager; the process runs in its own session and its whole process group is killed on stop.
    On Linux the server also gets SIGTERM if the thread that started it dies (die_with_parent), so even a killed
    client leaves no server behind; start it from a thread that outlives it."""

    def __init__(self, comfyui_dir: str | os.PathLike, packs: Mapping[str, str | os.PathLike] | None = None,
                 models_dirs: Sequence[str | os.PathLike] = (), python: str | None = None, cpu: bool | None = None,
                 port: int | None = None, extra_args: Sequence[str] = (), log_path: str | os.PathLike | None = None,
                 startup_timeout: float = 180.0, env: Mapping[str, str] | None = None,
                 die_with_parent: bool = True):
        self.comfyui_dir = pathlib.Path(comfyui_dir).resolve()
        self.packs = {name: pathlib.Path(path).resolve() for name, path in (packs or {}).items()}
        self.models_dirs = [pathlib.Path(p).resolve() for p in models_dirs]
        self.python = python or sys.executable
        self.cpu = cpu
        self.port = port
        self.extra_args = list(extra_args)
        self.log_path = pathlib.Path(log_path).resolve() if log_path else None
        self.startup_timeout = startup_timeout
        self.env = dict(env) if env is not None else None
        self.die_with_parent = die_with_parent
        self.process: subprocess.Popen | None = None
        self.work_dir: pathlib.Path | None = None
        self.yaml_path: pathlib.Path | None = None
        self.custom_nodes_dir: pathlib.Path | None = None
        self.command: list[str] = []
        self.port_in_use: int | None = None
        self.url = ""
        self.notes: list[str] = []
        self._log_handle = None

    def __enter__(self) -> ComfyUIServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- start

    def start(self) -> ComfyUIServer:
        if not (self.comfyui_dir / "main.py").is_file():
            raise ServerStartError(f"{self.comfyui_dir} is not a ComfyUI directory (no main.py)")
        try:
            self._prepare()
            for attempt in range(3):
                self._launch(self.port or find_free_port())
                try:
                    self._wait_ready()
                    return self
                except ServerStartError:
                    if self.port is None and attempt < 2 and "address already in use" in self.log_tail(30).lower():
                        self._kill()
                        continue
                    raise
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare(self) -> None:
        self.work_dir = pathlib.Path(tempfile.mkdtemp(prefix="reelsmith-comfyui-"))
        if self.log_path is None:
            self.log_path = self.work_dir / "comfyui.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        installed = self.comfyui_dir / "custom_nodes"
        self.custom_nodes_dir = self.work_dir / "custom_nodes"
        self.custom_nodes_dir.mkdir()
        linked = 0
        for name, root in self.packs.items():
            if not (root / "__init__.py").is_file():
                raise ServerStartError(f"node pack {root} has no __init__.py")
            same = [p for p in (installed.iterdir() if installed.is_dir() else []) if p.resolve() == root]
            if same:
                self.notes.append(f"{root} is already installed as {same[0]}; not loading it a second time")
                continue
            if (installed / name).exists():
                self.notes.append(f"warning: {installed / name} is another copy of {name!r}; both load, the one "
                                  "imported last wins for node classes they share")
            (self.custom_nodes_dir / name).symlink_to(root, target_is_directory=True)
            linked += 1
        self.yaml_path = self.work_dir / "extra_model_paths.yaml"
        self.yaml_path.write_text(extra_model_paths_yaml(self.custom_nodes_dir if linked else None, self.models_dirs))
        if self.cpu is None:
            self.cpu = not accelerator_available(self.python)

    def _launch(self, port: int) -> None:
        self.port_in_use = port
        self.url = f"http://127.0.0.1:{port}"
        self.command = [self.python, "main.py", "--listen", "127.0.0.1", "--port", str(port),
                        "--extra-model-paths-config", str(self.yaml_path)]
        if self.cpu:
            self.command.append("--cpu")
        self.command += self.extra_args
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONUNBUFFERED"] = "1"
        if self._log_handle is not None:
            self._log_handle.close()
        self._log_handle = open(self.log_path, "ab")
        self._log_handle.write(f"$ {' '.join(self.command)}\n".encode())
        self._log_handle.flush()
        self.process = subprocess.Popen(
            self.command, cwd=self.comfyui_dir, env=env, stdin=subprocess.DEVNULL, stdout=self._log_handle,
            stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_parent_death_signal_hook() if self.die_with_parent else None)

    def _wait_ready(self) -> None:
        client = ComfyUIClient(self.url, timeout=5)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise ServerStartError(f"ComfyUI exited with code {code} while starting. Log {self.log_path}, "
                                       f"last lines:\n{self.log_tail()}")
            try:
                stats = client.system_stats(timeout=5)
                argv = (stats.get("system") or {}).get("argv") or []
                if str(self.yaml_path) in argv or not argv:
                    return
                raise ServerStartError(f"another server answers on port {self.port_in_use}")
            except ComfyUIError as exc:
                if isinstance(exc, ServerStartError):
                    raise
            if time.monotonic() > deadline:
                raise ServerStartError(f"ComfyUI did not answer GET /system_stats within {self.startup_timeout:.0f} s. "
                                       f"Log {self.log_path}, last lines:\n{self.log_tail()}")
            time.sleep(0.5)

    # --- stop

    def log_text(self) -> str:
        try:
            return pathlib.Path(self.log_path).read_text(errors="replace") if self.log_path else ""
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _kill(self, grace_s: float = 15.0) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        try:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(grace_s)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if hasattr(os, "killpg"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)  # the group: the server and anything it started
            else:
                with contextlib.suppress(OSError):
                    process.kill()
            with contextlib.suppress(Exception):
                process.wait(10)

    def stop(self) -> None:
        """Terminate ComfyUI, then kill its process group; remove the generated files (and the default log)."""
        try:
            self._kill()
        finally:
            if self._log_handle is not None:
                self._log_handle.close()
                self._log_handle = None
            if self.work_dir is not None:
                shutil.rmtree(self.work_dir, ignore_errors=True)
                self.work_dir = None
