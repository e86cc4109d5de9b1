"""The stateless detector wrapper every ZoomDet component calls.

``Detector.detect(image, windows)`` crops each :class:`~zoomdet.types.Window`
from the full-resolution image, resizes it by the window's scale (the only
resize anywhere: the model's own transform is pinned), runs the model in
batches of equal-size inputs, and returns one :class:`~zoomdet.types.Detections`
per window in full-image pixels. The wrapper holds only weights and
construction config, so one instance can serve concurrent requests.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import boxes as box_ops

from zoomdet.detector.models import ModelConfig, build_model, check_inference_settings, factorize_box_head
from zoomdet.types import Detections, Window

__all__ = ["Detector", "detector_id", "postprocess_with_index", "batch_plan", "size_batches", "crop_window", "save_checkpoint", "load_checkpoint", "default_checkpoint"]


def checked_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; ``ValueError`` for a name torch does not know or a GPU this machine lacks."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine (use cpu)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine (use cpu)")
    return dev


def as_float_image(t: Tensor) -> Tensor:
    """``uint8`` pixels in [0, 255] as float32 in [0, 1], exactly as :func:`~zoomdet.data.coco.image_to_tensor`
    converts an 8-bit image; float tensors are returned as they are."""
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t


def crop_window(image: Tensor, window: Window) -> Tensor:
    """Crop ``window`` from ``image`` (``Tensor[3, H, W]``) and resize it by ``window.scale``.

    ``image`` is float32 in [0, 1], or uint8 in [0, 255]. A uint8 crop is resized in uint8 (torch's
    vectorised fixed-point antialiased path, the one torchvision's ``Resize`` takes; each output pixel
    within one 8-bit level of the float result) and then converted as :func:`~zoomdet.data.coco.image_to_tensor` would: three times faster than
    converting first, on a 2048x1536 image shrunk to half, and what every inference path feeds the model. On a
    GPU (``image`` already there, as :meth:`Detector.detect` puts it) the crop is converted first and resized
    in float, the reference result: the antialiased GPU kernels take no ``uint8``.

    Returns:
        ``Tensor[3, h, w]`` float32 with ``(h, w) == window.input_size``;
        antialiased bilinear resize when the scale is not 1.
    """
    _, H, W = image.shape
    if window.x1 > W or window.y1 > H or window.x0 < 0 or window.y0 < 0:
        raise ValueError(f"window {window.as_tuple()} leaves the {W}x{H} image")
    crop = image[:, window.y0:window.y1, window.x0:window.x1]
    size = window.input_size
    if size != (window.height, window.width):
        if crop.device.type != "cpu":  # the antialiased kernels on GPUs take float only: the float reference result
            crop = as_float_image(crop)
        crop = F.interpolate(crop[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    return as_float_image(crop)


def batch_plan(windows: Sequence[Window], batch_size: int) -> list[list[int]]:
    """How :meth:`Detector.detect` batches ``windows``: indices grouped by input size, in chunks
    of at most ``batch_size``. One list per model forward call."""
    return size_batches([w.input_size for w in windows], batch_size)


def size_batches(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices of ``sizes`` grouped by equal size, in chunks of at most ``batch_size``."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, sz in enumerate(sizes):
        by_size.setdefault(tuple(sz), []).append(i)
    return [idx[s:s + batch_size] for idx in by_size.values() for s in range(0, len(idx), batch_size)]


def postprocess_with_index(roi_heads: RoIHeads, class_logits: Tensor, box_regression: Tensor,
                           proposals: list[Tensor], image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
    """torchvision's ``RoIHeads.postprocess_detections``, step for step, keeping each detection's proposal.

    Returns, per image, ``{"boxes": Tensor[N, 4], "scores": Tensor[N], "labels": Tensor[N] (model classes),
    "index": Tensor[N] int64}``, where ``index`` is the row of the image's proposal the detection was
    regressed from (into ``proposals[i]``, and into the box head's output shifted by the images before it).
    ``boxes``, ``scores`` and ``labels`` equal torchvision's (tested), so a detection's RoI feature can be
    read from the box-head pass the detections came from instead of pooling their boxes again.
    """
    num_classes = class_logits.shape[-1]
    counts = [len(p) for p in proposals]
    pred_boxes = roi_heads.box_coder.decode(box_regression, proposals).split(counts, 0)
    pred_scores = F.softmax(class_logits, -1).split(counts, 0)
    out, offset = [], 0
    for boxes, scores, image_shape, n in zip(pred_boxes, pred_scores, image_shapes, counts):
        boxes = box_ops.clip_boxes_to_image(boxes, image_shape)[:, 1:].reshape(-1, 4)  # drop background
        labels = torch.arange(num_classes, device=scores.device).view(1, -1).expand_as(scores)[:, 1:].reshape(-1)
        index = torch.arange(offset, offset + n, device=scores.device).view(-1, 1).expand(n, num_classes - 1).reshape(-1)
        scores = scores[:, 1:].reshape(-1)
        keep = torch.where(scores > roi_heads.score_thresh)[0]
        keep = keep[box_ops.remove_small_boxes(boxes[keep], min_size=1e-2)]
        keep = keep[box_ops.batched_nms(boxes[keep], scores[keep], labels[keep], roi_heads.nms_thresh)]
        keep = keep[: roi_heads.detections_per_img]
        out.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep], "index": index[keep]})
        offset += n
    return out


MIN_PROPOSALS = 100
"""Default ``proposal_min`` of :class:`Detector`."""


def _rcnn_for_maps(model: nn.Module) -> GeneralizedRCNN:
    """``model`` if it has the backbone maps the feature-map methods read (a torchvision R-CNN), else ``ValueError``."""
    if not isinstance(model, GeneralizedRCNN) or not hasattr(model, "roi_heads"):
        raise ValueError("feature maps need a torchvision R-CNN detector (a backbone and a transform)")
    return model


def _window_maps(feats: dict[str, Tensor], images, index: int, window: Window
                 ) -> tuple[dict[str, Tensor], tuple[float, float]]:
    """Crop ``index``'s backbone maps of a batch, cut to its input (the transform's padding left out), on the CPU,
    and level ``"0"``'s cell side in full-image pixels for ``window`` (see :meth:`Detector.feature_maps`)."""
    h_in, w_in = images.image_sizes[index]
    first = next(iter(feats.values()))
    stride = images.tensors.shape[-1] / first.shape[-1]  # model-input pixels per level-0 cell
    maps = {}
    for k, (name, f) in enumerate(feats.items()):
        s = stride * 2 ** k
        maps[name] = f[index, :, :math.ceil(h_in / s), :math.ceil(w_in / s)].float().cpu()
    # the transform may resize the crop: a cell's side in full-image pixels follows the crop's own size
    return maps, (window.width / (w_in / stride), window.height / (h_in / stride))


