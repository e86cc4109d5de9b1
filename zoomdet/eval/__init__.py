"""Evaluation: COCOeval metrics and the policy report."""

from zoomdet.eval.coco_eval import AREA_RANGES, coco_metrics
from zoomdet.eval.evaluator import EvalConfig, evaluate

__all__ = ["AREA_RANGES", "coco_metrics", "EvalConfig", "evaluate"]
