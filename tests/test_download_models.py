"""scripts/download_models.py against a fake Hugging Face Hub on 127.0.0.1 (no network).

The fake serves `/<owner>/<repo>/resolve/<revision>/<path>` the way the hub does: HEAD and GET with
`X-Repo-Commit`, `ETag`/`X-Linked-Etag` (sha256 for LFS files, the git blob sha1 otherwise),
`X-Linked-Size`, `Content-Length`, and `Range` requests. The script runs in a subprocess with
`HF_ENDPOINT` pointing at the fake, except the disk-space test, which runs `main()` in-process so
`shutil.disk_usage` can be replaced.
"""

import hashlib
import http.server
import importlib.util
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import threading
import time
from collections import namedtuple

import pytest
from pack_paths import PACK_ROOT

SCRIPT = PACK_ROOT / "scripts" / "download_models.py"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}  # "<repo>/<path>" -> content
        self.etag_override: dict[str, str] = {}
        self.drop_once: set[str] = set()  # send half of the body, then close the connection
        self.stall: dict[str, int] = {}  # send this many bytes, then hang until the client goes away
        self.closing = threading.Event()
        self.requests: list[tuple[str, str, str | None]] = []  # (method, key, Range header)
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _lookup(self):
                head, sep, tail = self.path.split("?")[0].partition("/resolve/")
                if not sep:
                    return None, None
                _revision, _, path = tail.partition("/")
                key = f"{head.strip('/')}/{path}"
                return key, hub.files.get(key)

            def _headers(self, key, data, status, length, extra=None):
                self.send_response(status)
                lfs = len(data) > 64
                digest = hashlib.sha256(data).hexdigest() if lfs else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
                etag = hub.etag_override.get(key, digest)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{etag}"')
                if lfs:
                    self.send_header("X-Linked-Etag", f'"{etag}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(length))
                for name, value in (extra or {}).items():
                    self.send_header(name, value)
                self.end_headers()

            def _missing(self):
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self):
                key, data = self._lookup()
                hub.requests.append(("HEAD", key, None))
                if data is None:
                    return self._missing()
                self._headers(key, data, 200, len(data))

            def do_GET(self):
                key, data = self._lookup()
                rng = self.headers.get("Range")
                hub.requests.append(("GET", key, rng))
                if data is None:
                    return self._missing()
                start = 0
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                body = data[start:]
                if start:
                    extra = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
                    self._headers(key, data, 206, len(body), extra)
                else:
                    self._headers(key, data, 200, len(body))
                if key in hub.stall:
                    self.wfile.write(body[: hub.stall[key]])
                    self.wfile.flush()
                    hub.closing.wait(30)
                    self.close_connection = True
                    return
                if key in hub.drop_once:
                    hub.drop_once.discard(key)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


def _load_script():
    name = "reelsmith_download_models"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up by name
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def hub():
    fake = FakeHub()
    yield fake
    fake.close()


def _blob(seed: int, size: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d-%d" % (seed, counter)).digest()
        counter += 1
    return bytes(out[:size])


def _workflow(tmp_path: pathlib.Path, models: list[dict], name: str = "wf.json") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(json.dumps({
        "nodes": [
            {"id": 1, "type": "ReelsmithWanModelLoader", "properties": {"models": models}},
            {"id": 2, "type": "SaveVideo", "properties": {}},
        ]
    }))
    return path


def _entry(repo: str, path: str, directory: str) -> dict:
    return {"name": path.rsplit("/", 1)[-1], "directory": directory,
            "url": f"https://huggingface.co/{repo}/resolve/main/{path}"}


@pytest.fixture
def setup(hub, tmp_path):
    """Two LFS files and a small git file on the fake hub, and a workflow naming them."""
    big = _blob(1, 300_000)
    other = _blob(2, 120_000)
    small = b'{"tiny": true}'
    hub.files["Org/Repo/split_files/diffusion_models/model_a.safetensors"] = big
    hub.files["Org/Repo/split_files/vae/vae_b.safetensors"] = other
    hub.files["Org/Other/config/tiny.json"] = small
    wf = _workflow(tmp_path, [
        _entry("Org/Repo", "split_files/diffusion_models/model_a.safetensors", "diffusion_models"),
        _entry("Org/Repo", "split_files/vae/vae_b.safetensors", "vae"),
        _entry("Org/Other", "config/tiny.json", "text_encoders"),
    ])
    comfy = tmp_path / "ComfyUI"
    (comfy / "models").mkdir(parents=True)
    return {"wf": wf, "comfy": comfy, "big": big, "other": other, "small": small}


def _env(hub) -> dict:
    env = dict(os.environ, HF_ENDPOINT=hub.endpoint, HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1")
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env.pop(name, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1"
    return env


def run(hub, *args, timeout=60):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args), "--reserve-gib", "0"],
                          check=False, capture_output=True, text=True, timeout=timeout, env=_env(hub))


