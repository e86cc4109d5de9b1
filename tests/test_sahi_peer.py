"""The built-in ``sahi`` policy against the real ``sahi`` package, same detector, same settings."""

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from zoomdet.data.synth import SynthConfig, generate_image
from zoomdet.detector.detector import Detector, default_checkpoint
from zoomdet.zoom.engine import ZoomEngine
from zoomdet.zoom.policies import SahiConfig, SahiPolicy

sahi = pytest.importorskip("sahi")


@pytest.fixture(scope="module")
def scene():
    img, _ = generate_image(SynthConfig(width=640, height=480, seed=5), 0)
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return arr, torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255)


@pytest.mark.parametrize("confidence, postprocess", [(0.05, "GREEDYNMM"), (0.3, "GREEDYNMM")])  # NMS/IOU, GREEDYNMM/IOS
def test_builtin_sahi_matches_the_sahi_package(scene, confidence, postprocess):
    from zoomdet.eval.sahi_peer import sahi_model, sahi_predict

    arr, image = scene
    det = Detector.from_checkpoint(default_checkpoint(), batch_size=1)
    cfg = SahiConfig(slice_width=256, slice_height=256, overlap_width_ratio=0.2, overlap_height_ratio=0.2,
                     confidence_threshold=confidence, postprocess_type=postprocess,
                     postprocess_match_metric="IOS" if postprocess != "NMS" else "IOU")
    peer = sahi_predict(det, sahi_model(det, confidence), arr, cfg)
    ours = ZoomEngine(det).run(image, SahiPolicy(cfg))
    # the same pixels and calls: 3x3 slices of 256 px (x0 = 0, 205, 384; y0 = 0, 205, 224) + the whole image
    assert peer.model_input_pixels == ours.cost.model_input_pixels == 9 * 256 * 256 + 640 * 480
    assert peer.detector_calls == ours.cost.detector_calls == 10
    # the same detections, to float tolerance
    assert len(peer.detections) == len(ours.detections) > 0
    iou = box_iou(peer.detections.boxes, ours.detections.boxes)
    best = iou.max(dim=1)
    assert float(best.values.min()) > 0.99
    assert torch.equal(peer.detections.labels, ours.detections.labels[best.indices])
    assert torch.allclose(peer.detections.scores, ours.detections.scores[best.indices], atol=1e-4)


def test_low_confidence_switches_to_nms_as_sahi_does():
    assert SahiConfig(confidence_threshold=0.05).effective_postprocess() == ("NMS", "IOU")
    assert SahiConfig(confidence_threshold=0.3).effective_postprocess() == ("GREEDYNMM", "IOS")
    assert SahiConfig(confidence_threshold=0.05, force_postprocess_type=True).effective_postprocess() == ("GREEDYNMM", "IOS")
