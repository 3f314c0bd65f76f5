// mmstream view: draws the tiles from the Server-Sent Events of /events (see docs/view.md).
// Plain JavaScript, no library: the page must work offline, served by the process itself.
"use strict";

const view = {
  sources: new Map(),   // source id -> {doc, timeline, audio, el, thumbSeq}
  ids: [],              // sorted source ids (the server pages in the same order)
  page: 0,
  perPage: 16,
  historyNs: 180e9,
  es: null,
  received: {thumbs: 0, tiles: 0, snapshots: 0},
  selected: null,
  connected: false,
  feedDown: {},         // feed tasks of the server that failed and wait to restart (summary.feed_down)
  lastStats: 0,         // when the last summary came (the server sends one a second)
};
window.mmView = view;  // for tests and the curious

const $ = (sel, root = document) => root.querySelector(sel);

function labelColour(label) {
  if (label === null || label === undefined) return "#39404a";
  let h = 0;
  for (const c of String(label)) h = (h * 31 + c.codePointAt(0)) >>> 0;
  return `hsl(${h % 360} 55% 48%)`;
}

function connect() {
  if (view.es) view.es.close();
  const first = view.page * view.perPage;
  const es = new EventSource(`/events?first=${first}&count=${view.perPage}`);
  view.es = es;
  es.onopen = () => setConn(true);
  es.onerror = () => setConn(false);  // EventSource reconnects by itself; the server resyncs it
  es.addEventListener("snapshot", (e) => onSnapshot(JSON.parse(e.data)));
  es.addEventListener("tile", (e) => { view.received.tiles++; onTile(JSON.parse(e.data)); });
  es.addEventListener("thumb", (e) => onThumb(JSON.parse(e.data)));
  es.addEventListener("stats", (e) => showSummary(JSON.parse(e.data)));
}

function setConn(on) {
  view.connected = on;
  if (on) view.lastStats = Date.now();
  showConn();
}

// "live" only while the stream is open, the server's feed runs and its summaries keep coming;
// "stale" when a part of the server's feed failed (it restarts it) or the summaries stopped
function showConn() {
  const el = $("#conn");
  const down = Object.keys(view.feedDown || {});
  const quiet = Date.now() - view.lastStats > 5000;
  const state = !view.connected ? "reconnecting" : (down.length || quiet) ? "stale" : "live";
  el.textContent = state;
  el.title = down.length ? down.map((k) => `${k}: ${view.feedDown[k]}`).join("\n") : "";
  el.className = "conn " + (state === "live" ? "on" : "off");
}
setInterval(showConn, 1000);

function showSummary(s) {
  view.lastStats = Date.now();
  view.feedDown = s.feed_down || {};
  showConn();
  $("#summary").textContent = `${s.sources} sources · ${s.results} results · ${s.thumbnails} thumbnails · ` +
    `${s.firing} alerts firing` + (s.bad_records ? ` · ${s.bad_records} bad records` : "");
}

function entry(id) {
  let src = view.sources.get(id);
  if (!src) {
    src = {doc: null, timeline: [], audio: [], el: null, thumb: null, thumbSeq: 0};
    view.sources.set(id, src);
    view.ids.push(id);
    view.ids.sort();
    layout();
  }
  return src;
}

function onSnapshot(snap) {
  view.received.snapshots++;
  view.historyNs = snap.history_s * 1e9;
  for (const doc of snap.sources) {
    const src = entry(doc.source);
    src.doc = doc;
    src.timeline = doc.timeline.map(toWindow);
    src.audio = doc.audio;
    draw(src);
  }
  showSummary(snap.summary);
}

function toWindow(t) {
  return {id: t[0], start: t[1], end: t[2], label: t[3], complete: t[4], error: t[5]};
}

function onTile(doc) {
  const src = entry(doc.source);
  src.doc = doc;
  if (doc.added) addWindow(src, toWindow(doc.added));
  const p = doc.audio_point;
  if (p && (!src.audio.length || src.audio[src.audio.length - 1][0] < p[0])) {
    src.audio.push(p);
    if (src.audio.length > 60) src.audio.shift();
  }
  draw(src);
}

