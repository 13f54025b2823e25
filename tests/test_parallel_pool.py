"""The worker pool's protocol and lifecycle on CPU workers (test switch, gloo): warm reuse, restart on other
options, stop, and no process left after a stop, a garbage-collected pool, atexit, a killed parent or a
re-import of the pack."""

import dataclasses
import gc
import importlib.util
import multiprocessing
import subprocess
import sys
import time
import textwrap
from multiprocessing.connection import Client, Listener

import pytest
import torch

from parallel_helpers import cpu_plan, cpu_switch, empty_spec, running, wait_gone  # noqa: F401
from pack_paths import PACK_ROOT
from reelsmith.engine.errors import ParallelWorkerError
from reelsmith.engine.parallel import protocol, stale_workers, worker_pool


def test_messages_round_trip_with_tensors():
    a, b = multiprocessing.Pipe()
    spec = empty_spec()
    hidden = torch.randn(1, 16, 2, 4, 8).to(torch.bfloat16)
    messages = [
        protocol.Hello(rank=1, pid=123),
        protocol.Setup(spec=spec, rank=1, master_port=2345),
        protocol.Setup(spec=empty_spec(parallel="auto"), rank=0, master_port=2345),  # two layouts
        protocol.Forward(7, "low", (("/x/lora.safetensors", 0.5),), hidden, torch.tensor([999.0]), ("cond", "uncond"),
                         3, {"cond": torch.randn(1, 512, 32)}),
        protocol.ForwardDone(7, 0, {"cond": hidden}, 1.5, "cfg"),
        protocol.ForwardCancelled(7, 1, 5),
        protocol.WorkerError(None, 1, "RuntimeError: boom", "Traceback ..."),
        protocol.Cancel(7), protocol.Stop(),
    ]
    for message in messages:
        protocol.send(a, message)
        raw = b.recv_bytes()
        # no class path of the pack in the bytes: ComfyUI imports the pack under its folder name, a worker as
        # `reelsmith`, so a pickled class path would not resolve on the other side
        assert b"engine.parallel" not in raw and b"reelsmith." not in raw
        a.send_bytes(raw)
        echoed = protocol.receive(b)
        assert type(echoed) is type(message)
        for name, value in vars(message).items():
            got = getattr(echoed, name)
            if isinstance(value, torch.Tensor):
                assert torch.equal(got, value) and got.dtype == value.dtype
            elif isinstance(value, dict) and value and isinstance(next(iter(value.values())), torch.Tensor):
                assert all(torch.equal(got[k], v) for k, v in value.items())
            else:
                assert got == value
    assert not b.poll(0)  # nothing left over


def test_a_class_the_receiver_cannot_rebuild_is_refused_when_sent():
    @dataclasses.dataclass
    class Stranger:
        value: int

    a, b = multiprocessing.Pipe()
    with pytest.raises(TypeError, match="Stranger is not a protocol message class"):
        protocol.send(a, protocol.Setup(spec=Stranger(1), rank=0, master_port=1))
    assert not b.poll(0)  # nothing half-sent


def test_control_channel_needs_the_authkey():
    listener = Listener(("127.0.0.1", 0), authkey=b"right-key")
    assert listener.address[0] == "127.0.0.1"
    result = []

    def accept():
        try:
            listener.accept()
            result.append("accepted")
        except Exception as error:  # noqa: BLE001
            result.append(type(error).__name__)

    import threading
    thread = threading.Thread(target=accept)
    thread.start()
    with pytest.raises(Exception):
        Client(listener.address, authkey=b"wrong-key")
    thread.join(5)
    listener.close()
    assert result == ["AuthenticationError"]


