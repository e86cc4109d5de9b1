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
           "relative_to_fine", "run_zoomdet", "add_agent_args", "train_agents"]

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


def add_policy_args(parser) -> None:
    """The policies of a benchmark run through ``zoomdet evaluate``: ``--policy`` (repeatable, ``fine`` among them,
    checked by :func:`require_fine`), ``--budget``, ``--rnet``."""
    parser.add_argument("--policy", action="append", required=True, help="repeatable; include fine for the ratios")
    parser.add_argument("--budget", type=float, nargs="+",
                        help="budgets of the sequential policies (default: the config's)")
    parser.add_argument("--rnet", help="R-net for greedy")


def require_fine(parser, policies: Sequence[str]) -> None:
    """Every ratio of a results row is relative to ``fine`` of the same run: refuse a run without it."""
    if "fine" not in policies:
        parser.error("--policy fine is needed: every ratio is relative to it")


def add_agent_args(parser) -> None:
    """The arguments of the agent benchmarks: ``--cache``, ``--eval-cache``, ``--rnet``, ``--seeds``."""
    parser.add_argument("--cache", required=True, help="training rollout cache")
    parser.add_argument("--eval-cache", required=True, help="held-out cache for best_model selection")
    parser.add_argument("--rnet", required=True, help="R-net: the agents' state and the greedy policy")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])


def split_variant(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """A variant's ``KEY:VALUE`` items -> (``--env-kwargs`` items, ``--hyperparams`` items: those written
    ``dqn.KEY:VALUE``, without the prefix)."""
    return ([i for i in items if not i.startswith("dqn.")], [i.removeprefix("dqn.") for i in items if i.startswith("dqn.")])


def train_agents(variants: dict[str, list[str]], seeds: Sequence[int], cache: str, eval_cache: str, rnet: str,
                 steps: int, out: Path, hyperparams: Sequence[str] = (), eval_freq: Optional[int] = None,
                 save_freq: Optional[int] = None) -> dict[Path, tuple[str, int]]:
    """Train (or reuse) one DQN agent per variant (``--env-kwargs`` items; items ``dqn.KEY:VALUE`` are
    ``--hyperparams`` of that variant, after ``hyperparams``) and seed with ``zoomdet train``, into
    ``out/<variant>-s<seed>`` (the agent's name in reports comes from that folder); its best model is chosen on
    ``eval_cache`` every ``eval_freq`` steps (default: a tenth of ``steps``, at least 500). With ``save_freq``, a
    checkpoint every that many steps lands in ``out/<variant>-s<seed>/checkpoints`` (``zoomdet train --save-freq``).
    Returns ``{best_model.zip: (variant, seed)}``."""
    import shutil

    agents = {}
    for name, env_kwargs in variants.items():
        for seed in seeds:
            run_dir = out / f"{name}-s{seed}"
            model = run_dir / "best_model.zip"
            if not model.is_file():
                logs = out / "logs" / f"{name}-s{seed}"
                shutil.rmtree(logs, ignore_errors=True)  # an interrupted run's folder would be picked up below
                env_items, own = split_variant(env_kwargs)
                argv = ["train", "--cache", cache, "--eval-cache", eval_cache, "-n", str(steps), "--seed", str(seed),
                        "--env-kwargs", f"rnet:{rnet}", *env_items,
                        "--eval-freq", str(eval_freq or max(steps // 10, 500)), "-f", str(logs), "--no-progress"]
                if save_freq:
                    argv += ["--save-freq", str(save_freq)]
                if hyperparams or own:
                    argv += ["--hyperparams", *hyperparams, *own]
                run_zoomdet(argv)
                trained = next((logs / "dqn").glob("ZoomDet-v0_*"))
                shutil.rmtree(run_dir, ignore_errors=True)
                shutil.copytree(trained, run_dir)
            agents[model] = (name, seed)
    return agents


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
            "ap": r["ap"], "ap50": r["ap50"], "ap75": r.get("ap75"), "ap_small": r["ap_small"],
            "ap_medium": r["ap_medium"], "ap_large": r["ap_large"], "pixels_ratio": r["pixels_ratio"],
            "detector_calls_per_image": r["detector_calls_per_image"], "time_per_image_s": r["time_per_image_s"],
            "windows_per_image": r.get("windows_per_image"), "zoomed_share": r.get("zoomed_share"),
            "windows_dropped_per_image": r.get("windows_dropped_per_image"), "late_share": r.get("late_share"),
            "late_ms_mean": r.get("late_ms_mean"),
            **({"max_latency_ms": report["config"]["max_latency_ms"]}
               if report.get("config", {}).get("max_latency_ms") is not None else {}),
            "rel_ap": r["rel_ap"], "rel_pixels": r["rel_pixels"], "rel_time": r["rel_time"],
            "command": command or command_line(), "date": report.get("date", _dt.date.today().isoformat()),
            **(extra or {}),
        })
    return rows


def detector_scale_rows(det_eval: dict, dataset: str, command: str, date: str) -> list[dict]:
    """Rows ``detector@<scale>`` from a ``zoomdet detector eval --out`` document: the detector on the whole image
    at each scale, its pixels (scale²) and AP relative to scale 1.0, time relative to scale 1.0's and
    in seconds per image."""
    scales = det_eval["scales"]
    full = scales.get("1.0")
    if full is None:
        raise ValueError("the detector eval has no scale 1.0 to compare with: run it with --scales 1.0 ...")
    return [{"dataset": dataset, "images": det_eval["images"], "policy": f"detector@{s}", "budget": None, "seed": 0,
             "ap": m["ap"], "ap50": m["ap50"], "ap_small": m["ap_small"], "ap_medium": m["ap_medium"],
             "ap_large": m["ap_large"], "pixels_ratio": float(s) ** 2,
             "rel_ap": m["ap"] / full["ap"] if full["ap"] else None, "rel_pixels": float(s) ** 2,
             "rel_time": m["seconds_per_image"] / full["seconds_per_image"], "time_per_image_s": m["seconds_per_image"],
             "command": command, "date": date}
            for s, m in scales.items()]


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
