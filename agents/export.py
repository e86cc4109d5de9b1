"""``zoomdet export``: a trained agent as a folder that loads anywhere.

A run folder of ``zoomdet train`` names its R-net by the path the command was given (``env_config.rnet`` in
``zoomdet.json``, relative to where training ran), so the run loads only from that checkout. :func:`export_agent`
writes a self-contained folder instead::

    OUT/best_model.zip   the model, as trained
    OUT/rnet.pt          its R-net (agents with ``state: rnet``)
    OUT/zoomdet.json     the run's algorithm, environment options and detector id, with ``rnet: rnet.pt`` and
                         ``relative_paths: true`` (:meth:`AgentPolicy.from_path` reads the R-net from the folder),
                         and ``exported``: where it came from and, when several runs were given, why this one

Given several runs of one recipe (say nine seeds), it keeps the one with the best return on their common eval
cache: the number each run chose its ``best_model.zip`` by (``evaluations.npz``), never a test set's.
``zoomdet/assets/agents/hituav_gpu`` was written this way (README, *A trained agent in the box*).
"""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path
from typing import Sequence

import yaml

from zoomdet.agents.policy import RUN_FILE, AgentPolicy, load_run_info, run_folder
from zoomdet.agents.train import best_eval_return

__all__ = ["export_agent", "EXPORTED_RNET"]

EXPORTED_RNET = "rnet.pt"
"""The R-net's file name inside an exported folder."""


def _run_args(run: Path) -> dict:
    """The ``args.yml`` of a run folder (what ``zoomdet train`` was asked), or ``{}``."""
    args = run / "args.yml"
    return (yaml.safe_load(args.read_text()) or {}) if args.is_file() else {}


def export_agent(models: Sequence[str | Path], out: str | Path, force: bool = False) -> dict:
    """Write the agent of ``models`` (one ``.zip``, or the best of several runs of one recipe) to ``out``.

    Args:
        models: model files of ``zoomdet train`` runs (``best_model.zip`` or a checkpoint), each with its
            run folder's ``zoomdet.json``. Several must share the algorithm, the environment options, the
            detector and the eval cache, and each must have its ``evaluations.npz``; the one whose best
            evaluation's mean return is highest is kept (ties: the first given).
        out: the folder to write (made if missing). A folder that already holds an agent is refused unless
            ``force``.
        force: overwrite an agent already in ``out``.

    Returns:
        the ``zoomdet.json`` written, as a dict (``exported.candidates`` lists every run's eval return).
    """
    if not models:
        raise ValueError("export needs at least one agent model (.zip of zoomdet train)")
    paths = [Path(m) for m in models]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"agent model not found: {p}")
    infos = [load_run_info(p) for p in paths]
    runs = [run_folder(p) for p in paths]
    run_args = [_run_args(r) for r in runs]
    out = Path(out)
    if any(r.resolve() == out.resolve() for r in runs):
        raise ValueError(f"{out} is one of the runs being exported; give another folder")
    if (out / RUN_FILE).exists() and not force:
        raise FileExistsError(f"{out} already holds an agent ({RUN_FILE}); pass --force to replace it")

    candidates = []
    for p, run, args in zip(paths, runs, run_args):
        entry = {"model": str(p), "seed": args.get("seed")}
        if len(paths) > 1:
            if not (run / "evaluations.npz").is_file():
                raise ValueError(f"{run} has no evaluations.npz: runs are compared by their eval-cache return; "
                                 "train them with --eval-cache")
            entry["eval_return"], entry["eval_step"] = best_eval_return(run)
        candidates.append(entry)
    if len(paths) > 1:
        for p, info, args in zip(paths[1:], infos[1:], run_args[1:]):
            for key in ("algo", "env_config", "detector_id"):
                if info.get(key) != infos[0].get(key):
                    raise ValueError(f"{p} differs from {paths[0]} in {key}: only runs of one recipe are compared")
            here, there = args.get("eval_cache"), run_args[0].get("eval_cache")
            if here != there:
                raise ValueError(f"{p} was evaluated on {here}, {paths[0]} on {there}: "
                                 "their returns are not comparable")
    best = max(range(len(paths)), key=lambda i: (candidates[i].get("eval_return", 0.0), -i))
    model, run, info = paths[best], runs[best], dict(infos[best])
    AgentPolicy.from_path(model)  # the model and its R-net load, before anything is written

    env = dict(info["env_config"])
    rnet_src = None
    if env.get("state") == "rnet":
        rnet_src = Path(env["rnet"])  # load_run_info has made an exported folder's path usable from here
        if not rnet_src.is_file():
            raise FileNotFoundError(f"the agent's R-net {rnet_src} is not here (env_config.rnet of {run / RUN_FILE})")
        env["rnet"] = EXPORTED_RNET
    info["env_config"] = env
    info["relative_paths"] = True
    info["exported"] = {"date": datetime.date.today().isoformat(), "model": str(model), "run": str(run),
                        "eval_cache": run_args[best].get("eval_cache"), "rnet": str(rnet_src) if rnet_src else None,
                        "picked_by": "the best eval-cache return" if len(paths) > 1 else "given",
                        "candidates": candidates}
    if infos[best].get("exported"):  # an exported folder exported again keeps where it came from
        info["exported"]["earlier"] = infos[best]["exported"]
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, out / "best_model.zip")
    if rnet_src is not None:
        shutil.copyfile(rnet_src, out / EXPORTED_RNET)
    (out / RUN_FILE).write_text(json.dumps(info, indent=1))
    return info

