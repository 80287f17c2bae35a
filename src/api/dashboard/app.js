// Herald's dashboard. Everything it shows comes from the public API:
// GET /v1/events (server-sent events, read with fetch so the key travels in
// a header, never in a URL), GET /v1/notifications, POST .../replay and
// POST /v1/providers/{name}/disable|enable.
"use strict";

const KEY = "herald.key";
const WINDOW_MS = 15 * 60 * 1000;
// A stream that has said nothing for this long is taken as dead: the
// server sends a snapshot every second.
const STALE_MS = 5000;
const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 5000;

const $ = (id) => document.getElementById(id);

// An element with attributes and children (strings become text, never HTML).
function el(tag, attrs, ...children) {
  const ns = tag === "svg" || tag === "path" || tag === "line" ? "http://www.w3.org/2000/svg" : null;
  const node = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
// A time of day from Unix milliseconds or an RFC 3339 string.
const time = (at) => new Date(at).toLocaleTimeString();
const number = (n) => (n >= 100 ? Math.round(n).toString() : (Math.round(n * 10) / 10).toString());

// ---- the key and API calls

function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

function headers(extra) {
  const h = Object.assign({}, extra);
  const key = apiKey();
  if (key) h.authorization = "Bearer " + key;
  return h;
}

class ApiError extends Error {
  constructor(status, problem) {
    const said = problem && (problem.detail || problem.title);
    super(said ? `${status} ${problem.title || ""}: ${problem.detail || ""}` : `HTTP ${status}`);
    this.status = status;
  }
}

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: headers(body === undefined ? {} : { "content-type": "application/json" }),
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  const type = res.headers.get("content-type") || "";
  const data = type.includes("json") ? await res.json().catch(() => null) : null;
  if (!res.ok) {
    if (res.status === 401) needKey(data);
    throw new ApiError(res.status, data);
  }
  return data;
}

function notice(text, kind) {
  const n = $("notice");
  n.textContent = text;
  n.dataset.kind = kind || "info";
  n.hidden = !text;
}

function setStatus(state, text) {
  const s = $("status");
  s.dataset.state = state;
  s.textContent = text || state;
}

// ---- the event stream

let stream = null; // the AbortController of the running stream
let connections = 0;

function needKey(problem) {
  if (stream) stream.abort();
  stream = null;
  $("main").hidden = true;
  $("key-form").hidden = false;
  $("forget").hidden = true;
  setStatus("key", "key needed");
  if (apiKey() && problem) notice(`${problem.title}: ${problem.detail}`, "error");
  $("key-input").focus();
}

async function connect() {
  if (stream) stream.abort();
  const ctrl = new AbortController();
  stream = ctrl;
  let wait = RETRY_MIN_MS;
  while (!ctrl.signal.aborted) {
    try {
      const res = await fetch("/v1/events", {
        headers: headers({ accept: "text/event-stream" }),
        signal: ctrl.signal,
        cache: "no-store",
      });
      if (res.status === 401 || res.status === 403) {
        needKey(await res.json().catch(() => null));
        return;
      }
      if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
      connections += 1;
      document.body.dataset.connections = connections;
      let first = true;
      await readEvents(res.body, (event, data) => {
        if (event !== "snapshot") return;
        onSnapshot(JSON.parse(data), first);
        first = false;
        wait = RETRY_MIN_MS;
      });
    } catch (e) {
      // A refused connection, a reset, a stale stream: try again below.
    }
    if (ctrl.signal.aborted) return;
    setStatus("reconnecting", "reconnecting…");
    await sleep(wait);
    wait = Math.min(wait * 2, RETRY_MAX_MS);
  }
}

// Reads server-sent events from `body` until it ends or goes quiet.
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let timer = null;
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(() => reader.cancel().catch(() => {}), STALE_MS);
  };
  let buffer = "";
  arm();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      arm();
      buffer += value;
      buffer = buffer.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line === "" || line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let text = colon < 0 ? "" : line.slice(colon + 1);
          if (text.startsWith(" ")) text = text.slice(1);
          if (field === "event") event = text;
          else if (field === "data") data.push(text);
        }
        if (data.length) onEvent(event, data.join("\n"));
      }
    }
  } finally {
    clearTimeout(timer);
  }
}

