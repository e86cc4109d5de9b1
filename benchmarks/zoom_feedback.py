"""Does what the fine pass found so far say where the next window pays?

    python benchmarks/zoom_feedback.py --cache runs/s29/hit-val60-ft --dataset hituav-val60-ftdet --budget 0.6

Every state the policies read is built from the coarse pass (``benchmarks/window_signal.py`` measures how
little of the oracle's room it shows). After the first zoom a policy also knows what the fine pass found in
the windows zoomed so far, which no state uses: where the fine pass found objects the coarse pass missed
(people on a path, cars in a car park), more may lie next to them, and the coarse pass leaves no trace of those.
This script measures that signal before any agent is given it.

It plays ``greedy-entropy`` on every image of a rollout cache at ``--budget`` and, at each of its decisions
after the first (so at least one window's fine detections are known), asks what one different pick would have
added. A decision's label is each allowed window's AP points (x 100) if zoomed now
(:meth:`zoomdet.envs.zoom_env.ZoomEnv.ap_gains`, the environment's ``reward: ap``). The windows are ranked by

    score = entropy_per_px / max(entropy_per_px) + beta * finds / max(finds)

over the allowed windows, where ``entropy_per_px`` is the window's sum on the entropy map per source pixel
(``greedy-entropy``'s own ranking, so ``beta = 0`` is the rule's pick) and ``finds`` is the new finds' nearness
per source pixel: each fine detection of a zoomed window with score >= ``--score`` that no coarse detection
overlaps (IoU < 0.3) counts ``exp(-d / --sigma)``, ``d`` its centre's distance to the window in pixels (0
inside). A window with neither entropy nor finds is never picked, as the rule never picks one without entropy.

For each ``beta`` it prints the mean AP points of the pick, the rule's and the oracle's (the best allowed window)
per decision, and ``share`` = (pick - rule) / (oracle - rule): the part of the room past the rule that the
finds take. It is a one-step deviation from the rule's trajectory, not a policy: a better pick would also
change the later decisions. Rows go to ``benchmarks/results/zoom_feedback.json`` (replacing ``--dataset``'s).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BETAS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)


def point_box_distance(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``float64[N, K]``: distance in pixels from each of ``points`` (``[N, 2]`` x, y) to each of ``boxes``
    (``[K, 4]`` xyxy), 0 for a point inside the box."""
    dx = np.maximum(np.maximum(boxes[None, :, 0] - points[:, None, 0], points[:, None, 0] - boxes[None, :, 2]), 0)
    dy = np.maximum(np.maximum(boxes[None, :, 1] - points[:, None, 1], points[:, None, 1] - boxes[None, :, 3]), 0)
    return np.hypot(dx, dy)


def new_finds(coarse, fine: list, score: float, iou: float = 0.3) -> np.ndarray:
    """``float64[N, 2]``: centres (x, y pixels) of the fine detections (``Detections`` of the zoomed windows) with
    score >= ``score`` that no coarse detection overlaps by IoU >= ``iou``: objects the coarse pass missed."""
    from torchvision.ops import box_iou

    centres = []
    for det in fine:
        boxes = det.boxes[det.scores >= score]
        if len(boxes) and len(coarse.boxes):
            boxes = boxes[box_iou(boxes, coarse.boxes).amax(1) < iou]
        centres.append(((boxes[:, :2] + boxes[:, 2:]) / 2).double().numpy())
    return np.concatenate(centres) if centres else np.zeros((0, 2))


def decisions(env, score: float, sigma: float, images: int = 0) -> list[dict]:
    """Play ``greedy-entropy`` on the first ``images`` images of ``env`` (0 = all; a ``ZoomEnv`` with
    ``window_features``) and return, for each of its decisions after the first, the allowed windows' AP points
    (``ap``, NaN where not allowed), their entropy per pixel (``entropy``), their nearness to new finds per pixel
    (``finds``) and the rule's pick (``rule``)."""
    from tqdm import tqdm

    from zoomdet.agents.demos import rule_map, rule_picker
    from zoomdet.zoom.windows import window_boxes

    rule = rule_picker("greedy-entropy")
    out = []
    for k in tqdm(range(min(images or len(env.records), len(env.records))), desc="images"):
        obs, _ = env.reset(options={"index": k})
        rec = env.records[k]
        if not len(rec.gt_boxes):
            continue  # AP is undefined without objects
        boxes = window_boxes(env.candidates)
        pixels = np.array([w.source_pixels for w in env.candidates], dtype=np.float64)
        while True:
            action = rule(env, obs)
            if action == env.stop_action:
                break
            if env.fine_ids:
                points = new_finds(rec.coarse, [rec.fine[i] for i in env.fine_ids], score)
                near = np.exp(-point_box_distance(points, boxes) / sigma).sum(0) if len(points) else np.zeros(len(boxes))
                out.append({"ap": env.ap_gains(), "entropy": rule_map(env, "greedy-entropy").window_sums(boxes) / pixels,
                            "finds": near / pixels, "rule": action})
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
    return out


