"use strict";
// The live view: frames arrive on one WebSocket as (header length, JSON header, image,
// mask PNG); the results are drawn over the image in a canvas. Read-only.
const PALETTE = [[255,56,56],[255,157,151],[255,112,31],[255,178,29],[207,210,49],[72,249,10],[146,204,23],
  [61,219,134],[26,147,52],[0,212,187],[44,153,168],[0,194,255],[52,69,147],[100,115,255],[0,24,236],
  [132,56,255],[82,0,133],[203,56,255]];
const TRAIL = 30, EVENTS = 50;
// Untracked boxes below this score are not drawn (tracked ones always are): ?min_score=0.5
const MIN_SCORE = Number(new URLSearchParams(location.search).get("min_score") ?? 0.3);
const cameras = new Map();   // camera id -> {tile, canvas, stats, models, last, trails, busy, pending}
let regions = {};            // camera id -> {zones, lines}
let largeCamera = null;

function colour(id, alpha) { const c = PALETTE[Math.abs(id) % PALETTE.length]; return `rgba(${c[0]},${c[1]},${c[2]},${alpha})`; }

function camera(id) {
  let cam = cameras.get(id);
  if (cam) return cam;
  const tile = document.createElement("div");
  tile.className = "tile"; tile.dataset.camera = id;
  const name = document.createElement("div"); name.className = "name"; name.textContent = id;
  const canvas = document.createElement("canvas"); canvas.width = 640; canvas.height = 360;
  const stats = document.createElement("div"); stats.className = "stats"; stats.textContent = "waiting for frames";
  const models = document.createElement("div"); models.className = "models";
  tile.append(name, canvas, stats, models);
  tile.addEventListener("click", () => openLarge(id));
  document.getElementById("grid").append(tile);
  cam = {tile, canvas, stats, models, last: null, trails: new Map(), busy: false, pending: null};
  cameras.set(id, cam);
  return cam;
}

function scale(points, normalized, w, h) { return points.map(([x, y]) => normalized ? [x * w, y * h] : [x, y]); }

function draw(canvas, cam, id) {
  const frame = cam.last;
  if (!frame) return;
  const {bitmap, mask, result} = frame;
  const w = bitmap.width, h = bitmap.height;
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  const g = canvas.getContext("2d");
  g.drawImage(bitmap, 0, 0);
  if (mask) g.drawImage(mask, 0, 0, w, h);
  const lw = Math.max(1, Math.round(w / 320));
  const reg = regions[id] || {zones: [], lines: []};
  g.lineWidth = lw; g.font = `${10 + 2 * lw}px sans-serif`;
  for (const z of reg.zones) {
    const pts = scale(z.points, z.normalized, w, h);
    g.beginPath(); pts.forEach(([x, y], i) => i ? g.lineTo(x, y) : g.moveTo(x, y)); g.closePath();
    g.fillStyle = "rgba(255,255,0,0.10)"; g.fill(); g.strokeStyle = "rgba(255,255,0,0.8)"; g.stroke();
    g.fillStyle = "rgba(255,255,0,0.9)"; g.fillText(z.name, pts[0][0] + 4, pts[0][1] + 14);
  }
  for (const l of reg.lines) {
    const [[x1, y1], [x2, y2]] = scale(l.points, l.normalized, w, h);
    g.strokeStyle = "rgba(255,0,255,0.9)"; g.setLineDash([6, 4]);
    g.beginPath(); g.moveTo(x1, y1); g.lineTo(x2, y2); g.stroke(); g.setLineDash([]);
    g.fillStyle = "rgba(255,0,255,0.9)"; g.fillText(l.name, x1 + 4, y1 + 14);
  }
  const det = result.tasks.detection;
  for (const [track, trail] of cam.trails) {
    if (trail.length < 2) continue;
    g.strokeStyle = colour(track, 0.7); g.beginPath();
    trail.forEach(([x, y], i) => i ? g.lineTo(x, y) : g.moveTo(x, y)); g.stroke();
  }
  if (det) {
    for (const d of det.detections) {
      if (d.track_id == null && d.score < MIN_SCORE) continue;
      const [x1, y1, x2, y2] = d.box;
      const key = d.track_id ?? d.class_id;
      g.strokeStyle = colour(key, 1); g.strokeRect(x1, y1, x2 - x1, y2 - y1);
      const text = `${d.track_id != null ? "#" + d.track_id + " " : ""}${d.label} ${d.score.toFixed(2)}`;
      const tw = g.measureText(text).width + 6, th = 12 + 2 * lw;
      g.fillStyle = colour(key, 0.85); g.fillRect(x1, Math.max(0, y1 - th), tw, th);
      g.fillStyle = "#000"; g.fillText(text, x1 + 3, Math.max(th - 3, y1 - 3));
    }
  }
  const cls = result.tasks.classification;
  const seg = result.tasks.segmentation;
  const caption = [];
  if (cls && cls.top_k && cls.top_k.length) caption.push(`${cls.top_k[0].label} ${cls.top_k[0].score.toFixed(2)}`);
  if (seg && seg.classes) caption.push(seg.classes.slice(0, 3).map(c => `${c.label} ${(100 * c.pixel_fraction).toFixed(0)}%`).join(", "));
  if (caption.length) {
    g.fillStyle = "rgba(0,0,0,0.6)"; g.fillRect(0, h - 18 - 2 * lw, w, 18 + 2 * lw);
    g.fillStyle = "#fff"; g.fillText(caption.join("  |  "), 4, h - 5);
  }
}

