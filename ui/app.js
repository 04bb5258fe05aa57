// The raftexample dashboard. It polls GET /v1/cluster on the member that
// served it (that member asks the others), keeps five minutes of per-member
// samples, and draws them on two canvases. No libraries, no build step.
"use strict";

const POLL_MS = 1000;
const WINDOW_MS = 5 * 60 * 1000;
const LAG_WARN = 100; // entries behind the leader before a member is "lagging"
const COLORS = ["#2a5bd7", "#d9480f", "#2b8a3e", "#ae3ec9", "#e8590c", "#1098ad", "#5c940d", "#c2255c"];

const state = {
  prev: new Map(),    // member id -> {t, uptime, traffic}: the last sample, for deltas
  series: new Map(),  // member id -> [{t, ops, p99}]
  last: null,         // the last /v1/cluster answer
  busy: false,        // an action is running
};

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else if (k === "onclick") e.addEventListener("click", v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function colorOf(id) { return COLORS[(Number(id) - 1) % COLORS.length]; }

function ago(iso, now) {
  if (!iso) return "–";
  const ms = now - Date.parse(iso);
  if (ms < 1000) return "now";
  if (ms < 60000) return Math.round(ms / 1000) + " s ago";
  return Math.round(ms / 60000) + " min ago";
}

// p99 between two cumulative histograms: the upper bound of the bucket the
// 99th percentile falls in, interpolated linearly inside it.
function p99(bounds, before, after) {
  const total = after.count - before.count;
  if (total <= 0) return null;
  const want = 0.99 * total;
  let lowBound = 0, lowCount = 0;
  for (let i = 0; i < bounds.length; i++) {
    const c = (after.buckets[i] || 0) - (before.buckets[i] || 0);
    if (c >= want) {
      const frac = c === lowCount ? 1 : (want - lowCount) / (c - lowCount);
      return (lowBound + frac * (bounds[i] - lowBound)) * 1000;
    }
    lowBound = bounds[i];
    lowCount = c;
  }
  return lowBound * 1000; // beyond the last bound
}

function sumHist(a, b) {
  const buckets = a.buckets.map((v, i) => v + (b.buckets[i] || 0));
  return { count: a.count + b.count, buckets };
}

function record(m, now) {
  const st = m.status;
  if (!st || !st.traffic) return;
  const tr = st.traffic;
  const both = sumHist(tr.reads, tr.writes);
  const prev = state.prev.get(m.id);
  state.prev.set(m.id, { t: now, uptime: st.uptimeSeconds, both, bounds: tr.bounds });
  if (!prev || st.uptimeSeconds < prev.uptime || both.count < prev.both.count) return; // first sample, or restarted
  const dt = (now - prev.t) / 1000;
  if (dt <= 0) return;
  const ops = (both.count - prev.both.count) / dt;
  const series = state.series.get(m.id) || [];
  series.push({ t: now, ops, p99: p99(tr.bounds, prev.both, both) });
  while (series.length && series[0].t < now - WINDOW_MS) series.shift();
  state.series.set(m.id, series);
}

function memberState(m, leaderSt) {
  if (!m.status || m.reachable === false) return "unreachable";
  const behind = (m.lag !== undefined && m.lag > LAG_WARN) ||
    (m.status.commit - m.status.applied > LAG_WARN) ||
    (leaderSt && leaderSt.commit - m.status.applied > LAG_WARN);
  return behind ? "lagging" : "ok";
}

function roleOf(m) {
  if (!m.voter) return "learner";
  if (m.status) return m.status.raftState;
  return m.leader ? "leader" : "voter";
}

function render(c) {
  const now = Date.now();
  const leader = c.members.find((m) => m.id === c.leader);
  const leaderSt = leader && leader.status;
  const voters = c.members.filter((m) => m.voter).length;
  const term = leaderSt ? leaderSt.term : Math.max(0, ...c.members.map((m) => (m.status ? m.status.term : 0)));
  document.getElementById("summary").textContent =
    (c.leader ? `leader: member ${c.leader}` : "no leader") +
    ` · term ${term} · ${c.members.length} members (${voters} voters) · served by member ${c.member}` +
    ` · updated ${new Date(c.time).toLocaleTimeString()}`;
  const down = c.members.filter((m) => memberState(m, leaderSt) === "unreachable").map((m) => m.id);
  const banner = document.getElementById("banner");
  const problems = [];
  if (!c.leader) problems.push("no leader: writes and linearizable reads fail until one is elected");
  if (down.length) problems.push(`unreachable: member ${down.join(", ")}`);
  banner.hidden = problems.length === 0;
  banner.textContent = problems.join(" · ");

  const tbody = document.querySelector("#members tbody");
  const rows = c.members.map((m) => {
    const ms = memberState(m, leaderSt);
    const role = roleOf(m);
    const st = m.status;
    const actions = el("td", { class: "actions" });
    if (m.voter && m.id !== c.leader && ms !== "unreachable") {
      actions.append(el("button", { class: "transfer", "data-action": "transfer",
        onclick: () => act(`Make member ${m.id} the leader?`, "POST", "/v1/leader/transfer", JSON.stringify({ to: m.id })) }, "make leader"));
    }
    if (!m.voter) {
      actions.append(el("button", { class: "promote", "data-action": "promote",
        onclick: () => act(`Promote learner ${m.id} to voter?`, "POST", `/v1/members/${m.id}/promote`, null) }, "promote"));
    }
    actions.append(el("button", { class: "remove", "data-action": "remove",
      onclick: () => act(`Remove member ${m.id} from the cluster? It stops, and its id can never be used again.`, "DELETE", `/v1/members/${m.id}`, null) }, "remove"));
    const stateCell = el("td", {}, el("span", { class: "badge", title: m.error || "" }, ms));
    const client = m.client_url ? el("a", { href: m.client_url + "/ui/" }, m.client_url) : "–";
    return el("tr", { class: [ms, m.id === c.leader ? "leader" : ""].join(" ").trim(),
      "data-member": m.id, "data-role": m.id === c.leader ? "leader" : role, "data-state": ms },
      el("td", {}, el("span", { class: "swatch" }), m.id),
      el("td", {}, role + (m.id === c.member ? " (this page)" : "")),
      stateCell,
      el("td", { class: "num" }, st ? st.term : "–"),
      el("td", { class: "num" }, st ? st.commit : "–"),
      el("td", { class: "num" }, st ? st.applied : "–"),
      el("td", { class: "num" }, m.lag !== undefined ? m.lag : "–"),
      el("td", {}, m.id === c.member ? "–" : ago(m.last_contact, now)),
      el("td", {}, client),
      el("td", {}, m.peer_url),
      actions);
  });
  tbody.replaceChildren(...rows);
  for (const tr of tbody.querySelectorAll("tr")) {
    tr.querySelector(".swatch").style.background = colorOf(tr.dataset.member);
  }
  const legend = document.getElementById("legend");
  legend.replaceChildren(...c.members.map((m) => {
    const s = el("span", {}, el("span", { class: "swatch" }), `member ${m.id}`);
    s.firstChild.style.background = colorOf(m.id);
    return s;
  }));
  draw(document.getElementById("throughput"), "ops", now);
  draw(document.getElementById("latency"), "p99", now);
}

// draw plots one field of every member's series over the last WINDOW_MS.
function draw(canvas, field, now) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width, h = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(w * dpr)) { canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr); }
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const left = 48, right = 8, top = 8, bottom = 20;
  let maxV = 0;
  for (const s of state.series.values()) for (const p of s) if (p[field] !== null && p.t >= now - WINDOW_MS) maxV = Math.max(maxV, p[field]);
  maxV = niceCeil(maxV || 1);
  const x = (t) => left + ((t - (now - WINDOW_MS)) / WINDOW_MS) * (w - left - right);
  const y = (v) => top + (1 - v / maxV) * (h - top - bottom);
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#6b7385";
  g.strokeStyle = "#eceef3";
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = (maxV * i) / 4, yy = Math.round(y(v)) + 0.5;
    g.beginPath(); g.moveTo(left, yy); g.lineTo(w - right, yy); g.stroke();
    g.textAlign = "right"; g.textBaseline = "middle";
    g.fillText(String(Number(v.toPrecision(3))), left - 6, yy);
  }
  g.textAlign = "center"; g.textBaseline = "top";
  for (let m = 5; m >= 0; m--) {
    const t = now - m * 60000;
    g.fillText(m === 0 ? "now" : `-${m} min`, Math.min(Math.max(x(t), left + 14), w - right - 14), h - bottom + 5);
  }
  g.lineWidth = 1.5;
  for (const [id, s] of state.series) {
    g.strokeStyle = colorOf(id);
    g.beginPath();
    let pen = false;
    for (const p of s) {
      if (p[field] === null) { pen = false; continue; }
      const px = x(p.t), py = y(p[field]);
      if (pen) g.lineTo(px, py); else g.moveTo(px, py);
      pen = true;
    }
    g.stroke();
  }
}

