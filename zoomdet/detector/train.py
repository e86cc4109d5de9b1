"""``zoomdet detector train``: train a detector at the scales zooming uses.

One model serves both passes. Every training sample is a random square crop
read from the full-resolution image and resized by a scale drawn from
``scales`` (1.0 = the fine pass, 0.5 = the coarse pass), through the same
:func:`~zoomdet.detector.detector.crop_window` the detector uses at inference,
so training and inference see identically resized pixels.

Checkpoints (``last.pt``, then ``model.pt``) hold the state_dict and the
config and load with ``torch.load(weights_only=True)``; the optimiser state
sits beside them in ``train_state.pt`` so an interrupted run resumes.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm import tqdm

from zoomdet.config import save_config
from zoomdet.data.augment import apply_view
from zoomdet.data.coco import CocoDataset, DatasetError
from zoomdet.detector.detector import Detector, checked_device, crop_window, load_checkpoint, save_checkpoint
from zoomdet.detector.models import ModelConfig, build_model
from zoomdet.types import Window

__all__ = ["TrainConfig", "DetectorTrainConfig", "training_image_ids", "train_detector", "evaluate_scales", "learning_rate"]


@dataclass
class TrainConfig:
    """Optimisation options of ``zoomdet detector train``."""

    data: str = "data/synth-train/annotations.json"
    """Training COCO json (images relative to ``image_root``)."""
    image_root: Optional[str] = None
    """Folder the ``file_name`` entries of ``data`` are relative to (default: ``<json dir>/images`` or the
    json's dir, whichever holds the files)."""
    images: int = 0
    """Train on a seeded sample of this many images of ``data`` (``CocoDataset.subset(images, seed)``; 0 = all)."""
    val_data: Optional[str] = "data/synth-val/annotations.json"
    """Validation COCO json for the final evaluation (``null`` to skip)."""
    val_image_root: Optional[str] = None
    """Image folder of ``val_data`` (default: guessed the same way)."""
    out: str = "runs/detector/tiny_synth"
    """Output folder: ``last.pt``, ``model.pt``, ``train_state.pt``, ``config.yaml``, ``eval.json``."""
    crop_size: int = 512
    """Side of the square model input during training, pixels (when ``crop_sizes`` is empty)."""
    crop_sizes: list[int] = field(default_factory=list)
    """Sides drawn one per batch (every crop of a batch shares it), pixels; empty = ``crop_size`` only. Window-sized
    sides (e.g. ``[96, 128, 160, 384]``) teach the model the small inputs zoomed windows give it."""
    init: Optional[str] = None
    """Checkpoint whose weights training starts from (fine-tuning), e.g. ``zoomdet/assets/tiny_hituav_gpu.pt``; its
    model config and categories must be this run's. Ignored when an interrupted run resumes."""
    scales: list[float] = field(default_factory=lambda: [1.0, 0.5])
    """Resize factors sampled per crop; the zoom pipeline's fine and coarse scales."""
    object_centred: float = 0.7
    """Fraction of crops centred near a random object (the rest are uniform)."""
    batch_size: int = 4
    lr: float = 1e-3
    """AdamW peak learning rate (linear warm-up, cosine decay)."""
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    max_iters: int = 3000
    max_minutes: float = 0.0
    """Wall-time budget of the run (0 = none). The learning-rate schedule follows whichever of
    ``max_iters`` and ``max_minutes`` runs out first, so a time-limited run still decays fully."""
    cache_images: bool = True
    """Keep every decoded training image in memory as uint8 (3·W·H bytes each) instead of
    decoding a JPEG per batch; 71 images of 2560² take 1.4 GB."""
    checkpoint_every: int = 200
    seed: int = 0
    val_images: int = 20
    """Validation images evaluated at the end (0 = all)."""
    val_scales: list[float] = field(default_factory=lambda: [1.0, 0.5])
    """Whole-image scales evaluated at the end."""
    device: str = "cpu"

    def __post_init__(self) -> None:
        counts = {"images": self.images, "warmup_iters": self.warmup_iters, "val_images": self.val_images}
        positive = {"crop_size": self.crop_size, "batch_size": self.batch_size, "max_iters": self.max_iters,
                    "checkpoint_every": self.checkpoint_every}
        bad = ([f"{k} must be >= 0, got {v}" for k, v in counts.items() if v < 0]
               + [f"{k} must be >= 1, got {v}" for k, v in positive.items() if v < 1])
        if not all(isinstance(c, int) and c >= 32 for c in self.crop_sizes):
            bad.append(f"crop_sizes must be whole numbers of pixels >= 32, got {self.crop_sizes!r}")
        if bad:
            raise ValueError("; ".join(bad))
        for name in ("scales", "val_scales"):
            values = getattr(self, name)
            if not values or not all(isinstance(s, (int, float)) and 0 < s <= 4 for s in values):
                raise ValueError(f"{name} must be a non-empty list of scales in (0, 4], got {values!r}")
        if not 0 <= self.object_centred <= 1:
            raise ValueError(f"object_centred is a fraction of the crops, in [0, 1]; got {self.object_centred}")
        if not self.lr > 0 or self.weight_decay < 0 or self.max_minutes < 0:
            raise ValueError(f"lr must be > 0, weight_decay and max_minutes >= 0; got {self.lr}, {self.weight_decay} "
                             f"and {self.max_minutes}")


@dataclass
class DetectorTrainConfig:
    """``configs/detector/*.yaml``: the model and how to train it."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _sample_crop(rng: random.Random, image: torch.Tensor, boxes: torch.Tensor, cfg: TrainConfig, crop_size: int):
    """A training crop of model-input side ``crop_size`` and its targets (boxes in crop-input pixels)."""
    _, H, W = image.shape
    scale = rng.choice(cfg.scales)
    side = int(round(crop_size / scale))
    cw, ch = min(side, W), min(side, H)
    if len(boxes) and rng.random() < cfg.object_centred:
        b = boxes[rng.randrange(len(boxes))]
        cx = float(b[0] + b[2]) / 2 + rng.uniform(-0.4, 0.4) * cw
        cy = float(b[1] + b[3]) / 2 + rng.uniform(-0.4, 0.4) * ch
    else:
        cx, cy = rng.uniform(0, W), rng.uniform(0, H)
    x0 = int(min(max(cx - cw / 2, 0), W - cw))
    y0 = int(min(max(cy - ch / 2, 0), H - ch))
    win = Window(x0, y0, x0 + cw, y0 + ch, scale)
    crop = crop_window(image, win)
    in_h, in_w = win.input_size
    sx, sy = in_w / cw, in_h / ch
    shifted = boxes - torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
    clipped = shifted.clone()
    clipped[:, 0::2] = clipped[:, 0::2].clamp(0, cw)
    clipped[:, 1::2] = clipped[:, 1::2].clamp(0, ch)
    area = (shifted[:, 2] - shifted[:, 0]) * (shifted[:, 3] - shifted[:, 1])
    carea = (clipped[:, 2] - clipped[:, 0]).clamp(min=0) * (clipped[:, 3] - clipped[:, 1]).clamp(min=0)
    scaled = clipped * torch.tensor([sx, sy, sx, sy])
    keep = (carea >= 0.5 * area) & ((scaled[:, 2] - scaled[:, 0]) >= 2) & ((scaled[:, 3] - scaled[:, 1]) >= 2)
    if rng.random() < 0.5:  # horizontal flip
        crop, scaled = apply_view(crop, scaled, "hflip")
    return crop.contiguous(), scaled[keep], keep


def learning_rate(tc: TrainConfig, iteration: int, elapsed_s: float) -> float:
    """AdamW learning rate at ``iteration`` after ``elapsed_s`` seconds of training: linear warm-up over
    ``warmup_iters``, then a cosine from ``lr`` to 5% of it over the run, whose progress is the further
    along of ``iteration / max_iters`` and ``elapsed / max_minutes`` (when a time budget is set)."""
    if iteration < tc.warmup_iters:
        return tc.lr * (iteration + 1) / tc.warmup_iters
    t = (iteration - tc.warmup_iters) / max(1, tc.max_iters - tc.warmup_iters)
    if tc.max_minutes:
        t = max(t, elapsed_s / (60 * tc.max_minutes))
    return tc.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def training_image_ids(tc: TrainConfig, ds: Optional[CocoDataset] = None) -> list[int]:
    """Ids of the images of ``tc.data`` that training with ``tc`` sees: the seeded sample
    ``CocoDataset.subset(tc.images, tc.seed)`` (all of them when ``tc.images`` is 0). Sorted.

    The one place the sample is drawn: training uses it, and ``zoomdet cache build --exclude-trained-on``
    uses it to cache only the images a detector never saw."""
    if tc.images < 0:
        raise ValueError(f"train.images must be >= 0 (0 = all images of {tc.data}), got {tc.images}")
    ds = ds or CocoDataset(tc.data, image_root=tc.image_root)
    return ds.subset(tc.images, tc.seed)


def trained_on(detector_yaml: str | Path, candidates: Sequence[str | Path]) -> tuple[int, list[int]]:
    """Which of the COCO files ``candidates`` the detector config ``detector_yaml`` trains on, and what of it.

    Returns the index in ``candidates`` of the first file with the content of the config's ``train.data`` and the
    ids of that file's images training sees (:func:`training_image_ids`). Raises ``FileNotFoundError`` when
    ``train.data`` is missing and ``ValueError`` when no candidate is that file (``--exclude-trained-on`` would
    leave nothing out)."""
    from zoomdet.config import load_config
    from zoomdet.detector.detector import file_digest

    tc = load_config(DetectorTrainConfig, detector_yaml).train
    if not Path(tc.data).is_file():
        raise FileNotFoundError(f"--exclude-trained-on {detector_yaml}: its train.data {tc.data} not found")
    digest = file_digest(tc.data)
    for k, path in enumerate(candidates):
        if file_digest(path) == digest:
            return k, training_image_ids(tc)
    raise ValueError(f"--exclude-trained-on {detector_yaml} trains on {tc.data}, not on --data "
                     f"{', '.join(map(str, candidates))} (none of --data is that file): no image of --data would be "
                     f"left out")


def _load_init(model: torch.nn.Module, model_cfg: ModelConfig, categories: dict[int, str], path: str) -> None:
    """Copy the weights of checkpoint ``path`` into ``model`` (``train.init``), refusing one of another model or
    other categories."""
    loaded, init_cfg, init_cats, _ = load_checkpoint(path)
    here = asdict(model_cfg)
    differ = {k: (v, here.get(k)) for k, v in asdict(init_cfg).items() if here.get(k) != v}
    if differ:
        raise ValueError(f"train.init {path} is another model: " + ", ".join(
            f"{k} {a!r} there, {b!r} here" for k, (a, b) in sorted(differ.items())))
    if init_cats != categories:
        raise ValueError(f"train.init {path} was trained on the categories {init_cats}, "
                         f"this run's data has {categories}")
    model.load_state_dict(loaded.state_dict())
    print(f"starting from the weights of {path}")


def train_detector(cfg: DetectorTrainConfig, resume: bool = True, progress: bool = True) -> Path:
    """Train, checkpoint, evaluate; returns the path of ``model.pt``."""
    tc = cfg.train
    out = Path(tc.out)
    checked_device(tc.device)  # a GPU config on a machine without one fails here, before any data is read
    torch.manual_seed(tc.seed)
    ds = CocoDataset(tc.data, image_root=tc.image_root)
    train_ids = training_image_ids(tc, ds)
    if not any(not a.get("iscrowd", 0) for i in train_ids for a in ds.coco.imgToAnns.get(i, [])):
        raise DatasetError(f"{tc.data}: the {len(train_ids)} training images hold no object (no annotation that is "
                           f"not a crowd): a detector cannot learn from them")
    categories = {cid: name for cid, name in sorted(ds.categories.items())}
    if cfg.model.num_classes == 0:  # derived from the data
        cfg.model.num_classes = len(categories) + 1
        print(f"model.num_classes = {cfg.model.num_classes} ({len(categories)} categories of {tc.data} + background)")
    if len(categories) != cfg.model.num_classes - 1:
        raise ValueError(
            f"{tc.data} has {len(categories)} categories but model.num_classes={cfg.model.num_classes}; "
            f"set model.num_classes={len(categories) + 1}"
        )
    cat_to_index = {cid: i + 1 for i, cid in enumerate(categories)}
    model = build_model(cfg.model)
    if tc.init:
        _load_init(model, cfg.model, categories, tc.init)
    model = model.to(tc.device)
    out.mkdir(parents=True, exist_ok=True)  # once the data, the model's classes and its start are known to fit
    save_config(cfg, out / "config.yaml")

    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    start, elapsed_before = 0, 0.0
    if resume and (out / "last.pt").is_file() and (out / "train_state.pt").is_file():
        loaded, _, _, extra = load_checkpoint(out / "last.pt")
        model.load_state_dict(loaded.state_dict())
        state = torch.load(out / "train_state.pt", map_location="cpu", weights_only=True)
        opt.load_state_dict(state["optimizer"])
        start = int(state["iteration"])
        elapsed_before = float(state.get("elapsed_s", 0.0))
        print(f"resuming {out} from iteration {start} ({elapsed_before / 60:.1f} min trained)")

    t0 = time.time()

    def elapsed() -> float:
        return elapsed_before + time.time() - t0

    def lr_at(it: int) -> float:
        return learning_rate(tc, it, elapsed())

    def checkpoint(it: int, name: str) -> None:
        save_checkpoint(out / name, model, cfg.model, categories, extra={"iteration": it, "data": tc.data})
        tmp = out / "train_state.pt.tmp"
        torch.save({"optimizer": opt.state_dict(), "iteration": it, "elapsed_s": elapsed()}, tmp)
        os.replace(tmp, out / "train_state.pt")

    decoded: dict[int, torch.Tensor] = {}

    def load(iid: int) -> torch.Tensor:
        if not tc.cache_images:
            return ds.load_image(iid)
        if iid not in decoded:
            decoded[iid] = ds.load_image(iid).mul_(255).round_().to(torch.uint8)
        return decoded[iid].float().div_(255)

    model.train()
    it = start
    bar = tqdm(range(start, tc.max_iters), desc="detector train", disable=not progress, initial=start, total=tc.max_iters)
    for it in bar:
        rng = random.Random(tc.seed * 1_000_003 + it)  # resumable: the sample stream depends only on the iteration
        images, targets = [], []
        crop_size = rng.choice(tc.crop_sizes) if tc.crop_sizes else tc.crop_size
        while len(images) < tc.batch_size:
            iid = train_ids[rng.randrange(len(train_ids))]
            image = load(iid)
            boxes, labels, crowd = ds.targets(iid)
            boxes, labels = boxes[~crowd], labels[~crowd]
            for _ in range(2):  # two crops per decoded image
                crop, tboxes, keep = _sample_crop(rng, image, boxes, tc, crop_size)
                tl = torch.tensor([cat_to_index[int(c)] for c in labels[keep]], dtype=torch.int64)
                images.append(crop.to(tc.device))
                targets.append({"boxes": tboxes.to(tc.device), "labels": tl.to(tc.device)})
        images, targets = images[: tc.batch_size], targets[: tc.batch_size]
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr_at(it):.1e}")
        if (it + 1) % tc.checkpoint_every == 0:
            checkpoint(it + 1, "last.pt")
        if tc.max_minutes and elapsed() / 60 > tc.max_minutes:
            print(f"time limit of {tc.max_minutes} min reached at iteration {it + 1} (learning rate fully decayed)")
            break
    final_it = it + 1 if tc.max_iters > start else start
    checkpoint(final_it, "last.pt")
    model.eval()
    save_checkpoint(out / "model.pt", model, cfg.model, categories,
                    extra={"iteration": final_it, "data": tc.data, "train_minutes": round(elapsed() / 60, 2)})
    if tc.val_data:
        det = Detector.from_checkpoint(out / "model.pt", device=tc.device)
        report = evaluate_scales(det, CocoDataset(tc.val_data, image_root=tc.val_image_root), tc.val_scales, tc.val_images, progress)
        (out / "eval.json").write_text(json.dumps(report, indent=2))
        for s, m in report["scales"].items():
            print(f"scale {s}: AP {m['ap']:.3f}  AP50 {m['ap50']:.3f}  AP50<32px {m['ap50_small']:.3f}  "
                  f"AP50<16px {m['ap50_tiny']:.3f}  AR100 {m['ar100']:.3f}")
    return out / "model.pt"


def evaluate_scales(det: Detector, ds: CocoDataset, scales: list[float], n_images: int = 0,
                    progress: bool = True) -> dict:
    """COCO metrics of whole-image detection at each scale (the coarse-vs-fine check)."""
    from zoomdet.eval.coco_eval import coco_metrics

    ids = ds.subset(n_images)
    results: dict[float, list] = {s: [] for s in scales}
    seconds: dict[float, float] = {s: 0.0 for s in scales}
    for iid in tqdm(ids, desc="evaluate scales", disable=not progress):
        image = ds.load_image(iid)
        H, W = image.shape[1:]
        for s in scales:
            t = time.perf_counter()
            (d,) = det.detect(image, [Window.full(W, H, s)])
            seconds[s] += time.perf_counter() - t
            results[s] += d.to_coco(iid)
    return {"data": str(ds.ann_file), "images": len(ids), "checkpoint": det.checkpoint_id,
            "scales": {str(s): {**coco_metrics(ds.coco, results[s], ids),
                                "seconds_per_image": seconds[s] / max(1, len(ids))} for s in scales}}
