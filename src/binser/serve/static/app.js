// binser web page: upload a file (POST /predict) or stream the microphone (WS /stream)
// and draw the emotion timeline. No external assets. Text from the server (labels, view
// names, messages) is only ever set as textContent: nothing is parsed as HTML.
"use strict";
const COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];
const token = new URLSearchParams(location.search).get("token");
const q = token ? "token=" + encodeURIComponent(token) : "";
const $ = (id) => document.getElementById(id);
let labels = [];
let windows = [];   // {start_s, end_s, scores, parts: {name: scores|null}}

function withToken(url) { return q ? url + (url.includes("?") ? "&" : "?") + q : url; }
function status(text) { $("status").textContent = text; }

async function loadModel() {
  const r = await fetch(withToken("model"));
  if (!r.ok) { $("model").textContent = "model: " + r.status + " " + (await r.text()); return; }
  const m = await r.json();
  labels = m.labels;
  $("model").textContent = `${m.family} model · views ${m.views.join(", ")} · labels ${m.labels.join(", ")}` +
    (m.synthetic ? " · SYNTHETIC" : "");
  legend();
}

function el(tag, text) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  return node;
}

function legend() {
  $("legend").replaceChildren(...labels.map((l, i) => {
    const item = el("span"), swatch = el("i");
    swatch.style.background = COLORS[i % COLORS.length];
    item.append(swatch, document.createTextNode(String(l)));
    return item;
  }));
}

// y axis: the fused score (probability) of each label, 0-100 %; x axis: seconds
function plot(canvas, series, duration) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 24, left = 42;
  const step = h >= 150 ? 0.25 : 0.5;   // fewer labelled lines on the small per-view charts
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#ddd"; ctx.fillStyle = "#666"; ctx.font = "11px sans-serif";
  ctx.textAlign = "right"; ctx.textBaseline = "middle";
  for (let p = 0; p <= 1.0001; p += step) {
    const y = h - pad - p * (h - 2 * pad);
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(w - 4, y); ctx.stroke();
    ctx.fillText(Math.round(100 * p) + " %", left - 6, y);
  }
  ctx.textAlign = "left"; ctx.textBaseline = "alphabetic";
  const span = Math.max(duration, 1);
  for (let t = 0; t <= span; t += Math.max(1, Math.round(span / 10))) {
    ctx.fillText(t + " s", left + (t / span) * (w - left - 4), h - 6);
  }
  labels.forEach((label, i) => {
    ctx.strokeStyle = COLORS[i % COLORS.length]; ctx.lineWidth = 2; ctx.beginPath();
    let moved = false;
    series.forEach((s) => {
      if (!s.scores || !Object.keys(s.scores).length) { moved = false; return; }
      const x = left + ((s.start_s + s.end_s) / 2 / span) * (w - left - 4);
      const y = h - pad - s.scores[label] * (h - 2 * pad);
      if (moved) ctx.lineTo(x, y); else { ctx.moveTo(x, y); moved = true; }
    });
    ctx.stroke();
  });
}

function draw(final) {
  const duration = windows.length ? windows[windows.length - 1].end_s : 1;
  const fused = windows.map((w) => ({ start_s: w.start_s, end_s: w.end_s, scores: w.scores }));
  plot($("timeline"), fused, duration);
  $("timeline").dataset.windows = String(windows.length);
  const names = windows.length ? Object.keys(windows[windows.length - 1].parts) : [];
  const box = $("parts");
  if (box.dataset.names !== names.join(",")) {
    box.replaceChildren(...names.flatMap((n) => {
      const canvas = el("canvas");
      canvas.width = 900; canvas.height = 90; canvas.dataset.part = n;
      return [el("h3", n), canvas];
    }));
    box.dataset.names = names.join(",");
  }
  box.querySelectorAll("canvas").forEach((c) => {
    const n = c.dataset.part;
    plot(c, windows.map((w) => ({ start_s: w.start_s, end_s: w.end_s, scores: w.parts[n] })), duration);
  });
}

function showLabel(label, scores, text) {
  $("label").textContent = label ? label : (text || "");
  $("label").dataset.label = label || "";
  const best = Object.entries(scores || {}).sort((a, b) => b[1] - a[1]).slice(0, 4);
  $("scores").replaceChildren(...best.map(([k, v]) => el("span", `${k} ${(100 * v).toFixed(0)} %`)));
}

function channelText(channels) {
  return Object.entries(channels).map(([n, c]) => `${n}: ${c.label || "(silent)"}`).join(" · ");
}

function notes(body) {   // the server's warnings about the audio (mono, band-limited, clipped)
  return (body.warnings || []).length ? ` · warning: ${body.warnings.join("; ")}` : "";
}