class Detector:
    """A detection model plus the explicit input scale it runs at.

    Args:
        model: a torchvision detection model built by
            :func:`~zoomdet.detector.models.build_model` (pinned transform).
        config: the model's :class:`ModelConfig`.
        categories: dataset category ids, ``categories[i]`` is model class
            ``i + 1``; names alongside.
        device: torch device for the forward passes.
        batch_size: crops per forward pass (crops of equal size are batched).
        checkpoint_id: short hash of the weights, reported by the service. :attr:`detector_id` adds the
            model settings to it.
        proposal_density: R-CNN models only: RPN proposals kept per megapixel of model input,
            ``n = clamp(ceil(density * h * w / 1e6), proposal_min, the model's own post-NMS top-n)``
            (pre-NMS top-n per level: ``2 n``). The box head's cost is proportional to ``n``, so with a
            density the cost of a call follows its input area instead of a fixed 1000 proposals.
            ``0`` (default) keeps the model's fixed counts.
        proposal_min: with a density, the fewest proposals any call keeps (default ``MIN_PROPOSALS``):
            small zoom windows in cluttered scenes need more than their area's share.
    """

    def __init__(self, model: nn.Module, config: ModelConfig, categories: dict[int, str],
                 device: str | torch.device = "cpu", batch_size: int = 4, checkpoint_id: str = "untrained",
                 proposal_density: float = 0.0, proposal_min: int = MIN_PROPOSALS) -> None:
        if len(categories) != config.num_classes - 1:
            raise ValueError(f"{len(categories)} categories for a model with {config.num_classes - 1} classes")
        device = checked_device(device)
        self.model = model.to(device).eval()
        self.config = config
        self.categories = dict(categories)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.checkpoint_id = checkpoint_id
        if proposal_density < 0:
            raise ValueError(f"proposal_density must be >= 0, got {proposal_density}")
        self.proposal_density = float(proposal_density)
        if proposal_min < 1:
            raise ValueError(f"proposal_min must be >= 1, got {proposal_min}")
        self.proposal_min = int(proposal_min)
        self._index_to_category = torch.tensor([0] + list(self.categories.keys()), dtype=torch.int64)

    @property
    def detector_id(self) -> str:
        """What decides this detector's outputs, as one id: :func:`detector_id` of its weights and its model
        config as built. Rollout caches, R-nets and agents record it and are refused by a detector whose id
        differs (other weights, or the same weights with other test-time settings such as the RPN's counts)."""
        return detector_id(self.checkpoint_id, self.config)

    @property
    def feature_dim(self) -> Optional[int]:
        """Length of the RoI feature vector per detection (R-CNN models), else ``None``."""
        if isinstance(self.model, GeneralizedRCNN) and hasattr(self.model, "roi_heads"):
            return int(self.model.roi_heads.box_predictor.cls_score.in_features)
        return None

    @torch.inference_mode()
    def detect(self, image: Tensor, windows: Sequence[Window], features: bool = True) -> list[Detections]:
        """Detect objects in each window of ``image``.

        Args:
            image: ``Tensor[3, H, W]`` float32 RGB in [0, 1] (or uint8 in [0, 255]),
                full resolution. Not modified.
            windows: regions to run on, each with its own scale.
            features: return each detection's RoI feature vector (R-CNN models: the box head's output for
                the proposal the detection was regressed from; no extra work). The R-net reads the coarse
                pass's; the engine asks for none on fine passes.

        Returns:
            One :class:`Detections` per window, boxes xyxy in full-image
            pixels, labels as dataset category ids, RoI features for R-CNN
            models when ``features``.
        """
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be Tensor[3, H, W], got {tuple(image.shape)}")
        if self.device.type != "cpu":  # one upload per pass; the crops are cut and resized on the device
            image = image.to(self.device)
        dets = self.detect_crops([crop_window(image, w) for w in windows], features)  # batched as batch_plan(windows) says
        return [d.with_boxes(w.to_image(d.boxes)) for d, w in zip(dets, windows)]

    @torch.inference_mode()
    def detect_crops(self, crops: Sequence[Tensor], features: bool = True) -> list[Detections]:
        """Detect objects in crops already cut and resized by :func:`crop_window` (the service's batched
        detector deployment receives these; a ``uint8`` crop in [0, 255] is converted as ``crop_window``
        would); boxes stay in crop-input pixels, map them back with :meth:`Window.to_image`. Crops of
        equal size share forward passes of up to ``batch_size``."""
        results: list[Optional[Detections]] = [None] * len(crops)
        for chunk in size_batches([tuple(c.shape[-2:]) for c in crops], self.batch_size):
            batch = [as_float_image(crops[i].to(self.device)) for i in chunk]
            for i, det in zip(chunk, self._forward(batch, features)):
                results[i] = det
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def feature_maps(self, image: Tensor, window: Window) -> tuple[dict[str, Tensor], tuple[float, float]]:
        """The backbone's feature maps of one window, as the detection pass of that window computes them.

        Args:
            image: ``Tensor[3, H, W]`` as for :meth:`detect`, full resolution.
            window: the region and scale (the engine's coarse view: ``Window.full(W, H, coarse_scale)``).

        Returns:
            ``(maps, stride)``: per backbone level (an FPN's ``"0"``, ``"1"``, ...), ``float32[C, h, w]`` on the
            CPU, cut to the window (the model's padding left out); and level ``"0"``'s cell side in full-image
            pixels ``(x, y)`` (level ``k`` has cells ``2**k`` times larger). R-CNN models only (``ValueError``
            otherwise): this runs the transform and the backbone again, not the RPN or the heads; a caller that
            also wants the window's detections gets both from one pass with :meth:`detect_with_maps`.
        """
        m = _rcnn_for_maps(self.model)
        images, _ = m.transform([as_float_image(crop_window(image.to(self.device), window))])
        return _window_maps(m.backbone(images.tensors), images, 0, window)

    @torch.inference_mode()
    def detect_with_maps(self, image: Tensor, window: Window, features: bool = True
                         ) -> tuple[Detections, dict[str, Tensor], tuple[float, float]]:
        """:meth:`detect` of one window and :meth:`feature_maps` of it from the same forward pass: the backbone
        runs once (the engine's coarse pass when its policy reads the coarse view's maps). Returns
        ``(detections, maps, stride)``, each as those methods return it. R-CNN models only (``ValueError``)."""
        _rcnn_for_maps(self.model)
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be Tensor[3, H, W], got {tuple(image.shape)}")
        crop = as_float_image(crop_window(image.to(self.device), window))
        maps: list = []
        (det,) = self._forward([crop], features, maps_of=[window], maps_out=maps)
        return det.with_boxes(window.to_image(det.boxes)), *maps[0]

    def _forward(self, crops: list[Tensor], features: bool = True, maps_of: Sequence[Window] = (),
                 maps_out: Optional[list] = None) -> list[Detections]:
        """Model forward on same-size crops; boxes in crop-input pixels. With ``maps_of`` (R-CNN models: the
        crops' windows), each crop's backbone maps are appended to ``maps_out`` as :meth:`feature_maps` returns
        them."""
        m = self.model
        if isinstance(m, GeneralizedRCNN) and hasattr(m, "roi_heads"):
            images, _ = m.transform(crops)
            feats = m.backbone(images.tensors)
            if maps_of:
                maps_out.extend(_window_maps(feats, images, i, w) for i, w in enumerate(maps_of))
            h, w = crops[0].shape[-2:]
            proposals, _ = self._rpn_for(h * w)(images, feats)
            rh = m.roi_heads
            head = rh.box_head(rh.box_roi_pool(feats, proposals, images.image_sizes))
            class_logits, box_regression = rh.box_predictor(head)
            dets = postprocess_with_index(rh, class_logits, box_regression, proposals, images.image_sizes)
            # a detection's feature is its proposal's box-head vector, already computed above
            vectors = [head[d["index"]] if features else None for d in dets]
        else:
            # one-stage models (FCOS, RetinaNet) score every class index with a sigmoid, the never-trained
            # background index 0 too: it is no category, so its boxes are dropped
            dets = []
            for d in m(crops):
                keep = d["labels"] > 0
                dets.append({k: v[keep] for k, v in d.items()})
            vectors = [None] * len(dets)
        out = []
        for d, v in zip(dets, vectors):
            labels = self._index_to_category[d["labels"].cpu()]
            out.append(Detections(d["boxes"].float().cpu(), d["scores"].float().cpu(), labels,
                                  None if v is None else v.float().cpu()))
        return out

    def proposals_for(self, input_pixels: int) -> Optional[int]:
        """RPN post-NMS proposals for one input of ``input_pixels`` (``None`` = the model's fixed count)."""
        if not self.proposal_density or not hasattr(self.model, "rpn"):
            return None
        cap = int(self.model.rpn._post_nms_top_n["testing"])
        return max(min(self.proposal_min, cap), min(cap, int(math.ceil(self.proposal_density * input_pixels / 1e6))))

    def _rpn_for(self, input_pixels: int):
        """The model's RPN, or a shallow copy with proposal counts for this input size. The copy shares
        every weight; the shared RPN is never modified, so concurrent calls stay independent."""
        n = self.proposals_for(input_pixels)
        rpn = self.model.rpn
        if n is None or n == rpn._post_nms_top_n["testing"]:
            return rpn
        scaled = copy.copy(rpn)
        scaled._pre_nms_top_n = {**rpn._pre_nms_top_n, "testing": min(rpn._pre_nms_top_n["testing"], 2 * n)}
        scaled._post_nms_top_n = {**rpn._post_nms_top_n, "testing": n}
        return scaled

    # -- checkpoints -------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "cpu", batch_size: int = 4,
                        proposal_density: float = 0.0, proposal_min: int = MIN_PROPOSALS,
                        settings: Optional[dict] = None) -> "Detector":
        """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``); ``settings`` as
        :func:`load_checkpoint` takes them."""
        model, cfg, cats, _ = load_checkpoint(path, settings)
        return cls(model, cfg, cats, device=device, batch_size=batch_size, checkpoint_id=file_digest(path),
                   proposal_density=proposal_density, proposal_min=proposal_min)


