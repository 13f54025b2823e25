"""Pid files of running workers, so a new import of the pack can stop the workers an earlier one left.

A ComfyUI that reloads custom nodes imports the pack again in the same process: the old module's pool (and
its GPUs' memory) would otherwise live on unseen. Each pool records its workers under
`<tmp>/reelsmith-parallel/<parent pid>/<pool id>.pids`; at import, workers recorded by this same process, or by
a process that no longer exists, are stopped. A pid is only signalled when /proc says it is still one of our
workers (its command line runs worker_main.py), never a process that reused the number.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import tempfile

ROOT = pathlib.Path(tempfile.gettempdir()) / "reelsmith-parallel"
WORKER_SCRIPT_NAME = "worker_main.py"


def _parent_dir(parent: int | None = None) -> pathlib.Path:
    return ROOT / str(parent if parent is not None else os.getpid())


def record(pool_id: str, pids: list[int]) -> pathlib.Path:
    folder = _parent_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{pool_id}.pids"
    path.write_text("".join(f"{pid}\n" for pid in pids))
    return path


def forget(pool_id: str) -> None:
    folder = _parent_dir()
    (folder / f"{pool_id}.pids").unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass


def is_our_worker(pid: int) -> bool:
    try:
        command = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(part.endswith(WORKER_SCRIPT_NAME.encode()) for part in command)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_stale_workers(keep: set[int] = frozenset()) -> list[int]:
    """Kill recorded workers of this process (except `keep`) and of dead parents; returns the pids signalled."""
    if not ROOT.is_dir():
        return []
    stopped = []
    for folder in ROOT.iterdir():
        if not folder.name.isdigit():
            continue
        parent = int(folder.name)
        mine = parent == os.getpid()
        if not mine and _process_exists(parent):
            continue  # another live process's workers
        for pid_file in folder.glob("*.pids"):
            for line in pid_file.read_text().split():
                pid = int(line) if line.isdigit() else 0
                if pid and pid not in keep and is_our_worker(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                        stopped.append(pid)
                    except OSError:
                        pass
            pid_file.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
    return stopped