def test_start_reuse_restart_stop(cpu_switch):
    spec = empty_spec()
    pool = worker_pool.pool_for(spec)
    first = pool.pids
    assert len(first) == 2 and all(running(pid) for pid in first)
    assert [pool.ready[r].rank for r in range(2)] == [0, 1]
    record = stale_workers.ROOT / str(__import__("os").getpid()) / f"{pool.pool_id}.pids"
    assert sorted(map(int, record.read_text().split())) == sorted(first)

    again = worker_pool.pool_for(empty_spec())  # equal spec: the warm pool, same processes
    assert again is pool and again.pids == first

    other = worker_pool.pool_for(empty_spec(precision="fp16"))  # other load options: a new pool
    assert other is not pool and set(other.pids).isdisjoint(first)
    assert wait_gone(first) == [] and pool.closed and not record.exists()

    worker_pool.stop_active_pool()
    assert worker_pool.active_pool() is None
    assert wait_gone(other.pids) == []


def test_garbage_collected_pool_leaves_no_process(cpu_switch):
    pool = worker_pool.WorkerPool(empty_spec())
    pids = pool.pids
    assert all(running(pid) for pid in pids)
    del pool
    gc.collect()
    assert wait_gone(pids) == []


CHILD = textwrap.dedent("""
    import os, sys, time, types
    sys.path.insert(0, {tests!r})
    package = types.ModuleType("reelsmith")  # the engine only: quicker than the whole pack
    package.__path__ = [{pack!r}]
    sys.modules["reelsmith"] = package
    from parallel_helpers import empty_spec
    from reelsmith.engine.parallel import worker_pool
    pool = worker_pool.pool_for(empty_spec())
    print(" ".join(map(str, pool.pids)), flush=True)
    if sys.argv[1] == "hang":
        time.sleep(600)
    sys.stdin.readline()  # 'exit': ends when the test has seen the workers running
""")


@pytest.mark.parametrize("ending", ["exit", "hang"])
def test_no_worker_outlives_its_parent(cpu_switch, tmp_path, ending):
    """'exit': the parent ends normally (atexit stops the pool); 'hang': the parent is killed (SIGKILL: no
    atexit) and the workers notice through PR_SET_PDEATHSIG / their closed connection."""
    script = tmp_path / "parent.py"
    script.write_text(CHILD.format(tests=str(PACK_ROOT / "tests"), pack=str(PACK_ROOT)))
    parent = subprocess.Popen([sys.executable, str(script), ending], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 2 and all(running(pid) for pid in pids)
    if ending == "hang":
        parent.kill()
    else:
        parent.stdin.close()  # the parent returns from readline and exits normally
    assert parent.wait(60) is not None
    assert wait_gone(pids) == []


def test_reimported_pack_stops_the_previous_instances_workers(cpu_switch):
    pool = worker_pool.pool_for(empty_spec())
    pids = pool.pids
    # what a ComfyUI reload does: the module runs again in the same process, as a new module object
    spec = importlib.util.spec_from_file_location("reelsmith.engine.parallel.worker_pool_reloaded",
                                                  worker_pool.__file__)
    reloaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reloaded)
    assert wait_gone(pids) == []
    # (a process /proc already shows as a zombie may not be waitable for a moment yet)
    deadline = time.monotonic() + 10
    while pool.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pool.alive()
    # the old module's next request starts fresh workers instead of using dead ones
    fresh = worker_pool.pool_for(empty_spec())
    assert fresh is not pool and set(fresh.pids).isdisjoint(pids)
    worker_pool.stop_active_pool()
    assert wait_gone(fresh.pids) == []


def test_setup_failure_names_the_rank_and_leaves_nothing(cpu_switch, tmp_path):
    missing = tmp_path / "no_such_model.safetensors"
    spec = protocol.WorkerSpec(plan=cpu_plan(), experts=(protocol.ExpertFiles("high", str(missing), "ComfyUI single file",
                                                                              "my model"),))
    with pytest.raises(ParallelWorkerError, match=r"rank \d \(cpu:\d\) failed during load: .*no_such_model") as error:
        worker_pool.pool_for(spec)
    assert "the next run starts fresh ones" in str(error.value)
    assert worker_pool.active_pool() is None or not worker_pool.active_pool().alive()
    worker_pool.stop_active_pool()
