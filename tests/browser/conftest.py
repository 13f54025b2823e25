"""Browser tier: headless Chromium (Playwright) against a real ComfyUI with the pack loaded, serving the real
front end (the `comfyui_frontend_package` ComfyUI pins), started by the end-to-end tier's `comfyui_server` fixture.

Skipped, with the reason, when Playwright, a Chromium binary (/usr/bin/chromium, or $CHROMIUM) or COMFYUI_DIR is
missing; no browser is ever downloaded. Screenshots of each step go under pytest's tmp dir; their paths are
printed (run with -s to see them as they are taken) and the folder is named at the end of the run.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

import pytest
from browser_setup import CHROMIUM_ARGS, browser_skip_reason, chromium_path

_E2E_CONFTEST = pathlib.Path(__file__).resolve().parents[1] / "e2e" / "conftest.py"
_spec = importlib.util.spec_from_file_location("reelsmith_e2e_fixtures", _E2E_CONFTEST)
_e2e = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_e2e)

# the end-to-end tier's server, reused as it is (same pack loading, demo models, scratch folders)
models_dir = _e2e.models_dir
comfyui_server = _e2e.comfyui_server
PACK_NAME = _e2e.PACK_NAME

_shot_dirs: list[pathlib.Path] = []


@pytest.fixture(scope="session")
def browser():
    reason = browser_skip_reason()
    if reason:
        pytest.skip(reason)
    if not os.environ.get("COMFYUI_DIR"):
        pytest.skip("browser tier skipped: set COMFYUI_DIR=/path/to/ComfyUI to run tests/browser against a real ComfyUI")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


AVATAR_SPEECH_SECONDS = 0.45  # 11 frames at 25 fps: one short window on the demo models
AVATAR_SPEECH_RATE = 44100


@pytest.fixture(scope="session")
def editor_server(browser, comfyui_server):
    from PIL import Image

    from reelsmith.engine.demo_avatar import demo_portrait, write_speech_wav
    # the image-to-video workflows load ComfyUI's stock example.png from the (scratch) input folder
    Image.new("RGB", (96, 64), (200, 120, 40)).save(comfyui_server.input_dir / "example.png")
    # the avatar workflow's portrait and speech (as tests/e2e/test_avatar_workflow.py sets them up; the server gets
    # the torchaudio stand-in its LoadAudio needs from the end-to-end fixture)
    demo_portrait(320, 384).save(comfyui_server.input_dir / "portrait.png")
    write_speech_wav(comfyui_server.input_dir / "speech.wav", AVATAR_SPEECH_SECONDS, AVATAR_SPEECH_RATE)
    if "LoadAudio" not in comfyui_server.client.object_info(refresh=True):
        pytest.fail(f"ComfyUI's LoadAudio did not load (see {comfyui_server.log_path}); the avatar workflow needs it")
    return comfyui_server


@pytest.fixture
def shots_dir(request, tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("screenshots-" + request.node.name.replace("[", "-").replace("]", "")[:60])
    _shot_dirs.append(path)
    return path


@pytest.fixture
def editor(browser, editor_server, shots_dir):
    """A fresh page on the editor (its own browser context: nothing carried over from another test)."""
    from editor_page import EditorPage
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    editor_page = EditorPage(page, editor_server.url, shots_dir, editor_server.client.object_info())
    try:
        yield editor_page
    finally:
        context.close()


def pytest_terminal_summary(terminalreporter):
    if _shot_dirs:
        root = os.path.commonpath([str(p) for p in _shot_dirs])
        terminalreporter.write_line(f"browser tier screenshots: {root}")
