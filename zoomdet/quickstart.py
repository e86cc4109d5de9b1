"""``zoomdet quickstart`` (what ``make demo`` runs): the whole pipeline on synthetic data, under one run folder.

Stages, each skipped when its output exists (rerunning the command resumes):

1. ``data``: synthetic train / tune / held-out val sets (2048x1536 by default);
2. ``cache``: rollout caches of train and tune with the embedded detector (Ray-parallel);
3. ``rnet``: the R-net on the train cache, validated on tune;
4. ``agent``: a DQN agent on the train cache, best model chosen on tune: the project's recipe
   (:data:`zoomdet.agents.train.RECIPE`, ``agent_recipe: dqfd``) or the paper's (``agent_recipe: paper``);
5. ``eval``: coarse, fine, sahi, greedy, greedy-entropy, the paper's oracle, the AP oracle (the upper
   bound) and the agent through the live engine on the held-out images: ``eval/report.json``, ``report.md``,
   ``pareto.png``;
6. ``replay``: the agent's episodes on a few held-out images, rendered (``replay/``).

Every stage calls the same functions as the documented CLI commands; the
resolved options are saved as ``quickstart.yaml`` in the run folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

__all__ = ["QuickstartConfig", "run_quickstart", "AGENT_RECIPES"]

AGENT_RECIPES = ("dqfd", "paper")


@dataclass
class QuickstartConfig:
    """Options of ``zoomdet quickstart`` (``--set key=value``)."""

    out: str = "runs/quickstart"
    """Run folder: every output goes under it."""
    width: int = 2048
    height: int = 1536
    train_images: int = 24
    """Images the R-net and the agent learn from (their rollout cache is the slowest stage: ~13 s per image on 2 CPUs)."""
    tune_images: int = 6
    """Images that choose the agent's best model."""
    val_images: int = 10
    """Held-out images of the final evaluation (never trained or tuned on)."""
    agent_steps: int = 20000
    """DQN environment steps."""
    agent_recipe: str = "dqfd"
    """``dqfd``: the project's recipe (:data:`zoomdet.agents.train.RECIPE`: the image's AP as the reward, the
    budget drawn per episode around ``budgets``, the per-window feature Q-net, a start from ``greedy-entropy``'s
    demonstrations); ``paper``: the paper's Q-net on the R-net map with its gain reward minus ``lam``."""
    lam: float = 5.0
    """λ of the ``paper`` agent's reward: cost of zooming into the whole image, in gain units."""
    budgets: list[float] = field(default_factory=lambda: [0.45, 0.6, 0.8])
    """max_pixels_ratio sweep of the evaluation."""
    replay_images: int = 3
    eval_config: str = "configs/eval/synth.yaml"
    """Engine options (zoom windows, merge rule, policies)."""
    workers: Optional[int] = None
    """Ray workers of the cache builds (default: CPU count; 0 = no Ray)."""
    seed: int = 0

    def __post_init__(self) -> None:  # checked before any stage runs: a bad value costs no data, cache or Ray start
        if not (128 <= self.width <= 20000 and 128 <= self.height <= 20000):
            raise ValueError(f"width and height must be 128..20000 px, got {self.width}x{self.height}")
        counts = {"train_images": (self.train_images, 2), "tune_images": (self.tune_images, 1),
                  "val_images": (self.val_images, 1), "agent_steps": (self.agent_steps, 1),
                  "replay_images": (self.replay_images, 0), "workers": (self.workers or 0, 0)}
        bad = [f"{k} must be >= {least}, got {v}" for k, (v, least) in counts.items() if v < least]
        if bad:
            raise ValueError("; ".join(bad))
        if self.lam < 0 or not self.budgets or not all(b > 0 for b in self.budgets):
            raise ValueError(f"lam must be >= 0 and budgets > 0 (at least one), got {self.lam} and {self.budgets}")
        if self.agent_recipe not in AGENT_RECIPES:
            raise ValueError(f"agent_recipe must be one of {', '.join(AGENT_RECIPES)}, got {self.agent_recipe!r}")

    def agent_options(self, rnet: str, greedy_stop: float) -> tuple[dict, dict]:
        """``(env_kwargs, hyperparams)`` of the agent's ``zoomdet train`` run, with the R-net at ``rnet``; the
        recipe's demonstrator stops as the eval config's rules do (``policies.greedy_stop``)."""
        from zoomdet.agents.train import RECIPE, RECIPE_SCHEDULE, parse_key_values
        from zoomdet.eval.results import split_variant

        if self.agent_recipe == "paper":
            return {"rnet": rnet, "lam": self.lam}, {}
        env_items, hp_items = split_variant(RECIPE)
        env_kwargs = parse_key_values(env_items)
        # each episode draws its budget from a range that holds every evaluated budget
        env_kwargs.update(rnet=rnet, budget_range=[round(max(0.05, min(self.budgets) - 0.1), 4),
                                                   round(max(self.budgets) + 0.1, 4)])
        return env_kwargs, {**parse_key_values([*hp_items, *RECIPE_SCHEDULE]), "demo_stop_gain": greedy_stop}


