"""Shared fixtures: tiny untrained models, a scale-aware stub detector, small datasets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zoomdet.detector.detector import Detector
from zoomdet.detector.models import ModelConfig, build_model
from zoomdet.types import Detections, Window

HIT_UAV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hit-uav"


class StubDetector:
    """Finds a known object iff its box is at least ``min_px`` wide and tall *in the model input*.

    Deterministic and fast: it lets engine tests check pixel accounting,
    merging and policies with hand-computable outcomes. Like the real
    wrapper, it returns boxes in image pixels and keeps no state per call.
    """

    def __init__(self, boxes: torch.Tensor, labels: torch.Tensor, min_px: float = 10.0, batch_size: int = 4):
        self.boxes, self.labels, self.min_px, self.batch_size = boxes.float(), labels.long(), min_px, batch_size
        self.categories = {1: "a", 2: "b"}
        self.device = torch.device("cpu")
        self.checkpoint_id = self.detector_id = "stub"
        self.calls: list[list[Window]] = []

    def detect(self, image: torch.Tensor, windows, features: bool = True):
        self.calls.append(list(windows))
        out = []
        for w in windows:
            b = self.boxes
            inside = (b[:, 0] >= w.x0) & (b[:, 1] >= w.y0) & (b[:, 2] <= w.x1) & (b[:, 3] <= w.y1)
            big = ((b[:, 2] - b[:, 0]) * w.scale >= self.min_px) & ((b[:, 3] - b[:, 1]) * w.scale >= self.min_px)
            keep = inside & big
            n = int(keep.sum())
            out.append(Detections(b[keep].clone(), torch.full((n,), 0.9), self.labels[keep].clone(),
                                  torch.ones(n, 8) if features else None))
        return out


class BlobDetector:
    """Finds each bright blob in the pixels a window shows, if it is at least ``min_px`` wide and tall in the
    model input; its score is the blob's mean brightness, its class 1.

    Unlike :class:`StubDetector` it reads the image it is given, so it answers for any crop of a scene the way
    a real detector would: by what the crop holds, in the crop's pixels.
    """

    def __init__(self, min_px: float = 6.0, batch_size: int = 4):
        self.min_px, self.batch_size = min_px, batch_size
        self.categories = {1: "blob"}
        self.device = torch.device("cpu")
        self.checkpoint_id = self.detector_id = "blob"

    def detect(self, image: torch.Tensor, windows, features: bool = True):
        from scipy import ndimage

        out = []
        for w in windows:
            crop = image[0, w.y0:w.y1, w.x0:w.x1].float().numpy()
            labels, _ = ndimage.label(crop > 0.5)
            boxes, scores = [], []
            for i, (ys, xs) in enumerate(ndimage.find_objects(labels)):
                if (xs.stop - xs.start) * w.scale >= self.min_px and (ys.stop - ys.start) * w.scale >= self.min_px:
                    boxes.append([w.x0 + xs.start, w.y0 + ys.start, w.x0 + xs.stop, w.y0 + ys.stop])
                    scores.append(float(crop[ys, xs][labels[ys, xs] == i + 1].mean()))
            n = len(boxes)
            out.append(Detections(torch.tensor(boxes, dtype=torch.float32).reshape(n, 4), torch.tensor(scores).reshape(n),
                                  torch.ones(n, dtype=torch.int64), torch.ones(n, 8) if features else None))
        return out


def load_benchmark(name: str):
    """The module of ``benchmarks/<name>.py``, loaded from its file (the scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).resolve().parents[1] / "benchmarks"
                                                  / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny_model_config(**kw) -> ModelConfig:
    base = dict(name="tiny_frcnn", num_classes=3, widths=[8, 16, 16, 16], fpn_channels=16, representation_size=32,
                detections_per_img=50)
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture
def tiny_detector() -> Detector:
    torch.manual_seed(0)
    cfg = tiny_model_config()
    return Detector(build_model(cfg), cfg, {1: "person", 2: "car"})


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny_frcnn checkpoint for the synthetic classes (person, car, truck)."""
    from zoomdet.detector.detector import save_checkpoint

    torch.manual_seed(0)
    cfg = tiny_model_config(num_classes=4)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, build_model(cfg), cfg, {1: "person", 2: "car", 3: "truck"})
    return path


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory) -> Path:
    """Four 320x240 synthetic images; returns the annotation path."""
    from zoomdet.data.synth import SynthConfig, generate_dataset

    out = tmp_path_factory.mktemp("synth")
    return generate_dataset(SynthConfig(images=4, width=320, height=240, seed=3), out, progress=False)


def write_fake_cache(root, records, detector_id="fake", zoom=None):
    """Write ``records`` (CacheRecord) as a one-shard rollout cache built for ``zoom`` (default ZoomConfig())."""
    import json

    from zoomdet.config import to_dict
    from zoomdet.rnet.cache import CACHE_VERSION, zoom_digest
    from zoomdet.zoom.engine import ZoomConfig

    zoom = zoom or ZoomConfig()
    root.mkdir(parents=True, exist_ok=True)
    torch.save([r.to_payload() for r in records], root / "shard_00000.pt")
    (root / "manifest.json").write_text(json.dumps({
        "version": CACHE_VERSION, "detector_id": detector_id, "checkpoint_id": "x", "checkpoint": "x", "zoom_digest": zoom_digest(zoom),
        "zoom": to_dict(zoom), "data": "x", "data_digest": "x",
        "image_ids": [r.image_id for r in records], "shards": [[r.image_id for r in records]]}))
    return root
