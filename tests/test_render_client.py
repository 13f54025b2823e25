"""scripts/render.py and scripts/comfyui_client.py without ComfyUI: --set, --demo, UI -> API conversion, argument
errors, a fake ComfyUI (aiohttp HTTP + websocket on 127.0.0.1) for queue / progress / download / errors, and
ComfyUIServer's start / stop against a stub main.py."""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import json
import os
import pathlib
import sys
import textwrap
import threading
import time
from typing import ClassVar

import pytest

PACK_ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPTS_DIR = PACK_ROOT / "scripts"
if str(SCRIPTS_DIR) not in sys.path:
    sys.path.insert(0, str(SCRIPTS_DIR))

import comfyui_client as cc


def _load_render():
    spec = importlib.util.spec_from_file_location("reelsmith_render_cli", SCRIPTS_DIR / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _load_render()

# --- a small object_info and workflow (shapes as ComfyUI 0.8.0 serves them)

OBJECT_INFO = {
    "ReelsmithModelLoader": {"input": {"required": {
        "model_name": [["reelsmith-demo/wan-t2v.safetensors", "wan-t2v.safetensors", "wan-i2v.safetensors"], {}],
        "precision": [["bf16", "fp8"], {"default": "bf16"}],
    }}, "output": ["REELSMITH_MODEL"], "output_node": False},
    "ReelsmithSampler": {"input": {"required": {
        "model": ["REELSMITH_MODEL", {}],
        "prompt": ["STRING", {"multiline": True}],
        "width": ["INT", {"default": 1280, "min": 32, "max": 4096, "step": 32}],
        "height": ["INT", {"default": 720, "min": 32, "max": 4096, "step": 32}],
        "frames": ["INT", {"default": 81, "min": 1, "max": 1024, "step": 4}],
        "steps": ["INT", {"default": 30, "min": 1, "max": 200}],
        "seed": ["INT", {"default": 0, "min": 0, "max": 2 ** 64 - 1}],
        "sampler": ["COMBO", {"options": ["unipc", "euler"]}],
    }, "optional": {"negative_prompt": ["STRING", {}]}}, "output": ["IMAGE"], "output_node": False},
    "ReelsmithSaveVideo": {"input": {"required": {"images": ["IMAGE", {}],
                                                  "filename_prefix": ["STRING", {"default": "Reelsmith"}]}},
                           "output": [], "output_node": True},
    "VAELoader": {"input": {"required": {"vae_name": ["COMBO", {"options": [
        "wan_2.1_vae.safetensors", "reelsmith-demo/wan_2.1_vae.safetensors"]}]}}, "output": ["VAE"]},
    "EmptyImage": {"input": {"required": {
        "width": ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}],
        "height": ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}],
        "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
        "color": ["INT", {"default": 0, "min": 0, "max": 16777215, "step": 1, "display": "color"}]}},
        "input_order": {"required": ["width", "height", "batch_size", "color"]},
        "output": ["IMAGE"], "output_is_list": [False], "output_name": ["IMAGE"], "name": "EmptyImage",
        "display_name": "EmptyImage", "description": "", "python_module": "nodes", "category": "image",
        "output_node": False},
    "SaveImage": {"input": {"required": {"images": ["IMAGE", {}],
                                         "filename_prefix": ["STRING", {"default": "ComfyUI"}]},
                            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}},
                  "input_order": {"required": ["images", "filename_prefix"], "hidden": ["prompt", "extra_pnginfo"]},
                  "output": [], "output_is_list": [], "output_name": [], "name": "SaveImage",
                  "display_name": "Save Image", "description": "", "python_module": "nodes", "category": "image",
                  "output_node": True},
}

WORKFLOW = {
    "1": {"class_type": "ReelsmithModelLoader", "inputs": {"model_name": "wan-t2v.safetensors", "precision": "bf16"},
          "_meta": {"title": "Load Wan"}},
    "2": {"class_type": "ReelsmithSampler", "_meta": {"title": "Sampler"},
          "inputs": {"model": ["1", 0], "prompt": "a fox in the snow", "width": 1280, "height": 720, "frames": 81,
                     "steps": 30, "seed": 1, "sampler": "unipc"}},
    "3": {"class_type": "ReelsmithSaveVideo", "inputs": {"images": ["2", 0], "filename_prefix": "fox"},
          "_meta": {"title": "Save"}},
}


