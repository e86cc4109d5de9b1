"""Detection models: a tiny CPU-friendly Faster R-CNN and torchvision's zoo.

Every model returned by :func:`build_model` has its input transform replaced
by :class:`PinnedScaleTransform`, which normalises and pads but never resizes.
torchvision's default transform silently rescales every input to
``min_size=800``; here the caller (:class:`zoomdet.detector.Detector`) does
the one explicit resize, so the pixels the model sees are exactly the pixels
the zoom engine accounts for.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn
from torchvision.models.detection import (
    FCOS,
    FasterRCNN,
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet50_fpn_v2,
    fcos_resnet50_fpn,
    retinanet_resnet50_fpn_v2,
)
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

__all__ = ["ONE_STAGE_MODELS", "ModelConfig", "PinnedScaleTransform", "ThreadedRoIAlign", "TinyBackbone", "build_model", "MODEL_NAMES",
           "INFERENCE_FIELDS", "check_inference_settings", "factorize_box_head"]

MODEL_NAMES = (
    "tiny_frcnn",
    "tiny_fcos",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn",
)
ONE_STAGE_MODELS = ("tiny_fcos", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn")
"""Models of :data:`MODEL_NAMES` without a region proposal network (the RPN's settings do not apply to them)."""


@dataclass
class ModelConfig:
    """Architecture of a detector (saved inside every checkpoint)."""

    name: str = "tiny_frcnn"
    """One of ``tiny_frcnn`` (default, CPU), ``tiny_fcos`` (the same backbone and FPN with a one-stage
    FCOS head: no RPN, no RoI pooling, a smaller fixed cost per call), ``fasterrcnn_mobilenet_v3_large_fpn``,
    ``fasterrcnn_resnet50_fpn_v2``, ``retinanet_resnet50_fpn_v2``, ``fcos_resnet50_fpn``."""
    num_classes: int = 4
    """Number of classes including background (index 0); labels are dataset category ids.
    ``zoomdet detector train`` takes 0 to mean "the training set's categories + 1"."""
    widths: list[int] = field(default_factory=lambda: [24, 48, 96, 160])
    """tiny_frcnn, tiny_fcos: channels of the stride-4/8/16/32 stages."""
    fpn_channels: int = 64
    """tiny_frcnn, tiny_fcos: FPN output channels."""
    head_convs: int = 1
    """tiny_fcos: 3x3 conv + GroupNorm + ReLU layers in each of the head's two branches before its
    predictions (FCOS's paper uses 4; on the stride-4 level each costs about as much as the backbone)."""
    anchor_sizes: list[list[int]] = field(default_factory=lambda: [[8, 12], [16, 24], [32, 48], [64, 96], [128, 192]])
    """Anchor sizes (pixels of the model input) per FPN level: strides 4, 8, 16, 32 and the
    max-pooled stride-64 level (tiny_frcnn); fasterrcnn_resnet50_fpn_v2 takes them when given as
    5 levels of one size each. tiny_fcos has no anchors: each level's location size is its stride, so
    FCOS assigns an object to the level whose range holds its largest centre-to-side distance
    (0-32, 32-64, 64-128, 128-256, >= 256 px of model input)."""
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    """Anchor aspect ratios (height / width)."""
    representation_size: int = 256
    """tiny_frcnn: width of the box head, i.e. the RoI feature vector handed to the R-net."""
    score_thresh: float = 0.05
    """Detections below this score are dropped."""
    nms_thresh: float = 0.5
    """Per-class NMS IoU inside one detector call."""
    detections_per_img: int = 300
    """Maximum detections per model input."""
    rpn_pre_nms_top_n: int = 1000
    """R-CNN models, inference: RPN boxes kept per FPN level before the RPN's NMS (torchvision's own
    test-time default; training keeps 2000). Until 2026-12 the tiny model kept 2000 at inference too,
    the same AP on HIT-UAV val and a third of a 320x256 call spent in that NMS."""
    rpn_post_nms_top_n: int = 1000
    """R-CNN models, inference: RPN proposals handed to the box head per input (the cap
    :class:`~zoomdet.detector.Detector`'s ``proposal_density`` scales under)."""
    rpn_score_thresh: float = 0.05
    """R-CNN models: RPN boxes whose objectness is below this are dropped before the RPN's NMS (the
    setting of torchvision's ``fasterrcnn_mobilenet_v3_large_320_fpn``; 0 keeps every box)."""
    roi_sampling_ratio: int = 2
    """R-CNN models: bilinear samples per RoIAlign bin side (torchvision's ``sampling_ratio``; models are
    trained with 2). 1 samples a quarter as many points: torchvision's CPU kernel loops over them, and at
    1000 proposals it was the largest per-call cost of a small crop (see *Latency that follows pixels*)."""
    box_head_rank: int = 0
    """R-CNN models with a two-layer MLP box head, inference: 0 keeps the head's first layer as trained;
    ``r > 0`` replaces it by its rank-``r`` truncated SVD (Fast R-CNN, Girshick 2015, sec. 3.1), two
    thinner layers computed from the trained weights at load time, no retraining. A 3136x256 layer at
    rank 64 costs a quarter of the multiply-adds per proposal."""
    image_mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    image_std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


INFERENCE_FIELDS = ("score_thresh", "nms_thresh", "detections_per_img", "rpn_pre_nms_top_n", "rpn_post_nms_top_n",
                    "rpn_score_thresh", "roi_sampling_ratio", "box_head_rank")
"""The :class:`ModelConfig` fields a trained checkpoint can be run with other values of (no weight depends on them);
``zoomdet detector eval --set`` takes these."""


def check_inference_settings(settings, where: str = "") -> None:
    """Raise ``ValueError`` unless every key of ``settings`` is one of :data:`INFERENCE_FIELDS`; ``where`` prefixes
    the message (e.g. the config field the settings came from)."""
    other = sorted(set(settings) - set(INFERENCE_FIELDS))
    if other:
        raise ValueError(f"{where}{', '.join(other)} not an inference setting; the weights depend on it "
                         f"(settable: {', '.join(INFERENCE_FIELDS)})")


class PinnedScaleTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform without its hidden resize.

    Normalisation and padding to a multiple of 32 are kept; ``resize`` is the
    identity, so ``postprocess`` maps boxes back to exactly the input size.
    """

    def __init__(self, image_mean: list[float], image_std: list[float]) -> None:
        super().__init__(min_size=1, max_size=1_000_000, image_mean=image_mean, image_std=image_std)

    def resize(self, image: Tensor, target: Optional[dict] = None):  # type: ignore[override]
        return image, target


class ThreadedRoIAlign(MultiScaleRoIAlign):
    """torchvision's :class:`~torchvision.ops.MultiScaleRoIAlign`, with the RoIs of an inference call on the CPU
    split over torch's intra-op threads.

    torchvision's CPU ``roi_align`` kernel loops over RoIs on one core (pytorch/vision#4935, #6619); on a
    2-core machine it was a fifth of a coarse pass. Each chunk is pooled by torchvision's own op (which
    releases the GIL) and the chunks are concatenated in order, so the output is bit-identical to
    ``MultiScaleRoIAlign``'s. Training, GPU inputs, one intra-op thread (e.g. a Ray replica with one CPU)
    and fewer than ``min_chunk`` RoIs per thread take the parent's single call.
    """

    min_chunk = 64
    _pools: dict[int, ThreadPoolExecutor] = {}
    _lock = threading.Lock()

    @classmethod
    def _pool(cls, n: int) -> ThreadPoolExecutor:
        with cls._lock:
            if n not in cls._pools:
                cls._pools[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="roi_align")
            return cls._pools[n]

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        total = sum(len(b) for b in boxes)
        n = min(torch.get_num_threads(), total // self.min_chunk)
        if self.training or n < 2 or torch.is_grad_enabled() or any(b.device.type != "cpu" for b in boxes):
            return super().forward(x, boxes, image_shapes)
        if self.scales is None:  # set the level mapper once, before the threads read it
            super().forward(x, [b[:0] for b in boxes], image_shapes)
        parts = [b.tensor_split(n) for b in boxes]  # parts[image][chunk]
        chunks = [[p[j] for p in parts] for j in range(n)]
        parent = super().forward

        def pool(chunk: list[Tensor]) -> Tensor:
            with torch.inference_mode():
                return parent(x, chunk, image_shapes)

        outs = list(self._pool(n).map(pool, chunks))  # outs[chunk]: chunk j of every image, image order
        per = [o.split([len(p[j]) for p in parts]) for j, o in enumerate(outs)]
        return torch.cat([per[j][i] for i in range(len(boxes)) for j in range(n)])


def factorize_box_head(model: nn.Module, rank: int) -> nn.Module:
    """Replace the first layer of ``model``'s two-layer MLP box head by its rank-``rank`` truncated SVD, in place.

    ``fc6`` (``Linear(d_in, d_out)``, weight ``W``) becomes ``Linear(d_in, rank, bias=False)`` with weight
    ``V_r^T`` followed by ``Linear(rank, d_out)`` with weight ``U_r S_r`` and ``fc6``'s bias, so
    ``fc6(x) ~= U_r S_r V_r^T x + b``: the best rank-``rank`` approximation of ``W`` (Eckart-Young), the Fast
    R-CNN trick for fixed-size heads. Call after the weights are loaded; inference only (the two layers are
    not trained). A rank at or above ``min(d_in, d_out)`` leaves the head unchanged.

    Raises:
        ValueError: the model has no ``roi_heads.box_head.fc6`` linear layer (one-stage models,
            torchvision's conv box head).
    """
    head = getattr(getattr(model, "roi_heads", None), "box_head", None)
    fc6 = getattr(head, "fc6", None)
    if not isinstance(fc6, nn.Linear):
        raise ValueError(f"box_head_rank needs an R-CNN with a two-layer MLP box head (fc6), not {type(model).__name__}")
    if rank >= min(fc6.in_features, fc6.out_features):
        return model
    with torch.no_grad():
        u, s, vh = torch.linalg.svd(fc6.weight.double(), full_matrices=False)
        first = nn.Linear(fc6.in_features, rank, bias=False)
        second = nn.Linear(rank, fc6.out_features)
        first.weight.copy_(vh[:rank].float())
        second.weight.copy_((u[:, :rank] * s[:rank]).float())
        second.bias.copy_(fc6.bias)
    head.fc6 = nn.Sequential(first, second)
    return model


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyBackbone(nn.Module):
    """Four-stage CNN with outputs at strides 4, 8, 16 and 32.

    Input ``Tensor[B, 3, H, W]``; children ``layer1..layer4`` produce
    ``widths[i]`` channels at stride ``4 * 2**i``. Small enough to train from
    scratch on a CPU, with a stride-4 level so 8-16 px objects cover 2-4 cells.
    """

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths
        self.stem = nn.Sequential(_conv(3, w1 // 2, 2), _conv(w1 // 2, w1, 1))
        self.layer1 = nn.Sequential(_conv(w1, w1, 2), _conv(w1, w1, 1))
        self.layer2 = nn.Sequential(_conv(w1, w2, 2), _conv(w2, w2, 1))
        self.layer3 = nn.Sequential(_conv(w2, w3, 2), _conv(w3, w3, 1))
        self.layer4 = nn.Sequential(_conv(w3, w4, 2), _conv(w4, w4, 1))

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - used through IntermediateLayerGetter
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


def _anchor_generator(cfg: ModelConfig, levels: int) -> AnchorGenerator:
    sizes = [tuple(s) for s in cfg.anchor_sizes]
    if len(sizes) != levels:
        raise ValueError(f"anchor_sizes has {len(sizes)} levels, the backbone has {levels}: give one list per level")
    if len({len(s) for s in sizes}) != 1:
        raise ValueError(f"every level needs the same number of anchor sizes, got {cfg.anchor_sizes}")
    return AnchorGenerator(sizes, (tuple(cfg.aspect_ratios),) * levels)


def _rpn_test_settings(cfg: ModelConfig) -> dict:
    """The R-CNNs' inference-time RPN keyword arguments, checked."""
    if cfg.rpn_pre_nms_top_n < 1 or cfg.rpn_post_nms_top_n < 1:
        raise ValueError(f"rpn_pre_nms_top_n and rpn_post_nms_top_n must be >= 1, got "
                         f"{cfg.rpn_pre_nms_top_n} and {cfg.rpn_post_nms_top_n}")
    if not 0.0 <= cfg.rpn_score_thresh < 1.0:
        raise ValueError(f"rpn_score_thresh must be in [0, 1), got {cfg.rpn_score_thresh}")
    return {"rpn_pre_nms_top_n_test": cfg.rpn_pre_nms_top_n, "rpn_post_nms_top_n_test": cfg.rpn_post_nms_top_n,
            "rpn_score_thresh": cfg.rpn_score_thresh}


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build an untrained detector with the pinned-scale transform.

    No weights are downloaded: backbones start from scratch (``weights=None``,
    ``weights_backbone=None``).
    """
    if cfg.roi_sampling_ratio < 0:
        raise ValueError(f"roi_sampling_ratio must be >= 0 (0 = adaptive), got {cfg.roi_sampling_ratio}")
    if cfg.box_head_rank < 0:
        raise ValueError(f"box_head_rank must be >= 0 (0 = the head as trained), got {cfg.box_head_rank}")
    if cfg.name == "tiny_frcnn":
        body = TinyBackbone(cfg.widths)
        backbone = BackboneWithFPN(
            body,
            return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
            in_channels_list=list(cfg.widths),
            out_channels=cfg.fpn_channels,
        )  # adds a max-pooled stride-64 level "pool" for the RPN
        roi_pool = ThreadedRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=7,
                                    sampling_ratio=cfg.roi_sampling_ratio)
        model: nn.Module = FasterRCNN(
            backbone,
            num_classes=None,
            rpn_anchor_generator=_anchor_generator(cfg, 5),
            box_roi_pool=roi_pool,
            box_head=TwoMLPHead(cfg.fpn_channels * 49, cfg.representation_size),
            box_predictor=FastRCNNPredictor(cfg.representation_size, cfg.num_classes),
            rpn_pre_nms_top_n_train=2000, rpn_post_nms_top_n_train=1000, **_rpn_test_settings(cfg),
            box_score_thresh=cfg.score_thresh, box_nms_thresh=cfg.nms_thresh,
            box_detections_per_img=cfg.detections_per_img,
        )
    elif cfg.name == "tiny_fcos":
        if cfg.head_convs < 0:
            raise ValueError(f"head_convs must be >= 0, got {cfg.head_convs}")
        if cfg.fpn_channels % 32:
            raise ValueError(f"tiny_fcos needs fpn_channels divisible by 32 (its head's GroupNorm has 32 groups), "
                             f"got {cfg.fpn_channels}")
        backbone = BackboneWithFPN(
            TinyBackbone(cfg.widths),
            return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
            in_channels_list=list(cfg.widths),
            out_channels=cfg.fpn_channels,
        )  # the same five levels as tiny_frcnn, strides 4 to 64
        # FCOS reads one "anchor" per location: its centre and its size (the stride here, as in
        # torchvision's fcos_resnet50_fpn, whose P3..P7 get sizes 8..128), for the level ranges
        locations = AnchorGenerator(((4,), (8,), (16,), (32,), (64,)), ((1.0,),) * 5)
        model = FCOS(backbone, cfg.num_classes, anchor_generator=locations,
                     head=FCOSHead(cfg.fpn_channels, 1, cfg.num_classes, num_convs=cfg.head_convs),
                     score_thresh=cfg.score_thresh, nms_thresh=cfg.nms_thresh,
                     detections_per_img=cfg.detections_per_img)
    elif cfg.name == "fasterrcnn_mobilenet_v3_large_fpn":
        model = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=cfg.num_classes,
                                                  **_rpn_test_settings(cfg),
                                                  box_score_thresh=cfg.score_thresh, box_nms_thresh=cfg.nms_thresh,
                                                  box_detections_per_img=cfg.detections_per_img)
    elif cfg.name == "fasterrcnn_resnet50_fpn_v2":
        # FPN from ResNet's first stage (stride 4); 5 levels with the config's
        # anchors when it gives 5 levels of one size each (e.g. 8, 16, 32, 64, 128)
        model = fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=cfg.num_classes,
                                           trainable_backbone_layers=5, **_rpn_test_settings(cfg),
                                           box_score_thresh=cfg.score_thresh, box_nms_thresh=cfg.nms_thresh,
                                           box_detections_per_img=cfg.detections_per_img)
        if len(cfg.anchor_sizes) == 5 and all(len(s) == 1 for s in cfg.anchor_sizes):
            model.rpn.anchor_generator = _anchor_generator(cfg, 5)
    elif cfg.name == "retinanet_resnet50_fpn_v2":
        model = retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=cfg.num_classes,
                                          trainable_backbone_layers=5, score_thresh=cfg.score_thresh,
                                          nms_thresh=cfg.nms_thresh, detections_per_img=cfg.detections_per_img)
    elif cfg.name == "fcos_resnet50_fpn":
        model = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=cfg.num_classes,
                                  trainable_backbone_layers=5, score_thresh=cfg.score_thresh,
                                  nms_thresh=cfg.nms_thresh, detections_per_img=cfg.detections_per_img)
    else:
        raise ValueError(f"unknown model name {cfg.name!r}; choose one of {', '.join(MODEL_NAMES)}")
    model.transform = PinnedScaleTransform(cfg.image_mean, cfg.image_std)
    pool = getattr(getattr(model, "roi_heads", None), "box_roi_pool", None)
    if type(pool) is MultiScaleRoIAlign:  # torchvision's R-CNNs: the same pooling, on every core
        model.roi_heads.box_roi_pool = ThreadedRoIAlign(pool.featmap_names, pool.output_size, cfg.roi_sampling_ratio,
                                                        canonical_scale=pool.canonical_scale,
                                                        canonical_level=pool.canonical_level)
    return model
