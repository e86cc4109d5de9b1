"""Steps per second of ZoomDet-v0 with random allowed actions (the environment alone, no learning).

    taskset -c 0 python benchmarks/env_speed.py --cache runs/cache/synth-train --rnet runs/rnet/synth.pt --steps 20000

Per-image data (AG map, gain items of every cached window) is computed when an
image is first drawn; the script warms every image first and reports that
time separately. Prints a JSON line; ``--out`` also writes it to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--rnet", help="R-net checkpoint (default: the entropy state)")
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--info-detections", action="store_true", help="also merge detections into info at episode end")
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(1)
    from zoomdet.envs import ZoomEnv

    kw = {"state": "rnet", "rnet": a.rnet} if a.rnet else {"state": "entropy"}
    env = ZoomEnv(a.cache, info_detections=a.info_detections, **kw)
    t = time.perf_counter()
    for k in range(len(env.records)):
        env._image(k)
    warm = time.perf_counter() - t
    rng = np.random.default_rng(0)
    steps = episodes = 0
    t = time.perf_counter()
    while steps < a.steps:
        env.reset(seed=episodes)
        done = False
        while not done:
            _, _, term, trunc, _ = env.step(int(rng.choice(np.flatnonzero(env.action_masks()))))
            steps += 1
            done = term or trunc
        episodes += 1
    dt = time.perf_counter() - t
    res = {"benchmark": "env_speed", "cache": a.cache, "images": len(env.records), "state": kw["state"],
           "info_detections": a.info_detections, "steps": steps, "episodes": episodes, "seconds": round(dt, 3),
           "steps_per_s": round(steps / dt, 1), "warmup_s_per_image": round(warm / len(env.records), 4),
           "cpus_allowed": len(os.sched_getaffinity(0))}
    print(json.dumps(res))
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
