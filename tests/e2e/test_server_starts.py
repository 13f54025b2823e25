"""The end-to-end harness itself: ComfyUI starts with the pack, loads it cleanly, lists its nodes, stays on
127.0.0.1, and the command-line client can queue a workflow on it and fetch the result."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import pathlib
import re
import socket
import sys

import pytest
from reelsmith import NODE_CLASS_MAPPINGS

pytestmark = pytest.mark.e2e

PACK_ROOT = pathlib.Path(__file__).resolve().parents[2]
PACK_NAME = "Reelsmith"
# ComfyUI logs with "%(message)s" only (no level names), so problem lines are recognised by their words
BAD_WORDS = re.compile(r"traceback|error|exception|warn|fail|cannot|could not|unable|missing|not found|deprecat|"
                       r"skipping|invalid|broken", re.IGNORECASE)


def _pack_markers(server) -> list[str]:
    return [str(server.custom_nodes_dir / PACK_NAME), str(PACK_ROOT), os.path.realpath(PACK_ROOT), PACK_NAME.lower()]


def _mentions_pack(text: str, markers: list[str]) -> bool:
    lowered = text.lower()
    return any(marker.lower() in lowered for marker in markers)


def _traceback_blocks(lines: list[str]) -> list[list[str]]:
    """Each 'Traceback (most recent call last):' with its indented frames and the exception line after them."""
    blocks, index = [], 0
    while index < len(lines):
        if lines[index].startswith("Traceback (most recent call last)"):
            block = [lines[index]]
            index += 1
            while index < len(lines) and (lines[index].startswith((" ", "\t")) or not lines[index].strip()):
                block.append(lines[index])
                index += 1
            if index < len(lines):
                block.append(lines[index])  # the exception line
            blocks.append(block)
        index += 1
    return blocks


def test_pack_loads_without_errors(comfyui_server):
    server = comfyui_server.server
    lines = comfyui_server.log_path.read_text(errors="replace").splitlines()
    # start-up only: what later prompts log (other tests share this server) is not a load problem
    ready = next((i for i, line in enumerate(lines) if line.startswith("To see the GUI go to")), len(lines))
    lines = lines[:ready + 1]
    markers = _pack_markers(server)
    link = str(server.custom_nodes_dir / PACK_NAME)

    blocks = ["\n".join(block) for block in _traceback_blocks(lines)]
    bad_tracebacks = [block for block in blocks if _mentions_pack(block, markers)]
    import_lines = [line for line in lines if re.search(r"seconds.*: " + re.escape(link) + r"\s*$", line)]
    assert import_lines, (f"ComfyUI did not report importing {link}; log tail:\n" + "\n".join(lines[-40:]))
    assert not any("IMPORT FAILED" in line for line in import_lines), \
        "\n".join(import_lines + ["", "tracebacks involving the pack:"] + bad_tracebacks)
    assert not bad_tracebacks, "tracebacks involving the pack:\n\n" + "\n\n".join(bad_tracebacks)
    bad_lines = [line for line in lines if _mentions_pack(line, markers) and BAD_WORDS.search(line)
                 and not line.startswith("$ ")]  # "$ ..." is the launch command the harness logs
    assert not bad_lines, "log lines about the pack that look like problems:\n" + "\n".join(bad_lines)


def test_object_info_lists_every_pack_node(comfyui_server):
    object_info = comfyui_server.client.object_info(refresh=True)
    assert "SaveImage" in object_info, "object_info does not look like ComfyUI's"
    missing = sorted(set(NODE_CLASS_MAPPINGS) - set(object_info))
    assert not missing, f"pack node classes missing from GET /object_info: {missing}"


# --- listening sockets, from /proc (Linux)


def _process_group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) == pgid:  # fields after "(comm)": state, ppid, pgrp, ...
                pids.append(int(entry.name))
    return pids


def _socket_inodes(pids: list[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        fd_dir = pathlib.Path(f"/proc/{pid}/fd")
        try:
            for fd in fd_dir.iterdir():
                with_target = os.readlink(fd)
                if with_target.startswith("socket:["):
                    inodes.add(with_target[len("socket:["):-1])
        except OSError:
            continue
    return inodes


def _decode_address(hex_address: str) -> tuple[str, int]:
    host_hex, port_hex = hex_address.split(":")
    raw = bytes.fromhex(host_hex)
    # /proc/net/* prints each 32-bit word in host byte order
    host = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)) if sys.byteorder == "little" else raw
    family = socket.AF_INET if len(host) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, host), int(port_hex, 16)


def _bound_sockets(inodes: set[str]) -> list[tuple[str, str, int]]:
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        table = pathlib.Path(f"/proc/net/{proto}")
        if not table.exists():
            continue
        for row in table.read_text().splitlines()[1:]:
            cols = row.split()
            local, remote, state, inode = cols[1], cols[2], cols[3], cols[9]
            if inode not in inodes:
                continue
            listening = state == "0A" if proto.startswith("tcp") else int(remote.split(":")[1], 16) == 0
            if listening:
                host, port = _decode_address(local)
                found.append((proto, host, port))
    return found


def _is_loopback(host: str) -> bool:
    address = ipaddress.ip_address(host)
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


@pytest.mark.skipif(not pathlib.Path("/proc/net/tcp").exists(), reason="needs Linux /proc to list sockets")
def test_server_listens_only_on_localhost(comfyui_server):
    server = comfyui_server.server
    pids = _process_group_pids(server.process.pid) or [server.process.pid]
    bound = _bound_sockets(_socket_inodes(pids))
    assert any(proto == "tcp" and host == "127.0.0.1" and port == server.port_in_use for proto, host, port in bound), \
        f"ComfyUI's listening socket not found among {bound}"
    exposed = [(proto, host, port) for proto, host, port in bound if not _is_loopback(host)]
    assert not exposed, f"ComfyUI (or something it started) listens beyond 127.0.0.1: {exposed}"


# --- the command-line client against the real server


def _load_render():
    spec = importlib.util.spec_from_file_location("reelsmith_render_cli", PACK_ROOT / "scripts" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CORE_WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 32, "batch_size": 1, "color": 255},
          "_meta": {"title": "Blank"}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "e2e_core"},
          "_meta": {"title": "Save"}},
}

CORE_UI_WORKFLOW = {
    "last_node_id": 2, "last_link_id": 1, "version": 0.4, "groups": [], "config": {}, "extra": {},
    "links": [[1, 1, 0, 2, 0, "IMAGE"]],
    "nodes": [
        {"id": 1, "type": "EmptyImage", "title": "Blank", "pos": [0, 0], "size": [300, 130], "flags": {}, "order": 0,
         "mode": 0, "inputs": [], "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1], "slot_index": 0}],
         "properties": {"Node name for S&R": "EmptyImage"}, "widgets_values": [40, 24, 1, 0]},
        {"id": 2, "type": "SaveImage", "pos": [400, 0], "size": [300, 270], "flags": {}, "order": 1, "mode": 0,
         "inputs": [{"name": "images", "type": "IMAGE", "link": 1}], "outputs": [],
         "properties": {"Node name for S&R": "SaveImage"}, "widgets_values": ["e2e_ui"]},
    ],
}


@pytest.mark.parametrize("workflow, expected_size", [(CORE_WORKFLOW, (48, 32)), (CORE_UI_WORKFLOW, (48, 24))],
                         ids=["api-format", "ui-format"])
def test_render_cli_runs_a_core_workflow(comfyui_server, tmp_path, capsys, workflow, expected_size):
    pytest.importorskip("PIL")
    from PIL import Image

    render = _load_render()
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(workflow))
    code = render.main([str(path), "--server", comfyui_server.url, "--out", str(tmp_path / "out"),
                        "--set", "Blank.width=48"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    files = [pathlib.Path(line) for line in captured.out.splitlines()]
    assert len(files) == 1 and files[0].suffix == ".png", captured.out
    with Image.open(files[0]) as image:
        assert image.size == expected_size


def test_render_cli_reports_validation_and_node_errors(comfyui_server, tmp_path, capsys):
    render = _load_render()
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(CORE_WORKFLOW))
    base = [str(path), "--server", comfyui_server.url, "--out", str(tmp_path / "out")]

    assert render.main(base + ["--set", "Blank.width=0"]) == 1
    err = capsys.readouterr().err
    assert "rejected" in err and "node 1 (EmptyImage, title 'Blank')" in err and "width" in err

    # SaveImage refuses to write outside its output folder: a runtime error in node 2
    assert render.main(base + ["--set", "Save.filename_prefix=../../outside", "--set", "Blank.color=7"]) == 1
    err = capsys.readouterr().err
    assert "error in node 2 (class SaveImage, title 'Save')" in err and "outside the output folder" in err
