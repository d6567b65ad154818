// The Switchboard admin page: reads the router API every 2 s and acts through it.
// No framework and no build step. Same-origin requests carry the browser's Basic credentials;
// state changes add X-Switchboard-Admin (the router refuses Basic-authenticated ones without
// it, see docs/admin.md). Every value from the API is set as text, never parsed as HTML.

const REFRESH_MS = 2000;
const STALE_HEARTBEAT_S = 10;
const SVG = "http://www.w3.org/2000/svg";

// What the page knows, for people poking at it in the console and for the browser tests.
const admin = (window.admin = {
  refreshes: 0, cluster: null, history: null, channels: null, user: null, error: null,
  actions: [],
});

const $ = (sel) => document.querySelector(sel);

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error;
  }
}

async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-Switchboard-Admin"] = "1";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method, headers, credentials: "same-origin", cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await resp.json(); } catch { data = null; }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86400)}d`;
}

// -- gateways ----------------------------------------------------------------------------

function renderCluster(c) {
  $("#total-connections").textContent = c.total_connections;
  $("#gateway-count").textContent = c.gateways.length;
  $("#imbalance").textContent = c.imbalance.toFixed(2);
  $("#gateways-empty").hidden = c.gateways.length > 0;
  const rows = c.gateways.map((g) => {
    const stale = g.heartbeat_age_s > STALE_HEARTBEAT_S;
    const state = g.draining
      ? el("span", { class: "badge draining" }, "draining")
      : stale ? el("span", { class: "badge stale" }, "silent") : el("span", { class: "badge" }, "serving");
    const drain = el("button", { class: "drain danger", type: "button", disabled: g.draining,
      title: g.draining ? "already draining" : "drain this gateway (it exits afterwards)" }, "Drain…");
    drain.addEventListener("click", () => confirmDrain(g.id));
    return el("tr", { "data-gateway": g.id, class: g.draining ? "draining" : "" },
      el("td", { class: "id" }, g.id),
      el("td", { class: "addr" }, `${g.host}:${g.port}`),
      el("td", { class: "num connections" }, g.connections),
      el("td", { class: "num ws" }, g.ws),
      el("td", { class: "num sse" }, g.sse),
      el("td", { class: "draining", "data-draining": String(g.draining) }, state),
      el("td", { class: "num age" }, `${g.heartbeat_age_s.toFixed(1)} s`),
      el("td", { class: "up" }, g.started_ms ? ago(g.started_ms) : "–"),
      el("td", { class: "num" }, drain));
  });
  $("#gateways tbody").replaceChildren(...rows);
}

// -- chart -------------------------------------------------------------------------------

// A top for the y axis whose four grid steps are round numbers (1, 2 or 5 times a power of 10).
function niceTop(v, whole = false) {
  const step = whole ? Math.max(1, v / 4) : v / 4; // whole: counts, never a fractional step
  if (!(step > 0)) return 4;
  const p = 10 ** Math.floor(Math.log10(step));
  for (const m of [1, 2, 5, 10]) if (step <= m * p) return 4 * m * p;
  return 40 * p;
}

function fmt(v) {
  if (v >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (v >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
  return `${+v.toFixed(v < 10 ? 1 : 0)}`;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function renderChart(h) {
  const W = 1100, H = 230, L = 56, R = 64, T = 14, B = 26;
  const box = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": "connections and deliveries per second" });
  const samples = h.samples;
  const end = samples.length ? samples[samples.length - 1].t_ms : Date.now();
  const start = end - h.window_s * 1000;
  const x = (t) => L + ((t - start) / (end - start)) * (W - L - R);
  const maxC = niceTop(Math.max(0, ...samples.map((s) => s.connections)), true);
  const maxD = niceTop(Math.max(0, ...samples.map((s) => s.deliveries_per_s)));
  const yC = (v) => T + (1 - v / maxC) * (H - T - B);
  const yD = (v) => T + (1 - v / maxD) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const y = T + (i / 4) * (H - T - B);
    box.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: y, y2: y }));
    box.append(svg("text", { class: "axis", x: L - 8, y: y + 4, "text-anchor": "end" },
      fmt(maxC * (1 - i / 4))));
    box.append(svg("text", { class: "axis", x: W - R + 8, y: y + 4 }, fmt(maxD * (1 - i / 4))));
  }
  const minutes = Math.round(h.window_s / 60);
  for (let m = 0; m <= minutes; m += Math.max(1, Math.round(minutes / 5))) {
    const t = end - m * 60000;
    box.append(svg("text", { class: "axis", x: x(t), y: H - 6, "text-anchor": "middle" },
      m === 0 ? "now" : `−${m} min`));
  }
  if (samples.length) {
    const pts = (y, key) => samples.map((s) => `${x(s.t_ms).toFixed(1)},${y(s[key]).toFixed(1)}`).join(" ");
    const conn = pts(yC, "connections");
    const first = x(samples[0].t_ms).toFixed(1), last = x(end).toFixed(1), base = yC(0);
    box.append(svg("polygon", { class: "area connections",
      points: `${first},${base} ${conn} ${last},${base}` }));
    box.append(svg("polyline", { class: "series connections", points: conn }));
    box.append(svg("polyline", { class: "series deliveries", points: pts(yD, "deliveries_per_s") }));
  } else {
    box.append(svg("text", { class: "axis", x: W / 2, y: H / 2, "text-anchor": "middle" },
      "no samples yet"));
  }
  $("#chart").replaceChildren(box);
  const latest = samples[samples.length - 1];
  $("#chart-range").textContent = latest
    ? ` · last ${minutes} min · now ${latest.connections} connections, ${fmt(latest.deliveries_per_s)} deliveries/s`
    : "";
}

