"""js/reelsmith.js with front ends other than the one ComfyUI 0.8 pins: loaded in Chromium beside stand-ins for
`scripts/app.js` and `scripts/api.js` that lack what older or newer front ends may lack (DOM widgets, graph links,
the pack's routes, fetchApi itself), it must neither throw nor log an error, and still snap what it can.
Needs Playwright and Chromium only (no ComfyUI)."""

from __future__ import annotations

import json
import pathlib

import pytest

from browser_setup import CHROMIUM_ARGS, browser_skip_reason, chromium_path

PACK_ROOT = pathlib.Path(__file__).resolve().parents[2]
ORIGIN = "http://reelsmith.test"

# The stand-in front end: app.registerExtension keeps the extension; window.stubApi decides what fetchApi does.
APP_JS = "export const app = { registerExtension(ext) { window.extension = ext; }, graph: window.stubGraph };"
API_JS = """export const api = window.stubApi === 'none' ? undefined : {
  async fetchApi(path, options) {
    if (window.stubApi === 'throws') throw new Error('network down');
    const answer = (window.stubAnswers || {})[path.split('?')[0]];
    if (answer === undefined) return { ok: false, status: 404, json: async () => ({}) };
    return { ok: true, status: 200, json: async () => answer };
  },
};"""
PAGE = """<!doctype html><html><body><script>
window.stubApi = %(mode)s; window.stubAnswers = %(answers)s; window.stubGraph = { _nodes: [] };
window.addEventListener('error', (e) => console.error('uncaught: ' + e.message));
window.addEventListener('unhandledrejection', (e) => console.error('unhandled: ' + e.reason));
</script><script type="module">
import "/extensions/Reelsmith/reelsmith.js";
window.loaded = true;
</script></body></html>"""

# Nodes as different front ends build them: bare, with widgets but no DOM widgets, with odd widgets.
EXERCISE = """async () => {
  const ext = window.extension;
  const numberWidget = (name, value, step2, min) => ({ name, type: 'number', value, options: { step2, min, max: 2048 },
                                                     callback(v) { this.value = v; } });
  const nodes = [
    {},
    { comfyClass: 'ReelsmithWan22TextToVideo' },
    { type: 'ReelsmithWan22TextToVideo', widgets: null, inputs: null },
    { comfyClass: 'ReelsmithWan22TextToVideo', id: 2, size: [360, 400], properties: {},
      widgets: [numberWidget('width', 832, 16, 16), numberWidget('frames', 81, 4, 1), { name: 'odd' }],
      inputs: [{ name: 'wan_model', type: 'WAN_MODEL', link: 7 }],
      addWidget(type, name, value, callback, options) { const w = { type, name, value, callback, options };
        this.widgets.push(w); return w; },
      computeSize() { return [360, 420]; }, setSize(size) { this.size = size; } },
    { comfyClass: 'ReelsmithWanModelLoader', id: 1, widgets: [{ name: 'model', type: 'combo', value: 'x' }] },
  ];
  for (const node of nodes) ext.nodeCreated?.(node);
  ext.loadedGraphNode?.(nodes[3]);
  ext.afterConfigureGraph?.();
  await new Promise((resolve) => setTimeout(resolve, 700));
  const sampler = nodes[3];
  const width = sampler.widgets.find((w) => w.name === 'width');
  const frames = sampler.widgets.find((w) => w.name === 'frames');
  width.value = 1003; width.callback(1003);
  frames.value = 100; frames.callback(100);
  sampler.onDrawForeground?.({ save() {}, restore() {}, fillText() {} });
  sampler.onConnectionsChange?.(1, 0, true, null, {});
  await new Promise((resolve) => setTimeout(resolve, 700));
  return { width: width.value, frames: frames.value, widgets: sampler.widgets.map((w) => w.name) };
}"""

RULES = {
    "version": 1,
    "samplers": {"ReelsmithWan22TextToVideo": {
        "family": "wan", "model_type": "WAN_MODEL",
        "size": {"widgets": ["width", "height"], "multiple": 16, "by_variant": {}, "limits": {"min": 16, "max": 2048}},
        "frames": {"widget": "frames", "stride": 4, "offset": 1, "limits": {"min": 1, "max": 1025}},
        "presets": {"16": [{"name": "480p landscape (832x480)", "width": 832, "height": 480}]}}},
    "loaders": {"ReelsmithWanModelLoader": {"family": "wan"}},
}


@pytest.fixture(scope="module")
def chromium():
    reason = browser_skip_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _run(chromium, mode: str, answers: dict) -> tuple[dict, list[str]]:
    page = chromium.new_page()
    messages: list[str] = []
    page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda error: messages.append(f"pageerror: {error}"))
    files = {
        "/": ("text/html", PAGE % {"mode": json.dumps(mode), "answers": json.dumps(answers)}),
        "/extensions/Reelsmith/reelsmith.js": ("text/javascript", (PACK_ROOT / "js" / "reelsmith.js").read_text()),
        "/scripts/app.js": ("text/javascript", APP_JS),
        "/scripts/api.js": ("text/javascript", API_JS),
    }

    def serve(route):
        path = route.request.url[len(ORIGIN):] or "/"
        if path in answers:  # what a plain fetch() gets when there is no api module to ask
            route.fulfill(status=200, content_type="application/json", body=json.dumps(answers[path]))
        elif path in files:
            content_type, body = files[path]
            route.fulfill(status=200, content_type=content_type, body=body)
        else:
            route.fulfill(status=404, body="")

    page.route(f"{ORIGIN}/**", serve)
    page.goto(f"{ORIGIN}/")
    page.wait_for_function("window.loaded === true && window.extension !== undefined")
    result = page.evaluate(EXERCISE)
    page.close()
    return result, messages


def _problems(messages: list[str]) -> list[str]:
    return [m for m in messages if not m.startswith(("debug:", "log:", "info:"))]


@pytest.mark.parametrize("mode", ["missing-routes", "throws"])
def test_without_the_pack_routes_it_snaps_to_the_widget_steps_quietly(chromium, mode):
    """An older pack server (no /reelsmith/editor routes) or a failing network."""
    result, messages = _run(chromium, mode, {})
    assert _problems(messages) == []
    assert result["width"] == 1008  # 1003 onto the widget's own 16-grid
    assert result["frames"] == 101  # 100 onto 1 + 4k (min 1, step 4)
    assert "resolution preset" not in result["widgets"]  # presets come from the server only


def test_with_rules_but_no_dom_widgets_or_graph_it_still_snaps_and_adds_presets(chromium):
    """A front end without addDOMWidget and a node whose model link leads nowhere: the estimate box falls back to
    drawing, the preset list appears, nothing throws."""
    result, messages = _run(chromium, "rules", {"/reelsmith/editor/rules": RULES, "/system_stats": {"devices": []}})
    assert _problems(messages) == []
    assert (result["width"], result["frames"]) == (1008, 101)
    assert result["widgets"][-1] == "resolution preset"


def test_without_an_api_module_it_asks_with_plain_fetch(chromium):
    """A front end whose scripts/api.js exports no `api`: the rules still arrive (plain fetch) and apply."""
    answers = {"/reelsmith/editor/rules": RULES, "/reelsmith/editor/loader_status": {"ok": True, "message": "ok"}}
    result, messages = _run(chromium, "none", answers)
    assert _problems(messages) == []
    assert (result["width"], result["frames"]) == (1008, 101)
    assert result["widgets"][-1] == "resolution preset"
