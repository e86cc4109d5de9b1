"""``zoomdet replay``: run a policy through the live zoom engine and record one episode file per image.

Files are ``<out>/episode_<image id>.json`` in the format of
:mod:`zoomdet.zoom.episode`, plus ``<out>/index.json`` listing them with
their cost. ``--render`` also draws each episode (PNG per step and an
animated GIF, see :mod:`zoomdet.viz`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from zoomdet.data.coco import CocoDataset
from zoomdet.eval.evaluator import EvalConfig, load_detector, write_atomic
from zoomdet.zoom.engine import GroundTruth, ZoomEngine
from zoomdet.zoom.episode import episode_record, save_episode
from zoomdet.zoom.policies import make_policy

__all__ = ["replay"]


def replay(cfg: EvalConfig, data: str, policy_name: str, out: str | Path, *, lam: Optional[float] = None,
           max_pixels_ratio: Optional[float] = None, render: bool = False, progress: bool = True) -> list[Path]:
    """Record episodes of ``policy_name`` on ``cfg.images`` images of ``data`` (a seeded sample; 0 = all); returns the files.

    ``lam`` defaults to the agent's training λ (trained agents) and is needed for rewards otherwise.
    """
    out = Path(out)
    ds = CocoDataset(data, image_root=cfg.image_root)
    detector = load_detector(cfg)
    engine = ZoomEngine(detector, cfg.zoom)
    policy = make_policy(policy_name, cfg.policies, cfg.zoom, detector.detector_id)
    if lam is None and hasattr(policy, "config"):
        lam = policy.config.lam
    budget = cfg.zoom.max_pixels_ratio if max_pixels_ratio is None else float(max_pixels_ratio)
    files, index = [], []
    for iid in tqdm(ds.subset(cfg.images, cfg.seed), desc="replay", unit="img", disable=not progress):
        info = ds.coco.imgs[iid]
        boxes, labels, crowd = ds.targets(iid)
        gt = GroundTruth(boxes, labels, crowd)
        res = engine.run(ds.load_image(iid, keep_uint8=cfg.keep_uint8), policy, ground_truth=gt, seed=cfg.seed + iid, max_pixels_ratio=budget)
        doc = episode_record(res, cfg.zoom, policy=policy.name, categories=ds.categories, ground_truth=gt, lam=lam,
                             max_pixels_ratio=budget,
                             image={"id": iid, "file_name": info["file_name"], "path": str(ds.image_path(iid).resolve())})
        path = save_episode(doc, out / f"episode_{iid}.json")
        files.append(path)
        index.append({"file": path.name, "image_id": iid, "steps": len(doc["steps"]), **doc["cost"]})
        if render:
            from zoomdet.viz import render_episode

            render_episode(doc, out / f"episode_{iid}")
    write_atomic(out / "index.json", json.dumps({"policy": policy.name, "data": str(data), "episodes": index}, indent=1))
    return files
