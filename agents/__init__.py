"""RL agents (installed as ``zoomdet.agents``); the Q-net agent arrives with the agent work."""
