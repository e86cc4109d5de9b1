"""The real SAHI beside ZoomDet: the same trained detector through the ``sahi`` package.

    python benchmarks/sahi_peer.py --config configs/eval/airbus.yaml \\
        --data ../shared/data/airbus-aircraft/test.json --dataset airbus-test
    python benchmarks/sahi_peer.py --config configs/eval/hituav.yaml \\
        --data ../shared/data/hit-uav/test.json --dataset hituav-test --setting 320:0.2:0.05

Needs ``pip install 'zoomdet[peers]'`` (the dev install has it). For each
``--setting SLICE:OVERLAP:CONFIDENCE`` (default SAHI's benchmark settings on
aerial imagery: 512 px / 0.2 and 640 px / 0.25 at confidence 0.05, the whole-
image pass on), every image goes through

* ``sahi-package``: ``sahi.predict.get_sliced_prediction`` with SAHI's
  ``TorchVisionDetectionModel`` wrapping our detector (the network is the
  same object the engine uses);
* ``sahi``: ZoomDet's built-in policy with identical settings, through the
  zoom engine (``--no-builtin`` skips it);

and once through ``fine`` (the whole image at full resolution), the reference
of ``rel_*``. All are scored by the same COCOeval (1000 detections per image);
pixels and detector calls are counted as the model received them (a forward
hook for SAHI, the engine's cost for ours). Prints a table; writes the rows to
``benchmarks/results/sahi_peer.json`` (replacing that ``--dataset``'s rows)
and ``--out``/detections_*.json as COCO results files.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _setting(text: str) -> tuple[int, float, float]:
    try:
        size, overlap, conf = text.split(":")
        return int(size), float(overlap), float(conf)
    except ValueError:
        raise argparse.ArgumentTypeError(f"setting must look like 512:0.2:0.05 (slice px : overlap : confidence), got {text!r}") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from zoomdet.eval.results import add_dataset_args

    add_dataset_args(ap)
    ap.add_argument("--setting", type=_setting, action="append", metavar="SLICE:OVERLAP:CONF",
                    help="SAHI setting (repeatable; default 512:0.2:0.05 and 640:0.25:0.05)")
    ap.add_argument("--no-builtin", action="store_true", help="skip the built-in sahi policy")
    ap.add_argument("--out", default="runs/bench/sahi_peer", help="folder for detections files (default runs/bench/sahi_peer)")
    ap.add_argument("--results", default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args(argv)

    from zoomdet.config import load_config
    from zoomdet.data.coco import CocoDataset
    from zoomdet.detector.detector import Detector, default_checkpoint
    from zoomdet.eval.coco_eval import coco_metrics
    from zoomdet.eval.evaluator import EvalConfig
    from zoomdet.eval.results import command_line, relative_to_fine, write_results
    from zoomdet.eval.sahi_peer import sahi_model, sahi_predict
    from zoomdet.zoom.engine import ZoomEngine
    from zoomdet.zoom.policies import FinePolicy, SahiConfig, SahiPolicy

    cfg = load_config(EvalConfig, args.config)
    ds = CocoDataset(args.data, image_root=cfg.image_root)
    ids = ds.subset(args.images, cfg.seed)
    det = Detector.from_checkpoint(cfg.checkpoint or str(default_checkpoint()), device=cfg.device, batch_size=1)
    engine = ZoomEngine(det, cfg.zoom)
    settings = args.setting or [(512, 0.2, 0.05), (640, 0.25, 0.05)]
    base = cfg.policies.sahi
    runs: dict[str, dict] = {"fine": {"policy": "fine", "results": [], "pixels": 0, "calls": 0, "seconds": 0.0}}
    sahi_cfgs = {}
    for size, overlap, conf in settings:
        sc = SahiConfig(**{**base.__dict__, "slice_width": size, "slice_height": size, "overlap_width_ratio": overlap,
                           "overlap_height_ratio": overlap, "confidence_threshold": conf, "standard_pred_scale": None})
        tag = f"{size}px/{overlap:g}/conf{conf:g}"
        for kind in ("sahi-package",) + (() if args.no_builtin else ("sahi",)):
            runs[f"{kind} {tag}"] = {"policy": kind, "setting": tag, "results": [], "pixels": 0, "calls": 0, "seconds": 0.0}
            sahi_cfgs[f"{kind} {tag}"] = sc
    models = {key: sahi_model(det, sc.confidence_threshold) for key, sc in sahi_cfgs.items() if key.startswith("sahi-package")}
    image_pixels = 0
    for iid in tqdm(ids, desc="sahi peer", unit="img"):
        image = ds.load_image(iid)
        with Image.open(ds.image_path(iid)) as im:
            arr = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.uint8)
        image_pixels += arr.shape[0] * arr.shape[1]
        for key, run in runs.items():
            if run["policy"] == "sahi-package":
                r = sahi_predict(det, models[key], arr, sahi_cfgs[key])
                dets, pixels, calls, seconds = r.detections, r.model_input_pixels, r.detector_calls, r.seconds
            else:
                pol = FinePolicy() if key == "fine" else SahiPolicy(sahi_cfgs[key])
                res = engine.run(image, pol)
                dets, pixels, calls = res.detections, res.cost.model_input_pixels, res.cost.detector_calls
                seconds = res.timing["total"]
            run["results"] += dets.to_coco(iid)
            run["pixels"] += pixels
            run["calls"] += calls
            run["seconds"] += seconds

    out = Path(args.out) / args.dataset
    out.mkdir(parents=True, exist_ok=True)
    rows, n = [], len(ids)
    for key, run in runs.items():
        m = coco_metrics(ds.coco, run["results"], ids)
        fname = key.replace(" ", "_").replace("/", "_") + ".json"
        (out / f"detections_{fname}").write_text(json.dumps(run["results"]))
        rows.append({"dataset": args.dataset, "images": n, "policy": run["policy"], "setting": run.get("setting"),
                     "budget": None, "seed": cfg.seed, "ap": m["ap"], "ap50": m["ap50"], "ap_small": m["ap_small"],
                     "ap_medium": m["ap_medium"], "ap_large": m["ap_large"],
                     "pixels_ratio": run["pixels"] / image_pixels, "detector_calls_per_image": run["calls"] / n,
                     "time_per_image_s": run["seconds"] / n})
    relative_to_fine(rows, rows[0])  # rows[0] is fine
    for r in rows:
        r["command"] = command_line()
        r["date"] = _dt.date.today().isoformat()
    path = write_results("sahi_peer", rows, replace={"dataset": args.dataset},
                         root=Path(args.results) if args.results else None)
    print(f"{args.dataset}: {n} images, detector {det.checkpoint_id}")
    print(f"{'run':<34} {'AP':>6} {'AP_s':>6} {'AP_m':>6} {'pixels':>7} {'calls':>6} {'s/img':>6} {'relAP':>6}")
    for key, r in zip(runs, rows):
        print(f"{key:<34} {r['ap']:6.3f} {r['ap_small']:6.3f} {r['ap_medium']:6.3f} {r['pixels_ratio']:7.3f} "
              f"{r['detector_calls_per_image']:6.1f} {r['time_per_image_s']:6.2f} {100 * (r['rel_ap'] or 0):5.1f}%")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