def _stage(name: str, done: bool) -> bool:
    """Announce a stage; ``True`` when it must run (its output is missing)."""
    print(f"[quickstart] {name}: {'reused' if done else 'running'}", flush=True)
    return not done


def run_quickstart(cfg: QuickstartConfig, progress: bool = True) -> dict:
    """Run (or resume) every stage; returns a summary (also written to ``summary.json``)."""
    from zoomdet.agents.train import TrainArgs, train_agent
    from zoomdet.config import load_config, save_config
    from zoomdet.data.synth import SynthConfig, generate_dataset
    from zoomdet.detector.detector import default_checkpoint
    from zoomdet.eval.evaluator import EvalConfig, evaluate, report_markdown
    from zoomdet.eval.replay import replay
    from zoomdet.rnet.cache import build_cache
    from zoomdet.rnet.train import train_rnet

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "quickstart.yaml")
    t_start, times = time.time(), {}
    ecfg = load_config(EvalConfig, cfg.eval_config, [f"budgets={json.dumps(cfg.budgets)}"])

    t = time.time()
    sets = {"train": (cfg.train_images, cfg.seed), "tune": (cfg.tune_images, cfg.seed + 2),
            "val": (cfg.val_images, cfg.seed + 1)}
    ann = {k: out / "data" / k / "annotations.json" for k in sets}
    if _stage("data", all(a.is_file() for a in ann.values())):
        for k, (n, seed) in sets.items():
            if not ann[k].is_file():
                generate_dataset(SynthConfig(images=n, width=cfg.width, height=cfg.height, seed=seed), ann[k].parent,
                                 progress=progress)
    times["data"] = time.time() - t

    t = time.time()
    caches = {k: out / "cache" / k for k in ("train", "tune")}
    print("[quickstart] cache: building (resumes where a previous run stopped)", flush=True)
    for k, path in caches.items():
        build_cache(str(ann[k]), path, ecfg.checkpoint or str(default_checkpoint()), ecfg.zoom, workers=cfg.workers,
                    device=ecfg.device, batch_size=ecfg.batch_size, progress=progress)
    times["cache"] = time.time() - t

    t = time.time()
    rnet = out / "rnet.pt"
    if _stage("rnet", rnet.is_file()):
        train_rnet(str(caches["train"]), str(rnet), val_cache=str(caches["tune"]), progress=progress)
    times["rnet"] = time.time() - t

    t = time.time()
    runs = sorted((out / "logs" / "dqn").glob("ZoomDet-v0_*/ZoomDet-v0.zip"))
    if _stage("agent", bool(runs)):
        env_kwargs, hyperparams = cfg.agent_options(str(rnet), ecfg.policies.greedy_stop)
        train_agent(TrainArgs(cache=str(caches["train"]), eval_cache=str(caches["tune"]), n_timesteps=cfg.agent_steps,
                              seed=cfg.seed, env_kwargs=env_kwargs, hyperparams=hyperparams, eval_freq=2500,
                              log_folder=str(out / "logs"), progress=progress))
        runs = sorted((out / "logs" / "dqn").glob("ZoomDet-v0_*/ZoomDet-v0.zip"))
    run = runs[-1].parent
    agent = run / "best_model.zip" if (run / "best_model.zip").is_file() else runs[-1]
    times["agent"] = time.time() - t

    t = time.time()
    ecfg.policies.rnet = str(rnet)
    report_path = out / "eval" / "report.json"
    if _stage("eval", report_path.is_file()):
        policies = ["coarse", "fine", "sahi", "greedy", "greedy-entropy", "oracle", "oracle-ap", str(agent)]
        evaluate(ecfg, str(ann["val"]), policies, out / "eval", progress=progress)
    report = json.loads(report_path.read_text())
    times["eval"] = time.time() - t

    t = time.time()
    replay_dir = out / "replay"
    if _stage("replay", (replay_dir / "index.json").is_file()):
        ecfg.images = cfg.replay_images
        replay(ecfg, str(ann["val"]), str(agent), replay_dir, max_pixels_ratio=max(cfg.budgets), render=True,
               progress=progress)
    times["replay"] = time.time() - t

    summary = {"run_folder": str(out), "agent": str(agent), "rnet": str(rnet), "report": str(report_path),
               "replay": str(replay_dir), "seconds": {k: round(v, 1) for k, v in times.items()},
               "total_seconds": round(time.time() - t_start, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print()
    print(report_markdown(report))
    print(f"[quickstart] done in {summary['total_seconds'] / 60:.1f} min; everything is under {out}/")
    print(f"  report:    {out / 'eval' / 'report.md'}   plot: {out / 'eval' / 'pareto.png'}")
    print(f"  episodes:  {replay_dir}/episode_*.json and .gif")
    print("  notebooks: jupyter lab notebooks/replay_episode.ipynb notebooks/compare_policies.ipynb")
    print(f"  service:   set rnet: {rnet.resolve()} and agent: {Path(agent).resolve()} in serving/config.yaml, then")
    print("             zoomdet serve --config serving/config.yaml   and   zoomdet query IMAGE --out annotated.png")
    return summary
