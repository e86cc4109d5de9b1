"""COCO metrics from pycocotools' COCOeval, plus a tiny-object bucket.

All AP numbers come from :class:`pycocotools.cocoeval.COCOeval`; this module
only chooses the area ranges and reads the accumulated precision/recall
arrays the way ``COCOeval.summarize`` does, so that a ``tiny`` bucket
(area < 16² px) can sit beside COCO's ``small`` (< 32²).
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Optional, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = ["coco_metrics", "episode_metrics", "AREA_RANGES", "ImageAP", "PoolAP", "ground_truth_coco", "BootstrapAP",
           "paired_bootstrap", "bootstrap_draws"]

# name -> [min area, max area] in px², as COCOeval expects
AREA_RANGES = {
    "all": [0.0, 1e10],
    "tiny": [0.0, 16.0**2],
    "small": [0.0, 32.0**2],
    "medium": [32.0**2, 96.0**2],
    "large": [96.0**2, 1e10],
}


def ground_truth_coco(images, categories: Optional[dict] = None) -> COCO:
    """An in-memory COCO ground truth for :class:`COCOeval`.

    Args:
        images: per image ``(image_id, width, height, boxes, labels, crowd)``: boxes ``[G, 4]`` xyxy pixels
            (tensor, array or lists), category ids, crowd flags.
        categories: ``{category id: name}`` to declare beside the labels present (which are named by id).
    """
    anns, cats = [], {int(c): str(n) for c, n in (categories or {}).items()}
    records = []
    for image_id, width, height, boxes, labels, crowd in images:
        records.append({"id": int(image_id), "width": int(width), "height": int(height)})
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        for (x0, y0, x1, y1), c, k in zip(b.tolist(), np.asarray(labels).reshape(-1).tolist(),
                                          np.asarray(crowd).reshape(-1).tolist()):
            anns.append({"id": len(anns) + 1, "image_id": int(image_id), "category_id": int(c), "iscrowd": int(k),
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float((x1 - x0) * (y1 - y0))})
            cats.setdefault(int(c), str(int(c)))
    gt = COCO()
    gt.dataset = {"images": records, "annotations": anns,
                  "categories": [{"id": c, "name": n} for c, n in sorted(cats.items())]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _mean_valid(x: np.ndarray) -> float:
    v = x[x > -1]
    return float(v.mean()) if v.size else float("nan")


def coco_metrics(coco_gt: COCO, results: list[dict], image_ids: Sequence[int], per_class: bool = False) -> dict:
    """AP / AR of ``results`` on ``image_ids`` of ``coco_gt``.

    Args:
        coco_gt: ground truth (crowd regions are ignored by COCOeval).
        results: COCO result dicts (``image_id``, ``category_id``, ``bbox``
            xywh pixels, ``score``).
        image_ids: the images evaluated (images without results count as
            misses).
        per_class: also return ``per_class``: ``{category name: AP@[.5:.95]}``
            (NaN for a category without ground truth in ``image_ids``).

    Returns:
        ``ap`` (AP@[.5:.95]), ``ap50``, ``ap75``, ``ap_small``, ``ap_tiny``,
        ``ap_medium``, ``ap_large``, ``ap50_small``, ``ap50_tiny``, ``ar100``,
        ``ar100_small``, ``ar100_tiny``; fractions in [0, 1], NaN where a
        bucket has no ground truth.
    """
    keys = ["ap", "ap50", "ap75", "ap_small", "ap_tiny", "ap_medium", "ap_large",
            "ap50_small", "ap50_tiny", "ar100", "ar100_small", "ar100_tiny"]
    if not results:
        out = {k: 0.0 for k in keys}
        if per_class:
            out["per_class"] = {c["name"]: 0.0 for c in coco_gt.loadCats(coco_gt.getCatIds())}
        return out
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.imgIds = list(image_ids)
        ev.params.areaRng = list(AREA_RANGES.values())
        ev.params.areaRngLbl = list(AREA_RANGES.keys())
        ev.params.maxDets = [1, 10, 100, 1000]
        ev.evaluate()
        ev.accumulate()
    p = ev.eval["precision"]  # [T, R, K, A, M]
    r = ev.eval["recall"]  # [T, K, A, M]
    iou = ev.params.iouThrs
    a = {name: i for i, name in enumerate(ev.params.areaRngLbl)}
    m100 = ev.params.maxDets.index(100)
    m_all = ev.params.maxDets.index(1000)  # dense crowds: AP over all detections
    t50 = int(np.argmin(np.abs(iou - 0.5)))
    t75 = int(np.argmin(np.abs(iou - 0.75)))
    out = {
        "ap": _mean_valid(p[:, :, :, a["all"], m_all]),
        "ap50": _mean_valid(p[t50, :, :, a["all"], m_all]),
        "ap75": _mean_valid(p[t75, :, :, a["all"], m_all]),
        "ap_small": _mean_valid(p[:, :, :, a["small"], m_all]),
        "ap_tiny": _mean_valid(p[:, :, :, a["tiny"], m_all]),
        "ap_medium": _mean_valid(p[:, :, :, a["medium"], m_all]),
        "ap_large": _mean_valid(p[:, :, :, a["large"], m_all]),
        "ap50_small": _mean_valid(p[t50, :, :, a["small"], m_all]),
        "ap50_tiny": _mean_valid(p[t50, :, :, a["tiny"], m_all]),
        "ar100": _mean_valid(r[:, :, a["all"], m100]),
        "ar100_small": _mean_valid(r[:, :, a["small"], m100]),
        "ar100_tiny": _mean_valid(r[:, :, a["tiny"], m100]),
    }
    if per_class:
        names = {c["id"]: c["name"] for c in coco_gt.loadCats(ev.params.catIds)}
        out["per_class"] = {names[cid]: _mean_valid(p[:, :, k, a["all"], m_all]) for k, cid in enumerate(ev.params.catIds)}
    return out


class ImageAP:
    """COCOeval's AP@[.5:.95] of one image's detections, for an oracle that maximises the metric itself.

    The ground truth is indexed once; each call runs :class:`COCOeval` on that image alone (area range
    ``all``, up to 1000 detections, as :func:`coco_metrics` reads ``ap``). AP is averaged over the
    categories present in the image's ground truth, as COCOeval does: a detection of another class
    costs nothing here although it is a false positive in the dataset's AP.

    Args:
        boxes: ``Tensor[G, 4]`` (or array) ground-truth boxes, xyxy image pixels.
        labels: ``[G]`` category ids.
        crowd: ``[G]`` crowd flags (crowd regions are ignored, as in COCOeval).
        width, height: image size, pixels.
    """

    def __init__(self, boxes, labels, crowd, width: int, height: int) -> None:
        self.gt = ground_truth_coco([(1, width, height, boxes, labels, crowd)])
        self.has_objects = any(not a["iscrowd"] for a in self.gt.dataset["annotations"])

    def __call__(self, detections) -> float:
        """AP in [0, 1] of :class:`~zoomdet.types.Detections` (xyxy image pixels, category ids);
        NaN when the image has no (non-crowd) object, 0 without detections."""
        if not self.has_objects:
            return float("nan")
        if not len(detections):
            return 0.0
        results = [{"image_id": 1, "category_id": int(c), "score": float(sc), "bbox": [x0, y0, x1 - x0, y1 - y0]}
                   for (x0, y0, x1, y1), sc, c in zip(detections.boxes.tolist(), detections.scores.tolist(),
                                                      detections.labels.tolist())]
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(self.gt, self.gt.loadRes(results), "bbox")
            ev.params.imgIds, ev.params.maxDets = [1], [1000]
            ev.params.areaRng, ev.params.areaRngLbl = [AREA_RANGES["all"]], ["all"]
            ev.evaluate()
            ev.accumulate()
        return _mean_valid(ev.eval["precision"][:, :, :, 0, 0])


class PoolAP:
    """COCOeval's AP@[.5:.95] of a pool of images when one image's detections change: the dataset AP as a
    function of that image alone, with every other image held at its reference detections.

    Per-image AP (:class:`ImageAP`) is blind to what makes dataset AP: detections of all images are ranked
    together, so a false positive ranked below every true positive of its own image costs nothing there but
    costs the dataset whenever it outranks other images' true positives, and a detection of a class the image
    does not hold is a false positive only in the dataset. This scorer keeps that context.

    The pool is evaluated once by :class:`COCOeval` (area ``all``, up to 1000 detections, as :func:`coco_metrics`
    reads ``ap``). A call swaps one image's detections in: COCOeval's own per-image evaluation
    (``computeIoU`` and ``evaluateImg``) reruns for that image only, then ``accumulate`` runs over the pool,
    and the image's reference evaluation is put back. Its cost is that of one image plus one accumulation
    (4 ms over 60 HIT-UAV images, growing with the pool).

    Args:
        images: per image ``(image_id, width, height, boxes, labels, crowd)`` as :func:`ground_truth_coco`.
        reference: ``{image_id: Detections}`` the pool's detections (e.g. each image's coarse pass; xyxy
            image pixels, category ids); an image without an entry has none.
    """

    def __init__(self, images, reference: dict) -> None:
        images = list(images)
        self.gt = ground_truth_coco(images)
        self.image_ids = [int(i[0]) for i in images]
        self.size = len(self.image_ids)
        results = [d for i in self.image_ids if i in reference for d in reference[i].to_coco(i)]
        ev = _evaluate_images(self.gt, results, self.image_ids)
        with contextlib.redirect_stdout(io.StringIO()):
            ev.accumulate()
        dt = ev.cocoDt
        self._ev = ev
        self._slot = {img: k for k, img in enumerate(ev.params.imgIds)}  # evaluate() sorts the ids
        self.reference_ap = _mean_valid(ev.eval["precision"][:, :, :, 0, 0])
        self._next_id = 1 + max((d["id"] for d in dt.dataset["annotations"]), default=0)

    def __call__(self, image_id: int, detections) -> float:
        """The pool's AP in [0, 1] with ``detections`` (:class:`~zoomdet.types.Detections`) as image
        ``image_id``'s, every other image at its reference; NaN when the pool has no (non-crowd) object."""
        ev, p = self._ev, self._ev.params
        if image_id not in self._slot:
            raise KeyError(f"image {image_id} is not in the pool")
        slot, n = self._slot[image_id], len(p.imgIds)
        dts = detections.to_coco(image_id)  # rounded as the evaluator writes them
        for d in dts:
            x, y, w, h = d["bbox"]
            d.update(area=w * h, id=self._next_id, iscrowd=0)
            self._next_id += 1
        saved = {c: (ev._dts[image_id, c], ev.ious[image_id, c], ev.evalImgs[k * n + slot])
                 for k, c in enumerate(p.catIds)}
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                for k, c in enumerate(p.catIds):
                    ev._dts[image_id, c] = [d for d in dts if d["category_id"] == c]
                    ev.ious[image_id, c] = ev.computeIoU(image_id, c)
                    ev.evalImgs[k * n + slot] = ev.evaluateImg(image_id, c, p.areaRng[0], p.maxDets[-1])
                ev.accumulate()
            return _mean_valid(ev.eval["precision"][:, :, :, 0, 0])
        finally:
            for k, c in enumerate(p.catIds):
                ev._dts[image_id, c], ev.ious[image_id, c], ev.evalImgs[k * n + slot] = saved[c]


