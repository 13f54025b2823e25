"""Driving ComfyUI's graph editor in a real browser (Playwright): open a template, edit a widget the way a user
does (click it, type into the value prompt), pick from a combo's menu, read the Reelsmith boxes on nodes, swap in
the demo models, queue and wait for the output, and take a screenshot of each step."""

from __future__ import annotations

import json
import pathlib
import re

import comfyui_client

# litegraph widget geometry -> a point on the screen (the canvas may be panned and zoomed)
_WIDGET_POINT = """([nodeId, name, where]) => {
  const node = app.graph.getNodeById(nodeId);
  const widget = node.widgets.find((w) => w.name === name);
  const ds = app.canvas.ds, rect = app.canvas.canvas.getBoundingClientRect();
  const x = node.pos[0] + node.size[0] * where, y = node.pos[1] + (widget.last_y ?? widget.y) + 10;
  return [rect.left + (x + ds.offset[0]) * ds.scale, rect.top + (y + ds.offset[1]) * ds.scale];
}"""


class EditorPage:
    def __init__(self, page, url: str, shots_dir: pathlib.Path, object_info: dict):
        self.page, self.url, self.shots_dir, self.object_info = page, url, shots_dir, object_info
        self.shots_dir.mkdir(parents=True, exist_ok=True)
        self.console: list[tuple[str, str, str]] = []  # (type, text, url)
        self.page_errors: list[str] = []
        page.on("console", lambda m: self.console.append((m.type, m.text, m.location.get("url", ""))))
        page.on("pageerror", lambda error: self.page_errors.append(f"{error}\n{getattr(error, 'stack', '')}"))
        self.shots: list[pathlib.Path] = []

    # -------------------------------------------------------------------------------------- basics

    def open(self) -> None:
        self.page.goto(self.url)
        self.page.wait_for_function("window.app && window.app.graph && window.comfyAPI", timeout=120_000)
        self.page.locator(".side-bar-button").first.wait_for()
        self.page.wait_for_timeout(1500)  # a first visit opens the templates dialog by itself, a moment later

    def shot(self, name: str) -> pathlib.Path:
        path = self.shots_dir / f"{len(self.shots) + 1:02d}-{name}.png"
        self.page.screenshot(path=str(path))
        self.shots.append(path)
        print(f"screenshot: {path}")
        return path

    def evaluate(self, script: str, arg=None):
        return self.page.evaluate(script, arg)

    def our_console_problems(self) -> list[str]:
        """Errors and warnings the Reelsmith extension caused (the front end's own 404s etc. are not ours)."""
        return [f"{kind}: {text} ({url})" for kind, text, url in self.console
                if kind in ("error", "warning") and ("reelsmith" in text.lower() or "/extensions/reelsmith" in url.lower())]

    # -------------------------------------------------------------------------------------- templates

    def open_template(self, module: str, name: str) -> None:
        """Workflow > templates (the sidebar button), the pack's category, the workflow's card."""
        category = self.page.get_by_text(module, exact=True)
        if not category.is_visible():
            self.page.locator(".side-bar-button", has_text="Templates").first.click()
        category.click()
        self.page.get_by_text(name, exact=True).first.wait_for()
        self.shot(f"templates-{module}")
        self.page.get_by_text(name, exact=True).first.click()
        self.page.wait_for_function(
            "() => window.app.graph._nodes.some((node) => node.comfyClass?.startsWith('Reelsmith'))", timeout=30_000)
        self.page.wait_for_timeout(800)
        # the front end lists the loader's models it cannot find in a dialog of its own: close it
        self.page.keyboard.press("Escape")
        self.page.wait_for_timeout(300)

    # -------------------------------------------------------------------------------------- nodes and widgets

    def node_ids(self, class_name: str) -> list[int]:
        return self.evaluate("(c) => app.graph._nodes.filter((n) => n.comfyClass === c).map((n) => n.id)", class_name)

    def node_ids_with_rules(self) -> list[int]:
        return self.evaluate("() => app.graph._nodes.filter((n) => n.__reelsmith?.kind === 'sampler').map((n) => n.id)")

    def center_on(self, node_id: int, scale: float = 1.0) -> None:
        """Pan (and zoom) so the node's top left is near the top left of the free canvas area."""
        self.evaluate("""([id, scale]) => { const n = app.graph.getNodeById(id);
            app.canvas.ds.scale = scale; app.canvas.ds.offset = [-n.pos[0] + 420 / scale, -n.pos[1] + 90 / scale];
            app.canvas.setDirty(true, true); }""", [node_id, scale])
        self.page.wait_for_timeout(300)

    def widget_value(self, node_id: int, name: str):
        return self.evaluate("([id, name]) => app.graph.getNodeById(id).widgets.find((w) => w.name === name)?.value",
                             [node_id, name])

    def widget_values(self, node_id: int) -> dict:
        return self.evaluate("""(id) => Object.fromEntries(app.graph.getNodeById(id).widgets
            .filter((w) => ['number', 'string', 'boolean'].includes(typeof w.value)).map((w) => [w.name, w.value]))""",
                             node_id)

    def type_into_widget(self, node_id: int, name: str, text: str, shot: str | None = None) -> None:
        """Click the middle of a number widget (opens the value prompt), type, Enter."""
        self.center_on(node_id)
        x, y = self.evaluate(_WIDGET_POINT, [node_id, name, 0.5])
        self.page.mouse.click(x, y)
        self.page.wait_for_timeout(300)
        self.page.keyboard.press("Control+A")
        self.page.keyboard.type(text)
        if shot:
            self.shot(shot)
        self.page.keyboard.press("Enter")
        self.page.wait_for_timeout(300)

    def pick_from_combo(self, node_id: int, name: str, option_prefix: str, shot: str | None = None) -> list[str]:
        """Click a combo widget, then the menu entry starting with `option_prefix`; returns the menu's entries."""
        self.center_on(node_id)
        x, y = self.evaluate(_WIDGET_POINT, [node_id, name, 0.5])
        self.page.mouse.click(x, y)
        entries = self.page.locator(".litemenu-entry")
        entries.first.wait_for()
        texts = entries.all_inner_texts()
        if shot:
            self.shot(shot)
        self.page.locator(".litemenu-entry", has_text=re.compile("^" + re.escape(option_prefix))).first.click()
        self.page.wait_for_timeout(300)
        return texts

    def info_box(self, node_id: int):
        return self.page.locator(f'.reelsmith-info[data-reelsmith-node="{node_id}"]')

    def wait_for_info(self, node_id: int, pattern: str, timeout_ms: int = 15_000) -> str:
        box = self.info_box(node_id)
        box.wait_for(timeout=timeout_ms)
        expression = re.compile(pattern)
        self.page.wait_for_function(
            "([id, source]) => new RegExp(source).test(document.querySelector("
            "`.reelsmith-info[data-reelsmith-node=\"${id}\"]`)?.innerText ?? '')", arg=[node_id, expression.pattern],
            timeout=timeout_ms)
        return box.inner_text()

    # -------------------------------------------------------------------------------------- queue on demo models

    def use_demo_models(self) -> list[str]:
        """scripts/comfyui_client.py's --demo rewriting, applied to the editor's own graph (what Run sends)."""
        prompt = self.evaluate("async () => (await app.graphToPrompt()).output")
        before = json.loads(json.dumps(prompt))
        changes = comfyui_client.apply_demo(prompt, self.object_info)
        edits = [[int(node_id), name, value] for node_id, node in prompt.items()
                 for name, value in node["inputs"].items() if before[node_id]["inputs"].get(name) != value]
        self.evaluate("""(edits) => { for (const [id, name, value] of edits) {
            const w = app.graph.getNodeById(id).widgets.find((w) => w.name === name);
            w.value = value; w.callback?.(value); } app.graph.setDirtyCanvas(true, true); }""", edits)
        return changes

    def run_and_wait_for_output(self, node_id: int, timeout_ms: int = 300_000) -> dict:
        self.page.get_by_role("button", name="Run").first.click()
        self.page.wait_for_function(
            "(id) => app.nodeOutputs && Object.keys(app.nodeOutputs).some((k) => k === String(id) || k.endsWith(':' + id))",
            arg=node_id, timeout=timeout_ms)
        return self.evaluate("(id) => app.nodeOutputs[String(id)]", node_id)

    def video_in_editor(self, timeout_ms: int = 30_000) -> dict:
        """The <video> the front end shows for the output, once it has loaded its first frame."""
        self.page.wait_for_function(
            "() => [...document.querySelectorAll('video')].some((v) => v.readyState >= 2 && v.videoWidth > 0)",
            timeout=timeout_ms)
        return self.evaluate("""() => { const v = [...document.querySelectorAll('video')].find((v) => v.videoWidth > 0);
            return {src: v.currentSrc || v.src, width: v.videoWidth, height: v.videoHeight, duration: v.duration}; }""")
