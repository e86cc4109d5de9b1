"""Whole scenes: images k x k times larger than the ones a config was made for, zoomed whole or as frames.

    python benchmarks/scenes.py --config configs/eval/airbus_gpu.yaml \\
        --data ../shared/data/airbus-aircraft/test.json --dataset airbus-test-gpudet --k 2 \\
        --policy coarse --policy fine --policy greedy-entropy --budget 0.15 0.25 --frame-size 3072

A satellite scene is many times the size of the 2560-px extracts the detector, the candidate windows and the
budgets were tuned on. This script pastes the split's images, k x k at a time in id order, into scenes (PNG,
lossless, annotations moved with them; the images left over are not used) under ``--work``, and runs
``zoomdet evaluate`` three times with the same policies and budgets:

* ``<dataset>-k<k>-images``: the images the scenes hold, one by one (the reference);
* ``<dataset>-k<k>-scenes``: each scene as one image (candidate windows are fractions of the scene's side,
  so k times wider);
* ``<dataset>-k<k>-frames``: each scene as overlapping frames of at most ``--frame-size`` (``zoom.frame_size``),
  one zoom episode each; frames do not follow the images' seams.

Every pass is bounded by ``zoom.max_pass_pixels`` (``--max-pass-pixels``, default 4096²), so the fine pass over a
scene runs as tiles (its tiles' overlap is counted in its pixels). Rows go to
``benchmarks/results/scenes.json`` (replacing those three datasets' rows), each with ``scene_side`` and
``frame_size``; ``zoomdet evaluate`` prints each report's table. Evaluations resume from ``--work``.

``--runs`` picks some of the three evaluations; ``--frames-set KEY=VALUE`` overrides the framed run's config only
and ``--frames-tag TAG`` names its rows ``<dataset>-k<k>-frames-<TAG>``, so a variant sits beside the default, e.g.
``--runs frames --frames-set zoom.frame_carry=false --frames-tag nocarry``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def pool_coco(paths: list[Path], exclude_trained_on: list[str] = ()) -> dict:
    """The images of the COCO files ``paths`` as one COCO dict: each file's images in id order, one file after
    another, renumbered from 1 when there are several files (annotations with them). ``exclude_trained_on``:
    detector configs whose training images are left out (of the file each trains on, one of ``paths``)."""
    from zoomdet.detector.train import trained_on

    drop: dict[str, set] = {}
    for yaml in exclude_trained_on:
        try:
            k, ids = trained_on(yaml, paths)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(str(e)) from None
        drop.setdefault(str(paths[k]), set()).update(ids)
    images, annotations, categories = [], [], None
    for p in paths:
        d = json.loads(p.read_text())
        if categories is not None and d["categories"] != categories:
            raise SystemExit(f"{p}: its categories differ from the first --data's")
        categories = d["categories"]
        by_image: dict[int, list] = {}
        for a in d["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a)
        for im in sorted(d["images"], key=lambda i: i["id"]):
            if im["id"] in drop.get(str(p), ()):
                continue
            if len(paths) == 1:  # one file keeps its ids
                images.append(im)
                annotations += by_image.get(im["id"], [])
                continue
            images.append({**im, "id": len(images) + 1})
            annotations += [{**a, "id": len(annotations) + j + 1, "image_id": len(images)}
                            for j, a in enumerate(by_image.get(im["id"], []))]
    return {"images": images, "annotations": annotations, "categories": categories}


def build_scenes(d: dict, k: int, out: Path, image_root: Path) -> tuple[Path, Path]:
    """The scenes of the COCO dict ``d`` (``out/scenes.json``, ``out/images/scene*.png``) and the COCO file of the
    images they hold (``out/images.json``, file names relative to ``image_root``). Rebuilt only when missing."""
    from PIL import Image

    scenes_json, images_json = out / "scenes.json", out / "images.json"
    if scenes_json.exists() and images_json.exists():
        return scenes_json, images_json
    imgs = sorted(d["images"], key=lambda i: i["id"])
    n = len(imgs) // (k * k)
    if n == 0:
        raise SystemExit(f"--k {k}: --data has {len(imgs)} images, fewer than the {k * k} of one scene")
    by_image: dict[int, list] = {}
    for a in d["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    (out / "images").mkdir(parents=True, exist_ok=True)
    scenes, scene_anns, used = [], [], imgs[:n * k * k]
    for m in range(n):
        part = used[m * k * k:(m + 1) * k * k]
        w, h = part[0]["width"], part[0]["height"]
        if any((p["width"], p["height"]) != (w, h) for p in part):
            raise SystemExit("scenes need images of one size")
        canvas = Image.new("RGB", (w * k, h * k))
        for j, im in enumerate(part):
            ox, oy = (j % k) * w, (j // k) * h
            with Image.open(image_root / im["file_name"]) as src:
                canvas.paste(src.convert("RGB"), (ox, oy))
            for a in by_image.get(im["id"], []):
                x, y, bw, bh = a["bbox"]
                scene_anns.append({**a, "id": len(scene_anns) + 1, "image_id": m + 1, "bbox": [x + ox, y + oy, bw, bh]})
        name = f"scene{m:03d}.png"
        canvas.save(out / "images" / name)
        scenes.append({"id": m + 1, "file_name": name, "width": w * k, "height": h * k})
    ids = {i["id"] for i in used}
    images_json.write_text(json.dumps({"images": used, "categories": d["categories"],
                                       "annotations": [a for a in d["annotations"] if a["image_id"] in ids]}))
    scenes_json.write_text(json.dumps({"images": scenes, "annotations": scene_anns, "categories": d["categories"]}))
    return scenes_json, images_json


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from zoomdet.eval.results import add_policy_args, require_fine

    ap.add_argument("--config", required=True, help="eval config (configs/eval/*.yaml)")
    ap.add_argument("--data", required=True, action="append", type=Path,
                    help="COCO annotation json of images of one size; repeat it to pool files whose images share "
                         "one folder (each file's images in id order, one file after another)")
    ap.add_argument("--exclude-trained-on", action="append", default=[], metavar="DETECTOR_YAML",
                    help="leave out the images this detector config trains on, e.g. to tune on the train images "
                         "the detector never saw (repeatable)")
    ap.add_argument("--image-root", help="folder of the images (default: <first json's dir>/images)")
    ap.add_argument("--dataset", required=True, help="dataset name prefix in the results file, e.g. airbus-test-gpudet")
    ap.add_argument("--k", type=int, default=2, help="a scene is k x k images (default 2)")
    ap.add_argument("--frame-size", type=int, required=True, help="zoom.frame_size of the framed run, pixels")
    ap.add_argument("--max-pass-pixels", type=int, default=4096 ** 2, help="zoom.max_pass_pixels of every run")
    add_policy_args(ap)
    ap.add_argument("--work", help="scenes and evaluations (default runs/bench/scenes/<dataset>-k<k>)")
    ap.add_argument("--runs", nargs="+", choices=["images", "scenes", "frames"], default=["images", "scenes", "frames"],
                    help="which of the three evaluations to run (default all)")
    ap.add_argument("--frames-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override of the framed run only, e.g. zoom.frame_carry=false (repeatable)")
    ap.add_argument("--frames-tag", help="name the framed run <dataset>-k<k>-frames-<TAG> (rows and folder), so a "
                                         "variant made with --frames-set keeps the default's rows")
    args = ap.parse_args(argv)
    require_fine(ap, args.policy)
    if args.k < 2:
        ap.error("--k must be >= 2")

    from zoomdet.config import load_config
    from zoomdet.eval.evaluator import EvalConfig
    from zoomdet.eval.results import command_line, rows_from_report, run_zoomdet, write_results

    name = f"{args.dataset}-k{args.k}"
    work = Path(args.work or f"runs/bench/scenes/{name}")
    image_root = Path(args.image_root or args.data[0].parent / "images")
    scenes_json, images_json = build_scenes(pool_coco(args.data, args.exclude_trained_on), args.k, work, image_root)
    cfg = load_config(EvalConfig, args.config)
    framed = load_config(EvalConfig, args.config, [f"zoom.frame_size={args.frame_size}", *args.frames_set]).zoom
    policies = [x for p in args.policy for x in ("--policy", p)] + (["--budget", *map(str, args.budget)] if args.budget else [])
    policies += ["--rnet", args.rnet] if args.rnet else []
    common = ["--config", args.config, "--images", "0", "--no-progress", *policies,
              "--set", f"zoom.max_pass_pixels={args.max_pass_pixels}"]
    runs = [("images", images_json, ["--image-root", str(image_root)], None),
            ("scenes", scenes_json, [], None),
            ("frames", scenes_json, ["--set", f"zoom.frame_size={args.frame_size}",
                                     *(x for kv in args.frames_set for x in ("--set", kv))], args.frame_size)]
    side = json.loads(scenes_json.read_text())["images"][0]["width"]
    for kind, ann, extra, frame in runs:
        if kind not in args.runs:
            continue
        kind = f"{kind}-{args.frames_tag}" if kind == "frames" and args.frames_tag else kind
        out = work / f"eval-{kind}"
        run_zoomdet(["evaluate", "--data", str(ann), "--out", str(out), *common, *extra])
        report = json.loads((out / "report.json").read_text())
        rows = rows_from_report(report, f"{name}-{kind}", seed=cfg.seed, command=command_line(),
                                extra={"scene_side": side if kind != "images" else side // args.k, "frame_size": frame,
                                       "frame_overlap": framed.frame_overlap if frame else None,
                                       "frame_carry": framed.frame_carry if frame else None})
        path = write_results("scenes", rows, replace={"dataset": f"{name}-{kind}"})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
