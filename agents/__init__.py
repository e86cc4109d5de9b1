"""Zoom agents (installed as ``zoomdet.agents``): the paper's Q-net as a stable-baselines3 DQN policy,
MaskablePPO as a second algorithm, training (``zoomdet train``) and the live :class:`AgentPolicy`."""

from zoomdet.agents.policy import ALGOS, AgentPolicy, algorithm_class, load_run_info

__all__ = ["AgentPolicy", "ALGOS", "algorithm_class", "load_run_info"]
