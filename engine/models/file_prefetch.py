"""Reading a checkpoint file ahead of its use, from several threads, into the operating system's page cache.

Tensors read from safetensors files are memory-mapped: their bytes come from disk when something first touches
them (the key conversion, the copy to the GPU), one page fault after another in a single thread, which keeps few
reads in flight. A cold load of the Wan 2.2 A14B pair (27 GB) took 25 s on our H100 machine, about 1.1 GB/s,
mostly waiting for disk; a virtio disk reads 1.0 GB/s from one reader and 2.1 GB/s from four to eight.
`prefetch_files` starts reading the whole checkpoint from a small pool of background threads as soon as the
loader opens it, in file order, so the later page faults find the bytes already in memory. What is read goes to
a scratch buffer and is dropped: the copy that stays is the page cache's, the one the memory map reads anyway,
so the output and the memory the loaded model holds are the same with or without it.

It is skipped (`skip_reason`) where it cannot help or could hurt: small checkpoints, one that would take more
than half of the memory available now, a container's limit included, together with the checkpoints read ahead
in the minutes before (pages read far ahead would be evicted before their use and read twice), and when
REELSMITH_PREFETCH=0. A read that fails is left to the loader, which reads the same bytes and reports it.
"""

from __future__ import annotations

import collections
import os
import pathlib
import queue
import threading
import time
from dataclasses import dataclass, field

READER_THREADS = 8  # reads in flight (a virtio disk: 1.0 GB/s from one reader, 2.1 from four to eight)
SPAN_BYTES = 64 << 20  # one task of a reader: the unit of ordering and of cancelling
READ_BYTES = 8 << 20  # bytes per read call (the scratch buffer of each reader)
MIN_BYTES = 256 << 20  # smaller checkpoints load in well under a second either way
MAX_SHARE_OF_AVAILABLE = 0.5  # of the memory available now, the most one checkpoint may take in the page cache
ENVIRONMENT_SWITCH = "REELSMITH_PREFETCH"  # "0" turns prefetching off
RECENT_SECONDS = 600.0  # a model's files are all loaded within this, so the checkpoints read ahead count together


def available_memory_bytes() -> int | None:
    """Memory the page cache can take without evicting what is being read: the system's available memory (Linux:
    MemAvailable), or less where a container's memory limit leaves less; None where it cannot be told."""
    known = [b for b in (_system_available_bytes(), container_headroom_bytes()) if b is not None]
    return min(known) if known else None


def _system_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def container_headroom_bytes(cgroup_root: str = "/sys/fs/cgroup") -> int | None:
    """A container's memory limit minus the anonymous memory its processes hold (the page cache counts against
    the limit too, so this is what it can cache); None without a limit. Rented GPU machines are often
    containers whose limit is far below the host's memory that MemAvailable reports."""
    root = pathlib.Path(cgroup_root)
    for limit_file, stat_file, anon_keys in (
            (root / "memory.max", root / "memory.stat", ("anon",)),  # cgroup v2
            (root / "memory" / "memory.limit_in_bytes", root / "memory" / "memory.stat", ("total_rss", "rss"))):
        try:
            limit_text = limit_file.read_text().strip()
            lines = [line.split() for line in stat_file.read_text().splitlines()]
            stats = dict(fields[:2] for fields in lines if len(fields) >= 2)
        except OSError:
            continue
        if limit_text == "max" or not limit_text.isdigit() or int(limit_text) >= 2**62:  # v1 writes "no limit" huge
            return None
        anon = next((int(stats[key]) for key in anon_keys if key in stats), 0)
        return max(int(limit_text) - anon, 0)
    return None


def skip_reason(size: int, available: int | None, switch: str | None, recent: int = 0) -> str | None:
    """Why a checkpoint of `size` bytes (all its files) is not prefetched (None: it is). `available`:
    available_memory_bytes(); `switch`: the value of REELSMITH_PREFETCH; `recent`: bytes of the checkpoints read
    ahead within RECENT_SECONDS, which count against the same memory (the page cache they fill counts as available,
    yet a model's files are read one after another and only copied to the GPU once all are loaded)."""
    if switch is not None and switch.strip() == "0":
        return f"{ENVIRONMENT_SWITCH}=0"
    if size < MIN_BYTES:
        return f"smaller than {MIN_BYTES >> 20} MiB"
    if available is None:
        return "the available memory cannot be told on this system"
    if size + recent > MAX_SHARE_OF_AVAILABLE * available:
        also = f" with {recent / 2**30:.1f} GiB read ahead just before" if recent else ""
        return (f"the checkpoint ({size / 2**30:.1f} GiB{also}) is more than {MAX_SHARE_OF_AVAILABLE:.0%} of the "
                f"memory available ({available / 2**30:.1f} GiB)")
    return None