def wf():
    return copy.deepcopy(WORKFLOW)


# --- --set


def test_parse_set_splits_on_the_last_dot_before_equals_and_parses_json():
    title, name, value = cc.parse_set("Wan 2.2 Sampler.steps=12")
    assert (title, name, value.parsed) == ("Wan 2.2 Sampler", "steps", 12)
    assert cc.parse_set("A.b=x=y")[2].parsed == "x=y"
    assert cc.parse_set('A.b="42"')[2].parsed == "42"
    assert cc.parse_set("A.b=true")[2].parsed is True
    assert cc.parse_set("A.b=[1, 2]")[2].parsed == [1, 2]
    assert cc.parse_set("A.b=")[2].parsed == ""
    for bad in ("no-equals", "nodot=1", ".input=1", "Title.=1"):
        with pytest.raises(cc.SetError):
            cc.parse_set(bad)


def test_apply_sets_by_title_class_and_id():
    api = wf()
    changes = cc.apply_sets(api, ["Sampler.steps=12", "ReelsmithModelLoader.precision=fp8", "3.filename_prefix=clip",
                                  "Sampler.prompt=123", "Sampler.negative_prompt=blurry"], OBJECT_INFO)
    assert api["2"]["inputs"]["steps"] == 12
    assert api["1"]["inputs"]["precision"] == "fp8"
    assert api["3"]["inputs"]["filename_prefix"] == "clip"
    assert api["2"]["inputs"]["prompt"] == "123"  # a STRING input keeps the text as typed
    assert api["2"]["inputs"]["negative_prompt"] == "blurry"  # optional input declared in object_info
    assert len(changes) == 5 and "steps = 12 (was 30)" in changes[0]


def test_apply_sets_without_object_info_parses_json():
    api = wf()
    cc.apply_sets(api, ["Sampler.prompt=123", "Sampler.seed=5"])
    assert api["2"]["inputs"]["prompt"] == 123 and api["2"]["inputs"]["seed"] == 5


def test_apply_sets_unknown_title_lists_the_nodes():
    with pytest.raises(cc.SetError) as info:
        cc.apply_sets(wf(), ["Sampler 2.steps=3"], OBJECT_INFO)
    message = str(info.value)
    assert "no node titled 'Sampler 2'" in message
    assert "node 1 'Load Wan' (ReelsmithModelLoader)" in message and "node 2 'Sampler' (ReelsmithSampler)" in message


def test_apply_sets_unknown_input_lists_the_inputs():
    with pytest.raises(cc.SetError) as info:
        cc.apply_sets(wf(), ["Sampler.stepz=3"], OBJECT_INFO)
    message = str(info.value)
    assert "has no input 'stepz'" in message
    assert "steps" in message and "negative_prompt" in message


def test_apply_sets_ambiguous_title_is_an_error():
    api = wf()
    api["4"] = copy.deepcopy(api["3"])
    with pytest.raises(cc.SetError, match="matches several nodes"):
        cc.apply_sets(api, ["Save.filename_prefix=x"])


# --- --demo


def test_apply_demo_selects_demo_models_and_shrinks_reelsmith_nodes():
    api = wf()
    api["4"] = {"class_type": "VAELoader", "inputs": {"vae_name": "wan_2.1_vae.safetensors"}, "_meta": {"title": "VAE"}}
    api["5"] = {"class_type": "EmptyImage", "inputs": {"width": 1280, "height": 720, "batch_size": 1, "color": 0}}
    changes = cc.apply_demo(api, OBJECT_INFO)
    assert api["1"]["inputs"]["model_name"] == "reelsmith-demo/wan-t2v.safetensors"
    assert api["1"]["inputs"]["precision"] == "bf16"  # a combo without demo options is left alone
    assert api["4"]["inputs"]["vae_name"] == "reelsmith-demo/wan_2.1_vae.safetensors"  # any node, new COMBO style
    sampler = api["2"]["inputs"]
    assert (sampler["width"], sampler["height"], sampler["frames"], sampler["steps"]) == (512, 256, 5, 2)
    assert sampler["seed"] == 1 and sampler["sampler"] == "unipc" and sampler["model"] == ["1", 0]
    assert api["5"]["inputs"]["width"] == 1280  # not a Reelsmith node: not shrunk
    assert any("model_name" in c for c in changes) and any("1280x720 -> 512x256" in c for c in changes)


