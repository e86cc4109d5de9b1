"""Does time follow pixels? Per-stage latency against fine, in one run per detector setting.

    python benchmarks/latency.py --config configs/eval/hituav.yaml --data ../shared/data/hit-uav/test.json \\
        --dataset hituav-test --images 50 --policy coarse --policy fine --policy greedy-entropy --budget 0.5

For each ``--image-dtype`` (default ``uint8``: images stay 8-bit until each crop is
resized; ``float32``: converted whole first, the path before), each
``--proposal-density`` (default ``0 2500``: torchvision's fixed 1000
RPN proposals per call, then 2,500 per megapixel of model input) and each
``--proposal-min`` (the fewest proposals a call keeps, default 100)
the policies run through ``zoomdet evaluate`` on the same images, and the
script prints, per policy: AP, AP_small, pixels_ratio, the stage times
(decode, coarse, gain, policy, fine, merge, total; ms per image), rel_time
and rel_pixels against fine of the same run, and the policy overhead (gain +
policy + merge) as a share of total latency. Rows go to
``benchmarks/results/latency.json`` (replacing ``--dataset``'s rows), with
``image_dtype``, ``proposal_density``, ``proposal_min``, ``detector_settings`` and ``timing_ms`` added.
``--detector-set`` runs each group of the model's inference settings (e.g.
``roi_sampling_ratio=1,box_head_rank=64``; ``-`` is the config's own) as one more setting.

``--device cuda`` runs the detector on a GPU (the config's ``device`` otherwise). There the detector is first
run a few times on the first image's coarse and full frames (CUDA context, cuDNN and allocator set-up), so the
first timed image pays no start-up cost; the stage clocks stay honest because every detector call returns its
detections on the CPU, which waits for the GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from zoomdet.eval.results import add_dataset_args, add_policy_args, require_fine

    add_dataset_args(ap)
    add_policy_args(ap)
    ap.add_argument("--proposal-density", type=float, nargs="+", default=[0.0, 2500.0], metavar="PER_MPX")
    ap.add_argument("--proposal-min", type=int, nargs="+", default=[100], metavar="N",
                    help="with a density, the fewest proposals a call keeps (default 100); several values run "
                         "every density with each")
    ap.add_argument("--image-dtype", nargs="+", default=["uint8"], choices=["uint8", "float32"],
                    help="how images are held between decode and crop (EvalConfig.image_dtype); several run each")
    ap.add_argument("--detector-set", nargs="+", default=["-"], metavar="FIELD=VALUE[,FIELD=VALUE]",
                    help="inference settings of the detector's model (EvalConfig.detector_settings), one group per "
                         "run, e.g. - roi_sampling_ratio=1,box_head_rank=64 ('-' = the config's own; default -)")
    ap.add_argument("--device", help="torch device of the detector, e.g. cuda (default: the config's)")
    ap.add_argument("--out", default="runs/bench/latency")
    ap.add_argument("--resume", action="store_true",
                    help="reuse the timed results an earlier run left in --out (default: run every image again; "
                         "timings kept from before a code change would describe the old code)")
    args = ap.parse_args(argv)
    require_fine(ap, args.policy)

    from zoomdet.config import load_config
    from zoomdet.eval.evaluator import EvalConfig, evaluate, load_detector
    from zoomdet.eval.results import rows_from_report, write_results

    rows = []
    groups = {g: parse_detector_set(ap, g) for g in args.detector_set}
    settings = list(dict.fromkeys((dt, d, m if d else 100, g) for dt in args.image_dtype for d in args.proposal_density
                                  for m in args.proposal_min for g in groups))  # the floor means nothing without a density
    for dtype, density, pmin, group in settings:
        over = [f"images={args.images}", f"image_dtype={dtype}", f"proposal_density={density}", f"proposal_min={pmin}"]
        over += [f"detector_settings.{k}={v}" for k, v in groups[group].items()]
        if args.budget:
            over.append(f"budgets={json.dumps(args.budget)}")
        if args.rnet:
            over.append(f"policies.rnet={args.rnet}")
        if args.device:
            over.append(f"device={args.device}")
        cfg = load_config(EvalConfig, args.config, over)
        detector = load_detector(cfg)
        if detector.device.type != "cpu":
            warm_up(detector, cfg, args.data)
        tag = "" if detector.device.type == "cpu" else f"-{detector.device.type}"
        gtag = "" if group == "-" else "-" + group.replace("=", "").replace(",", "-")
        out = Path(args.out) / f"{args.dataset}-{dtype}-d{density:g}-m{pmin}{gtag}{tag}"
        fresh_out(out, args.resume)
        report = evaluate(cfg, args.data, args.policy, out, detector=detector)
        run_rows = rows_from_report(report, args.dataset, seed=cfg.seed, extra={"image_dtype": dtype,
                                                                                  "proposal_density": density,
                                                                                  "proposal_min": pmin,
                                                                                  "device": str(detector.device),
                                                                                  "model": detector.config.name,
                                                                                  "detector_settings": cfg.detector_settings})
        for row, r in zip(run_rows, report["policies"]):
            t = r["timing_ms"]
            row["timing_ms"] = t
            row["overhead_share"] = (t["gain"] + t["policy"] + t["merge"]) / t["total"] if t["total"] else None
        rows += run_rows
        print(f"\n{args.dataset}, {report['images']} images held as {dtype}, proposal_density {density:g}/Mpx (0 = fixed 1000)"
              + (f", at least {pmin} per call" if density else "")
              + (f", detector settings {cfg.detector_settings}" if cfg.detector_settings else ""))
        stages = ("decode", "coarse", "gain", "policy", "fine", "merge", "total")
        print(f"{'policy':<22}{'AP':>7}{'AP_s':>7}{'pixels':>8}" + "".join(f"{s:>8}" for s in stages)
              + f"{'relT':>7}{'relP':>7}{'ovh':>6}")
        for row, r in zip(run_rows, report["policies"]):
            print(f"{r['policy']:<22}{r['ap']:7.3f}{r['ap_small']:7.3f}{r['pixels_ratio']:8.3f}"
                  + "".join(f"{row['timing_ms'][s]:8.1f}" for s in stages)
                  + (f"{100 * row['rel_time']:6.1f}%" if row["rel_time"] is not None else f"{'–':>7}")
                  + f"{100 * row['rel_pixels']:6.1f}%{100 * row['overhead_share']:5.1f}%")
    path = write_results("latency", rows, replace={"dataset": args.dataset})
    print(f"\nwrote {path}")
    return 0


def fresh_out(out: Path, resume: bool) -> None:
    """Remove the evaluation folder ``out`` (this script's own, one per setting) unless ``resume``: the
    evaluator resumes from what a folder holds, and a latency figure must come from the code as it is now."""
    import shutil

    if out.exists() and not resume:
        shutil.rmtree(out)


def parse_detector_set(ap: argparse.ArgumentParser, group: str) -> dict:
    """``"a=1,b=2"`` -> ``{"a": "1", "b": "2"}`` (values parsed later, as ``--set`` values are); ``"-"`` -> ``{}``."""
    if group == "-":
        return {}
    pairs = [p.split("=", 1) for p in group.split(",")]
    if any(len(p) != 2 or not p[0] or not p[1] for p in pairs):
        ap.error(f"--detector-set {group!r}: give FIELD=VALUE pairs separated by commas, or -")
    return dict(pairs)


def warm_up(detector, cfg, data: str, rounds: int = 3) -> None:
    """Run ``detector`` ``rounds`` times on the first image of ``data`` at the coarse and the full scale, untimed."""
    from zoomdet.data.coco import CocoDataset
    from zoomdet.types import Window

    ds = CocoDataset(data, image_root=cfg.image_root)
    image = ds.load_image(ds.image_ids[0], keep_uint8=cfg.keep_uint8)
    _, h, w = image.shape
    for _ in range(rounds):
        detector.detect(image, [Window.full(w, h, cfg.zoom.coarse_scale)])
        detector.detect(image, [Window.full(w, h, 1.0)])


if __name__ == "__main__":
    sys.exit(main())
