"""The ``zoomdet`` command line.

Each command is a thin layer over one typed config dataclass: ``--config``
loads YAML into it, ``--set section.key=value`` overrides any field, and the
resolved config is saved next to the outputs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

__all__ = ["main", "build_parser"]

EPILOG = """examples:
  zoomdet quickstart                      # the whole pipeline on synthetic data (what make demo runs)
  zoomdet doctor
  zoomdet data synth --out data/synth-val --images 50 --size 2048x1536 --seed 1
  zoomdet data stats ../shared/data/hit-uav/test.json
  zoomdet detector train --config configs/detector/tiny_synth.yaml
  zoomdet evaluate --config configs/eval/synth.yaml --data data/synth-val/annotations.json \\
      --policy coarse --policy fine --policy sahi --policy random --policy oracle --out runs/eval/synth
  zoomdet cache build --config configs/eval/synth.yaml --data data/synth-train/annotations.json --out runs/cache/train
  zoomdet cache build --config configs/eval/airbus.yaml --data ../shared/data/airbus-aircraft/train.json \\
      --fine composed --out runs/cache/airbus-train      # one tiled full-resolution pass per image, ~7x cheaper
  zoomdet detector eval --checkpoint zoomdet/assets/tiny_airbus.pt --data ../shared/data/airbus-aircraft/test.json \\
      --scales 1.0 0.5 0.25                              # the coarse-vs-fine gap by object size
  zoomdet rnet train --cache runs/cache/train --val-cache runs/cache/val --out runs/rnet/rnet.pt
  zoomdet train --algo dqn --env ZoomDet-v0 --cache runs/cache/train --eval-cache runs/cache/val \\
      --env-kwargs rnet:runs/rnet/rnet.pt lam:5 -n 20000 --seed 0
  zoomdet evaluate --config configs/eval/synth.yaml --data data/synth-val/annotations.json \\
      --policy fine --policy greedy --policy logs/dqn/ZoomDet-v0_1/best_model.zip --rnet runs/rnet/rnet.pt --out runs/eval/agent
  zoomdet replay --policy logs/dqn/ZoomDet-v0_1/best_model.zip --data data/synth-val/annotations.json --out runs/replay
  zoomdet detect photos/ --config configs/eval/airbus_gpu.yaml --budget 0.25 --out runs/detect/photos  # no labels, no server
  zoomdet serve --config serving/config.yaml --port 8000
  zoomdet query image.jpg --policy greedy --max-pixels-ratio 0.6 --out annotated.png
  zoomdet query image.jpg --policy greedy-entropy --max-latency-ms 500   # zoom windows that would end later are left out