// ---- the store

// The store as this instance sees it: for PostgreSQL, whether a writable
// primary answers (and which), or for how long none has.
function renderStore(store, now) {
  const s = $("store");
  if (!store || !store.engine) {
    s.hidden = true;
    return;
  }
  s.hidden = false;
  const host = store.host ? ` ${store.host}` : "";
  let state = "ok";
  let text = `store: ${store.engine}${host}`;
  if (!store.writable) {
    state = "down";
    const secs = store.since ? Math.max(0, Math.round((now - store.since) / 1000)) : 0;
    text = `store: ${store.problem || "no writable primary"} for ${secs} s`;
  } else if (store.problem) {
    state = "degraded";
    text += ` · not ready: ${store.problem}`;
  }
  s.dataset.state = state;
  s.textContent = text;
}

// ---- snapshots

let samples = [];
let deadTotal = null;

function onSnapshot(s, first) {
  if (first) {
    // A new connection (perhaps to a restarted process): its history is the truth.
    samples = s.samples.slice();
  } else {
    const last = samples.length ? samples[samples.length - 1].t : 0;
    for (const sample of s.samples) if (sample.t > last) samples.push(sample);
  }
  const since = s.at - WINDOW_MS;
  while (samples.length && samples[0].t < since) samples.shift();

  $("key-form").hidden = true;
  $("main").hidden = false;
  $("forget").hidden = !apiKey();
  setStatus("live", `live · ${time(s.at)}`);
  renderStore(s.store, s.at);
  renderProviders(s.providers);
  renderCharts(s.at);
  // The stream carries this instance's totals: a new dead letter shows up
  // without polling the list.
  if (first || s.totals.dead !== deadTotal) loadDead();
  deadTotal = s.totals.dead;
}

// ---- providers

const cards = new Map();

function providerState(p) {
  return p.enabled === false ? "disabled" : p.breaker;
}

function card(p) {
  let c = cards.get(p.name);
  if (c) return c;
  const field = () => el("dd");
  c = {
    badge: el("span", { class: "badge" }),
    ratio: field(),
    inFlight: field(),
    latency: field(),
    kind: field(),
    toggle: el("button", { type: "button", class: "toggle" }),
  };
  const fact = (label, value) => el("div", {}, el("dt", {}, label), value);
  c.root = el(
    "article",
    { class: "card", "data-provider": p.name },
    el("header", {}, el("h4", {}, p.name), c.badge),
    el(
      "dl",
      {},
      fact("success", c.ratio),
      fact("in flight", c.inFlight),
      fact("p50 / p99", c.latency),
      fact("kind · weight", c.kind),
    ),
    c.toggle,
  );
  c.toggle.addEventListener("click", () => toggleProvider(p.name, c.toggle.dataset.action));
  cards.set(p.name, c);
  return c;
}

function renderProviders(providers) {
  const root = $("providers");
  const seen = new Set();
  for (const channel of ["sms", "email"]) {
    const mine = providers.filter((p) => p.channel === channel);
    let group = root.querySelector(`[data-channel="${channel}"]`);
    if (!group) {
      group = el("div", { "data-channel": channel }, el("h3", {}, channel === "sms" ? "SMS" : "Email"), el("div", { class: "cards" }));
      root.append(group);
    }
    group.hidden = mine.length === 0;
    const list = group.querySelector(".cards");
    for (const p of mine) {
      seen.add(p.name);
      const c = card(p);
      const state = providerState(p);
      c.root.dataset.state = state;
      c.badge.textContent = state.replace("_", "-");
      c.ratio.textContent = p.samples ? `${Math.round((100 * (p.samples - p.failures)) / p.samples)}% of ${p.samples}` : "–";
      c.inFlight.textContent = p.in_flight;
      const { p50, p99 } = p.latency_ms;
      c.latency.textContent = p50 === null ? "–" : `${p50} / ${p99} ms`;
      c.kind.textContent = `${p.kind} · ${p.weight}`;
      const disabled = p.enabled === false;
      c.toggle.dataset.action = disabled ? "enable" : "disable";
      c.toggle.textContent = disabled ? "Enable" : "Disable";
      if (c.root.parentNode !== list) list.append(c.root);
    }
  }
  for (const [name, c] of cards) {
    if (!seen.has(name)) {
      c.root.remove();
      cards.delete(name);
    }
  }
}

