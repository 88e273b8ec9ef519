// mupath's page: the served tasks, their graph and history, and an upload box (docs/page.md).
// Every datum comes from the JSON routes; text from the store is set with textContent only, never as HTML.
"use strict";

const TOKEN_KEY = "mupath-token";   // sessionStorage: this tab only, never in the URL
const POLL_MS = 3000;
const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
  "#9c755f", "#86bcb6", "#d37295", "#a0cbe8"];
const ROOT_COLOR = "#bab0ac";
const state = { commit: null, tasks: [], pending: [], graph: null, history: new Map(), focus: null,
  token: sessionStorage.getItem(TOKEN_KEY), asking: false, loaded: false };

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function $(id) { return document.getElementById(id); }

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "text") node.textContent = v; else if (k === "cls") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== null) node.textContent = text;
  return node;
}

function fmtParams(n) {
  if (n === null || n === undefined) return "–";
  if (n >= 1e6) return (n / 1e6).toFixed(2) + "M";
  if (n >= 1e3) return (n / 1e3).toFixed(1) + "k";
  return String(Math.round(n));
}

function fmtPct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%"; }

// ---- requests: the token goes in the Authorization header; every refusal becomes the error line ----
async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.token) headers.set("Authorization", "Bearer " + state.token);
  let res;
  try {
    res = await fetch(path, { ...options, headers, cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, "the server cannot be reached (" + e.message + ")");
  }
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  if (res.status === 401) {
    askToken(state.token ? "That token was refused; enter the right one." : "This server needs a token.");
  }
  if (!res.ok) {
    const why = body && typeof body.error === "string" ? body.error : res.statusText || "no answer";
    throw new ApiError(res.status, why);
  }
  return body;
}

function showError(err) {
  const line = $("error");
  line.textContent = err.status ? `error ${err.status}: ${err.message}` : `error: ${err.message}`;
  line.hidden = false;
}

function clearError() { $("error").hidden = true; $("error").textContent = ""; }

function askToken(message) {
  if (state.token) sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  state.asking = true;
  $("token-label").textContent = message;
  $("token-form").hidden = false;
  $("token-input").focus();
}

function useToken(event) {
  event.preventDefault();
  const value = $("token-input").value.trim();
  if (!value) return;
  state.token = value;
  sessionStorage.setItem(TOKEN_KEY, value);
  state.asking = false;
  $("token-input").value = "";
  $("token-form").hidden = true;
  state.commit = null;                  // redraw everything with the new token
  refresh();
}

// ---- the task table ----
function colorOf(creator) {
  if (creator === "root") return ROOT_COLOR;
  const i = state.tasks.findIndex((t) => t.name === creator);
  return i < 0 ? "#dddddd" : PALETTE[i % PALETTE.length];
}

function renderTasks() {
  const body = $("tasks").tBodies[0];
  body.replaceChildren();
  for (const t of state.tasks) {
    const shared = t.reused_components ? `${t.reused_components} from ${t.reused_from.join(", ")}` : "none";
    const reuse = t.grown_from ? `${shared}; grown from ${t.grown_from}` : shared;
    const name = el("td", {}, el("span", { cls: "swatch", "data-task": t.name }), t.name);
    body.append(el("tr", { "data-task": t.name }, name,
      el("td", { cls: "num", text: String(t.classes.length), title: t.classes.join(", ") }),
      el("td", { cls: "num acc", text: fmtPct(t.test_accuracy) }),
      el("td", { cls: "num", text: fmtParams(t.params_owned) }),
      el("td", { cls: "num", text: fmtParams(t.params_shared) }),
      el("td", { text: reuse }),
      el("td", { cls: "mono", text: t.version.slice(0, 9) + "…", title: t.version })));
  }
  for (const s of body.querySelectorAll(".swatch")) s.style.background = colorOf(s.dataset.task);
  const pending = $("pending");
  pending.hidden = state.pending.length === 0;
  pending.textContent = state.pending.length ? "added, not evolved yet: " + state.pending.join(", ") : "";
}

// ---- the graph: one column per task that trained components, a strip per served path ----
const BOX_W = 150, BOX_H = 20, GAP = 4, COL_W = 172, TOP = 54;

function groupsOf(graph) {
  const order = ["root", ...state.tasks.map((t) => t.name), null];
  const groups = new Map(order.map((k) => [k, []]));
  for (const c of graph.components) (groups.get(c.creator) || groups.get(null)).push(c);
  const key = (c) => c.order[0] * 1e4 + c.order[1];
  return [...groups].filter(([, cs]) => cs.length).map(([k, cs]) => [k, cs.sort((a, b) => key(a) - key(b))]);
}

function drawChips(root, graph) {
  let x = 0;
  graph.tasks.forEach((t) => {
    const w = 18 + 7 * t.name.length;
    const chip = svg("g", { class: "task-chip", "data-task": t.name, transform: `translate(${x},0)` });
    chip.append(svg("rect", { width: w, height: 22, rx: 11, fill: colorOf(t.name) }),
      svg("text", { x: 9, y: 15 }, t.name));
    chip.addEventListener("click", () => { state.focus = state.focus === t.name ? null : t.name; focusGraph(); });
    root.append(chip);
    x += w + 8;
  });
  return x;
}

