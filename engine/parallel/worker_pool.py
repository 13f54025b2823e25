"""The worker processes, one per GPU, seen from the ComfyUI process: start, reuse while warm, forward requests
with Cancel and failure handling, stop without leaving a process behind.

- Workers are `subprocess.Popen([sys.executable, worker_main.py, ...])`, not multiprocessing's spawn (which
  would re-import ComfyUI's main.py as __mp_main__). Control: a Listener on 127.0.0.1 with a random authkey.
  Each worker logs to `rank<R>.log` in the pool's temp folder; a failure quotes its tail.
- One pool at a time (`pool_for`): the same WorkerSpec (model files, load options, plan) reuses the warm pool;
  another stops it and starts a new one; a dead or failed pool is replaced at the next request.
- Cancel: while waiting, `check_interrupt` (ComfyUI's interrupt) is polled every 50 ms; on an interrupt the
  workers get a `Cancel`, abandon the forward at the next block (all ranks agree, see cancel_blocks.py), and
  stay warm; the interrupt is re-raised.
- Failure: a worker that exits, crashes or reports an error fails the request with ParallelWorkerError naming
  its rank, device, exit code and log tail, and the pool is torn down (the other ranks may be stuck in a
  collective that will never complete).
- No orphans: workers exit when their connection closes or their parent dies (see worker_main.py);
  `atexit` and garbage collection stop the pool; a re-import of the pack stops an earlier import's workers
  (stale_workers.py); ComfyUI's "unload models" stops the pool (host.on_unload_all_models).
"""

from __future__ import annotations

import atexit
import collections
import itertools
import logging
import os
import pathlib
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from multiprocessing.connection import Listener, wait
from typing import Callable

import torch

from .. import host
from ..errors import ParallelWorkerError
from . import protocol, stale_workers
from .protocol import WorkerSpec

log = logging.getLogger("reelsmith")

WORKER_SCRIPT = pathlib.Path(__file__).resolve().parent / "worker_main.py"
POLL_SECONDS = 0.05
CANCEL_GRACE_SECONDS = 120.0   # a cancel lands at the next block; longer than that means a stuck worker
STOP_GRACE_SECONDS = 10.0
LOG_TAIL_CHARS = 3000

