"""Does a rollout cache rank policies as the live pipeline does? The rules (and agents) rolled out on a cache.

    python benchmarks/cache_policies.py --cache runs/bench/hituav-gpu-agent/cache-val \\
        --rnet runs/bench/hituav-gpu-agent/rnet.pt --dataset hituav-val-gpudet --budget 0.45 0.6

An agent learns only what its training cache says zooming does. This script asks the cache itself: it plays
``greedy-entropy``, ``greedy`` (with ``--rnet``), ``random`` and every ``--agent`` through the environment
(``ZoomDet-v0``: the cached fine detections, refined and merged as the live engine does, no detector) on every
image of the cache at each budget, and scores the merged detections of all images with COCOeval, beside the
coarse pass alone. Where the live evaluation ranks the policies differently, or finds that zooming helps
where the cache says it hurts, an agent trained on that cache is taught the wrong thing.

The rules pick as the live ones do (:func:`zoomdet.rnet.policies.greedy_choice`, stop when the map's
positive sum falls under ``--stop-gain``, the live ``greedy_stop``); ``random`` takes a random allowed window
until none fits. Rows (``dataset``, ``policy``, ``budget``, ``ap``, ``ap_small``, ``pixels_ratio``,
``zoomed_share``, the cache's ``fine`` mode) go to ``benchmarks/results/cache_policies.json`` (replacing
``--dataset``'s rows).

With ``--miss HEAD`` (``benchmarks/miss_map.py``) it also plays ``greedy-entropy+miss@B`` for each B of
``--miss-beta``: ``greedy-entropy`` ranking each allowed window by its entropy per pixel plus B times the miss
map's mass per pixel, each scaled by its largest value over the image's candidates at the episode's start (the
``entropy+miss@B`` state of ``benchmarks/window_signal.py``), both maps zeroed where zoomed. The chosen window is
refined on the entropy map, as ``greedy-entropy``'s are, and the entropy map's stop rule ends the episode.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # miss_map, window_signal

RULES = {"greedy-entropy": "entropy", "greedy": "rnet", "random": "entropy"}


def rollout(env, pick) -> tuple[list[dict], list[float], int]:
    """Play one episode per cached image (in cache order) with ``pick(env, obs) -> action``; returns the merged
    detections of all images (COCO result dicts), each episode's pixels_ratio and the number that zoomed."""
    detections, pixels, zoomed = [], [], 0
    for k in range(len(env.records)):
        obs, _ = env.reset(options={"index": k})
        steps = 0
        while True:
            obs, _, terminated, truncated, info = env.step(pick(env, obs))
            steps += "window" in info
            if terminated or truncated:
                break
        detections += info["detections"]
        pixels.append(info["pixels_ratio"])
        zoomed += steps > 0
    return detections, pixels, zoomed


