"""Reading checkpoints ahead into the page cache (engine/models/file_prefetch.py) and its use by read_state_dict.

The queue is replaced by a list where the order of the work matters, so those tests need no threads; the
real readers run where a test waits for them."""

import collections
import pathlib

import pytest
import torch
from safetensors.torch import save_file

from reelsmith.engine.errors import ModelFilesError
from reelsmith.engine.models import checkpoint_io, file_prefetch

GIB = 2**30


class RecordingQueue:
    def __init__(self):
        self.tasks = []

    def put(self, task):
        self.tasks.append(task)


@pytest.fixture(autouse=True)
def nothing_read_ahead_recently(monkeypatch):
    """Each test starts with no checkpoint read ahead in the last RECENT_SECONDS (other tests' would count)."""
    monkeypatch.setattr(file_prefetch, "_recent", collections.deque())


@pytest.fixture
def queued(monkeypatch):
    """Tasks go to a list and no reader starts: the test serves them itself."""
    recording = RecordingQueue()
    monkeypatch.setattr(file_prefetch, "_tasks", recording)
    monkeypatch.setattr(file_prefetch, "_start_readers", lambda: file_prefetch.READER_THREADS)
    return recording


def write_bytes(path: pathlib.Path, size: int) -> bytes:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("size", [1, 999, 1000, 1001, 3005])
def test_spans_cover_the_file_once_in_order(size):
    pieces = file_prefetch.spans(size, span=1000)
    assert pieces[0][0] == 0
    for (offset, length), (next_offset, _) in zip(pieces, pieces[1:]):
        assert offset + length == next_offset and length == 1000
    assert pieces[-1][0] + pieces[-1][1] == size and 0 < pieces[-1][1] <= 1000


def test_spans_of_an_empty_file():
    assert file_prefetch.spans(0) == []


def test_skip_reasons():
    fits = 10 * GIB
    assert file_prefetch.skip_reason(fits, 64 * GIB, None) is None
    assert file_prefetch.skip_reason(fits, 20 * GIB, "1") is None  # exactly half of what is available
    assert "REELSMITH_PREFETCH=0" in file_prefetch.skip_reason(fits, 64 * GIB, "0")
    assert "smaller than 256 MiB" in file_prefetch.skip_reason(file_prefetch.MIN_BYTES - 1, 64 * GIB, None)
    assert "cannot be told" in file_prefetch.skip_reason(fits, None, None)
    too_big = file_prefetch.skip_reason(fits, 19 * GIB, None)
    assert "10.0 GiB" in too_big and "19.0 GiB" in too_big and "50%" in too_big


def test_checkpoints_read_ahead_recently_count_against_the_same_memory():
    # a 64 GiB machine: the first 13.5 GiB expert fits half of it, the second too (27 GiB), a third not
    assert file_prefetch.skip_reason(int(13.5 * GIB), 60 * GIB, None, recent=int(13.5 * GIB)) is None
    refusal = file_prefetch.skip_reason(11 * GIB, 60 * GIB, None, recent=27 * GIB)
    assert "11.0 GiB with 27.0 GiB read ahead just before" in refusal and "60.0 GiB" in refusal


def test_recent_prefetches_are_forgotten_after_the_window(tmp_path, queued, monkeypatch):
    monkeypatch.setattr(file_prefetch, "MIN_BYTES", 0)
    monkeypatch.setattr(file_prefetch, "available_memory_bytes", lambda: 10_000)
    clock = [1000.0]
    monkeypatch.setattr(file_prefetch.time, "monotonic", lambda: clock[0])
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write_bytes(first, 3000)
    write_bytes(second, 3000)
    assert len(file_prefetch.prefetch_files([first])) == 1
    assert file_prefetch.recently_prefetched_bytes(clock[0]) == 3000
    assert file_prefetch.prefetch_files([second]) == []  # 3000 + 3000 > half of 10,000
    clock[0] += file_prefetch.RECENT_SECONDS + 1
    assert len(file_prefetch.prefetch_files([second])) == 1  # the first has aged out
    assert file_prefetch.recently_prefetched_bytes(clock[0]) == 3000


def test_available_memory_is_a_plausible_size():
    available = file_prefetch.available_memory_bytes()
    assert available is None or 0 < available < 2**50


def write_cgroup(root: pathlib.Path, files: dict[str, str]) -> str:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return str(root)