function addWindow(src, w) {
  const tl = src.timeline;
  let i = tl.length;
  while (i > 0 && tl[i - 1].start > w.start) i--;
  if (i > 0 && tl[i - 1].start === w.start) tl[i - 1] = w; else tl.splice(i, 0, w);
  const horizon = tl[tl.length - 1].end - view.historyNs;
  while (tl.length && tl[0].end <= horizon) tl.shift();
}

function onThumb(t) {
  view.received.thumbs++;
  const src = entry(t.source);
  if (t.seq <= src.thumbSeq) return;
  src.thumbSeq = t.seq;
  src.thumb = "data:image/jpeg;base64," + t.jpeg;
  if (src.el) $(".thumb", src.el).src = src.thumb;
}

// ---------------------------------------------------------------- layout and pages

function pages() { return Math.max(1, Math.ceil(view.ids.length / view.perPage)); }

function layout() {
  const grid = $("#grid");
  view.page = Math.min(view.page, pages() - 1);
  const shown = view.ids.slice(view.page * view.perPage, (view.page + 1) * view.perPage);
  const keep = new Set(shown);
  for (const [id, src] of view.sources) {
    if (!keep.has(id) && src.el) { src.el.remove(); src.el = null; }
  }
  for (const id of shown) {
    const src = view.sources.get(id);
    if (!src.el) {
      src.el = $("#tile-template").content.firstElementChild.cloneNode(true);
      src.el.dataset.source = id;
      $(".source", src.el).textContent = id;
      if (src.thumb) $(".thumb", src.el).src = src.thumb;
      draw(src);
    }
    grid.appendChild(src.el);  // appending in order keeps the page sorted
  }
  const empty = $("#empty");
  if (empty) empty.hidden = view.ids.length > 0;
  $("#page").textContent = `${view.page + 1} / ${pages()}`;
}

function goTo(page) {
  const next = Math.max(0, Math.min(page, pages() - 1));
  if (next === view.page) return;
  view.page = next;
  layout();
  connect();  // thumbnails come only for the page on screen
}

// ---------------------------------------------------------------- one tile

function draw(src) {
  const el = src.el, d = src.doc;
  if (!el || !d) return;
  const status = $(".status", el);
  status.textContent = d.status;
  status.className = "status " + d.status;
  el.classList.toggle("firing", d.alerts.length > 0);
  $(".alerts", el).replaceChildren(...d.alerts.map((a) => {
    const div = document.createElement("div");
    div.className = "alert";
    div.innerHTML = "&#9888; <b></b> <span></span>";
    div.querySelector("b").textContent = a.rule;
    div.querySelector("span").textContent = a.message || "";
    div.title = a.id;
    return div;
  }));
  const label = $(".label", el);
  label.textContent = d.error ? "error" : (d.label ?? "–");
  label.style.color = d.error ? "var(--bad)" : labelColour(d.label);
  label.title = d.error || "";
  $(".bars", el).replaceChildren(...d.scores.map(([name, value]) => bar(name, value)));
  const mods = d.by_modality ? Object.entries(d.by_modality) : [];
  $(".modalities", el).replaceChildren(...mods.map(([m, top]) => {
    const div = document.createElement("div");
    div.textContent = `${m}: `;
    const b = document.createElement("b");
    b.textContent = top.map(([n, v]) => `${n} ${v.toFixed(2)}`).join(", ");
    div.appendChild(b);
    return div;
  }));
  drawAudio($(".audio-strip", el), src.audio);
  const tr = $(".transcript", el);
  tr.classList.toggle("partial", !!(d.transcript && !d.transcript.final));
  $(".tag", tr).textContent = d.transcript ? (d.transcript.final ? "final" : "partial") : "";
  $(".text", tr).textContent = d.transcript ? d.transcript.text : "";
  tr.title = d.transcript ? d.transcript.text : "";
  $(".latency", el).textContent = d.latency_ms === null ? "latency –" : `latency ${Math.round(d.latency_ms)} ms`;
  setCount($(".late", el), "late", d.late);
  setCount($(".dlq", el), "dead letters", d.dead_letters);
  $(".window", el).textContent = d.window ? new Date(d.window[0] / 1e6).toISOString().slice(11, 19) : "";
  drawTimeline($(".timeline", el), src.timeline);
}

