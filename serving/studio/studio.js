// Lacquer studio: upload a mix to POST /v1/master (multipart/mixed: the JSON report, then the
// master), A/B the original and the master at matched loudness through Web Audio, plot the
// spectra and loudness curves of the report on <canvas>, list the parameters, offer the
// download. No dependencies; everything comes from this server.
"use strict";

const COLORS = { original: "#d9650f", master: "#1f5fbf", grid: "#e4e4ea", axis: "#1d1d1f" };
const ERROR_TITLES = {
  401: "The API token is missing or wrong",
  413: "The file is too large",
  415: "This is not an audio file the server can read",
  429: "The server is busy",
  503: "The server is restarting a stage",
};

const $ = (id) => document.getElementById(id);
const studio = {
  file: null, report: null, ctx: null, buffers: {}, nodes: null, playing: false,
  hearing: "master", levels: { original: 1, master: 1 }, downloadUrl: null,
};
window.studio = studio; // read by the browser tests

// -- API -------------------------------------------------------------------------------------
function authHeaders() {
  const token = $("token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function describeError(response) {
  let body = {};
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  let title = ERROR_TITLES[response.status];
  if (!title) {
    title = body.error === "invalid_parameter" ? "A setting is not valid"
      : response.status === 422 ? "The audio could not be used" : "The request failed";
  }
  const file = body.file ? ` (${body.file})` : "";
  let text = `${title}${file}: ${body.problem || `HTTP ${response.status}`}`;
  if (body.valid && !text.includes("valid:")) text += ` — valid: ${body.valid.join(", ")}`;
  const retry = response.headers.get("Retry-After");
  if (retry) text += ` Try again in ${retry} s.`;
  return text;
}

function fillSelect(select, values, keepFirst = true) {
  if (!keepFirst) select.textContent = "";
  for (const v of values) select.append(new Option(v, v));
}

async function loadPresets() {
  const response = await fetch("v1/presets", { headers: authHeaders() });
  if (!response.ok) { showError(await describeError(response)); return; }
  showError("");
  const p = await response.json();
  for (const id of ["genre", "emotion"]) $(id).length = 1;
  fillSelect($("genre"), p.genres);
  fillSelect($("emotion"), p.emotions);
  fillSelect($("format"), p.formats, false);
  fillSelect($("adapter"), p.adapters, false);
  $("format").value = p.formats.includes("wav24") ? "wav24" : p.formats[0];
  $("adapter").value = p.adapters.includes("default") ? "default" : p.adapters[0];
  $("styles").textContent = "";
  for (const s of p.styles) $("styles").append(new Option(s));
}

// -- multipart/mixed --------------------------------------------------------------------------
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function indexOf(haystack, needle, from) {
  const first = needle[0];
  outer: for (let i = haystack.indexOf(first, from); i !== -1 && i <= haystack.length - needle.length;
    i = haystack.indexOf(first, i + 1)) {
    for (let j = 1; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

/** Parts of a multipart body: [{headers: string, body: Uint8Array}]. */
function parseMultipart(bytes, boundary) {
  const delimiter = encoder.encode(`--${boundary}`);
  const next = encoder.encode(`\r\n--${boundary}`);
  const blank = encoder.encode("\r\n\r\n");
  const parts = [];
  let pos = indexOf(bytes, delimiter, 0);
  while (pos !== -1) {
    let start = pos + delimiter.length;
    if (bytes[start] === 45 && bytes[start + 1] === 45) break; // closing "--"
    start += 2; // CRLF
    const headEnd = indexOf(bytes, blank, start);
    const end = indexOf(bytes, next, headEnd + 4);
    if (headEnd === -1 || end === -1) throw new Error("the server's answer was cut short");
    parts.push({ headers: decoder.decode(bytes.subarray(start, headEnd)),
      body: bytes.subarray(headEnd + 4, end) });
    pos = end + 2;
  }
  return parts;
}

// -- upload ----------------------------------------------------------------------------------
function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function chooseFile(file) {
  studio.file = file || null;
  $("drop-text").textContent = file
    ? `${file.name} (${(file.size / 1e6).toFixed(2)} MB)`
    : "Drop an audio file here (WAV, FLAC, …) or choose one";
  showError("");
}

async function submit(event) {
  event.preventDefault();
  const file = studio.file;
  if (!file) { showError("Choose an audio file first."); return; }
  if (file.size === 0) { showError(`${file.name} is empty: choose an audio file.`); return; }
  const target = Number($("target_lufs").value);
  if ($("target_lufs").value === "" || !Number.isFinite(target)) {
    showError("Target loudness must be a number of LUFS, e.g. -14.");
    return;
  }
  const form = new FormData();
  form.append("file", file, file.name);
  for (const id of ["genre", "style", "emotion", "target_lufs", "format", "adapter"]) {
    const value = $(id).value.trim();
    if (value) form.append(id, value);
  }
  stop();
  showError("");
  $("submit").disabled = true;
  $("status").textContent = `Uploading and mastering ${file.name}…`;
  try {
    const response = await fetch("v1/master", {
      method: "POST", body: form, headers: { ...authHeaders(), Accept: "multipart/mixed" },
    });
    if (!response.ok) {
      showError(await describeError(response));
      $("status").textContent = "";
      return;
    }
    const boundary = (response.headers.get("Content-Type") || "").split("boundary=")[1];
    const parts = parseMultipart(new Uint8Array(await response.arrayBuffer()), boundary);
    const report = JSON.parse(decoder.decode(parts[0].body));
    const type = /Content-Type:\s*([^\r\n]+)/i.exec(parts[1].headers)[1];
    const name = (/filename="([^"]+)"/.exec(parts[1].headers) || [])[1] || "master";
    $("status").textContent = "Decoding for playback…";
    await showResult(file, report, new Blob([parts[1].body], { type }), name);
    $("status").textContent = `Done: ${name}, mastered in ${report.seconds.chain.toFixed(2)} s.`;
  } catch (err) {
    showError(`Something went wrong: ${err.message}`);
    $("status").textContent = "";
  } finally {
    $("submit").disabled = false;
  }
}

async function showResult(file, report, masterBlob, name) {
  studio.report = report;
  studio.ctx = studio.ctx || new AudioContext();
  studio.buffers = {
    original: await studio.ctx.decodeAudioData(await file.arrayBuffer()),
    master: await studio.ctx.decodeAudioData(await masterBlob.arrayBuffer()),
  };
  if (studio.downloadUrl) URL.revokeObjectURL(studio.downloadUrl);
  studio.downloadUrl = URL.createObjectURL(masterBlob);
  $("download").href = studio.downloadUrl;
  $("download").download = name;
  $("download").textContent = `Download the master (${name})`;
  $("results").hidden = false;
  setHearing("master");
  drawPlots(report);
  fillTables(report);
}

// -- A/B -------------------------------------------------------------------------------------
const dbToGain = (db) => 10 ** (db / 20);

/** Playback gains: with matching on, the louder version is turned down to the quieter one's
 * integrated loudness (never up, so nothing clips), so loudness alone cannot win. */
function computeLevels() {
  const before = studio.report.before.integrated_lufs;
  const after = studio.report.after.integrated_lufs;
  if (!$("matched").checked || before == null || after == null) return { original: 1, master: 1 };
  const quieter = Math.min(before, after);
  return { original: dbToGain(quieter - before), master: dbToGain(quieter - after) };
}

function applyLevels() {
  studio.levels = computeLevels();
  const fmt = (g) => `${(20 * Math.log10(g)).toFixed(1)} dB`;
  $("levels").textContent = $("matched").checked
    ? `Matched: original ${fmt(studio.levels.original)}, master ${fmt(studio.levels.master)} `
      + `(both at ${Math.min(studio.report.before.integrated_lufs,
        studio.report.after.integrated_lufs).toFixed(1)} LUFS)`
    : "Not matched: the louder version may sound better just for being louder.";
  if (!studio.nodes) return;
  const now = studio.ctx.currentTime;
  for (const which of ["original", "master"]) {
    const level = which === studio.hearing ? studio.levels[which] : 0;
    studio.nodes[which].gain.setTargetAtTime(level, now, 0.01);
  }
}

function setHearing(which) {
  studio.hearing = which;
  $("ab").setAttribute("aria-pressed", String(which === "master"));
  $("ab").textContent = `Hearing: ${which}`;
  applyLevels();
}

function play() {
  if (studio.playing) { stop(); return; }
  const ctx = studio.ctx;
  ctx.resume();
  const start = ctx.currentTime + 0.05;
  studio.nodes = {};
  studio.sources = [];
  for (const which of ["original", "master"]) {
    const gain = ctx.createGain();
    gain.gain.value = 0;
    gain.connect(ctx.destination);
    const source = ctx.createBufferSource();
    source.buffer = studio.buffers[which];
    source.loop = true;
    source.connect(gain);
    source.start(start);
    studio.nodes[which] = gain;
    studio.sources.push(source);
  }
  studio.playing = true;
  $("play").textContent = "Stop";
  applyLevels();
}

function stop() {
  for (const s of studio.sources || []) s.stop();
  studio.sources = [];
  studio.nodes = null;
  studio.playing = false;
  $("play").textContent = "Play";
}

// -- plots -----------------------------------------------------------------------------------
function niceTicks(lo, hi, count = 6) {
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) ticks.push(+v.toFixed(6));
  return ticks;
}

/** Draw line series on a canvas with labelled axes.
 * opts: {xLabel, yLabel, xLog, xTicks?, series: [{x, y, color, label}], hline?} */
function drawPlot(canvas, opts) {
  // Sharp at any size: the backing store follows the displayed width and the pixel ratio.
  const dpr = window.devicePixelRatio || 1;
  const W = canvas.clientWidth || canvas.width, H = Math.round(W * 0.42);
  canvas.width = Math.round(W * dpr);
  canvas.height = Math.round(H * dpr);
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  const m = { left: 64, right: 16, top: 28, bottom: 48 };
  g.fillStyle = "#fff";
  g.fillRect(0, 0, W, H);
  const xs = opts.series.flatMap((s) => s.x);
  const ys = opts.series.flatMap((s) => s.y).filter((v) => v != null && Number.isFinite(v));
  if (opts.hline != null) ys.push(opts.hline);
  if (!xs.length || !ys.length) return;
  const fx = opts.xLog ? Math.log10 : (v) => v;
  const x0 = fx(Math.min(...xs)), x1 = fx(Math.max(...xs)) + (xs.length === 1 ? 1 : 0);
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  const pad = Math.max(1, (y1 - y0) * 0.08);
  y0 -= pad; y1 += pad;
  const px = (v) => m.left + ((fx(v) - x0) / (x1 - x0)) * (W - m.left - m.right);
  const py = (v) => H - m.bottom - ((v - y0) / (y1 - y0)) * (H - m.top - m.bottom);

  g.font = "12px system-ui, sans-serif";
  g.strokeStyle = COLORS.grid;
  g.fillStyle = COLORS.axis;
  g.lineWidth = 1;
  g.textAlign = "center";
  g.textBaseline = "top";
  const xTicks = opts.xTicks ? opts.xTicks.filter((v) => fx(v) >= x0 && fx(v) <= x1)
    : niceTicks(Math.min(...xs), Math.max(...xs));
  for (const t of xTicks) {
    g.beginPath(); g.moveTo(px(t), m.top); g.lineTo(px(t), H - m.bottom); g.stroke();
    g.fillText(t >= 1000 ? `${t / 1000}k` : String(t), px(t), H - m.bottom + 6);
  }
  g.textAlign = "right";
  g.textBaseline = "middle";
  for (const t of niceTicks(y0, y1)) {
    g.beginPath(); g.moveTo(m.left, py(t)); g.lineTo(W - m.right, py(t)); g.stroke();
    g.fillText(String(t), m.left - 6, py(t));
  }
  g.strokeStyle = COLORS.axis;
  g.strokeRect(m.left, m.top, W - m.left - m.right, H - m.top - m.bottom);
  g.textAlign = "center";
  g.textBaseline = "bottom";
  g.fillText(opts.xLabel, m.left + (W - m.left - m.right) / 2, H - 4);
  g.save();
  g.translate(14, m.top + (H - m.top - m.bottom) / 2);
  g.rotate(-Math.PI / 2);
  g.textBaseline = "middle";
  g.fillText(opts.yLabel, 0, 0);
  g.restore();

  if (opts.hline != null) {
    g.setLineDash([6, 4]);
    g.strokeStyle = COLORS.axis;
    g.beginPath(); g.moveTo(m.left, py(opts.hline)); g.lineTo(W - m.right, py(opts.hline)); g.stroke();
    g.setLineDash([]);
  }
  g.lineWidth = 2.5;
  g.lineJoin = "round";
  for (const s of opts.series) {
    g.strokeStyle = s.color;
    g.beginPath();
    let pen = false;
    s.x.forEach((x, i) => {
      const y = s.y[i];
      if (y == null) { pen = false; return; }
      if (pen) g.lineTo(px(x), py(y)); else g.moveTo(px(x), py(y));
      pen = true;
    });
    g.stroke();
  }
  // legend
  g.textAlign = "left";
  g.textBaseline = "middle";
  let lx = m.left + 8;
  for (const s of opts.series) {
    g.fillStyle = s.color;
    g.fillRect(lx, 10, 18, 4);
    g.fillStyle = COLORS.axis;
    g.fillText(s.label, lx + 24, 12);
    lx += 40 + g.measureText(s.label).width;
  }
}

function drawPlots(report) {
  const s = report.series;
  const hz = s.spectrum_hz;
  drawPlot($("spectrum-plot"), {
    xLabel: "Frequency (Hz)", yLabel: "Level (dB)", xLog: true,
    xTicks: [50, 100, 200, 500, 1000, 2000, 5000, 10000],
    series: [
      { x: hz, y: s.before.spectrum_db, color: COLORS.original, label: "Original" },
      { x: hz, y: s.after.spectrum_db, color: COLORS.master, label: "Master" },
    ],
  });
  drawPlot($("loudness-plot"), {
    xLabel: "Time (s)", yLabel: "Loudness (LUFS)", xLog: false, hline: report.target_lufs,
    series: [
      { x: s.before.loudness.t_s, y: s.before.loudness.lufs, color: COLORS.original,
        label: "Original" },
      { x: s.after.loudness.t_s, y: s.after.loudness.lufs, color: COLORS.master, label: "Master" },
    ],
  });
}

// -- tables ----------------------------------------------------------------------------------
const MEASURES = [
  ["integrated_lufs", "Integrated loudness", "LUFS"],
  ["true_peak_dbtp", "True peak", "dBTP"],
  ["sample_peak_dbfs", "Sample peak", "dBFS"],
  ["lra_lu", "Loudness range", "LU"],
  ["spectral_tilt_db_oct", "Spectral tilt", "dB/octave"],
  ["side_to_mid_db", "Side to mid", "dB"],
  ["correlation", "Correlation", ""],
];

function row(tbody, cells, numeric = []) {
  const tr = tbody.insertRow();
  cells.forEach((c, i) => {
    const td = tr.insertCell();
    td.textContent = c;
    if (numeric.includes(i)) td.className = "num";
  });
}

function fmtValue(v) {
  if (v == null || (Array.isArray(v) && !v.length) || v === "") return "–";
  if (Array.isArray(v)) return v.map(fmtValue).join(", ");
  if (typeof v === "number") return String(Math.round(v * 100) / 100);
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function fillTables(report) {
  const measures = $("measures").tBodies[0];
  measures.textContent = "";
  for (const [key, label, unit] of MEASURES) {
    const suffix = unit ? ` ${unit}` : "";
    row(measures, [label, fmtValue(report.before[key]) + suffix, fmtValue(report.after[key]) + suffix],
      [1, 2]);
  }
  const params = $("parameters").tBodies[0];
  params.textContent = "";
  for (const [key, value] of Object.entries(report.conditioning || {})) {
    row(params, ["conditioning", key, fmtValue(value), ""], [2]);
  }
  for (const [stage, entries] of Object.entries(report.parameters || {})) {
    for (const [name, p] of Object.entries(entries)) {
      if (name === "info") continue;
      if (p && typeof p === "object" && "unit" in p) {
        const value = "value" in p ? fmtValue(p.value)
          : `${fmtValue(p.mean)} (${fmtValue(p.min)} … ${fmtValue(p.max)})`;
        row(params, [stage, name, value, p.unit || ""], [2]);
      } else {
        row(params, [stage, name, fmtValue(p), ""], [2]);
      }
    }
  }
}

// -- wiring ----------------------------------------------------------------------------------
function init() {
  const zone = $("drop-zone");
  $("file").addEventListener("change", () => chooseFile($("file").files[0]));
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("over"));
  }
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer.files.length) chooseFile(e.dataTransfer.files[0]);
  });
  $("upload-form").addEventListener("submit", submit);
  $("play").addEventListener("click", play);
  $("ab").addEventListener("click", () => setHearing(studio.hearing === "master" ? "original" : "master"));
  $("matched").addEventListener("change", applyLevels);
  $("token").addEventListener("change", loadPresets);
  window.addEventListener("resize", () => { if (studio.report) drawPlots(studio.report); });
  loadPresets();
}

init();
