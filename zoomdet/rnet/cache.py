"""The rollout cache: every detector output training will ever need, computed once.

``zoomdet cache build`` runs, for every image, the coarse pass once and the
fine pass on every window the environment can reach: each candidate window
and each position refinement can shift it to
(:func:`~zoomdet.zoom.windows.refinement_windows`). It stores the coarse
detections with their RoI features, the fine detections per window and the
ground truth. Training the R-net and the agent then reads shards and never
calls the detector.

Layout of a cache folder::

    manifest.json        what it was built from (detector, zoom config, data) and the shard plan
    shard_00000.pt ...   list of per-image records, torch.save, loads with weights_only=True

``fine="composed"`` builds a cheaper, approximate cache: one full-resolution
pass per image over tiles the size of the smallest candidate window
(overlapping by a quarter, merged by IoS-NMS, :func:`tiled_fine_pass`), and
each window's fine detections composed from it (:func:`compose_window`: the
boxes whose centre lies in the window, clipped to it). Tiles of window size
keep what the detector sees per call (context, proposals per pixel) close to
a real zoom. It costs about 1.5 image-equivalents of detector input per image
instead of one per reachable window (about 10 for 13 candidates × 9
refinement positions on 2048×1536); it differs from the exact cache for
objects cut by a window edge and where tiles and windows see different
context. ``benchmarks/cache_speed.py`` measures how far. The manifest
records the mode; the kinds never mix.

``fine="composed-full"`` composes every window from one pass of the whole
image at the windows' scale (the ``fine`` policy's own call): one image of
detector input per image. The detector then sees each window with all its
context, where a live window sees a crop. On HIT-UAV (640x512) the tiles of
the smallest window made a fine pass that scored worse than the live windows,
and the composed cache said that zooming lowers the dataset's AP where it
raises it live; the whole-frame pass gets the sign and the rules' ranking
right there (``benchmarks/cache_policies.py``, README).

``augment`` caches several views of each image (its flips and rotations, :mod:`zoomdet.data.augment`),
each a record of its own with its own id; an agent then trains on more episodes than there are images.

Shards are written to a temporary name and renamed, so a killed build leaves
no corrupt shard; rerunning the same command builds only the missing shards.
A cache is refused (:class:`CacheMismatch`) when opened for another detector
checkpoint or zoom configuration.

Work is parallel through Ray: one task per shard, on a local Ray instance
sized to this machine by default, or on an existing cluster with
``ray_address``; ``workers=0`` builds in-process.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor

from zoomdet.config import to_dict
from zoomdet.types import Detections, Window
from zoomdet.zoom.engine import ZoomConfig
from zoomdet.zoom.windows import candidate_windows, refinement_windows

__all__ = ["CacheMismatch", "CacheRecord", "RolloutCache", "build_cache", "merge_caches", "zoom_digest", "cached_windows", "compose_window", "tiled_fine_pass",
           "FINE_MODES"]

FINE_MODES = ("exact", "composed", "composed-full")

CACHE_VERSION = 2
"""2: the manifest records ``detector_id`` (weights and model settings), not the weights' digest alone."""


class CacheMismatch(ValueError):
    """The cache was built from another detector, zoom config or dataset."""


def zoom_digest(zoom: ZoomConfig) -> str:
    """Digest of the parts of the zoom config that change cached detections."""
    keys = {"coarse_scale": zoom.coarse_scale, "fine_scale": zoom.fine_scale, "windows": to_dict(zoom.windows)}
    if zoom.window_scale is not None:  # only when set, so caches built before it existed keep their digest
        keys["window_scale"] = zoom.window_scale
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:12]


def cached_windows(width: int, height: int, zoom: ZoomConfig) -> tuple[list[Window], list[list[int]]]:
    """All windows the cache holds for an image, and for each candidate the indices of its reachable windows.

    The first ``len(candidates)`` windows are the candidates themselves, in
    :func:`candidate_windows` order; refined positions follow, deduplicated.
    """
    cands = [w.with_scale(zoom.zoom_scale) for w in candidate_windows(width, height, zoom.windows)]
    windows: list[Window] = list(cands)
    index = {w: i for i, w in enumerate(windows)}
    reach = []
    for c in cands:
        ids = []
        for r in refinement_windows(c, width, height, zoom.windows):
            if r not in index:
                index[r] = len(windows)
                windows.append(r)
            ids.append(index[r])
        reach.append(ids)
    return windows, reach