function setCount(el, what, n) {
  el.textContent = `${what} ${n}`;
  el.classList.toggle("bad", n > 0);
}

function bar(name, value) {
  const row = document.createElement("div");
  row.className = "bar";
  row.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="value"></span>';
  row.querySelector(".name").textContent = name;
  row.querySelector(".name").title = name;
  const fill = row.querySelector(".fill");
  fill.style.width = `${Math.max(0, Math.min(1, value)) * 100}%`;
  fill.style.background = labelColour(name);
  fill.style.display = "block";
  row.querySelector(".value").textContent = value.toFixed(2);
  return row;
}

function drawAudio(canvas, points) {
  const w = canvas.clientWidth || 300, h = canvas.clientHeight || 28;
  if (canvas.width !== w) canvas.width = w;
  if (canvas.height !== h) canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, w, h);
  const step = w / 60;
  points.forEach(([, db, speech], i) => {
    const x = w - (points.length - i) * step;
    if (db === null) {
      ctx.fillStyle = "#2c323c";
      ctx.fillRect(x, h - 2, step - 1, 2);
      return;
    }
    const level = Math.max(0.05, Math.min(1, (db + 80) / 80));
    const p = speech ?? 0;
    ctx.fillStyle = `rgb(${Math.round(110 - 60 * p)}, ${Math.round(120 + 100 * p)}, ${Math.round(140 - 60 * p)})`;
    ctx.fillRect(x, h - level * h, step - 1, level * h);
  });
}

function drawTimeline(box, windows) {
  if (!windows.length) { box.replaceChildren(); return; }
  // the last history_s seconds; while less is known, at least 30 s, so the first windows are not slivers
  const end = windows[windows.length - 1].end;
  const span = Math.min(view.historyNs, Math.max(30e9, end - windows[0].start));
  const start = end - span;
  box.replaceChildren(...windows.map((w) => {
    const s = document.createElement("span");
    s.className = "tl-win" + (w.complete ? "" : " partial") + (w.error ? " error" : "") +
      (w.id === view.selected ? " selected" : "");
    s.style.left = `${((w.start - start) / span) * 100}%`;
    s.style.width = `${((w.end - w.start) / span) * 100}%`;
    s.style.background = labelColour(w.label);
    s.dataset.id = w.id;
    s.title = `${new Date(w.start / 1e6).toISOString().slice(11, 19)} ${w.label ?? "no label"}`;
    s.addEventListener("click", () => inspect(w.id));
    return s;
  }));
}

// ---------------------------------------------------------------- inspect one window

async function inspect(id) {
  view.selected = id;
  const panel = $("#inspect");
  panel.hidden = false;
  document.body.classList.add("inspecting");
  $("#inspect-title").textContent = id;
  $("#inspect-json").textContent = "loading…";
  $("#inspect-offsets").replaceChildren();
  const r = await fetch(`/api/result/${encodeURIComponent(id)}`);
  if (!r.ok) {
    $("#inspect-json").textContent = await r.text();
    return;
  }
  const found = await r.json();
  const rows = [["result", `${found.record.topic} / ${found.record.partition} / ${found.record.offset}`],
    ...(found.result.offsets || []).map((o) => [o.topic, `partition ${o.partition}, offsets ${o.first}–${o.last}`])];
  $("#inspect-offsets").replaceChildren(...rows.map(([a, b]) => {
    const tr = document.createElement("tr");
    tr.innerHTML = "<td></td><td></td>";
    tr.children[0].textContent = a;
    tr.children[1].textContent = b;
    return tr;
  }));
  $("#inspect-json").textContent = JSON.stringify(found.result, null, 2);
  panel.dataset.id = id;
  for (const src of view.sources.values()) if (src.el) drawTimeline($(".timeline", src.el), src.timeline);
}

$("#inspect-close").addEventListener("click", () => {
  $("#inspect").hidden = true;
  document.body.classList.remove("inspecting");
  view.selected = null;
});
$("#prev").addEventListener("click", () => goTo(view.page - 1));
$("#next").addEventListener("click", () => goTo(view.page + 1));
$("#per-page").addEventListener("change", (e) => {
  view.perPage = Number(e.target.value);
  view.page = 0;
  layout();
  connect();
});
connect();