_request_ids = itertools.count(1)
_embeds_keys = itertools.count(1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _log_tail(path: pathlib.Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return text[-LOG_TAIL_CHARS:].strip() or "(empty log)"


def _terminate(processes: list[subprocess.Popen], connections: list, folder: str, pool_id: str,
               graceful: bool = True) -> None:
    """Stop workers for good: Stop message and a grace period when `graceful` (and they can be told), then
    kill. Also runs as the pool's finalizer (garbage collection, interpreter exit)."""
    told = False
    for connection in connections:
        if connection is None:
            continue
        if graceful:
            try:
                protocol.send(connection, protocol.Stop())
                told = True
            except (OSError, ValueError):
                pass
        try:
            connection.close()
        except OSError:
            pass
    deadline = time.monotonic() + (STOP_GRACE_SECONDS if told else 0.0)
    for process in processes:
        try:
            process.wait(timeout=max(0.01, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        if process.poll() is None:
            process.kill()
            process.wait()
    stale_workers.forget(pool_id)
    shutil.rmtree(folder, ignore_errors=True)


class WorkerPool:
    """N worker processes holding the model described by `spec`, started in the constructor."""

    def __init__(self, spec: WorkerSpec, *, check_interrupt: Callable[[], None] | None = None,
                 extra_env: dict[str, str] | None = None):
        self.spec = spec
        self.plan = spec.plan
        self.check_interrupt = check_interrupt or host.throw_if_interrupted
        self.folder = pathlib.Path(tempfile.mkdtemp(prefix=f"reelsmith-workers-{os.getpid()}-"))
        self.pool_id = self.folder.name
        self.processes: list[subprocess.Popen] = []
        self.connections: list = [None] * self.plan.world_size
        self.ready: dict[int, protocol.Ready] = {}
        self.embeds_key: int | None = None  # the text embeddings the workers hold ...
        self._embeds_refs: tuple = ()       # ... and weak references to the tensors they came from
        self.closed = False
        self.last_cancel: dict[int, int] = {}  # rank -> blocks run before the last cancelled forward stopped
        self.last_forward_seconds = 0.0          # the slowest rank's own forward time, last request
        self.splits_used: collections.Counter = collections.Counter()  # forwards per layout the workers ran
        # the finalizer holds the lists, not the pool: it stops the workers when the pool is collected
        self._finalizer = weakref.finalize(self, _terminate, self.processes, self.connections, str(self.folder),
                                           self.pool_id)
        try:
            self._start(extra_env or {})
        except BaseException:
            self.stop()
            raise

    # ------------------------------------------------------------ start

    def _start(self, extra_env: dict[str, str]) -> None:
        authkey = os.urandom(32)
        listener = Listener(("127.0.0.1", 0), authkey=authkey)
        accepted: queue.Queue = queue.Queue()

        def accept():
            while True:
                try:
                    accepted.put(listener.accept())
                except OSError:  # the listener was closed: all connected, or start-up failed
                    return
                except Exception:  # noqa: BLE001 - a connection that failed the authkey check: ignore it
                    continue

        threading.Thread(target=accept, name="reelsmith-accept", daemon=True).start()
        address = "%s:%d" % listener.address
        environment = dict(os.environ, **extra_env)
        environment[protocol.AUTHKEY_ENV] = authkey.hex()
        environment.setdefault("PYTHONUNBUFFERED", "1")
        try:
            for rank in range(self.plan.world_size):
                log_file = open(self.folder / f"rank{rank}.log", "wb")
                command = [sys.executable, str(WORKER_SCRIPT), "--address", address, "--rank", str(rank),
                           "--parent", str(os.getpid())]
                self.processes.append(subprocess.Popen(command, env=environment, stdout=log_file,
                                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                       cwd=str(self.folder)))
                log_file.close()  # the child holds its own copy
            stale_workers.record(self.pool_id, self.pids)
            pending = set(range(self.plan.world_size))
            while pending:
                self._poll_health()
                self.check_interrupt()
                try:
                    connection = accepted.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    continue
                hello = protocol.receive(connection)
                self.connections[hello.rank] = connection
                pending.discard(hello.rank)
        finally:
            listener.close()
        port = _free_port()
        for rank, connection in enumerate(self.connections):
            protocol.send(connection, protocol.Setup(spec=self.spec, rank=rank, master_port=port))
        for reply in self._collect(None, "load"):
            self.ready[reply.rank] = reply
        log.info("Reelsmith: %s ready (%s)", self.plan.describe(),
                 ", ".join(self.ready[r].device for r in sorted(self.ready)))

    # ------------------------------------------------------------ state

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def alive(self) -> bool:
        return not self.closed and all(process.poll() is None for process in self.processes)

    def expert_info(self, name: str) -> protocol.ExpertInfo:
        return self.ready[0].experts[name]

    def text_embeds(self, prompt: torch.Tensor, negative: torch.Tensor | None):
        """(key, embeddings to send or None): a run passes the same tensor objects at every step, so the
        workers get them once per run (a few MB each) and keep them under `key`."""
        source = (prompt, negative)
        if self._embeds_refs and all(ref() is tensor for ref, tensor in zip(self._embeds_refs, source)):
            return self.embeds_key, None
        self.embeds_key = next(_embeds_keys)
        self._embeds_refs = tuple(weakref.ref(t) if t is not None else (lambda: None) for t in source)
        embeds = {"cond": prompt.cpu()}
        if negative is not None:
            embeds["uncond"] = negative.cpu()
        return self.embeds_key, embeds

    def notes(self) -> list[str]:
        return list(self.ready[0].notes) if self.ready else []

    # ------------------------------------------------------------ failures

    def _device_of(self, rank: int) -> str:
        ready = self.ready.get(rank)
        return ready.device if ready else f"{self.plan.device_type}:{rank}"

    def _fail(self, rank: int, what: str, detail: str = "", exit_code: int | None = None) -> None:
        log_tail = _log_tail(self.folder / f"rank{rank}.log")
        self.stop(graceful=False)
        code = f", exit code {exit_code}" if exit_code is not None else ""
        raise ParallelWorkerError(
            f"Parallel worker rank {rank} ({self._device_of(rank)}) {what}{code}. {detail}".rstrip() +
            f"\nThe workers were stopped; the next run starts fresh ones. Last lines of its log:\n{log_tail}")

    def _poll_health(self) -> None:
        for rank, process in enumerate(self.processes):
            code = process.poll()
            if code is not None:
                hint = " (killed: out of host memory, or by a signal)" if code < 0 else ""
                self._fail(rank, f"exited{hint}", exit_code=code)

    def _exit_code_soon(self, rank: int) -> int | None:
        try:
            return self.processes[rank].wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None

    # ------------------------------------------------------------ requests

    def _collect(self, request_id: int | None, doing: str, on_wait: Callable[[], None] | None = None):
        """Every rank's reply to `request_id` (None: to Setup), polling health and `on_wait` in between."""
        replies: dict[int, object] = {}
        while len(replies) < self.plan.world_size:
            self._poll_health()
            if on_wait is not None:
                on_wait()
            waiting = [c for r, c in enumerate(self.connections) if r not in replies]
            for connection in wait(waiting, timeout=POLL_SECONDS):
                rank = self.connections.index(connection)
                try:
                    reply = protocol.receive(connection)
                except (EOFError, OSError):
                    code = self._exit_code_soon(rank)
                    self._fail(rank, f"{'exited' if code is not None else 'closed its connection'} during {doing}",
                               exit_code=code)
                if isinstance(reply, protocol.WorkerError):
                    self._fail(rank, f"failed during {doing}: {reply.message}", reply.traceback[-LOG_TAIL_CHARS:])
                if getattr(reply, "request_id", None) != request_id:
                    continue  # a late reply to an earlier, abandoned request
                replies[rank] = reply
        return [replies[rank] for rank in sorted(replies)]

    def forward(self, message: protocol.Forward) -> dict[str, torch.Tensor]:
        """Send one forward to every rank; returns branch -> output (CPU, model dtype) from the group leaders.
        An interrupt cancels it on the workers (which stay warm) and is re-raised."""
        if self.closed:
            raise ParallelWorkerError("This worker pool was stopped; start a new one.")
        message.request_id = next(_request_ids)
        for rank, connection in enumerate(self.connections):
            try:
                protocol.send(connection, message)
            except OSError:
                self._fail(rank, "could not be reached", exit_code=self._exit_code_soon(rank))
        interrupt: list[BaseException] = []

        def on_wait():
            if interrupt:
                if time.monotonic() > interrupt_deadline[0]:
                    self.stop(graceful=False)
                    raise interrupt[0]
                return
            try:
                self.check_interrupt()
            except BaseException as error:
                interrupt.append(error)
                interrupt_deadline[0] = time.monotonic() + CANCEL_GRACE_SECONDS
                for connection in self.connections:
                    protocol.send(connection, protocol.Cancel(message.request_id))

        interrupt_deadline = [0.0]
        replies = self._collect(message.request_id, "a forward", on_wait)
        if interrupt:
            self.last_cancel = {r.rank: r.blocks_done for r in replies if isinstance(r, protocol.ForwardCancelled)}
            raise interrupt[0]
        if any(isinstance(reply, protocol.ForwardCancelled) for reply in replies):
            raise ParallelWorkerError("The workers cancelled a forward that was not cancelled here.")
        outputs: dict[str, torch.Tensor] = {}
        for reply in replies:
            outputs.update(reply.outputs)
        self.last_forward_seconds = max(reply.seconds for reply in replies)
        self.splits_used[replies[0].split] += 1
        return outputs

    # ------------------------------------------------------------ stop

    def stop(self, graceful: bool = True) -> None:
        """Stop the workers (graceful: let them leave their process group cleanly first)."""
        if self.closed:
            return
        self.closed = True
        if self._finalizer.detach() is not None:
            _terminate(self.processes, self.connections, str(self.folder), self.pool_id, graceful)


# ---------------------------------------------------------------- the one active pool

_lock = threading.RLock()
_active: WorkerPool | None = None


def pool_for(spec: WorkerSpec, **kwargs) -> WorkerPool:
    """The warm pool for `spec`, or a new one (stopping any other first: every pool uses all its GPUs)."""
    global _active
    with _lock:
        if _active is not None and _active.spec == spec and _active.alive():
            return _active
        stop_active_pool()
        host.on_unload_all_models("reelsmith.parallel", stop_active_pool)
        _active = WorkerPool(spec, **kwargs)
        return _active


def active_pool() -> WorkerPool | None:
    return _active


def stop_active_pool() -> None:
    global _active
    with _lock:
        pool, _active = _active, None
    if pool is not None:
        pool.stop()


atexit.register(stop_active_pool)
stale_workers.stop_stale_workers()  # workers an earlier import of the pack left in this process
