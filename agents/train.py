"""``zoomdet train``: train a zoom agent on a rollout cache, laid out like rl-baselines3-zoo.

Hyperparameters come from a zoo-style YAML file (``configs/agents/dqn.yml``)
keyed by environment id, overridden by ``--hyperparams key:value``;
``env_kwargs`` in the file and ``--env-kwargs key:value`` set
:class:`~zoomdet.envs.ZoomEnvConfig` fields. Each run writes to
``<log-folder>/<algo>/<env>_<n>/``:

* ``<env>.zip``: the final model; ``best_model.zip``: the best on the
  evaluation cache (``--eval-freq``); ``checkpoints/rl_model_<steps>_steps.zip``
  (``--save-freq``, with the replay buffer for DQN);
* ``config.yml`` (resolved hyperparameters), ``args.yml`` (the command's
  arguments), ``zoomdet.json`` (algorithm, environment options, cache and
  detector: what ``AgentPolicy.from_path`` needs), ``evaluations.npz``.

``--trained-agent PATH`` resumes: it loads the model (and the replay buffer
saved beside a checkpoint) and trains until ``n_timesteps`` in total.

``--hyperparams demo_rule:greedy-entropy`` (DQN only; the other ``demo_*``
keys are :class:`~zoomdet.agents.demos.DemoConfig`'s fields) first plays the
rule in the training environment, pretrains the Q-net on its transitions and
keeps their losses during training (DQfD, :mod:`zoomdet.agents.demos`); the
run folder gains ``demonstrations.json`` (the rule's return, the pretrained
net's agreement with it, and the rule's return on the eval cache's episodes,
the bar a checkpoint must clear), and the evaluation also runs before the
first step, so ``best_model.zip`` can be the pretrained net itself. The
last line of training gives the best model's step and return on the eval
cache, beside the rule's (:func:`best_model_line`).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from zoomdet.agents.demos import DemoConfig, rule_map
from zoomdet.agents.policy import ALGOS, RUN_FILE, algorithm_class
from zoomdet.config import exponent_float, parse_value
from zoomdet.envs import ENV_ID, ZoomEnv, ZoomEnvConfig

__all__ = ["TrainArgs", "train_agent", "parse_key_values", "next_run_dir", "best_eval_return", "RECIPE",
           "RECIPE_SCHEDULE"]

RECIPE = ("reward:ap", "lam:0", "stop_gain:0", "budget_range:[0.3,0.7]", "window_features:true",
          "window_extras:[density]", "exhausted:terminate", "dqn.demo_rule:greedy-entropy")
"""The recommended agent, as ``--env-kwargs`` items and (prefixed ``dqn.``) ``--hyperparams`` items: the step's
change of the image's AP as the reward, the budget drawn per episode, the per-window feature Q-net with each
window's sums per unit of cost, the episode ended when no window fits, and a start from ``greedy-entropy``'s
demonstrations (DQfD). It is ``qnet-dqfd-term`` of ``benchmarks/agents.py``, the agent ahead of both rules on
HIT-UAV; ``zoomdet quickstart`` trains it."""
RECIPE_SCHEDULE = ("exploration_fraction:0.8",)
"""``--hyperparams`` the recipe is run with: exploration decays over 80% of the steps."""


@dataclass
class TrainArgs:
    """What ``zoomdet train`` was asked (saved as ``args.yml``)."""

    algo: str = "dqn"
    env: str = ENV_ID
    cache: str = ""
    eval_cache: Optional[str] = None
    n_timesteps: int = -1
    """-1: the config file's ``n_timesteps``."""
    seed: int = 0
    conf_file: Optional[str] = None
    hyperparams: dict = field(default_factory=dict)
    env_kwargs: dict = field(default_factory=dict)
    eval_freq: int = 5000
    eval_episodes: int = 0
    """0: one episode per image of the evaluation cache."""
    save_freq: int = -1
    tensorboard_log: Optional[str] = None
    log_folder: str = "logs"
    trained_agent: Optional[str] = None
    progress: bool = True
    verbose: int = 0