async function toggleProvider(name, action) {
  try {
    await api("POST", `/v1/providers/${encodeURIComponent(name)}/${action}`);
    notice(`${name}: ${action}d`);
  } catch (e) {
    notice(`${action} ${name}: ${e.message}`, "error");
  }
}

// ---- charts: hand-written SVG, 900 units across the time shown

// The history shown: all 15 minutes once there are, at least one minute.
function span(end) {
  return samples.length ? Math.min(WINDOW_MS, Math.max(60000, end - samples[0].t)) : 60000;
}

function path(points, max, end) {
  const width = span(end);
  let d = "";
  let prev = null;
  for (const [t, v] of points) {
    const x = (900 - (900 * (end - t)) / width).toFixed(1);
    const y = (98 - (96 * v) / max).toFixed(1);
    // A gap of more than a few seconds (a restart) is left blank.
    d += prev !== null && t - prev <= 3000 ? `L${x} ${y}` : `M${x} ${y}`;
    prev = t;
  }
  return d;
}

function chart(svg, legend, series, end, unit) {
  let max = 1;
  for (const s of series) for (const sample of samples) max = Math.max(max, s.value(sample));
  const grid = [25, 50, 75].map((y) => el("line", { class: "grid", x1: 0, x2: 900, y1: y, y2: y, "vector-effect": "non-scaling-stroke" }));
  const paths = series.map((s) =>
    el("path", { class: `s-${s.name}`, d: path(samples.map((sample) => [sample.t, s.value(sample)]), max, end) }),
  );
  svg.replaceChildren(...grid, ...paths);
  svg.dataset.samples = samples.length;
  const last = samples[samples.length - 1];
  legend.replaceChildren(
    ...series.flatMap((s) => [el("span", { class: `key s-${s.name}` }, `${s.name} ${last ? number(s.value(last)) : 0}`), " "]),
    `· top ${number(max)}${unit} · last ${Math.round(span(end) / 60000)} min`,
  );
}

function renderCharts(end) {
  chart($("throughput"), $("throughput-legend"), [
    { name: "accepted", value: (s) => s.accepted },
    { name: "sent", value: (s) => s.sent },
  ], end, "/s");
  chart($("backlog"), $("backlog-legend"), ["queued", "retrying", "sending", "scheduled"].map((name) => ({
    name,
    value: (s) => s.backlog[name],
  })), end, "");
}

// ---- dead letters

const selected = new Set();
let loadingDead = null;

function loadDead() {
  // One listing at a time; a call while one runs asks for one more after it.
  if (loadingDead) {
    loadingDead.again = true;
    return;
  }
  loadingDead = { again: false };
  api("GET", "/v1/notifications?status=dead&order=newest&limit=50")
    .then((page) => renderDead(page.items))
    .catch((e) => notice(`dead letters: ${e.message}`, "error"))
    .finally(() => {
      const again = loadingDead.again;
      loadingDead = null;
      if (again) loadDead();
    });
}

