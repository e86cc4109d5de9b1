"""A trained agent as a :class:`~zoomdet.zoom.engine.ZoomPolicy` of the live zoom engine.

``zoomdet evaluate --policy logs/dqn/ZoomDet-v0_1/best_model.zip`` (and the
service) load the ``.zip`` with :meth:`AgentPolicy.from_path`. Several DQN
models trained with the same environment options (e.g. seeds) joined by
``+`` (``a/best_model.zip+b/best_model.zip``) make one policy that picks the
argmax of their mean Q-values (:meth:`AgentPolicy.from_paths`). With an override
margin (``policies.agent_override_margin``, :meth:`AgentPolicy.overriding`)
a DQN agent plays the rule ``greedy-entropy`` and takes its own pick only
where its Q-value beats the rule's action by more than the margin
(:func:`override_action`). The run
folder's ``zoomdet.json`` (written by ``zoomdet train``) names the algorithm
and the environment options, so the live policy builds exactly the
observation the agent was trained on (:func:`zoomdet.envs.zoom_env.observe`)
from the coarse detections, and stops where the environment would have
terminated (remaining gain under ``stop_gain``, the stop action, or
``max_steps``).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from zoomdet.envs.zoom_env import (ZoomEnvConfig, budget_left, context_planes, covered_by, feature_maps, gain_model_for,
                                   observe, window_features)
from zoomdet.zoom.engine import EpisodeState
from zoomdet.zoom.windows import GainMap, window_boxes

__all__ = ["AgentPolicy", "RUN_FILE", "load_run_info", "run_folder", "ALGOS", "algorithm_class", "override_action"]

RUN_FILE = "zoomdet.json"


ALGOS = ("dqn", "ppo_mask")


def algorithm_class(algo: str):
    """The SB3 class of an algorithm name: ``dqn`` (:class:`~zoomdet.agents.qnet.MaskableDQN`) or ``ppo_mask`` (MaskablePPO)."""
    if algo == "dqn":
        from zoomdet.agents.qnet import MaskableDQN

        return MaskableDQN
    if algo == "ppo_mask":
        from sb3_contrib import MaskablePPO

        return MaskablePPO
    raise ValueError(f"unknown algo {algo!r}; choose from {', '.join(ALGOS)}")


def override_action(q: np.ndarray, rule_action: int, margin: float) -> int:
    """The agent's argmax where it beats the rule's action by more than ``margin``, else the rule's action.

    A conservative step away from a baseline (as in safe policy improvement): the agent leaves the rule only
    where its own estimate says leaving pays more than ``margin``. ``margin`` 0 is the agent itself (ties go
    to the rule), a large one the rule itself.

    Args:
        q: ``float[K + 1]`` Q-values of one observation (windows, then stop; masked actions about ``-1e8``),
            in the reward's units (AP points x 100 with ``reward: ap``).
        rule_action: the rule's action in the same terms (window index, or ``K`` = stop).
        margin: how much higher the agent's best Q-value must be, >= 0.
    """
    a = int(np.argmax(q))
    return a if q[a] - q[rule_action] > margin else int(rule_action)


def run_folder(model_path: str | Path) -> Path:
    """The run folder a model file belongs to: the one holding ``zoomdet.json`` (the model's folder, or the one
    above for checkpoints)."""
    p = Path(model_path)
    for folder in (p.parent, p.parent.parent):
        if (folder / RUN_FILE).is_file():
            return folder
    raise FileNotFoundError(f"no {RUN_FILE} next to {p} or in its parent folder; was it trained with zoomdet train?")


def load_run_info(model_path: str | Path) -> dict:
    """``zoomdet.json`` of the run a model file belongs to (:func:`run_folder`). A folder written by ``zoomdet
    export`` (``relative_paths: true``) names its R-net relative to itself; that path is joined to the folder
    here, so the returned ``env_config.rnet`` always opens from the working directory."""
    folder = run_folder(model_path)
    info = json.loads((folder / RUN_FILE).read_text())
    if info.get("relative_paths") and info.get("env_config", {}).get("rnet"):
        info["env_config"]["rnet"] = str(folder / info["env_config"]["rnet"])
        info["relative_paths"] = False
    return info


class AgentPolicy:
    """Picks windows with a trained SB3 model (stateless per call: episode data lives in ``EpisodeState``).

    Args:
        model: a loaded ``MaskableDQN`` or ``MaskablePPO``.
        algo: ``dqn`` or ``ppo_mask``.
        env_config: the environment options the model was trained with.
        gain_model: the state builder (R-net or entropy); ``None`` is refused (the oracle state needs ground truth).
        name: name in reports.
        ensemble: further DQN models whose Q-values are averaged with ``model``'s.
        override_margin: ``None`` (the agent alone), or play ``greedy-entropy`` (stopping as it does under
            ``rule_stop``) unless the agent's best Q-value beats the rule's action by more than this
            (:func:`override_action`; DQN with ``window_features`` only).
        rule_stop: the rule's stop threshold, the live ``policies.greedy_stop``.
    """

    needs_ground_truth = False

    def __init__(self, model, algo: str, env_config: ZoomEnvConfig, gain_model, name: str = "agent",
                 ensemble: Sequence = (), override_margin: Optional[float] = None, rule_stop: float = 0.1) -> None:
        if gain_model is None:
            raise ValueError("an agent trained on the oracle state cannot run live (it needs ground truth); "
                             "train it with state rnet or entropy")
        if ensemble and algo != "dqn":
            raise ValueError(f"an ensemble averages Q-values: only dqn models can be joined, not {algo}")
        self.model, self.algo, self.config, self.gain_model, self.name = model, algo, env_config, gain_model, name
        self.ensemble = list(ensemble)
        """Further DQN models whose Q-values are averaged with ``model``'s (empty: ``model`` alone)."""
        if override_margin is not None:
            if not override_margin >= 0:
                raise ValueError(f"the override margin must be >= 0, got {override_margin}")
            if algo != "dqn" or not env_config.window_features:
                raise ValueError("an override margin compares the agent's Q-values with the rule's action on the "
                                 f"entropy map of its window features: a dqn agent with window_features only ({name})")
        self.override_margin, self.rule_stop = override_margin, float(rule_stop)

    def overriding(self, margin: float, rule_stop: float = 0.1) -> "AgentPolicy":
        """The same models, playing ``greedy-entropy`` unless their best Q-value beats its action by more than
        ``margin`` (named ``<name>~override<margin>``)."""
        return AgentPolicy(self.model, self.algo, self.config, self.gain_model, f"{self.name}~override{margin:g}",
                           self.ensemble, override_margin=margin, rule_stop=rule_stop)

    @classmethod
    def from_paths(cls, paths: Sequence[str | Path], detector_id: Optional[str] = None,
                   name: Optional[str] = None) -> "AgentPolicy":
        """One policy from several DQN models trained with the same environment options: each step picks the
        argmax of their mean Q-values (masked actions stay masked in every model)."""
        if len(paths) < 2:
            raise ValueError("an ensemble needs at least two agent models")
        agents = [cls.from_path(p, detector_id=detector_id) for p in paths]
        for path, agent in zip(paths, agents):
            if agent.algo != "dqn":
                raise ValueError(f"an ensemble averages Q-values: only dqn models can be joined ({path} is {agent.algo})")
        first = agents[0]
        for path, other in zip(paths[1:], agents[1:]):
            if asdict(other.config) != asdict(first.config):
                diff = sorted(k for k, v in asdict(other.config).items() if asdict(first.config)[k] != v)
                raise ValueError(f"{path} was trained with other environment options than {paths[0]} ({', '.join(diff)}); "
                                 "an ensemble needs the same observation")
        runs = "+".join(a.name.split(":", 1)[1].split("/")[0] for a in agents)
        return cls(first.model, "dqn", first.config, first.gain_model, name or f"dqn-ensemble:{runs}",
                   ensemble=[a.model for a in agents[1:]])

    @classmethod
    def from_path(cls, path: str | Path, detector_id: Optional[str] = None, name: Optional[str] = None) -> "AgentPolicy":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"agent model not found: {path}; train one with zoomdet train")
        info = load_run_info(path)
        algo = info["algo"]
        cfg = ZoomEnvConfig(**info["env_config"])
        trained_on = info.get("detector_id")  # agents from before detector ids recorded the weights' digest only
        if detector_id and trained_on != detector_id:
            raise ValueError(f"agent {path} was trained on a cache of detector "
                             f"{trained_on or info.get('detector_checkpoint_id')}, not {detector_id} (other weights or "
                             f"model settings); train it on a cache of this detector")
        try:
            model = algorithm_class(algo).load(str(path), device="cpu")
        except (AssertionError, ValueError, KeyError, OSError) as e:  # SB3 asserts on a zip without its data
            why = str(e).removeprefix("Error: ") or type(e).__name__
            raise ValueError(f"agent {path} is not a {algo} model that loads ({why})") from e
        run = path.parent.name if path.parent.name != "checkpoints" else path.parent.parent.name
        return cls(model, algo, cfg, gain_model_for(cfg, detector_id), name or f"{algo}:{run}/{path.stem}")

    def gain_map(self, state: EpisodeState) -> GainMap:
        return GainMap(state.width, state.height, state.coarse.boxes, self.gain_model.predict(state.coarse))

    def action_mask(self, state: EpisodeState) -> np.ndarray:
        covered = np.array(covered_by(state.candidates, state.zoomed_windows), dtype=bool)
        return np.append(state.available & ~covered, True)

    def select(self, state: EpisodeState) -> Optional[int]:
        gm = state.gain
        assert gm is not None
        if gm.positive_total() < self.config.stop_gain or len(state.zoomed) >= self.config.max_steps:
            return None
        mask = self.action_mask(state)
        if not mask[:-1].any():
            return None
        coarse_ratio = state.memory.setdefault("coarse_ratio", state.pixels_ratio)  # first call: coarse pass only
        left = budget_left(state.max_pixels_ratio, state.pixels_ratio, coarse_ratio)
        context = None
        if self.config.extra_channels:
            if "context" not in state.memory:  # once per image: the planes depend on the coarse detections only
                state.memory["context"] = context_planes(state.coarse, state.width, state.height, self.config)
            context = state.memory["context"]
        budget_abs = state.max_pixels_ratio - state.pixels_ratio
        windows = self.window_features(state, budget_abs) if self.config.window_features else None
        obs = observe(gm, state.zoomed_windows, mask, left, self.config, context=context, budget_abs=budget_abs,
                      windows=windows)
        a = self.act(obs, self.rule_action(state, mask) if self.override_margin is not None else None)
        return None if a >= len(state.candidates) else a

    def rule_action(self, state: EpisodeState, mask: np.ndarray) -> int:
        """``greedy-entropy``'s action (window index, or ``K`` = stop) where the agent is: its pick on the entropy
        map of the window features (zeroed where zoomed), among the windows ``mask`` allows, and the stop under
        ``rule_stop``, as :func:`zoomdet.agents.demos.rule_picker` plays it in the environment."""
        from zoomdet.rnet.policies import greedy_choice

        memory, stop = state.memory, len(state.candidates)
        entropy = memory["maps"][0]  # window_features has built and zeroed it for this step
        if entropy.positive_total() < self.rule_stop:
            return stop
        if "greedy_pixels" not in memory:
            memory["greedy_pixels"] = np.array([w.source_pixels for w in state.candidates], dtype=np.float64)
        k = greedy_choice(entropy, memory["feature_boxes"], memory["greedy_pixels"], mask[:-1])
        return stop if k is None else k

    def act(self, obs: dict[str, np.ndarray], rule_action: Optional[int] = None) -> int:
        """The model's deterministic action for one observation (window index, or ``K`` = stop); an ensemble
        takes the argmax of its mean Q-values. With an override margin, ``rule_action`` (the rule's action at
        this observation) is required and the agent leaves it only as :func:`override_action` says."""
        if self.override_margin is not None:
            if rule_action is None:
                raise ValueError(f"{self.name} plays the rule unless it overrides it: pass the rule's action")
            return override_action(self.mean_q_values(obs), rule_action, self.override_margin)
        if self.algo == "ppo_mask":
            action, _ = self.model.predict(obs, deterministic=True, action_masks=obs["mask"].astype(bool))
        elif self.ensemble:
            action = self.mean_q_values(obs).argmax()
        else:
            action, _ = self.model.predict(obs, deterministic=True)
        return int(action)

    def mean_q_values(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """``float32[K + 1]``: the mean over ``model`` and ``ensemble`` of the DQN Q-values of one observation
        (masked actions at about ``-1e8``)."""
        import torch

        qs = []
        with torch.no_grad():
            for model in [self.model, *self.ensemble]:
                tensor, _ = model.policy.obs_to_tensor(obs)
                qs.append(model.q_net(tensor)[0].numpy())
        return np.mean(qs, axis=0)

    def window_features(self, state: EpisodeState, budget_abs: float) -> np.ndarray:
        """The ``windows`` observation, as the environment builds it: the image's :func:`feature_maps` and the
        candidates' boxes and costs (built on the first call, kept in ``state.memory``), the maps zeroed where the
        episode has zoomed so far."""
        memory = state.memory
        if "maps" not in memory:
            memory["maps"] = feature_maps(state.coarse, state.width, state.height, self.config.feature_classes)
            memory["maps_zeroed"] = 0
            memory["feature_boxes"] = window_boxes(state.candidates)
            memory["feature_cost"] = (np.array([w.input_pixels for w in state.candidates], dtype=np.float64)
                                      / (state.width * state.height))
        for window in state.zoomed_windows[memory["maps_zeroed"]:]:
            for m in memory["maps"]:
                m.zero_(window)
        memory["maps_zeroed"] = len(state.zoomed_windows)
        return window_features(state.gain, memory["maps"], memory["feature_boxes"], memory["feature_cost"], budget_abs,
                               len(state.zoomed) / self.config.max_steps, self.config.window_extras)
