"""Typed containers shared by every ZoomDet component.

One box format is used everywhere public: ``float32`` ``xyxy`` in absolute
pixels of the full-resolution source image. Conversion from and to COCO's
``xywh`` happens only at the edges (:mod:`zoomdet.data.coco` and the
evaluator), through :func:`torchvision.ops.box_convert`.

A :class:`Window` is a region of the source image together with the scale at
which the detector sees it, so every detector pass (coarse, fine, SAHI slice)
is described by the same object and mapped back to image coordinates by the
same pure function (:meth:`Window.to_image`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["Detections", "Window"]


@dataclass(frozen=True)
class Window:
    """A region of the source image and the scale the detector sees it at.

    Attributes:
        x0, y0, x1, y1: integer pixel bounds in the full-resolution image,
            ``0 <= x0 < x1 <= width``; the crop is ``image[:, y0:y1, x0:x1]``.
        scale: resize factor applied to the crop before the detector
            (0.5 = half resolution per side, 1.0 = full resolution).
    """

    x0: int
    y0: int
    x1: int
    y1: int
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not (self.x1 > self.x0 and self.y1 > self.y0):
            raise ValueError(f"empty window {self.as_tuple()}: need x1 > x0 and y1 > y0")
        if not self.scale > 0:
            raise ValueError(f"window scale must be > 0, got {self.scale}")

    @classmethod
    def full(cls, width: int, height: int, scale: float = 1.0) -> "Window":
        """The whole ``width`` x ``height`` image at ``scale``."""
        return cls(0, 0, int(width), int(height), float(scale))

    def as_tuple(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` in source pixels."""
        return (self.x0, self.y0, self.x1, self.y1)

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def source_pixels(self) -> int:
        """Full-resolution source pixels this window reads."""
        return self.width * self.height

    @property
    def input_size(self) -> tuple[int, int]:
        """``(height, width)`` of the detector input after resizing, pixels."""
        return (max(1, round(self.height * self.scale)), max(1, round(self.width * self.scale)))

    @property
    def input_pixels(self) -> int:
        """Pixels the detector receives for this window."""
        h, w = self.input_size
        return h * w

    def box(self) -> Tensor:
        """``Tensor[4]`` float32, xyxy, source pixels."""
        return torch.tensor(self.as_tuple(), dtype=torch.float32)

    def to_image(self, boxes: Tensor) -> Tensor:
        """Map boxes from this window's detector-input frame to the source image.

        Args:
            boxes: ``Tensor[N, 4]`` xyxy in pixels of the resized crop
                (``input_size``).

        Returns:
            ``Tensor[N, 4]`` float32 xyxy in full-resolution image pixels.
            The input is not modified.
        """
        in_h, in_w = self.input_size
        sx = self.width / in_w
        sy = self.height / in_h
        factor = boxes.new_tensor([sx, sy, sx, sy])
        offset = boxes.new_tensor([self.x0, self.y0, self.x0, self.y0])
        return boxes * factor + offset

    def with_scale(self, scale: float) -> "Window":
        return Window(self.x0, self.y0, self.x1, self.y1, float(scale))

    def shifted(self, dx: int, dy: int) -> "Window":
        """The same window ``dx``, ``dy`` pixels further right and down (from a frame's pixels to its scene's)."""
        return Window(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy, self.scale)


@dataclass(frozen=True)
class Detections:
    """Detections of one image, in full-resolution image pixels.

    Attributes:
        boxes: ``Tensor[N, 4]`` float32, xyxy, pixels.
        scores: ``Tensor[N]`` float32 confidence in [0, 1].
        labels: ``Tensor[N]`` int64 category ids (the dataset's ids).
        features: ``Tensor[N, D]`` float32 RoI feature vector of each box
            (R-CNN detectors only) or ``None``.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    features: Optional[Tensor] = None

    def __post_init__(self) -> None:
        n = self.boxes.shape[0]
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"boxes must be [N, 4], got {tuple(self.boxes.shape)}")
        if self.scores.shape != (n,) or self.labels.shape != (n,):
            raise ValueError(
                f"scores {tuple(self.scores.shape)} and labels {tuple(self.labels.shape)} must be [{n}]"
            )
        if self.features is not None and self.features.shape[0] != n:
            raise ValueError(f"features must have {n} rows, got {tuple(self.features.shape)}")

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @classmethod
    def empty(cls, feature_dim: Optional[int] = None) -> "Detections":
        feats = None if feature_dim is None else torch.zeros((0, feature_dim))
        return cls(torch.zeros((0, 4)), torch.zeros((0,)), torch.zeros((0,), dtype=torch.int64), feats)

    def select(self, index: Tensor) -> "Detections":
        """Subset by a boolean mask or an index tensor."""
        feats = None if self.features is None else self.features[index]
        return Detections(self.boxes[index], self.scores[index], self.labels[index], feats)

    def with_boxes(self, boxes: Tensor) -> "Detections":
        return Detections(boxes, self.scores, self.labels, self.features)

    def shifted(self, dx: float, dy: float) -> "Detections":
        """The boxes moved ``dx``, ``dy`` pixels right and down (from a frame's pixels to its scene's)."""
        return self.with_boxes(self.boxes + self.boxes.new_tensor([dx, dy, dx, dy]))

    @staticmethod
    def cat(items: Sequence["Detections"]) -> "Detections":
        """Concatenate; features are kept only when every part has them."""
        items = list(items)
        if not items:
            return Detections.empty()
        feats = None
        if all(d.features is not None for d in items):
            feats = torch.cat([d.features for d in items])  # type: ignore[misc]
        return Detections(
            torch.cat([d.boxes for d in items]).float(),
            torch.cat([d.scores for d in items]).float(),
            torch.cat([d.labels for d in items]).long(),
            feats,
        )

    def without_features(self) -> "Detections":
        return Detections(self.boxes, self.scores, self.labels, None)

    def to_coco(self, image_id: int) -> list[dict]:
        """COCO result dicts (``bbox`` as xywh pixels) for ``image_id``."""
        out = []
        for (x0, y0, x1, y1), s, c in zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist()):
            out.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(c),
                    "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                    "score": round(float(s), 5),
                }
            )
        return out
