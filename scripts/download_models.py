#!/usr/bin/env python3
"""Download exactly the model files that Reelsmith workflows need, into ComfyUI's model folders.

Every UI-format workflow lists its model files in a node's `properties.models` as
`{"name", "url", "directory"}`; this script reads those lists (from any node), and fetches each file from
the Hugging Face Hub into `<models>/<directory>/<name>`:

    python scripts/download_models.py wan22-t2v-a14b --comfyui ~/comfy/ComfyUI
    python scripts/download_models.py workflows/wan22_i2v_720p.json --models-dir /data/models --jobs 4
    python scripts/download_models.py all --comfyui ~/comfy/ComfyUI --dry-run

Downloads go to `<name>.part` beside the final file and are renamed only after their size and hash
(sha256 from the hub's ETag for LFS files, the git blob sha1 for small files) match, so a partial or
corrupt file never sits under the final name. An interrupted run resumes from the `.part` file (HTTP
Range). Files already present with the right size are skipped (`--verify` re-hashes them). The disk is
checked for room before anything is downloaded. Gated repositories need `HF_TOKEN` in the environment;
`HF_ENDPOINT` points at a mirror.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import inspect
import json
import os
import pathlib
import re
import shutil
import sys
import threading
import time
import urllib.parse

PACK_ROOT = pathlib.Path(__file__).resolve().parent.parent
WORKFLOWS_DIR = PACK_ROOT / "workflows"

# Named model sets: the shipped workflows whose model files make up the set. Data, not code.
MODEL_SETS: dict[str, list[str]] = {
    "wan22-t2v-a14b": ["wan22_t2v_480p.json", "wan22_t2v_720p.json"],
    "wan22-i2v-a14b": ["wan22_i2v_720p.json"],
    "wan22-ti2v-5b": ["wan22_ti2v_5b_720p.json"],
    "ltx-2b": ["ltx_2b_t2v_720p.json"],
    "ltx-13b": ["ltx_13b_distilled_i2v_720p.json", "ltx_keyframes_720p.json"],
    "hunyuan-avatar": ["hunyuan_avatar_portrait_talking.json"],
}
ALL_SET = "all"  # every UI-format workflow in workflows/

DEFAULT_RESERVE_GIB = 2.0  # free space that must remain after the downloads
HUB_URL = re.compile(
    r"^https://huggingface\.co/"
    r"(?:(?P<type>datasets|spaces)/)?"
    r"(?P<repo>[A-Za-z0-9][\w.\-]*(?:/[\w.\-]+)?)"
    r"/resolve/(?P<rev>[^/]+)/(?P<path>[^?#]+)(?:[?#].*)?$"
)
HASH_CHUNK = 16 * 1024 * 1024


class InputError(Exception):
    """Bad input: reported as one clear message, exit status 2."""


@dataclasses.dataclass
class ModelFile:
    name: str
    directory: str
    url: str
    repo_id: str
    repo_type: str | None
    revision: str
    filename: str
    workflows: list[str]
    target: pathlib.Path | None = None
    size: int | None = None
    etag: str | None = None
    commit: str | None = None
    status: str = "?"  # present | download | resume
    partial: int = 0

    @property
    def part(self) -> pathlib.Path:
        return self.target.with_name(self.target.name + ".part")


# ----------------------------------------------------------------------------------------------- inputs


def resolve_targets(targets: list[str]) -> list[pathlib.Path]:
    paths: list[pathlib.Path] = []
    for target in targets:
        if target == ALL_SET:
            found = sorted(WORKFLOWS_DIR.glob("*.json"))
            if not found:
                raise InputError(f"no workflows in {WORKFLOWS_DIR}")
            paths.extend(found)
        elif target in MODEL_SETS:
            paths.extend(WORKFLOWS_DIR / name for name in MODEL_SETS[target])
        elif target.endswith(".json") or os.sep in target or pathlib.Path(target).exists():
            path = pathlib.Path(target)
            if not path.is_file():
                raise InputError(f"workflow file not found: {target}")
            paths.append(path)
        else:
            known = ", ".join([*MODEL_SETS, ALL_SET])
            raise InputError(f"unknown model set {target!r}; known sets: {known} (or give a workflow .json path)")
    unique: list[pathlib.Path] = []
    for path in paths:
        if path.resolve() not in [p.resolve() for p in unique]:
            unique.append(path)
    return unique


def _model_lists(node) -> list:
    """Every `properties.models` list anywhere in a workflow (nodes, subgraph definitions, groups)."""
    found = []
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict) and isinstance(props.get("models"), list):
            found.append(props["models"])
        for value in node.values():
            found.extend(_model_lists(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_model_lists(value))
    return found


def parse_hub_url(url: str) -> tuple[str, str | None, str, str]:
    """`https://huggingface.co/<repo>/resolve/<revision>/<path>` -> (repo_id, repo_type, revision, path)."""
    match = HUB_URL.match(url or "")
    if not match:
        raise InputError(
            f"not a Hugging Face Hub file URL: {url!r} "
            "(expected https://huggingface.co/<owner>/<repo>/resolve/<revision>/<path>)"
        )
    repo_type = {"datasets": "dataset", "spaces": "space"}.get(match["type"] or "")
    path = urllib.parse.unquote(match["path"])
    revision = urllib.parse.unquote(match["rev"])
    if ".." in path.split("/"):
        raise InputError(f"model URL path must not contain '..': {url!r}")
    return match["repo"], repo_type, revision, path


def _safe_relative(value: str, what: str, source: str) -> str:
    parts = pathlib.PurePosixPath(value.replace("\\", "/")).parts
    if not value or value.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise InputError(f"{source}: model {what} {value!r} must be a relative path inside the models folder")
    return "/".join(parts)


def collect_models(workflows: list[pathlib.Path]) -> list[ModelFile]:
    by_target: dict[tuple[str, str], ModelFile] = {}
    for path in workflows:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read workflow {path}: {exc}") from exc
        entries = [entry for models in _model_lists(data) for entry in models]
        if not entries:
            raise InputError(
                f"{path}: the workflow names no model files (no node has a properties.models list "
                "of {name, url, directory})"
            )
        for entry in entries:
            if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("name", "url", "directory")):
                raise InputError(f"{path}: malformed properties.models entry {entry!r} (needs name, url, directory)")
            name = _safe_relative(entry["name"], "name", str(path))
            directory = _safe_relative(entry["directory"], "directory", str(path))
            repo_id, repo_type, revision, filename = parse_hub_url(entry["url"])
            key = (directory, name)
            if key in by_target:
                existing = by_target[key]
                if existing.url != entry["url"]:
                    raise InputError(
                        f"{directory}/{name} has two different URLs: {existing.url} ({existing.workflows[0]}) "
                        f"and {entry['url']} ({path})"
                    )
                existing.workflows.append(str(path))
                continue
            by_target[key] = ModelFile(
                name=name, directory=directory, url=entry["url"], repo_id=repo_id, repo_type=repo_type,
                revision=revision, filename=filename, workflows=[str(path)],
            )
    return list(by_target.values())


# ----------------------------------------------------------------------------------------------- hub


def _endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def fetch_metadata(model: ModelFile) -> None:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(model.repo_id, model.filename, repo_type=model.repo_type, revision=model.revision,
                     endpoint=_endpoint())
    meta = get_hf_file_metadata(url)
    if meta.size is None:
        raise RuntimeError(f"the hub did not report a size for {model.url}")
    model.size = meta.size
    model.etag = (meta.etag or "").strip('"').removeprefix("W/").strip('"').lower() or None
    model.commit = meta.commit_hash


def expected_digest(model: ModelFile) -> tuple[str, str] | None:
    """('sha256', hex) for LFS files, ('git-sha1', hex) for small files stored in git, None if unknown."""
    etag = model.etag or ""
    if re.fullmatch(r"[0-9a-f]{64}", etag):
        return "sha256", etag
    if re.fullmatch(r"[0-9a-f]{40}", etag):
        return "git-sha1", etag
    return None


def file_digest(path: pathlib.Path, kind: str, size: int) -> str:
    digest = hashlib.sha256() if kind == "sha256" else hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(model: ModelFile, path: pathlib.Path) -> str | None:
    """None when the file matches the hub's size and hash, else what is wrong."""
    actual = path.stat().st_size
    if actual != model.size:
        return f"size {actual} bytes, expected {model.size}"
    expected = expected_digest(model)
    if expected is None:
        return None
    kind, value = expected
    got = file_digest(path, kind, actual)
    if got != value:
        return f"{kind} {got}, expected {value}"
    return None