@pytest.mark.parametrize("size, expected", [((480, 832), (256, 512)), ((512, 512), (256, 256)), ((832, 480), (512, 256))])
def test_apply_demo_keeps_orientation(size, expected):
    api = wf()
    api["2"]["inputs"]["width"], api["2"]["inputs"]["height"] = size
    cc.apply_demo(api, OBJECT_INFO)
    assert (api["2"]["inputs"]["width"], api["2"]["inputs"]["height"]) == expected


def test_apply_demo_respects_minimums_and_never_enlarges():
    info = copy.deepcopy(OBJECT_INFO)
    info["ReelsmithSampler"]["input"]["required"]["width"][1]["min"] = 300
    api = wf()
    api["2"]["inputs"].update(frames=1, steps=1, length=33)
    cc.apply_demo(api, info)
    inputs = api["2"]["inputs"]
    assert (inputs["width"], inputs["height"]) == (1024, 512)
    assert inputs["frames"] == 1 and inputs["steps"] == 1 and inputs["length"] == 5


def test_apply_demo_leaves_linked_sizes_and_demo_names():
    api = wf()
    api["2"]["inputs"]["width"] = ["9", 0]
    api["1"]["inputs"]["model_name"] = "reelsmith-demo/wan-t2v.safetensors"
    cc.apply_demo(api, OBJECT_INFO)
    assert api["2"]["inputs"]["width"] == ["9", 0] and api["2"]["inputs"]["height"] == 256
    assert api["1"]["inputs"]["model_name"] == "reelsmith-demo/wan-t2v.safetensors"


def test_apply_demo_leaves_label_options_that_are_not_models():
    info = copy.deepcopy(OBJECT_INFO)
    options = info["ReelsmithModelLoader"]["input"]["required"]["model_name"][0]
    options[:0] = ["single files (pick below)", "none"]
    for label in ("single files (pick below)", "none"):
        api = wf()
        api["1"]["inputs"]["model_name"] = label
        cc.apply_demo(api, info)
        assert api["1"]["inputs"]["model_name"] == label


def test_apply_demo_errors_when_a_model_has_no_demo_counterpart():
    api = wf()
    api["1"]["inputs"]["model_name"] = "wan-i2v.safetensors"
    with pytest.raises(cc.WorkflowError) as info:
        cc.apply_demo(api, OBJECT_INFO)
    assert "node 1 'Load Wan'" in str(info.value) and "reelsmith-demo/wan-i2v.safetensors" in str(info.value)


# --- workflow formats


UI_WORKFLOW = {
    "last_node_id": 3, "last_link_id": 1, "version": 0.4, "links": [[1, 1, 0, 2, 0, "IMAGE"]],
    "nodes": [
        {"id": 1, "type": "EmptyImage", "title": "Blank", "mode": 0, "inputs": [],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}], "widgets_values": [40, 24, 1, 0]},
        {"id": 2, "type": "SaveImage", "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 1}],
         "outputs": [], "widgets_values": ["ui_prefix"]},
        {"id": 3, "type": "Note", "mode": 0, "inputs": [], "outputs": [], "widgets_values": ["a note"]},
    ],
}


def test_ui_workflow_converts_to_api_format():
    pytest.importorskip("comfy_cli.workflow_to_api")
    api = cc.to_api_format(UI_WORKFLOW, OBJECT_INFO)
    assert api == {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 40, "height": 24, "batch_size": 1, "color": 0},
              "_meta": {"title": "Blank"}},
        "2": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ui_prefix", "images": ["1", 0]},
              "_meta": {"title": "Save Image"}},
    }
    cc.apply_sets(api, ["Blank.width=64", "SaveImage.filename_prefix=x", "Save Image.filename_prefix=y"], OBJECT_INFO)
    assert api["1"]["inputs"]["width"] == 64 and api["2"]["inputs"]["filename_prefix"] == "y"


