#!/usr/bin/env python3
"""Queue a ComfyUI workflow from the command line, follow its progress, and download its outputs.

    python scripts/render.py WORKFLOW.json [--server URL | --comfyui COMFYUI_DIR] [--set "TITLE.input=value" ...]
                             [--demo] [--out DIR]

WORKFLOW.json is either format: UI (as the graph editor saves it; converted with comfy-cli) or API (as POST
/prompt takes). With --server (default http://127.0.0.1:8188, e.g. an SSH tunnel) it uses a running ComfyUI; with
--comfyui it starts one from that directory on 127.0.0.1 (a free port) with this pack loaded, and stops it
afterwards, also on Ctrl-C or an error.

--set "TITLE.input=value"  sets an input of the node titled TITLE (else of class TITLE, else node id TITLE);
                           the value is JSON when it parses (42, true, '"42"' for a string) and text otherwise.
--demo                     selects demo models (`reelsmith-demo/<name>`, made by scripts/make_demo_models.py) and
                           shrinks the job (Reelsmith nodes: 512x256 / 256x512 / 256x256, 5 frames, 2 steps) so it runs
                           on a CPU in seconds. --set is applied after --demo, so explicit values win.

Exit status: 0 done; 1 ComfyUI rejected the workflow or a node failed (the error is printed); 2 bad arguments,
including a --set naming a node or input the workflow lacks; 130 cancelled (Ctrl-C, SIGTERM, SIGHUP: the prompt
is interrupted on a --server, a started server is stopped).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import shutil
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# after the sys.path line, so the script runs from anywhere
from comfyui_client import (
    ComfyUIClient,
    ComfyUIError,
    ComfyUIServer,
    Interrupted,
    NodeExecutionError,
    Progress,
    SetError,
    WorkflowError,
    WorkflowRejected,
    apply_demo,
    apply_sets,
    load_ui_converter,
    parse_set,
    to_api_format,
    unwrap_workflow,
    workflow_format,
)

PACK_ROOT = pathlib.Path(__file__).resolve().parent.parent
PACK_NAME = "Reelsmith"
DEFAULT_SERVER = "http://127.0.0.1:8188"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="render.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("workflow", type=pathlib.Path, help="workflow JSON file, UI or API format")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--server", metavar="URL", help=f"a running ComfyUI (default {DEFAULT_SERVER})")
    where.add_argument("--comfyui", metavar="COMFYUI_DIR", type=pathlib.Path,
                       help="start ComfyUI from this directory with this pack loaded, and stop it afterwards")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="TITLE.input=value",
                        help="set a node input (repeatable)")
    parser.add_argument("--demo", action="store_true", help="use demo models and a tiny job (CPU, seconds)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("outputs"),
                        help="where to download the outputs (default ./outputs)")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="give up (and interrupt the prompt) after this long")
    comfy = parser.add_argument_group("with --comfyui")
    comfy.add_argument("--models-dir", type=pathlib.Path, action="append", default=[], metavar="DIR",
                       help="an extra models base dir (standard subfolders: diffusion_models, text_encoders, vae, "
                            "loras, clip_vision, diffusers, checkpoints...); repeatable")
    comfy.add_argument("--python", metavar="PYTHON", default=None,
                       help="interpreter that runs ComfyUI (default: this one)")
    comfy.add_argument("--server-log", type=pathlib.Path, default=None, metavar="FILE",
                       help="keep ComfyUI's log in FILE (default: a temporary file, tail printed on errors)")
    comfy.add_argument("--startup-timeout", type=float, default=300.0, metavar="SECONDS",
                       help="how long ComfyUI may take to start (default 300)")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.comfyui:
        for flag, value in (("--models-dir", args.models_dir), ("--python", args.python),
                            ("--server-log", args.server_log)):
            if value:
                parser.error(f"{flag} only applies with --comfyui COMFYUI_DIR")
    elif not (args.comfyui / "main.py").is_file():
        parser.error(f"--comfyui {args.comfyui}: not a ComfyUI directory (no main.py)")
    for models_dir in args.models_dir:
        if not models_dir.is_dir():
            parser.error(f"--models-dir {models_dir}: no such directory")
    try:
        args.parsed_sets = [parse_set(text) for text in args.sets]
    except WorkflowError as exc:
        parser.error(str(exc))
    try:
        args.workflow_data = unwrap_workflow(json.loads(args.workflow.read_text(encoding="utf-8")))
    except OSError as exc:
        parser.error(f"cannot read {args.workflow}: {exc.strerror or exc}")
    except ValueError as exc:
        parser.error(f"{args.workflow} is not JSON: {exc}")
    try:
        args.workflow_kind = workflow_format(args.workflow_data)
        if args.workflow_kind == "ui":
            load_ui_converter()  # fail now, not after starting a server
    except WorkflowError as exc:
        parser.error(f"{args.workflow}: {exc}")
    if args.timeout is not None and args.timeout <= 0:
        parser.error("--timeout must be positive")
    return args


class ProgressPrinter:
    """Renders Progress events: one rewritten line on a terminal, plain lines (throttled) otherwise."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.monotonic()
        self.last_line = ""
        self.last_print = 0.0
        self.last_node = None
        self.events: list[Progress] = []

    def __call__(self, event: Progress) -> None:
        self.events.append(event)
        if event.event == "preview":
            return  # the bar already shows the step; previews matter in the graph editor
        elapsed = time.monotonic() - self.start
        clock = f"{int(elapsed // 60):02d}:{int(elapsed % 60):02d}"
        if event.event == "start":
            self._write(f"[{clock}] running")
            return
        if event.node_id is None or event.event == "executed" or (event.event == "tick" and not self.tty):
            return
        counter = f"[{min(event.nodes_done + 1, max(event.nodes_total, 1))}/{max(event.nodes_total, 1)}]"
        label = f"node {event.node_id} {event.title or event.class_type or ''}".rstrip()
        if event.event in ("progress", "tick") and event.total:
            fraction = max(0.0, min(1.0, (event.value or 0) / event.total))
            width = 24
            bar = "#" * round(fraction * width)
            line = f"{counter} {label} [{bar:<{width}}] {event.value}/{event.total} {clock}"
            if not self.tty:  # plain lines: every 10 % or 5 s
                step, value = max(1, event.total // 10), event.value or 0
                if value not in (1, event.total) and value % step and time.monotonic() - self.last_print < 5:
                    return
        else:
            line = f"{counter} {label} {clock}"
        if not self.tty and event.event == "executing" and event.node_id == self.last_node:
            return
        self.last_node = event.node_id
        self._write(line)

    def _write(self, line: str) -> None:
        self.last_print = time.monotonic()
        if self.tty:
            columns = shutil.get_terminal_size((100, 20)).columns
            line = line[: columns - 1]
            self.stream.write("\r" + line + " " * max(0, len(self.last_line) - len(line)))
            self.last_line = line
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty and self.last_line:
            self.stream.write("\n")
            self.stream.flush()
            self.last_line = ""


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _signals_as_keyboard_interrupt():
    """SIGTERM / SIGHUP unwind like Ctrl-C, so the server is stopped and the prompt interrupted."""
    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is not None:
            with contextlib.suppress(ValueError, OSError):  # not the main thread: leave the handlers alone
                previous[signum] = signal.signal(signum, _raise_keyboard_interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run(args: argparse.Namespace, out=None, err=None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr

    def say(text: str) -> None:
        print(text, file=err, flush=True)

    server = None
    client = None
    prompt_id = None
    finished = False
    printer = ProgressPrinter(err)
    try:
        with contextlib.ExitStack() as stack:
            if args.comfyui:
                say(f"starting ComfyUI from {args.comfyui} with {PACK_NAME} ({PACK_ROOT}) ...")
                server = ComfyUIServer(args.comfyui, packs={PACK_NAME: PACK_ROOT}, models_dirs=args.models_dir,
                                       python=args.python, log_path=args.server_log,
                                       startup_timeout=args.startup_timeout)
                stack.enter_context(server)
                for note in server.notes:
                    say(note)
                say(f"ComfyUI is up at {server.url}" + (" (--cpu)" if server.cpu else ""))
                url = server.url
            else:
                url = args.server or DEFAULT_SERVER
            client = stack.enter_context(ComfyUIClient(url))
            try:
                object_info = client.object_info()
                api = to_api_format(args.workflow_data, object_info)
                if args.workflow_kind == "ui":
                    say(f"converted UI-format workflow to API format ({len(api)} nodes)")
                if args.demo:
                    changes = apply_demo(api, object_info)
                    summary = "\n  ".join([f"{len(changes)} change(s):", *changes]) if changes else "nothing to change"
                    say(f"demo: {summary}")
                if args.parsed_sets:
                    for change in apply_sets(api, args.parsed_sets, object_info):
                        say(f"set: {change}")
                prompt_id = client.queue(api)
                printer.start = time.monotonic()
                say(f"queued prompt {prompt_id} on {url}")
                if client.ws_error:
                    say(f"note: no live progress ({client.ws_error}); polling the history instead")
                for node_id, info in (client.last_node_errors or {}).items():
                    messages = "; ".join(e.get("message", "") + (f": {e['details']}" if e.get("details") else "")
                                         for e in info.get("errors", []))
                    say(f"warning: node {node_id} ({info.get('class_type')}) failed validation and its outputs are "
                        f"skipped: {messages}")
                entry = client.wait(prompt_id, on_progress=printer, timeout=args.timeout)
                finished = True
                printer.finish()
                paths = client.download_outputs(entry, args.out)
            except NodeExecutionError as exc:
                finished = True
                printer.finish()
                say(exc.format())
                if server is not None and not exc.traceback:
                    say(f"--- last lines of the ComfyUI log ---\n{server.log_tail(30)}")
                if args.server_log:
                    say(f"ComfyUI's log: {args.server_log}")
                return 1
            for path in paths:
                print(path, file=out, flush=True)
            say(f"done in {time.monotonic() - printer.start:.1f} s: {len(paths)} file(s) in {args.out}")
            if not paths:
                say("note: the workflow produced no files (no Save* output node?)")
            return 0
    except KeyboardInterrupt:
        printer.finish()
        if client is not None and prompt_id is not None and not finished and server is None:
            with contextlib.suppress(Exception):
                client.interrupt(prompt_id)
                say(f"interrupted prompt {prompt_id} on the server")
        say("cancelled")
        return 130
    except SetError as exc:
        say(f"error: {exc}")
        return 2
    except WorkflowRejected as exc:
        printer.finish()
        say(exc.format())
        return 1
    except Interrupted as exc:
        printer.finish()
        say(f"error: {exc}")
        return 1
    except ComfyUIError as exc:  # WorkflowError, ServerStartError, unreachable server, timeout...
        printer.finish()
        if prompt_id is not None and not finished and client is not None and server is None:
            with contextlib.suppress(Exception):
                client.interrupt(prompt_id)
        say(f"error: {exc}")
        return 1


def main(argv=None) -> int:
    args = parse_args(argv)
    with _signals_as_keyboard_interrupt():
        return run(args)


if __name__ == "__main__":
    sys.exit(main())
