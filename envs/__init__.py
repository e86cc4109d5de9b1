"""Gymnasium environments (installed as ``zoomdet.envs``); the zoom environment arrives with the agent work."""