# ----------------------------------------------------------------------------------------------- progress


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n} B"


class Progress:
    """Per-file and total progress: a line per change of state, and a periodic total line."""

    def __init__(self, total: int, files: int, interval: float) -> None:
        self.total, self.files, self.interval = total, files, interval
        self.done_bytes = 0
        self.done_files = 0
        self.active: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._line()

    def begin(self, name: str, already: int, size: int) -> None:
        with self.lock:
            self.active[name] = [already, size]
        verb = f"resuming at {human(already)} of" if already else "downloading"
        print(f"[start] {name}: {verb} {human(size)}", flush=True)

    def add(self, name: str, n: int) -> None:
        with self.lock:
            self.done_bytes += n
            if name in self.active:
                self.active[name][0] += n

    def finish(self, name: str, ok: bool) -> None:
        with self.lock:
            self.active.pop(name, None)
            if ok:
                self.done_files += 1

    def _line(self) -> None:
        with self.lock:
            elapsed = max(time.monotonic() - self.started, 1e-6)
            rate = self.done_bytes / elapsed
            per_file = "; ".join(
                f"{name} {100 * got / size if size else 100:.0f}%" for name, (got, size) in self.active.items()
            )
            pct = 100 * self.done_bytes / self.total if self.total else 100
            print(
                f"[total] {human(self.done_bytes)} / {human(self.total)} ({pct:.0f}%), "
                f"{self.done_files}/{self.files} files, {human(rate)}/s" + (f" | {per_file}" if per_file else ""),
                flush=True,
            )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._line()