def _det_to_dict(d: Detections, with_features: bool) -> dict:
    out = {"boxes": d.boxes.float(), "scores": d.scores.float(), "labels": d.labels.long()}
    if with_features and d.features is not None:
        out["features"] = d.features.half()  # halves the cache size; R-net inputs tolerate it
    return out


def _det_from_dict(d: dict) -> Detections:
    f = d.get("features")
    return Detections(d["boxes"], d["scores"], d["labels"], None if f is None else f.float())


@dataclass(frozen=True)
class CacheRecord:
    """One image of the cache.

    Attributes:
        image_id, width, height: the COCO image and its size in pixels.
        coarse: coarse detections with RoI features.
        windows: every cached window (candidates first), fine scale.
        reach: for each candidate, indices into ``windows`` of its reachable positions.
        fine: fine detections of each window in ``windows``.
        gt_boxes, gt_labels, gt_crowd: ground truth (xyxy pixels).
    """

    image_id: int
    width: int
    height: int
    coarse: Detections
    windows: list[Window]
    reach: list[list[int]]
    fine: list[Detections]
    gt_boxes: Tensor
    gt_labels: Tensor
    gt_crowd: Tensor

    @property
    def num_candidates(self) -> int:
        return len(self.reach)

    @property
    def coco_image(self) -> tuple:
        """``(image_id, width, height, gt_boxes, gt_labels, gt_crowd)``: one image as
        :func:`~zoomdet.eval.coco_eval.ground_truth_coco` and :class:`~zoomdet.eval.coco_eval.PoolAP` take it."""
        return self.image_id, self.width, self.height, self.gt_boxes, self.gt_labels, self.gt_crowd

    def fine_for(self, window: Window) -> Detections:
        """Fine detections of a cached window (raises ``KeyError`` for a window the cache lacks)."""
        for w, d in zip(self.windows, self.fine):
            if w == window:
                return d
        raise KeyError(f"window {window.as_tuple()} is not in the cache of image {self.image_id}")

    def to_payload(self) -> dict:
        fine_boxes = [d.boxes for d in self.fine]
        return {
            "image_id": self.image_id, "width": self.width, "height": self.height,
            "coarse": _det_to_dict(self.coarse, True),
            "windows": torch.tensor([[*w.as_tuple()] for w in self.windows], dtype=torch.int64),
            "scale": float(self.windows[0].scale),
            "reach": [list(r) for r in self.reach],
            "fine": {"boxes": torch.cat(fine_boxes) if fine_boxes else torch.zeros(0, 4),
                     "scores": torch.cat([d.scores for d in self.fine]) if self.fine else torch.zeros(0),
                     "labels": torch.cat([d.labels for d in self.fine]) if self.fine else torch.zeros(0, dtype=torch.int64),
                     "counts": torch.tensor([len(d) for d in self.fine], dtype=torch.int64)},
            "gt": {"boxes": self.gt_boxes, "labels": self.gt_labels, "crowd": self.gt_crowd},
        }

    @classmethod
    def from_payload(cls, p: dict) -> "CacheRecord":
        scale = p["scale"]
        windows = [Window(*map(int, row), scale) for row in p["windows"].tolist()]
        f = p["fine"]
        fine, start = [], 0
        for n in f["counts"].tolist():
            fine.append(Detections(f["boxes"][start:start + n], f["scores"][start:start + n], f["labels"][start:start + n]))
            start += n
        g = p["gt"]
        return cls(int(p["image_id"]), int(p["width"]), int(p["height"]), _det_from_dict(p["coarse"]), windows,
                   [list(r) for r in p["reach"]], fine, g["boxes"], g["labels"], g["crowd"])