def test_container_headroom_is_the_limit_less_anonymous_memory(tmp_path):
    v2 = write_cgroup(tmp_path / "v2", {"memory.max": "34359738368\n",
                                        "memory.stat": "anon 4294967296\nfile 9000000000\n"})
    assert file_prefetch.container_headroom_bytes(v2) == 28 * GIB  # 32 GiB limit, 4 GiB anonymous
    v1 = write_cgroup(tmp_path / "v1", {"memory/memory.limit_in_bytes": "17179869184\n",
                                        "memory/memory.stat": "cache 5\nrss 7\ntotal_rss 1073741824\n"})
    assert file_prefetch.container_headroom_bytes(v1) == 15 * GIB
    overfull = write_cgroup(tmp_path / "full", {"memory.max": "1000\n", "memory.stat": "anon 5000\n"})
    assert file_prefetch.container_headroom_bytes(overfull) == 0


def test_no_container_limit(tmp_path):
    assert file_prefetch.container_headroom_bytes(str(tmp_path)) is None  # no cgroup files at all
    assert file_prefetch.container_headroom_bytes(
        write_cgroup(tmp_path / "v2", {"memory.max": "max\n", "memory.stat": "anon 1\n"})) is None
    assert file_prefetch.container_headroom_bytes(
        write_cgroup(tmp_path / "v1", {"memory/memory.limit_in_bytes": "9223372036854771712\n",
                                       "memory/memory.stat": "rss 1\n"})) is None


@pytest.mark.parametrize("system, container, expected", [
    (64 * GIB, None, 64 * GIB), (64 * GIB, 20 * GIB, 20 * GIB), (8 * GIB, 20 * GIB, 8 * GIB),
    (None, 20 * GIB, 20 * GIB), (None, None, None)])
def test_available_memory_takes_the_smaller(monkeypatch, system, container, expected):
    monkeypatch.setattr(file_prefetch, "_system_available_bytes", lambda: system)
    monkeypatch.setattr(file_prefetch, "container_headroom_bytes", lambda: container)
    assert file_prefetch.available_memory_bytes() == expected


def test_files_are_queued_whole_and_in_order(tmp_path, queued, monkeypatch):
    monkeypatch.setattr(file_prefetch, "SPAN_BYTES", 1000)
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write_bytes(first, 2500)
    write_bytes(second, 1000)
    prefetches = file_prefetch.prefetch_files([first, second], force=True)
    assert [(p.path, p.size) for p in prefetches] == [(first, 2500), (second, 1000)]
    assert [(task[0].path.name, task[1], task[2]) for task in queued.tasks] == [
        ("a.safetensors", 0, 1000), ("a.safetensors", 1000, 1000), ("a.safetensors", 2000, 500),
        ("b.safetensors", 0, 1000)]


def test_served_spans_read_every_byte(tmp_path, queued, monkeypatch):
    monkeypatch.setattr(file_prefetch, "SPAN_BYTES", 1000)
    path = tmp_path / "w.safetensors"
    write_bytes(path, 2500)
    [prefetch] = file_prefetch.prefetch_files([path], force=True)
    scratch = bytearray(300)  # smaller than a span: several reads per span
    for task in queued.tasks[:-1]:
        file_prefetch._read_span(*task, scratch)
    assert not prefetch.wait(0)  # a span is still pending
    file_prefetch._read_span(*queued.tasks[-1], scratch)
    assert prefetch.wait(0) and prefetch.bytes_read == 2500 and prefetch.error is None


def test_cancelled_spans_are_dropped_but_counted(tmp_path, queued, monkeypatch):
    monkeypatch.setattr(file_prefetch, "SPAN_BYTES", 1000)
    path = tmp_path / "w.safetensors"
    write_bytes(path, 2500)
    [prefetch] = file_prefetch.prefetch_files([path], force=True)
    scratch = bytearray(1000)
    file_prefetch._read_span(*queued.tasks[0], scratch)
    prefetch.cancel()
    for task in queued.tasks[1:]:
        file_prefetch._read_span(*task, scratch)
    assert prefetch.wait(0) and prefetch.bytes_read == 1000


def test_a_file_that_shrank_or_vanished_ends_the_prefetch_with_the_error_kept(tmp_path, queued, monkeypatch):
    monkeypatch.setattr(file_prefetch, "SPAN_BYTES", 1000)
    shrinking, vanishing = tmp_path / "s.safetensors", tmp_path / "v.safetensors"
    write_bytes(shrinking, 2500)
    write_bytes(vanishing, 500)
    shrank, vanished = file_prefetch.prefetch_files([shrinking, vanishing], force=True)
    write_bytes(shrinking, 1200)
    vanishing.unlink()
    scratch = bytearray(1000)
    for task in queued.tasks:
        file_prefetch._read_span(*task, scratch)
    assert shrank.wait(0) and shrank.bytes_read == 1200 and shrank.error is None
    assert vanished.wait(0) and vanished.bytes_read == 0 and isinstance(vanished.error, FileNotFoundError)


