"""End-to-end tier: a real ComfyUI (from $COMFYUI_DIR) with this pack loaded, driven over HTTP.

Without COMFYUI_DIR every test that uses `comfyui_server` is skipped, and the run ends with a warning line saying
the end-to-end tier did not run. ComfyUI is started once per session through scripts/comfyui_client.py (the same
code render.py uses): the pack through a generated --extra-model-paths-config `custom_nodes:` entry, models from the
session's `models_dir` (filled by scripts/make_demo_models.py when it exists), and scratch input / output / temp /
user directories so the ComfyUI checkout is left as it was. COMFYUI_PYTHON picks the interpreter (default: this one).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

PACK_ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPTS_DIR = PACK_ROOT / "scripts"
if str(SCRIPTS_DIR) not in sys.path:
    sys.path.insert(0, str(SCRIPTS_DIR))

# scripts/ is not a package; its module names are unique
import comfyui_client

PACK_NAME = "Reelsmith"
SKIP_MESSAGE = ("end-to-end tier skipped: set COMFYUI_DIR=/path/to/ComfyUI (a checkout with its requirements "
                "installed in this interpreter, or COMFYUI_PYTHON) to run tests/e2e")
_skipped_for_missing_comfyui: list[str] = []  # non-empty once the fixture skipped


class E2EServer(tuple):
    """(client, models_dir, log_path), plus .server (the ComfyUIServer), .url, .input_dir, .output_dir."""

    def __new__(cls, client, models_dir, log_path, server, input_dir, output_dir):
        self = super().__new__(cls, (client, models_dir, log_path))
        self.server, self.input_dir, self.output_dir = server, input_dir, output_dir
        return self

    client = property(lambda self: self[0])
    models_dir = property(lambda self: self[1])
    log_path = property(lambda self: self[2])
    url = property(lambda self: self.server.url)


def pytest_terminal_summary(terminalreporter):
    """One loud line when end-to-end tests were skipped for want of COMFYUI_DIR (fixture or module-level skips)."""
    if os.environ.get("COMFYUI_DIR"):
        return
    here = pathlib.Path(__file__).resolve().parent
    root = pathlib.Path(terminalreporter.config.rootpath)
    skipped = set()
    for report in terminalreporter.stats.get("skipped", []):
        path = (root / report.nodeid.split("::")[0]).resolve()
        if path == here or here in path.parents:
            skipped.add(report.nodeid)
    if skipped or _skipped_for_missing_comfyui:
        terminalreporter.write_sep("!", f"WARNING: {SKIP_MESSAGE} ({len(skipped)} skipped)", yellow=True, bold=True)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> pathlib.Path:
    """A per-session models base dir, filled by scripts/make_demo_models.py --models-dir DIR when that script exists."""
    path = tmp_path_factory.mktemp("models")
    maker = SCRIPTS_DIR / "make_demo_models.py"
    if maker.is_file():
        result = subprocess.run([sys.executable, str(maker), "--models-dir", str(path)], check=False, cwd=PACK_ROOT,
                                stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if result.returncode != 0:
            pytest.fail(f"{maker.name} --models-dir {path} failed ({result.returncode}):\n"
                        f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return path


TORCHAUDIO_STAND_IN = '''"""Stand-in written by Reelsmith's end-to-end tests: the server's interpreter has no torchaudio, which ComfyUI's
comfy_extras/nodes_audio.py imports at its top although its LoadAudio reads files with PyAV. Every attribute is
missing, so anything that really needs torchaudio still fails."""


def __getattr__(name):
    raise AttributeError(f"torchaudio is not installed here (end-to-end test stand-in); no torchaudio.{name}")
'''


def _server_env(python: str, scratch: pathlib.Path) -> dict | None:
    """The server's environment: unchanged, unless its interpreter lacks torchaudio; then a stand-in module goes on
    PYTHONPATH so that ComfyUI's core audio nodes (LoadAudio, which the avatar workflow uses) load."""
    probe = subprocess.run([python, "-c", "import torchaudio"], capture_output=True, stdin=subprocess.DEVNULL)
    if probe.returncode == 0:
        return None
    (scratch / "torchaudio").mkdir(parents=True)
    (scratch / "torchaudio" / "__init__.py").write_text(TORCHAUDIO_STAND_IN)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(scratch), env.get("PYTHONPATH", "")) if p)
    return env


@pytest.fixture(scope="session")
def comfyui_server(request, tmp_path_factory):
    """The running server as (client, models_dir, log_path); see E2EServer for the other attributes."""
    comfyui_dir = os.environ.get("COMFYUI_DIR")
    if not comfyui_dir:
        _skipped_for_missing_comfyui.append(SKIP_MESSAGE)
        pytest.skip(SKIP_MESSAGE)
    if not (pathlib.Path(comfyui_dir) / "main.py").is_file():
        pytest.fail(f"COMFYUI_DIR={comfyui_dir} is not a ComfyUI checkout (no main.py)")
    models_dir = request.getfixturevalue("models_dir")  # only now: no demo models are made for a skipped tier
    base = tmp_path_factory.mktemp("comfyui")
    scratch = {name: base / name for name in ("input", "output", "temp", "user")}
    for path in scratch.values():
        path.mkdir()
    log_path = base / "comfyui.log"
    python = os.environ.get("COMFYUI_PYTHON") or sys.executable
    server = comfyui_client.ComfyUIServer(
        comfyui_dir, packs={PACK_NAME: PACK_ROOT}, models_dirs=[models_dir],
        python=python, log_path=log_path, env=_server_env(python, base / "stand-ins"),
        startup_timeout=float(os.environ.get("COMFYUI_STARTUP_TIMEOUT", "300")),
        extra_args=["--input-directory", str(scratch["input"]), "--output-directory", str(scratch["output"]),
                    "--temp-directory", str(scratch["temp"]), "--user-directory", str(scratch["user"]),
                    "--database-url", "sqlite:///:memory:"])
    with server:
        client = comfyui_client.ComfyUIClient(server.url)
        try:
            yield E2EServer(client, models_dir, log_path, server, scratch["input"], scratch["output"])
        finally:
            client.close()
