// StrataMQ dashboard: polls the admin API and renders plain tables. All text goes into the
// DOM through textContent (never innerHTML), so names from clients cannot inject markup.
"use strict";

const POLL_MS = 2000;
let previous = null; // { at, messages: Map(topic -> count) } from the last poll, for rates
let selected = null; // topic shown in the detail table

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, String(v));
    else if (k === "title") node.title = String(v);
  }
  for (const c of children) {
    node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  }
  return node;
}

function num(n) {
  return n == null ? "–" : Number(n).toLocaleString("en-US");
}

function bytes(n) {
  if (n == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + units[i];
}

function duration(ms) {
  const s = Math.floor(ms / 1000);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

async function getJson(path) {
  const r = await fetch(path, { headers: { accept: "application/json" } });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

function renderCluster(c) {
  document.getElementById("summary").textContent =
    "cluster " + c.cluster_id + " · node " + c.node_id + " (" + c.roles.join(", ") + ") · v" +
    c.version + " · up " + duration(c.uptime_ms) + " · " + c.topics + " topics, " +
    c.partitions + " partitions";
  const rows = c.brokers.map((b) =>
    el("tr", { "data-node": b.id },
      el("td", {}, b.id + (b.id === c.node_id ? " (this node)" : "")),
      el("td", {}, b.address),
      el("td", { class: b.alive ? "good" : "bad" }, b.alive ? "alive" : "expired"),
      el("td", {}, (c.meta.leader === b.id ? "leader" : b.meta_voter ? "voter" : "–")),
      el("td", { class: "num" }, num(b.partitions_led)),
      el("td", {}, new Date(b.lease_expires_ms).toLocaleTimeString())));
  fill(document.querySelector("#nodes tbody"), rows);
  const w = c.wal;
  document.getElementById("this-node").textContent =
    "listeners: kafka " + c.listeners.kafka + ", admin " + c.listeners.admin + ", mqtt " +
    c.listeners.mqtt + " · WAL " + bytes(w.bytes) + " (" + bytes(w.unuploaded_bytes) +
    " not yet uploaded) · object store " + c.object_store;
}

function renderTopics(topics) {
  const now = performance.now();
  const counts = new Map(topics.map((t) => [t.name, t.messages]));
  const rows = topics.map((t) => {
    let rate = "–";
    if (previous && previous.messages.has(t.name)) {
      const dt = (now - previous.at) / 1000;
      const d = t.messages - previous.messages.get(t.name);
      if (dt > 0 && d >= 0) rate = (d / dt).toFixed(1);
    }
    const row = el("tr", { class: "clickable", "data-topic": t.name, title: "show partitions" },
      el("td", { class: "name" }, t.name),
      el("td", { class: "num partitions" }, num(t.partitions.length)),
      el("td", { class: "num messages" }, num(t.messages)),
      el("td", { class: "num rate" }, rate),
      el("td", { class: "num" }, bytes(t.object_bytes)));
    row.addEventListener("click", () => { selected = t.name; renderDetail(t); });
    return row;
  });
  fill(document.querySelector("#topics tbody"), rows);
  document.getElementById("topics-empty").hidden = topics.length > 0;
  previous = { at: now, messages: counts };
  const shown = selected && topics.find((t) => t.name === selected);
  if (selected && !shown) selected = null;
  renderDetail(shown || null);
}

function renderDetail(t) {
  const section = document.getElementById("topic-detail");
  section.hidden = !t;
  if (!t) return;
  document.getElementById("detail-name").textContent = t.name;
  fill(document.querySelector("#partitions tbody"), t.partitions.map((p) =>
    el("tr", { "data-partition": p.partition },
      el("td", { class: "num" }, p.partition),
      el("td", {}, p.leader == null ? "none" : p.leader),
      el("td", { class: "num" }, num(p.log_start_offset)),
      el("td", { class: "num" }, num(p.high_watermark)),
      el("td", { class: "num" }, num(p.messages)),
      el("td", { class: "num" }, num(p.uploaded_offset)),
      el("td", { class: "num" }, num(p.blocks)),
      el("td", { class: "num" }, num(p.segments)),
      el("td", { class: "num" }, bytes(p.object_bytes)))));
}

function renderGroups(groups) {
  fill(document.querySelector("#groups tbody"), groups.map((g) =>
    el("tr", { "data-group": g.group_id },
      el("td", {}, g.group_id),
      el("td", {}, g.state),
      el("td", {}, g.protocol_type || "–"),
      el("td", { class: "num" }, num(g.partitions)),
      el("td", { class: "num lag" }, num(g.lag)))));
  document.getElementById("groups-empty").hidden = groups.length > 0;
}

function renderStorage(s) {
  document.getElementById("storage-summary").textContent =
    s.object_store + " · " + num(s.total.objects) + " objects, " + num(s.total.blocks) +
    " blocks (" + num(s.total.segments) + " segments), " + bytes(s.total.bytes) + " · garbage pending: " +
    num(s.garbage.objects) + " objects · WAL " + bytes(s.wal.bytes);
  fill(document.querySelector("#storage tbody"), s.topics.map((t) =>
    el("tr", { "data-topic": t.name },
      el("td", {}, t.name),
      el("td", { class: "num" }, num(t.objects)),
      el("td", { class: "num" }, num(t.blocks)),
      el("td", { class: "num" }, num(t.segments)),
      el("td", { class: "num" }, bytes(t.bytes)))));
}

function renderMqtt(m) {
  const now = Date.now();
  document.getElementById("mqtt-summary").textContent = m.enabled
    ? "node " + m.node_id + " · " + num(m.connections) + " connections · " + num(m.sessions) +
      " sessions (" + num(m.offline_sessions) + " offline) · " + num(m.inflight) + " in flight"
    : "MQTT is not running on this node";
  fill(document.querySelector("#mqtt-clients tbody"), m.clients.map((c) =>
    el("tr", { "data-client": c.client_id, class: c.connected ? "" : "muted" },
      el("td", { class: "client-id" }, c.client_id),
      el("td", { class: c.connected ? "good" : "" }, c.connected ? "connected" : "offline"),
      el("td", {}, c.username == null ? "–" : c.username),
      el("td", {}, c.protocol || "–"),
      el("td", {}, c.transport || "–"),
      el("td", {}, c.peer || "–"),
      el("td", {}, c.connected_ms == null ? "–" : duration(now - c.connected_ms) + " ago"),
      el("td", { class: "num" }, c.keep_alive_secs == null ? "–" : c.keep_alive_secs + "s"),
      el("td", { class: "num" }, num(c.subscriptions)),
      el("td", { class: "num" }, num(c.inflight)),
      el("td", {}, !c.persistent ? "ends with the connection"
        : c.session_expiry_secs == null ? "never"
        : c.expires_in_ms == null ? c.session_expiry_secs + "s after disconnect"
        : "in " + duration(c.expires_in_ms)))));
  document.getElementById("mqtt-empty").hidden = m.clients.length > 0;
}

// Two views: the overview and MQTT, chosen by the URL's hash (#mqtt).
function view() {
  return location.hash === "#mqtt" ? "mqtt" : "overview";
}

function showView() {
  const v = view();
  document.getElementById("view-overview").hidden = v !== "overview";
  document.getElementById("view-mqtt").hidden = v !== "mqtt";
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.view === v);
  }
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const [cluster, topics, groups, storage, mqtt] = await Promise.all([
      getJson("/v1/cluster"), getJson("/v1/topics"), getJson("/v1/groups"), getJson("/v1/storage"),
      getJson("/v1/mqtt/clients"),
    ]);
    renderCluster(cluster);
    renderTopics(topics);
    renderGroups(groups);
    renderStorage(storage);
    renderMqtt(mqtt);
    status.textContent = "updated " + new Date().toLocaleTimeString();
    status.className = "muted";
    document.body.dataset.loaded = "true";
  } catch (e) {
    status.textContent = "cannot reach the admin API: " + e.message;
    status.className = "bad";
  }
}

document.getElementById("detail-close").addEventListener("click", () => { selected = null; renderDetail(null); });
window.addEventListener("hashchange", showView);
showView();
poll();
setInterval(poll, POLL_MS);