class _CountingFile:
    """The .part file handed to huggingface_hub's http_get; counts bytes for the progress display."""

    def __init__(self, handle, on_bytes) -> None:
        self._handle, self._on_bytes = handle, on_bytes

    def write(self, data) -> int:
        n = self._handle.write(data)
        self._on_bytes(len(data))
        return n

    def truncate(self, size=None):
        before = self._handle.tell()
        result = self._handle.truncate(size)
        after = size if size is not None else before
        self._on_bytes(min(after, before) - before if after < before else 0)
        return result

    def __getattr__(self, attr):
        return getattr(self._handle, attr)


class _SilentBar:
    """A do-nothing tqdm stand-in: the Progress class draws the bars."""

    def __init__(self, *args, **kwargs) -> None:
        self.n = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n=1) -> None:
        self.n += n

    def close(self) -> None:
        return None


def download_one(model: ModelFile, progress: Progress) -> str | None:
    """Download into `<target>.part`, verify, rename. Returns None on success, else the error."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(model.repo_id, model.filename, repo_type=model.repo_type, revision=model.commit or model.revision,
                     endpoint=_endpoint())
    part = model.part
    part.parent.mkdir(parents=True, exist_ok=True)
    resume = part.stat().st_size if part.exists() else 0
    if resume > model.size:
        part.unlink()
        resume = 0
    progress.begin(model.name, resume, model.size)
    kwargs = {}
    params = inspect.signature(http_get).parameters
    if "tqdm_class" in params:
        kwargs["tqdm_class"] = _SilentBar
    if "displayed_filename" in params:
        kwargs["displayed_filename"] = model.name
    headers = build_hf_headers()
    headers["Accept-Encoding"] = "identity"
    ok = False
    try:
        with open(part, "ab") as handle:
            counting = _CountingFile(handle, lambda n: progress.add(model.name, n))
            http_get(url, counting, resume_size=resume, headers=headers, expected_size=model.size, **kwargs)
        problem = verify_file(model, part)
        if problem:
            part.unlink(missing_ok=True)
            return f"{model.name}: downloaded file does not match the hub ({problem}); removed it, run again to retry"
        os.replace(part, model.target)
        ok = True
        print(f"[done]  {model.name} -> {model.target}", flush=True)
        return None
    except Exception as exc:  # noqa: BLE001 - reported per file, the others go on
        kept = f" (partial download kept at {part}; run again to resume)" if part.exists() else ""
        return f"{model.name}: {type(exc).__name__}: {exc}{kept}"
    finally:
        progress.finish(model.name, ok)


# ----------------------------------------------------------------------------------------------- plan


def plan(models: list[ModelFile], models_dir: pathlib.Path | None, verify: bool, jobs: int,
         remove_bad: bool = False) -> list[str]:
    """Fill in hub metadata and local state; returns the errors met (metadata lookups that failed)."""
    errors: list[str] = []

    def inspect_one(model: ModelFile) -> str | None:
        try:
            fetch_metadata(model)
        except Exception as exc:  # noqa: BLE001
            hint = " (gated or private? set HF_TOKEN)" if "401" in str(exc) or "403" in str(exc) or "Gated" in type(exc).__name__ else ""
            return f"{model.url}: cannot read its metadata from the hub: {type(exc).__name__}: {exc}{hint}"
        model.status = "download"
        if models_dir is None:
            return None
        model.target = models_dir / model.directory / model.name
        if model.target.is_file() and model.target.stat().st_size == model.size:
            if not verify:
                model.status = "present"
                return None
            problem = verify_file(model, model.target)
            if problem is None:
                model.status = "present"
                return None
            if remove_bad:
                model.target.unlink()
                print(f"[verify] {model.target}: {problem}; removed, it will be downloaded again", flush=True)
            else:
                print(f"[verify] {model.target}: {problem}; it would be downloaded again", flush=True)
        if model.part.is_file():
            partial = model.part.stat().st_size
            if 0 < partial <= model.size:
                model.partial = partial
                model.status = "resume"
        return None

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for error in pool.map(inspect_one, models):
            if error:
                errors.append(error)
    return errors


def check_writable(models: list[ModelFile]) -> None:
    for directory in sorted({m.target.parent for m in models}):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            probe = directory / f".reelsmith-write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise InputError(f"cannot write to {directory}: {exc.strerror or exc}") from exc


def _existing_ancestor(path: pathlib.Path) -> pathlib.Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def space_problems(models: list[ModelFile], reserve: int) -> list[str]:
    """Room needed per filesystem (after resuming partial files) against what is free."""
    needed: dict[int, list] = {}
    for model in models:
        if model.status == "present":
            continue
        anchor = _existing_ancestor(model.target.parent)
        entry = needed.setdefault(anchor.stat().st_dev, [anchor, 0])
        entry[1] += model.size - model.partial
    problems = []
    for anchor, amount in needed.values():
        free = shutil.disk_usage(anchor).free
        if amount + reserve > free:
            problems.append(
                f"not enough disk space on the filesystem of {anchor}: {human(amount)} to download plus "
                f"{human(reserve)} reserve, but only {human(free)} free"
            )
    return problems


# ----------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Download the model files Reelsmith workflows need into ComfyUI's model folders.",
        epilog=f"Model sets: {', '.join(MODEL_SETS)}, {ALL_SET} (every shipped workflow).",
    )
    parser.add_argument("targets", nargs="+", metavar="WORKFLOW_OR_SET",
                        help="UI-format workflow .json files and/or model set names")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--comfyui", type=pathlib.Path, help="ComfyUI folder: files go to DIR/models/<directory>/")
    where.add_argument("--models-dir", type=pathlib.Path, help="models folder: files go to DIR/<directory>/")
    parser.add_argument("--jobs", "-j", type=int, default=4, help="parallel downloads (default 4)")
    parser.add_argument("--verify", action="store_true", help="re-hash files already present (default: size check)")
    parser.add_argument("--dry-run", action="store_true", help="list the files and sizes, download nothing")
    parser.add_argument("--reserve-gib", type=float, default=DEFAULT_RESERVE_GIB,
                        help=f"free space to keep after downloading, GiB (default {DEFAULT_RESERVE_GIB})")
    parser.add_argument("--progress-interval", type=float, default=5.0, help="seconds between total-progress lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.jobs < 1:
        print("error: --jobs must be at least 1", file=sys.stderr)
        return 2
    models_dir = args.models_dir or (args.comfyui / "models" if args.comfyui else None)
    if args.comfyui and not args.comfyui.is_dir():
        print(f"error: --comfyui {args.comfyui} is not a folder", file=sys.stderr)
        return 2
    if models_dir is None and not args.dry_run:
        print("error: say where the models go: --comfyui DIR or --models-dir DIR", file=sys.stderr)
        return 2
    try:
        workflows = resolve_targets(args.targets)
        models = collect_models(workflows)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    print(f"{len(models)} model file(s) for {len(workflows)} workflow(s); reading sizes from {_endpoint()} ...", flush=True)
    errors = plan(models, models_dir, args.verify, args.jobs, remove_bad=not args.dry_run)
    if errors:
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        return 1

    to_get = [m for m in models if m.status != "present"]
    total = sum(m.size for m in models)
    remaining = sum(m.size - m.partial for m in to_get)
    width = max(len(f"{m.directory}/{m.name}") for m in models)
    for m in models:
        note = {"present": "present", "download": "download",
                "resume": f"resume ({human(m.partial)} done)"}[m.status]
        print(f"  {m.directory + '/' + m.name:<{width}}  {human(m.size):>11}  {note}")
    print(f"total: {human(total)} in {len(models)} file(s); to download: {human(remaining)} in {len(to_get)} file(s)"
          + (f" into {models_dir}" if models_dir else ""), flush=True)

    reserve = int(args.reserve_gib * 1024**3)
    if args.dry_run:
        if models_dir is not None:
            for problem in space_problems(models, reserve):
                print(f"warning: {problem}")
        print("dry run: nothing downloaded")
        return 0
    if not to_get:
        print("all files present")
        return 0
    try:
        check_writable(to_get)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problems = space_problems(models, reserve)
    if problems:
        for problem in problems:
            print(f"error: {problem}; nothing downloaded (free some space or lower --reserve-gib)", file=sys.stderr)
        return 3

    progress = Progress(remaining, len(to_get), args.progress_interval)
    progress.start()
    failures: list[str] = []
    # No `with`: on Ctrl-C its exit would wait for every running download to finish.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs)
    try:
        for error in pool.map(lambda m: download_one(m, progress), to_get):
            if error:
                failures.append(error)
        pool.shutdown()
    except KeyboardInterrupt:
        print("\ninterrupted: partial downloads are kept as .part files; run again to resume", file=sys.stderr)
        os._exit(130)  # worker threads are blocked in reads; leave without waiting for them
    finally:
        progress.stop()
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {len(to_get)} download(s) failed", file=sys.stderr)
        return 1
    print(f"done: {len(to_get)} file(s) downloaded and verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