function renderDead(items) {
  const list = $("dead");
  const ids = new Set(items.map((n) => n.id));
  for (const id of [...selected]) if (!ids.has(id)) selected.delete(id);
  if (items.length === 0) {
    list.replaceChildren(el("li", { class: "empty" }, "No dead letters."));
  } else {
    list.replaceChildren(
      ...items.map((n) => {
        const box = el("input", { type: "checkbox", value: n.id, checked: selected.has(n.id) });
        box.addEventListener("change", () => {
          if (box.checked) selected.add(n.id);
          else selected.delete(n.id);
          $("replay").disabled = selected.size === 0;
        });
        const show = el("button", { type: "button", class: "show" }, "attempts");
        show.addEventListener("click", () => {
          $("lookup-id").value = n.id;
          lookup(n.id);
        });
        return el(
          "li",
          { "data-id": n.id },
          el("label", {}, box, " ", el("code", {}, n.id)),
          show,
          el(
            "span",
            { class: "error" },
            el("span", { class: "meta" }, `${n.channel} · ${n.rounds} round${n.rounds === 1 ? "" : "s"} · died ${time(n.updated_at)} · `),
            n.last_error || "no error recorded",
          ),
        );
      }),
    );
  }
  $("replay").disabled = selected.size === 0;
}

async function replaySelected() {
  const ids = [...selected];
  $("replay").disabled = true;
  const failed = [];
  for (const id of ids) {
    try {
      await api("POST", `/v1/notifications/${encodeURIComponent(id)}/replay`);
      selected.delete(id);
    } catch (e) {
      failed.push(`${id}: ${e.message}`);
    }
  }
  const done = ids.length - failed.length;
  notice(`replayed ${done} of ${ids.length}` + (failed.length ? `; ${failed.join("; ")}` : ""), failed.length ? "error" : "info");
  loadDead();
}

// ---- one notification

async function lookup(id) {
  const out = $("lookup");
  try {
    const n = await api("GET", `/v1/notifications/${encodeURIComponent(id)}`);
    out.replaceChildren(record(n));
  } catch (e) {
    out.replaceChildren(el("p", { class: "muted" }, e.message));
  }
}

function record(n) {
  // The API's times are RFC 3339 strings.
  const start = Date.parse(n.attempts.length ? n.attempts[0].started_at : n.created_at);
  const longest = Math.max(1, ...n.attempts.map((a) => a.duration_ms));
  const facts = [
    n.channel,
    `priority ${n.priority}`,
    `created ${time(n.created_at)}`,
    `${n.rounds} round${n.rounds === 1 ? "" : "s"}`,
    n.delivered_by ? `sent by ${n.delivered_by}` : null,
  ].filter(Boolean);
  return el(
    "div",
    { class: "record", "data-status": n.status },
    el("p", {}, el("span", { class: "badge status" }, n.status), " ", el("code", {}, n.id), " · ", facts.join(" · ")),
    n.last_error ? el("p", { class: "muted" }, n.last_error) : null,
    n.attempts.length === 0
      ? el("p", { class: "muted" }, "No attempts yet.")
      : el(
          "ol",
          { class: "timeline" },
          ...n.attempts.map((a) => {
            const bar = el("span");
            bar.style.width = `${(100 * a.duration_ms) / longest}%`;
            return el(
              "li",
              { class: "attempt", "data-outcome": a.outcome },
              el("span", { class: "when" }, `+${((Date.parse(a.started_at) - start) / 1000).toFixed(2)} s`),
              el("span", {}, el("b", {}, a.provider), " ", el("span", { class: "outcome" }, a.outcome)),
              el("span", { class: "muted" }, `${a.duration_ms} ms` + (a.http_status ? ` · HTTP ${a.http_status}` : "")),
              el("span", { class: "bar" }, bar),
              a.error ? el("span", { class: "error" }, a.error) : null,
            );
          }),
        ),
  );
}

// ---- wiring

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, $("key-input").value.trim());
    $("key-input").value = "";
    notice("");
    setStatus("connecting", "connecting");
    connect();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    needKey(null);
  });
  $("notice").addEventListener("click", () => notice(""));
  $("dead-refresh").addEventListener("click", loadDead);
  $("replay").addEventListener("click", replaySelected);
  $("lookup-form").addEventListener("submit", (e) => {
    e.preventDefault();
    lookup($("lookup-id").value.trim());
  });
  connect();
});
