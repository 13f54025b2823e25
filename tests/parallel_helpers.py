"""What the several-GPU tests share: CPU worker specs (the CPU test switch, gloo) and process checks."""

import os
import time

import pytest

from reelsmith.engine.parallel import protocol
from reelsmith.engine.parallel.parallel_plan import make_parallel_plan


@pytest.fixture
def cpu_switch(monkeypatch):
    """REELSMITH_PARALLEL_CPU=1: CPU workers over gloo (inherited by the worker processes)."""
    monkeypatch.setenv("REELSMITH_PARALLEL_CPU", "1")


def cpu_plan(gpus="2", parallel="sequence"):
    os.environ["REELSMITH_PARALLEL_CPU"] = "1"
    try:
        return make_parallel_plan(gpus, parallel)
    finally:
        del os.environ["REELSMITH_PARALLEL_CPU"]


def empty_spec(precision="bf16", parallel="sequence") -> protocol.WorkerSpec:
    """Workers that load nothing: enough for lifecycle tests, and quick to start."""
    return protocol.WorkerSpec(plan=cpu_plan("2", parallel), experts=(), precision=precision)


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


def wait_gone(pids, seconds=20.0) -> list[int]:
    """The pids still running after up to `seconds` (empty: all gone)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if running(pid)]
        if not alive:
            return []
        time.sleep(0.1)
    return [pid for pid in pids if running(pid)]