def test_dry_run_lists_sizes_and_total(hub, setup):
    res = run(hub, setup["wf"], "--comfyui", setup["comfy"], "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "diffusion_models/model_a.safetensors" in res.stdout
    assert "292.97 KiB" in res.stdout  # 300,000 bytes
    assert "total: 410.17 KiB in 3 file(s)" in res.stdout  # 300,000 + 120,000 + 14
    assert "dry run" in res.stdout
    assert not any((setup["comfy"] / "models").rglob("*.safetensors"))
    assert not any(method == "GET" for method, _, _ in hub.requests)


def test_downloads_to_folders_then_skips_present(hub, setup):
    res = run(hub, setup["wf"], "--comfyui", setup["comfy"], "--jobs", "3")
    assert res.returncode == 0, res.stdout + res.stderr
    models = setup["comfy"] / "models"
    assert (models / "diffusion_models" / "model_a.safetensors").read_bytes() == setup["big"]
    assert (models / "vae" / "vae_b.safetensors").read_bytes() == setup["other"]
    assert (models / "text_encoders" / "tiny.json").read_bytes() == setup["small"]
    assert not list(models.rglob("*.part"))
    assert "[total]" in res.stdout and "[done]" in res.stdout

    hub.requests.clear()
    again = run(hub, setup["wf"], "--comfyui", setup["comfy"])
    assert again.returncode == 0, again.stderr
    assert "all files present" in again.stdout
    assert not any(method == "GET" for method, _, _ in hub.requests)

    verified = run(hub, setup["wf"], "--models-dir", models, "--verify")
    assert verified.returncode == 0 and "all files present" in verified.stdout


def test_resume_after_dropped_connection_and_from_part_file(hub, setup):
    key = "Org/Repo/split_files/diffusion_models/model_a.safetensors"
    # larger than huggingface_hub's 10 MiB write chunk, so the first half reaches the disk before the drop
    big = random.Random(7).randbytes(24 * 1024 * 1024)
    hub.files[key] = big
    hub.drop_once.add(key)
    # the vae was interrupted in an earlier run: its first 50,000 bytes are on disk as .part
    vae_dir = setup["comfy"] / "models" / "vae"
    vae_dir.mkdir(parents=True)
    (vae_dir / "vae_b.safetensors.part").write_bytes(setup["other"][:50_000])

    res = run(hub, setup["wf"], "--comfyui", setup["comfy"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert (setup["comfy"] / "models" / "diffusion_models" / "model_a.safetensors").read_bytes() == big
    assert (vae_dir / "vae_b.safetensors").read_bytes() == setup["other"]
    ranges = [(k, r) for m, k, r in hub.requests if m == "GET"]
    resumed = [r for k, r in ranges if k == key and r]
    assert len([k for k, _ in ranges if k == key]) == 2 and resumed  # the dropped transfer resumed, not restarted
    assert 0 < int(resumed[0][6:].rstrip("-")) <= 12 * 1024 * 1024
    assert ("Org/Repo/split_files/vae/vae_b.safetensors", "bytes=50000-") in ranges
    assert "resume" in res.stdout


def test_ctrl_c_keeps_part_file_and_the_next_run_resumes(hub, setup):
    key = "Org/Repo/split_files/diffusion_models/model_a.safetensors"
    big = random.Random(8).randbytes(24 * 1024 * 1024)
    hub.files[key] = big
    hub.stall[key] = 12 * 1024 * 1024
    part = setup["comfy"] / "models" / "diffusion_models" / "model_a.safetensors.part"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(setup["wf"]), "--comfyui", str(setup["comfy"]),
                             "--reserve-gib", "0"], env=_env(hub), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 20
    while not (part.exists() and part.stat().st_size >= 10 * 1024 * 1024) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130 and "run again to resume" in err
    assert part.exists() and not (part.parent / "model_a.safetensors").exists()  # never under the final name
    kept = part.stat().st_size
    assert kept > 0

    del hub.stall[key]
    hub.requests.clear()
    res = run(hub, setup["wf"], "--comfyui", setup["comfy"])
    assert res.returncode == 0, res.stderr
    assert (part.parent / "model_a.safetensors").read_bytes() == big
    assert not part.exists()
    assert ("GET", key, f"bytes={kept}-") in hub.requests


def test_hash_mismatch_is_detected_and_file_removed(hub, setup):
    key = "Org/Repo/split_files/vae/vae_b.safetensors"
    hub.etag_override[key] = "f" * 64
    res = run(hub, setup["wf"], "--comfyui", setup["comfy"])
    assert res.returncode == 1
    assert "vae_b.safetensors" in res.stderr and "does not match" in res.stderr and "sha256" in res.stderr
    vae_dir = setup["comfy"] / "models" / "vae"
    assert not (vae_dir / "vae_b.safetensors").exists()
    assert not (vae_dir / "vae_b.safetensors.part").exists()
    # the other files still arrived
    assert (setup["comfy"] / "models" / "diffusion_models" / "model_a.safetensors").exists()


def test_present_file_with_wrong_content_is_replaced_under_verify(hub, setup):
    target = setup["comfy"] / "models" / "vae" / "vae_b.safetensors"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\0" * len(setup["other"]))  # right size, wrong bytes
    plain = run(hub, setup["wf"], "--comfyui", setup["comfy"])
    assert plain.returncode == 0 and target.read_bytes() == b"\0" * len(setup["other"])  # size fast path
    res = run(hub, setup["wf"], "--comfyui", setup["comfy"], "--verify")
    assert res.returncode == 0, res.stderr
    assert "removed, it will be downloaded again" in res.stdout
    assert target.read_bytes() == setup["other"]


def test_refuses_when_disk_lacks_space(hub, setup, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    module = _load_script()
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(module.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 100_000, 100_000))
    code = module.main([str(setup["wf"]), "--comfyui", str(setup["comfy"]), "--reserve-gib", "0"])
    err = capsys.readouterr().err
    assert code == 3
    assert "not enough disk space" in err and "nothing downloaded" in err
    assert not any(method == "GET" for method, _, _ in hub.requests)
    assert not list((setup["comfy"] / "models").rglob("*.part"))


def test_non_hub_url_is_an_error(hub, tmp_path):
    wf = _workflow(tmp_path, [{"name": "x.safetensors", "directory": "vae",
                               "url": "https://example.com/files/x.safetensors"}])
    res = run(hub, wf, "--models-dir", tmp_path / "models")
    assert res.returncode == 2
    assert "not a Hugging Face Hub file URL" in res.stderr and "example.com" in res.stderr


def test_workflow_without_models_is_an_error(hub, tmp_path):
    wf = _workflow(tmp_path, [])
    res = run(hub, wf, "--models-dir", tmp_path / "models")
    assert res.returncode == 2
    assert "names no model files" in res.stderr


def test_unknown_set_and_missing_file_on_hub(hub, setup, tmp_path):
    res = run(hub, "wan99-nonexistent", "--models-dir", tmp_path / "models")
    assert res.returncode == 2 and "unknown model set" in res.stderr and "wan22-t2v-a14b" in res.stderr
    wf = _workflow(tmp_path, [_entry("Org/Repo", "nope.safetensors", "vae")], "missing.json")
    res = run(hub, wf, "--models-dir", tmp_path / "models")
    assert res.returncode == 1 and "nope.safetensors" in res.stderr


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_target_is_an_error(hub, setup, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        res = run(hub, setup["wf"], "--models-dir", locked / "models")
    finally:
        locked.chmod(0o700)
    assert res.returncode == 2
    assert "cannot write to" in res.stderr


def test_target_under_a_file_is_an_error(hub, setup, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    res = run(hub, setup["wf"], "--models-dir", blocker / "models")
    assert res.returncode == 2
    assert "cannot write to" in res.stderr and "nothing" not in res.stdout.split("total:")[0]
    assert blocker.read_text() == "x"


def test_model_sets_name_the_shipped_workflows():
    module = _load_script()
    for name in module.MODEL_SETS:
        models = module.collect_models(module.resolve_targets([name]))
        assert models and all(m.url.startswith("https://huggingface.co/") for m in models)
    names = {m.name for m in module.collect_models(module.resolve_targets(["wan22-ti2v-5b"]))}
    assert "wan2.2_ti2v_5B_fp16.safetensors" in names and "wan2.2_vae.safetensors" in names