function drawComponent(c, x, y) {
  const g = svg("g", { class: "comp" + (c.shared ? " shared" : ""), "data-component": c.id,
    "data-users": c.users.join(","), transform: `translate(${x},${y})` });
  g.append(svg("title", {}, `${c.slot} (${c.kind || "?"}), ${c.params ?? "?"} parameters, trained by ` +
    `${c.creator ?? "?"}; used by ${c.users.join(", ")}`));
  g.append(svg("rect", { width: BOX_W, height: BOX_H, rx: 3, fill: colorOf(c.creator) }));
  g.append(svg("text", { x: 6, y: 14 }, `${c.slot} · ${fmtParams(c.params)}`));
  if (c.shared) {
    const badge = svg("g", { class: "badge", transform: `translate(${BOX_W - 11},${BOX_H / 2})` });
    badge.append(svg("circle", { r: 8 }), svg("text", { x: 0, y: 3.5, "text-anchor": "middle" },
      String(c.users.length)));
    g.append(badge);
  }
  return g;
}

function drawStrips(root, graph, byId, y0) {
  const cell = 14;
  root.append(svg("text", { x: 0, y: y0, class: "group-title" }, "paths (each slot coloured by the task that trained it)"));
  graph.tasks.forEach((t, row) => {
    const y = y0 + 12 + row * (cell + 6);
    const g = svg("g", { class: "strip", "data-task": t.name, transform: `translate(0,${y})` });
    g.append(svg("text", { x: 0, y: cell - 3 }, t.name));
    t.path.forEach((p, i) => {
      const c = byId.get(p.component);
      const r = svg("rect", { x: 90 + i * (cell + 2), width: cell, height: cell, rx: 2,
        fill: colorOf(c ? c.creator : null), "data-component": p.component });
      r.append(svg("title", {}, `${p.slot}: trained by ${c && c.creator ? c.creator : "?"}` +
        (c && c.shared ? `, shared by ${c.users.length} tasks` : "")));
      g.append(r);
    });
    root.append(g);
  });
  return y0 + 12 + graph.tasks.length * (cell + 6);
}

function renderGraph() {
  const graph = state.graph;
  const host = $("graph");
  if (!graph || !graph.tasks.length) { host.replaceChildren(el("p", { cls: "note", text: "no task served yet" })); return; }
  const byId = new Map(graph.components.map((c) => [c.id, c]));
  const root = svg("svg", { role: "img", "aria-label": "system graph" });
  const chipsW = drawChips(root, graph);
  const groups = groupsOf(graph);
  let tallest = 0;
  groups.forEach(([creator, comps], col) => {
    const x = col * COL_W;
    const title = creator === null ? "unknown" : creator === "root" ? "root" : `trained by ${creator}`;
    root.append(svg("text", { x, y: TOP - 8, class: "group-title" }, `${title} (${comps.length})`));
    comps.forEach((c, i) => root.append(drawComponent(c, x, TOP + i * (BOX_H + GAP))));
    tallest = Math.max(tallest, comps.length);
  });
  const bottom = drawStrips(root, graph, byId, TOP + tallest * (BOX_H + GAP) + 24);
  const width = Math.max(chipsW, groups.length * COL_W, 90 + 16 * Math.max(...graph.tasks.map((t) => t.path.length)));
  root.setAttribute("width", width);
  root.setAttribute("height", bottom + 4);
  root.setAttribute("viewBox", `0 0 ${width} ${bottom + 4}`);
  host.replaceChildren(root);
  focusGraph();
}

function focusGraph() {
  const root = $("graph").querySelector("svg");
  if (!root) return;
  const f = state.focus;
  for (const g of root.querySelectorAll(".comp")) g.classList.toggle("dim", !!f && !g.dataset.users.split(",").includes(f));
  for (const g of root.querySelectorAll(".strip")) g.classList.toggle("dim", !!f && g.dataset.task !== f);
  for (const g of root.querySelectorAll(".task-chip")) g.classList.toggle("chip-on", g.dataset.task === f);
}

// ---- history: one <details> per task, its commits loaded when opened ----
// the others are [parent's value, child's]
const LIST_MUTATIONS = new Set(["cloned", ...["adapter", "ssf", "lora"].flatMap((k) => [`${k}s_added`, `${k}s_removed`])]);

function fmtMoves(moves) {
  return Object.entries(moves || {}).map(([k, v]) => {
    if (Array.isArray(v) && v.length === 2 && !LIST_MUTATIONS.has(k)) return `${k} ${JSON.stringify(v[0])}→${JSON.stringify(v[1])}`;
    return `${k}: ${Array.isArray(v) ? v.join(", ") : JSON.stringify(v)}`;
  }).join("; ");
}