// -- channels ----------------------------------------------------------------------------

function renderChannels(c) {
  $("#channel-count").textContent = c.channels.length;
  $("#channels-truncated").hidden = !c.truncated;
  $("#channels-empty").hidden = c.channels.length > 0;
  $("#channels tbody").replaceChildren(...c.channels.map((ch) =>
    el("tr", { "data-channel": ch.channel },
      el("td", { class: "id" }, ch.channel),
      el("td", { class: "num users" }, ch.users),
      el("td", { class: "num connections" }, ch.connections))));
}

// -- user lookup -------------------------------------------------------------------------

let lookedUp = null; // the user shown, refreshed with everything else

async function lookUp(user) {
  $("#user-error").hidden = true;
  try {
    const u = await api(`/v1/users/${encodeURIComponent(user)}/connections`);
    admin.user = u;
    lookedUp = u.user;
    renderUser(u);
  } catch (err) {
    admin.user = null;
    lookedUp = null;
    $("#user-result").hidden = true;
    $("#user-error").textContent = err.message;
    $("#user-error").hidden = false;
  }
}

function renderUser(u) {
  $("#user-result").hidden = false;
  $("#user-name").textContent = u.user;
  $("#user-count").textContent = u.count;
  $("#user-gateways").textContent = new Set(u.connections.map((c) => c.gateway)).size;
  $("#disconnect-btn").disabled = u.count === 0;
  $("#user-connections tbody").replaceChildren(...u.connections.map((c) =>
    el("tr", { "data-conn": c.conn },
      el("td", { class: "conn" }, c.conn), el("td", { class: "gateway id" }, c.gateway))));
}

// -- actions -----------------------------------------------------------------------------

function confirmAction(title, text) {
  const dialog = $("#confirm");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
    $("#confirm-cancel").focus();
  });
}

function toast(text, kind = "ok") {
  const box = $("#action-result");
  box.textContent = text;
  box.dataset.kind = kind;
  box.hidden = false;
}

async function act(name, target, run) {
  try {
    const result = await run();
    admin.actions.push({ name, target, ok: true, result });
    return result;
  } catch (err) {
    admin.actions.push({ name, target, ok: false, status: err.status, message: err.message });
    toast(`${name} ${target} failed: ${err.message}`, "error");
    return null;
  } finally {
    refresh();
  }
}

async function confirmDrain(id) {
  const ok = await confirmAction("Drain gateway?", `Gateway ${id} will stop accepting, move every `
    + "client to the other gateways over its drain window, and exit (its supervisor replaces it).");
  if (!ok) { admin.actions.push({ name: "drain", target: id, cancelled: true }); return; }
  const r = await act("drain", id, () => api(`/v1/gateways/${encodeURIComponent(id)}/drain`,
    { method: "POST" }));
  if (r) toast(`${id} is draining${r.already_draining ? " (it already was)" : ""}`);
}

async function confirmDisconnect() {
  const user = lookedUp;
  if (user === null) return;
  const n = admin.user ? admin.user.count : 0;
  const ok = await confirmAction("Disconnect user?", `Close all ${n} connections of ${user} `
    + "(close code 4201). Their clients may reconnect.");
  if (!ok) { admin.actions.push({ name: "disconnect", target: user, cancelled: true }); return; }
  const r = await act("disconnect", user, () => api(
    `/v1/users/${encodeURIComponent(user)}/disconnect`,
    { method: "POST", body: { reason: "disconnected by an admin" } }));
  if (r) toast(`${user}: ${r.gateways} gateway(s) told to close the connections`);
}

// -- refresh loop ------------------------------------------------------------------------

function setStatus(state, text) {
  $("#status").dataset.state = state;
  $("#status-text").textContent = text;
}

let running = false;
let again = false;

async function refreshOnce() {
  try {
    const [cluster, history, channels, user] = await Promise.all([
      api("/v1/cluster"), api("/v1/cluster/history"), api("/v1/channels"),
      lookedUp === null ? null : api(`/v1/users/${encodeURIComponent(lookedUp)}/connections`),
    ]);
    Object.assign(admin, { cluster, history, channels, error: null });
    renderCluster(cluster);
    renderChart(history);
    renderChannels(channels);
    if (user && user.user === lookedUp) { admin.user = user; renderUser(user); }
    setStatus("ok", `updated ${new Date().toLocaleTimeString()}`);
  } catch (err) {
    admin.error = err.message;
    setStatus("error", err.status === 401 ? "not authorized: reload the page to log in"
      : `refresh failed: ${err.message}`);
  } finally {
    admin.refreshes += 1;
  }
}

async function refresh() {
  // one refresh at a time; asking during one makes one more afterwards
  if (running) { again = true; return; }
  running = true;
  try {
    do { again = false; await refreshOnce(); } while (again);
  } finally {
    running = false;
  }
}

function start() {
  $("#user-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const user = $("#user-input").value.trim();
    if (user) lookUp(user).then(() => { admin.lookups = (admin.lookups || 0) + 1; });
  });
  $("#disconnect-btn").addEventListener("click", confirmDisconnect);
  refresh();
  setInterval(() => { if ($("#live").checked) refresh(); }, REFRESH_MS);
}

start();
