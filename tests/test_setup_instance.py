"""scripts/setup_instance.sh against a fake ComfyUI folder, with no root, no pip, no systemd, no network.

The fake ComfyUI is a temp folder with main.py, comfyui_version.py, custom_nodes/ and a venv whose python is
this interpreter. The OS and the NVIDIA driver come from overrides (REELSMITH_OS_RELEASE,
REELSMITH_NVIDIA_SMI); the service file is rendered into the ComfyUI folder with --no-systemd.
"""

import os
import pathlib
import shutil
import socket
import stat
import subprocess
import sys

import pytest
import yaml
from pack_paths import PACK_ROOT

SCRIPT = PACK_ROOT / "scripts" / "setup_instance.sh"
UNIT = "reelsmith-comfyui.service"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _os_release(path: pathlib.Path, distro: str, version: str, pretty: str) -> pathlib.Path:
    path.write_text(f'ID={distro}\nVERSION_ID="{version}"\nPRETTY_NAME="{pretty}"\n')
    return path


@pytest.fixture
def box(tmp_path):
    comfy = tmp_path / "ComfyUI"
    (comfy / "custom_nodes").mkdir(parents=True)
    (comfy / "main.py").write_text("print('fake ComfyUI')\n")
    (comfy / "comfyui_version.py").write_text('__version__ = "0.8.0"\n')
    (comfy / "venv" / "bin").mkdir(parents=True)
    (comfy / "venv" / "bin" / "python").symlink_to(sys.executable)
    env = dict(os.environ)
    env["REELSMITH_OS_RELEASE"] = str(_os_release(tmp_path / "os-release", "ubuntu", "24.04", "Ubuntu 24.04.1 LTS"))
    env["REELSMITH_NVIDIA_SMI"] = str(tmp_path / "no-nvidia-smi")
    env["REELSMITH_PIP"] = "false"  # any pip call would fail the run
    env["HOME"] = str(tmp_path / "home")
    return {"tmp": tmp_path, "comfy": comfy, "env": env, "port": _free_port()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup(box, *args, env=None):
    base = ["bash", str(SCRIPT), "--comfyui", str(box["comfy"]), "--allow-no-gpu", "--no-systemd", "--skip-pip",
            "--port", str(box["port"])]
    return subprocess.run(base + list(args), check=False, capture_output=True, text=True, timeout=60, env=env or box["env"])


def _snapshot(comfy: pathlib.Path) -> dict:
    state = {}
    for path in sorted(comfy.rglob("*")):
        if path.is_symlink():
            state[str(path)] = ("link", os.readlink(path))
        elif path.is_file():
            st = path.stat()
            state[str(path)] = ("file", path.read_bytes(), st.st_mtime_ns)
        else:
            state[str(path)] = ("dir",)
    return state


def test_links_pack_writes_yaml_and_renders_service_on_localhost(box):
    res = setup(box)
    assert res.returncode == 0, res.stdout + res.stderr
    comfy = box["comfy"]
    link = comfy / "custom_nodes" / "Reelsmith"
    assert link.is_symlink() and link.resolve() == PACK_ROOT.resolve()

    config = yaml.safe_load((comfy / ".reelsmith" / "extra_model_paths.yaml").read_text())
    assert config["reelsmith"]["base_path"] == str(comfy / "models")
    assert config["reelsmith"]["diffusion_models"] == "diffusion_models"
    assert (comfy / "models" / "diffusion_models").is_dir()

    unit = (comfy / ".reelsmith" / UNIT).read_text()
    assert f"--listen 127.0.0.1 --port {box['port']}" in unit
    assert "0.0.0.0" not in unit
    assert str(comfy / "venv" / "bin" / "python") in unit
    assert "--extra-model-paths-config" in unit and "[Install]" in unit

    marker = (comfy / ".reelsmith" / "install-state").read_text()
    assert "listen=127.0.0.1" in marker and "comfyui_version=0.8.0" in marker
    assert "ssh -N -L" in res.stdout


def test_second_run_changes_nothing(box):
    first = setup(box)
    assert first.returncode == 0, first.stderr
    before = _snapshot(box["comfy"])
    second = setup(box)
    assert second.returncode == 0, second.stderr
    assert "nothing changed" in second.stdout
    assert "wrote:" not in second.stdout
    assert _snapshot(box["comfy"]) == before


def test_listen_all_renders_0000_and_warns(box):
    res = setup(box, "--listen-all")
    assert res.returncode == 0, res.stderr
    unit = (box["comfy"] / ".reelsmith" / UNIT).read_text()
    assert f"--listen 0.0.0.0 --port {box['port']}" in unit
    assert "WARNING" in res.stderr and "NO authentication" in res.stderr
    # back to the default: re-rendered on 127.0.0.1
    again = setup(box)
    assert again.returncode == 0
    assert "0.0.0.0" not in (box["comfy"] / ".reelsmith" / UNIT).read_text()


def test_models_dir_and_service_file_options(box):
    models = box["tmp"] / "data" / "models"
    unit_path = box["tmp"] / "units" / UNIT
    res = setup(box, "--models-dir", str(models), "--service-file", str(unit_path))
    assert res.returncode == 0, res.stderr
    config = yaml.safe_load((box["comfy"] / ".reelsmith" / "extra_model_paths.yaml").read_text())
    assert config["reelsmith"]["base_path"] == str(models)
    assert (models / "vae").is_dir()
    assert "127.0.0.1" in unit_path.read_text()


def test_check_lists_sections_and_changes_nothing(box):
    res = setup(box, "--check")
    for section in ("== System", "== GPU", "== ComfyUI", "== Python", "== Reelsmith", "== Service", "== Disk",
                    "== Missing"):
        assert section in res.stdout
    assert res.returncode == 1  # not set up yet: it says what is missing
    assert "Reelsmith in custom_nodes" in res.stdout and "NVIDIA driver" in res.stdout
    assert not (box["comfy"] / "custom_nodes" / "Reelsmith").exists()
    assert not (box["comfy"] / ".reelsmith").exists()

    assert setup(box).returncode == 0
    after = setup(box, "--check")
    assert "installed: complete" in after.stdout and "--listen 127.0.0.1" in after.stdout
    assert "Reelsmith in custom_nodes" not in after.stdout


def test_fake_gpu_is_reported_and_gates_fast_path(box):
    smi = box["tmp"] / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'case "$1" in --query-gpu*) echo "0, NVIDIA H100 80GB HBM3, 9.0, 570.86.15, 80000, 81559";;\n'
        '  *) echo "| NVIDIA-SMI 570.86.15   Driver Version: 570.86.15   CUDA Version: 12.8 |";; esac\n'
    )
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    env = dict(box["env"], REELSMITH_NVIDIA_SMI=str(smi))
    check = setup(box, "--check", env=env)
    assert "NVIDIA H100 80GB HBM3" in check.stdout and "compute capability 9.0" in check.stdout
    assert "570.86.15" in check.stdout and "CUDA (driver): 12.8" in check.stdout and "80000 MiB" in check.stdout
    res = setup(box, "--fast-path", env=env)
    assert res.returncode == 0, res.stderr
    assert "would install sageattention (compute capability 9.0)" in res.stdout

    old = box["tmp"] / "nvidia-smi-old"
    old.write_text(smi.read_text().replace("9.0", "7.5"))
    old.chmod(smi.stat().st_mode)
    res = setup(box, "--fast-path", env=dict(box["env"], REELSMITH_NVIDIA_SMI=str(old)))
    assert res.returncode == 0 and "needs compute capability >= 8.0, found 7.5" in res.stdout


