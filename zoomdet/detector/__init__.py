"""The base detector: models with a pinned input scale, the stateless wrapper, training."""

from zoomdet.detector.detector import Detector, crop_window, default_checkpoint, load_checkpoint, save_checkpoint
from zoomdet.detector.models import MODEL_NAMES, ModelConfig, PinnedScaleTransform, build_model

__all__ = ["Detector", "crop_window", "default_checkpoint", "load_checkpoint", "save_checkpoint", "MODEL_NAMES",
           "ModelConfig", "PinnedScaleTransform", "build_model"]
