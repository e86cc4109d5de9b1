"""COCO datasets: validated annotations, lazy image reads, one box format.

Annotations are loaded with :class:`pycocotools.coco.COCO` and checked once
at construction; images are read only when a sample is requested. Boxes come
out as ``float32`` xyxy in full-resolution pixels (converted from COCO xywh by
:func:`torchvision.ops.box_convert`).
"""

from __future__ import annotations

import contextlib
import io
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torchvision.ops import box_convert

__all__ = ["DatasetError", "Sample", "CocoDataset", "read_image", "image_to_tensor"]

# Pillow refuses images above ~179 Mpx by default (decompression bomb guard);
# high-resolution aerial imagery stays well below that, so keep the guard.
BOX_TOLERANCE_PX = 1.0


class DatasetError(ValueError):
    """A dataset problem that names the file and id concerned."""


@dataclass(frozen=True)
class Sample:
    """One image and its ground truth.

    Attributes:
        image_id: COCO image id.
        file_name: path of the image file.
        image: ``Tensor[3, H, W]`` float32 RGB in [0, 1].
        boxes: ``Tensor[N, 4]`` float32 xyxy, pixels.
        labels: ``Tensor[N]`` int64 category ids.
        iscrowd: ``Tensor[N]`` bool, regions COCOeval ignores.
    """

    image_id: int
    file_name: str
    image: Tensor
    boxes: Tensor
    labels: Tensor
    iscrowd: Tensor


