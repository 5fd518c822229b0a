# ruff: noqa: E501 - the page is embedded HTML/JS, kept as one file so the wheel needs no package data
"""The one HTML page of `ganscale serve`: self-contained (no CDN, no build step).

Every server string is inserted with ``textContent`` (never ``innerHTML``), so a vocabulary
word cannot inject markup. Element ids are part of the tested surface (tests/test_serve.py).
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ganscale</title>
<style>
 body { font: 15px/1.45 system-ui, sans-serif; margin: 0; background: #f6f6f8; color: #222; }
 header { background: #23262e; color: #fff; padding: 10px 20px; font-size: 18px; }
 main { display: flex; gap: 20px; padding: 16px 20px; flex-wrap: wrap; }
 section { background: #fff; border-radius: 8px; padding: 14px 16px; box-shadow: 0 1px 3px #0002; }
 #controls { width: 300px; } #result { flex: 1; min-width: 340px; } #facts { width: 280px; }
 label { display: block; margin: 8px 0 2px; font-weight: 600; font-size: 13px; }
 select, input { font: inherit; padding: 4px 6px; width: 150px; }
 .row { display: flex; align-items: center; gap: 8px; }
 .swatch { width: 20px; height: 20px; border-radius: 50%; border: 1px solid #888; display: inline-block; }
 button { display: block; font: inherit; margin-top: 12px; padding: 6px 16px; border: 0; border-radius: 5px;
          background: #3557d6; color: #fff; cursor: pointer; }
 button:disabled { background: #999; }
 #error { color: #b00020; font-weight: 600; min-height: 1.4em; white-space: pre-wrap; }
 img.pix { image-rendering: pixelated; display: block; margin: 8px 0; border: 1px solid #ddd; }
 #tags { font-size: 13px; color: #444; max-height: 160px; overflow: auto; }
 table { border-collapse: collapse; font-size: 13px; } td, th { padding: 1px 6px; text-align: left; }
 h3 { margin: 10px 0 4px; font-size: 15px; }
 .hidden { display: none; }
</style></head>
<body>
<header>ganscale &middot; <span id="model-name"></span></header>
<main>
<section id="controls">
 <div id="conditions"></div>
 <label for="n">How many images (1-64)</label><input id="n" value="16">
 <label for="seed">Seed (a number, or "random")</label><input id="seed" value="random">
 <div id="truncation-box"><label for="truncation">Truncation psi (0-1; lower = nearer the average face; empty = off)</label>
 <input id="truncation" value=""></div>
 <button id="generate">Generate</button>
 <h3>Interpolate</h3>
 <div id="interp-note">From the condition and seed above to:</div>
 <div id="to-conditions"></div>
 <label for="to-seed">End seed (empty = same image)</label><input id="to-seed" value="">
 <label for="frames">Frames (2-32)</label><input id="frames" value="8">
 <button id="interpolate">Interpolate</button>
</section>
<section id="result">
 <div id="error" role="alert"></div>
 <div id="status"></div>
 <img id="grid" class="pix hidden" alt="generated faces">
 <a id="download" class="hidden" download="ganscale.png">Download PNG</a>
 <div id="tags"></div>
 <img id="strip" class="pix hidden" alt="interpolation strip">
 <div id="strip-tags"></div>
 <a id="gif-download" class="hidden" download="ganscale-interpolation.gif">Download GIF</a>
</section>
<section id="facts"><h3>This model</h3><div id="facts-body"></div></section>
</main>
<script>
const SWATCH = {aqua:"#00d4d4", black:"#111", blonde:"#f3d26b", blue:"#2a5bd7", brown:"#7b4a26",
 gray:"#8a8a8a", green:"#2f9e44", orange:"#f08c00", pink:"#f783ac", purple:"#8e44ad",
 red:"#d63031", white:"#fafafa", yellow:"#f5e03b"};
let INFO = null;
const $ = (id) => document.getElementById(id);
function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls; return e; }
const colours = (values) => values.every((v) => v in SWATCH);
function selects(box, prefix) {
  for (const [attr, values] of Object.entries(INFO.attributes)) {
    const lab = el("label", attr); lab.htmlFor = prefix + attr; box.appendChild(lab);
    const row = el("div", undefined, "row"); const s = el("select"); s.id = prefix + attr;
    s.appendChild(Object.assign(el("option", "any"), {value: "any"}));
    for (const v of values) s.appendChild(Object.assign(el("option", v), {value: v}));
    row.append(s);
    if (colours(values)) {  // a swatch only where the values are colours (hair, eyes); any other attribute: the picker alone
      const sw = el("span", undefined, "swatch"); sw.id = prefix + attr + "-swatch";
      const paint = () => { sw.style.background = SWATCH[s.value] || "repeating-linear-gradient(45deg,#ddd 0 4px,#fff 4px 8px)"; };
      s.addEventListener("change", paint); paint(); row.append(sw);
    }
    box.appendChild(row);
  }
}
function conditions(prefix) { const c = {}; for (const a of Object.keys(INFO.attributes)) c[a] = $(prefix + a).value; return c; }
function num(text, empty) { const t = text.trim(); if (t === "" || t.toLowerCase() === empty) return null;
  return /^-?[0-9]+([.][0-9]+)?$/.test(t) ? Number(t) : t; }
function fmt(x, pct) { if (x === null || x === undefined) return "n/a";
  return pct ? (100 * x).toFixed(1) + "%" : (typeof x === "number" && !Number.isInteger(x) ? x.toPrecision(4) : String(x)); }
function facts(f) {
  const b = $("facts-body"); b.replaceChildren();
  const t = el("table"); const add = (k, v) => { const r = el("tr"); r.append(el("th", k), el("td", v)); t.appendChild(r); };
  add("run", f.run_name || "n/a"); add("step", fmt(f.step)); add("images seen", fmt(f.images_seen));
  add("backend", INFO.backend); add("size", INFO.image_size + " px"); b.appendChild(t);
  const ev = f.eval; if (!ev) { b.appendChild(el("p", "No eval.json yet (run `ganscale eval RUN`).")); return; }
  b.appendChild(el("h3", "Eval (" + fmt(ev.n) + " images)"));
  const e = el("table"); e.id = "eval-table";
  const row = (k, v) => { const r = el("tr"); r.append(el("th", k), el("td", v)); e.appendChild(r); };
  for (const [k, v] of Object.entries(ev.accuracy || {})) row(k + " accuracy", fmt(v, true));
  for (const [k, v] of Object.entries(ev.metrics || {})) row(k, fmt(v) + " (real " + fmt((ev.real_vs_real || {})[k]) + ")");
  b.appendChild(e);
  for (const [attr, per] of Object.entries(ev.per_value_accuracy || {})) {
    const painted = colours(Object.keys(per));
    b.appendChild(el("h3", attr + " accuracy per " + (painted ? "colour" : "value"))); const p = el("table");
    for (const [v, a] of Object.entries(per)) { const r = el("tr"); const c = el("td");
      if (painted) { const sw = el("span", undefined, "swatch"); sw.style.background = SWATCH[v]; c.appendChild(sw); }
      r.append(c, el("td", v), el("td", fmt(a, true))); p.appendChild(r); }
    b.appendChild(p);
  }
}
function show(img, data) { img.onload = () => { const k = Math.max(1, Math.floor(480 / img.naturalWidth));
  img.style.width = (img.naturalWidth * k) + "px"; }; img.src = data.image; img.classList.remove("hidden"); }
async function call(path, body) {
  $("error").textContent = ""; $("status").textContent = "working...";
  for (const b of document.querySelectorAll("button")) b.disabled = true;
  try {
    const r = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    let data; try { data = await r.json(); } catch (e) { data = {error: "server answered " + r.status}; }
    if (!r.ok) { $("error").textContent = "Error: " + (data.error || r.status); return null; }
    return data;
  } catch (e) { $("error").textContent = "Error: " + e; return null; }
  finally { $("status").textContent = ""; for (const b of document.querySelectorAll("button")) b.disabled = false; }
}
async function generate() {
  const body = {n: num($("n").value, ""), seed: num($("seed").value, "random"), truncation: num($("truncation").value, "")};
  if (body.n === null) body.n = 16;
  if (INFO.conditional) body.conditions = conditions("attr-");
  const data = await call("/api/generate", body); if (!data) return;
  show($("grid"), data); $("grid").dataset.seed = data.seed;
  const same = data.tags.every((t) => t === data.tags[0]);
  $("tags").textContent = (same ? data.n + " x " + (data.tags[0] || "faces") : data.tags.map((t, i) => (i + 1) + ": " + t).join("; "))
     + "  (seed " + data.seed + (data.truncation ? ", truncation psi " + data.truncation : "") + ")";
  const a = $("download"); a.href = data.image; a.classList.remove("hidden");
  a.download = "ganscale-" + (same && data.tags[0] ? data.tags[0].replace(/ /g, "-") + "-" : "") + "seed" + data.seed + ".png";
}
async function interpolate() {
  const seed = num($("seed").value, "random"); const to = num($("to-seed").value, "");
  const body = {start: {seed: seed}, end: {seed: to}, frames: num($("frames").value, "") ?? 8,
                truncation: num($("truncation").value, "")};
  if (INFO.conditional) { body.start.conditions = conditions("attr-"); body.end.conditions = conditions("to-"); }
  const data = await call("/api/interpolate", body); if (!data) return;
  show($("strip"), data);
  $("strip-tags").textContent = (data.start.tags || "seed") + " (seed " + data.start.seed + ")  ->  " + (data.end.tags || "seed") + " (seed " + data.end.seed + ")";
  const a = $("gif-download"); a.href = data.gif; a.classList.remove("hidden");
}
async function init() {
  INFO = await (await fetch("/api/info")).json();
  $("model-name").textContent = (INFO.facts.run_name || "generator") + " (" + INFO.backend + ")";
  if (INFO.conditional) { selects($("conditions"), "attr-"); selects($("to-conditions"), "to-"); }
  else { $("interp-note").textContent = "From the seed above to the end seed:"; }
  facts(INFO.facts);
  $("generate").addEventListener("click", generate); $("interpolate").addEventListener("click", interpolate);
  document.body.dataset.ready = "1";
}
init();
</script>
</body></html>
"""
