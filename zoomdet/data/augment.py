"""The eight flips and rotations of an image (the dihedral group D4), applied to the image and its boxes.

A rollout cache can hold several views of each image (``zoomdet cache build --augment``): the detector
run on a flipped or rotated image is a new sample of what it does, so an agent trained on the cache sees
more episodes than there are labelled images. Aerial and satellite images seen from above have no
"up", so every view is as natural as the original there; oblique drone frames keep their sky at the top,
and only ``hflip`` leaves that unchanged.

A view of image ``i`` gets the id ``i + k * VIEW_ID_STRIDE``, ``k`` its index in :data:`VIEWS`
(``identity`` keeps ``i``, whatever its size), so the views of one COCO file never collide with each
other or with its own ids (a file whose ids reach the stride is refused other views), and
:func:`source_view` recovers the image and the view from the id.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["VIEWS", "VIEW_ID_STRIDE", "check_views", "view_id", "source_view", "apply_view"]

VIEWS = ("identity", "hflip", "vflip", "rot180", "transpose", "rot90", "rot270", "transverse")
"""The views' names. ``rot90`` turns the image a quarter counter-clockwise, ``rot270`` clockwise;
``transpose`` mirrors it about its main diagonal (x and y swap), ``transverse`` about the other one."""

VIEW_ID_STRIDE = 10_000_000
"""Ids of the views of image ``i`` are ``i + k * VIEW_ID_STRIDE``; COCO ids must stay below it."""


def check_views(views) -> tuple[str, ...]:
    """The views as a tuple, or ``ValueError`` for an unknown, repeated or empty list."""
    views = tuple(views)
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise ValueError(f"unknown view(s) {', '.join(map(repr, unknown))}; choose among {', '.join(VIEWS)}")
    if not views:
        raise ValueError(f"give at least one view among {', '.join(VIEWS)}")
    if len(set(views)) != len(views):
        raise ValueError(f"views repeat: {', '.join(views)}")
    return views


def view_id(image_id: int, view: str) -> int:
    """The id of ``view`` of COCO image ``image_id`` (``identity`` keeps the id)."""
    image_id = int(image_id)
    if view == "identity":
        return image_id
    if not 0 <= image_id < VIEW_ID_STRIDE:
        raise ValueError(f"image id {image_id} is outside [0, {VIEW_ID_STRIDE}): its views' ids would collide")
    return image_id + VIEWS.index(view) * VIEW_ID_STRIDE


def source_view(record_id: int, coco_ids=()) -> tuple[int, str]:
    """``(image_id, view)`` of an id made by :func:`view_id`; an id among ``coco_ids`` (the COCO file's own)
    is that image as it is."""
    if record_id in coco_ids:
        return int(record_id), "identity"
    k, image_id = divmod(int(record_id), VIEW_ID_STRIDE)
    if not 0 <= k < len(VIEWS):
        raise ValueError(f"id {record_id} is no view of a COCO image")
    return image_id, VIEWS[k]


def apply_view(image: Tensor, boxes: Tensor, view: str) -> tuple[Tensor, Tensor]:
    """``view`` of an image and its boxes.

    Args:
        image: ``Tensor[C, H, W]`` of any dtype.
        boxes: ``Tensor[N, 4]`` float xyxy, pixels of ``image``.

    Returns:
        the viewed image (``Tensor[C, W, H]`` for the views that swap the axes) and its boxes, xyxy pixels
        of it. Box edges map to box edges exactly: a box's pixels are the viewed box's pixels.
    """
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; choose among {', '.join(VIEWS)}")
    _, H, W = image.shape
    x0, y0, x1, y1 = boxes.unbind(-1)
    if view == "identity":
        return image, boxes
    if view == "hflip":
        return image.flip(-1), torch.stack([W - x1, y0, W - x0, y1], -1)
    if view == "vflip":
        return image.flip(-2), torch.stack([x0, H - y1, x1, H - y0], -1)
    if view == "rot180":
        return image.flip(-1).flip(-2), torch.stack([W - x1, H - y1, W - x0, H - y0], -1)
    if view == "transpose":  # pixel (y, x) -> (x, y)
        return image.transpose(-1, -2), torch.stack([y0, x0, y1, x1], -1)
    if view == "rot90":  # counter-clockwise: pixel (y, x) -> (W - 1 - x, y)
        return torch.rot90(image, 1, dims=(-2, -1)), torch.stack([y0, W - x1, y1, W - x0], -1)
    if view == "rot270":  # clockwise: pixel (y, x) -> (x, H - 1 - y)
        return torch.rot90(image, -1, dims=(-2, -1)), torch.stack([H - y1, x0, H - y0, x1], -1)
    # transverse: pixel (y, x) -> (W - 1 - x, H - 1 - y)
    return image.transpose(-1, -2).flip(-1).flip(-2), torch.stack([H - y1, W - x1, H - y0, W - x0], -1)
