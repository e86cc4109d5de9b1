"""Learning from a rule's demonstrations: DQfD (Hester et al., "Deep Q-learning from Demonstrations", AAAI 2018).

A DQN agent trained from scratch on the zoom environment ends below the rule
``greedy-entropy`` on every set so far, although the rule's own ranking is one
column of the feature Q-net's input (``window_extras: [density]``): TD learning
from a random start does not find it. DQfD starts from the rule instead:

1. :func:`collect_demonstrations` plays the rule (:func:`rule_picker`) in the
   training environment (random images, random budgets, as training draws them)
   and stores its transitions in a replay buffer of their own.
2. :meth:`~zoomdet.agents.qnet.MaskableDQN.pretrain` takes gradient steps on
   those transitions alone, with the TD loss plus the large-margin loss
   (:func:`large_margin_loss`), which makes the rule's action the Q-net's
   argmax by ``margin``; the TD term gives the values their scale.
3. Online DQN then adds, at each gradient step, the same two terms on a batch
   of demonstrations to the usual TD loss on the agent's own replay, so the
   agent departs from the rule only where its own returns say so.

``zoomdet train`` does all of it with ``--hyperparams demo_rule:greedy-entropy``
(:class:`DemoConfig`'s fields prefixed ``demo_``), and evaluates the pretrained
net before the first environment step, so ``best_model.zip`` is never worse on
the evaluation cache than the rule's copy it started from.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, fields
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor

__all__ = ["DemoConfig", "RULES", "rule_map", "rule_picker", "collect_demonstrations", "sequential_mean_return",
           "large_margin_loss"]

RULES = ("greedy-entropy", "greedy", "random", "oracle-ap")


@dataclass
class DemoConfig:
    """Demonstrations and the DQfD losses; ``zoomdet train --hyperparams demo_<field>:value`` sets each field."""

    rule: str = "greedy-entropy"
    """The demonstrator (:data:`RULES`): ``greedy-entropy`` (needs ``window_features`` or ``state: entropy``),
    ``greedy`` (the R-net map: ``state: rnet``), ``random`` (a sanity check: nothing worth copying) or
    ``oracle-ap``, ``greedy-entropy`` corrected by the ground truth of the training cache (:func:`rule_picker`)."""
    episodes: int = 1000
    """Episodes of the rule in the training environment (random image and budget each)."""
    pretrain_steps: int = 5000
    """Gradient steps on the demonstrations alone before the first environment step."""
    margin: float = 0.8
    """DQfD's margin ``l(a_E, a)`` for every action other than the rule's (AP points with ``reward: ap``)."""
    weight: float = 1.0
    """Weight ``lambda_2`` of the large-margin loss (DQfD: 1)."""
    td_weight: float = 1.0
    """Weight of the TD loss on the demonstrations (DQfD: 1; 0 clones the rule without values)."""
    stop_gain: float = 0.1
    """The rule stops when its map's positive sum falls under this. Set it to the eval config's
    ``policies.greedy_stop`` so the demonstrator is the rule as it runs live: 0.1 on HIT-UAV, 0 on Airbus
    (``benchmarks/agents.py`` prints a note where a variant's differs)."""

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"demo_rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if self.episodes < 1:
            raise ValueError(f"demo_episodes must be >= 1, got {self.episodes}")
        if self.pretrain_steps < 0:
            raise ValueError(f"demo_pretrain_steps must be >= 0, got {self.pretrain_steps}")
        if self.margin < 0 or self.weight < 0 or self.td_weight < 0:
            raise ValueError("demo_margin, demo_weight and demo_td_weight must be >= 0")

    @classmethod
    def pop_from(cls, hyperparams: dict) -> Optional["DemoConfig"]:
        """The ``demo_*`` keys of ``hyperparams`` (removed from it) as a config; ``None`` without ``demo_rule``."""
        keys = [k for k in hyperparams if k.startswith("demo_")]
        if not keys:
            return None
        known = {f.name for f in fields(cls)}
        opts = {k[len("demo_"):]: hyperparams.pop(k) for k in keys}
        unknown = sorted(set(opts) - known)
        if unknown:
            raise ValueError(f"unknown demonstration option(s) {', '.join('demo_' + u for u in unknown)}; "
                             f"known: {', '.join('demo_' + k for k in sorted(known))}")
        if "rule" not in opts:
            raise ValueError("demo_* options need demo_rule (e.g. demo_rule:greedy-entropy)")
        types = typing.get_type_hints(cls)  # the fields' classes (the annotations themselves are strings here)
        return cls(**{k: types[k](v) if types[k] in (int, float) else v for k, v in opts.items()})


def rule_map(env, name: str):
    """The :class:`~zoomdet.zoom.windows.GainMap` a rule ranks on in ``env`` (a ``ZoomEnv``), zeroed where zoomed:
    the entropy map for ``greedy-entropy`` and ``oracle-ap`` (which breaks its ties on it; the env's first feature
    map with ``window_features``, else its state map if that is ``entropy``), the R-net map for ``greedy`` (the
    state map with ``state: rnet``)."""
    state = env.config.state
    if name in ("greedy-entropy", "oracle-ap"):
        if env.maps is not None:
            return env.maps[0]
        if state == "entropy":
            return env.gain
        raise ValueError("rule greedy-entropy needs the entropy map: an environment with window_features or state entropy")
    if name == "greedy":
        if state == "rnet":
            return env.gain
        raise ValueError(f"rule greedy ranks on the R-net map: an environment with state rnet (this one: {state})")
    raise ValueError(f"rule {name!r} has no map")


def rule_picker(name: str, rng: Optional[np.random.Generator] = None, gain_of: Optional[Callable] = None,
                stop_gain: Optional[float] = None) -> Callable[[Any, Any], int]:
    """``pick(env, obs) -> action``: a rule's action in the environment's terms (window index, or the stop action).

    ``greedy`` and ``greedy-entropy`` pick with :func:`zoomdet.rnet.policies.greedy_choice` on ``gain_of(env)``
    (default :func:`rule_map`) and stop when that map's positive sum is under ``stop_gain`` (default: only
    the env's own ``stop_gain`` ends the episode); ``random`` takes a random allowed window (``rng``). The
    candidates' boxes and pixels are built once per episode.

    ``oracle-ap`` is ``greedy-entropy`` corrected by the ground truth (``ZoomEnv.ap_gains``, a one-step
    look-ahead on the env's AP): it takes the window that adds the most AP, the rule's ranking breaking ties;
    where no window adds AP it plays the rule among the windows that lose none (stopping where the rule would),
    and it stops where every window loses AP. So it is the rule wherever the ground truth cannot tell the
    rule's pick from the others, and the demonstrations teach only where the truth differs."""
    from zoomdet.rnet.policies import greedy_choice
    from zoomdet.zoom.windows import window_boxes

    if name not in RULES:
        raise ValueError(f"unknown rule {name!r}; choose from {', '.join(RULES)}")
    rng = rng if rng is not None else np.random.default_rng(0)
    memo: dict = {}

    def pick(env, obs) -> int:
        allowed = env.action_masks()[:-1]
        if name == "random":
            return int(rng.choice(np.flatnonzero(allowed))) if allowed.any() else env.stop_action
        if memo.get("of") is not env.candidates:  # a new episode (each reset makes a new candidate list)
            memo.update(of=env.candidates, boxes=window_boxes(env.candidates),
                        pixels=np.array([w.source_pixels for w in env.candidates], dtype=np.float64))
        gain = rule_map(env, name) if gain_of is None else gain_of(env)
        if name == "oracle-ap":  # the rule, on the windows of most AP (the ground truth's look-ahead)
            ap = env.ap_gains()  # NaN where not allowed
            if np.isnan(ap).all() or np.nanmax(ap) < -1e-9:
                return env.stop_action  # nothing allowed, or every window loses AP
            allowed = np.nan_to_num(ap, nan=-np.inf) >= np.nanmax(ap) - 1e-9
            if np.nanmax(ap) > 1e-9:  # a window adds AP: the rule only breaks the ties, and never stops
                k = greedy_choice(gain, memo["boxes"], memo["pixels"], allowed)
                return int(np.flatnonzero(allowed)[0]) if k is None else k
        if stop_gain is not None and gain.positive_total() < stop_gain:
            return env.stop_action
        k = greedy_choice(gain, memo["boxes"], memo["pixels"], allowed)
        return env.stop_action if k is None else k

    return pick


def collect_demonstrations(env, pick: Callable[[Any, Any], int], episodes: int, buffer, progress: bool = False) -> dict:
    """Play ``episodes`` episodes of ``pick`` in ``env`` (a ``ZoomEnv``, reset without options: its own draw of
    image and budget) and add every transition to ``buffer`` (an SB3 ``DictReplayBuffer`` of one env, large
    enough), as SB3's off-policy loop would: ``done`` on termination or truncation, a truncation marked
    ``TimeLimit.truncated`` so the buffer bootstraps through it. Returns ``{"episodes", "transitions",
    "mean_return", "zoomed_share"}``."""
    from tqdm import tqdm

    returns, transitions, zoomed = [], 0, 0
    for _ in tqdm(range(episodes), desc="demonstrations", disable=not progress):
        obs, _ = env.reset()
        total, steps = 0.0, 0
        while True:
            action = pick(env, obs)
            nxt, reward, terminated, truncated, _ = env.step(action)
            buffer.add({k: v[None] for k, v in obs.items()}, {k: v[None] for k, v in nxt.items()}, np.array([action]),
                       np.array([reward], dtype=np.float32), np.array([terminated or truncated]),
                       [{"TimeLimit.truncated": truncated and not terminated}])
            total, steps, obs = total + reward, steps + (action != env.stop_action), nxt
            transitions += 1
            if terminated or truncated:
                break
        returns.append(total)
        zoomed += steps > 0
    return {"episodes": episodes, "transitions": transitions, "mean_return": float(np.mean(returns)),
            "zoomed_share": zoomed / episodes}


def sequential_mean_return(env, pick: Callable[[Any, Any], int]) -> float:
    """Mean episode return of ``pick(env, obs) -> action`` over one pass of ``env``'s cached images (a
    ``ZoomEnv``), image ``k`` reset with ``options={"index": k}``: with ``order: sequential`` each image keeps its
    own budget draw, so these are the episodes on which ``zoomdet train`` chooses its best model. With
    ``reward: ap`` the result is the AP points (× 100) per image that ``pick``'s zooms add."""
    returns = []
    for k in range(len(env.records)):
        obs, _ = env.reset(options={"index": k})
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(pick(env, obs))
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def large_margin_loss(q_values: Tensor, actions: Tensor, margin: float) -> Tensor:
    """DQfD's supervised loss ``mean_s [max_a (Q(s, a) + l(a_E, a)) - Q(s, a_E)]`` with ``l = margin`` for
    ``a != a_E`` and 0 for the demonstrator's action ``a_E``: zero exactly when ``a_E`` leads every other
    action by at least ``margin``.

    Args:
        q_values: ``float32[B, A]``; masked actions at ``-1e8`` (never the max).
        actions: ``int64[B]`` or ``[B, 1]``, the demonstrator's actions.
        margin: in the Q-values' units.
    """
    a = actions.reshape(-1, 1).long()
    bonus = torch.full_like(q_values, float(margin)).scatter_(1, a, 0.0)
    return ((q_values + bonus).max(dim=1).values - q_values.gather(1, a).squeeze(1)).mean()
