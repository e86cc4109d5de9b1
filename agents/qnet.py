"""The paper's Q-net as a stable-baselines3 DQN policy, and DQN with action masking.

:class:`WindowQHead`: fully convolutional on the pooled AG map. One 3x3
convolution, then one branch per window grid (large 2x2, small 3x3): each
candidate window's Q-value is a 1x1 convolution (a linear map of the
hidden channels) of the convolution's output averaged over the grid cells
that window covers, so each output cell of a branch *is* a window, as in the
paper. The stop action's Q-value is a linear map of the globally averaged
features. Masked actions get ``-1e8``, so the greedy choice, the TD target's
max and :meth:`MaskableDQN.predict` never pick one.

:class:`FeatureQHead` (``head: features``, environments with
``window_features``): one MLP shared by every action scores each row of the
``windows`` observation (what a window holds, its cost, the episode's
globals; the stop action is a row of its own). It has no weight tied to a
window's position or grid, so it can only learn a rule over window
contents, the kind of rule ``greedy-entropy`` is; and it reads each
window's exact sums where :class:`WindowQHead` reads a 12x16 pooled grid.
Both are small (about 5,000 parameters).

:class:`ZoomDQNPolicy` plugs the head into SB3's ``DQNPolicy`` (its target
network and replay come from SB3); :class:`MaskableDQN` is SB3's DQN whose
random actions (warm-up and epsilon-greedy) are drawn among allowed ones, and
which learns from a rule's demonstrations when given them (DQfD,
:mod:`zoomdet.agents.demos`): pretraining on them, then their TD and
large-margin losses beside the agent's own TD loss.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import DQN
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.utils import polyak_update, update_learning_rate
from stable_baselines3.dqn.policies import DQNPolicy, QNetwork
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["WindowQHead", "FeatureQHead", "ZoomQNetwork", "ZoomDQNPolicy", "MaskableDQN", "window_pooling", "random_masked_actions"]

MASKED_Q = -1e8


def window_pooling(window_boxes: Sequence[Sequence[float]], rows: int, cols: int) -> Tensor:
    """``float32[K, rows * cols]``: for each window (normalized xyxy in [0, 1]) the share of it in each grid
    cell, normalized to sum to 1 (a weighted average over the cells it covers)."""
    xs, ys = np.linspace(0, 1, cols + 1), np.linspace(0, 1, rows + 1)
    out = []
    for x0, y0, x1, y1 in window_boxes:
        fx = np.clip(np.minimum(xs[1:], x1) - np.maximum(xs[:-1], x0), 0, None)
        fy = np.clip(np.minimum(ys[1:], y1) - np.maximum(ys[:-1], y0), 0, None)
        w = np.outer(fy, fx).ravel()
        out.append(w / max(w.sum(), 1e-12))
    return torch.tensor(np.stack(out), dtype=torch.float32)


class WindowQHead(nn.Module):
    """Q-values ``[B, K + 1]`` from the map ``[B, C, rows, cols]`` and the mask ``[B, K + 1]`` (see module docstring).

    Args:
        in_channels, rows, cols: observation map shape.
        window_boxes: ``K`` candidate windows, normalized xyxy, in action order.
        window_groups: ``K`` branch indices (0 = large grid, 1 = small grid, ...).
        hidden: channels of the 3x3 convolution.
    """

    def __init__(self, in_channels: int, rows: int, cols: int, window_boxes: Sequence[Sequence[float]],
                 window_groups: Sequence[int], hidden: int = 64) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(inplace=True))
        self.register_buffer("pool", window_pooling(window_boxes, rows, cols))
        self.register_buffer("groups", torch.tensor(list(window_groups), dtype=torch.int64))
        n_groups = int(max(window_groups)) + 1
        self.branch_weight = nn.Parameter(torch.randn(n_groups, hidden) * (1.0 / hidden) ** 0.5)
        self.branch_bias = nn.Parameter(torch.zeros(n_groups))
        self.stop = nn.Linear(hidden + in_channels, 1)

    def forward(self, grid: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        h = self.conv(grid)  # [B, hidden, rows, cols]
        pooled = torch.einsum("bhn,kn->bkh", h.flatten(2), self.pool)  # [B, K, hidden]
        q_windows = (pooled * self.branch_weight[self.groups]).sum(-1) + self.branch_bias[self.groups]
        q_stop = self.stop(torch.cat([h.mean((2, 3)), grid.mean((2, 3))], dim=1))
        q = torch.cat([q_windows, q_stop], dim=1)
        if mask is not None:
            q = q.masked_fill(mask < 0.5, MASKED_Q)
        return q


class FeatureQHead(nn.Module):
    """Q-values ``[B, K + 1]`` from the per-action features ``[B, K + 1, F]`` and the mask ``[B, K + 1]``: one MLP
    (``F -> hidden -> hidden -> 1``) shared by every row (see module docstring)."""

    def __init__(self, n_features: int, hidden: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                                 nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, windows: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        q = self.mlp(windows).squeeze(-1)
        if mask is not None:
            q = q.masked_fill(mask < 0.5, MASKED_Q)
        return q


HEADS = ("map", "features")


class ZoomQNetwork(QNetwork):
    """SB3 ``QNetwork`` whose Q-values come from :class:`WindowQHead` on the ``map`` and ``mask`` observations
    (``head="map"``), or from :class:`FeatureQHead` on the ``windows`` and ``mask`` ones (``head="features"``)."""

    def __init__(self, observation_space: spaces.Dict, action_space: spaces.Discrete, features_extractor, features_dim: int,
                 window_boxes: Sequence[Sequence[float]] = (), window_groups: Sequence[int] = (), hidden: int = 64,
                 head: str = "map", **kwargs: Any) -> None:
        super().__init__(observation_space, action_space, features_extractor, features_dim, **kwargs)
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if len(window_boxes) != action_space.n - 1:
            raise ValueError(f"{len(window_boxes)} window boxes for {action_space.n - 1} window actions")
        self.window_boxes, self.window_groups, self.hidden = [list(map(float, b)) for b in window_boxes], list(window_groups), hidden
        self.head = head
        if head == "features":
            if "windows" not in observation_space.spaces:
                raise ValueError("head 'features' needs the windows observation: train with window_features: true")
            self.q_net = FeatureQHead(observation_space["windows"].shape[-1], hidden)
        else:
            c, rows, cols = observation_space["map"].shape
            self.q_net = WindowQHead(c, rows, cols, window_boxes, window_groups, hidden)

    def forward(self, obs) -> Tensor:
        obs = preprocess_obs(obs, self.observation_space, normalize_images=False)
        return self.q_net(obs["windows" if self.head == "features" else "map"], obs["mask"])

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(window_boxes=self.window_boxes, window_groups=self.window_groups, hidden=self.hidden, head=self.head)
        return data


class ZoomDQNPolicy(DQNPolicy):
    """DQN policy with the window Q-net; ``policy_kwargs``: ``window_boxes``, ``window_groups``, ``hidden``,
    ``head`` (``map`` or ``features``)."""

    def __init__(self, *args: Any, window_boxes: Sequence[Sequence[float]] = (), window_groups: Sequence[int] = (),
                 hidden: int = 64, head: str = "map", **kwargs: Any) -> None:
        self.head_kwargs = dict(window_boxes=[list(map(float, b)) for b in window_boxes],
                                window_groups=list(map(int, window_groups)), hidden=int(hidden), head=str(head))
        super().__init__(*args, **kwargs)

    def make_q_net(self) -> ZoomQNetwork:
        net_args = self._update_features_extractor(self.net_args, features_extractor=None)
        return ZoomQNetwork(**net_args, **self.head_kwargs).to(self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(self.head_kwargs)
        return data


def random_masked_actions(observation: dict, rng: np.random.Generator) -> np.ndarray:
    """One uniformly random allowed action per observation (``observation["mask"]``, batched or not)."""
    mask = np.asarray(observation["mask"])
    rows = mask.reshape(-1, mask.shape[-1])
    acts = np.array([rng.choice(np.flatnonzero(r)) for r in rows])
    return acts if mask.ndim > 1 else acts.reshape(())


class MaskableDQN(DQN):
    """SB3 DQN whose warm-up and epsilon-greedy actions respect the observation's action mask.

    ``double_q=True`` (``--hyperparams double_q:true``) makes the TD target Double DQN's (van Hasselt et al.,
    2016): the next state's action is the online net's argmax among allowed actions, its value the target
    net's, ``r + gamma * Q_target(s', argmax_a' Q(s', a'))``, instead of ``max_a' Q_target(s', a')``. With
    a noisy reward (one image's AP change) and up to 30 actions, the plain max favours whichever action's
    estimate is noisiest upwards; the double target does not."""

    def __init__(self, *args: Any, double_q: bool = False, **kwargs: Any) -> None:
        if not isinstance(double_q, bool):
            raise ValueError(f"double_q must be true or false, got {double_q!r}")
        self.double_q = double_q
        super().__init__(*args, **kwargs)

    def _mask_rng(self) -> np.random.Generator:
        if not hasattr(self, "_masked_rng"):
            self._masked_rng = np.random.default_rng(self.seed)
        return self._masked_rng

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = False):
        if not deterministic and np.random.rand() < self.exploration_rate:
            return random_masked_actions(observation, self._mask_rng()), state
        return self.policy.predict(observation, state, episode_start, deterministic)

    def _sample_action(self, learning_starts: int, action_noise=None, n_envs: int = 1):
        if self.num_timesteps < learning_starts:
            action = random_masked_actions(self._last_obs, self._mask_rng())
            return action, action
        return super()._sample_action(learning_starts, action_noise, n_envs)

    # ----------------------------------------------------------------- demonstrations (DQfD)
    demo_buffer = None
    demo = None

    def set_demonstrations(self, buffer, config) -> None:
        """Learn from the transitions in ``buffer`` (an SB3 replay buffer filled by
        :func:`~zoomdet.agents.demos.collect_demonstrations`) with the losses of ``config``
        (:class:`~zoomdet.agents.demos.DemoConfig`) from now on; ``buffer=None`` turns it off."""
        self.demo_buffer, self.demo = buffer, config

    def _td_loss(self, data) -> Tensor:
        """SB3 DQN's loss: Huber between ``Q(s, a)`` and ``r + gamma * max_a' Q_target(s', a')`` (with
        ``double_q``, ``r + gamma * Q_target(s', argmax_a' Q(s', a'))``)."""
        discounts = data.discounts if data.discounts is not None else self.gamma
        with torch.no_grad():
            target_q = self.q_net_target(data.next_observations)
            if self.double_q:  # False for models saved before the option: SB3's load runs __init__ first
                best = self.q_net(data.next_observations).argmax(dim=1, keepdim=True)
                next_q = target_q.gather(1, best)
            else:
                next_q = target_q.max(dim=1).values.reshape(-1, 1)
            target = data.rewards + (1 - data.dones) * discounts * next_q
        return F.smooth_l1_loss(self.q_net(data.observations).gather(1, data.actions.long()), target)

    def _demo_losses(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """(TD loss, large-margin loss) on a batch of demonstrations, each times its weight."""
        from zoomdet.agents.demos import large_margin_loss

        data = self.demo_buffer.sample(batch_size)
        td = self._td_loss(data) if self.demo.td_weight > 0 else torch.zeros(())
        margin = large_margin_loss(self.q_net(data.observations), data.actions, self.demo.margin)
        return self.demo.td_weight * td, self.demo.weight * margin

    def _gradient_step(self, loss: Tensor) -> None:
        self.policy.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
        self.policy.optimizer.step()

    def pretrain(self, steps: int, batch_size: Optional[int] = None, progress: bool = False) -> dict:
        """``steps`` gradient steps on the demonstrations alone (TD + large-margin loss), the target network
        updated every ``target_update_interval`` steps as online training would. Returns the last 100 steps'
        mean losses and how often the Q-net's argmax is the demonstrator's action on a final batch."""
        from tqdm import tqdm

        if self.demo_buffer is None:
            raise RuntimeError("pretrain needs demonstrations: call set_demonstrations first")
        batch_size = batch_size or self.batch_size
        self.policy.set_training_mode(True)
        update_learning_rate(self.policy.optimizer, self.lr_schedule(self._current_progress_remaining))  # no logger yet
        td_losses, margin_losses = [], []
        for step in tqdm(range(1, steps + 1), desc="pretraining on demonstrations", disable=not progress):
            td, margin = self._demo_losses(batch_size)
            self._gradient_step(td + margin)
            td_losses.append(td.item())
            margin_losses.append(margin.item())
            if step % max(self.target_update_interval, 1) == 0:
                polyak_update(self.q_net.parameters(), self.q_net_target.parameters(), self.tau)
                polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)
        polyak_update(self.q_net.parameters(), self.q_net_target.parameters(), 1.0)  # start online from this net
        self.policy.set_training_mode(False)
        data = self.demo_buffer.sample(min(1024, self.demo_buffer.size()))
        with torch.no_grad():
            agree = (self.q_net(data.observations).argmax(1) == data.actions.reshape(-1)).float().mean().item()
        return {"steps": steps, "td_loss": float(np.mean(td_losses[-100:] or [0.0])),
                "margin_loss": float(np.mean(margin_losses[-100:] or [0.0])), "agreement": agree}

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        """SB3 DQN's update (with ``double_q``, on the double target); with demonstrations, each step's loss adds
        their TD and large-margin terms (DQfD)."""
        if self.demo_buffer is None and not self.double_q:
            return super().train(gradient_steps, batch_size)
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        losses, demo_td, demo_margin = [], [], []
        for _ in range(gradient_steps):
            agent = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
            td, margin = self._demo_losses(batch_size) if self.demo_buffer is not None else (torch.zeros(()),) * 2
            loss = self._td_loss(agent)
            self._gradient_step(loss + td + margin)
            losses.append(loss.item())
            demo_td.append(td.item())
            demo_margin.append(margin.item())
        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", np.mean(losses))
        if self.demo_buffer is not None:
            self.logger.record("train/demo_td_loss", np.mean(demo_td))
            self.logger.record("train/demo_margin_loss", np.mean(demo_margin))

    def _excluded_save_params(self) -> list[str]:
        return super()._excluded_save_params() + ["_masked_rng", "demo_buffer", "demo"]