_HASHED_WHEN_SET = {"roi_sampling_ratio": 2, "box_head_rank": 0, "head_convs": 1}
"""Model fields added after detector ids were first issued: hashed only when they differ from these defaults,
so every id, rollout cache and R-net made before them stays valid."""


def detector_id(checkpoint_id: str, config: ModelConfig) -> str:
    """``"<checkpoint_id>-<settings>"``: the weights' digest and an 8-hex digest of every field of the model
    config as built (the checkpoint's fields, defaults added since it was written, ``--set`` overrides).

    The per-call proposal rule (``proposal_density``) is not in it: it is a latency setting an evaluation or
    the service picks at run time, recorded in reports beside the id."""
    fields = asdict(config)
    for name, default in _HASHED_WHEN_SET.items():  # keeps the ids (and caches, R-nets) of earlier settings
        if fields.get(name) == default:
            del fields[name]
    settings = json.dumps(fields, sort_keys=True, default=str)
    return f"{checkpoint_id}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}"


def file_digest(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def save_checkpoint(path: str | os.PathLike, model: nn.Module, cfg: ModelConfig, categories: dict[int, str],
                    extra: Optional[dict] = None) -> None:
    """Write ``{state_dict, model_config, categories, extra}`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_config": asdict(cfg),
        "categories": [[int(k), str(v)] for k, v in categories.items()],
        "extra": extra or {},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, settings: Optional[dict] = None
                    ) -> tuple[nn.Module, ModelConfig, dict[int, str], dict]:
    """Rebuild the model from a checkpoint; returns ``(model, config, categories, extra)``.

    ``settings``: inference-only :class:`ModelConfig` fields (``models.INFERENCE_FIELDS``, e.g.
    ``{"rpn_pre_nms_top_n": 2000}``) to build the model with instead of the checkpoint's values."""
    payload = _read_checkpoint(path)
    try:
        cfg = ModelConfig(**payload["model_config"])
        cats = {int(k): str(v) for k, v in payload["categories"]}
        state = payload["state_dict"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a ZoomDet detector checkpoint (missing {e})") from e
    if settings:
        check_inference_settings(settings)
        cfg = replace(cfg, **settings)
    model = build_model(cfg)
    model.load_state_dict(state)
    if cfg.box_head_rank:
        factorize_box_head(model, cfg.box_head_rank)
    return model.eval(), cfg, cats, payload.get("extra", {})


def checkpoint_categories(path: str | os.PathLike) -> dict[int, str]:
    """``{category id: name}`` of a checkpoint written by :func:`save_checkpoint`, without building its model."""
    payload = _read_checkpoint(path)
    try:
        return {int(k): str(v) for k, v in payload["categories"]}
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a ZoomDet detector checkpoint (missing {e})") from e


def _read_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"detector checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file (UnpicklingError, RuntimeError), truncated (EOFError, OSError), ...
        raise ValueError(f"{path} is not a ZoomDet detector checkpoint (torch.load failed: {type(e).__name__})") from e


def default_checkpoint() -> Path:
    """The embedded detector trained on the synthetic set (see README for the command)."""
    return Path(__file__).resolve().parent.parent / "assets" / "tiny_synth.pt"