function niceCeil(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function confirmDialog(text) {
  const d = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    d.addEventListener("close", () => resolve(d.returnValue === "yes"), { once: true });
    d.returnValue = "";
    d.showModal();
  });
}

function say(text, isError) {
  const m = document.getElementById("message");
  m.textContent = text;
  m.className = isError ? "error" : "";
}

async function act(question, method, path, body) {
  if (state.busy || !(await confirmDialog(question))) return;
  state.busy = true;
  say(`${method} ${path} …`);
  try {
    const opts = { method, headers: {} };
    if (body !== null) { opts.body = body; opts.headers["Content-Type"] = "application/json"; }
    const r = await fetch(path, opts);
    const text = await r.text();
    let msg = text.trim();
    try { const j = JSON.parse(text); msg = j.message || JSON.stringify(j); } catch (e) { /* not JSON */ }
    say(`${method} ${path}: ${r.status} ${msg}`, !r.ok);
  } catch (e) {
    say(`${method} ${path}: ${e}`, true);
  } finally {
    state.busy = false;
    poll();
  }
}

let timer = null;
async function poll() {
  clearTimeout(timer);
  const ctl = new AbortController();
  const abort = setTimeout(() => ctl.abort(), 3000);
  try {
    const r = await fetch("/v1/cluster", { signal: ctl.signal, cache: "no-store" });
    if (!r.ok) throw new Error(`${r.status} ${(await r.text()).trim()}`);
    const c = await r.json();
    const now = Date.now();
    for (const m of c.members) record(m, now);
    for (const id of [...state.series.keys()]) if (!c.members.some((m) => m.id === id)) state.series.delete(id);
    state.last = c;
    render(c);
    document.body.dataset.loaded = "true";
  } catch (e) {
    const banner = document.getElementById("banner");
    banner.hidden = false;
    banner.textContent = `cannot reach the member that served this page (${location.host}): ${e.message || e}; open another member's /ui/`;
  } finally {
    clearTimeout(abort);
    timer = setTimeout(poll, POLL_MS);
  }
}

poll();
