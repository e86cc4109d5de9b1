"""Is a policy really better than the rule? Paired bootstrap of AP differences over an evaluation's images.

    python benchmarks/ap_compare.py --eval runs/s12/agents-win/eval-hituav-test100-gpudet-full800-win \\
        --dataset hituav-test100-gpudet-full800-win --baseline greedy-entropy

Reads a ``zoomdet evaluate`` folder (``report.json`` and the COCO results files it wrote under
``detections/``) and compares every policy run at a budget with ``--baseline`` at the same budget (or with
its one run, for a baseline without a budget: ``--baseline fine`` asks whether zooming keeps fine's AP), on the
same images: the AP difference x 100 on all of them, its 95% interval over ``--resamples`` resamples of the
images drawn with repeats (the same draws for both policies: a paired bootstrap), the share of resamples
where the policy is ahead, and the difference per category. ``--area small`` compares AP_small instead
(the objects under 32² px, as COCOeval's ``small`` range), per category too. An agent's seeds (``...-s0``,
``-s1``, ... in its name) also get one row for their mean, the figure the issue's targets compare, with the
seeds averaged inside each resample. Ensembles of one variant's seeds (``dqn-ensemble:v-s0+v-s1+v-s2``) are
seeds of the variant ``v-ensemble``: several of them (other seeds each) get a mean row too.

Writes the rows to ``benchmarks/results/<--results>.json`` (replacing ``--dataset``'s), with the command and
the date, and prints them. The interval says how much the choice of test images alone moves a difference;
it does not include the spread over training seeds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SEED = re.compile(r"^(?P<variant>.*?)-s(?P<seed>\d+)(?P<rest>/.*)?$")


def variant_of(name: str) -> str | None:
    """``dqn:qnet-win-s1/best_model`` -> ``qnet-win``; an ensemble of one variant's seeds
    (``dqn-ensemble:qnet-win-s0+qnet-win-s1``) -> ``qnet-win-ensemble``; ``None`` for a name without a seed
    and for an ensemble of several variants."""
    members = name.split(":", 1)[-1].split("+")
    matches = [SEED.match(m) for m in members]
    if not all(matches):
        return None
    variants = {m.group("variant") for m in matches}
    if len(variants) > 1:
        return None
    return variants.pop() + ("-ensemble" if len(members) > 1 else "")


def main(argv=None) -> int:
    from pycocotools.coco import COCO
    from tqdm import tqdm

    from zoomdet.eval.coco_eval import AREA_RANGES, BootstrapAP, paired_bootstrap
    from zoomdet.eval.results import command_line, write_results

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval", required=True, help="zoomdet evaluate output folder (report.json, detections/)")
    ap.add_argument("--dataset", required=True, help="name of the rows in the results file")
    ap.add_argument("--baseline", default="greedy-entropy",
                    help="policy name to compare against (default greedy-entropy); a policy without a budget (fine, "
                         "coarse) is compared with every policy at every budget")
    ap.add_argument("--data", help="COCO ground truth (default: the report's data)")
    ap.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the resampling (default 0)")
    ap.add_argument("--area", default="all", choices=list(AREA_RANGES),
                    help="objects scored: all (AP, the default) or one size range (small: AP_small, < 32² px)")
    ap.add_argument("--results", default="ap_compare", help="results file name under benchmarks/results")
    args = ap.parse_args(argv)

    folder = Path(args.eval)
    report_path = folder / "report.json"
    if not report_path.is_file():
        raise SystemExit(f"{report_path} not found: --eval takes a zoomdet evaluate output folder")
    if args.resamples < 10:
        raise SystemExit("--resamples must be at least 10")
    report = json.loads(report_path.read_text())
    data = Path(args.data or report["data"])
    if not data.is_file():
        raise SystemExit(f"ground truth {data} not found (pass --data)")
    runs = [p for p in report["policies"] if p.get("detections_file")]
    entries = [p for p in runs if p.get("budget") is not None]
    fixed = next((p for p in runs if p["name"] == args.baseline and p.get("budget") is None), None)  # fine, coarse
    budgets = sorted({p["budget"] for p in entries if fixed is not None or p["name"] == args.baseline})
    if not budgets:
        names = sorted({p["name"] for p in runs})
        raise SystemExit(f"no {args.baseline!r} run at a budget in {report_path} (nor one without a budget beside "
                         f"runs at a budget); policies there: {', '.join(names)}")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(data))
    ids = report["image_ids"]

    def scorer(entry) -> BootstrapAP:
        return BootstrapAP(gt, json.loads((folder / entry["detections_file"]).read_text()), ids, area=args.area)

    rows, date = [], __import__("datetime").date.today().isoformat()
    fixed_base = scorer(fixed) if fixed is not None else None
    for budget in budgets:
        at = [p for p in entries if p["budget"] == budget]
        base = fixed_base if fixed_base is not None else scorer(next(p for p in at if p["name"] == args.baseline))
        others = [p for p in at if p["name"] != args.baseline]
        scored = {p["name"]: scorer(p) for p in tqdm(others, desc=f"@{budget}", leave=False)}
        groups = [([n], n) for n in scored]
        seeds: dict[str, list[str]] = {}
        for n in scored:
            if variant_of(n):
                seeds.setdefault(variant_of(n), []).append(n)
        groups += [(names, f"{v} (mean of {len(names)} seeds)") for v, names in seeds.items() if len(names) > 1]
        for names, label in groups:
            r = paired_bootstrap([scored[n] for n in names], base, args.resamples, args.seed)
            rows.append({"dataset": args.dataset, "images": len(ids), "area": args.area, "policy": label,
                         "baseline": args.baseline, "budget": budget, "seeds": len(names),
                         "ap": sum(scored[n].ap for n in names) / len(names), "ap_baseline": base.ap, **r,
                         "eval": str(folder), "command": command_line(), "date": date})

    metric = "AP" if args.area == "all" else f"AP_{args.area}"
    print(f"{args.dataset}: {len(ids)} images; {metric} x 100 minus {args.baseline}'s"
          f"{'' if fixed else ' at the same budget'}, "
          f"95% interval over {args.resamples} paired resamples of the images")
    print(f"{'policy':48s} {'budget':>6s} {'diff':>7s} {'95% interval':>18s} {'P(ahead)':>8s}  per class")
    for r in rows:
        per = " ".join(f"{c} {v:+.1f}" for c, v in r["per_class"].items() if v is not None)
        print(f"{r['policy']:48s} {r['budget']:6.2f} {r['diff']:+7.2f} [{r['ci_low']:+7.2f}, {r['ci_high']:+6.2f}] "
              f"{r['p_better']:8.2f}  {per}")
    out = write_results(args.results, rows, replace={"dataset": args.dataset, "area": args.area},
                        required=("dataset", "images", "policy", "baseline", "budget", "ap", "diff", "ci_low", "ci_high",
                                  "command", "date"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