function updateTrails(cam, result) {
  const det = result.tasks.detection;
  const seen = new Set();
  if (det) for (const d of det.detections) {
    if (d.track_id == null) continue;
    const [x1, y1, x2, y2] = d.box;
    const trail = cam.trails.get(d.track_id) || [];
    trail.push([(x1 + x2) / 2, y2]);
    if (trail.length > TRAIL) trail.shift();
    cam.trails.set(d.track_id, trail);
    seen.add(d.track_id);
  }
  for (const [track, trail] of cam.trails) {
    if (!seen.has(track)) { trail.shift(); if (!trail.length) cam.trails.delete(track); }
  }
}

async function show(id, cam, message) {
  // One decode at a time per camera; a frame that arrives meanwhile replaces the waiting one.
  if (cam.busy) { cam.pending = message; return; }
  cam.busy = true;
  try {
    let next = message;
    while (next) {
      const {header, image, mask} = next;
      const bitmap = await createImageBitmap(new Blob([image], {type: header.mime}));
      const maskBitmap = mask ? await createImageBitmap(new Blob([mask], {type: "image/png"})) : null;
      if (cam.last) { cam.last.bitmap.close(); if (cam.last.mask) cam.last.mask.close(); }
      cam.last = {bitmap, mask: maskBitmap, result: header.result};
      updateTrails(cam, header.result);
      draw(cam.canvas, cam, id);
      if (largeCamera === id) draw(document.getElementById("large-canvas"), cam, id);
      next = cam.pending; cam.pending = null;
    }
  } finally { cam.busy = false; }
}

function onFrame(buffer) {
  const view = new DataView(buffer);
  const length = view.getUint32(0);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, length)));
  const start = 4 + length;
  const image = new Uint8Array(buffer, start, header.image_bytes);
  const mask = header.mask_bytes ? new Uint8Array(buffer, start + header.image_bytes, header.mask_bytes) : null;
  show(header.camera_id, camera(header.camera_id), {header, image, mask}).catch(err => console.warn(err));
}

function onEvent(event) {
  const li = document.createElement("li");
  const type = document.createElement("span"); type.className = "type"; type.textContent = event.type;
  const where = event.line ? ` line ${event.line} ${event.direction || ""}` : event.zone ? ` zone ${event.zone}` : "";
  const what = event.track_id != null ? ` #${event.track_id} ${event.label || ""}` : "";
  const dwell = event.dwell_s != null ? ` ${event.dwell_s.toFixed(1)} s` : "";
  const when = new Date(event.capture_ts_ms || Date.now()).toLocaleTimeString();
  li.append(`${when} ${event.camera_id} `, type, `${what}${where}${dwell}`);
  const list = document.getElementById("events");
  list.prepend(li);
  while (list.children.length > EVENTS) list.lastChild.remove();
}

function fmt(v, unit) { return v == null ? "–" : `${Math.round(v)}${unit}`; }

async function pollState() {
  try {
    const response = await fetch("api/state", {cache: "no-store"});
    if (!response.ok) throw new Error(`state: HTTP ${response.status}`);
    const state = await response.json();
    regions = {};
    for (const [id, s] of Object.entries(state.cameras)) {
      regions[id] = {zones: s.zones, lines: s.lines};
      const cam = camera(id);
      cam.stats.textContent = `${s.fps.toFixed(1)} fps · latency p50 ${fmt(s.latency_p50_ms, " ms")} p99 ${fmt(s.latency_p99_ms, " ms")} · without result ${s.unmatched}`;
      const accuracy = Object.entries(s.accuracy || {}).map(([t, a]) => `${t} ${a.metric === "map50" ? "mAP@.5" : a.metric} ${a.value.toFixed(2)} (${a.frames} frames, ${a.domains.join("/")})`);
      cam.models.textContent = [...Object.entries(s.models).map(([t, m]) => `${t}: ${m}`), ...accuracy].join(" · ");
    }
    const status = document.getElementById("status");
    status.textContent = state.error ? `reader error: ${state.error}` : `${Object.keys(state.cameras).length} cameras · ${state.viewers} viewers`;
    status.className = state.error ? "error" : "dim";
  } catch (err) { document.getElementById("status").textContent = `state unavailable (${err.message})`; }
}

function connect() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${location.pathname.replace(/[^/]*$/, "")}ws`);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (msg) => {
    if (typeof msg.data === "string") { const doc = JSON.parse(msg.data); if (doc.type === "event") onEvent(doc.event); }
    else onFrame(msg.data);
  };
  ws.onclose = () => { document.getElementById("status").textContent = "disconnected; reconnecting…"; setTimeout(connect, 2000); };
}

function openLarge(id) {
  largeCamera = id;
  document.getElementById("large-name").textContent = id;
  document.getElementById("large").hidden = false;
  const cam = cameras.get(id);
  if (cam) draw(document.getElementById("large-canvas"), cam, id);
}

document.getElementById("large-close").addEventListener("click", (e) => { e.stopPropagation(); largeCamera = null; document.getElementById("large").hidden = true; });
document.addEventListener("keydown", (e) => { if (e.key === "Escape") { largeCamera = null; document.getElementById("large").hidden = true; } });
pollState(); setInterval(pollState, 1000);
connect();
