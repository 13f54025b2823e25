"""The messages between the ComfyUI process and its GPU workers, and how they travel.

One `multiprocessing.connection` per worker, on 127.0.0.1 with a random authkey (checked by the connection
handshake before anything is unpickled). Messages are pickled with the standard pickler and sent as bytes:
`Connection.send` would use multiprocessing's pickler, for which torch registers shared-memory reductions
that only work between processes multiprocessing started itself. Tensors travel as CPU tensors.

Order of a pool's life: worker connects and sends `Hello`; main sends `Setup`; worker loads and answers
`Ready` (or `WorkerError`); then any number of `Forward` -> `ForwardDone` / `ForwardCancelled` /
`WorkerError` (a `Cancel` may arrive while a forward runs); `Stop` ends it (so does a closed connection).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

import torch

from .parallel_plan import ParallelPlan

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


def send(connection, message) -> None:
    connection.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def receive(connection):
    return pickle.loads(connection.recv_bytes())