def test_ui_workflow_with_unknown_node_types_is_a_clear_error():
    pytest.importorskip("comfy_cli.workflow_to_api")
    ui = copy.deepcopy(UI_WORKFLOW)
    ui["nodes"][0]["type"] = "ReelsmithNotInstalled"
    with pytest.raises(cc.WorkflowError, match="ReelsmithNotInstalled"):
        cc.to_api_format(ui, OBJECT_INFO)


def test_api_workflow_passes_through_as_a_copy_and_prompt_body_is_unwrapped():
    api = cc.to_api_format({"prompt": WORKFLOW, "client_id": "x"}, OBJECT_INFO)
    assert api == WORKFLOW and api is not WORKFLOW
    api["1"]["inputs"]["precision"] = "fp8"
    assert WORKFLOW["1"]["inputs"]["precision"] == "bf16"
    with pytest.raises(cc.WorkflowError, match="not a ComfyUI workflow"):
        cc.workflow_format({"hello": 1})


def test_ui_workflow_without_comfy_cli_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "comfy_cli.workflow_to_api", None)  # makes the import fail
    with pytest.raises(cc.WorkflowError, match="pip install comfy-cli"):
        cc.to_api_format(UI_WORKFLOW, OBJECT_INFO)
    path = tmp_path / "ui.json"
    path.write_text(json.dumps(UI_WORKFLOW))
    with pytest.raises(SystemExit) as info:
        render.main([str(path), "--server", "http://127.0.0.1:9"])
    assert info.value.code == 2


# --- argument errors


@pytest.fixture
def workflow_file(tmp_path):
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(WORKFLOW))
    return path


@pytest.mark.parametrize("extra, message", [
    (["--models-dir", "."], "--models-dir only applies with --comfyui"),
    (["--python", "python3"], "--python only applies with --comfyui"),
    (["--server", "http://127.0.0.1:9", "--comfyui", "."], "not allowed with argument"),
    (["--comfyui", "/nonexistent-comfyui"], "not a ComfyUI directory"),
    (["--set", "Sampler-steps-12"], "expected TITLE.input=value"),
    (["--timeout", "0"], "--timeout must be positive"),
])
def test_argument_errors_exit_2(workflow_file, capsys, extra, message):
    with pytest.raises(SystemExit) as info:
        render.main([str(workflow_file)] + extra)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_unreadable_or_invalid_workflow_files_exit_2(tmp_path, capsys):
    for path, text, message in ((tmp_path / "missing.json", None, "cannot read"),
                                (tmp_path / "bad.json", "{not json", "is not JSON"),
                                (tmp_path / "other.json", '{"a": 1}', "not a ComfyUI workflow")):
        if text is not None:
            path.write_text(text)
        with pytest.raises(SystemExit) as info:
            render.main([str(path)])
        assert info.value.code == 2 and message in capsys.readouterr().err


# --- a fake ComfyUI


