"""Which reward tracks the metric? Each window's reward against the change of dataset AP it makes alone.

    python benchmarks/reward_agreement.py --cache runs/quickstart/cache/tune --dataset synth-tune

For every image of a rollout cache and every candidate window, zoom that
window alone (the other images keep their coarse detections) and measure the
change of the dataset's COCO AP (COCOeval over all the cache's images, x 100; :class:`~zoomdet.eval.coco_eval.PoolAP`
evaluates the others once).
Beside it, the window's reward under ``reward: gain`` (the paper's Eq. 1-2)
and ``reward: ap`` (the change of that image's AP, x 100), both before the
pixel cost, which is the same for both. Prints the Spearman and Pearson
correlation of each reward with the dataset AP change and writes them to
``benchmarks/results/reward_agreement.json`` (replacing ``--dataset``'s row).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True, help="rollout cache folder (zoomdet cache build)")
    ap.add_argument("--dataset", required=True, help="name of the row in the results file")
    ap.add_argument("--images", type=int, default=0, help="first N images of the cache (default 0 = all)")
    args = ap.parse_args(argv)

    from scipy.stats import pearsonr, spearmanr
    from tqdm import tqdm

    from zoomdet.envs.zoom_env import ZoomEnv
    from zoomdet.eval.coco_eval import PoolAP
    from zoomdet.eval.results import command_line, write_results

    env = ZoomEnv(args.cache, state="entropy", reward="ap")
    n = len(env.records) if not args.images else min(args.images, len(env.records))
    records = env.records[:n]
    # COCOeval over the n images, each at its coarse pass but the one whose window is zoomed
    pool = PoolAP([r.coco_image for r in records], {r.image_id: r.coarse for r in records})
    base = pool.reference_ap
    gain, ap_gain, delta = [], [], []
    for k in tqdm(range(n), desc="images"):
        for w in env.single_window_rewards(k):
            delta.append(100 * (pool(records[k].image_id, w["detections"]) - base))
            gain.append(w["gain"])
            ap_gain.append(w["ap_gain"])
    row = {"dataset": args.dataset, "images": n, "windows": len(delta), "coarse_ap": base,
           "mean_abs_dataset_ap_change": float(np.mean(np.abs(delta)))}
    for name, x in (("gain", gain), ("ap", ap_gain)):
        row[f"spearman_{name}"] = float(spearmanr(x, delta).statistic)
        row[f"pearson_{name}"] = float(pearsonr(x, delta).statistic)
    row.update(command=command_line(), date=__import__("datetime").date.today().isoformat())
    print(f"{args.dataset}: {n} images, {len(delta)} windows; rank correlation with the dataset AP change: "
          f"reward gain {row['spearman_gain']:.3f}, reward ap {row['spearman_ap']:.3f} "
          f"(Pearson {row['pearson_gain']:.3f} / {row['pearson_ap']:.3f})")
    path = write_results("reward_agreement", [row], replace={"dataset": args.dataset},
                         required=("dataset", "images", "command", "date"))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
