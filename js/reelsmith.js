// Reelsmith front-end extension.
// - Size and frame widgets of every Reelsmith sampler snap to values the model accepts as they are edited.
// - A "resolution preset" list fills width and height with 480p / 720p / 1080p sizes already snapped.
// - Each sampler shows an estimate of run time and peak GPU memory on the server's GPU.
// - Each model loader says which files are missing and offers the command that downloads them.
// The rules, presets, estimates and file checks all come from the server (nodes/routes.py), so this file holds
// no copy of any model rule. Every hook is guarded: with a front end that lacks one, that feature stays off,
// quietly (console.debug only).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const ROUTES = "/reelsmith/editor";
const PRESET_WIDGET = "resolution preset";
const CUSTOM = "custom";
const INFO_WIDGET = "reelsmith_info";
const DELAY_MS = 250;
const MAX_HOPS = 50; // LoRA nodes between a sampler and its loader

let rulesPromise = null;
let gpuPromise = null;

const quiet = (what, error) => console.debug(`Reelsmith: ${what}`, error);

async function requestJSON(path, body) {
  try {
    const options = body === undefined ? {} : {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    };
    const response = typeof api?.fetchApi === "function" ? await api.fetchApi(path, options) : await fetch(path, options);
    if (!response?.ok) return null;
    return await response.json();
  } catch (error) {
    quiet(`${path} unavailable`, error);
    return null;
  }
}

const loadRules = () => (rulesPromise ??= requestJSON(`${ROUTES}/rules`));

function gpuDevice() {
  gpuPromise ??= requestJSON("/system_stats").then((stats) => stats?.devices?.[0]?.name ?? "");
  return gpuPromise;
}

// ------------------------------------------------------------------------------------------ graph helpers

const classOf = (node) => node?.comfyClass ?? node?.type;
const findWidget = (node, name) => node?.widgets?.find?.((w) => w?.name === name);
const graphOf = (node) => node?.graph ?? app?.graph;

function linkById(graph, id) {
  if (id == null || !graph?.links) return null;
  return typeof graph.links.get === "function" ? graph.links.get(id) : graph.links[id];
}

function allNodes(graph) {
  return graph?._nodes ?? graph?.nodes ?? [];
}

// The loader a sampler's model comes from, through any chain of nodes passing that model type on (LoRA nodes).
function upstreamLoader(node, modelType, rules) {
  const graph = graphOf(node);
  let current = node;
  for (let hop = 0; hop < MAX_HOPS && current; hop++) {
    const input = current.inputs?.find?.((slot) => slot?.type === modelType && slot.link != null);
    const link = linkById(graph, input?.link);
    const origin = link ? graph.getNodeById?.(link.origin_id) : null;
    if (!origin) return null;
    if (rules?.loaders?.[classOf(origin)]) return origin;
    current = origin;
  }
  return null;
}

function markDirty(node) {
  try {
    node?.setDirtyCanvas?.(true, true);
    graphOf(node)?.setDirtyCanvas?.(true, true);
  } catch (error) {
    quiet("redraw failed", error);
  }
}

// ------------------------------------------------------------------------------------------ snapping

// The value on the grid offset + k * step: the nearest one (ties go down), except that a nudge smaller than a
// step (the widget's arrows, dragging) moves one grid step in its direction, so arrows never get stuck.
function snapToGrid(value, step, offset, previous, limits) {
  if (!Number.isFinite(value) || !(step > 0)) return value;
  const k = (value - offset) / step;
  let snapped;
  if (Number.isInteger(k)) snapped = value;
  else if (Number.isFinite(previous) && previous !== value && Math.abs(value - previous) < step) {
    snapped = offset + (value > previous ? Math.ceil(k) : Math.floor(k)) * step;
  } else {
    const below = offset + Math.floor(k) * step;
    snapped = value - below <= below + step - value ? below : below + step;
  }
  const lowest = Math.max(offset > 0 ? offset : step, Number(limits?.min ?? -Infinity));
  const lowestOnGrid = offset + Math.ceil((lowest - offset) / step) * step;
  const highestOnGrid = offset + Math.floor((Number(limits?.max ?? Infinity) - offset) / step) * step;
  return Math.min(Math.max(snapped, lowestOnGrid), Number.isFinite(highestOnGrid) ? highestOnGrid : snapped);
}

function sizeMultiple(node, state) {
  const size = state.rule?.size;
  const variant = state.loader?.__reelsmith?.status?.variant;
  return size?.by_variant?.[variant] ?? size?.multiple ?? findWidget(node, size?.widgets?.[0])?.options?.step2;
}