def test_nothing_is_queued_when_skipped(tmp_path, queued, monkeypatch):
    path = tmp_path / "w.safetensors"
    write_bytes(path, 5000)
    assert file_prefetch.prefetch_files([path]) == []  # under MIN_BYTES
    monkeypatch.setattr(file_prefetch, "MIN_BYTES", 0)
    monkeypatch.setenv("REELSMITH_PREFETCH", "0")
    assert file_prefetch.prefetch_files([path]) == []
    monkeypatch.delenv("REELSMITH_PREFETCH")
    monkeypatch.setattr(file_prefetch, "available_memory_bytes", lambda: 9000)  # 5000 > half of it
    assert file_prefetch.prefetch_files([path]) == []
    monkeypatch.setattr(file_prefetch, "available_memory_bytes", lambda: 10_000)
    assert [p.size for p in file_prefetch.prefetch_files([path])] == [5000]
    assert file_prefetch.prefetch_files([path, tmp_path / "missing.safetensors"]) == []
    assert len(queued.tasks) == 1


def test_the_reader_threads_read_the_files(tmp_path, monkeypatch):
    monkeypatch.setattr(file_prefetch, "SPAN_BYTES", 4096)
    paths = [tmp_path / f"{n}.safetensors" for n in range(3)]
    for n, path in enumerate(paths):
        write_bytes(path, 50_000 + n)
    prefetches = file_prefetch.prefetch_files(paths, force=True)
    assert all(p.wait(timeout=30) for p in prefetches)
    assert [p.bytes_read for p in prefetches] == [50_000, 50_001, 50_002]
    assert len(file_prefetch._readers) == file_prefetch.READER_THREADS
    assert all(reader.daemon and reader.is_alive() for reader in file_prefetch._readers)


def test_read_state_dict_prefetches_every_shard_in_order(tmp_path, monkeypatch):
    folder = tmp_path / "shards"
    folder.mkdir()
    tensors = {f"w{n}": torch.randn(64, 32) for n in range(4)}
    save_file({k: tensors[k] for k in ("w0", "w1")}, folder / "model-00001-of-00002.safetensors")
    save_file({k: tensors[k] for k in ("w2", "w3")}, folder / "model-00002-of-00002.safetensors")
    monkeypatch.setattr(file_prefetch, "MIN_BYTES", 0)
    monkeypatch.setattr(file_prefetch, "available_memory_bytes", lambda: GIB)
    started = []
    real_prefetch = file_prefetch.prefetch_files

    def recording_prefetch(paths):
        started.append(real_prefetch(paths))
        return started[-1]

    monkeypatch.setattr(file_prefetch, "prefetch_files", recording_prefetch)
    loaded = checkpoint_io.read_state_dict(folder)
    assert sorted(loaded) == sorted(tensors) and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    [prefetches] = started
    assert [p.path.name for p in prefetches] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert all(p.wait(timeout=30) for p in prefetches)
    assert [p.bytes_read for p in prefetches] == [p.path.stat().st_size for p in prefetches]


def test_a_corrupt_checkpoint_cancels_its_prefetch(tmp_path, monkeypatch):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    given = []

    def fake_prefetch(paths):
        given.append(file_prefetch.Prefetch(path=pathlib.Path(paths[0]), size=0))
        return given

    monkeypatch.setattr(file_prefetch, "prefetch_files", fake_prefetch)
    with pytest.raises(ModelFilesError, match="broken.safetensors: cannot read this safetensors file"):
        checkpoint_io.read_state_dict(path)
    assert given[0]._cancelled


def test_a_process_that_can_start_no_thread_loads_without_read_ahead(tmp_path, monkeypatch):
    """A container's thread limit must not stop a load: no reader starts, nothing is queued, the load goes on."""
    def refuse(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(file_prefetch, "_readers", [])
    monkeypatch.setattr(file_prefetch.threading.Thread, "start", refuse)
    monkeypatch.setattr(file_prefetch, "MIN_BYTES", 0)
    monkeypatch.setattr(file_prefetch, "available_memory_bytes", lambda: GIB)
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(8, 8)}, path)
    assert file_prefetch.prefetch_files([path]) == [] and file_prefetch.recently_prefetched_bytes(0.0) == 0
    assert torch.equal(checkpoint_io.read_state_dict(path)["w"], torch.ones(8, 8))
