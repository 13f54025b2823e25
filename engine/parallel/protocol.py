"""The messages between the ComfyUI process and its GPU workers, and how they travel.

One `multiprocessing.connection` per worker, on 127.0.0.1 with a random authkey (checked by the connection
handshake before anything is unpickled). Messages are pickled with the standard pickler and sent as bytes:
`Connection.send` would use multiprocessing's pickler, for which torch registers shared-memory reductions
that only work between processes multiprocessing started itself. Tensors travel as CPU tensors.
The message classes travel by name, as plain fields: the pack's package is called differently in ComfyUI's
process (its folder name) and in a worker (`reelsmith`), so pickled class paths would not resolve.

Order of a pool's life: worker connects and sends `Hello`; main sends `Setup`; worker loads and answers
`Ready` (or `WorkerError`); then any number of `Forward` -> `ForwardDone` / `ForwardCancelled` /
`WorkerError` (a `Cancel` may arrive while a forward runs); `Stop` ends it (so does a closed connection).
"""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field

import torch

from .parallel_plan import ParallelPlan, SplitLayout

AUTHKEY_ENV = "REELSMITH_WORKER_AUTHKEY"  # the key reaches the worker by environment, never by argv (ps shows argv)


@dataclass(frozen=True)
class ExpertFiles:
    name: str      # "high" | "low"
    path: str
    layout: str    # for messages: 'diffusers', 'Wan-AI release', 'ComfyUI single file'
    label: str


@dataclass(frozen=True)
class WorkerSpec:
    """Everything that decides what the workers hold: an equal spec reuses the warm pool, another restarts it."""
    plan: ParallelPlan
    experts: tuple[ExpertFiles, ...]
    precision: str = "bf16"
    attention: str = "auto"
    compile: str = "off"


# ---------------------------------------------------------------- worker -> main

@dataclass
class Hello:
    rank: int
    pid: int


@dataclass
class ExpertInfo:
    variant: str                 # WanVariant name, e.g. "t2v-a14b"
    config: dict                 # the transformer's diffusers config
    activation_dtype: torch.dtype


@dataclass
class Ready:
    rank: int
    device: str                  # e.g. "cuda:1 (NVIDIA H200)"
    experts: dict[str, ExpertInfo]
    notes: list[str] = field(default_factory=list)


@dataclass
class ForwardDone:
    request_id: int
    rank: int
    outputs: dict[str, torch.Tensor]  # branch -> velocity (CPU, model dtype); filled by group leaders only
    seconds: float = 0.0              # the forward itself on this rank (benchmarks: protocol overhead)
    split: str = ""                   # the layout it ran in: "sequence", "cfg" or "sequence+cfg"


@dataclass
class ForwardCancelled:
    request_id: int
    rank: int
    blocks_done: int             # transformer blocks run before the forward was abandoned


@dataclass
class WorkerError:
    request_id: int | None       # None: during setup
    rank: int
    message: str
    traceback: str = ""


# ---------------------------------------------------------------- main -> worker

@dataclass
class Setup:
    spec: WorkerSpec
    rank: int
    master_port: int


@dataclass
class Forward:
    request_id: int
    expert: str                              # "high" | "low"
    loras: tuple[tuple[str, float], ...]     # (file, strength) for this expert, applied before the forward
    hidden_states: torch.Tensor              # model input, already in the activation dtype
    timestep: torch.Tensor
    branches: tuple[str, ...]                # ("cond",) or ("cond", "uncond")
    embeds_key: int                          # the text embeddings this forward uses ...
    embeds: dict[str, torch.Tensor] | None = None  # ... sent once per run: None means "the ones of embeds_key"
    hold_before_block: int | None = None     # TEST ONLY (CPU switch): wait for a cancel before this block


@dataclass
class Cancel:
    request_id: int


@dataclass
class Stop:
    pass


_CLASSES = {cls.__name__: cls for cls in (
    ParallelPlan, SplitLayout, ExpertFiles, WorkerSpec, Hello, ExpertInfo, Ready, ForwardDone, ForwardCancelled, WorkerError,
    Setup, Forward, Cancel, Stop)}
_TAG = "__reelsmith_message__"


def _to_plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if _CLASSES.get(type(value).__name__) is not type(value):  # the receiver could not rebuild it
            raise TypeError(f"{type(value).__name__} is not a protocol message class (add it to _CLASSES)")
        fields = {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return (_TAG, type(value).__name__, fields)
    if isinstance(value, dict):
        return {key: _to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_plain(item) for item in value)
    return value


def _from_plain(value):
    if isinstance(value, tuple) and len(value) == 3 and value[0] == _TAG:
        return _CLASSES[value[1]](**{key: _from_plain(item) for key, item in value[2].items()})
    if isinstance(value, dict):
        return {key: _from_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_from_plain(item) for item in value)
    return value


def send(connection, message) -> None:
    connection.send_bytes(pickle.dumps(_to_plain(message), protocol=pickle.HIGHEST_PROTOCOL))


def receive(connection):
    return _from_plain(pickle.loads(connection.recv_bytes()))