def parse_key_values(items: list[str]) -> dict[str, Any]:
    """``["lam:5", "grid:[12,16]", "learning_rate:1e-4"]`` -> ``{"lam": 5, "grid": [12, 16], "learning_rate": 0.0001}``
    (values parsed by :func:`zoomdet.config.parse_value`: YAML, with ``1e-4`` a float)."""
    out = {}
    for item in items or []:
        if ":" not in item:
            raise ValueError(f"expected key:value, got {item!r}")
        k, v = item.split(":", 1)
        out[k.strip()] = parse_value(v)
    return out


def next_run_dir(log_folder: str | Path, algo: str, env_id: str) -> Path:
    """``<log_folder>/<algo>/<env_id>_<n>`` with ``n`` one above the largest existing."""
    base = Path(log_folder) / algo
    base.mkdir(parents=True, exist_ok=True)
    ids = [int(m.group(1)) for p in base.iterdir() if (m := re.fullmatch(re.escape(env_id) + r"_(\d+)", p.name))]
    run = base / f"{env_id}_{max(ids, default=0) + 1}"
    run.mkdir()
    return run


def load_hyperparams(args: TrainArgs) -> dict:
    conf = Path(args.conf_file or f"configs/agents/{args.algo}.yml")
    if not conf.is_file():
        raise FileNotFoundError(f"hyperparameter file not found: {conf} (pass --conf-file)")
    table = yaml.safe_load(conf.read_text()) or {}
    if args.env not in table:
        raise ValueError(f"{conf} has no entry for {args.env} (entries: {sorted(table)})")
    hp = {k: exponent_float(v) for k, v in table[args.env].items()}  # "learning_rate: 1e-4" is a string to PyYAML
    hp.update(args.hyperparams)
    return hp


def _make_env(cache: str, env_kwargs: dict, seed: int, sequential: bool = False):
    from stable_baselines3.common.monitor import Monitor

    kw = dict(env_kwargs, info_detections=False)
    if sequential:
        kw["order"] = "sequential"
    env = Monitor(ZoomEnv(cache, **kw))
    env.reset(seed=seed)
    return env


