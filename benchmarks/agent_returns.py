"""What does DQN training add? Returns on the evaluation cache of the rules, untrained Q-nets and trained agents.

    python benchmarks/agent_returns.py --cache runs/exp/cache-val-exact --rnet runs/exp/rnet-exact.pt \\
        --dataset hituav-val60-exact --variant qnet-win-density --untrained-seeds 0 1 2 \\
        --agent s0=runs/s12/agents-win/qnet-win-density-s0/best_model.zip

``zoomdet train`` keeps the checkpoint with the best mean return on ``--eval-cache`` (one episode per cached
image, in cache order, each image with the same budget draw on every pass: ``order: sequential``). This script
plays, in that same environment and with the variant's options (:data:`VARIANTS` of ``benchmarks/agents.py``, or
``--variant NAME=key:value,...``):

- the rules ``greedy-entropy`` and ``greedy`` (:func:`zoomdet.rnet.policies.greedy_choice` on the entropy map or
  the R-net's, stopping under ``--stop-gain`` as the live rules do);
- the Q-net of the variant as built before any training step, for each ``--untrained-seeds`` seed (the weights
  ``zoomdet train --seed S`` starts from);
- every ``--agent`` (a trained ``.zip``; it must have been trained with the variant's options);

and prints each one's mean return: with ``reward: ap`` the AP points per image its zooms added. For a trained
DQN agent it also gives how far its Q-values overestimate what it then collects: ``q_first``, the mean over
images of its Q-value at the episode's first state (the value of the action it takes), against
``discounted_return``, the mean of ``sum_t gamma^t r_t`` of the episode it then plays (``gamma`` its own), the
quantity that Q-value estimates; ``q_bias`` is their difference (Double DQN's target is meant to bring it
down). Rows (``dataset``, ``policy``, ``kind``, ``seed``, ``mean_return``, ``images``, ``variant``, and for
trained DQN agents ``q_first``, ``discounted_return``, ``q_bias``) go to
``benchmarks/results/agent_returns.json`` (replacing ``--dataset``'s rows).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def main(argv=None) -> int:
    from agents import VARIANTS, parse_variant

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True, help="the evaluation rollout cache (train's --eval-cache)")
    ap.add_argument("--rnet", required=True, help="R-net checkpoint (the variant's state and greedy's map)")
    ap.add_argument("--dataset", required=True, help="name of the rows in the results file")
    ap.add_argument("--variant", default="qnet-win", metavar="NAME[=KEY:VALUE,...]",
                    help=f"environment options (default qnet-win); named: {', '.join(VARIANTS)}")
    ap.add_argument("--untrained-seeds", type=int, nargs="*", default=[0, 1, 2], metavar="SEED",
                    help="seeds of untrained Q-nets to play (default 0 1 2; none: leave them out)")
    ap.add_argument("--agent", action="append", default=[], metavar="NAME=PATH", help="trained agent .zip; repeat")
    ap.add_argument("--stop-gain", type=float, default=0.1, help="the rules' stop rule (the live greedy_stop, 0.1)")
    args = ap.parse_args(argv)

    from tqdm import tqdm

    from zoomdet.agents.demos import rule_picker, sequential_mean_return
    from zoomdet.agents.policy import AgentPolicy
    from zoomdet.agents.qnet import MaskableDQN, ZoomDQNPolicy
    from zoomdet.agents.train import TrainArgs, load_hyperparams, parse_key_values
    from zoomdet.envs import ZoomEnv
    from zoomdet.envs.zoom_env import window_geometry
    from zoomdet.eval.results import command_line, split_variant, write_results

    name, items = parse_variant(args.variant)
    try:
        options = {"rnet": args.rnet, **parse_key_values(split_variant(items)[0])}
        env = ZoomEnv(args.cache, **options, order="sequential", info_detections=False)
        config = env.config  # as the cache completes it (a class-column variant's category ids)
        agents = []
        for spec in args.agent:
            if "=" not in spec:
                raise ValueError(f"--agent takes NAME=PATH, got {spec!r}")
            label, path = spec.split("=", 1)
            agent = AgentPolicy.from_path(path, detector_id=env.cache.detector_id, name=label)
            if agent.config.window_columns != config.window_columns or agent.config.extra_channels != config.extra_channels:
                raise ValueError(f"agent {path} was trained on another observation than variant {name!r}")
            agents.append(agent)
    except (FileNotFoundError, ValueError, TypeError) as e:
        ap.error(str(e))

    def returns(pick):  # what each player is measured by: its mean return over one pass of the cache
        return lambda env: {"mean_return": sequential_mean_return(env, pick)}

    players = []
    if config.window_features or config.state == "entropy":  # the entropy map (zeroed where zoomed) is in the env
        players.append(("greedy-entropy", "rule", None, returns(rule_picker("greedy-entropy", stop_gain=args.stop_gain))))
    if config.state == "rnet":  # greedy ranks on the R-net map
        players.append(("greedy", "rule", None, returns(rule_picker("greedy", stop_gain=args.stop_gain))))
    policy_kwargs = {**window_geometry(env), **(load_hyperparams(TrainArgs()).get("policy_kwargs") or {})}  # as train
    for seed in args.untrained_seeds:
        model = MaskableDQN(ZoomDQNPolicy, env, seed=seed, learning_starts=1, buffer_size=10, device="cpu",
                            policy_kwargs=policy_kwargs)
        players.append((f"{name} untrained", "untrained", seed,
                        returns(lambda env, obs, m=model: int(m.predict(obs, deterministic=True)[0]))))
    # a DQN agent's one pass gives its value bias beside its mean return
    players += [(a.name, "trained", None,
                 (lambda env, a=a: value_bias(env, a)) if a.algo == "dqn" else returns(lambda env, obs, a=a: a.act(obs)))
                for a in agents]

    common = {"dataset": args.dataset, "images": len(env.records), "variant": name, "cache": args.cache,
              "command": command_line(), "date": __import__("datetime").date.today().isoformat()}
    rows = []
    for label, kind, seed, measure in tqdm(players, desc="policies"):
        rows.append({**common, "policy": label, "kind": kind, "seed": seed, **measure(env)})
    print(f"{args.dataset}: {len(env.records)} cached images, variant {name} ({', '.join(items)}); mean return per image"
          + ("; for trained DQN agents the first state's Q-value, the discounted return, their difference" if agents else ""))
    for r in rows:
        print(f"  {r['policy']:40s} {'' if r['seed'] is None else r['seed']:>4} {r['mean_return']:8.3f}"
              + (f" {r['q_first']:8.3f} {r['discounted_return']:8.3f} {r['q_bias']:+8.3f}" if "q_bias" in r else ""))
    path = write_results("agent_returns", rows, replace={"dataset": args.dataset},
                         required=("dataset", "images", "policy", "kind", "mean_return", "command", "date"))
    print(f"wrote {path}")
    return 0


def value_bias(env, agent) -> dict:
    """One pass of ``env``'s cached images (the episodes of :func:`~zoomdet.agents.demos.sequential_mean_return`)
    with the DQN ``agent`` (an :class:`~zoomdet.agents.policy.AgentPolicy`): ``mean_return``, as that function
    gives it; ``q_first``, the mean of its Q-value for the action it takes in each episode's first state;
    ``discounted_return``, the mean of ``sum_t gamma^t r_t`` that the episode then gives, ``gamma`` the model's;
    ``q_bias = q_first - discounted_return`` (> 0: the Q-values promise more than the agent collects)."""
    import numpy as np

    gamma = float(agent.model.gamma)
    firsts, returns, discounted = [], [], []
    for k in range(len(env.records)):
        obs, _ = env.reset(options={"index": k})
        q = agent.mean_q_values(obs)
        action = agent.act(obs)
        firsts.append(float(q[action]))
        total, disc, t, done = 0.0, 0.0, 0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(action)
            total, disc = total + float(reward), disc + gamma ** t * float(reward)
            t, done = t + 1, terminated or truncated
            if not done:
                action = agent.act(obs)
        returns.append(total)
        discounted.append(disc)
    q_first, disc = float(np.mean(firsts)), float(np.mean(discounted))
    return {"mean_return": float(np.mean(returns)), "q_first": q_first, "discounted_return": disc,
            "q_bias": q_first - disc}


if __name__ == "__main__":
    sys.exit(main())