def _evaluate_images(gt: COCO, results: list[dict], image_ids: Sequence[int], area: str = "all") -> COCOeval:
    """COCOeval's per-image evaluation (``evaluate``, not yet ``accumulate``) of ``results`` on ``image_ids``: one
    area range (:data:`AREA_RANGES`; ``all`` by default), up to 1000 detections per image, as :func:`coco_metrics`
    reads ``ap`` (``small``: ``ap_small``)."""
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(copy.deepcopy(results)) if results else COCO()
        if not results:  # COCOeval needs a detection index even when empty
            dt.dataset = {"images": gt.dataset["images"], "annotations": [], "categories": gt.dataset["categories"]}
            dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds, ev.params.maxDets = list(image_ids), [1000]
        ev.params.areaRng, ev.params.areaRngLbl = [AREA_RANGES[area]], [area]
        ev.evaluate()
    return ev


class BootstrapAP:
    """AP@[.5:.95] of one set of detections on resamples of its images (drawn with repeats).

    A difference of a point of AP between two policies on 100 images can be one rare object; the bootstrap
    says how much of a difference the choice of images alone makes. COCOeval's per-image evaluation runs once;
    a resample reruns only ``accumulate`` over the drawn images, each repeat counted as an image of its own
    (about 10 ms for 100 HIT-UAV images).

    Args:
        coco_gt: ground truth.
        results: COCO result dicts (xywh pixels) of the images.
        image_ids: the images; resamples index them in sorted order (:attr:`image_ids`), so two instances on
            the same images draw the same images for the same indices.
        area: the objects scored, a key of :data:`AREA_RANGES` (``small``: AP_small, objects under 32² px; the
            detections outside the range are ignored as COCOeval ignores them).
    """

    def __init__(self, coco_gt: COCO, results: list[dict], image_ids: Sequence[int], area: str = "all") -> None:
        if area not in AREA_RANGES:
            raise ValueError(f"area {area!r} is not one of {', '.join(AREA_RANGES)}")
        self.area = area
        self._ev = _evaluate_images(coco_gt, results, image_ids, area)
        self.image_ids = list(self._ev.params.imgIds)  # sorted and unique, as evaluate() left them
        self._per_image = list(self._ev.evalImgs)
        self.categories = [c["name"] for c in coco_gt.loadCats(self._ev.params.catIds)]
        self._memo: dict = {}
        self.ap, self.per_class = self(np.arange(len(self.image_ids)))

    def __call__(self, draw: np.ndarray) -> tuple[float, np.ndarray]:
        """AP (0..1; NaN without objects) and ``float64[C]`` per-category AP of the images at sorted positions
        ``draw`` (``int[M]``, repeats allowed)."""
        ev, n = self._ev, len(self.image_ids)
        ids = list(range(len(draw)))  # each drawn image, repeats included, is an image of its own
        ev.evalImgs = [self._per_image[k * n + int(i)] for k in range(len(self.categories)) for i in draw]
        ev.params.imgIds = ev._paramsEval.imgIds = ids
        with contextlib.redirect_stdout(io.StringIO()):
            ev.accumulate()
        p = ev.eval["precision"][:, :, :, 0, 0]
        return _mean_valid(p), np.array([_mean_valid(p[:, :, k]) for k in range(p.shape[2])])

    def resampled(self, draws: np.ndarray) -> np.ndarray:
        """``float64[R]``: the AP of each row of ``draws`` (``int[R, M]``), kept for the next call with the same draws."""
        key = (draws.shape, hash(draws.tobytes()))
        if self._memo.get("key") != key:
            self._memo.update(key=key, ap=np.array([self(d)[0] for d in draws]))
        return self._memo["ap"]


