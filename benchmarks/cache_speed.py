"""Exact against composed rollout caches: build time per image and how far the composed gains are.

    python benchmarks/cache_speed.py --config configs/eval/synth.yaml --data data/synth-val/annotations.json \\
        --dataset synth-2048x1536 --images 8

Builds both caches (``zoomdet cache build --fine exact`` and ``--fine composed``,
in-process, one after the other, same images) and reports seconds per image
and, over every candidate window of every image, the agreement of the true
window gains (paper Eq. 1-2, ``window_true_gains``) the R-net is trained on:
Spearman and Pearson correlation, mean absolute difference, and the share of
images whose best window is the same; and the same for each window's ``reward: ap``
(the change of the image's COCO AP when that window alone is zoomed,
``ZoomEnv.single_window_rewards``), the reward the agents are trained on, with
its mean under each cache (how much zooming adds, on average, as each cache tells it). Writes
``benchmarks/results/cache_speed.json`` (replacing ``--dataset``'s rows).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from zoomdet.eval.results import add_dataset_args

    add_dataset_args(ap, images_default=8)
    ap.add_argument("--out", default="runs/bench/cache_speed")
    args = ap.parse_args(argv)

    from scipy.stats import pearsonr, spearmanr

    from zoomdet.config import load_config
    from zoomdet.detector.detector import default_checkpoint
    from zoomdet.eval.evaluator import EvalConfig
    from zoomdet.eval.results import command_line, write_results
    from zoomdet.rnet.cache import build_cache
    from zoomdet.rnet.model import window_true_gains

    cfg = load_config(EvalConfig, args.config)
    ckpt = cfg.checkpoint or str(default_checkpoint())
    caches, seconds = {}, {}
    for mode in ("exact", "composed"):
        out = Path(args.out) / f"{args.dataset}-{mode}"
        timing = out / "build_seconds.json"  # a rerun reuses a finished cache, and its build time
        fresh = not (out / "manifest.json").is_file()
        t = time.perf_counter()
        caches[mode] = build_cache(args.data, out, ckpt, cfg.zoom, images=args.images, workers=0, seed=cfg.seed,
                                   image_root=cfg.image_root, fine=mode, device=cfg.device, batch_size=cfg.batch_size)
        if fresh or not timing.is_file():
            timing.write_text(json.dumps({"seconds": time.perf_counter() - t, "fresh": fresh}))
        seconds[mode] = json.loads(timing.read_text())["seconds"] / max(1, len(caches[mode]))
    exact, composed = caches["exact"].records(), caches["composed"].records()
    ge = [window_true_gains(r, cfg.zoom.merge.drop_ios).numpy() for r in exact]
    gc = [window_true_gains(r, cfg.zoom.merge.drop_ios).numpy() for r in composed]
    a, b = np.concatenate(ge), np.concatenate(gc)
    ae, ac = (ap_rewards(caches[m]) for m in ("exact", "composed"))
    x, y = np.concatenate(ae), np.concatenate(ac)
    row = {"dataset": args.dataset, "images": len(exact), "windows": int(a.size),
           "cached_windows_per_image": len(exact[0].windows) if exact else 0,
           "exact_s_per_image": seconds["exact"], "composed_s_per_image": seconds["composed"],
           "speedup": seconds["exact"] / seconds["composed"],
           "gain_spearman": float(spearmanr(a, b).statistic), "gain_pearson": float(pearsonr(a, b).statistic),
           "gain_mean_abs_diff": float(np.abs(a - b).mean()), "gain_mean_abs_exact": float(np.abs(a).mean()),
           "same_best_window": float(np.mean([np.argmax(u) == np.argmax(v) for u, v in zip(ge, gc)])),
           "ap_reward_spearman": float(spearmanr(x, y).statistic), "ap_reward_pearson": float(pearsonr(x, y).statistic),
           "ap_reward_mean_abs_diff": float(np.abs(x - y).mean()), "ap_reward_mean_abs_exact": float(np.abs(x).mean()),
           "ap_same_best_window": float(np.mean([np.argmax(u) == np.argmax(v) for u, v in zip(ae, ac)])),
           # signed means: a composed cache that under- or overstates what zooming adds biases what agents learn
           "ap_reward_mean_exact": float(x.mean()), "ap_reward_mean_composed": float(y.mean()),
           "command": command_line(), "date": _dt.date.today().isoformat()}
    path = write_results("cache_speed", [row], replace={"dataset": args.dataset},
                         required=("dataset", "images", "command", "date"))
    print(json.dumps(row, indent=1))
    print(f"wrote {path}")
    return 0


def ap_rewards(cache) -> list[np.ndarray]:
    """Per image, each candidate window's ``reward: ap`` before the pixel cost (AP points), zoomed alone."""
    from zoomdet.envs import ZoomEnv

    env = ZoomEnv(cache, state="entropy", reward="ap")
    return [np.array([w["ap_gain"] for w in env.single_window_rewards(i)]) for i in range(len(env.records))]


if __name__ == "__main__":
    sys.exit(main())
