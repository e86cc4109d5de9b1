"""``zoomdet evaluate``: every policy through the one zoom engine, one report.

For each image (decoded once) every requested policy runs through
:class:`~zoomdet.zoom.ZoomEngine`; sequential policies run once per budget
of the ``budgets`` sweep. AP comes from pycocotools' COCOeval
(:func:`~zoomdet.eval.coco_eval.coco_metrics`), cost and time from the
engine. Ratios relative to ``fine`` in the same run are the paper's
Aperc / Pperc / Tperc.

Outputs in ``out``: ``report.json``, ``report.md`` (a table, and per-class AP
when the data has several classes), ``pareto.png`` (AP vs pixels_ratio),
``config.yaml``, and ``detections/<policy>.json``: each run's detections as a
COCO results file (``image_id``, ``category_id``, ``bbox`` xywh, ``score``),
so any COCO tool can re-score or inspect them. Progress is checkpointed in
``partial.json`` every few images, per run (policy × budget): an interrupted
evaluation continues where it stopped, and adding a policy or a budget to a
finished one runs only the new runs (an agent retrained in place, a changed
config, other images, detector or R-net start over). A run added later was
timed then, not beside the others: each run records the evaluations that
timed it (``timed_by``, their start times), and a row whose run was not timed
by the same evaluations as ``fine``'s gets no ``rel_time`` (– in the table;
its ``time_per_image_s`` stays). For ``rel_time`` measured together, use an
empty folder. All files are written atomically.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm import tqdm

from zoomdet.config import save_config, to_dict
from zoomdet.data.coco import CocoDataset
from zoomdet.detector.detector import Detector, default_checkpoint, file_digest
from zoomdet.eval.coco_eval import coco_metrics
from zoomdet.eval.results import relative_to_fine
from zoomdet.zoom.engine import STAGES, GroundTruth, PlanPolicy, ZoomConfig, ZoomEngine
from zoomdet.zoom.policies import PolicyConfig, make_policy

__all__ = ["EvalConfig", "evaluate", "write_atomic"]


@dataclass
class EvalConfig:
    """``configs/eval/*.yaml``: what ``zoomdet evaluate`` runs."""

    checkpoint: Optional[str] = None
    """Detector checkpoint; ``null`` = the embedded synthetic detector."""
    device: str = "cpu"
    batch_size: int = 4
    """Crops per detector call."""
    proposal_density: float = 0.0
    """R-CNN detectors: RPN proposals per megapixel of model input, so small crops cost less
    (see :class:`~zoomdet.detector.Detector`); 0 = the model's fixed 1000."""
    proposal_min: int = 100
    """With ``proposal_density``: the fewest RPN proposals a call keeps."""
    detector_settings: dict = field(default_factory=dict)
    """Inference settings to run the checkpoint's model with instead of its own (``ModelConfig`` fields no weight
    depends on, as ``zoomdet detector eval --set`` takes them), e.g. ``{roi_sampling_ratio: 1, box_head_rank: 64}``;
    empty = as trained. They change the detector id, so caches and R-nets follow them."""
    image_dtype: str = "uint8"
    """How images are held between decode and crop: ``uint8`` (8-bit images stay 8-bit, each crop is resized in
    uint8, as the service does: cheaper) or ``float32`` (the whole image converted first, crops resized in
    float: the detector's training path). AP is the same within noise (``benchmarks/latency.py``)."""
    images: int = 0
    """Evaluate N images of the dataset, a sample drawn with ``seed`` (0 = all)."""
    image_root: Optional[str] = None
    """Folder the COCO ``file_name`` entries are relative to (default: ``<json dir>/images`` or the json's dir,
    whichever holds the files)."""
    seed: int = 0
    """Seed of the image sample and of the per-image random generators (image i uses seed + image id)."""
    budgets: list[float] = field(default_factory=list)
    """``max_pixels_ratio`` sweep for sequential policies (empty = ``zoom.max_pixels_ratio`` only)."""
    max_latency_ms: Optional[float] = None
    """A deadline per image and run, ms from the start of its decode, as the service's ``max_latency_ms``: zoom
    policies leave out the windows that would end past it (``ZoomEngine.run(deadline=)``), so the report is the
    AP an answer within that time has on this machine. Each run then runs its own passes (none shared between
    policies and budgets), and its AP depends on the machine's speed and load. ``None``: no deadline."""
    zoom: ZoomConfig = field(default_factory=ZoomConfig)
    policies: PolicyConfig = field(default_factory=PolicyConfig)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.proposal_min < 1 or self.images < 0:
            raise ValueError(f"batch_size and proposal_min must be >= 1 and images >= 0, got {self.batch_size}, "
                             f"{self.proposal_min} and {self.images}")
        if not all(isinstance(b, (int, float)) and b > 0 for b in self.budgets):
            raise ValueError(f"budgets are pixel ratios > 0, got {self.budgets!r}")
        if self.max_latency_ms is not None and not self.max_latency_ms > 0:
            raise ValueError(f"max_latency_ms must be > 0 (or null: none), got {self.max_latency_ms}")
        if self.image_dtype not in ("uint8", "float32"):
            raise ValueError(f"image_dtype must be uint8 or float32, got {self.image_dtype!r}")
        from zoomdet.detector.models import check_inference_settings

        check_inference_settings(self.detector_settings, where="detector_settings: ")

    @property
    def keep_uint8(self) -> bool:
        """Whether 8-bit images are read as ``uint8`` (``image_dtype: uint8``)."""
        return self.image_dtype == "uint8"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _run_keys(policies: dict, budgets: Sequence[float], cfg: EvalConfig) -> list[tuple[str, str, Optional[float]]]:
    keys = []
    for name, pol in policies.items():
        if isinstance(pol, PlanPolicy):
            keys.append((name, name, None))
        else:
            for b in budgets or [cfg.zoom.max_pixels_ratio]:
                keys.append((f"{name}@{b:g}", name, float(b)))
    return keys


def load_detector(cfg: EvalConfig) -> Detector:
    """The detector ``cfg`` evaluates: its checkpoint (the embedded one when null) on its device, with its batch
    size, per-call proposal rule and inference settings."""
    return Detector.from_checkpoint(cfg.checkpoint or str(default_checkpoint()), device=cfg.device,
                                    batch_size=cfg.batch_size, proposal_density=cfg.proposal_density,
                                    proposal_min=cfg.proposal_min, settings=cfg.detector_settings or None)


def evaluate(cfg: EvalConfig, data: str, policy_names: Sequence[str], out: str | os.PathLike,
             progress: bool = True, detector: Optional[Detector] = None) -> dict:
    """Run the policies over ``data`` and write the report to ``out``; returns ``report.json``'s content."""
    out = Path(out)
    if not policy_names:
        raise ValueError("give at least one --policy")
    ds = CocoDataset(data, image_root=cfg.image_root)
    if detector is None:
        detector = load_detector(cfg)
    unknown = set(detector.categories) - set(ds.categories)
    if unknown:
        raise ValueError(f"detector classes {sorted(unknown)} are not categories of {data}; "
                         f"the checkpoint was trained on another label set")
    engine = ZoomEngine(detector, cfg.zoom)
    policies, sources = {}, {}
    for name in dict.fromkeys(policy_names):
        pol = make_policy(name, cfg.policies, cfg.zoom, detector.detector_id)
        if pol.name in policies:  # two agents from run folders of the same name would share one row
            raise ValueError(f"two policies are both named {pol.name!r} ({name} and an earlier --policy); agents are "
                             "named after their run folder: copy or rename one of the folders")
        policies[pol.name], sources[pol.name] = pol, name
    keys = _run_keys(policies, cfg.budgets, cfg)
    ids = ds.subset(cfg.images, cfg.seed)
    out.mkdir(parents=True, exist_ok=True)  # only once every input checked: a refused run leaves nothing
    save_config(cfg, out / "config.yaml")

    # what every run shares (config but the budget list, images, detector id = weights and settings as built,
    # its proposal rule, R-net):
    # a change restarts everything; each run (policy x budget) then resumes on its own, so adding a policy or a
    # budget reruns only the new runs
    shared = {k: v for k, v in to_dict(cfg).items() if k != "budgets"}
    signature = hashlib.sha256(json.dumps(
        [shared, str(Path(data).resolve()), ids, detector.detector_id, _proposal_rule(detector),
         file_digest(cfg.policies.rnet) if cfg.policies.rnet and Path(cfg.policies.rnet).is_file() else None],
        sort_keys=True, default=str).encode()).hexdigest()[:16]
    partial_path = out / "partial.json"
    state = {"signature": signature, "runs": {}}
    if partial_path.is_file():
        old = json.loads(partial_path.read_text())
        if old.get("signature") == signature:
            state = old
    for key, name, _ in keys:
        src = sources[name]  # an agent is its checkpoint file: retrained in place, its runs start over
        ident = file_digest(src) if Path(src).is_file() else src
        if state["runs"].get(key, {}).get("ident") != ident:
            state["runs"][key] = {"ident": ident, "done": [], "results": [], "cost": {}, "timing": {}}
    done = {key: set(state["runs"][key]["done"]) for key, _, _ in keys}
    complete = {i for i in ids if all(i in d for d in done.values())}
    if any(done.values()):
        fresh = [key for key, _, _ in keys if not done[key]]
        print(f"resuming: {len(complete)}/{len(ids)} images already evaluated"
              + (f" (new runs: {', '.join(fresh)})" if fresh and len(fresh) < len(keys) else ""))

    todo = [i for i in ids if i not in complete]
    session = _dt.datetime.now().isoformat(timespec="milliseconds")  # this evaluation, in each run it times
    timed = cfg.max_latency_ms is not None  # a deadline needs each run's own passes and clock
    limit_s = cfg.max_latency_ms / 1000 if timed else None
    for k, iid in enumerate(tqdm(todo, desc="evaluate", unit="img", disable=not progress)):
        t = time.perf_counter()
        image = ds.load_image(iid, keep_uint8=cfg.keep_uint8)
        decode = time.perf_counter() - t
        boxes, labels, crowd = ds.targets(iid)
        gt = GroundTruth(boxes, labels, crowd)
        memo: dict = {}  # oracle look-ahead, shared by every policy and budget on this image
        passes: dict = {}  # a detector pass (coarse, or the same fine windows) runs once per image, charged in full
        for key, name, budget in keys:
            if iid in done[key]:
                continue
            res = engine.run(image, policies[name], ground_truth=gt, seed=cfg.seed + iid,
                             max_pixels_ratio=budget, decode_seconds=decode, lookahead_memo=memo,
                             pass_memo=None if timed else passes,
                             deadline=time.perf_counter() + limit_s - decode if timed else None)
            run = state["runs"][key]
            if session not in run.setdefault("timed_by", []):
                run["timed_by"].append(session)
            run["results"] += res.detections.to_coco(iid)
            run["done"].append(iid)
            for f, v in res.cost.as_dict().items():
                run["cost"][f] = run["cost"].get(f, 0) + v
            run["cost"]["windows"] = run["cost"].get("windows", 0) + len(res.regions)
            run["cost"]["windows_dropped"] = run["cost"].get("windows_dropped", 0) + res.dropped
            if timed:  # answers that still came past the deadline (the coarse pass alone took longer, or an estimate was short)
                over = res.timing["total"] - limit_s
                run["cost"]["late"] = run["cost"].get("late", 0) + (over > 0)
                run["cost"]["late_s"] = run["cost"].get("late_s", 0.0) + max(over, 0.0)
            run["cost"]["zoomed_images"] = run["cost"].get("zoomed_images", 0) + any(r.candidate >= 0 for r in res.regions)
            for s, v in res.timing.items():
                run["timing"][s] = run["timing"].get(s, 0.0) + v
        if (k + 1) % 5 == 0 or k + 1 == len(todo):
            write_atomic(partial_path, json.dumps(state))

    report = _report(cfg, data, ds, ids, keys, state, detector)
    (out / "detections").mkdir(exist_ok=True)
    for row in report["policies"]:
        write_atomic(out / row["detections_file"], json.dumps(state["runs"][row["policy"]]["results"]))
    write_atomic(out / "report.json", json.dumps(report, indent=2))
    write_atomic(out / "report.md", report_markdown(report))
    plot_pareto(report, out / "pareto.png")
    return report


def _proposal_rule(detector) -> list:
    """The detector's per-call proposal rule: what, beside its :attr:`detector_id`, decides its outputs."""
    return [getattr(detector, "proposal_density", None), getattr(detector, "proposal_min", None)]


def _report(cfg, data, ds, ids, keys, state, detector) -> dict:
    rows = []
    for key, name, budget in keys:
        run = state["runs"][key]
        n = max(1, len(run["done"]))
        m = coco_metrics(ds.coco, run["results"], ids, per_class=True)
        row = {"policy": key, "name": name, "budget": budget, **m,
               "detections_file": f"detections/{results_file_name(key)}",
               "pixels_ratio": run["cost"].get("pixels_ratio", 0.0) / n,
               "pixels_source_per_image": run["cost"].get("pixels_source", 0) / n,
               "model_input_pixels_per_image": run["cost"].get("model_input_pixels", 0) / n,
               "detector_calls_per_image": run["cost"].get("detector_calls", 0) / n,
               "windows_per_image": run["cost"].get("windows", 0) / n,
               "windows_dropped_per_image": run["cost"].get("windows_dropped", 0) / n,
               "late_share": run["cost"]["late"] / n if "late" in run["cost"] else None,
               "late_ms_mean": 1000 * run["cost"]["late_s"] / run["cost"]["late"] if run["cost"].get("late") else None,
               "zoomed_share": run["cost"].get("zoomed_images", 0) / n,
               "time_per_image_s": run["timing"].get("total", 0.0) / n,
               "timing_ms": {s: 1000 * run["timing"].get(s, 0.0) / n for s in (*STAGES, "total")},
               "timed_by": run.get("timed_by")}  # None: a run of a partial.json written before the field
        rows.append(row)
    fine = next((r for r in rows if r["name"] == "fine"), None)
    relative_to_fine(rows, fine)
    for r in rows:  # a time is compared with fine's only where the same evaluations timed both
        if fine is not None and sorted(r["timed_by"] or []) != sorted(fine["timed_by"] or []):
            r["rel_time"] = None
    return {
        "data": str(data), "images": len(ids), "image_ids": list(ids), "checkpoint": detector.checkpoint_id,
        "date": _dt.date.today().isoformat(),
        "hardware": hardware_line(detector.device),
        "ap_note": "COCOeval AP@[.5:.95] over up to 1000 detections per image; small < 32² px, tiny < 16² px",
        "config": to_dict(cfg), "policies": rows,
    }


def hardware_line(device) -> str:
    """Where a run's numbers come from: machine, CPU count, the CPU kernels torch chose (``AVX2``, ``AVX512``:
    they round floating point differently, so a detector's scores, and the windows a policy picks on near ties,
    can differ between machines), torch's version and threads, and the device."""
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus "
            f"({torch.backends.cpu.get_cpu_capability()} kernels), torch {torch.__version__} "
            f"threads {torch.get_num_threads()}, device {device}")


def results_file_name(key: str) -> str:
    """File name of a run's COCO results: the run key with anything but ``[A-Za-z0-9@._-]`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9@._-]", "_", key).strip("_.") + ".json"


def _fmt(v, pct=False) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def report_markdown(report: dict) -> str:
    lines = [f"# ZoomDet evaluation: {report['data']} ({report['images']} images)", "",
             f"checkpoint `{report['checkpoint']}`, {report['date']}, {report['hardware']}. {report['ap_note']}.", "",
             "| policy | AP | AP50 | AP_small | AP_tiny | AR@100 | pixels_ratio | calls/img | time/img (s) | rel AP | rel pixels | rel time |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["policies"]:
        lines.append(f"| {r['policy']} | {_fmt(r['ap'])} | {_fmt(r['ap50'])} | {_fmt(r['ap_small'])} | {_fmt(r['ap_tiny'])} | "
                     f"{_fmt(r['ar100'])} | {r['pixels_ratio']:.3f} | {r['detector_calls_per_image']:.1f} | "
                     f"{r['time_per_image_s']:.2f} | {_fmt(r['rel_ap'], True)} | {_fmt(r['rel_pixels'], True)} | {_fmt(r['rel_time'], True)} |")
    if any(r["rel_time"] is None and r.get("timed_by") for r in report["policies"]):
        lines += ["", "rel time –: the run was not timed by the same evaluations as `fine` (it was added to, or "
                  "resumed in, another evaluation of this folder); its time/img is its own."]
    classes = list(report["policies"][0].get("per_class", {})) if report["policies"] else []
    if len(classes) > 1:
        lines += ["", "Per-class AP@[.5:.95] (– where the class has no ground truth in these images):", "",
                  "| policy | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
        for r in report["policies"]:
            vals = [r["per_class"].get(c) for c in classes]
            lines.append(f"| {r['policy']} | " + " | ".join("–" if v is None or v != v else f"{v:.3f}" for v in vals) + " |")
    limit = report.get("config", {}).get("max_latency_ms")
    if limit is not None:
        zoom = [r for r in report["policies"] if r["budget"] is not None]
        lines += ["", f"Deadline: {limit:g} ms per image (`max_latency_ms`); zoom windows left out per image: "
                  + ", ".join(f"{r['policy']} {r.get('windows_dropped_per_image', 0):.2f}" for r in zoom)
                  + "; answers past the deadline (by how much, on average): "
                  + ", ".join(f"{r['policy']} {100 * (r.get('late_share') or 0):.0f}%"
                              + (f" ({r['late_ms_mean']:.0f} ms)" if r.get("late_ms_mean") else "")
                              for r in report["policies"]) + "."]
    lines += ["", "Detections per run: " + ", ".join(f"`{r['detections_file']}`" for r in report["policies"]) + "."]
    return "\n".join(lines) + "\n"


def pareto_figure(report: dict):
    """AP and AP_small vs pixels_ratio: a point per plan policy, a curve per swept policy; returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    by_name: dict[str, list[dict]] = {}
    for r in report["policies"]:
        by_name.setdefault(r["name"], []).append(r)
    # the smallest size bucket with ground truth (a set without small objects plots AP_medium)
    finite = lambda k: any(r.get(k) is not None and r[k] == r[k] for r in report["policies"])  # noqa: E731
    second = next((k for k in ("ap_small", "ap_medium", "ap_large") if finite(k)), "ap_small")
    for ax, metric in zip(axes, ("ap", second)):
        for name, rows in by_name.items():
            rows = sorted(rows, key=lambda r: r["pixels_ratio"])
            xs, ys = [r["pixels_ratio"] for r in rows], [r[metric] for r in rows]
            style = dict(marker="s", linestyle="none", markersize=8) if len(rows) == 1 else dict(marker="o")
            ax.plot(xs, ys, label=name, **style)
        ax.set_xlabel("pixels_ratio (detector input pixels / full-resolution pixels)")
        ax.set_ylabel({"ap": "AP@[.5:.95]", "ap_small": "AP small (< 32² px)", "ap_medium": "AP medium (32²–96² px)",
                       "ap_large": "AP large (≥ 96² px)"}[metric])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    data = Path(report["data"])
    fig.suptitle(f"{data.parent.name}/{data.name}: {report['images']} images, fine = 1.0")
    fig.tight_layout()
    return fig


def plot_pareto(report: dict, path: Path) -> None:
    """Write :func:`pareto_figure` to ``path`` atomically (headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = pareto_figure(report)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