def train_agent(args: TrainArgs) -> Path:
    """Train (or resume) an agent; returns the run folder."""
    from stable_baselines3.common.callbacks import CallbackList, CheckpointCallback
    from stable_baselines3.common.vec_env import DummyVecEnv

    if args.algo not in ALGOS:
        raise ValueError(f"unknown algo {args.algo!r}; choose from {', '.join(ALGOS)}")
    if args.env != ENV_ID:
        raise ValueError(f"unknown env {args.env!r}; ZoomDet provides {ENV_ID}")
    if args.n_timesteps == 0 or args.n_timesteps < -1:
        raise ValueError(f"-n/--n-timesteps must be >= 1 (or -1: the config file's), got {args.n_timesteps}")
    hp = load_hyperparams(args)
    n_timesteps = int(args.n_timesteps if args.n_timesteps > 0 else hp.pop("n_timesteps", 20000))
    hp.pop("n_timesteps", None)
    hp.pop("policy", None)  # the policy class follows from the algorithm
    env_kwargs = {**hp.pop("env_kwargs", {}), **args.env_kwargs}
    try:
        ZoomEnvConfig.from_options(**env_kwargs)  # fail early on bad options
    except TypeError as e:
        raise ValueError(f"--env-kwargs: {e}") from None
    policy_kwargs = dict(hp.pop("policy_kwargs", {}) or {})
    demo = DemoConfig.pop_from(hp)
    if demo is not None and args.algo != "dqn":
        raise ValueError(f"demo_* options (learning from a rule's demonstrations) need --algo dqn, not {args.algo}")

    train_env = _make_env(args.cache, env_kwargs, args.seed)
    base_env: ZoomEnv = train_env.unwrapped
    if demo is not None and demo.rule != "random":
        try:
            rule_map(base_env, demo.rule)  # a rule this environment cannot play (its map is missing)
        except ValueError as e:
            raise ValueError(f"demo_rule {demo.rule}: {e}") from None
    vec = DummyVecEnv([lambda: train_env])
    algo_cls = algorithm_class(args.algo)

    if args.algo == "dqn":
        from zoomdet.agents.qnet import ZoomDQNPolicy
        from zoomdet.envs.zoom_env import window_geometry

        policy = ZoomDQNPolicy
        policy_kwargs = {**window_geometry(base_env), **policy_kwargs}
    else:
        policy = "MultiInputPolicy"
    if args.tensorboard_log:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ValueError("--tensorboard-log needs tensorboard: pip install 'zoomdet[tensorboard]'") from None

    if args.trained_agent:
        path = Path(args.trained_agent)
        if not path.is_file():
            raise FileNotFoundError(f"--trained-agent {path} not found")
        model = algo_cls.load(str(path), env=vec, tensorboard_log=args.tensorboard_log, device="cpu")
        buf = _replay_buffer_for(path)
        if args.algo == "dqn" and buf is not None:
            model.load_replay_buffer(str(buf))
        print(f"resuming {path} at {model.num_timesteps} steps" + (f" with replay buffer {buf.name}" if buf else ""))
    else:
        try:
            model = algo_cls(policy, vec, seed=args.seed, verbose=args.verbose, tensorboard_log=args.tensorboard_log,
                             policy_kwargs=policy_kwargs, device="cpu", **hp)
        except (AssertionError, TypeError, ValueError) as e:  # SB3 checks its arguments with asserts
            raise ValueError(f"{args.algo} refused its options (the config file's and --hyperparams): {e}") from None
    run = next_run_dir(args.log_folder, args.algo, args.env)  # made once the model is built: no empty run folders

    info = {"algo": args.algo, "env_id": args.env, "env_config": asdict(base_env.config),
            "cache": str(Path(args.cache).resolve()), "detector_id": base_env.cache.detector_id,
            "n_timesteps": n_timesteps}
    info["env_config"]["grid"] = list(info["env_config"]["grid"])
    (run / RUN_FILE).write_text(json.dumps(info, indent=1))
    demo_hp = {f"demo_{k}": v for k, v in asdict(demo).items()} if demo else {}
    (run / "config.yml").write_text(yaml.safe_dump({args.env: {"n_timesteps": n_timesteps, **hp, **demo_hp, "env_kwargs": env_kwargs,
                                                                "policy_kwargs": {k: v for k, v in policy_kwargs.items() if not k.startswith("window_")}}}))
    (run / "args.yml").write_text(yaml.safe_dump(asdict(args)))

    # the episodes the best model is chosen on (the rule is played on them too, by explicit index, which leaves
    # the evaluation's own sequence where it is)
    wants_eval_env = bool(args.eval_cache) and (args.eval_freq > 0 or demo is not None)
    eval_env = _make_env(args.eval_cache, env_kwargs, args.seed + 1, sequential=True) if wants_eval_env else None
    if demo is not None:
        _learn_from_demonstrations(model, demo, args, env_kwargs, run, pretrain=not args.trained_agent,
                                   eval_env=eval_env)

    callbacks = []
    if args.save_freq > 0:
        callbacks.append(CheckpointCallback(args.save_freq, str(run / "checkpoints"), save_replay_buffer=args.algo == "dqn"))
    if eval_env is not None and args.eval_freq > 0:
        n_eval = args.eval_episodes or len(eval_env.unwrapped.records)
        if args.algo == "ppo_mask":
            from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback as Eval
        else:
            from stable_baselines3.common.callbacks import EvalCallback as Eval
        if demo is not None and not args.trained_agent:
            Eval = _evaluating_at_start(Eval)
        callbacks.append(Eval(eval_env, n_eval_episodes=n_eval, eval_freq=args.eval_freq, log_path=str(run),
                              best_model_save_path=str(run), deterministic=True, verbose=0))
    remaining = n_timesteps - model.num_timesteps if args.trained_agent else n_timesteps
    if remaining > 0:
        model.learn(remaining, callback=CallbackList(callbacks), progress_bar=args.progress,
                    reset_num_timesteps=not args.trained_agent, tb_log_name=run.name)
    model.save(str(run / args.env))
    print(best_model_line(run))
    return run