class EntropyMissMap:
    """The map ``greedy-entropy+miss@B`` ranks on in a ``ZoomEnv`` episode, as ``gain_of`` of
    :func:`zoomdet.agents.demos.rule_picker`: called with the env at each step, it returns the episode's
    :class:`zoomdet.rnet.miss.MissRanking` of the env's entropy map (zeroed where zoomed) and the image's miss
    map (zeroed there too).

    Args:
        miss: a ``miss_map.MissMap``; images: ``window_signal.CacheImages`` of the cache; beta: the miss map's weight.
    """

    def __init__(self, miss, images, beta: float) -> None:
        self.miss, self.images, self.beta = miss, images, float(beta)
        self.maps: dict = {}  # image id -> the miss map as a GainMap, unzeroed (predicted once per image)
        self.episode = self.ranking = None

    def __call__(self, env):
        from miss_map import probs_gain_map
        from zoomdet.agents.demos import rule_map
        from zoomdet.rnet.miss import MissRanking
        from zoomdet.zoom.windows import window_boxes

        entropy = rule_map(env, "greedy-entropy")
        if self.episode is not env.candidates:  # a new episode (each reset makes a new candidate list)
            rec = env._img.record
            if rec.image_id not in self.maps:
                probs, cell, _ = self.miss.predict(self.images(rec.image_id))
                # on the environment's own grid (GainMap's default 16 px), zeroed as its entropy map is
                self.maps[rec.image_id] = probs_gain_map(probs, cell, rec.width, rec.height, grid=16)
            pixels = np.array([w.source_pixels for w in env.candidates], dtype=np.float64)
            self.episode = env.candidates
            self.ranking = MissRanking(entropy, self.maps[rec.image_id].copy(), window_boxes(env.candidates), pixels,
                                       self.beta)
        self.ranking.entropy = entropy
        self.ranking.sync(env.zoomed)
        return self.ranking


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True, help="rollout cache folder (zoomdet cache build), e.g. a val cache")
    ap.add_argument("--dataset", required=True, help="name of the rows in the results file")
    ap.add_argument("--rnet", help="R-net checkpoint for greedy (trained on features of the cache's detector)")
    ap.add_argument("--agent", action="append", default=[], metavar="[NAME=]PATH",
                    help="trained agent (zoomdet train's best_model.zip; several DQN models joined by + are one "
                         "policy on their mean Q-values), named NAME in the rows; repeat")
    ap.add_argument("--override-margin", type=float, nargs="+", default=[], metavar="M",
                    help="also play each agent that plays greedy-entropy and takes its own pick only where its Q-value "
                         "beats the rule's action by more than M (AP points with reward: ap; the live "
                         "policies.agent_override_margin), one row per M")
    ap.add_argument("--budget", type=float, nargs="+", default=[0.45], help="pixel budgets (default 0.45)")
    ap.add_argument("--stop-gain", type=float, default=0.1, help="the rules' stop rule (the live greedy_stop, 0.1)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random policy")
    ap.add_argument("--miss", help="a miss map (benchmarks/miss_map.py) of the cache's detector: also play "
                                   "greedy-entropy+miss@B (runs the detector's backbone on each image's coarse view)")
    ap.add_argument("--miss-beta", type=float, nargs="+", default=[1.0], help="with --miss: the weights B (default 1)")
    args = ap.parse_args(argv)

    from tqdm import tqdm

    from zoomdet.agents.demos import rule_picker
    from zoomdet.agents.policy import AgentPolicy
    from zoomdet.envs.zoom_env import ZoomEnv, ZoomEnvConfig
    from zoomdet.eval.coco_eval import coco_metrics, ground_truth_coco
    from zoomdet.eval.results import command_line, write_results
    from zoomdet.rnet.cache import RolloutCache
    from zoomdet.types import Window

    if any(b <= 0 for b in args.budget):
        ap.error("--budget values must be > 0")
    if any(not m >= 0 for m in args.override_margin):
        ap.error("--override-margin values must be >= 0")
    if any(not b > 0 for b in args.miss_beta):
        ap.error("--miss-beta values must be > 0")
    try:
        cache = RolloutCache(args.cache)
        records = cache.records()
        agents = []
        for spec in args.agent:  # [NAME=]PATH, PATH may join several DQN models with + (an ensemble)
            path, name = spec.split("=", 1)[-1], spec.split("=", 1)[0] if "=" in spec else None
            load = AgentPolicy.from_paths if "+" in path else AgentPolicy.from_path
            agents.append(load(path.split("+") if "+" in path else path, detector_id=cache.detector_id, name=name))
        agents += [a.overriding(m, args.stop_gain) for a in list(agents) for m in args.override_margin]
        miss_rules = []
        if args.miss:
            from miss_map import miss_map_for_cache
            from window_signal import CacheImages
            from zoomdet.detector.detector import Detector

            miss = miss_map_for_cache(args.miss, cache, Detector.from_checkpoint(cache.manifest["checkpoint"]))
            images = CacheImages(cache)
            miss_rules = [(f"greedy-entropy+miss@{b:g}", EntropyMissMap(miss, images, b)) for b in args.miss_beta]
    except (FileNotFoundError, ValueError) as e:
        ap.error(str(e))
    if not records:
        ap.error(f"{args.cache}: the cache holds no images")
    coco = ground_truth_coco(r.coco_image for r in records)
    ids = [r.image_id for r in records]
    common = {"dataset": args.dataset, "images": len(records), "fine": cache.fine,
              "cache": args.cache, "detector_id": cache.detector_id, "command": command_line(),
              "date": __import__("datetime").date.today().isoformat()}

    def row(policy: str, budget, detections, pixels, zoomed) -> dict:
        m = coco_metrics(coco, detections, ids)
        return {**common, "policy": policy, "budget": budget, "ap": m["ap"], "ap_small": m["ap_small"],
                "pixels_ratio": float(np.mean(pixels)), "zoomed_share": zoomed / len(records)}

    coarse = [d for r in records for d in r.coarse.to_coco(r.image_id)]
    coarse_px = [Window.full(r.width, r.height, cache.zoom.coarse_scale).input_pixels / (r.width * r.height)
                 for r in records]
    rows = [row("coarse", None, coarse, coarse_px, 0)]
    rules = [n for n in RULES if n != "greedy" or args.rnet] + miss_rules
    policies = [*rules, *agents]
    results = {}
    for i, name in enumerate(tqdm(policies, desc="policies")):
        if isinstance(name, (str, tuple)):
            # the live rules have no step cap; the budget ends them
            label = name if isinstance(name, str) else name[0]
            options = {"state": RULES.get(label, "entropy"), "rnet": args.rnet, "stop_gain": args.stop_gain,
                       "max_steps": 40}
        else:  # an agent, with the options it was trained with (its step cap too, as the live AgentPolicy)
            options = {f: getattr(name.config, f) for f in ZoomEnvConfig.__dataclass_fields__}
            label = name.name

            def pick(env, obs, agent=name, rule=rule_picker("greedy-entropy", stop_gain=args.stop_gain)) -> int:
                return agent.act(obs, None if agent.override_margin is None else rule(env, obs))
        # the reward plays no part in the actions: the cheap one, so no AP scorer is built
        options.update(budget_range=None, order="sequential", info_detections=True, reward="gain")
        env = ZoomEnv(cache, **options)  # one per policy: its per-image state (gain map, items) serves every budget
        for budget in args.budget:  # the budget is read at each reset
            env.config = ZoomEnvConfig.from_options(env.config, max_pixels_ratio=budget)
            if isinstance(name, str):
                pick = rule_picker(name, np.random.default_rng(args.seed))
            elif isinstance(name, tuple):  # greedy-entropy on the entropy + miss map
                pick = rule_picker("greedy-entropy", gain_of=name[1])
            results[i, budget] = row(label, budget, *rollout(env, pick))
    # rules before agents, budget by budget
    rows += [results[i, b] for b in args.budget for i in range(len(rules))]
    rows += [results[i, b] for b in args.budget for i in range(len(rules), len(policies))]
    return _report(rows, args.dataset, write_results)


def _report(rows: list[dict], dataset: str, write_results) -> int:
    print(f"{dataset}: {rows[0]['images']} cached images ({rows[0]['fine']} cache); dataset AP x 100 of the merged "
          f"detections, coarse pass alone {100 * rows[0]['ap']:.2f}")
    print(f"{'policy':<40}{'budget':>7}{'AP':>8}{'vs coarse':>10}{'AP_s':>8}{'pixels':>8}{'zooms on':>10}")
    for r in rows[1:]:
        print(f"{r['policy'][:40]:<40}{r['budget']:7.2f}{100 * r['ap']:8.2f}{100 * (r['ap'] - rows[0]['ap']):+10.2f}"
              f"{100 * r['ap_small']:8.2f}{r['pixels_ratio']:8.3f}{100 * r['zoomed_share']:9.0f}%")
    path = write_results("cache_policies", rows, replace={"dataset": dataset},
                         required=("dataset", "images", "policy", "ap", "command", "date"))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
