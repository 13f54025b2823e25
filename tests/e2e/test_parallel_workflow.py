"""End-to-end tier, several GPUs: a ComfyUI started with the CPU test switch (REELSMITH_PARALLEL_CPU=1, workers on
the CPU over gloo) renders the Wan demo workflow with `gpus 2` exactly like the one-GPU path (progress per step,
the video), keeps its 2 workers warm between prompts, stops them on "unload models" (/free), and leaves no
worker process once ComfyUI is stopped."""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time
import urllib.request

import psutil
import pytest

import comfyui_client
from conftest import PACK_NAME, PACK_ROOT, _server_env

pytestmark = pytest.mark.e2e

WORKFLOW = PACK_ROOT / "workflows" / "api" / "wan22_t2v_480p.json"


def _workers(server_pid: int) -> list[psutil.Process]:
    try:
        children = psutil.Process(server_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if any(part.endswith("worker_main.py") for part in child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def _gone(pids, seconds=30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids):
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def parallel_server(tmp_path_factory, request):
    comfyui_dir = os.environ.get("COMFYUI_DIR")
    if not comfyui_dir:
        pytest.skip("end-to-end tier skipped: set COMFYUI_DIR")
    models_dir = request.getfixturevalue("models_dir")
    base = tmp_path_factory.mktemp("comfyui_parallel")
    scratch = {name: base / name for name in ("input", "output", "temp", "user")}
    for path in scratch.values():
        path.mkdir()
    python = os.environ.get("COMFYUI_PYTHON") or sys.executable
    env = _server_env(python, base / "stand-ins") or dict(os.environ)
    env["REELSMITH_PARALLEL_CPU"] = "1"  # TEST ONLY: CPU workers over gloo
    server = comfyui_client.ComfyUIServer(
        comfyui_dir, packs={PACK_NAME: PACK_ROOT}, models_dirs=[models_dir], python=python,
        log_path=base / "comfyui.log", env=env,
        startup_timeout=float(os.environ.get("COMFYUI_STARTUP_TIMEOUT", "300")),
        extra_args=["--input-directory", str(scratch["input"]), "--output-directory", str(scratch["output"]),
                    "--temp-directory", str(scratch["temp"]), "--user-directory", str(scratch["user"]),
                    "--database-url", "sqlite:///:memory:"])
    server.start()
    client = comfyui_client.ComfyUIClient(server.url)
    try:
        yield server, client
    finally:
        client.close()
        if server.process is not None and server.process.poll() is None:
            server.stop()


def _prompt(client, seed: int) -> dict:
    info = client.object_info()
    api = comfyui_client.to_api_format(json.loads(WORKFLOW.read_text()), info)
    comfyui_client.apply_demo(api, info)
    comfyui_client.apply_sets(api, ["Wan Model Loader.gpus=2", f"Wan 2.2 Text to Video.seed={seed}"], info)
    return api


def test_gpus_2_renders_through_comfyui_and_leaves_no_worker(parallel_server, tmp_path):
    server, client = parallel_server
    events = []
    entry = client.wait(client.queue(_prompt(client, 11)), on_progress=events.append, timeout=600)
    videos = [f for f in client.download_outputs(entry, tmp_path) if f.suffix == ".mp4"]
    assert len(videos) == 1
    steps = [(e.value, e.total) for e in events if e.event == "progress" and e.class_type.startswith("ReelsmithWan22")]
    assert steps == [(1, 2), (2, 2)]  # progress per step, as on one GPU
    workers = _workers(server.process.pid)
    assert len(workers) == 2
    first = sorted(w.pid for w in workers)

    client.wait(client.queue(_prompt(client, 12)), timeout=600)
    assert sorted(w.pid for w in _workers(server.process.pid)) == first  # warm between prompts

    # ComfyUI's "unload models" stops them too
    request = urllib.request.Request(f"{server.url}/free", data=json.dumps({"unload_models": True}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request, timeout=30).read()
    assert _gone(first)

    client.wait(client.queue(_prompt(client, 13)), timeout=600)  # the next prompt starts fresh workers
    fresh = [w.pid for w in _workers(server.process.pid)]
    assert len(fresh) == 2 and set(fresh).isdisjoint(first)

    server.stop()
    assert _gone(fresh)