function snapWidget(node, widget, kind) {
  const state = node.__reelsmith;
  const previous = widget.__reelsmithLast;
  let value = Number(widget.value);
  if (kind === "size") {
    const step = sizeMultiple(node, state);
    if (step) value = snapToGrid(value, step, 0, previous, state.rule?.size?.limits ?? widget.options);
  } else {
    const frames = state.rule?.frames;
    const step = frames?.stride ?? widget.options?.step2;
    const offset = frames?.offset ?? Number(widget.options?.min ?? 0) % (step || 1);
    if (step) value = snapToGrid(value, step, offset, previous, frames?.limits ?? widget.options);
  }
  if (Number.isFinite(value) && value !== widget.value) widget.value = value;
  widget.__reelsmithLast = widget.value;
}

function wrapCallback(widget, after) {
  if (!widget || widget.__reelsmithWrapped) return;
  const original = widget.callback;
  widget.callback = function (...args) {
    const result = original?.apply(this, args);
    try {
      after(widget);
    } catch (error) {
      quiet("widget hook failed", error);
    }
    return result;
  };
  widget.__reelsmithWrapped = true;
}

// ------------------------------------------------------------------------------------------ presets

function presetsFor(node, state) {
  return state.rules?.samplers?.[classOf(node)]?.presets?.[String(sizeMultiple(node, state))] ?? [];
}

function syncPreset(node) {
  const state = node.__reelsmith;
  const combo = state?.presetWidget;
  if (!combo) return;
  const presets = presetsFor(node, state);
  combo.options.values = [CUSTOM, ...presets.map((p) => p.name)];
  const [first, second] = state.rule.size.widgets.map((name) => Number(findWidget(node, name)?.value));
  const match = presets.find((p) => p.width === first && p.height === (second ?? first));
  combo.value = match ? match.name : CUSTOM;
}

function applyPreset(node, name) {
  const state = node.__reelsmith;
  const preset = presetsFor(node, state).find((p) => p.name === name);
  if (!preset) return;
  const [first, second] = state.rule.size.widgets.map((w) => findWidget(node, w));
  for (const [widget, value] of [[first, preset.width], [second, preset.height]]) {
    if (widget) {
      widget.value = value;
      widget.__reelsmithLast = value;
    }
  }
  markDirty(node);
  schedule(node);
}

function addPresetWidget(node, state) {
  if (typeof node.addWidget !== "function" || !state.rule?.size?.widgets?.length) return;
  const combo = node.addWidget("combo", PRESET_WIDGET, CUSTOM, (value) => {
    try {
      applyPreset(node, value);
    } catch (error) {
      quiet("preset failed", error);
    }
  }, { values: [CUSTOM], serialize: false });
  if (!combo) return;
  combo.serialize = false; // neither saved in the workflow nor sent with the prompt: it only fills width/height
  combo.tooltip = "Fills width and height with a size this model accepts (Reelsmith).";
  state.presetWidget = combo;
}

// ------------------------------------------------------------------------------------------ info box on a node

function addInfoBox(node, state) {
  const element = document.createElement("div");
  element.className = "reelsmith-info";
  element.dataset.reelsmithKind = state.kind;
  Object.assign(element.style, {
    font: "11px monospace", color: "var(--input-text, #ddd)", whiteSpace: "pre-wrap", overflowWrap: "anywhere",
    overflow: "auto",
    padding: "4px 6px", borderRadius: "4px", background: "rgba(0,0,0,0.25)", boxSizing: "border-box",
    userSelect: "text", pointerEvents: "auto",
  });
  state.infoElement = element;
  state.infoLines = 0;
  if (typeof node.addDOMWidget === "function") {
    const widget = node.addDOMWidget(INFO_WIDGET, "reelsmith_info", element, {
      serialize: false, hideOnZoom: false, getValue: () => "", setValue: () => {},
      getMinHeight: () => (state.infoLines ? 14 * state.infoLines + 14 : 0),
      getMaxHeight: () => (state.infoLines ? 14 * state.infoLines + 40 : 0),
    });
    if (widget) widget.serialize = false;
    state.infoWidget = widget;
  } else {
    // an older front end: draw the lines under the widgets instead
    const draw = node.onDrawForeground;
    node.onDrawForeground = function (ctx, ...rest) {
      const result = draw?.call(this, ctx, ...rest);
      try {
        const lines = state.plainLines ?? [];
        ctx.save();
        ctx.font = "11px monospace";
        ctx.fillStyle = "#ccc";
        lines.forEach((line, i) => ctx.fillText(line, 8, this.size[1] + 14 + 13 * i));
        ctx.restore();
      } catch (error) {
        quiet("draw failed", error);
      }
      return result;
    };
  }
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = document.createElement("textarea");
    area.value = text;
    document.body.appendChild(area);
    area.select();
    const done = document.execCommand?.("copy") ?? false;
    area.remove();
    return done;
  }
}