def pick(decision: dict, beta: float) -> int | None:
    """The window ranked first by ``entropy + beta * finds`` (each scaled by its maximum over the allowed
    windows), among allowed windows with entropy or finds; ``None`` when there is none."""
    allowed = ~np.isnan(decision["ap"])
    scaled = []
    for name in ("entropy", "finds"):
        top = decision[name][allowed].max(initial=0.0)
        scaled.append(decision[name] / top if top > 0 else np.zeros_like(decision[name]))
    ok = allowed & ((decision["entropy"] > 0) | (decision["finds"] > 0))
    if not ok.any():
        return None
    score = np.where(ok, scaled[0] + beta * scaled[1], -np.inf)
    return int(np.argmax(score))  # the first of equal scores, as greedy_choice keeps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True, help="rollout cache folder (zoomdet cache build)")
    ap.add_argument("--dataset", required=True, help="name of the rows in the results file")
    ap.add_argument("--budget", type=float, default=0.6, help="pixel budget of the rule's episodes (default 0.6)")
    ap.add_argument("--beta", type=float, nargs="+", default=list(BETAS), help="weights of the finds (0 = the rule)")
    ap.add_argument("--score", type=float, default=0.3, help="fine detections at or above this score count (0.3)")
    ap.add_argument("--sigma", type=float, default=80.0, help="nearness scale, pixels (default 80)")
    ap.add_argument("--images", type=int, default=0, help="first N images of the cache (default 0 = all)")
    args = ap.parse_args(argv)
    if not 0 < args.budget <= 1:
        ap.error(f"--budget must be in (0, 1], got {args.budget}")
    if args.sigma <= 0 or any(b < 0 for b in args.beta):
        ap.error("--sigma must be > 0 and every --beta >= 0")

    from zoomdet.envs.zoom_env import ZoomEnv
    from zoomdet.eval.results import command_line, write_results
    from zoomdet.rnet.cache import RolloutCache

    try:
        env = ZoomEnv(RolloutCache(args.cache), state="entropy", window_features=True, reward="ap", lam=0.0, stop_gain=0.0,
                      max_steps=40, budget_range=None, order="sequential", max_pixels_ratio=args.budget)
    except (FileNotFoundError, ValueError) as e:
        ap.error(str(e))
    images = min(args.images or len(env.records), len(env.records))
    found = decisions(env, args.score, args.sigma, images)
    if not found:
        ap.error(f"{args.cache}: the rule took no second window on any image at budget {args.budget}")
    gain = lambda d, k: 0.0 if k is None else float(d["ap"][k])  # noqa: E731  (no pick: stop, nothing added)
    rule = float(np.mean([gain(d, d["rule"]) for d in found]))
    oracle = float(np.mean([np.nanmax(d["ap"]) for d in found]))
    common = {"dataset": args.dataset, "images": images, "decisions": len(found), "budget": args.budget,
              "score": args.score, "sigma": args.sigma, "cache": args.cache, "rule": rule, "oracle": oracle,
              "command": command_line(), "date": __import__("datetime").date.today().isoformat()}
    rows = []
    print(f"{args.dataset}: {len(found)} decisions after the first on {images} images at budget "
          f"{args.budget}; AP points (x 100) per decision: rule {rule:.3f}, oracle {oracle:.3f}")
    print(f"{'beta':>6}{'pick':>9}{'vs rule':>9}{'share':>8}")
    for beta in args.beta:
        mean = float(np.mean([gain(d, pick(d, beta)) for d in found]))
        share = (mean - rule) / (oracle - rule) if oracle > rule else 0.0
        rows.append({**common, "beta": beta, "pick": mean, "share": share})
        print(f"{beta:6g}{mean:9.3f}{mean - rule:+9.3f}{share:+8.3f}")
    path = write_results("zoom_feedback", rows, replace={"dataset": args.dataset},
                         required=("dataset", "images", "beta", "pick", "command", "date"))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
