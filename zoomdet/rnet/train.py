"""``zoomdet rnet train``: fit the R-net on a rollout cache and report how well it ranks windows.

Validation is on held-out images: for every candidate window of every
validation image, the predicted gain (window sum of the R-net's AG map) is
compared with the true gain (sum of the window's gain items) by Pearson and
Spearman correlation (:mod:`scipy.stats`), and with the AP points the window
adds to its image when zoomed alone (``val_ap_*``), whatever the R-net's
``target``. The same numbers are given for the entropy state, as the paper's
baseline.
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
                                window_ap_targets, window_cover, window_predicted_gains, window_true_gains)

__all__ = ["train_rnet", "window_correlations"]


def window_correlations(records, model, drop_ios: float = 0.5, coarse_min_px: Optional[float] = None,
                        truths: Optional[list] = None) -> dict:
    """Pearson / Spearman between predicted and true candidate-window gains over ``records``; ``truths``: one
    ``Tensor[num_candidates]`` per record to compare with instead (e.g. :func:`window_ap_targets`; NaN entries,
    images without objects, are left out)."""
    pred, true = [], []
    for i, rec in enumerate(records):
        pred.append(window_predicted_gains(rec, model.predict(rec.coarse)))
        true.append(window_true_gains(rec, drop_ios, coarse_min_px) if truths is None else truths[i])
    p, t = torch.cat(pred).numpy(), torch.cat(true).numpy()
    keep = ~np.isnan(t)
    p, t = p[keep], t[keep]
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
    if cfg.target == "ap":
        x, y, cover = _ap_training_set(train, cfg, cache.zoom.merge, progress)
    else:
        xs, ys = [], []
        for rec in tqdm(train, desc="gain labels", disable=not progress):
            if len(rec.coarse):
                xs.append(rnet_inputs(rec.coarse, cfg.extra_inputs))
                ys.append(coarse_gain_targets(rec, cfg.drop_ios, cfg.fine_only_iou, cfg.coarse_min_px))
        if not xs:
            raise ValueError(f"{cache_dir}: no coarse detections to learn from")
        x, y, cover = torch.cat(xs), torch.cat(ys), None
    model = fit_rnet(x, y, cover, cfg, progress)
    rnet = RNetGain(model, cfg, cache.detector_id)
    with torch.no_grad():
        train_l2 = float(torch.mean((_per_label(model(x), cover) - y) ** 2))
    metrics = {"target": cfg.target, "train_images": len(train), "val_images": len(val),
               "train_detections": int(len(x)), "train_labels": int(len(y)), "train_l2": train_l2,
               "label_mean": float(y.mean()), "label_std": float(y.std())}
    # the target's own ranking, then (for either target) the ranking of the AP points each window adds
    ap_truth = [window_ap_targets(rec, cache.zoom.merge, candidates_only=True)
                for rec in tqdm(val, desc="val AP gains", disable=not progress)]
    rn_ap = window_correlations(val, rnet, truths=ap_truth)
    en_ap = window_correlations(val, EntropyGain(), truths=ap_truth)
    if cfg.target == "ap":  # its own target is the AP points
        rn, en = rn_ap, en_ap
    else:
        rn = window_correlations(val, rnet, cfg.drop_ios, cfg.coarse_min_px)
        en = window_correlations(val, EntropyGain(), cfg.drop_ios, cfg.coarse_min_px)
    metrics.update({"val_pearson": rn["pearson"], "val_spearman": rn["spearman"], "val_windows": rn["windows"],
                    "entropy_val_pearson": en["pearson"], "entropy_val_spearman": en["spearman"],
                    "val_ap_pearson": rn_ap["pearson"], "val_ap_spearman": rn_ap["spearman"],
                    "entropy_val_ap_pearson": en_ap["pearson"], "entropy_val_ap_spearman": en_ap["spearman"]})
    save_rnet(out, model, cfg, x.shape[1], cache.detector_id, metrics)
    report = {"cache": str(cache_dir), "val_cache": val_cache, "detector_id": cache.detector_id,
              "config": cfg.__dict__, "metrics": metrics}
    Path(str(out) + ".json").write_text(json.dumps(report, indent=2))
    return metrics


def fit_rnet(x: torch.Tensor, y: torch.Tensor, cover: Optional[torch.Tensor], cfg: RNetConfig,
             progress: bool = False) -> RNet:
    """Full-batch Adam on ``x`` (``Tensor[N, D]`` R-net inputs): per detection against ``y`` (``Tensor[N]``) when
    ``cover`` is None, else per window, ``cover @ rnet(x)`` against ``y`` (``Tensor[K]``, ``cover`` sparse
    ``[K, N]``). The input normalisation is folded into the first layer, so the result is a plain MLP."""
    torch.manual_seed(cfg.seed)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-3)
    model = RNet(x.shape[1], cfg.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    xn = (x - mean) / std
    bar = tqdm(range(cfg.epochs), desc="rnet train", disable=not progress)
    for _ in bar:
        loss = torch.mean((_per_label(model(xn), cover) - y) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_postfix(l2=f"{loss.item():.4f}")
    with torch.no_grad():
        lin = model.net[0]
        lin.weight.div_(std[None, :])
        lin.bias.sub_((lin.weight * mean[None, :]).sum(1))
    return model


def _per_label(per_detection: torch.Tensor, cover: Optional[torch.Tensor]) -> torch.Tensor:
    """What the labels are compared with: the per-detection outputs themselves (``cover`` None), or each window's
    sum of them, ``cover @ per_detection`` (``cover`` sparse ``[K, N]``)."""
    return per_detection if cover is None else torch.sparse.mm(cover, per_detection[:, None])[:, 0]


def _ap_training_set(records, cfg: RNetConfig, merge, progress: bool):
    """``target: ap``: the R-net inputs of every coarse detection of ``records`` (``Tensor[N, D]``), the AP points
    of every cached window zoomed alone (``Tensor[K]``) and the sparse ``[K, N]`` share of each detection's box
    inside each window (block-diagonal over images), so that ``cover @ rnet(x)`` is each window's map sum."""
    xs, ys, rows, cols, vals = [], [], [], [], []
    n = k = 0
    for rec in tqdm(records, desc="window AP gains", disable=not progress):
        if not len(rec.coarse):
            continue
        ap = window_ap_targets(rec, merge)
        keep = ~torch.isnan(ap)
        if not keep.any():  # no object: AP is undefined, nothing to learn
            continue
        cover = window_cover(rec.coarse.boxes, [w for w, kept in zip(rec.windows, keep.tolist()) if kept])
        r, c = torch.nonzero(cover, as_tuple=True)
        rows.append(r + k)
        cols.append(c + n)
        vals.append(cover[r, c])
        xs.append(rnet_inputs(rec.coarse, cfg.extra_inputs))
        ys.append(ap[keep])
        n += len(rec.coarse)
        k += int(keep.sum())
    if not xs:
        raise ValueError("target ap: no image with both objects and coarse detections to learn from")
    cover = torch.sparse_coo_tensor(torch.stack([torch.cat(rows), torch.cat(cols)]), torch.cat(vals), (k, n),
                                    check_invariants=True).coalesce()
    return torch.cat(xs), torch.cat(ys), cover
