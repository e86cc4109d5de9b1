"""Synthetic high-resolution COCO datasets with the small-object problem built in.

Each image is a textured background (low- and mid-frequency terrain, roads,
pixel noise) with three object classes drawn in clusters:

* ``person`` (id 1): a body ellipse and a head, 8-60 px tall, in crowds;
* ``car`` (id 2): a 2:1 rectangle with a windshield, 12-120 px long, in
  parking rows;
* ``truck`` (id 3): a long cab-and-cargo shape, 30-200 px long.

Sizes are drawn log-uniformly, so most objects are small, and distractor blobs
of the same colours and sizes are scattered around. Pixel noise is added after
drawing, so an 8 px person that is clear at full resolution becomes a 4 px
smudge at half resolution: the phenomenon coarse-to-fine detection exists for.

Everything is drawn with PIL and numpy from one ``numpy.random.Generator``
seeded per image, so a dataset is byte-identical for a given seed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SynthConfig", "CATEGORIES", "generate_image", "generate_dataset"]

CATEGORIES = [
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 2, "name": "car", "supercategory": "vehicle"},
    {"id": 3, "name": "truck", "supercategory": "vehicle"},
]


@dataclass
class SynthConfig:
    """Synthetic dataset options."""

    images: int = 20
    """Number of images."""
    width: int = 2048
    """Image width, pixels."""
    height: int = 1536
    """Image height, pixels."""
    seed: int = 0
    """Seed; image ``i`` uses ``seed * 1_000_003 + i`` so datasets are reproducible."""
    objects_per_megapixel: float = 40.0
    """Mean object count per million pixels (clusters included)."""
    noise_sigma: float = 14.0
    """Standard deviation of the per-pixel noise, grey levels."""
    jpeg_quality: int = 92
    """JPEG quality of the written images."""


_PERSON_COLOURS = np.array([[215, 190, 160], [230, 225, 210], [190, 60, 50], [60, 80, 170], [40, 40, 45]])
_CAR_COLOURS = np.array([[200, 200, 205], [30, 30, 35], [160, 30, 30], [40, 70, 140], [220, 210, 90]])
_TRUCK_COLOURS = np.array([[235, 235, 235], [90, 110, 60], [200, 120, 40], [70, 70, 80]])


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Terrain texture: low + mid frequency colour noise, upsampled by PIL."""
    base = rng.uniform(70, 150, size=3)
    shape = (h // 128 + 2, w // 128 + 2)
    low = rng.normal(0, 22, size=shape + (1,)) + rng.normal(0, 7, size=shape + (3,))
    mid = rng.normal(0, 10, size=(h // 16 + 2, w // 16 + 2, 1)).repeat(3, axis=2)
    low_img = Image.fromarray(np.clip(base + low, 0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    mid_img = Image.fromarray(np.clip(128 + mid, 0, 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    # overlay mid-frequency texture: (a + b - 128), done by PIL in C
    from PIL import ImageChops

    return ImageChops.add(low_img, mid_img, scale=1.0, offset=-128)


def _jitter(rng: np.random.Generator, colour: np.ndarray) -> tuple[int, int, int]:
    c = np.clip(colour + rng.normal(0, 12, size=3), 0, 255).astype(int)
    return (int(c[0]), int(c[1]), int(c[2]))


def _draw_person(draw: ImageDraw.ImageDraw, rng, cx: float, cy: float, h: float) -> list[float]:
    w = h * rng.uniform(0.35, 0.5)
    col = _jitter(rng, _PERSON_COLOURS[rng.integers(len(_PERSON_COLOURS))])
    head = h * 0.28
    x0, y0 = cx - w / 2, cy - h / 2
    draw.ellipse([x0, y0 + head * 0.8, x0 + w, y0 + h], fill=col)
    skin = _jitter(rng, np.array([225, 180, 140]))
    draw.ellipse([cx - head / 2, y0, cx + head / 2, y0 + head], fill=skin)
    return [x0, y0, w, h]


def _draw_vehicle(draw, rng, cx, cy, length, aspect, colours, horizontal: bool, truck: bool) -> list[float]:
    width = length / aspect
    bw, bh = (length, width) if horizontal else (width, length)
    x0, y0 = cx - bw / 2, cy - bh / 2
    col = _jitter(rng, colours[rng.integers(len(colours))])
    draw.rectangle([x0, y0, x0 + bw, y0 + bh], fill=col)
    dark = (25, 30, 40)
    if truck:  # cab at one end, separated by a gap line
        cab = 0.25
        if horizontal:
            draw.rectangle([x0 + bw * (1 - cab), y0 + bh * 0.1, x0 + bw * (1 - cab) + max(1, bw * 0.03), y0 + bh * 0.9], fill=dark)
        else:
            draw.rectangle([x0 + bw * 0.1, y0 + bh * cab, x0 + bw * 0.9, y0 + bh * cab + max(1, bh * 0.03)], fill=dark)
    else:  # windshield and rear window
        if horizontal:
            draw.rectangle([x0 + bw * 0.62, y0 + bh * 0.15, x0 + bw * 0.78, y0 + bh * 0.85], fill=dark)
            draw.rectangle([x0 + bw * 0.15, y0 + bh * 0.2, x0 + bw * 0.25, y0 + bh * 0.8], fill=dark)
        else:
            draw.rectangle([x0 + bw * 0.15, y0 + bh * 0.22, x0 + bw * 0.85, y0 + bh * 0.38], fill=dark)
            draw.rectangle([x0 + bw * 0.2, y0 + bh * 0.75, x0 + bw * 0.8, y0 + bh * 0.85], fill=dark)
    return [x0, y0, bw, bh]


def _overlaps(boxes: list[list[float]], b: list[float], max_iou: float = 0.15) -> bool:
    if not boxes:
        return False
    a = np.asarray(boxes)
    ix = np.clip(np.minimum(a[:, 0] + a[:, 2], b[0] + b[2]) - np.maximum(a[:, 0], b[0]), 0, None)
    iy = np.clip(np.minimum(a[:, 1] + a[:, 3], b[1] + b[3]) - np.maximum(a[:, 1], b[1]), 0, None)
    inter = ix * iy
    union = a[:, 2] * a[:, 3] + b[2] * b[3] - inter
    return bool((inter / union > max_iou).any())


def generate_image(cfg: SynthConfig, index: int) -> tuple[Image.Image, list[dict]]:
    """Draw image ``index`` of the dataset defined by ``cfg``.

    Returns:
        The RGB image (``cfg.width`` x ``cfg.height``) and its annotations as
        dicts with ``bbox`` (COCO xywh, pixels, inside the image) and
        ``category_id``.
    """
    rng = np.random.default_rng(cfg.seed * 1_000_003 + index)
    w, h = cfg.width, cfg.height
    img = _background(rng, w, h)
    draw = ImageDraw.Draw(img)

    # roads: long bands that give parking rows a context
    for _ in range(rng.integers(0, 3)):
        road_w = rng.uniform(25, 70)
        col = _jitter(rng, np.array([95, 95, 100]))
        if rng.random() < 0.5:
            y = rng.uniform(0, h)
            draw.rectangle([0, y, w, y + road_w], fill=col)
        else:
            x = rng.uniform(0, w)
            draw.rectangle([x, 0, x + road_w, h], fill=col)

    # distractors: blobs with object colours and sizes, but not object shapes
    n_distract = int(rng.poisson(cfg.objects_per_megapixel * w * h / 1e6 * 0.6))
    for _ in range(n_distract):
        s = _log_uniform(rng, 5, 60)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        col = _jitter(rng, _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))])
        if rng.random() < 0.6:
            draw.ellipse([cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2], fill=col)
        else:  # thin line segment (fence, branch)
            ang = rng.uniform(0, np.pi)
            dx, dy = np.cos(ang) * s * 2, np.sin(ang) * s * 2
            draw.line([cx, cy, cx + dx, cy + dy], fill=col, width=max(1, int(s / 8)))

    boxes: list[list[float]] = []
    labels: list[int] = []

    def place(cat: int, cx: float, cy: float, size: float, horizontal: bool = True) -> None:
        if cat == 1:
            est = [cx - size * 0.25, cy - size / 2, size * 0.5, size]
        else:
            aspect = 2.0 if cat == 2 else 2.8
            bw, bh = (size, size / aspect) if horizontal else (size / aspect, size)
            est = [cx - bw / 2, cy - bh / 2, bw, bh]
        if est[0] < 0 or est[1] < 0 or est[0] + est[2] > w or est[1] + est[3] > h:
            return
        if _overlaps(boxes, est):
            return
        if cat == 1:
            box = _draw_person(draw, rng, cx, cy, size)
        else:
            box = _draw_vehicle(draw, rng, cx, cy, size, 2.0 if cat == 2 else rng.uniform(2.5, 3.2),
                                _CAR_COLOURS if cat == 2 else _TRUCK_COLOURS, horizontal, cat == 3)
        boxes.append(box)
        labels.append(cat)

    budget = int(rng.poisson(cfg.objects_per_megapixel * w * h / 1e6))
    while len(boxes) < budget:
        before = len(boxes)
        kind = rng.random()
        if kind < 0.35:  # crowd of people, similar sizes
            n = int(rng.integers(4, 20))
            size0 = _log_uniform(rng, 8, 50)
            cx0, cy0 = rng.uniform(0, w), rng.uniform(0, h)
            spread = size0 * rng.uniform(1.5, 4)
            for _ in range(n):
                place(1, cx0 + rng.normal(0, spread), cy0 + rng.normal(0, spread), size0 * rng.uniform(0.8, 1.25))
        elif kind < 0.6:  # parking row of cars
            n = int(rng.integers(3, 12))
            size0 = _log_uniform(rng, 12, 110)
            horizontal = bool(rng.random() < 0.5)
            gap = size0 * (0.5 + 0.15) + rng.uniform(1, 4)  # cars side by side
            cx0, cy0 = rng.uniform(0, w), rng.uniform(0, h)
            for k in range(n):
                dx, dy = (0, k * gap) if horizontal else (k * gap, 0)
                place(2, cx0 + dx, cy0 + dy, size0 * rng.uniform(0.92, 1.08), horizontal)
        elif kind < 0.75:
            place(3, rng.uniform(0, w), rng.uniform(0, h), _log_uniform(rng, 30, 200), bool(rng.random() < 0.5))
        else:  # scattered singles
            cat = int(rng.integers(1, 3))
            size = _log_uniform(rng, 8, 60) if cat == 1 else _log_uniform(rng, 12, 120)
            place(cat, rng.uniform(0, w), rng.uniform(0, h), size, bool(rng.random() < 0.5))
        if len(boxes) == before and rng.random() < 0.05:
            break  # image is full

    # sensor noise on top of everything, one channel broadcast to three (fast)
    arr = np.asarray(img, dtype=np.int16)
    noise = rng.normal(0.0, cfg.noise_sigma, size=(h, w, 1)).astype(np.int16)
    arr = np.clip(arr + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)

    anns = []
    for (x, y, bw, bh), c in zip(boxes, labels):
        x0, y0 = max(0.0, x), max(0.0, y)
        x1, y1 = min(float(w), x + bw + 1), min(float(h), y + bh + 1)  # PIL draws inclusive bounds
        anns.append({"category_id": c, "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]})
    return img, anns


def generate_dataset(cfg: SynthConfig, out: str | os.PathLike, progress: bool = True) -> Path:
    """Write ``cfg.images`` images to ``out/images`` and ``out/annotations.json``.

    Returns:
        Path of the annotation file.
    """
    from tqdm import tqdm

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    ann_id = 1
    for i in tqdm(range(cfg.images), desc="synth", unit="img", disable=not progress):
        img, anns = generate_image(cfg, i)
        name = f"{i:06d}.jpg"
        img.save(out / "images" / name, quality=cfg.jpeg_quality)
        images.append({"id": i + 1, "file_name": name, "width": cfg.width, "height": cfg.height})
        for a in anns:
            bw, bh = a["bbox"][2], a["bbox"][3]
            annotations.append({"id": ann_id, "image_id": i + 1, "category_id": a["category_id"],
                                "bbox": a["bbox"], "area": round(bw * bh, 2), "iscrowd": 0})
            ann_id += 1
    coco = {
        "info": {"description": "ZoomDet synthetic dataset", "seed": cfg.seed, "width": cfg.width, "height": cfg.height},
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    path = out / "annotations.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(coco, separators=(",", ":")))
    os.replace(tmp, path)
    return path