def recently_prefetched_bytes(now: float) -> int:
    """Bytes of the checkpoints read ahead in the RECENT_SECONDS before `now` (older ones forgotten)."""
    while _recent and _recent[0][0] < now - RECENT_SECONDS:
        _recent.popleft()
    return sum(size for _, size in _recent)


def spans(size: int, span: int | None = None) -> list[tuple[int, int]]:
    """(offset, length) pieces of `span` bytes (SPAN_BYTES) covering [0, size) once each, in file order."""
    span = span or SPAN_BYTES
    return [(offset, min(span, size - offset)) for offset in range(0, size, span)]


@dataclass
class Prefetch:
    """One file being read ahead. `wait()` blocks until every span is read, failed or cancelled."""

    path: pathlib.Path
    size: int
    bytes_read: int = 0
    error: Exception | None = None  # the first failed read (the loader reads those bytes again and reports)
    _pending: int = 0
    _cancelled: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _finished: threading.Event = field(default_factory=threading.Event, repr=False)

    def cancel(self) -> None:
        """Drop the spans not yet started (the one being read finishes its current read call)."""
        self._cancelled = True

    def wait(self, timeout: float | None = None) -> bool:
        return self._finished.wait(timeout)

    def _span_done(self, read: int, error: Exception | None) -> None:
        with self._lock:
            self.bytes_read += read
            if error is not None and self.error is None:
                self.error = error
            self._pending -= 1
            if self._pending == 0:
                self._finished.set()


_tasks: queue.SimpleQueue = queue.SimpleQueue()  # (Prefetch, offset, length), served in the order queued
_recent: collections.deque = collections.deque()  # (monotonic time, bytes) of each checkpoint read ahead
_recent_lock = threading.Lock()
_readers: list[threading.Thread] = []
_readers_lock = threading.Lock()


def _read_span(prefetch: Prefetch, offset: int, length: int, scratch: bytearray) -> None:
    read, error = 0, None
    try:
        with open(prefetch.path, "rb", buffering=0) as file:
            file.seek(offset)
            while read < length and not prefetch._cancelled:  # a cancelled span stops at its next read
                got = file.readinto(memoryview(scratch)[:min(len(scratch), length - read)])
                if not got:
                    break  # the file is shorter than when it was queued; the loader will say so
                read += got
    except Exception as failure:  # any failure: the span must still be counted, or wait() would never return
        error = failure
    prefetch._span_done(read, error)


def _reader_loop() -> None:
    scratch = bytearray(READ_BYTES)
    while True:
        _read_span(*_tasks.get(), scratch)


def _start_readers() -> int:
    """Start the reader threads not yet running; returns how many run. Daemon threads: an interpreter that exits
    (or a ComfyUI stopped with Ctrl-C) does not wait for a read-ahead. Where the process may start no more threads
    (a container's limit), the read-ahead makes do with those it has, or is left out: it must never stop a load."""
    with _readers_lock:
        while len(_readers) < READER_THREADS:
            reader = threading.Thread(target=_reader_loop, name=f"reelsmith-prefetch-{len(_readers)}", daemon=True)
            try:
                reader.start()
            except RuntimeError:  # "can't start new thread"
                break
            _readers.append(reader)
        return len(_readers)


def prefetch_files(paths, *, force: bool = False) -> list[Prefetch]:
    """Start reading the files of one checkpoint into the page cache in the background, in order; nothing (an
    empty list) where skip_reason says not to for their total size (unless `force`, for tests). The loader does
    not wait for it: its own reads take whatever is cached by then."""
    files = []
    for path in map(pathlib.Path, paths):
        try:
            files.append((path, path.stat().st_size))
        except OSError:
            return []  # the loader's own open reports the missing or unreadable file
    total = sum(size for _, size in files)
    now = time.monotonic()
    with _recent_lock:
        recent = recently_prefetched_bytes(now)
        # the memory probe (/proc, cgroup files) only for checkpoints big enough to need it: small ones (LoRAs,
        # encoders' side files) are refused on their size alone
        available = available_memory_bytes() if total >= MIN_BYTES else None
        if not force and skip_reason(total, available, os.environ.get(ENVIRONMENT_SWITCH), recent) is not None:
            return []
        if _start_readers() == 0:
            return []
        _recent.append((now, total))
    prefetches = []
    for path, size in files:
        pieces = spans(size)
        prefetch = Prefetch(path=path, size=size, _pending=len(pieces))
        if not pieces:
            prefetch._finished.set()
        for offset, length in pieces:
            _tasks.put((prefetch, offset, length))
        prefetches.append(prefetch)
    return prefetches
