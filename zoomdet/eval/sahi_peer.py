"""The real ``sahi`` package as a peer: the same detector through SAHI's own code.

SAHI (``pip install 'zoomdet[peers]'``) slices the image, runs the model on
every slice and, with ``perform_standard_pred``, once on the whole image at
its native size, then merges. Here the model is ZoomDet's own trained
detector handed to SAHI's :class:`sahi.models.torchvision.TorchVisionDetectionModel`
(its input transform is pinned, so SAHI's slices reach the network at exactly
their size), and SAHI's :func:`sahi.predict.get_sliced_prediction` does the
rest. A forward pre-hook on the model counts what SAHI really fed it, in the
engine's units: ``model_input_pixels`` (summed over calls) and
``detector_calls``.

:func:`sahi_predict` is what ``benchmarks/sahi_peer.py`` runs per image, and
what the tests compare the built-in ``sahi`` policy against.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from zoomdet.detector.detector import Detector
from zoomdet.types import Detections
from zoomdet.zoom.policies import SahiConfig

__all__ = ["SahiPeerResult", "sahi_model", "sahi_predict"]


@dataclass
class SahiPeerResult:
    """One image through the ``sahi`` package: detections (xyxy image pixels, dataset category ids),
    ``model_input_pixels`` and ``detector_calls`` as the model saw them, and wall seconds."""

    detections: Detections
    model_input_pixels: int
    detector_calls: int
    seconds: float


def sahi_model(detector: Detector, confidence_threshold: float):
    """SAHI's ``TorchVisionDetectionModel`` around ``detector``'s network (no weights are loaded or downloaded).

    SAHI's class ids are the model's indices (1..K); :func:`sahi_predict` maps them back to dataset ids.
    """
    try:
        from sahi.models.torchvision import TorchVisionDetectionModel
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("the sahi peer needs the sahi package: pip install 'zoomdet[peers]'") from e
    mapping = {str(i + 1): name for i, name in enumerate(detector.categories.values())}
    return TorchVisionDetectionModel(model=detector.model, confidence_threshold=confidence_threshold,
                                     category_mapping=mapping, device=str(detector.device), load_at_init=True)


@contextmanager
def _count_inputs(model: torch.nn.Module):
    """Yield a ``[pixels, calls]`` counter of the model's forward inputs (lists of ``Tensor[3, h, w]``)."""
    counter = [0, 0]

    def hook(_module, args):
        images = args[0]
        counter[0] += sum(int(im.shape[-1]) * int(im.shape[-2]) for im in images)
        counter[1] += 1

    handle = model.register_forward_pre_hook(hook)
    try:
        yield counter
    finally:
        handle.remove()


def sahi_predict(detector: Detector, model, image: np.ndarray, cfg: SahiConfig) -> SahiPeerResult:
    """Run ``sahi.predict.get_sliced_prediction`` on ``image`` (``uint8[H, W, 3]`` RGB) with ``cfg``'s settings.

    ``model`` is :func:`sahi_model`'s wrapper; its confidence threshold is overridden per call by
    ``cfg.confidence_threshold``. SAHI's own low-confidence switch to NMS/IOU applies unless
    ``cfg.force_postprocess_type``.
    """
    from sahi.predict import get_sliced_prediction

    index_to_category = list(detector.categories)
    with _count_inputs(detector.model) as counter, torch.inference_mode():
        t = time.perf_counter()
        result = get_sliced_prediction(
            image, model, slice_height=cfg.slice_height, slice_width=cfg.slice_width,
            overlap_height_ratio=cfg.overlap_height_ratio, overlap_width_ratio=cfg.overlap_width_ratio,
            perform_standard_pred=cfg.perform_standard_pred, postprocess_type=cfg.postprocess_type,
            postprocess_match_metric=cfg.postprocess_match_metric,
            postprocess_match_threshold=cfg.postprocess_match_threshold,
            postprocess_class_agnostic=cfg.postprocess_class_agnostic, verbose=0,
            force_postprocess_type=cfg.force_postprocess_type, confidence_threshold=cfg.confidence_threshold)
        seconds = time.perf_counter() - t
    preds = result.object_prediction_list
    if not preds:
        return SahiPeerResult(Detections.empty(), counter[0], counter[1], seconds)
    boxes = torch.tensor([p.bbox.to_xyxy() for p in preds], dtype=torch.float32)
    scores = torch.tensor([float(p.score.value) for p in preds], dtype=torch.float32)
    labels = torch.tensor([index_to_category[int(p.category.id) - 1] for p in preds], dtype=torch.int64)
    return SahiPeerResult(Detections(boxes, scores, labels), counter[0], counter[1], seconds)