def bootstrap_draws(images: int, resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """``int64[resamples, images]``: resamples of ``images`` sorted positions, drawn with repeats."""
    return np.random.default_rng(seed).integers(0, images, (resamples, images))


def paired_bootstrap(a: Sequence[BootstrapAP], b: BootstrapAP, resamples: int = 1000, seed: int = 0) -> dict:
    """The AP difference (x 100) of ``a`` (the mean AP of one or more detection sets, e.g. an agent's seeds) minus
    ``b``, on the same resamples of their images (:func:`bootstrap_draws` of ``seed``).

    Returns ``diff`` (on all the images), ``ci_low`` / ``ci_high`` (the 2.5 / 97.5 percentiles over resamples),
    ``p_better`` (share of resamples where ``a`` is above ``b``), and ``per_class``: ``{category: diff}`` on
    all the images (x 100; ``None`` where a category has no ground truth). Each set's AP on the draws is computed
    once and kept (:meth:`BootstrapAP.resampled`), so comparing many policies with one baseline costs one
    pass per policy."""
    if not a or any(x.image_ids != b.image_ids for x in a):
        raise ValueError("paired_bootstrap needs detection sets on the same images")
    if any(x.area != b.area for x in a):
        raise ValueError("paired_bootstrap needs detection sets scored on the same area range")
    draws = bootstrap_draws(len(b.image_ids), resamples, seed)
    diffs = 100 * (np.mean([x.resampled(draws) for x in a], axis=0) - b.resampled(draws))
    diffs = diffs[~np.isnan(diffs)]
    per_class = 100 * (np.mean([x.per_class for x in a], axis=0) - b.per_class)
    return {"diff": float(100 * (np.mean([x.ap for x in a]) - b.ap)),
            "ci_low": float(np.percentile(diffs, 2.5)), "ci_high": float(np.percentile(diffs, 97.5)),
            "p_better": float((diffs > 0).mean()), "resamples": int(len(diffs)),
            "per_class": {c: float(v) if v == v else None for c, v in zip(b.categories, per_class)}}


def episode_metrics(doc: dict) -> list[dict]:
    """COCO metrics of an episode (``zoomdet.episode/1`` with ``ground_truth``) after each step.

    Returns ``len(steps) + 1`` dicts: entry 0 is the coarse pass alone, entry
    ``k + 1`` the merged result after step ``k``; each holds ``step``,
    ``pixels_ratio`` (cumulative) and the keys of :func:`coco_metrics`.
    """
    from zoomdet.zoom.episode import merged_after

    if "ground_truth" not in doc:
        raise ValueError("the episode has no ground_truth (record it with zoomdet replay on an annotated dataset)")
    w, h = doc["image"]["width"], doc["image"]["height"]
    truth, names = doc["ground_truth"], doc.get("categories", {})
    cats = {g["class_id"] for g in truth} | {d["class_id"] for d in doc["coarse"]}
    gt = ground_truth_coco([(1, w, h, [g["box_xyxy"] for g in truth], [g["class_id"] for g in truth],
                             [int(g["iscrowd"]) for g in truth])], {c: names.get(str(c), str(c)) for c in cats})
    from zoomdet.types import Window

    coarse_ratio = Window.full(w, h, doc["config"]["coarse_scale"]).input_pixels / (w * h)
    out = []
    for k in range(-1, len(doc["steps"])):
        dets = merged_after(doc, k)
        res = [{"image_id": 1, "category_id": d["class_id"], "score": d["score"],
                "bbox": [d["box_xyxy"][0], d["box_xyxy"][1], d["box_xyxy"][2] - d["box_xyxy"][0],
                         d["box_xyxy"][3] - d["box_xyxy"][1]]} for d in dets]
        ratio = coarse_ratio if k < 0 else doc["steps"][k]["pixels_ratio"]
        out.append({"step": k + 1, "pixels_ratio": ratio, **coco_metrics(gt, res, [1])})
    return out