def test_unsupported_os_stops(box):
    env = dict(box["env"], REELSMITH_OS_RELEASE=str(
        _os_release(box["tmp"] / "fedora", "fedora", "40", "Fedora Linux 40")))
    res = setup(box, env=env)
    assert res.returncode != 0
    assert "unsupported OS: Fedora Linux 40" in res.stderr and "Ubuntu 22.04" in res.stderr
    assert not (box["comfy"] / "custom_nodes" / "Reelsmith").exists()


def test_no_driver_without_escape_hatch_stops(box):
    res = subprocess.run(["bash", str(SCRIPT), "--comfyui", str(box["comfy"]), "--no-systemd", "--skip-pip",
                          "--port", str(box["port"])], check=False, capture_output=True, text=True, timeout=60, env=box["env"])
    assert res.returncode != 0 and "no NVIDIA driver" in res.stderr and "--allow-no-gpu" in res.stderr


def test_port_in_use_is_a_clear_error(box):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", box["port"]))
        holder.listen(1)
        res = setup(box)
    assert res.returncode != 0
    assert f"port {box['port']} on 127.0.0.1 is already in use" in res.stderr
    assert not (box["comfy"] / ".reelsmith" / "install-state").exists()


def test_failed_run_is_not_marked_complete(box):
    assert setup(box).returncode == 0
    marker = box["comfy"] / ".reelsmith" / "install-state"
    assert marker.exists()
    env = dict(box["env"], REELSMITH_PIP="false")
    res = subprocess.run(["bash", str(SCRIPT), "--comfyui", str(box["comfy"]), "--allow-no-gpu", "--no-systemd",
                          "--port", str(box["port"])], check=False, capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode != 0  # pip failed
    assert not marker.exists()


def test_dry_run_of_fresh_install_shows_comfy_cli_and_changes_nothing(box):
    home = box["tmp"] / "home"
    res = subprocess.run(["bash", str(SCRIPT), "--allow-no-gpu", "--dry-run", "--no-systemd",
                          "--port", str(box["port"])], check=False, capture_output=True, text=True, timeout=60, env=box["env"])
    assert res.returncode == 0, res.stderr
    assert f"--skip-prompt --workspace {home}/comfy/ComfyUI install --cpu" in res.stdout
    assert "requirements.txt" in res.stdout and "dry run: nothing changed" in res.stdout
    assert not home.exists()


def test_not_a_comfyui_folder(box, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = subprocess.run(["bash", str(SCRIPT), "--comfyui", str(empty), "--allow-no-gpu", "--no-systemd",
                          "--skip-pip", "--port", str(box["port"])],
                         check=False, capture_output=True, text=True, timeout=60, env=box["env"])
    assert res.returncode != 0 and "not a ComfyUI folder" in res.stderr
