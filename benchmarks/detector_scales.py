"""The detector alone on whole images at several scales: how much resolution it needs, by object size.

    python benchmarks/detector_scales.py --checkpoint zoomdet/assets/tiny_hituav.pt \\
        --data ../shared/data/hit-uav/test.json --dataset hituav-test --scales 1.0 0.75 0.63 0.5

Runs ``zoomdet detector eval`` once (every scale on the same images; a finished
eval in ``--out`` with the same scales and settings is reused) and writes one ``detector@<scale>`` row per scale
to ``benchmarks/results/detector_scales.json``, replacing ``--dataset``'s rows:
AP by size bucket, pixels (scale²) and AP and time relative to scale 1.0.
``--set FIELD=VALUE`` runs the checkpoint with another inference setting of its
model (``zoomdet detector eval --set``), e.g. the RPN counts of an earlier
version: ``--set rpn_pre_nms_top_n=2000 --set rpn_score_thresh=0``; the rows
carry the settings.

This is the check to make before tuning zoom policies. A zoom policy pays for
a coarse pass plus windows at full resolution. Against it stands the simplest
deployable alternative, the whole image at one reduced scale for the same
pixels. Where the detector at 0.63 (40% of the pixels) is already as good as
at 1.0, zooming has little left to win at that budget.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="detector checkpoint")
    ap.add_argument("--data", required=True, help="COCO annotation json of the images to score")
    ap.add_argument("--dataset", required=True, help="name of the rows (e.g. hituav-test)")
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.75, 0.63, 0.5],
                    help="whole-image scales; 1.0 is the reference and is always run (default 1.0 0.75 0.63 0.5)")
    ap.add_argument("--images", type=int, default=0, help="N images, a seeded sample (default 0 = all)")
    ap.add_argument("--set", dest="settings", action="append", default=[], metavar="FIELD=VALUE",
                    help="an inference setting of the model (zoomdet detector eval --set), repeatable")
    ap.add_argument("--out", help="working folder (default runs/bench/scales-<dataset>)")
    args = ap.parse_args(argv)
    if any(not 0 < s <= 4 for s in args.scales):
        ap.error(f"scales must be in (0, 4], got {args.scales}")

    from zoomdet.eval.results import command_line, detector_scale_rows, run_zoomdet, write_results

    scales = sorted({1.0, *args.scales}, reverse=True)
    out = Path(args.out or f"runs/bench/scales-{args.dataset}")
    out.mkdir(parents=True, exist_ok=True)
    det_json = out / "detector_eval.json"
    argv = ["detector", "eval", "--checkpoint", args.checkpoint, "--data", args.data, "--scales", *map(str, scales),
            "--images", str(args.images), "--out", str(det_json)] + [a for s in args.settings for a in ("--set", s)]
    det_eval = json.loads(det_json.read_text()) if det_json.is_file() else {}
    if det_eval.get("argv") != argv:  # none yet, or other scales, images or settings: run again
        run_zoomdet(argv)
        det_eval = {**json.loads(det_json.read_text()), "argv": argv}
        det_json.write_text(json.dumps(det_eval, indent=2))
    rows = detector_scale_rows(det_eval, args.dataset, command_line(), _dt.date.today().isoformat())
    for r in rows:
        r["settings"] = det_eval.get("settings", {})
    path = write_results("detector_scales", rows, replace={"dataset": args.dataset})
    print(f"{rows[0]['images']} images of {args.data}\n")
    print("| whole image at | pixels | AP | AP_small | AP_medium | AP_large | rel AP | rel time |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['policy'].split('@')[1]} | {r['pixels_ratio']:.1%} | {r['ap']:.3f} | {r['ap_small']:.3f} | "
              f"{r['ap_medium']:.3f} | {r['ap_large']:.3f} | {r['rel_ap']:.1%} | {r['rel_time']:.1%} |")
    print(f"\nrows: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
