"""Gymnasium environments of ZoomDet (installed as ``zoomdet.envs``).

Importing this package registers ``ZoomDet-v0``::

    import gymnasium as gym
    import zoomdet.envs  # noqa: F401  (registers ZoomDet-v0)

    env = gym.make("ZoomDet-v0", cache="runs/cache/synth-train", rnet="runs/rnet/synth.pt", lam=5.0)
"""

from gymnasium.envs.registration import register, registry

from zoomdet.envs.zoom_env import ZoomEnv, ZoomEnvConfig, observe

__all__ = ["ZoomEnv", "ZoomEnvConfig", "observe", "ENV_ID"]

ENV_ID = "ZoomDet-v0"

if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="zoomdet.envs.zoom_env:ZoomEnv")