def image_to_tensor(img: Image.Image, keep_uint8: bool = False) -> Tensor:
    """PIL image of any common mode to ``Tensor[3, H, W]`` float32 RGB in [0, 1].

    Handles 8-bit grey (``L``), palette, RGBA / LA (alpha dropped, composited
    on black), and 16-bit or 32-bit integer grey (``I;16``, ``I``), which is
    scaled by its bit depth rather than clipped.

    With ``keep_uint8``, 8-bit images come back as ``uint8`` in [0, 255] (a quarter of the memory;
    :func:`~zoomdet.detector.detector.crop_window` converts each crop exactly as this function would);
    16-bit and float images are float32 either way.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        maxval = 65535.0 if img.mode.startswith("I;16") or arr.max() <= 65535 else float(arr.max())
        grey = torch.from_numpy(arr / maxval).clamp_(0, 1)
        return grey.unsqueeze(0).expand(3, -1, -1).contiguous()
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        grey = torch.from_numpy((arr - lo) / max(hi - lo, 1e-12))
        return grey.unsqueeze(0).expand(3, -1, -1).contiguous()
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba)
    img = img.convert("RGB")
    chw = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)  # np.array: one writable copy
    return chw if keep_uint8 else chw.float().div_(255.0)  # uint8: a channels-first view, no further copy


def read_image(path: str | os.PathLike, keep_uint8: bool = False, max_pixels: Optional[int] = None) -> Tensor:
    """Read an image file, apply its EXIF orientation, return ``Tensor[3, H, W]`` float32 in [0, 1]
    (with ``keep_uint8``, 8-bit images as ``uint8`` in [0, 255]: see :func:`image_to_tensor`).

    ``max_pixels``: the largest ``width * height`` to decode, checked on the header before any pixel is read
    (``ValueError`` above it), in place of PIL's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``, 89M
    pixels, refused at twice that); ``0`` = no limit, ``None`` = PIL's."""
    limit = Image.MAX_IMAGE_PIXELS
    if max_pixels is not None:
        Image.MAX_IMAGE_PIXELS = None  # our limit replaces PIL's, for this read only (TIFF checks again on load)
    try:
        with Image.open(path) as img:
            w, h = img.size
            if max_pixels and w * h > max_pixels:
                raise ValueError(f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
            img = ImageOps.exif_transpose(img)
            return image_to_tensor(img, keep_uint8=keep_uint8)
    finally:
        Image.MAX_IMAGE_PIXELS = limit


class CocoDataset:
    """A COCO detection dataset with lazy image reads.

    Args:
        ann_file: COCO ``instances``-style json.
        image_root: folder that ``file_name`` is relative to. By default the
            first of ``<json folder>/images`` and ``<json folder>`` in which
            the first image's ``file_name`` exists (so both ``x.jpg`` and
            ``images/x.jpg`` work beside an ``images/`` folder).
        check_files: check at construction that every image file exists.

    Annotations without ``area`` get the box's ``w * h`` (what COCOeval's size buckets read; a
    box-only file has no segmentation area), and without ``iscrowd`` get 0, as exporters that omit them mean;
    a category without ``name`` is named by its id.

    Raises:
        DatasetError: unknown category, box outside its image, duplicate or
            missing image, ids that are not integers, an image entry without its
            size or file name, naming the file and the ids concerned.
    """

    def __init__(self, ann_file: str | os.PathLike, image_root: Optional[str | os.PathLike] = None,
                 check_files: bool = True) -> None:
        from pycocotools.coco import COCO

        self.ann_file = Path(ann_file)
        if not self.ann_file.is_file():
            raise DatasetError(f"annotation file not found: {self.ann_file}")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            try:
                self.coco = COCO(str(self.ann_file))
            except Exception as e:  # malformed json or missing keys
                raise DatasetError(f"{self.ann_file}: not a COCO detection file ({e})") from e
        missing = [k for k in ("images", "categories") if k not in self.coco.dataset]
        if missing:
            raise DatasetError(f"{self.ann_file}: not a COCO detection file (missing: {', '.join(missing)})")
        self.coco.dataset.setdefault("annotations", [])  # an unlabelled set (COCO's image_info files): no objects
        self._check_ids_and_fill_defaults()
        self.image_ids: list[int] = sorted(self.coco.getImgIds())
        if image_root is None:
            image_root = self._guess_image_root()
        elif not Path(image_root).is_dir():
            raise DatasetError(f"image root {image_root} is not a folder")
        self.image_root = Path(image_root)
        self.categories: dict[int, str] = {c["id"]: c["name"] for c in self.coco.loadCats(self.coco.getCatIds())}
        self._validate(check_files)

    def _guess_image_root(self) -> Path:
        here = self.ann_file.parent
        candidates = [here / "images", here]
        if self.image_ids:
            first = self.coco.imgs[self.image_ids[0]]["file_name"]
            for root in candidates:
                if (root / first).is_file():
                    return root
        return candidates[0] if candidates[0].is_dir() else here

    def _check_ids_and_fill_defaults(self) -> None:
        """Integer, unique ids and complete image entries (pycocotools indexes by id: a repeated id would
        silently drop an image or an annotation); ``area`` and ``iscrowd`` filled where missing."""
        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for kind, one in (("images", "image"), ("annotations", "annotation"), ("categories", "category")):
            seen: set[int] = set()
            for e in self.coco.dataset[kind]:
                if not is_int(e.get("id")):
                    raise DatasetError(f"{self.ann_file}: {one} id {e.get('id')!r} is not an integer (COCO ids are integers)")
                if e["id"] in seen:
                    raise DatasetError(f"{self.ann_file}: {one} id {e['id']} appears more than once")
                seen.add(e["id"])
        for img in self.coco.dataset["images"]:
            lacking = [k for k in ("file_name", "width", "height") if k not in img]
            if lacking:
                raise DatasetError(f"{self.ann_file}: image id {img['id']} has no {', '.join(lacking)}")
        for cat in self.coco.dataset["categories"]:
            cat.setdefault("name", str(cat["id"]))  # a nameless category is called by its id
        for ann in self.coco.dataset["annotations"]:
            if "bbox" not in ann or len(ann["bbox"]) != 4:
                raise DatasetError(f"{self.ann_file}: annotation id {ann['id']} has no [x, y, w, h] bbox")
            ann.setdefault("iscrowd", 0)
            if "area" not in ann:
                ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])

    def _validate(self, check_files: bool) -> None:
        for ann in self.coco.dataset.get("annotations", []):
            img = self.coco.imgs.get(ann["image_id"])
            if img is None:
                raise DatasetError(f"{self.ann_file}: annotation id {ann.get('id')} refers to unknown image id {ann['image_id']}")
            if ann["category_id"] not in self.categories:
                raise DatasetError(
                    f"{self.ann_file}: annotation id {ann.get('id')} in image {img['file_name']} (id {img['id']}) "
                    f"has unknown category_id {ann['category_id']}; known: {sorted(self.categories)}"
                )
            x, y, w, h = ann["bbox"]
            W, H = img["width"], img["height"]
            t = BOX_TOLERANCE_PX
            if w <= 0 or h <= 0 or x < -t or y < -t or x + w > W + t or y + h > H + t:
                raise DatasetError(
                    f"{self.ann_file}: annotation id {ann.get('id')} in image {img['file_name']} (id {img['id']}) "
                    f"has box xywh={ann['bbox']} outside the {W}x{H} image or empty"
                )
        if check_files:
            for iid in self.image_ids:
                p = self.image_path(iid)
                if not p.is_file():
                    raise DatasetError(f"{self.ann_file}: image file {p} (image id {iid}) not found; "
                                       f"file_name is read relative to {self.image_root} (pass --image-root FOLDER)")

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_info(self, image_id: int) -> dict:
        return self.coco.imgs[image_id]

    def image_path(self, image_id: int) -> Path:
        return self.image_root / self.coco.imgs[image_id]["file_name"]

    def load_image(self, image_id: int, keep_uint8: bool = False) -> Tensor:
        """``Tensor[3, H, W]`` float32 in [0, 1] for ``image_id`` (8-bit images as ``uint8`` in [0, 255] with
        ``keep_uint8``, what inference reads); checks the size against the json."""
        info = self.coco.imgs[image_id]
        path = self.image_path(image_id)
        try:
            image = read_image(path, keep_uint8=keep_uint8)
        except FileNotFoundError as e:
            raise DatasetError(f"image file {path} (image id {image_id}) not found") from e
        except OSError as e:
            raise DatasetError(f"image file {path} (image id {image_id}) cannot be decoded: {e}") from e
        h, w = image.shape[1:]
        if (w, h) != (info["width"], info["height"]):
            raise DatasetError(
                f"image file {path} (image id {image_id}) is {w}x{h} after EXIF orientation, "
                f"but the annotations say {info['width']}x{info['height']}"
            )
        return image

    def targets(self, image_id: int) -> tuple[Tensor, Tensor, Tensor]:
        """Ground truth of ``image_id``: boxes ``[N, 4]`` xyxy pixels, labels ``[N]``, iscrowd ``[N]`` bool."""
        anns = self.coco.imgToAnns.get(image_id, [])
        if not anns:
            return torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.int64), torch.zeros((0,), dtype=torch.bool)
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
        info = self.coco.imgs[image_id]
        boxes = box_convert(xywh, "xywh", "xyxy")
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, info["width"])
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, info["height"])
        labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        crowd = torch.tensor([bool(a.get("iscrowd", 0)) for a in anns])
        return boxes, labels, crowd

    def __getitem__(self, index: int) -> Sample:
        iid = self.image_ids[index]
        boxes, labels, crowd = self.targets(iid)
        return Sample(iid, str(self.image_path(iid)), self.load_image(iid), boxes, labels, crowd)

    def subset(self, n: int, seed: int = 0, exclude: Iterable[int] = ()) -> list[int]:
        """``n`` image ids drawn at random with ``seed`` (all when ``n <= 0`` or ``n >= len``), sorted;
        ids in ``exclude`` are left out first, and the draw is among the rest.

        A sample, not the first ``n``: datasets are often sorted by source (camera, site, date), and
        the first ``n`` ids would then see one source only. The same ``n`` and ``seed`` give the same ids.
        """
        left_out = set(exclude)
        pool = [i for i in self.image_ids if i not in left_out]
        if not pool and self.image_ids:
            raise ValueError(f"every image of {self.ann_file} is excluded: nothing left to draw from")
        if n <= 0 or n >= len(pool):
            return pool
        return sorted(random.Random(seed).sample(pool, n))


