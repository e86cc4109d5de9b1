"""``zoomdet rnet train``: fit the R-net on a rollout cache and report how well it ranks windows.

Validation is on held-out images: for every candidate window of every
validation image, the predicted gain (window sum of the R-net's AG map) is
compared with the true gain (sum of the window's gain items) by Pearson and
Spearman correlation (:mod:`scipy.stats`). The same numbers are given for the
entropy state, as the paper's baseline.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from scipy import stats
from tqdm import tqdm

from zoomdet.rnet.cache import RolloutCache
from zoomdet.rnet.model import (EntropyGain, RNet, RNetConfig, RNetGain, coarse_gain_targets, rnet_inputs, save_rnet,
                                window_predicted_gains, window_true_gains)

__all__ = ["train_rnet", "window_correlations"]


def window_correlations(records, model, drop_ios: float = 0.5, coarse_min_px: Optional[float] = None) -> dict:
    """Pearson / Spearman between predicted and true candidate-window gains over ``records``."""
    pred, true = [], []
    for rec in records:
        pred.append(window_predicted_gains(rec, model.predict(rec.coarse)))
        true.append(window_true_gains(rec, drop_ios, coarse_min_px))
    p, t = torch.cat(pred).numpy(), torch.cat(true).numpy()
    if len(p) < 3 or np.std(p) == 0 or np.std(t) == 0:
        return {"pearson": float("nan"), "spearman": float("nan"), "windows": int(len(p))}
    return {"pearson": float(stats.pearsonr(p, t)[0]), "spearman": float(stats.spearmanr(p, t)[0]), "windows": int(len(p))}


def train_rnet(cache_dir: str, out: str, cfg: Optional[RNetConfig] = None, val_cache: Optional[str] = None,
               progress: bool = True) -> dict:
    """Train on ``cache_dir`` (minus a held-out share, or all of it when ``val_cache`` is given).

    Writes the checkpoint to ``out`` and ``<out>.json`` with the metrics; returns the metrics.
    """
    cfg = cfg or RNetConfig()
    torch.manual_seed(cfg.seed)
    cache = RolloutCache(cache_dir)
    if cfg.coarse_min_px is None:  # the merge rule the cache was built for
        cfg.coarse_min_px = cache.manifest.get("zoom", {}).get("merge", {}).get("coarse_min_px")
    records = cache.records()
    if val_cache:
        val = RolloutCache(val_cache, expect_detector_id=cache.detector_id).records()
        train = records
    else:
        order = list(range(len(records)))
        random.Random(cfg.seed).shuffle(order)
        n_val = max(1, int(round(cfg.val_fraction * len(records))))
        if len(records) - n_val < 1:
            raise ValueError(f"{cache_dir} has {len(records)} images: too few to hold {n_val} out; give --val-cache")
        val = [records[i] for i in order[:n_val]]
        train = [records[i] for i in order[n_val:]]
    xs, ys = [], []
    for rec in tqdm(train, desc="gain labels", disable=not progress):
        if len(rec.coarse):
            xs.append(rnet_inputs(rec.coarse, cfg.extra_inputs))
            ys.append(coarse_gain_targets(rec, cfg.drop_ios, cfg.fine_only_iou, cfg.coarse_min_px))
    if not xs:
        raise ValueError(f"{cache_dir}: no coarse detections to learn from")
    x, y = torch.cat(xs), torch.cat(ys)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-3)
    model = RNet(x.shape[1], cfg.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    xn = (x - mean) / std
    bar = tqdm(range(cfg.epochs), desc="rnet train", disable=not progress)
    for _ in bar:
        loss = torch.mean((model(xn) - y) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_postfix(l2=f"{loss.item():.4f}")
    with torch.no_grad():  # fold the input normalisation into the first layer: the checkpoint is a plain MLP
        lin = model.net[0]
        lin.weight.div_(std[None, :])
        lin.bias.sub_((lin.weight * mean[None, :]).sum(1))
    rnet = RNetGain(model, cfg, cache.detector_id)
    metrics = {"train_images": len(train), "val_images": len(val), "train_detections": int(len(y)),
               "train_l2": float(torch.mean((model(x).detach() - y) ** 2)),
               "label_mean": float(y.mean()), "label_std": float(y.std())}
    rn = window_correlations(val, rnet, cfg.drop_ios, cfg.coarse_min_px)
    en = window_correlations(val, EntropyGain(), cfg.drop_ios, cfg.coarse_min_px)
    metrics.update({"val_pearson": rn["pearson"], "val_spearman": rn["spearman"], "val_windows": rn["windows"],
                    "entropy_val_pearson": en["pearson"], "entropy_val_spearman": en["spearman"]})
    save_rnet(out, model, cfg, x.shape[1], cache.detector_id, metrics)
    report = {"cache": str(cache_dir), "val_cache": val_cache, "detector_id": cache.detector_id,
              "config": cfg.__dict__, "metrics": metrics}
    Path(str(out) + ".json").write_text(json.dumps(report, indent=2))
    return metrics
