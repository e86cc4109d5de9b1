"""Rollout cache, gain labels, the R-net and the gain-map policies (greedy)."""

from zoomdet.rnet.cache import CacheMismatch, CacheRecord, RolloutCache, build_cache
from zoomdet.rnet.model import EntropyGain, RNet, RNetConfig, RNetGain, coarse_gain_targets, oracle_gain_map
from zoomdet.rnet.policies import GreedyPolicy

__all__ = ["CacheMismatch", "CacheRecord", "RolloutCache", "build_cache", "EntropyGain", "RNet", "RNetConfig",
           "RNetGain", "coarse_gain_targets", "oracle_gain_map", "GreedyPolicy"]
