"""The zoom engine: windows, refinement, merging, gains and pixel accounting."""

from zoomdet.zoom.engine import Cost, EpisodeState, GroundTruth, PlanPolicy, Region, ZoomConfig, ZoomEngine, ZoomPolicy, ZoomResult
from zoomdet.zoom.merge import MergeConfig, merge_zoom, sahi_postprocess
from zoomdet.zoom.policies import BASELINES, PolicyConfig, SahiConfig, make_policy
from zoomdet.zoom.windows import GainMap, WindowConfig, candidate_windows, refine_window

__all__ = ["Cost", "EpisodeState", "GroundTruth", "PlanPolicy", "Region", "ZoomConfig", "ZoomEngine", "ZoomPolicy",
           "ZoomResult", "MergeConfig", "merge_zoom", "sahi_postprocess", "BASELINES", "PolicyConfig", "SahiConfig",
           "make_policy", "GainMap", "WindowConfig", "candidate_windows", "refine_window"]