class FakeComfyUI:
    """Serves /object_info, /prompt, /ws, /history, /view, /interrupt, /queue like ComfyUI 0.8.0, on 127.0.0.1."""

    FILES: ClassVar[dict] = {("fox_00001_.png", "", "output"): b"\x89PNG fake image",
                             ("fox_00001.mp4", "videos", "output"): b"fake mp4 bytes",
                             ("preview_00001_.png", "", "temp"): b"fake preview"}

    def __init__(self, scenario: str = "success"):
        self.scenario = scenario
        self.prompts: dict[str, dict] = {}
        self.history: dict[str, dict] = {}
        self.sockets: dict = {}
        self.interrupts: list = []
        self.deleted: list = []
        self.tasks: list = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.url = ""

    def __enter__(self):
        from aiohttp import web

        app = web.Application()
        async def object_info(request):
            return web.json_response(OBJECT_INFO)

        app.router.add_get("/object_info", object_info)
        app.router.add_post("/prompt", self.post_prompt)
        app.router.add_get("/ws", self.websocket)
        app.router.add_get("/history/{prompt_id}", self.get_history)
        app.router.add_get("/view", self.view)
        app.router.add_post("/interrupt", self.post_interrupt)
        app.router.add_post("/queue", self.post_queue)
        self.runner = web.AppRunner(app)

        async def start():
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            return site._server.sockets[0].getsockname()[1]

        self.thread.start()
        port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc):
        async def finish():
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(finish(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    # --- handlers

    async def websocket(self, request):
        from aiohttp import web

        if self.scenario == "no_ws":
            return web.Response(status=404)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        client_id = request.query.get("clientId")
        self.sockets[client_id] = ws
        status = {"status": {"exec_info": {"queue_remaining": 0}}, "sid": client_id}
        await ws.send_json({"type": "status", "data": status})
        async for _ in ws:
            pass
        return ws

    async def post_prompt(self, request):
        from aiohttp import web

        body = await request.json()
        if self.scenario == "reject":
            return web.json_response({
                "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                          "details": "Value 0 smaller than min of 32: width", "extra_info": {}},
                "node_errors": {"2": {"errors": [{"type": "value_smaller_than_min",
                                                  "message": "Value 0 smaller than min of 32", "details": "width",
                                                  "extra_info": {"input_name": "width"}}],
                                      "dependent_outputs": ["3"], "class_type": "ReelsmithSampler"}}}, status=400)
        prompt_id = body.get("prompt_id") or "fake-prompt"
        self.prompts[prompt_id] = body
        if self.scenario != "hang":
            self.tasks.append(asyncio.ensure_future(self.execute(prompt_id, body.get("client_id"))))
        return web.json_response({"prompt_id": prompt_id, "number": 1, "node_errors": {}})

    async def execute(self, prompt_id, client_id):
        ws = self.sockets.get(client_id)

        async def send(kind, data):
            if ws is not None and not ws.closed:
                await ws.send_json({"type": kind, "data": data})
            await asyncio.sleep(0.01)

        def messages(*events):
            return [[kind, {"prompt_id": prompt_id, "timestamp": 0, **data}] for kind, data in events]

        await asyncio.sleep(0.05)
        await send("progress", {"value": 9, "max": 9, "prompt_id": "someone-else", "node": "7"})
        await send("execution_start", {"prompt_id": prompt_id, "timestamp": 0})
        await send("execution_cached", {"nodes": ["1"], "prompt_id": prompt_id, "timestamp": 0})
        await send("executing", {"node": "2", "display_node": "2", "prompt_id": prompt_id})
        for step in range(1, 5):
            await send("progress", {"value": step, "max": 4, "prompt_id": prompt_id, "node": "2"})
            if ws is not None and not ws.closed:
                await ws.send_bytes(b"\x00\x00\x00\x01\x00\x00\x00\x02fake-jpeg-preview")
            if self.scenario in ("error", "interrupted") and step == 2:
                break
        if self.scenario == "error":
            error = {"prompt_id": prompt_id, "node_id": "2", "node_type": "ReelsmithSampler", "executed": ["1"],
                     "exception_message": "CUDA out of memory. Tried to allocate 20.00 GiB",
                     "exception_type": "torch.OutOfMemoryError",
                     "traceback": ['  File "/pack/engine/pipelines/wan_sampler.py", line 10, in run\n',
                                   "    x = huge()\n"],
                     "current_inputs": {}, "current_outputs": []}
            await send("execution_error", error)
            self.history[prompt_id] = {"prompt": [], "outputs": {}, "status": {
                "status_str": "error", "completed": False, "messages": messages(("execution_error", error))}}
        elif self.scenario == "interrupted":
            data = {"prompt_id": prompt_id, "node_id": "2", "node_type": "ReelsmithSampler", "executed": ["1"]}
            await send("execution_interrupted", data)
            self.history[prompt_id] = {"prompt": [], "outputs": {}, "status": {
                "status_str": "error", "completed": False, "messages": messages(("execution_interrupted", data))}}
        else:
            await send("executed", {"node": "2", "display_node": "2", "output": None, "prompt_id": prompt_id})
            await send("executing", {"node": "3", "display_node": "3", "prompt_id": prompt_id})
            outputs = {"3": {"images": [{"filename": "fox_00001_.png", "subfolder": "", "type": "output"},
                                        {"filename": "preview_00001_.png", "subfolder": "", "type": "temp"}],
                             "gifs": [{"filename": "fox_00001.mp4", "subfolder": "videos", "type": "output",
                                       "format": "video/h264-mp4"}],
                             "animated": [False], "text": ["not a file"]}}
            await send("executed", {"node": "3", "display_node": "3", "output": outputs["3"], "prompt_id": prompt_id})
            await send("execution_success", {"prompt_id": prompt_id, "timestamp": 0})
            self.history[prompt_id] = {"prompt": [], "outputs": outputs, "meta": {}, "status": {
                "status_str": "success", "completed": True, "messages": messages(("execution_success", {}))}}
        await send("executing", {"node": None, "prompt_id": prompt_id})

    async def get_history(self, request):
        from aiohttp import web

        prompt_id = request.match_info["prompt_id"]
        return web.json_response({prompt_id: self.history[prompt_id]} if prompt_id in self.history else {})

    async def view(self, request):
        from aiohttp import web

        key = (request.query.get("filename"), request.query.get("subfolder", ""), request.query.get("type", "output"))
        if key not in self.FILES:
            return web.Response(status=404)
        return web.Response(body=self.FILES[key], content_type="application/octet-stream")

    async def post_interrupt(self, request):
        from aiohttp import web

        self.interrupts.append(await request.json())
        return web.Response(status=200)

    async def post_queue(self, request):
        from aiohttp import web

        self.deleted.extend((await request.json()).get("delete", []))
        return web.Response(status=200)


@pytest.fixture
def fake_comfyui(request):
    pytest.importorskip("aiohttp")
    pytest.importorskip("websocket")
    with FakeComfyUI(getattr(request, "param", "success")) as server:
        yield server


def test_client_follows_progress_and_downloads_every_output(fake_comfyui, tmp_path):
    events = []
    with cc.ComfyUIClient(fake_comfyui.url) as client:
        prompt_id = client.queue(wf())
        entry = client.wait(prompt_id, on_progress=events.append, timeout=30)
        paths = client.download_outputs(entry, tmp_path / "out")
    assert fake_comfyui.prompts[prompt_id]["client_id"] == client.client_id
    progress = [(e.node_id, e.title, e.value, e.total) for e in events if e.event == "progress"]
    assert progress == [("2", "Sampler", step, 4) for step in range(1, 5)]  # the other prompt's progress is ignored
    executing = [(e.node_id, e.class_type, e.nodes_done, e.nodes_total) for e in events if e.event == "executing"]
    assert executing == [("2", "ReelsmithSampler", 0, 2), ("3", "ReelsmithSaveVideo", 1, 2)]
    assert events[0].event == "start"
    out = tmp_path / "out"
    assert sorted(p.relative_to(out).as_posix() for p in paths) == [
        "fox_00001_.png", "temp/preview_00001_.png", "videos/fox_00001.mp4"]
    assert (out / "videos" / "fox_00001.mp4").read_bytes() == b"fake mp4 bytes"


@pytest.mark.parametrize("fake_comfyui", ["no_ws"], indirect=True)
def test_client_without_websocket_polls_the_history(fake_comfyui, tmp_path):
    with cc.ComfyUIClient(fake_comfyui.url) as client:
        prompt_id = client.queue(wf())
        assert client.ws_error
        entry = client.wait(prompt_id, timeout=30)
    assert "3" in entry["outputs"]


def test_render_main_succeeds_with_demo_and_sets(fake_comfyui, workflow_file, tmp_path, capsys):
    out = tmp_path / "out"
    code = render.main([str(workflow_file), "--server", fake_comfyui.url, "--out", str(out), "--demo",
                        "--set", "Sampler.seed=7", "--set", "Sampler.steps=3"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    sent = next(iter(fake_comfyui.prompts.values()))["prompt"]
    assert sent["1"]["inputs"]["model_name"] == "reelsmith-demo/wan-t2v.safetensors"
    assert sent["2"]["inputs"]["seed"] == 7 and sent["2"]["inputs"]["steps"] == 3  # --set wins over --demo
    assert (sent["2"]["inputs"]["width"], sent["2"]["inputs"]["height"], sent["2"]["inputs"]["frames"]) == (512, 256, 5)
    assert sorted(pathlib.Path(line).name for line in captured.out.splitlines()) == [
        "fox_00001.mp4", "fox_00001_.png", "preview_00001_.png"]
    assert "demo:" in captured.err and "4/4" in captured.err and "Sampler" in captured.err


@pytest.mark.parametrize("fake_comfyui", ["error"], indirect=True)
def test_render_main_reports_the_node_error(fake_comfyui, workflow_file, tmp_path, capsys):
    code = render.main([str(workflow_file), "--server", fake_comfyui.url, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert "error in node 2 (class ReelsmithSampler, title 'Sampler')" in err
    assert "torch.OutOfMemoryError: CUDA out of memory" in err
    assert "wan_sampler.py" in err  # the server-side traceback
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fake_comfyui", ["error"], indirect=True)
def test_client_raises_node_execution_error_with_details(fake_comfyui):
    with cc.ComfyUIClient(fake_comfyui.url) as client:
        prompt_id = client.queue(wf())
        with pytest.raises(cc.NodeExecutionError) as info:
            client.wait(prompt_id, timeout=30)
    error = info.value
    assert (error.node_id, error.node_type, error.title) == ("2", "ReelsmithSampler", "Sampler")
    assert error.exception_type == "torch.OutOfMemoryError" and len(error.traceback) == 2
    # the same error is found in the history when the websocket message was missed
    deadline = time.monotonic() + 10
    while client.history(prompt_id) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(cc.NodeExecutionError, match="node 2"):
        client._finished(prompt_id, client.history(prompt_id))


@pytest.mark.parametrize("fake_comfyui", ["reject"], indirect=True)
def test_render_main_reports_validation_errors(fake_comfyui, workflow_file, tmp_path, capsys):
    code = render.main([str(workflow_file), "--server", fake_comfyui.url, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert "rejected the workflow: Prompt outputs failed validation" in err
    assert "node 2 (ReelsmithSampler, title 'Sampler')" in err and "Value 0 smaller than min of 32: width" in err
    with cc.ComfyUIClient(fake_comfyui.url) as client, pytest.raises(cc.WorkflowRejected) as info:
        client.queue(wf())
    assert "2" in info.value.node_errors


@pytest.mark.parametrize("fake_comfyui", ["interrupted"], indirect=True)
def test_render_main_reports_an_interrupt(fake_comfyui, workflow_file, tmp_path, capsys):
    code = render.main([str(workflow_file), "--server", fake_comfyui.url, "--out", str(tmp_path / "out")])
    assert code == 1 and "interrupted" in capsys.readouterr().err


@pytest.mark.parametrize("fake_comfyui", ["hang"], indirect=True)
def test_render_main_timeout_interrupts_the_prompt(fake_comfyui, workflow_file, tmp_path, capsys):
    code = render.main([str(workflow_file), "--server", fake_comfyui.url, "--out", str(tmp_path / "out"),
                        "--timeout", "1.5"])
    assert code == 1 and "did not finish within" in capsys.readouterr().err
    prompt_id = next(iter(fake_comfyui.prompts))
    assert fake_comfyui.interrupts == [{"prompt_id": prompt_id}] and fake_comfyui.deleted == [prompt_id]


def test_render_main_unknown_set_target_exits_2(fake_comfyui, workflow_file, capsys):
    code = render.main([str(workflow_file), "--server", fake_comfyui.url, "--set", "Nope.steps=2"])
    assert code == 2 and "no node titled 'Nope'" in capsys.readouterr().err
    assert not fake_comfyui.prompts


def test_render_main_unreachable_server_exits_1(workflow_file, capsys):
    port = cc.find_free_port()
    assert render.main([str(workflow_file), "--server", f"http://127.0.0.1:{port}"]) == 1
    assert "cannot reach ComfyUI" in capsys.readouterr().err


# --- ComfyUIServer against a stub main.py


STUB_MAIN = textwrap.dedent('''
    import http.server, json, os, subprocess, sys, time
    args = sys.argv[1:]
    record = {"argv": sys.argv, "cwd": os.getcwd()}
    config = args[args.index("--extra-model-paths-config") + 1]
    record["yaml"] = open(config).read()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    record["child_pid"] = child.pid
    with open(os.environ["STUB_RECORD"], "w") as f:
        json.dump(record, f)
    print("stub comfyui starting", flush=True)
    mode = os.environ.get("STUB_MODE", "serve")
    if mode == "crash":
        print("boom: something is missing", flush=True)
        sys.exit(3)
    if mode == "silent":
        time.sleep(300)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"system": {"argv": sys.argv}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    host, port = args[args.index("--listen") + 1], int(args[args.index("--port") + 1])
    http.server.HTTPServer((host, port), Handler).serve_forever()
''')


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (nobody reaped it yet) is dead too
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    except OSError:
        return True


def _wait_dead(pid: int, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def stub_comfyui(tmp_path, monkeypatch):
    root = tmp_path / "ComfyUI"
    (root / "custom_nodes").mkdir(parents=True)
    (root / "main.py").write_text(STUB_MAIN)
    record = tmp_path / "record.json"
    monkeypatch.setenv("STUB_RECORD", str(record))
    return root, record


@pytest.mark.skipif(os.name != "posix", reason="process groups")
def test_server_starts_on_localhost_with_the_pack_and_stops_its_process_group(stub_comfyui, tmp_path):
    root, record_path = stub_comfyui
    models = tmp_path / "models"
    models.mkdir()
    server = cc.ComfyUIServer(root, packs={"Reelsmith": PACK_ROOT}, models_dirs=[models], cpu=True,
                              log_path=tmp_path / "comfyui.log", startup_timeout=30)
    with server:
        assert server.url.startswith("http://127.0.0.1:")
        assert cc.ComfyUIClient(server.url).system_stats()["system"]["argv"]
        record = json.loads(record_path.read_text())
        argv = record["argv"]
        assert argv[argv.index("--listen") + 1] == "127.0.0.1" and "--cpu" in argv
        assert pathlib.Path(record["cwd"]).resolve() == root.resolve()
        link = server.custom_nodes_dir / "Reelsmith"
        assert link.is_symlink() and link.resolve() == PACK_ROOT
        work_dir = server.work_dir
        pid, child_pid = server.process.pid, record["child_pid"]
        assert _alive(child_pid)
    assert _wait_dead(pid) and _wait_dead(child_pid), "the server or its child survived stop()"
    assert not work_dir.exists()
    assert (tmp_path / "comfyui.log").read_text().count("stub comfyui starting") == 1

    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load(record["yaml"])
    sections = list(config.values())
    assert {"custom_nodes": str(link.parent)} in sections
    models_section = next(s for s in sections if "base_path" in s)
    assert models_section["base_path"] == str(models.resolve())
    assert models_section["diffusion_models"].split("\n") == ["diffusion_models", "unet"]
    for key in ("text_encoders", "vae", "loras", "clip_vision", "diffusers", "checkpoints"):
        assert key in models_section


@pytest.mark.skipif(os.name != "posix", reason="process groups")
def test_server_that_crashes_while_starting_reports_its_log(stub_comfyui, tmp_path, monkeypatch):
    root, record_path = stub_comfyui
    monkeypatch.setenv("STUB_MODE", "crash")
    server = cc.ComfyUIServer(root, packs={"Reelsmith": PACK_ROOT}, cpu=True, startup_timeout=30)
    with pytest.raises(cc.ServerStartError) as info:
        server.start()
    assert "exited with code 3" in str(info.value) and "boom: something is missing" in str(info.value)
    assert server.process is None and server.work_dir is None
    assert _wait_dead(json.loads(record_path.read_text())["child_pid"])


@pytest.mark.skipif(os.name != "posix", reason="process groups")
def test_server_that_never_answers_times_out_and_is_killed(stub_comfyui, tmp_path, monkeypatch):
    root, record_path = stub_comfyui
    monkeypatch.setenv("STUB_MODE", "silent")
    server = cc.ComfyUIServer(root, cpu=True, startup_timeout=2)
    with pytest.raises(cc.ServerStartError, match="did not answer GET /system_stats within 2 s"), server:
        pass
    record = json.loads(record_path.read_text())
    assert _wait_dead(record["child_pid"])


def test_server_rejects_a_directory_without_main_py(tmp_path):
    with pytest.raises(cc.ServerStartError, match="no main.py"):
        cc.ComfyUIServer(tmp_path).start()