def tiled_fine_pass(detector, image: Tensor, zoom: ZoomConfig) -> Detections:
    """Fine detections of the whole image from tiles of the smallest candidate window's size.

    Tiles overlap by a quarter of their side (SAHI's slicing); duplicates across tiles are merged by
    :func:`~zoomdet.zoom.merge.merge_tiles`, so a box cut by a tile edge yields to the whole box from
    the neighbouring tile.
    """
    from zoomdet.zoom.merge import merge_tiles
    from zoomdet.zoom.policies import SahiConfig, get_slice_windows

    _, H, W = image.shape
    cands = candidate_windows(W, H, zoom.windows)
    side = min(min(c.width for c in cands), min(c.height for c in cands))
    tiles = get_slice_windows(W, H, SahiConfig(slice_width=side, slice_height=side, overlap_width_ratio=0.25,
                                               overlap_height_ratio=0.25), zoom.zoom_scale)
    return merge_tiles([d.without_features() for d in detector.detect(image, tiles)])


def compose_window(full: Detections, window: Window) -> Detections:
    """A window's fine detections composed from a whole-image fine pass: the boxes whose centre lies
    inside ``window``, clipped to it (image pixels). Exact for objects wholly inside the window."""
    b = full.boxes
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    inside = (cx >= window.x0) & (cx < window.x1) & (cy >= window.y0) & (cy < window.y1)
    d = full.select(inside).without_features()
    clipped = d.boxes.clone()
    clipped[:, 0::2] = clipped[:, 0::2].clamp(window.x0, window.x1)
    clipped[:, 1::2] = clipped[:, 1::2].clamp(window.y0, window.y1)
    return d.with_boxes(clipped)


def _check_fine(fine: str) -> None:
    if fine not in FINE_MODES:
        raise ValueError(f"fine must be one of {', '.join(FINE_MODES)}, got {fine!r}")


def build_record(detector, zoom: ZoomConfig, image: Tensor, image_id: int, gt: tuple[Tensor, Tensor, Tensor],
                 fine: str = "exact") -> CacheRecord:
    """Run the coarse pass and the fine pass of every reachable window on one image.

    ``fine="exact"`` runs the detector on each window; ``"composed"`` runs one tiled pass over the whole
    image at the windows' scale (:func:`tiled_fine_pass`) and composes every window from it (:func:`compose_window`);
    ``"composed-full"`` composes them from one pass of the whole image at the windows' scale.
    """
    _check_fine(fine)
    _, H, W = image.shape
    (coarse,) = detector.detect(image, [Window.full(W, H, zoom.coarse_scale)])
    windows, reach = cached_windows(W, H, zoom)
    if fine == "exact":
        dets = [d.without_features() for d in detector.detect(image, windows)]
    else:
        if fine == "composed":
            full = tiled_fine_pass(detector, image, zoom)
        else:
            (full,) = detector.detect(image, [Window.full(W, H, zoom.zoom_scale)])
        dets = [compose_window(full, w) for w in windows]
    return CacheRecord(int(image_id), W, H, coarse, windows, reach, dets, *gt)


def _shard_path(root: Path, k: int) -> Path:
    return root / f"shard_{k:05d}.pt"


def _build_shard(root: str, k: int, image_ids: Sequence[int], data: str, checkpoint: str, zoom_dict: dict,
                 device: str, batch_size: int, threads: int, image_root: Optional[str] = None,
                 fine: str = "exact", settings: Optional[dict] = None) -> int:
    """Build and atomically write shard ``k`` (runs in-process or as a Ray task); ``image_ids`` are record ids,
    views of the COCO images (:func:`~zoomdet.data.augment.view_id`)."""
    from zoomdet.config import from_dict
    from zoomdet.data.augment import apply_view, source_view
    from zoomdet.data.coco import CocoDataset
    from zoomdet.detector.detector import Detector

    if threads:
        torch.set_num_threads(threads)
    zoom = from_dict(ZoomConfig, zoom_dict)
    ds = CocoDataset(data, image_root=image_root, check_files=False)
    det = Detector.from_checkpoint(checkpoint, device=device, batch_size=batch_size, settings=settings)
    records = []
    for record_id in image_ids:
        image_id, view = source_view(record_id, ds.coco.imgs)
        boxes, labels, crowd = ds.targets(image_id)
        image, boxes = apply_view(ds.load_image(image_id, keep_uint8=True), boxes, view)
        records.append(build_record(det, zoom, image, record_id, (boxes, labels, crowd), fine).to_payload())
    path = _shard_path(Path(root), k)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(records, tmp)
    os.replace(tmp, path)
    return len(records)