// blocks: [{text, tone: "head" | "warn" | "note" | "command"}]; commands: text the Copy button copies
function showInfo(node, blocks, commands = []) {
  const state = node.__reelsmith;
  if (!state) return;
  state.plainLines = blocks.map((b) => b.text);
  const element = state.infoElement;
  if (element) {
    element.dataset.reelsmithNode = String(node.id ?? "");
    element.replaceChildren();
    const colors = { head: "#fff", warn: "#ffb347", note: "#aaa", command: "#9fd3ff", ok: "#8fdc8f" };
    for (const block of blocks) {
      const line = document.createElement("div");
      line.textContent = block.text;
      line.style.color = colors[block.tone] ?? "";
      if (block.indent) line.style.paddingLeft = "1.5em";
      if (block.tone === "head") line.style.fontWeight = "bold";
      line.dataset.tone = block.tone ?? "";
      element.appendChild(line);
    }
    if (commands.length) {
      const button = document.createElement("button");
      button.textContent = "Copy download command";
      button.className = "reelsmith-copy";
      Object.assign(button.style, { marginTop: "4px", font: "11px sans-serif", cursor: "pointer" });
      button.onclick = async (event) => {
        event.stopPropagation();
        button.textContent = (await copyText(commands.join("\n"))) ? "Copied" : "Select the text and copy it";
      };
      element.appendChild(button);
    }
    const perLine = Math.max(20, Math.floor(((node.size?.[0] ?? 360) - 40) / 6.7)); // 11px monospace
    const wrapped = blocks.reduce((sum, b) => sum + Math.max(1, Math.ceil((b.text.length + (b.indent ? 3 : 0)) / perLine)), 0);
    state.infoLines = blocks.length ? wrapped + (commands.length ? 2 : 0) : 0;
    element.style.display = blocks.length ? "" : "none";
  }
  try {
    // grow the node to show the box; shrink it back later only if it was grown for the box
    const wanted = node.computeSize?.();
    if (wanted && node.size && (wanted[1] > node.size[1] || (state.grown && wanted[1] !== node.size[1]))) {
      state.grown = true;
      node.setSize?.([Math.max(node.size[0], wanted[0]), wanted[1]]);
    }
  } catch (error) {
    quiet("resize failed", error);
  }
  markDirty(node);
}

// ------------------------------------------------------------------------------------------ server questions

function widgetValues(node) {
  const values = {};
  for (const widget of node.widgets ?? []) {
    if (!widget?.name || widget.serialize === false || widget.options?.serialize === false) continue;
    if (["number", "string", "boolean"].includes(typeof widget.value)) values[widget.name] = widget.value;
  }
  return values;
}

async function refreshLoader(node) {
  const state = node.__reelsmith;
  const status = await requestJSON(`${ROUTES}/loader_status`, {
    node_type: classOf(node), widgets: widgetValues(node), models: node.properties?.models ?? [],
  });
  if (!status) return;
  state.status = status;
  if (status.ok) {
    const variant = status.variant ? ` Variant: ${status.variant} (from the ${status.variant_source}).` : "";
    showInfo(node, [{ text: `✓ ${status.message}${variant}`, tone: "ok" }]);
  } else {
    const blocks = [{ text: "Model files missing:", tone: "warn" }];
    for (const item of status.missing ?? []) blocks.push({ text: item, tone: "warn", indent: true });
    if (!status.missing?.length) blocks.push({ text: status.message, tone: "warn" });
    if (status.commands?.length) {
      blocks.push({ text: "Download with:", tone: "note" });
      for (const command of status.commands) blocks.push({ text: command, tone: "command", indent: true });
    }
    if (status.alternatives?.length) {
      blocks.push({ text: "or file by file:", tone: "note" });
      for (const command of status.alternatives) blocks.push({ text: command, tone: "note", indent: true });
    }
    showInfo(node, blocks, status.commands ?? []);
  }
  // the samplers fed by this loader: their size step and estimate may change with the variant
  for (const other of allNodes(graphOf(node))) {
    if (other?.__reelsmith?.kind === "sampler") schedule(other);
  }
}

