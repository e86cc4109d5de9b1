"""Benchmark results files: ``benchmarks/results/<script>.json``.

Every benchmark script writes its rows here, and the README's numbers are
these files' numbers. A file is a JSON list with one object per dataset ×
policy × budget × seed, each holding at least ``dataset``, ``images``,
``policy``, ``budget``, ``seed``, ``ap``, ``ap_small``, ``pixels_ratio``,
``rel_ap``, ``rel_pixels``, ``rel_time`` (relative to ``fine`` in the same
run), ``command`` and ``date``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Iterable, Optional, Sequence

__all__ = ["REQUIRED_KEYS", "rows_from_report", "write_results", "command_line", "RESULTS_DIR", "add_dataset_args",
           "relative_to_fine", "run_zoomdet"]

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
REQUIRED_KEYS = ("dataset", "images", "policy", "budget", "seed", "ap", "ap_small", "pixels_ratio",
                 "rel_ap", "rel_pixels", "rel_time", "command", "date")


def add_dataset_args(parser, images_default: int = 0) -> None:
    """The arguments every benchmark script shares: ``--config``, ``--data``, ``--dataset``, ``--images``."""
    parser.add_argument("--config", required=True, help="eval config (configs/eval/*.yaml): detector, zoom, policies")
    parser.add_argument("--data", required=True, help="COCO annotation json")
    parser.add_argument("--dataset", required=True, help="dataset name in the results file, e.g. hituav-test")
    parser.add_argument("--images", type=int, default=images_default,
                        help=f"N images, a seeded sample (default {images_default}; 0 = all)")


def run_zoomdet(argv: list[str]) -> None:
    """Run a documented ``zoomdet`` command in this process, echoing it; ``SystemExit`` if it fails
    (benchmark scripts drive the project through its CLI, as a user would)."""
    from zoomdet.cli import main

    print("$ zoomdet " + " ".join(argv), flush=True)
    rc = main(argv)
    if rc:
        raise SystemExit(f"zoomdet {argv[0]} failed with exit code {rc}")


def relative_to_fine(rows: list[dict], fine: Optional[dict]) -> None:
    """Set ``rel_ap``, ``rel_pixels`` and ``rel_time`` of every row against ``fine`` (the paper's
    Aperc / Pperc / Tperc); ``None`` where there is no fine row or its value is 0."""
    for r in rows:
        r["rel_ap"] = r["ap"] / fine["ap"] if fine and fine["ap"] > 0 else None
        r["rel_pixels"] = r["pixels_ratio"] / fine["pixels_ratio"] if fine else None
        r["rel_time"] = r["time_per_image_s"] / fine["time_per_image_s"] if fine and fine["time_per_image_s"] > 0 else None


def command_line() -> str:
    """The command that is running, as a user would type it (``python benchmarks/x.py ...`` or ``zoomdet ...``)."""
    prog = sys.argv[0]
    prog = f"python {os.path.relpath(prog)}" if prog.endswith(".py") else Path(prog).name
    return " ".join([prog, *map(shlex.quote, sys.argv[1:])])


def rows_from_report(report: dict, dataset: str, seed: int = 0, command: Optional[str] = None,
                     extra: Optional[dict] = None) -> list[dict]:
    """Results rows from a ``zoomdet evaluate`` report (one per run of the report)."""
    rows = []
    for r in report["policies"]:
        rows.append({
            "dataset": dataset, "images": report["images"], "policy": r["name"], "budget": r["budget"], "seed": seed,
            "ap": r["ap"], "ap50": r["ap50"], "ap_small": r["ap_small"], "ap_medium": r["ap_medium"],
            "ap_large": r["ap_large"], "pixels_ratio": r["pixels_ratio"],
            "detector_calls_per_image": r["detector_calls_per_image"], "time_per_image_s": r["time_per_image_s"],
            "rel_ap": r["rel_ap"], "rel_pixels": r["rel_pixels"], "rel_time": r["rel_time"],
            "command": command or command_line(), "date": report.get("date", _dt.date.today().isoformat()),
            **(extra or {}),
        })
    return rows


def write_results(script: str, rows: Iterable[dict], replace: Optional[dict] = None,
                  root: Optional[Path] = None, required: Sequence[str] = REQUIRED_KEYS) -> Path:
    """Merge ``rows`` into ``<root>/<script>.json`` and return its path.

    Rows already in the file that match every key/value of ``replace`` (e.g. ``{"dataset": "airbus-test"}``)
    are dropped first, so rerunning a script for one dataset replaces that dataset's rows only.
    ``required``: the keys every row must have (the policy-row keys by default).
    """
    rows = list(rows)
    for r in rows:
        missing = [k for k in required if k not in r]
        if missing:
            raise ValueError(f"results row for {r.get('policy')!r} lacks {', '.join(missing)}")
    path = Path(root or RESULTS_DIR) / f"{script}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.is_file() else []
    if replace:
        old = [r for r in old if not all(r.get(k) == v for k, v in replace.items())]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(old + rows, indent=1, default=float) + "\n")
    os.replace(tmp, path)
    return path