SIZE_BUCKETS = [("<16", 0.0, 16.0), ("16-32", 16.0, 32.0), ("32-96", 32.0, 96.0), (">=96", 96.0, float("inf"))]


def dataset_stats(ds: CocoDataset) -> dict:
    """Counts and an object-size histogram (size = sqrt(box area), pixels)."""
    anns = [a for a in ds.coco.dataset.get("annotations", []) if not a.get("iscrowd", 0)]
    sizes = np.array([np.sqrt(a["bbox"][2] * a["bbox"][3]) for a in anns]) if anns else np.zeros(0)
    per_cat = {name: 0 for name in ds.categories.values()}
    for a in anns:
        per_cat[ds.categories[a["category_id"]]] += 1
    hist = {label: int(((sizes >= lo) & (sizes < hi)).sum()) for label, lo, hi in SIZE_BUCKETS}
    dims = sorted({(i["width"], i["height"]) for i in ds.coco.imgs.values()})
    return {"images": len(ds), "annotations": len(anns),
            "crowd_regions": len(ds.coco.dataset.get("annotations", [])) - len(anns),
            "per_category": per_cat, "size_histogram_px": hist,
            "image_sizes": [f"{w}x{h}" for w, h in dims[:5]] + (["..."] if len(dims) > 5 else []),
            "suggested": suggest_settings(sizes, dims, len(ds.categories))}


