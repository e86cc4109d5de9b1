"""The episode format: one JSON document per image that says what a policy did, step by step.

``zoomdet replay`` writes it, the service returns it under ``trace`` when asked
(``return_trace``), and the notebooks and :mod:`zoomdet.viz` read it. All
boxes are ``[x0, y0, x1, y1]`` in full-resolution image pixels.

Format ``zoomdet.episode/1``::

    {
      "format": "zoomdet.episode/1",
      "policy": "dqn:ZoomDet-v0_1/best_model",
      "image": {"id": 3, "file_name": "images/000003.jpg", "path": "/abs/path.jpg" | null,
                "width": 2048, "height": 1536},
      "config": {"coarse_scale": 0.5, "fine_scale": 1.0, "window_scale": 1.0, "lam": 5.0 | null, "max_pixels_ratio": 0.6},
      "categories": {"1": "person", ...},
      "coarse": [detection, ...],              # the coarse pass, before any zoom
      "gain_map": {"rows": 48, "cols": 64, "values": [[...], ...]} | null,
                                               # the policy's AG map before any zoom, summed over a
                                               # rows x cols grid over the image (gain units per cell)
      "steps": [{
          "step": 0, "region_id": 0, "candidate": 5,
          "proposed_xyxy": [...], "window_xyxy": [...],   # before and after refinement (Eq. 6)
          "predicted_gain": 1.9 | null,                   # the policy's AG map inside the window
          "true_gain": 2.4 | null,                        # needs ground truth (paper Eq. 1)
          "reward": 1.6 | null,                           # true_gain - lam * window pixels / image pixels
          "pixels_ratio": 0.419,                          # cumulative, coarse pass included
          "added": [detection, ...], "removed": [detection, ...]   # change of the merged result
      }, ...],
      "final": [detection, ...],               # merged result (what the service returns)
      "cost": {"pixels_source", "pixels_ratio", "model_input_pixels", "detector_calls"},
      "timing_ms": {"decode", "coarse", "gain", "policy", "fine", "merge", "total"},
      "ground_truth": [{"box_xyxy": [...], "class_id": 1, "iscrowd": false}, ...] | absent
    }

    detection = {"box_xyxy": [...], "score": 0.93, "class_id": 1, "label": "person",
                 "stage": "coarse" | "fine", "region_id": -1 | k}

``added``/``removed`` of step ``k`` compare the merge of the coarse result with
the first ``k + 1`` windows against the merge with the first ``k``, so a
replay can show each step's effect.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from zoomdet.types import Detections
from zoomdet.zoom.engine import STAGES, GroundTruth, ZoomConfig, ZoomResult
from zoomdet.zoom.gain import fresh_gain, window_gain_items
from zoomdet.zoom.merge import STAGE_FINE, merge_zoom

__all__ = ["EPISODE_FORMAT", "episode_record", "answer_record", "detections_json", "load_episode", "save_episode", "merged_after"]

EPISODE_FORMAT = "zoomdet.episode/1"


def detections_json(det: Detections, categories: Optional[dict[int, str]] = None, stage: Optional[torch.Tensor] = None,
                    region: Optional[torch.Tensor] = None, default_stage: str = "coarse") -> list[dict]:
    """Detections as JSON-ready dicts (the service's response format); boxes rounded to 0.01 px, scores to 5 decimals
    (as :meth:`Detections.to_coco`, so an answer scores as the evaluator's results file does)."""
    out = []
    for i, ((x0, y0, x1, y1), s, c) in enumerate(zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist())):
        st = default_stage if stage is None else ("fine" if int(stage[i]) == STAGE_FINE else "coarse")
        out.append({"box_xyxy": [round(x0, 2), round(y0, 2), round(x1, 2), round(y1, 2)], "score": round(float(s), 5),
                    "class_id": int(c), "label": (categories or {}).get(int(c), str(int(c))), "stage": st,
                    "region_id": -1 if region is None else int(region[i])})
    return out


def answer_record(result: ZoomResult, categories: Optional[dict[int, str]], *, policy: str, max_pixels_ratio: float,
                  score_threshold: float = 0.0, max_latency_ms: Optional[float] = None, late: bool = False) -> dict:
    """One image's answer, as the service returns it (``POST /v1/detect``) and ``zoomdet detect`` writes it.

    Keys: ``image`` ``{width, height}``; ``policy``; ``detections`` (:func:`detections_json`, those with
    ``score >= score_threshold``); ``regions`` ``[{id, box_xyxy, step}]``, the zoom windows as run (empty for plan
    policies, whose detections then carry ``region_id`` -1); ``cost`` (:class:`~zoomdet.zoom.engine.Cost`);
    ``max_pixels_ratio`` and ``budget_exceeded`` (plan policies ignore budgets and say so here);
    ``max_latency_ms``, ``regions_dropped`` (windows the deadline left out) and ``deadline_exceeded`` (``late``);
    ``timing_ms`` per stage; ``frames``, the frames a scene ran as (empty for one episode). Boxes are
    ``[x0, y0, x1, y1]`` in full-resolution image pixels.
    """
    dets = [d for d in detections_json(result.detections, categories, result.stage, result.region)
            if d["score"] >= score_threshold]
    sequential = bool(result.regions) and result.regions[0].candidate >= 0
    regions = [{"id": r.id, "box_xyxy": list(r.window.as_tuple()), "step": r.step} for r in result.regions] if sequential else []
    if not sequential:  # plan policies (fine, sahi): no zoom regions, so no detection points at one
        for d in dets:
            d["region_id"] = -1
    timing = {k: round(1000 * result.timing.get(k, 0.0), 3) for k in (*STAGES, "total")}
    return {"image": {"width": result.width, "height": result.height}, "policy": policy, "detections": dets,
            "regions": regions, "cost": result.cost.as_dict(), "max_pixels_ratio": max_pixels_ratio,
            "budget_exceeded": result.cost.pixels_ratio > max_pixels_ratio + 1e-9, "max_latency_ms": max_latency_ms,
            "regions_dropped": result.dropped, "deadline_exceeded": late, "timing_ms": timing,
            "frames": [list(f.as_tuple()) for f in result.frames]}


def _keys(items: list[dict]) -> list[tuple]:
    return [(tuple(d["box_xyxy"]), d["score"], d["class_id"]) for d in items]


def episode_record(result: ZoomResult, zoom: ZoomConfig, *, policy: str, image: dict,
                   categories: Optional[dict[int, str]] = None, ground_truth: Optional[GroundTruth] = None,
                   lam: Optional[float] = None, max_pixels_ratio: Optional[float] = None) -> dict:
    """The episode document of one :meth:`ZoomEngine.run` result (see the module docstring).

    Args:
        result: the engine's result for the image.
        zoom: the engine's config (scales and merge rule).
        policy: policy name.
        image: ``{"id", "file_name", "path", "width", "height"}`` (missing keys are filled with ``None``).
        categories: class id -> name.
        ground_truth: enables ``true_gain``, ``reward`` and the ``ground_truth`` list.
        lam: λ of the reward (``None``: no reward).
        max_pixels_ratio: the budget the episode ran under.
    """
    W, H = result.width, result.height
    image = {"id": None, "file_name": None, "path": None, **image, "width": W, "height": H}
    coarse = result.coarse.without_features()
    steps = []
    zoomed_so_far = []
    prev = detections_json(coarse, categories)
    ratio = (result.cost.model_input_pixels - sum(r.window.input_pixels for r in result.regions)) / (W * H)
    sequential = bool(result.regions) and result.regions[0].candidate >= 0
    for k, r in enumerate(result.regions if sequential else []):
        ratio += r.window.input_pixels / (W * H)
        true_gain = reward = None
        if ground_truth is not None:
            items = window_gain_items(coarse, result.fine[k], r.window, ground_truth.boxes, ground_truth.labels,
                                      ground_truth.crowd, zoom.merge.drop_ios, zoom.merge.coarse_min_px)[1]
            true_gain = fresh_gain(items, zoomed_so_far)
            if lam is not None:
                reward = true_gain - lam * r.window.input_pixels / (W * H)
        zoomed_so_far.append(r.window)
        m = merge_zoom(coarse, result.fine[: k + 1], zoomed_so_far, W, H, zoom.merge)
        cur = detections_json(m.detections, categories, m.stage, m.region)
        before, after = set(_keys(prev)), set(_keys(cur))
        steps.append({
            "step": k, "region_id": r.id, "candidate": r.candidate,
            "proposed_xyxy": list(r.proposed.as_tuple()), "window_xyxy": list(r.window.as_tuple()),
            "predicted_gain": r.predicted_gain, "true_gain": true_gain, "reward": reward, "pixels_ratio": ratio,
            "added": [d for d, key in zip(cur, _keys(cur)) if key not in before],
            "removed": [d for d, key in zip(prev, _keys(prev)) if key not in after],
        })
        prev = cur
    doc = {
        "format": EPISODE_FORMAT, "policy": policy, "image": image,
        "config": {"coarse_scale": zoom.coarse_scale, "fine_scale": zoom.fine_scale, "window_scale": zoom.zoom_scale, "lam": lam,
                   "max_pixels_ratio": max_pixels_ratio},
        "categories": {str(k): v for k, v in (categories or {}).items()},
        "coarse": detections_json(coarse, categories),
        "gain_map": None if result.gain_grid is None else {
            "rows": int(result.gain_grid.shape[0]), "cols": int(result.gain_grid.shape[1]),
            "values": [[round(float(v), 4) for v in row] for row in result.gain_grid]},
        "steps": steps,
        "final": detections_json(result.detections, categories, result.stage, result.region),
        "cost": result.cost.as_dict(),
        "timing_ms": {s: round(1000 * result.timing.get(s, 0.0), 3) for s in (*STAGES, "total")},
    }
    if ground_truth is not None:
        doc["ground_truth"] = [{"box_xyxy": [round(v, 2) for v in b], "class_id": int(c), "iscrowd": bool(z)}
                               for b, c, z in zip(ground_truth.boxes.tolist(), ground_truth.labels.tolist(),
                                                  ground_truth.crowd.tolist())]
    return doc


def save_episode(doc: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)
    return path


def load_episode(path: str | Path) -> dict:
    """Read an episode file (or a service response's ``trace``), checking its format."""
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != EPISODE_FORMAT:
        raise ValueError(f"{path} is not a ZoomDet episode (format {doc.get('format')!r}, expected {EPISODE_FORMAT})")
    return doc


def merged_after(doc: dict, k: int) -> list[dict]:
    """The merged detections of an episode after step ``k`` (``k = -1``: the coarse pass alone),
    rebuilt from the coarse list and each step's ``added``/``removed``; after the last step this
    is ``doc["final"]`` (before the service's score threshold)."""
    key = lambda d: (tuple(d["box_xyxy"]), d["score"], d["class_id"])  # noqa: E731
    cur = {key(d): d for d in doc["coarse"]}
    for s in doc["steps"][: k + 1]:
        for d in s["removed"]:
            cur.pop(key(d), None)
        for d in s["added"]:
            cur[key(d)] = d
    return list(cur.values())
