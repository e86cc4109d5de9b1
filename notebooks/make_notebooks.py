"""Writes the two notebooks of this folder (without outputs) from the cells below: edit here, then run
``python notebooks/make_notebooks.py``. The test suite executes the notebooks with nbclient."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

PATHS = '''import os
from pathlib import Path

# The repository root, whether Jupyter starts here or in notebooks/.
REPO = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
'''

REPLAY = [
    new_markdown_cell("# Replay one ZoomDet episode\n\n"
                      "What a policy did on one image, step by step: the coarse pass, each zoom window "
                      "(dashed grey as proposed, red after refinement), the detections each step added, the "
                      "cumulative pixels and the AP change. The input is an episode file written by "
                      "`zoomdet replay` or the trace saved by `zoomdet query --trace` (format `zoomdet.episode/1`).\n\n"
                      "Edit the path in the next cell to open another episode."),
    new_code_cell(PATHS + '''
# An episode file; default: the first one the quickstart's replay step wrote.
EPISODE = os.environ.get("ZOOMDET_EPISODE") or next(
    iter(sorted((REPO / "runs" / "quickstart" / "replay").glob("episode_*.json"))), None)
print("episode:", EPISODE)'''),
    new_code_cell('''%matplotlib inline
import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from zoomdet.eval.coco_eval import episode_metrics
from zoomdet.viz import load_image_array, plot_result
from zoomdet.zoom.episode import load_episode, merged_after

if EPISODE is None:
    raise FileNotFoundError("no episode found: run `make demo` (or zoomdet replay ... --out runs/quickstart/replay) first, "
                            "or set EPISODE above")
doc = load_episode(EPISODE)
img = doc["image"]
image = img["path"] if img.get("path") and Path(img["path"]).is_file() else None
print(f"policy {doc['policy']}, image {img.get('file_name')} ({img['width']}x{img['height']}), "
      f"{len(doc['steps'])} zoom steps, pixels_ratio {doc['cost']['pixels_ratio']:.3f}, "
      f"{doc['timing_ms']['total']:.0f} ms")'''),
    new_code_cell('''metrics = episode_metrics(doc) if "ground_truth" in doc else None
rows = ["| step | window (xyxy px) | predicted gain | true gain | reward | pixels | +det | -det | AP | AP_small |",
        "|---|---|---|---|---|---|---|---|---|---|"]
fmt = lambda v: "–" if v is None else f"{v:+.2f}"
if metrics:
    rows.append(f"| coarse | – | – | – | – | {metrics[0]['pixels_ratio']:.3f} | {len(doc['coarse'])} | – | "
                f"{metrics[0]['ap']:.3f} | {metrics[0]['ap_small']:.3f} |")
for k, s in enumerate(doc["steps"]):
    m = metrics[k + 1] if metrics else {"ap": float("nan"), "ap_small": float("nan")}
    rows.append(f"| {k + 1} | {[round(v) for v in s['window_xyxy']]} | {fmt(s['predicted_gain'])} | {fmt(s['true_gain'])} | "
                f"{fmt(s['reward'])} | {s['pixels_ratio']:.3f} | {len(s['added'])} | {len(s['removed'])} | "
                f"{m['ap']:.3f} | {m['ap_small']:.3f} |")
display(Markdown("\\n".join(rows)))'''),
    new_code_cell('''if metrics:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([m["pixels_ratio"] for m in metrics], [m["ap"] for m in metrics], marker="o", label="AP")
    ax.plot([m["pixels_ratio"] for m in metrics], [m["ap_small"] for m in metrics], marker="s", label="AP small")
    for m in metrics:
        ax.annotate(str(m["step"]), (m["pixels_ratio"], m["ap"]), textcoords="offset points", xytext=(3, 4), fontsize=8)
    ax.set_xlabel("pixels_ratio so far"); ax.set_ylabel("AP on this image"); ax.grid(alpha=0.3); ax.legend()
    plt.show()'''),
    new_markdown_cell("## The coarse pass and the AG map\n\nThe policy's accuracy-gain map before any zoom "
                      "(R-net, entropy or oracle state; red: zooming is predicted to gain, blue: to lose), over the "
                      "coarse detections."),
    new_code_cell('''array = load_image_array(image) if image else None
if array is None:
    import numpy as np
    array = np.full((img["height"], img["width"], 3), 96, dtype=np.uint8)  # the image file is not at hand
ax = plot_result(array, doc["coarse"], gain_map=doc.get("gain_map"),
                 title="coarse pass" + (" + AG map" if doc.get("gain_map") else " (this policy has no AG map)"))
plt.show()'''),
    new_markdown_cell("## Step by step\n\nWith ipywidgets installed (`pip install 'zoomdet[notebooks]'`) a slider "
                      "walks through the steps; without it every step is drawn in a grid."),
    new_code_cell('''def show(step: int, ax=None):
    """Step 0: the coarse pass; step k: after the k-th zoom window."""
    k = step - 1
    windows = [s["window_xyxy"] for s in doc["steps"][: k + 1]]
    proposed = [doc["steps"][k]["proposed_xyxy"]] if k >= 0 else None
    title = "coarse pass" if k < 0 else f"step {step}: pixels {doc['steps'][k]['pixels_ratio']:.2f}"
    return plot_result(array, merged_after(doc, k), windows, ax=ax, title=title, proposed=proposed)

try:
    import ipywidgets as widgets

    widgets.interact(lambda step: (show(step), plt.show()), step=widgets.IntSlider(0, 0, len(doc["steps"])))
except ImportError:
    n = len(doc["steps"]) + 1
    cols = min(3, n)
    rows_ = -(-n // cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(5 * cols, 5 * rows_ * img["height"] / img["width"]), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < n:
            show(i, ax=ax)
        else:
            ax.set_axis_off()
    plt.tight_layout(); plt.show()'''),
    new_markdown_cell("## Final result\n\nBlue: coarse-pass detections kept; orange: detections of the zoomed windows."),
    new_code_cell('''ax = plot_result(array, doc["final"], [s["window_xyxy"] for s in doc["steps"]],
                 title=f"{len(doc['final'])} detections, {len(doc['steps'])} zoom windows")
plt.show()'''),
]

COMPARE = [
    new_markdown_cell("# Compare policies\n\n"
                      "AP against pixels processed for every policy of one or more `zoomdet evaluate` reports, the "
                      "per-size AP table, and the images where a zoom policy and the full-resolution pass disagree "
                      "most. Edit the paths in the next cell to compare other runs."),
    new_code_cell(PATHS + '''
# report.json files of `zoomdet evaluate`; default: the quickstart's evaluation.
REPORTS = [Path(p) for p in os.environ.get("ZOOMDET_REPORTS", "").split(os.pathsep) if p] or \\
    [REPO / "runs" / "quickstart" / "eval" / "report.json"]
# The policy to compare with `fine` image by image (default: the first agent or greedy policy found).
POLICY = os.environ.get("ZOOMDET_POLICY")
print("reports:", [str(p) for p in REPORTS])'''),
    new_code_cell('''%matplotlib inline
import json

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from zoomdet.viz import plot_reports

missing = [p for p in REPORTS if not p.is_file()]
if missing:
    raise FileNotFoundError(f"{missing}: run `make demo` (or zoomdet evaluate ... --out DIR) first, or edit REPORTS")
reports = [json.loads(p.read_text()) for p in REPORTS]
fig = plot_reports(reports)
plt.show()'''),
    new_code_cell('''pct = lambda v: "–" if v is None else f"{100 * v:.1f}%"
rows = ["| report | policy | AP | AP_small | AP_tiny | AP_medium | AP_large | pixels_ratio | s/img | rel AP | rel pixels | rel time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
for path, rep in zip(REPORTS, reports):
    for r in rep["policies"]:
        rows.append(f"| {path.parent.name} | {r['policy']} | {r['ap']:.3f} | {r['ap_small']:.3f} | {r['ap_tiny']:.3f} | "
                    f"{r['ap_medium']:.3f} | {r['ap_large']:.3f} | {r['pixels_ratio']:.3f} | {r['time_per_image_s']:.2f} | "
                    f"{pct(r['rel_ap'])} | {pct(r['rel_pixels'])} | {pct(r['rel_time'])} |")
display(Markdown("\\n".join(rows)))'''),
    new_markdown_cell("## Where a zoom policy and the full-resolution pass disagree\n\n"
                      "Per-image AP from each run's COCO results file in the report folder (`detections/`; "
                      "COCOeval on one image at a time); the images with the largest gap, drawn side by side."),
    new_code_cell('''from zoomdet.data.coco import CocoDataset
from zoomdet.eval.coco_eval import coco_metrics
from zoomdet.viz import plot_result

path, rep = REPORTS[0], reports[0]
runs = {r["policy"]: json.loads((path.parent / r["detections_file"]).read_text()) for r in rep["policies"]}
names = [r["policy"] for r in rep["policies"]]
other = POLICY or next((n for n in names if n.startswith(("dqn", "ppo", "agent"))), None) or \\
    next((n for n in names if n.startswith("greedy")), names[0])
data = Path(rep["data"]) if Path(rep["data"]).is_absolute() else REPO / rep["data"]  # relative to where it ran
ds = CocoDataset(data)
gap = []
for iid in rep["image_ids"]:
    ap = {n: coco_metrics(ds.coco, [d for d in runs[n] if d["image_id"] == iid], [iid])["ap"]
          for n in ("fine", other)}
    gap.append((ap[other] - ap["fine"], iid, ap))
gap.sort()
display(Markdown("\\n".join([f"| image | AP fine | AP {other} | difference |", "|---|---|---|---|"] +
                           [f"| {iid} | {ap['fine']:.3f} | {ap[other]:.3f} | {d:+.3f} |" for d, iid, ap in gap])))'''),
    new_code_cell('''def as_dets(results):
    return [{"box_xyxy": [d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]],
             "score": d["score"], "stage": "fine"} for d in results if d["score"] >= 0.3]

# the image where the zoom policy loses most against fine, and the one where it gains most
for d, iid, ap in {g[1]: g for g in (gap[:1] + gap[-1:])}.values():
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    for ax, n in zip(axes, ("fine", other)):
        plot_result(ds.load_image(iid), as_dets(d_ for d_ in runs[n] if d_["image_id"] == iid),
                    ax=ax, title=f"image {iid}, {n}: AP {ap[n]:.3f} (detections with score >= 0.3)")
    plt.tight_layout(); plt.show()'''),
]


def write(cells, name):
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                                             "language_info": {"name": "python"}})
    nbformat.write(nb, HERE / name)


if __name__ == "__main__":
    write(REPLAY, "replay_episode.ipynb")
    write(COMPARE, "compare_policies.ipynb")
    print("wrote", HERE / "replay_episode.ipynb", HERE / "compare_policies.ipynb")