function commitTable(commit) {
  const head = el("tr", {}, ...["gen", "parent", "mutations", "data", "best val", "score", "owned", "outcome"]
    .map((h) => el("th", { text: h })));
  const rows = commit.tried.map((t) => el("tr", { cls: t.retained ? "retained" : t.failure ? "failed" : "" },
    el("td", { cls: "num", text: String(t.generation) }), el("td", { text: t.parent_task === "__root__" ? "root" : t.parent_task || "–" }),
    el("td", { cls: "mono", text: fmtMoves(t.mutations) || "–" }), el("td", { cls: "mono", text: fmtMoves(t.data) || "–" }),
    el("td", { cls: "num", text: fmtPct(t.best_val) }),
    el("td", { cls: "num", text: t.score === null ? "–" : t.score.toFixed(4) }),
    el("td", { cls: "num", text: fmtParams(t.owned_params) }),
    el("td", { text: t.retained ? "retained" : t.failure ? `failed: ${t.failure}` : t.entered ? "entered" : "below bar" })));
  const title = `commit ${commit.id}, iteration ${commit.iteration}: ${commit.tried.length} candidates, ` +
    `test accuracy ${fmtPct(commit.test_accuracy)}, score ${commit.score === null ? "–" : commit.score.toFixed(4)}` +
    (commit.changed === false ? " (path unchanged)" : "");
  return el("div", { cls: "commit", "data-commit": String(commit.id) }, el("div", { text: title }),
    el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)));
}

async function loadHistory(name, box) {
  try {
    const h = await api(`/v1/tasks/${encodeURIComponent(name)}/history`);
    box.replaceChildren(...(h.commits.length ? h.commits.map(commitTable) : [el("p", { cls: "note", text: "no commit" })]));
    box.dataset.loaded = "1";
  } catch (e) { showError(e); }
}

function renderHistory() {
  const host = $("history");
  const open = new Set([...host.querySelectorAll("details[open]")].map((d) => d.dataset.task));
  if (!host.children.length && state.tasks.length) open.add(state.tasks[0].name);
  host.replaceChildren();
  for (const t of state.tasks) {
    const box = el("div", { cls: "commits" });
    const d = el("details", { "data-task": t.name }, el("summary", { text: `${t.name} (version ${t.version})` }), box);
    d.addEventListener("toggle", () => { if (d.open && !box.dataset.loaded) loadHistory(t.name, box); });
    host.append(d);
    if (open.has(t.name)) d.open = true;
  }
}

// ---- upload: every task's prediction with probabilities (POST /v1/predict) ----
function renderPrediction(result) {
  const p = result.predictions[0];
  const probs = Object.entries(p.probabilities).sort((a, b) => b[1] - a[1]).slice(0, 5);
  const bars = probs.map(([name, q]) => el("div", { cls: "bar", "data-class": name }, el("span", { text: name }),
    el("meter", { min: "0", max: "1", value: String(q) }), el("span", { cls: "p", text: (100 * q).toFixed(1) + "%" })));
  return el("div", { cls: "pred", "data-task": result.task, "data-class-id": String(p.class_id),
    "data-version": result.version, "data-probabilities": JSON.stringify(p.probabilities) },
    el("h3", {}, `${result.task}: `, el("span", { cls: "top", text: p.class_name })), ...bars);
}

async function predict(file) {
  const out = $("predictions");
  out.dataset.state = "busy";
  out.replaceChildren(el("p", { cls: "note", text: `asking every task about ${file.name}…` }));
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  const form = new FormData();
  form.append("files", file, file.name);
  try {
    const body = await api("/v1/predict", { method: "POST", body: form });
    out.replaceChildren(...Object.values(body.results).map(renderPrediction));
    out.dataset.state = "done";
    clearError();
  } catch (e) {
    out.replaceChildren();
    out.dataset.state = "error";
    showError(e);
  }
}

function wireUpload() {
  const drop = $("drop");
  $("file-input").addEventListener("change", (e) => { if (e.target.files.length) predict(e.target.files[0]); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) predict(e.dataTransfer.files[0]);
  });
}

// ---- polling: redraw when a task lands (the served commit changes) ----
async function refresh() {
  if (state.asking) return;
  try {
    const body = await api("/v1/tasks");
    if (body.commit !== state.commit) {
      const graph = await api("/v1/graph");
      state.tasks = body.tasks; state.pending = body.not_evolved || []; state.graph = graph; state.commit = body.commit;
      renderTasks(); renderGraph(); renderHistory();
      for (const d of $("history").querySelectorAll("details[open]")) loadHistory(d.dataset.task, d.querySelector(".commits"));
    }
    $("status").textContent = `commit ${body.commit} · ${body.tasks.length} task(s) · checked ${new Date().toLocaleTimeString()}`;
    if ($("predictions").dataset.state !== "error") clearError();
    if (!state.loaded) {
      state.loaded = true;
      window.mupathLoadMs = performance.now();
      document.documentElement.dataset.ready = "1";
    }
  } catch (e) { showError(e); }
}

async function poll() {
  await refresh();
  setTimeout(poll, POLL_MS);
}

$("token-form").addEventListener("submit", useToken);
wireUpload();
poll();