"""


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 2048x1536, got {text!r}") from None
    if not (16 <= w <= 20000 and 16 <= h <= 20000):
        raise argparse.ArgumentTypeError(f"size {text} out of range: each side must be 16..20000 px")
    return w, h


def _bounded(name: str, cast, low: float, strict: bool = False, high: Optional[float] = None):
    """An argparse ``type``: ``cast(text)``, refused unless ``>= low`` (``> low`` when ``strict``) and, with
    ``high``, ``<= high`` (NaN never passes). ``name`` is what argparse calls it when ``cast`` fails ("invalid
    <name> value")."""
    def parse(text: str):
        v = cast(text)
        if not (v > low if strict else v >= low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low:g}, got {text}")
        if high is not None and not v <= high:
            raise argparse.ArgumentTypeError(f"must be <= {high:g}, got {text}")
        return v

    parse.__name__ = name
    return parse


_non_negative_float = _bounded("_non_negative_float", float, 0)
_positive_float = _bounded("_positive_float", float, 0, strict=True)
_count = _bounded("_count", int, 0)
_positive_int = _bounded("_positive_int", int, 1)
_score = _bounded("_score", float, 0, high=1)


def _add_config_args(p: argparse.ArgumentParser, default: str | None, example: str = "zoom.coarse_scale=0.5") -> None:
    p.add_argument("--config", default=default, metavar="YAML", help=f"config file (default: {default or 'built-in defaults'})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config field, e.g. --set {example} (repeatable; values are YAML)")


def _add_detector_args(p: argparse.ArgumentParser) -> None:
    """Flags that override the detector part of an EvalConfig (evaluate, cache build)."""
    p.add_argument("--images", type=_count, help="N images, a sample drawn with the config's seed (default: config, 0 = all)")
    p.add_argument("--image-root", help="folder the COCO file_name entries are relative to "
                                        "(default: <json dir>/images or the json's dir, whichever holds the files)")
    p.add_argument("--checkpoint", help="detector checkpoint (default: config, then the embedded one)")
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument("--no-progress", action="store_true")


def _detector_overrides(args) -> list[str]:
    """``--set`` overrides plus the EvalConfig flags a command has (those of :func:`_add_detector_args`, and
    ``--rnet`` as ``policies.rnet``, ``--frame-size`` as ``zoom.frame_size``), as ``key=value`` strings."""
    overrides = list(args.overrides)
    for flag, key in (("images", "images"), ("checkpoint", "checkpoint"), ("device", "device"),
                      ("image_root", "image_root"), ("rnet", "policies.rnet"), ("frame_size", "zoom.frame_size")):
        if getattr(args, flag, None) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    return overrides


TRAIN_EPILOG = """\
examples:
  # the recommended agent (zoomdet.agents.train.RECIPE: the image's AP as the reward, a budget per
  # episode, per-window features, a start from greedy-entropy's demonstrations); make demo trains it
  zoomdet train --cache CACHE --eval-cache VAL_CACHE -n 30000 --env-kwargs rnet:RNET.pt \\
      reward:ap lam:0 stop_gain:0 'budget_range:[0.3,0.7]' window_features:true \\
      'window_extras:[density]' exhausted:terminate \\
      --hyperparams demo_rule:greedy-entropy exploration_fraction:0.8
  # the paper's agent: its Q-net on the R-net map, the gain reward minus lam x pixels
  zoomdet train --cache CACHE --eval-cache VAL_CACHE --env-kwargs rnet:RNET.pt lam:5 -n 20000
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoomdet",
        description="ZoomDet: coarse-to-fine object detection for high-resolution imagery\n"
                    "(detect on a downsampled image, zoom into the regions where it pays).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("doctor", help="print versions and device; fail clearly if torchvision's ops do not load; "
                                  "warn where installed versions differ from a source checkout's constraints.txt")

    qs = sub.add_parser("quickstart", help="the whole pipeline on synthetic data: data, cache, R-net, agent, evaluation, replay",
                        description="Synthetic data -> embedded detector -> rollout cache -> R-net -> DQN agent -> "
                                    "evaluation against coarse, fine, sahi, greedy, greedy-entropy, the paper's "
                                    "oracle and the AP oracle (the upper bound) on held-out images -> report, "
                                    "AP-vs-pixels plot and recorded episodes, all under one run folder. Rerunning "
                                    "reuses the finished stages. The agent is the project's recipe "
                                    "(agent_recipe=dqfd: AP reward, per-window features, a start from "
                                    "greedy-entropy's demonstrations) or the paper's (agent_recipe=paper).")
    _add_config_args(qs, None, example="train_images=48 (fields of QuickstartConfig: out, width, height, "
                                       "train_images, tune_images, val_images, agent_steps, agent_recipe, lam, "
                                       "budgets, ...)")
    qs.add_argument("--out", help="run folder (default runs/quickstart)")
    qs.add_argument("--no-progress", action="store_true")

    data = sub.add_parser("data", help="make or inspect datasets").add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = data.add_parser("synth", help="write a synthetic high-resolution COCO dataset (images + annotations.json)")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--images", type=_positive_int, default=20, help="number of images (default 20)")
    synth.add_argument("--size", type=_size, default=(2048, 1536), help="WIDTHxHEIGHT in pixels (default 2048x1536)")
    synth.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    stats = data.add_parser("stats", help="counts and object-size histogram of a COCO json")
    stats.add_argument("ann", help="COCO annotation json")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.add_argument("--image-root", help="image folder (default: guessed beside the json)")
    stats.add_argument("--no-check-files", action="store_true", help="do not check that every image file exists")

    det = sub.add_parser("detector", help="train or check the base detector").add_subparsers(dest="det_command", required=True, metavar="ACTION")
    train = det.add_parser(
        "train", help="train a detector on a COCO dataset at the coarse and fine scales",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train one detector for both passes on random crops of the full-resolution images\n"
                    "(fields of train: and model: in the config, any of them with --set).",
        epilog="examples:\n"
               "  zoomdet detector train --config configs/detector/tiny_hituav.yaml\n"
               "  # fine-tune a shipped checkpoint (train.init: same model and categories) with window-sized\n"
               "  # inputs beside the usual ones (train.crop_sizes), 2,400 iterations:\n"
               "  zoomdet detector train --config configs/detector/tiny_hituav_ft.yaml")
    _add_config_args(train, "configs/detector/tiny_synth.yaml")
    train.add_argument("--device", choices=["cpu", "cuda"], help="override train.device")
    train.add_argument("--no-resume", action="store_true", help="start over even if OUT/last.pt exists")
    ev_det = det.add_parser("eval", help="COCO metrics of whole-image detection at several scales")
    ev_det.add_argument("--checkpoint", help="detector checkpoint (default: the embedded one)")
    ev_det.add_argument("--data", required=True, help="COCO annotation json")
    ev_det.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5], help="resize factors (default 1.0 0.5)")
    ev_det.add_argument("--images", type=_count, default=0, help="N images, a seeded sample (0 = all)")
    ev_det.add_argument("--image-root", help="image folder (default: guessed beside the json)")
    ev_det.add_argument("--out", help="also write the report to this JSON file (it is printed to stdout as JSON, "
                                      "with one summary line per scale on stderr)")
    ev_det.add_argument("--device", default="cpu")
    ev_det.add_argument("--set", dest="settings", action="append", default=[], metavar="FIELD=VALUE",
                        help="run the checkpoint with another inference setting of its model config, e.g. "
                             "--set box_head_rank=64 (repeatable; score_thresh, nms_thresh, detections_per_img, rpn_pre_nms_top_n, "
                             "rpn_post_nms_top_n, rpn_score_thresh, roi_sampling_ratio, box_head_rank)")

    ev = sub.add_parser("evaluate", help="run policies through the zoom engine; write report.json/.md and pareto.png",
                        description="Run policies through the zoom engine over a COCO dataset; write report.json, "
                                    "report.md, pareto.png and each run's detections. --set max_latency_ms=MS scores "
                                    "answers under a deadline per image (zoom windows that would end later are left "
                                    "out; the report counts them and the late answers).")
    _add_config_args(ev, None)
    ev.add_argument("--data", required=True, help="COCO annotation json")
    ev.add_argument("--policy", action="append", required=True, metavar="NAME",
                    help="policy to run: coarse, fine, sahi, random, oracle, oracle-ap, greedy, greedy-entropy, "
                         "greedy-entropy+miss (with --set policies.miss_map=PATH, a head of benchmarks/miss_map.py), or a "
                         "trained agent logs/dqn/ZoomDet-v0_1/best_model.zip, or DQN agents joined by + (a.zip+b.zip: one "
                         "policy on their mean Q-values) (repeatable)")
    ev.add_argument("--rnet", help="R-net checkpoint for the greedy policy (default: config policies.rnet)")
    ev.add_argument("--out", required=True, help="output folder")
    ev.add_argument("--budget", type=float, nargs="+", metavar="RATIO",
                    help="max_pixels_ratio sweep for sequential policies (e.g. --budget 0.4 0.55 0.7)")
    _add_detector_args(ev)

    dt = sub.add_parser("detect", help="run a policy on image files or folders (no annotations, no server); "
                                       "write each answer with its cost to detections.jsonl",
                        description="Run a policy on image files, or on the images in folders, through the zoom "
                                    "engine, and write each image's answer (the service's: detections in "
                                    "full-resolution pixels, zoom regions, pixels, detector calls, time per stage) "
                                    "to OUT/detections.jsonl as it finishes. Rerun the same command to resume: "
                                    "answers made with the same settings are kept. A file that is not a readable "
                                    "image gets an error line and the others still run; the exit status is then 1. "
                                    "Use the eval config of the detector your images need, e.g. "
                                    "configs/eval/airbus_gpu.yaml.")
    _add_config_args(dt, None)
    dt.add_argument("paths", nargs="+", metavar="PATH", help="image files (JPEG, PNG, TIFF, BMP, WebP) or folders of them")
    dt.add_argument("--out", required=True, help="output folder: detections.jsonl (and images/*.png with --render)")
    dt.add_argument("--policy", default="greedy-entropy",
                    help="greedy-entropy (default: needs nothing trained), greedy (with --rnet), coarse, fine, sahi, "
                         "random, or a trained agent .zip")
    dt.add_argument("--rnet", help="R-net checkpoint for the greedy policy (default: config policies.rnet)")
    dt.add_argument("--budget", type=_positive_float, metavar="RATIO",
                    help="max_pixels_ratio per image, coarse pass included (default: the config's zoom.max_pixels_ratio)")
    dt.add_argument("--max-latency-ms", type=_positive_float, metavar="MS",
                    help="deadline per image from the start of its decode: zoom windows that would end past it are "
                         "left out (the coarse pass always runs)")
    dt.add_argument("--score-threshold", type=_score, default=0.05, metavar="S",
                    help="leave detections below this score out of the answers (default 0.05, the service's)")
    dt.add_argument("--frame-size", type=_positive_int, metavar="PX",
                    help="run an image with a side longer than PX as overlapping frames of at most PX, one zoom "
                         "episode each (zoom.frame_size; overlap zoom.frame_overlap, 512 px): satellite scenes zoomed as "
                         "the images the config was made for, e.g. 3072 with configs/eval/airbus_gpu.yaml (its 2560-px "
                         "extracts). On Airbus it paid for scenes of 4x the extracts' side; up to 3x the whole scene "
                         "did better (README, Whole scenes). Default: the config's, none")
    dt.add_argument("--max-image-pixels", type=_count, metavar="N",
                    help="the largest image (width x height) to decode, checked on its header; 0 = no limit "
                         "(default: PIL's decompression-bomb limit, about 179M pixels: a 13,000 x 13,000 scene)")
    dt.add_argument("--recursive", action="store_true", help="also take the images in the folders' subfolders")
    dt.add_argument("--render", action="store_true", help="also draw each answer to OUT/images/<name>.png")
    dt.add_argument("--workers", type=_count, default=0,
                    help="0 (default): run here; N: shards of 4 images as tasks of a local Ray instance of N CPUs, one "
                         "torch thread each")
    dt.add_argument("--ray-address", help="run the tasks on an existing Ray cluster, e.g. auto or ray://head:10001 (every "
                                          "node must see the files and models at the same paths)")
    dt.add_argument("--checkpoint", help="detector checkpoint (default: config, then the embedded one)")
    dt.add_argument("--device", help="cpu or cuda")
    dt.add_argument("--no-progress", action="store_true")

    cache = sub.add_parser("cache", help="rollout cache: detector outputs for every reachable window, computed once") \
        .add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    cb = cache.add_parser("build", help="run the coarse pass and every reachable fine window on each image; sharded, resumable")
    _add_config_args(cb, None)
    cb.add_argument("--data", required=True, help="COCO annotation json")
    cb.add_argument("--out", required=True, help="cache folder (rerun the same command to resume)")
    _add_detector_args(cb)
    cb.add_argument("--shard-size", type=_positive_int, default=4, help="images per shard (default 4)")
    cb.add_argument("--workers", type=_count, help="parallel Ray tasks on a local Ray instance (default: CPU count; 0 = no Ray)")
    cb.add_argument("--ray-address", help="run on an existing Ray cluster, e.g. auto or ray://head:10001")
    cb.add_argument("--exclude-cache", action="append", default=[], metavar="CACHE",
                    help="leave out the images of another cache (e.g. the eval cache of the same split, to train on the "
                         "split's other images); --images then samples from the rest; repeatable")
    cb.add_argument("--exclude-trained-on", action="append", default=[], metavar="DETECTOR_YAML",
                    help="leave out the images a detector was trained on, as its training config draws them "
                         "(configs/detector/*.yaml: train.data sampled by train.images and train.seed); its "
                         "train.data must be this --data file. Caches then hold only images the detector never "
                         "saw, where zooming pays as it does on new images; repeatable")
    cb.add_argument("--fine", choices=["exact", "composed", "composed-full"], default="exact",
                    help="exact: the detector on every reachable window (default); composed: one full-resolution pass "
                         "per image over tiles of the smallest window, each window's detections composed from it "
                         "(about 10x cheaper; approximate for objects cut by a window edge); composed-full: composed "
                         "from one pass of the whole image (cheaper still; the window sees its whole context). Check "
                         "an approximate cache with benchmarks/cache_policies.py before training on it")
    cb.add_argument("--augment", nargs="+", default=["identity"], metavar="VIEW",
                    help="views of each image to cache, each a record of its own: identity (the image as it is; "
                         "default), hflip, vflip, rot180, transpose, rot90, rot270, transverse (the 8 flips and "
                         "rotations). E.g. --augment identity hflip doubles the training episodes; all 8 suit "
                         "overhead imagery. Without identity the cache holds only the other views, for zoomdet "
                         "cache merge with a cache of the images themselves")
    cm = cache.add_parser("merge", help="one cache from several finished ones (same detector, zoom config and --fine "
                                        "mode; no image in two), e.g. two splits' images the detector never saw")
    cm.add_argument("caches", nargs="+", metavar="CACHE", help="cache folders to merge (at least two)")
    cm.add_argument("--out", required=True, help="new cache folder")

    rnet = sub.add_parser("rnet", help="train the R-net that predicts where zooming gains accuracy") \
        .add_subparsers(dest="rnet_command", required=True, metavar="ACTION")
    rt = rnet.add_parser("train", help="fit the R-net on a rollout cache; report window-gain correlations")
    rt.add_argument("--cache", required=True, help="rollout cache folder (training images)")
    rt.add_argument("--val-cache", help="separate validation cache (default: hold out val_fraction of --cache)")
    rt.add_argument("--out", required=True, help="checkpoint path; metrics go to PATH.json")
    rt.add_argument("--config", metavar="YAML", help="R-net options (RNetConfig fields)")
    rt.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override an R-net option, e.g. --set epochs=500, or --set target=ap to fit the AP "
                         "points each cached window adds instead of the paper's gain")
    rt.add_argument("--no-progress", action="store_true")

    tr = sub.add_parser("train", help="train a zoom agent (Q-net DQN or MaskablePPO) on a rollout cache, rl-zoo style",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Train an agent on ZoomDet-v0 (episodes are images of a rollout cache). Artifacts go\n"
                                    "to LOG_FOLDER/ALGO/ENV_N/: final and best model, checkpoints, config.yml, args.yml,\n"
                                    "zoomdet.json, evaluations.npz.",
                        epilog=TRAIN_EPILOG)
    tr.add_argument("--algo", default="dqn", choices=["dqn", "ppo_mask"], help="dqn: the paper's Q-net (default); ppo_mask: MaskablePPO")
    tr.add_argument("--env", default="ZoomDet-v0", help="environment id (default ZoomDet-v0)")
    tr.add_argument("--cache", required=True, help="rollout cache of the training images")
    tr.add_argument("--eval-cache", help="rollout cache of held-out images for --eval-freq (best_model.zip)")
    tr.add_argument("-n", "--n-timesteps", type=int, default=-1, help="environment steps (default: the config file's)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--conf-file", help="hyperparameter YAML (default configs/agents/ALGO.yml)")
    tr.add_argument("--hyperparams", nargs="+", default=[], metavar="KEY:VALUE", help="override hyperparameters, e.g. learning_rate:1e-3; demo_rule:greedy-entropy (DQN) "
                         "first learns from the rule's demonstrations and keeps their losses (DQfD; also demo_episodes, "
                         "demo_pretrain_steps, demo_margin, demo_weight, demo_td_weight, demo_stop_gain); double_q:true "
                         "(DQN) takes Double DQN's TD target")
    tr.add_argument("--env-kwargs", nargs="+", default=[], metavar="KEY:VALUE",
                    help="environment options (ZoomEnvConfig), e.g. rnet:runs/rnet/rnet.pt lam:5 max_pixels_ratio:0.6; "
                         "reward:ap (the image's COCO AP change), reward:dataset-ap (the change of the cache's COCO AP, the "
                         "other images at their coarse pass), budget_range:[0.3,0.7] (a budget per episode: one "
                         "agent for every per-request budget), extra_channels:[entropy,scores,small,budget] (context "
                         "planes from the coarse detections), stop_gain:0 (the agent alone decides when to stop), "
                         "window_features:true (the Q-net scores each window from what it holds, one MLP for all), "
                         "window_extras:[density] (each window's sums per unit of cost too), window_extras:[density,classes] "
                         "(and each class's, the category ids read from the cache's detector; or classes:[1,2,...]), "
                         "window_extras:[density,position] (and each window's centre, fractions of the image's size)")
    tr.add_argument("--eval-freq", type=int, default=5000, help="evaluate on --eval-cache every N steps (default 5000; <=0 off)")
    tr.add_argument("--eval-episodes", type=_count, default=0, help="episodes per evaluation (default: one per cached image)")
    tr.add_argument("--save-freq", type=int, default=-1, help="checkpoint every N steps (default off)")
    tr.add_argument("--tensorboard-log", help="TensorBoard folder (needs pip install 'zoomdet[tensorboard]')")
    tr.add_argument("-f", "--log-folder", default="logs", help="root of the run folders (default logs)")
    tr.add_argument("--trained-agent", help="resume from this model .zip (and its replay buffer when saved beside it)")
    tr.add_argument("--verbose", type=int, default=0)
    tr.add_argument("--no-progress", action="store_true")

    ex = sub.add_parser("export", help="write a trained agent (or the best of several seeds) to a folder that loads "
                                       "anywhere: model, R-net, zoomdet.json",
                        description="Copy an agent's model and R-net into OUT with a zoomdet.json whose paths are "
                                    "relative to OUT, so `zoomdet evaluate --policy OUT/best_model.zip`, `zoomdet "
                                    "detect` and the service's `agent` load it from any folder. Given several runs of "
                                    "one recipe (e.g. seeds), keeps the one with the best return on their common eval "
                                    "cache (evaluations.npz: the figure each run chose its best_model.zip by).")
    ex.add_argument("models", nargs="+", metavar="MODEL", help="best_model.zip (or checkpoint) of zoomdet train runs")
    ex.add_argument("--out", required=True, help="folder to write")
    ex.add_argument("--force", action="store_true", help="replace an agent already in --out")

    rp = sub.add_parser("replay", help="run a policy through the live engine and record one episode file per image")
    _add_config_args(rp, "configs/eval/synth.yaml")
    rp.add_argument("--policy", required=True, help="a trained agent .zip or a policy name (greedy, oracle, ...)")
    rp.add_argument("--data", required=True, help="COCO annotation json")
    rp.add_argument("--out", required=True, help="output folder (episode_<image id>.json, index.json)")
    rp.add_argument("--rnet", help="R-net checkpoint for the greedy policy")
    rp.add_argument("--budget", type=float, help="max_pixels_ratio (default: the config's zoom.max_pixels_ratio)")
    rp.add_argument("--lam", type=_non_negative_float, help="λ of the recorded rewards (default: the agent's training λ)")
    rp.add_argument("--render", action="store_true", help="also draw a PNG per step and an animated GIF per episode")
    _add_detector_args(rp)

    sv = sub.add_parser("serve", help="start the HTTP detection service (Ray Serve) from a config file",
                        description="Start Ray Serve with a ZoomDet config and block until Ctrl-C. Configs: "
                                    "serving/config.yaml (2-core CPU, a detector deployment that batches across "
                                    "requests), serving/config.colocated.yaml (2-core CPU, the detector inside each "
                                    "ingress replica: no Serve call per detector pass, the lowest latency), "
                                    "serving/config.gpu.yaml (GPU cluster). "
                                    "Same as `serve run CONFIG`, plus --host/--port and a Ray instance without dashboard.")
    sv.add_argument("--config", default="serving/config.yaml", help="Serve config YAML (default serving/config.yaml)")
    sv.add_argument("--host", help="HTTP bind address (default: the config's, 127.0.0.1); a local Ray instance's own "
                                   "ports stay on 127.0.0.1 whatever this is")
    sv.add_argument("--port", type=int, help="port (default: the config's, 8000)")
    sv.add_argument("--address", help="an existing Ray cluster (default: start a local, loopback-only Ray instance)")
    sv.add_argument("--num-cpus", type=_positive_int, help="CPUs of the local Ray instance (default: all)")
    sv.add_argument("--non-blocking", action="store_true", help="deploy and return (the service stops with the process)")

    q = sub.add_parser("query", help="send an image to a running service; print detections and cost",
                       description="POST an image to /v1/detect, print the detections and what they cost; "
                                   "--out saves the image with boxes and zoom regions drawn.")
    q.add_argument("image", help="image file (JPEG, PNG, TIFF, BMP, WebP)")
    q.add_argument("--url", default="http://127.0.0.1:8000", help="service URL (default http://127.0.0.1:8000)")
    q.add_argument("--policy", help="agent, greedy, fine, coarse, sahi, random, greedy-entropy (default: the service's)")
    q.add_argument("--max-pixels-ratio", type=float, help="pixel budget, coarse pass included")
    q.add_argument("--max-steps", type=int, help="most zoom windows")
    q.add_argument("--score-threshold", type=float, help="drop detections below this score")
    q.add_argument("--max-latency-ms", type=_positive_float, metavar="MS",
                   help="deadline from the request's arrival: zoom windows that would end past it are left out "
                        "(the coarse pass always runs; default: the service's)")
    q.add_argument("--trace", help="also request the per-step episode and write it to this JSON file")
    q.add_argument("--out", help="save the image with detections and zoom regions drawn (PNG)")
    q.add_argument("--json", action="store_true", help="print the raw JSON response")
    return parser


def _cmd_doctor(args) -> int:
    from zoomdet.doctor import run_doctor

    return run_doctor()


def _cmd_data(args) -> int:
    if args.data_command == "synth":
        from zoomdet.data.synth import SynthConfig, generate_dataset

        w, h = args.size
        path = generate_dataset(SynthConfig(images=args.images, width=w, height=h, seed=args.seed), args.out)
        print(f"wrote {args.images} images and {path}")
        return 0
    from zoomdet.data.coco import CocoDataset, dataset_stats

    s = dataset_stats(CocoDataset(args.ann, image_root=args.image_root, check_files=not args.no_check_files))
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"{args.ann}: {s['images']} images, {s['annotations']} objects, {s['crowd_regions']} crowd/ignore regions")
    print(f"image sizes: {', '.join(s['image_sizes'])}")
    print("per category: " + ", ".join(f"{k} {v}" for k, v in s["per_category"].items()))
    total = max(1, s["annotations"])
    print("object size sqrt(w*h), px:")
    for bucket, n in s["size_histogram_px"].items():
        print(f"  {bucket:>6}  {n:7d}  {100 * n / total:5.1f}%  {'#' * round(40 * n / total)}")
    g = s.get("suggested")
    if g:
        print(f"suggested (median object {g['median_object_px']} px, {g['median_object_px_at_coarse']} px at the coarse scale):")
        print(f"  evaluate / cache:  --set zoom.coarse_scale={g['coarse_scale']:g} --budget "
              + " ".join(f"{b:g}" for b in g["budgets"]))
        print(f"  detector train:    --set model.num_classes={g['num_classes']} --set train.crop_size={g['crop_size']} "
              f"--set 'train.scales={json.dumps(g['scales'])}' --set 'model.anchor_sizes={json.dumps(g['anchor_sizes'])}'")
    return 0


def _cmd_detector(args) -> int:
    if args.det_command == "train":
        from zoomdet.config import load_config
        from zoomdet.detector.train import DetectorTrainConfig, train_detector

        overrides = list(args.overrides) + ([f"train.device={args.device}"] if args.device else [])
        cfg = load_config(DetectorTrainConfig, args.config, overrides)
        path = train_detector(cfg, resume=not args.no_resume)
        print(f"checkpoint: {path}")
        return 0
    import yaml

    from zoomdet.config import ConfigError, apply_overrides
    from zoomdet.data.coco import CocoDataset
    from zoomdet.detector.detector import Detector, default_checkpoint
    from zoomdet.detector.train import evaluate_scales

    settings = {}
    for item in args.settings:  # parsed as every other --set is; only flat numeric fields make sense here
        try:
            (key, value), = apply_overrides({}, [item]).items()
        except (ConfigError, yaml.YAMLError):
            value = None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            print(f"zoomdet detector eval: --set {item!r}: give FIELD=NUMBER, e.g. rpn_pre_nms_top_n=2000", file=sys.stderr)
            return 2
        settings[key] = value
    try:
        det = Detector.from_checkpoint(args.checkpoint or default_checkpoint(), device=args.device, settings=settings)
    except ValueError as e:
        print(f"zoomdet detector eval: {e}", file=sys.stderr)
        return 2
    rep = evaluate_scales(det, CocoDataset(args.data, image_root=args.image_root), args.scales, args.images)
    rep["settings"] = settings
    print(json.dumps(rep, indent=2))  # stdout holds the report alone, so `> eval.json` is valid JSON
    for s, m in rep["scales"].items():
        print(f"scale {s}: AP {m['ap']:.3f}  AP_small {m['ap_small']:.3f}  AP_medium {m['ap_medium']:.3f}  "
              f"AP_large {m['ap_large']:.3f}  AP50 {m['ap50']:.3f}  {m['seconds_per_image']:.2f} s/img", file=sys.stderr)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rep, indent=2))
    return 0


def _cmd_evaluate(args) -> int:
    from zoomdet.config import load_config
    from zoomdet.eval.evaluator import EvalConfig, evaluate

    overrides = _detector_overrides(args)
    if args.budget:
        overrides.append(f"budgets={json.dumps(args.budget)}")
    cfg = load_config(EvalConfig, args.config, overrides)
    report = evaluate(cfg, args.data, args.policy, args.out, progress=not args.no_progress)
    from zoomdet.eval.evaluator import report_markdown

    print(report_markdown(report))
    print(f"wrote {Path(args.out) / 'report.json'}, report.md, pareto.png")
    return 0


def _cmd_cache(args) -> int:
    from zoomdet.config import load_config
    from zoomdet.detector.detector import default_checkpoint
    from zoomdet.eval.evaluator import EvalConfig
    from zoomdet.rnet.cache import build_cache, merge_caches

    if args.cache_command == "merge":
        merged = merge_caches(args.caches, args.out)
        print(f"cache {args.out}: {len(merged)} images from {len(args.caches)} caches, detector {merged.detector_id}")
        return 0
    cfg = load_config(EvalConfig, args.config, _detector_overrides(args))
    from zoomdet.detector.train import trained_on

    seen = [i for path in args.exclude_trained_on for i in trained_on(path, [args.data])[1]]
    cache = build_cache(args.data, args.out, cfg.checkpoint or str(default_checkpoint()), cfg.zoom, images=cfg.images,
                        shard_size=args.shard_size, workers=args.workers, ray_address=args.ray_address,
                        device=cfg.device, batch_size=cfg.batch_size, progress=not args.no_progress, seed=cfg.seed,
                        image_root=cfg.image_root, fine=args.fine, settings=cfg.detector_settings or None,
                        exclude=args.exclude_cache, exclude_ids=seen, augment=args.augment)
    print(f"cache {args.out}: {len(cache)} images, detector {cache.detector_id}")
    return 0


def _cmd_rnet(args) -> int:
    from zoomdet.config import load_config
    from zoomdet.rnet.model import RNetConfig
    from zoomdet.rnet.train import train_rnet

    cfg = load_config(RNetConfig, args.config, args.overrides)
    m = train_rnet(args.cache, args.out, cfg, val_cache=args.val_cache, progress=not args.no_progress)
    own = "AP-points" if cfg.target == "ap" else "window-gain"
    print(f"R-net {args.out} (target {cfg.target}): validation {own} Spearman {m['val_spearman']:.3f}, Pearson "
          f"{m['val_pearson']:.3f} ({m['val_windows']} windows of {m['val_images']} images); entropy state: Spearman "
          f"{m['entropy_val_spearman']:.3f}")
    if cfg.target != "ap":
        print(f"against the AP points each window adds: Spearman {m['val_ap_spearman']:.3f} "
              f"(entropy state {m['entropy_val_ap_spearman']:.3f})")
    print(f"metrics: {args.out}.json")
    return 0


def _cmd_train(args) -> int:
    from zoomdet.agents.train import TrainArgs, parse_key_values, train_agent

    targs = TrainArgs(algo=args.algo, env=args.env, cache=args.cache, eval_cache=args.eval_cache, n_timesteps=args.n_timesteps,
                      seed=args.seed, conf_file=args.conf_file, hyperparams=parse_key_values(args.hyperparams),
                      env_kwargs=parse_key_values(args.env_kwargs), eval_freq=args.eval_freq, eval_episodes=args.eval_episodes,
                      save_freq=args.save_freq, tensorboard_log=args.tensorboard_log, log_folder=args.log_folder,
                      trained_agent=args.trained_agent, progress=not args.no_progress, verbose=args.verbose)
    run = train_agent(targs)
    best = run / "best_model.zip"
    print(f"run folder: {run}")
    print(f"evaluate it: zoomdet evaluate --policy {best if best.is_file() else run / (args.env + '.zip')} --policy fine "
          f"--data ANN.json --out runs/eval/agent")
    return 0


def _cmd_replay(args) -> int:
    from zoomdet.config import load_config
    from zoomdet.eval.evaluator import EvalConfig
    from zoomdet.eval.replay import replay

    cfg = load_config(EvalConfig, args.config, _detector_overrides(args))
    files = replay(cfg, args.data, args.policy, args.out, lam=args.lam, max_pixels_ratio=args.budget, render=args.render,
                   progress=not args.no_progress)
    print(f"wrote {len(files)} episodes and {Path(args.out) / 'index.json'}")
    return 0


def _cmd_detect(args) -> int:
    from zoomdet.config import load_config
    from zoomdet.eval.detect import detect_files, image_files
    from zoomdet.eval.evaluator import EvalConfig

    files = image_files(args.paths, recursive=args.recursive)  # bad paths fail before the model loads
    cfg = load_config(EvalConfig, args.config, _detector_overrides(args))
    s = detect_files(cfg, files, args.policy, args.out, max_pixels_ratio=args.budget, max_latency_ms=args.max_latency_ms,
                     score_threshold=args.score_threshold, render=args.render, progress=not args.no_progress,
                     workers=args.workers, ray_address=args.ray_address, max_image_pixels=args.max_image_pixels)
    print(f"{s.images} of {len(files)} images answered ({s.resumed} kept from before), {s.detections} detections; "
          f"mean pixels_ratio {s.pixels_ratio:.3f}, mean {s.total_ms:.0f} ms per image")
    if args.max_latency_ms is not None:
        print(f"deadline {args.max_latency_ms:g} ms: {s.regions_dropped} zoom windows left out, {s.late} answers late")
    print(f"wrote {s.out / 'detections.jsonl'}" + (f" and {s.out / 'images'}" if args.render else ""))
    for f, why in s.failed.items():
        print(f"zoomdet detect: no answer for {f}: {why}", file=sys.stderr)
    return 1 if s.failed else 0


def _cmd_quickstart(args) -> int:
    from zoomdet.config import load_config
    from zoomdet.quickstart import QuickstartConfig, run_quickstart

    overrides = list(args.overrides) + ([f"out={args.out}"] if args.out else [])
    run_quickstart(load_config(QuickstartConfig, args.config, overrides), progress=not args.no_progress)
    return 0


def _cmd_export(args) -> int:
    from zoomdet.agents.export import export_agent
    from zoomdet.agents.policy import AgentPolicy

    info = export_agent(args.models, args.out, force=args.force)
    ex = info["exported"]
    for c in ex["candidates"]:
        if "eval_return" in c:
            mark = "*" if c["model"] == ex["model"] else " "
            print(f"{mark} {c['model']}: seed {c['seed']}, eval-cache return {c['eval_return']:.3f} at step {c['eval_step']}")
    agent = AgentPolicy.from_path(Path(args.out) / "best_model.zip")  # the folder loads on its own
    print(f"wrote {args.out}: {ex['model']} ({ex['picked_by']}), {agent.algo}, detector {info['detector_id']}"
          + (f", R-net {ex['rnet']}" if ex["rnet"] else ""))
    return 0


def _cmd_serve(args) -> int:
    from zoomdet.serving.launch import serve_config

    serve_config(args.config, host=args.host, port=args.port, address=args.address, num_cpus=args.num_cpus,
                 blocking=not args.non_blocking)
    return 0


def _cmd_query(args) -> int:
    import requests

    from zoomdet.serving.client import ServiceError, ZoomDetClient

    client = ZoomDetClient(args.url)
    try:
        ans = client.detect(args.image, policy=args.policy, max_pixels_ratio=args.max_pixels_ratio,
                            max_steps=args.max_steps, score_threshold=args.score_threshold,
                            max_latency_ms=args.max_latency_ms, return_trace=bool(args.trace))
    except ServiceError as e:
        if e.retry_after is not None:  # 429 (this client has too many requests in flight) or 503 (replica restarting)
            print(f"zoomdet query: the service is busy ({e}); retry in {e.retry_after:g} s", file=sys.stderr)
        else:
            print(f"zoomdet query: the service refused the image: {e}", file=sys.stderr)
        return 1
    except requests.RequestException as e:  # connection refused, timeouts
        print(f"zoomdet query: cannot reach {args.url}: {e}; is `zoomdet serve` running?", file=sys.stderr)
        return 1
    if args.trace:
        trace = {**ans["trace"], "image": {**ans["trace"]["image"], "path": str(Path(args.image).resolve())}}
        Path(args.trace).write_text(json.dumps(trace, indent=1))
    if args.json:
        print(json.dumps({k: v for k, v in ans.items() if k != "trace"}, indent=1))
    else:
        c, t = ans["cost"], ans["timing_ms"]
        print(f"{args.image}: {ans['image']['width']}x{ans['image']['height']}, policy {ans['policy']}, "
              f"{len(ans['detections'])} detections, {len(ans['regions'])} zoom regions")
        print(f"cost: pixels_ratio {c['pixels_ratio']:.3f}, {c['detector_calls']} detector calls, "
              f"{t['total']:.0f} ms (coarse {t['coarse']:.0f}, fine {t['fine']:.0f}, decode {t['decode']:.0f})")
        if ans.get("regions_dropped") or ans.get("deadline_exceeded"):
            print(f"deadline {ans['max_latency_ms']:g} ms: {ans['regions_dropped']} zoom windows left out"
                  + (", and the answer still came late" if ans["deadline_exceeded"] else ""))
        if ans.get("budget_exceeded"):
            print(f"note: policy {ans['policy']} ignores budgets: it spent {c['pixels_ratio']:.3f} of a "
                  f"max_pixels_ratio of {ans['max_pixels_ratio']:g}")
        for d in sorted(ans["detections"], key=lambda d: -d["score"])[:20]:
            print(f"  {d['label']:>10} {d['score']:.2f}  [{', '.join(f'{v:.0f}' for v in d['box_xyxy'])}]  {d['stage']}")
        if len(ans["detections"]) > 20:
            print(f"  ... {len(ans['detections']) - 20} more (--json prints all)")
    if args.out:
        from zoomdet.viz import save_result_image

        save_result_image(args.image, ans["detections"], ans["regions"], args.out, frames=ans.get("frames", []))
        print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from zoomdet.config import ConfigError
    from zoomdet.data.coco import DatasetError

    commands = {"doctor": _cmd_doctor, "data": _cmd_data, "detector": _cmd_detector, "evaluate": _cmd_evaluate,
                "cache": _cmd_cache, "rnet": _cmd_rnet, "train": _cmd_train, "replay": _cmd_replay, "detect": _cmd_detect,
                "export": _cmd_export,
                "quickstart": _cmd_quickstart, "serve": _cmd_serve, "query": _cmd_query}
    if args.command not in commands:
        parser.error(f"unknown command {args.command}")
    try:
        return commands[args.command](args)
    except (ConfigError, DatasetError, OSError, ValueError) as e:  # OSError: a missing file, a file where a folder
        print(f"zoomdet {args.command}: error: {e}", file=sys.stderr)  # should be, no permission, a full disk
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
