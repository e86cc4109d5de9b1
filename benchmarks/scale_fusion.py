"""Two scales of one detector as an ensemble: whole images at two scales, merged by NMS or fused.

    python benchmarks/scale_fusion.py --checkpoint zoomdet/assets/tiny_airbus.pt \\
        --data ../shared/data/airbus-aircraft/val.json --dataset airbus-val --pair 0.25+0.5 --pair 0.5+1.0

Runs the detector on every whole image at each scale named (1.0 always, the
reference), then scores, by the same COCOeval as ``zoomdet evaluate`` (1000
detections per image): each scale alone, and each ``--pair`` merged two ways,
class-wise NMS at IoU 0.5 (what the ``replace`` merge does where windows
overlap) and :func:`zoomdet.zoom.merge.fuse_boxes` (the ``fuse`` merge). Rows
``detector@<scales>/<merge>`` go to ``benchmarks/results/scale_fusion.json``
(replacing ``--dataset``'s rows), with pixels (the sum of scale²) and AP and
time relative to scale 1.0 (time: the detector passes, summed).

This is the evidence for ``zoom.merge.method: fuse``: if a fused pair beats the
full-resolution pass on whole images, a zoom policy that fuses its windows with
the coarse pass can beat it with fewer pixels.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_pair(text: str) -> tuple[float, float]:
    try:
        a, b = (float(x) for x in text.split("+"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a pair is two scales joined by '+', e.g. 0.25+0.5; got {text!r}") from None
    if not (0 < a <= 4 and 0 < b <= 4) or a == b:
        raise argparse.ArgumentTypeError(f"scales must be two different values in (0, 4], got {text!r}")
    return a, b


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="detector checkpoint")
    ap.add_argument("--data", required=True, help="COCO annotation json of the images to score")
    ap.add_argument("--dataset", required=True, help="name of the rows (e.g. airbus-val)")
    ap.add_argument("--pair", type=parse_pair, action="append", required=True, metavar="A+B",
                    help="two whole-image scales to merge, e.g. 0.25+0.5 (repeatable)")
    ap.add_argument("--images", type=int, default=0, help="N images, a seeded sample (default 0 = all)")
    ap.add_argument("--fuse-iou", type=float, default=0.55, help="IoU at which boxes join a cluster (default 0.55)")
    args = ap.parse_args(argv)

    from torchvision.ops import batched_nms
    from tqdm import tqdm

    from zoomdet.data.coco import CocoDataset
    from zoomdet.detector.detector import Detector
    from zoomdet.eval.coco_eval import coco_metrics
    from zoomdet.eval.results import command_line, write_results
    from zoomdet.types import Detections, Window
    from zoomdet.zoom.merge import fuse_boxes

    ds = CocoDataset(args.data)
    det = Detector.from_checkpoint(args.checkpoint)
    ids = ds.subset(args.images)
    scales = sorted({1.0, *(s for p in args.pair for s in p)})
    found: dict[float, dict[int, Detections]] = {s: {} for s in scales}
    seconds = {s: 0.0 for s in scales}
    for iid in tqdm(ids, desc="detect", unit="img"):
        image = ds.load_image(iid, keep_uint8=True)
        H, W = image.shape[1:]
        for s in scales:
            t = time.perf_counter()
            found[s][iid] = det.detect(image, [Window.full(W, H, s)], features=False)[0]
            seconds[s] += time.perf_counter() - t

    def nms(d: Detections) -> Detections:
        return d.select(batched_nms(d.boxes, d.scores, d.labels, 0.5))

    runs = {f"detector@{s:g}": ([s], None) for s in scales}
    for a, b in args.pair:
        runs[f"detector@{a:g}+{b:g}/nms"] = ([a, b], nms)
        runs[f"detector@{a:g}+{b:g}/fuse"] = ([a, b], lambda d: fuse_boxes(d, args.fuse_iou)[0])
    command, today = command_line(), _dt.date.today().isoformat()
    rows = []
    for name, (ss, merge) in runs.items():
        results = []
        for iid in ids:
            parts = Detections.cat([found[s][iid] for s in ss])
            results += (merge(parts) if merge else parts).to_coco(iid)
        m = coco_metrics(ds.coco, results, ids)
        pixels = sum(s * s for s in ss)
        t = sum(seconds[s] for s in ss)
        rows.append({"dataset": args.dataset, "images": len(ids), "policy": name, "budget": None, "seed": 0,
                     "ap": m["ap"], "ap50": m["ap50"], "ap_small": m["ap_small"], "ap_medium": m["ap_medium"],
                     "ap_large": m["ap_large"], "pixels_ratio": pixels, "rel_pixels": pixels, "seconds": t,
                     "command": command, "date": today})
    full = next(r for r in rows if r["policy"] == "detector@1")
    for r in rows:
        r["rel_ap"] = r["ap"] / full["ap"] if full["ap"] else None
        r["rel_time"] = r["seconds"] / full["seconds"]
    path = write_results("scale_fusion", rows, replace={"dataset": args.dataset})
    print(f"{len(ids)} images of {args.data}\n")
    print("| whole image at | merge | pixels | AP | AP_small | AP_medium | AP_large | rel AP | rel time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        at, _, how = r["policy"].removeprefix("detector@").partition("/")
        print(f"| {at.replace('+', ' + ')} | {how or '–'} | {r['pixels_ratio']:.1%} | {r['ap']:.3f} | "
              f"{r['ap_small']:.3f} | {r['ap_medium']:.3f} | {r['ap_large']:.3f} | {r['rel_ap']:.1%} | "
              f"{r['rel_time']:.1%} |")
    print(f"\nrows: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