async function refreshSampler(node) {
  const state = node.__reelsmith;
  state.loader = upstreamLoader(node, state.rule.model_type, state.rules);
  syncPreset(node);
  for (const widget of node.widgets ?? []) widget.__reelsmithLast ??= widget.value;
  const loader = state.loader;
  if (!loader) {
    showInfo(node, [{ text: "Estimate: connect a Reelsmith model loader.", tone: "note" }]);
    return;
  }
  const status = loader.__reelsmith?.status;
  const result = await requestJSON(`${ROUTES}/estimate`, {
    node_type: classOf(node), gpu_device: await gpuDevice(), variant: status?.variant ?? null,
    variant_source: status?.variant_source ?? null, sampler: widgetValues(node), loader: widgetValues(loader),
  });
  if (!result) return;
  state.estimate = result;
  const blocks = (result.lines ?? []).map((text, i) => ({ text, tone: i === 0 ? "head" : "note" }));
  for (const problem of result.problems ?? []) blocks.push({ text: `⚠ ${problem}`, tone: "warn" });
  showInfo(node, blocks);
}

function schedule(node) {
  const state = node?.__reelsmith;
  if (!state) return;
  clearTimeout(state.timer);
  state.timer = setTimeout(() => {
    const refresh = state.kind === "loader" ? refreshLoader : refreshSampler;
    refresh(node).catch((error) => quiet("refresh failed", error));
  }, DELAY_MS);
}

// ------------------------------------------------------------------------------------------ wiring

function chainConnections(node) {
  const original = node.onConnectionsChange;
  node.onConnectionsChange = function (...args) {
    const result = original?.apply(this, args);
    schedule(this);
    return result;
  };
}

function setUpSampler(node, rules, rule) {
  const state = { kind: "sampler", rules, rule, loader: null };
  node.__reelsmith = state;
  for (const name of rule.size?.widgets ?? []) {
    wrapCallback(findWidget(node, name), (widget) => {
      snapWidget(node, widget, "size");
      syncPreset(node);
      schedule(node);
    });
  }
  if (rule.frames?.widget) {
    wrapCallback(findWidget(node, rule.frames.widget), (widget) => {
      snapWidget(node, widget, "frames");
      schedule(node);
    });
  }
  for (const widget of node.widgets ?? []) wrapCallback(widget, () => schedule(node));
  addPresetWidget(node, state);
  addInfoBox(node, state);
  chainConnections(node);
  schedule(node);
}

function setUpLoader(node, rules) {
  const state = { kind: "loader", rules, status: null };
  node.__reelsmith = state;
  for (const widget of node.widgets ?? []) wrapCallback(widget, () => schedule(node));
  addInfoBox(node, state);
  schedule(node);
}

// Without the server's rules (an older pack server): snap to the widgets' own step and minimum.
function setUpFallbackSnapping(node) {
  for (const widget of node.widgets ?? []) {
    const step = widget?.options?.step2;
    if (widget?.type !== "number" || !(step > 1) || !["width", "height", "frames", "image_size"].includes(widget.name)) continue;
    wrapCallback(widget, () => {
      const offset = Number(widget.options.min ?? 0) % step;
      const value = snapToGrid(Number(widget.value), step, offset, widget.__reelsmithLast, widget.options);
      if (Number.isFinite(value)) widget.value = value;
      widget.__reelsmithLast = widget.value;
    });
  }
}

async function setUp(node) {
  const type = classOf(node);
  if (typeof type !== "string" || !type.startsWith("Reelsmith") || node.__reelsmith) return;
  const rules = await loadRules();
  if (node.__reelsmith) return;
  const rule = rules?.samplers?.[type];
  if (rule) setUpSampler(node, rules, rule);
  else if (rules?.loaders?.[type]) setUpLoader(node, rules);
  else if (!rules) setUpFallbackSnapping(node);
}

app.registerExtension({
  name: "reelsmith.editor",
  nodeCreated(node) {
    setUp(node).catch((error) => quiet("node setup failed", error));
  },
  loadedGraphNode(node) {
    try {
      schedule(node);
    } catch (error) {
      quiet("loaded node refresh failed", error);
    }
  },
  afterConfigureGraph() {
    try {
      for (const node of allNodes(app.graph)) schedule(node);
    } catch (error) {
      quiet("graph refresh failed", error);
    }
  },
});