def build_cache(data: str, out: str | os.PathLike, checkpoint: str, zoom: ZoomConfig, *, images: int = 0,
                shard_size: int = 4, workers: Optional[int] = None, ray_address: Optional[str] = None,
                device: str = "cpu", batch_size: int = 4, progress: bool = True, seed: int = 0,
                image_root: Optional[str] = None, fine: str = "exact", settings: Optional[dict] = None,
                exclude: Sequence[str | os.PathLike] = (), exclude_ids: Sequence[int] = (),
                augment: Sequence[str] = ("identity",)) -> "RolloutCache":
    """Build (or finish building) a rollout cache; returns it opened.

    Args:
        data: COCO json of the images to cache.
        out: cache folder.
        checkpoint: detector checkpoint path.
        settings: inference settings of its model (``EvalConfig.detector_settings``); part of the detector id.
        zoom: zoom config (scales, candidate windows, refinement).
        images: N images sampled with ``seed`` (0 = all); see :meth:`CocoDataset.subset`.
        exclude: other cache folders whose images are left out (drawn from the rest), e.g. the evaluation
            cache of the same split when this one is to train on its other images.
        exclude_ids: image ids of ``data`` left out too (drawn from the rest), e.g. the detector's own
            training images (``zoomdet.detector.train.training_image_ids``).
        image_root: folder ``file_name`` is relative to (default: guessed beside ``data``).
        augment: the views of each sampled image to cache, among :data:`~zoomdet.data.augment.VIEWS`
            (``identity`` is the image as it is); each view is a record with its own id
            (:func:`~zoomdet.data.augment.view_id`). Without ``identity`` the cache holds only the other
            views, to be merged with a cache of the images themselves (:func:`merge_caches`).
        fine: ``exact`` (the detector on every reachable window) or ``composed`` (one full-resolution
            pass per image, windows composed from it; see the module docstring).
        shard_size: images per shard.
        workers: parallel Ray tasks on a local instance (default: CPU count);
            0 builds in-process without Ray.
        ray_address: address of an existing Ray cluster (``auto`` or
            ``ray://host:10001``); tasks then use its resources.
    """
    from tqdm import tqdm

    from zoomdet.data.augment import VIEW_ID_STRIDE, check_views, source_view, view_id
    from zoomdet.data.coco import CocoDataset
    from zoomdet.detector.detector import Detector, file_digest
    from zoomdet.eval.evaluator import write_atomic

    _check_fine(fine)  # before any Ray worker starts
    augment = check_views(augment)
    exclude_ids = sorted({int(i) for i in exclude_ids})
    left_out: set[int] = set(exclude_ids)
    other_ids: list[int] = []
    for other in exclude:
        other_manifest = Path(other) / "manifest.json"
        if not other_manifest.is_file():
            raise FileNotFoundError(f"no rollout cache at {other} (to exclude its images): missing {other_manifest}")
        other_ids += json.loads(other_manifest.read_text())["image_ids"]
    ds = CocoDataset(data, image_root=image_root)
    for i in other_ids:  # a view of an image leaves the image out; ids of no image of this file leave nothing out
        try:
            left_out.add(source_view(i, ds.coco.imgs)[0])
        except ValueError:
            pass
    drawn = ds.subset(images, seed, exclude=left_out)
    ids = [view_id(i, view) for view in augment for i in drawn]  # record ids: each view of each drawn image
    # the other views' ids are those beyond the drawn images' own (view_id refused every id that could be both)
    clash = sorted(set(ids).difference(drawn) & set(ds.image_ids))
    if clash:
        raise ValueError(f"{data}: its image ids reach {clash[0]}, the id of a view of another image; "
                         f"views other than identity need ids below {VIEW_ID_STRIDE}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    image_root = str(ds.image_root.resolve())
    shards = [ids[i:i + shard_size] for i in range(0, len(ids), shard_size)]
    manifest = {
        "version": CACHE_VERSION, "detector_id": Detector.from_checkpoint(checkpoint, settings=settings).detector_id,
        "checkpoint_id": file_digest(checkpoint), "checkpoint": str(checkpoint),
        "zoom_digest": zoom_digest(zoom), "zoom": to_dict(zoom), "data": str(Path(data).resolve()),
        "data_digest": file_digest(data),
        "image_ids": ids, "shards": shards, "fine": fine, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if exclude:
        manifest["excluded"] = [str(Path(e).resolve()) for e in exclude]
    if exclude_ids:
        manifest["excluded_ids"] = exclude_ids
    if augment != ("identity",):
        manifest["augment"] = list(augment)
    mpath = root / "manifest.json"
    if mpath.is_file():
        old = json.loads(mpath.read_text())
        old.setdefault("fine", "exact")  # caches from before the composed mode
        same = all(old.get(k) == manifest[k] for k in ("version", "detector_id", "zoom_digest", "data_digest", "shards", "fine"))
        if not same:
            raise CacheMismatch(f"{root} holds a cache built from another detector, zoom config, dataset, image "
                                f"selection or --fine mode; use a new --out folder or delete {root}")
        manifest["created"] = old["created"]
    write_atomic(mpath, json.dumps(manifest, indent=1))

    todo = [k for k in range(len(shards)) if not _shard_path(root, k).is_file()]
    if len(todo) < len(shards):
        print(f"resuming: {len(shards) - len(todo)}/{len(shards)} shards already built")
    zd = to_dict(zoom)
    bar = tqdm(total=len(shards), initial=len(shards) - len(todo), desc="cache build", unit="shard", disable=not progress)
    if workers == 0 and ray_address is None:
        for k in todo:
            _build_shard(str(root), k, shards[k], data, str(checkpoint), zd, device, batch_size, 0, image_root, fine,
                         settings)
            bar.update(1)
    elif todo:
        from zoomdet.parallel import ray_session, run_tasks

        with ray_session(workers, ray_address) as ray:
            calls = [(str(root), k, shards[k], str(Path(data).resolve()), str(Path(checkpoint).resolve()), zd, device,
                      batch_size, 1, image_root, fine, settings) for k in todo]
            for _ in run_tasks(ray, _build_shard, calls, num_gpus=1 if device == "cuda" else 0):
                bar.update(1)
    bar.close()
    return RolloutCache(root)


def merge_caches(sources: Sequence[str | os.PathLike], out: str | os.PathLike) -> "RolloutCache":
    """One cache holding the images of several finished caches, e.g. two splits' images a detector never saw
    (``zoomdet cache merge``); returns it opened.

    The sources must be complete caches of the same detector id, zoom config and ``--fine`` mode, and no image
    id may be in two of them (ids of different COCO files can collide, and rewards are keyed by image id).
    Their shards are copied under ``out``, which must not hold a cache yet; the manifest lists the sources
    (``merged_from``) and their datasets (``data``)."""
    import shutil

    from zoomdet.eval.evaluator import write_atomic

    if len(sources) < 2:
        raise ValueError(f"give at least two caches to merge, got {len(sources)}")
    root = Path(out)
    if (root / "manifest.json").exists():
        raise ValueError(f"{root} already holds a cache; merge into a new folder")
    caches = [RolloutCache(src) for src in sources]
    first = caches[0].manifest
    for c in caches[1:]:
        for key, mine, theirs in (("detector_id", c.detector_id, caches[0].detector_id),
                                  ("zoom_digest", c.manifest["zoom_digest"], first["zoom_digest"]),
                                  ("fine", c.fine, caches[0].fine)):
            if mine != theirs:
                raise CacheMismatch(f"{c.root} and {caches[0].root} differ in {key} ({mine} against {theirs}); "
                                    f"only caches of one detector, zoom config and mode merge")
    seen: dict[int, Path] = {}
    for c in caches:
        for i in c.image_ids:
            if i in seen:
                raise ValueError(f"image id {i} is in both {seen[i]} and {c.root}: their COCO files' ids collide, "
                                 f"so their records cannot share one cache")
            seen[i] = c.root
    root.mkdir(parents=True, exist_ok=True)
    shards: list[list[int]] = []
    for c in caches:
        for k, shard in enumerate(c.manifest["shards"]):
            shutil.copyfile(_shard_path(c.root, k), _shard_path(root, len(shards)))
            shards.append(shard)
    manifest = {key: first[key] for key in ("version", "detector_id", "checkpoint_id", "checkpoint", "zoom_digest",
                                            "zoom")}
    manifest.update({
        "data": [c.manifest["data"] for c in caches],
        "data_digest": hashlib.sha256("".join(c.manifest["data_digest"] for c in caches).encode()).hexdigest()[:12],
        "image_ids": [i for c in caches for i in c.image_ids], "shards": shards, "fine": caches[0].fine,
        "merged_from": [str(c.root.resolve()) for c in caches], "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    write_atomic(root / "manifest.json", json.dumps(manifest, indent=1))
    return RolloutCache(root)


class RolloutCache:
    """Read access to a built cache.

    Args:
        root: cache folder.
        expect_detector_id: refuse unless built by the detector of this
            :attr:`~zoomdet.detector.Detector.detector_id` (weights and model settings).
        expect_zoom: refuse unless built with an equivalent zoom config.
    """

    def __init__(self, root: str | os.PathLike, expect_detector_id: Optional[str] = None,
                 expect_zoom: Optional[ZoomConfig] = None) -> None:
        self.root = Path(root)
        mpath = self.root / "manifest.json"
        if not mpath.is_file():
            raise FileNotFoundError(f"no rollout cache at {self.root} (manifest.json missing); build one with zoomdet cache build")
        self.manifest = json.loads(mpath.read_text())
        if self.manifest.get("version") != CACHE_VERSION:
            raise CacheMismatch(f"{self.root}: cache version {self.manifest.get('version')}, this ZoomDet reads {CACHE_VERSION}; rebuild it")
        if expect_detector_id and self.manifest["detector_id"] != expect_detector_id:
            raise CacheMismatch(f"{self.root} was built with detector {self.manifest['detector_id']} "
                                f"({self.manifest['checkpoint']}), not {expect_detector_id} (other weights or model "
                                f"settings); rebuild the cache for this detector")
        if expect_zoom is not None and self.manifest["zoom_digest"] != zoom_digest(expect_zoom):
            raise CacheMismatch(f"{self.root} was built with another zoom config (scales or windows differ: "
                                f"{self.manifest['zoom']}); rebuild the cache for this config")
        missing = [k for k in range(len(self.manifest["shards"])) if not _shard_path(self.root, k).is_file()]
        if missing:
            raise CacheMismatch(f"{self.root} is incomplete ({len(missing)} shards missing); rerun zoomdet cache build to finish it")
        from zoomdet.config import from_dict

        self.zoom = from_dict(ZoomConfig, self.manifest["zoom"])

    @property
    def detector_id(self) -> str:
        """The :attr:`~zoomdet.detector.Detector.detector_id` of the detector that built the cache."""
        return self.manifest["detector_id"]

    @property
    def fine(self) -> str:
        """How the fine detections were made (:data:`FINE_MODES`); caches from before the composed mode are exact."""
        return self.manifest.get("fine", "exact")

    @property
    def image_ids(self) -> list[int]:
        return list(self.manifest["image_ids"])

    def __len__(self) -> int:
        return len(self.manifest["image_ids"])

    def __iter__(self) -> Iterator[CacheRecord]:
        for k in range(len(self.manifest["shards"])):
            for p in torch.load(_shard_path(self.root, k), weights_only=True):
                yield CacheRecord.from_payload(p)

    def records(self) -> list[CacheRecord]:
        return list(self)