def best_eval_return(run: Path) -> tuple[float, int]:
    """(mean return, step) of a run's best evaluation on its eval cache (``evaluations.npz``): the model
    ``best_model.zip`` holds. The first of equal bests, as SB3's ``EvalCallback`` keeps it."""
    import numpy as np

    ev = np.load(Path(run) / "evaluations.npz")
    means = ev["results"].mean(axis=1)
    best = int(np.argmax(means))
    return float(means[best]), int(ev["timesteps"][best])


def best_model_line(run: Path) -> str:
    """One line on the run's best model: its step and mean return on the eval cache (``evaluations.npz``),
    beside the demonstrating rule's return on the same episodes (``demonstrations.json``) when there is one."""
    import numpy as np

    path = run / "evaluations.npz"
    if not path.is_file():
        return "no evaluation on an eval cache: the final model is the only one"
    ret, step = best_eval_return(run)
    line = (f"best model: mean return {ret:.3f} on the eval cache at step {step} "
            f"(of {len(np.load(path)['timesteps'])} evaluations)")
    demos = run / "demonstrations.json"
    if demos.is_file():
        stats = json.loads(demos.read_text())
        if "eval_cache_return" in stats:
            line += f"; {stats['rule']} on the same episodes: {stats['eval_cache_return']:.3f}"
    return line


def _learn_from_demonstrations(model, demo: DemoConfig, args: TrainArgs, env_kwargs: dict, run: Path, pretrain: bool,
                               eval_env=None) -> None:
    """Play ``demo.rule`` in a training environment of its own, hand its transitions to ``model`` and (unless
    resuming) pretrain on them; with ``eval_env`` (the sequential evaluation env) also play the rule once over its
    images; writes ``demonstrations.json`` into the run folder."""
    import numpy as np
    from stable_baselines3.common.buffers import DictReplayBuffer

    from zoomdet.agents.demos import collect_demonstrations, rule_picker, sequential_mean_return

    env = _make_env(args.cache, env_kwargs, args.seed + 2).unwrapped
    pick = rule_picker(demo.rule, np.random.default_rng(args.seed), stop_gain=demo.stop_gain)
    buffer = DictReplayBuffer(demo.episodes * (env.config.max_steps + 1), env.observation_space, env.action_space,
                              device="cpu")
    stats = {"rule": demo.rule, **collect_demonstrations(env, pick, demo.episodes, buffer, progress=args.progress)}
    model.set_demonstrations(buffer, demo)
    if pretrain and demo.pretrain_steps:
        stats["pretrain"] = model.pretrain(demo.pretrain_steps, progress=args.progress)
    if eval_env is not None:  # the bar a checkpoint must clear: the rule on the episodes the best model is chosen on
        rule = rule_picker(demo.rule, np.random.default_rng(args.seed), stop_gain=demo.stop_gain)
        stats["eval_cache_return"] = sequential_mean_return(eval_env.unwrapped, rule)
        stats["eval_cache_images"] = len(eval_env.unwrapped.records)
    (run / "demonstrations.json").write_text(json.dumps(stats, indent=1))
    print(f"demonstrations: {stats['transitions']} transitions of {demo.rule} (mean return {stats['mean_return']:.3f})"
          + (f"; pretrained net agrees with it on {stats['pretrain']['agreement']:.1%} of them" if "pretrain" in stats else ""))
    if "eval_cache_return" in stats:
        print(f"{demo.rule} on the {stats['eval_cache_images']} eval-cache images: mean return {stats['eval_cache_return']:.3f}")


def _evaluating_at_start(eval_callback_class):
    """``eval_callback_class`` (SB3's ``EvalCallback`` or a subclass) that also evaluates before the first step."""

    class EvalAtStart(eval_callback_class):
        def _on_training_start(self) -> None:
            super()._on_training_start()
            self._on_step()  # n_calls is 0, so the periodic test passes: evaluate, save best_model.zip

    return EvalAtStart


def _replay_buffer_for(model_path: Path) -> Optional[Path]:
    m = re.fullmatch(r"(.*)_(\d+)_steps", model_path.stem)
    cands = [model_path.with_name(f"{m.group(1)}_replay_buffer_{m.group(2)}_steps.pkl")] if m else []
    cands.append(model_path.with_name("replay_buffer.pkl"))
    return next((c for c in cands if c.is_file()), None)
