"""A GPU worker of the pool, run as a script by worker_pool.py:

    python worker_main.py --address 127.0.0.1:PORT --rank R --parent PID   (authkey in $REELSMITH_WORKER_AUTHKEY)

It imports only the ComfyUI-free engine, by path (never ComfyUI's main.py, which multiprocessing's spawn would
re-import as __mp_main__). It exits when its parent dies (PR_SET_PDEATHSIG, plus a parent-pid watchdog) or
when the control connection closes, so ComfyUI exiting or being killed leaves no worker behind.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import pathlib
import queue
import signal
import sys
import threading
import time
import traceback
import types

PACK_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        try:  # PR_SET_PDEATHSIG = 1: SIGKILL when the parent (the thread that started us) exits
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass

    def watch():  # also covers non-Linux, and a parent that died before prctl took effect
        while True:
            if os.getppid() != parent:
                os._exit(0)
            time.sleep(1.0)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _import_engine():
    """The pack as package `reelsmith` without running its __init__ (the node layer needs ComfyUI)."""
    script_dir = str(pathlib.Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p and pathlib.Path(p).resolve() != pathlib.Path(script_dir)]
    if "reelsmith" not in sys.modules:
        package = types.ModuleType("reelsmith")
        package.__path__ = [str(PACK_ROOT)]
        sys.modules["reelsmith"] = package


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in ComfyUI's terminal is ComfyUI's to handle
    _import_engine()

    from multiprocessing.connection import Client

    from reelsmith.engine.parallel import protocol
    from reelsmith.engine.parallel.cancel_blocks import ForwardCancelled
    from reelsmith.engine.parallel.parallel_plan import cpu_test_switch_on

    host, port = args.address.rsplit(":", 1)
    authkey = bytes.fromhex(os.environ.pop(protocol.AUTHKEY_ENV))
    connection = Client((host, int(port)), authkey=authkey)
    protocol.send(connection, protocol.Hello(rank=args.rank, pid=os.getpid()))

    from reelsmith.engine.parallel.worker_runtime import CancelState, RankModels, init_rank
    inbox: queue.Queue = queue.Queue()
    cancel = CancelState()

    def read():
        while True:
            try:
                message = protocol.receive(connection)
            except (EOFError, OSError):
                print(f"rank {args.rank}: control connection closed; exiting", flush=True)
                os._exit(0)
            except Exception:  # noqa: BLE001 - a message this worker cannot read: exit, the parent reports it
                traceback.print_exc()
                print(f"rank {args.rank}: unreadable message from the parent; exiting", flush=True)
                os._exit(1)
            if isinstance(message, protocol.Cancel):
                cancel.request(message.request_id)
            else:
                inbox.put(message)

    threading.Thread(target=read, name="control-reader", daemon=True).start()

    setup = inbox.get()
    if isinstance(setup, protocol.Stop):
        return 0
    try:
        groups = init_rank(setup.spec.plan, args.rank, f"tcp://127.0.0.1:{setup.master_port}")
        models = RankModels(setup.spec, args.rank, groups, test_hooks=cpu_test_switch_on())
    except Exception as error:  # noqa: BLE001 - reported to the parent, which raises it for the user
        protocol.send(connection, protocol.WorkerError(None, args.rank, f"{type(error).__name__}: {error}",
                                                       traceback.format_exc()))
        return 1
    protocol.send(connection, protocol.Ready(rank=args.rank, device=models.device_text(), experts=models.infos,
                                             notes=models.notes))
    print(f"rank {args.rank}: ready on {models.device_text()}", flush=True)

    while True:
        message = inbox.get()
        if isinstance(message, protocol.Stop):
            break
        request_id = message.request_id
        cancel.begin(request_id)
        try:
            models.set_embeds(message.embeds_key, message.embeds)
            models.set_loras(message.expert, message.loras)
            started = time.perf_counter()
            outputs = models.forward(message.expert, message.hidden_states, message.timestep, message.branches,
                                     cancel, message.hold_before_block)
            models.synchronize()
            seconds = time.perf_counter() - started
            layout = models.last_layout
            reply = protocol.ForwardDone(request_id, args.rank,
                                         {k: v.cpu() for k, v in outputs.items()} if layout.is_group_leader(args.rank)
                                         else {}, seconds, layout.name)
        except ForwardCancelled as cancelled:
            reply = protocol.ForwardCancelled(request_id, args.rank, cancelled.blocks_done)
        except Exception as error:  # noqa: BLE001 - reported; the parent tears the pool down
            reply = protocol.WorkerError(request_id, args.rank, f"{type(error).__name__}: {error}",
                                         traceback.format_exc())
        protocol.send(connection, reply)
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