async function upload(file) {
  windows = []; draw(); showLabel(null, null, ""); status(`uploading ${file.name} …`);
  const form = new FormData(); form.append("file", file);
  const per = $("perchannel").checked;
  const r = await fetch(withToken(`predict?timeline=true&per_channel=${per}`), { method: "POST", body: form });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) { status(`error ${r.status}: ${body.error || JSON.stringify(body.detail || body)}`); return; }
  if (per) {
    windows = body.windows.map((w) => ({ start_s: w.start_s, end_s: w.end_s, scores: null,
      parts: Object.fromEntries(Object.entries(w.channels).map(([n, c]) => [n, c.silent ? null : c.scores])) }));
    showLabel(null, null, channelText(body.summary.channels));
  } else {
    windows = (body.timeline || []).map((w) => ({ ...w, parts: {} }));
    showLabel(body.label, body.scores);
    const views = Object.keys(body.view_scores || {});
    const mean = body.overall ? ` (the label scores the whole file; the windows' mean says ` +
      `${body.overall.label || "silent"})` : "";
    if (views.length) status(`${file.name}: ${windows.length} windows${mean} · view scores: ` +
      views.map((v) => `${v} ${Object.entries(body.view_scores[v]).sort((a, b) => b[1] - a[1])[0][0]}`).join(", ") +
      (body.silent_views.length ? ` · silent: ${body.silent_views.join(", ")}` : "") + notes(body));
  }
  draw(true);
  if (per) status(`${file.name}: ${windows.length} windows, per channel` + notes(body));
}

// ---------------------------------------------------------------- microphone stream
let rec = null;
async function toggleMic() {
  if (rec) { stopMic(); return; }
  let media;
  try { media = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 2, echoCancellation: false, noiseSuppression: false, autoGainControl: false } }); }
  catch (e) { status("no microphone: " + e.message); return; }
  const ctx = new AudioContext();
  const src = ctx.createMediaStreamSource(media);
  const channels = Math.min(2, src.channelCount || 1);
  const node = ctx.createScriptProcessor(4096, channels, channels);
  const url = new URL(withToken("stream"), location.href); url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(url); ws.binaryType = "arraybuffer";
  const per = $("perchannel").checked && channels === 2;
  windows = []; draw(); showLabel(null, null, "listening …");
  ws.onopen = () => ws.send(JSON.stringify({ type: "start", sample_rate: Math.round(ctx.sampleRate), channels, format: "f32le", per_channel: per }));
  ws.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    if (m.type === "window") {
      if (m.channels) windows.push({ start_s: m.start_s, end_s: m.end_s, scores: null,
        parts: Object.fromEntries(Object.entries(m.channels).map(([n, c]) => [n, c.silent ? null : c.scores])) });
      else windows.push({ ...m, scores: m.silent ? null : m.scores, parts: m.views || {} });
      draw();
      if (m.channels) showLabel(null, null, channelText(m.channels)); else showLabel(m.label, m.scores, "(silence)");
      const norm = m.speaker_norm ||
        (m.channels ? Object.values(m.channels).map((c) => c.speaker_norm).find(Boolean) : null);
      status(`window ${m.index} · ${m.latency_ms.toFixed(0)} ms` + (norm ? ` · speaker norm: ${norm}` : ""));
    } else if (m.type === "end") {
      const s = m.summary;
      if (s.channels) showLabel(null, null, channelText(s.channels)); else showLabel(s.label, s.scores);
      status(`stream ended: ${s.windows} windows, ${s.duration_s.toFixed(1)} s; overall label: ${s.rule}`);
    } else if (m.type === "error") { status(`stream error ${m.code}: ${m.message}`); }
  };
  ws.onclose = (ev) => { if (ev.code !== 1000 && ev.code !== 1005) status(`stream closed (${ev.code}) ${ev.reason}`); };
  node.onaudioprocess = (ev) => {
    if (ws.readyState !== WebSocket.OPEN) return;
    const n = ev.inputBuffer.length, data = new Float32Array(n * channels);
    for (let c = 0; c < channels; c++) { const x = ev.inputBuffer.getChannelData(c); for (let i = 0; i < n; i++) data[i * channels + c] = x[i]; }
    ws.send(data.buffer);
  };
  src.connect(node); node.connect(ctx.destination);
  rec = { media, ctx, node, ws };
  $("mic").textContent = "Stop"; $("mic").classList.add("on");
}

function stopMic() {
  const { media, ctx, node, ws } = rec; rec = null;
  node.disconnect(); media.getTracks().forEach((t) => t.stop()); ctx.close();
  if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "stop" }));
  $("mic").textContent = "Record from microphone"; $("mic").classList.remove("on");
}

// ---------------------------------------------------------------- wiring
$("file").addEventListener("change", (e) => { if (e.target.files[0]) upload(e.target.files[0]); });
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (e) => { if (e.dataTransfer.files[0]) upload(e.dataTransfer.files[0]); });
$("mic").addEventListener("click", toggleMic);
loadModel();
