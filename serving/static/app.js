// ZoomDet's page: upload an image, choose policy and budget, draw what POST /v1/detect answered.
// Everything is served by the service itself (no CDN), so it works offline.
"use strict";
const $ = (id) => document.getElementById(id);
const STAGES = ["decode", "coarse", "gain", "policy", "fine", "merge", "total"];
let file = null;

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function loadPolicies() {
  try {
    const r = await fetch("/readyz");
    const body = await r.json();
    if (!r.ok) throw new Error(body.detail || r.statusText);
    for (const name of body.policies) {
      const opt = new Option(name, name, false, name === body.default_policy);
      $("policy").add(opt);
    }
    status("Ready: choose an image.");
  } catch (e) {
    status(`The service is not ready: ${e.message}`, true);
  }
}

function choose(f) {
  if (!f) return;
  file = f;
  $("run").disabled = false;
  status(`${f.name} (${Math.round(f.size / 1024)} kB): press Detect.`);
  const url = URL.createObjectURL(f);
  const img = new Image();
  img.onload = () => { draw(img, null); URL.revokeObjectURL(url); };
  img.src = url;
  $("canvas").dataset.src = url;
}

function draw(img, answer) {
  const c = $("canvas");
  const scale = Math.min(1, 1200 / img.naturalWidth);
  c.width = Math.round(img.naturalWidth * scale);
  c.height = Math.round(img.naturalHeight * scale);
  const g = c.getContext("2d");
  g.drawImage(img, 0, 0, c.width, c.height);
  if (!answer) return;
  g.lineWidth = 2;
  for (const d of answer.detections) {
    const [x0, y0, x1, y1] = d.box_xyxy.map((v) => v * scale);
    g.strokeStyle = d.stage === "fine" ? "#2ec4b6" : "#ff9f1c";
    g.strokeRect(x0, y0, x1 - x0, y1 - y0);
  }
  g.setLineDash([8, 5]);
  g.strokeStyle = "#e71d36";
  g.font = "bold 16px system-ui";
  for (const r of answer.regions) {
    const [x0, y0, x1, y1] = r.box_xyxy.map((v) => v * scale);
    g.strokeRect(x0, y0, x1 - x0, y1 - y0);
    g.fillStyle = "#e71d36";
    g.fillText(String(r.step + 1), x0 + 4, y0 + 18);
  }
  g.setLineDash([2, 4]);
  g.strokeStyle = "#ffd60a";
  for (const f of answer.frames || []) {  // a scene run as frames (the engine's zoom.frame_size)
    const [x0, y0, x1, y1] = f.map((v) => v * scale);
    g.strokeRect(x0, y0, x1 - x0, y1 - y0);
  }
  g.setLineDash([]);
}

function table(id, rows) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren(...rows.map(([k, v]) => {
    const tr = document.createElement("tr");
    const a = document.createElement("td");
    const b = document.createElement("td");
    a.textContent = k;
    if (v instanceof Node) b.append(v); else b.textContent = v;
    tr.append(a, b);
    return tr;
  }));
}

function show(answer, img) {
  draw(img, answer);
  const c = answer.cost;
  const fine = answer.detections.filter((d) => d.stage === "fine").length;
  table("cost", [
    ["policy", answer.policy],
    ["detections", `${answer.detections.length} (${fine} from zoom regions)`],
    ["zoom regions", String(answer.regions.length)],
    ["pixels_ratio", `${c.pixels_ratio.toFixed(3)} of full resolution`],
    ["budget", answer.budget_exceeded ? `${answer.max_pixels_ratio} (exceeded: this policy ignores budgets)`
                                      : `${answer.max_pixels_ratio}`],
    ["deadline", answer.max_latency_ms == null ? "none"
      : `${answer.max_latency_ms} ms: ${answer.regions_dropped} zoom windows left out` +
        (answer.deadline_exceeded ? ", answered late" : "")],
    ["detector calls", String(c.detector_calls)],
    ["image", `${answer.image.width} × ${answer.image.height}` +
      ((answer.frames || []).length ? `, run as ${answer.frames.length} frames` : "")],
  ]);
  const total = Math.max(answer.timing_ms.total, 1e-6);
  table("timing", STAGES.map((s) => {
    const span = document.createElement("span");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.round(120 * answer.timing_ms[s] / total)}px`;
    span.append(bar, ` ${answer.timing_ms[s].toFixed(1)}`);
    return [s, span];
  }));
  $("result").dataset.detections = String(answer.detections.length);
  $("result").dataset.regions = String(answer.regions.length);
  status(`Done: ${answer.detections.length} detections at ${(100 * c.pixels_ratio).toFixed(1)}% of the pixels ` +
         `in ${answer.timing_ms.total.toFixed(0)} ms.`);
}

async function run() {
  if (!file) return;
  $("run").disabled = true;
  status("Detecting…");
  const form = new FormData();
  form.append("image", file);
  form.append("policy", $("policy").value);
  form.append("max_pixels_ratio", $("budget").value);
  form.append("score_threshold", $("score").value);
  if ($("deadline").value) form.append("max_latency_ms", $("deadline").value);
  try {
    const r = await fetch("/v1/detect", { method: "POST", body: form });
    const body = await r.json();
    if (!r.ok) throw new Error(`${r.status} ${body.title || ""}: ${body.detail || r.statusText}`);
    const img = new Image();
    img.onload = () => show(body, img);
    img.src = URL.createObjectURL(file);
  } catch (e) {
    status(`Refused: ${e.message}`, true);
  } finally {
    $("run").disabled = false;
  }
}

$("file").addEventListener("change", (e) => choose(e.target.files[0]));
$("run").addEventListener("click", run);
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); choose(e.dataTransfer.files[0]); });
loadPolicies();