MIN_DETECTABLE_PX = 16.0
"""Object size (sqrt of box area, model-input pixels) below which a small CNN detector mostly misses."""


def suggest_settings(sizes: np.ndarray, dims: list[tuple[int, int]], n_categories: int) -> dict:
    """Size-aware defaults for a new dataset, from its object sizes (``sqrt(w*h)``, px) and image sizes.

    * ``coarse_scale``: the cheapest power-of-two scale in [1/8, 1/2] that keeps the median object at
      least ``MIN_DETECTABLE_PX`` px in the coarse pass (objects below that are what zooming is for).
    * ``scales`` (detector training): the fine scale 1.0, the coarse scale, and 0.5 between them.
    * ``anchor_sizes``: five FPN levels spanning the 5th percentile at the coarse scale to the 95th at 1.0.
    * ``crop_size``: 512 for images of 1024 px and more, else the short side rounded down to 32.
    * ``budgets``: max_pixels_ratio values from just above the coarse pass's cost.
    """
    if sizes.size == 0 or not dims:
        return {}
    median = float(np.median(sizes))
    coarse = float(2.0 ** np.ceil(np.log2(MIN_DETECTABLE_PX / max(median, 1e-6))))
    coarse = min(0.5, max(0.125, coarse))
    lo = max(4.0, float(np.percentile(sizes, 5)) * coarse)
    hi = max(lo * 16, float(np.percentile(sizes, 95)))
    levels = np.geomspace(lo, hi, 5)
    anchors = [[int(round(a)), int(round(a * 1.5))] for a in levels]
    short = min(min(w, h) for w, h in dims)
    crop = 512 if short >= 1024 else max(64, short // 32 * 32)
    scales = sorted({1.0, 0.5, coarse}, reverse=True)
    base = coarse * coarse
    budgets = [round(base + f * (1 - base), 2) for f in (0.05, 0.15, 0.3, 0.45)]
    return {"coarse_scale": coarse, "num_classes": n_categories + 1, "scales": scales, "anchor_sizes": anchors,
            "crop_size": crop, "budgets": budgets, "median_object_px": round(median, 1),
            "median_object_px_at_coarse": round(median * coarse, 1)}
