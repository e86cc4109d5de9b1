"""``zoomdet detect``: run a policy on image files, no annotations and no server needed.

Each image goes through the same zoom engine as ``zoomdet evaluate`` and the service, and its answer is the
service's (:func:`zoomdet.zoom.episode.answer_record`: detections as ``[x0, y0, x1, y1]`` full-resolution pixels,
the zoom regions, the cost in pixels and detector calls, the time per stage). Answers go to
``<out>/detections.jsonl`` as each image finishes, so an interrupted run loses nothing: a rerun with the same
settings keeps the answers already written and runs only the other images (and those that failed). Format::

    {"format": "zoomdet.detect/1", "settings": "<16 hex>", "policy": ..., "detector_id": ..., "config": {...}}
    {"file": "/abs/a.jpg", "image": {"width": 2560, "height": 2560}, "policy": ..., "detections": [...], ...}
    {"file": "/abs/b.png", "error": "cannot identify image file ..."}

The first line says what made the answers; then one line per image, an answer or the reason it has none.
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image
from tqdm import tqdm

from zoomdet.data.coco import read_image
from zoomdet.eval.evaluator import EvalConfig, load_detector, write_atomic
from zoomdet.zoom.engine import ZoomEngine
from zoomdet.zoom.episode import answer_record
from zoomdet.zoom.policies import make_policy

__all__ = ["DETECT_FORMAT", "IMAGE_SUFFIXES", "Answerer", "DetectSummary", "detect_files", "image_files", "read_answers"]

DETECT_FORMAT = "zoomdet.detect/1"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
"""File suffixes (any case) taken from a folder; a file named on its own is tried whatever its suffix."""


def image_files(paths: Sequence[str | Path], recursive: bool = False) -> list[Path]:
    """The image files ``paths`` name: files as given, folders as the files with an :data:`IMAGE_SUFFIXES` suffix
    inside them (their subfolders too with ``recursive``), sorted; each file once, in the order given.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: no path given, or a folder with no image file.
    """
    if not paths:
        raise ValueError("give at least one image file or folder")
    out: dict[Path, None] = {}
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in (p.rglob("*") if recursive else p.iterdir())
                           if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ValueError(f"folder {p} holds no image file ({', '.join(IMAGE_SUFFIXES)})"
                                 + ("" if recursive else "; --recursive also looks in its subfolders"))
            out.update(dict.fromkeys(f.resolve() for f in found))
        elif p.is_file():
            out[p.resolve()] = None
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return list(out)


@dataclass
class DetectSummary:
    """What a :func:`detect_files` run did (answers written before a resume included)."""

    out: Path
    images: int = 0
    """Images with an answer."""
    resumed: int = 0
    """Of those, answers kept from an earlier run with the same settings."""
    failed: dict[str, str] = field(default_factory=dict)
    """File -> why it has no answer (unreadable, not an image, too large)."""
    detections: int = 0
    pixels_ratio: float = 0.0
    """Mean over the answered images."""
    total_ms: float = 0.0
    """Mean time per answered image, decode to merge, ms."""
    regions_dropped: int = 0
    late: int = 0


def read_answers(path: str | Path) -> tuple[dict, list[dict]]:
    """``(header, lines)`` of a ``detections.jsonl`` written by :func:`detect_files`."""
    lines = [json.loads(s) for s in Path(path).read_text().splitlines() if s.strip()]
    if not lines or lines[0].get("format") != DETECT_FORMAT:
        raise ValueError(f"{path} is not a zoomdet detect file ({DETECT_FORMAT})")
    return lines[0], lines[1:]


class Answerer:
    """A detector, an engine and a policy, loaded once, that answer image files (one per process or Ray task).

    Args:
        cfg: the engine, detector and policy options.
        policy_name: see :func:`detect_files`.
        max_pixels_ratio, max_latency_ms, score_threshold: the per-image options (resolved: a number or ``None``).
        max_image_pixels: the largest image to decode (:func:`~zoomdet.data.coco.read_image`'s ``max_pixels``).
    """

    def __init__(self, cfg: EvalConfig, policy_name: str, max_pixels_ratio: float, max_latency_ms: Optional[float],
                 score_threshold: float, max_image_pixels: Optional[int] = None) -> None:
        self.cfg = cfg
        self.detector = load_detector(cfg)
        self.policy = make_policy(policy_name, cfg.policies, cfg.zoom, self.detector.detector_id)
        if getattr(self.policy, "needs_ground_truth", False):
            raise ValueError(f"policy {policy_name!r} reads the ground truth, which images alone do not have; score it "
                             "on an annotated set with zoomdet evaluate")
        self.engine = ZoomEngine(self.detector, cfg.zoom)
        self.budget, self.max_latency_ms, self.score_threshold = max_pixels_ratio, max_latency_ms, score_threshold
        self.max_image_pixels = max_image_pixels

    def __call__(self, f: Path) -> dict:
        """``{"file", **answer}`` for the image file ``f``, or ``{"file", "error"}`` when it cannot be read as one."""
        t0 = time.perf_counter()
        try:
            image = read_image(f, keep_uint8=self.cfg.keep_uint8, max_pixels=self.max_image_pixels)
        except Image.DecompressionBombError as e:  # over PIL's limit: a large scene the user may well mean
            return {"file": str(f), "error": f"{type(e).__name__}: {e} (for a larger image, raise the limit: "
                                             "--max-image-pixels N, 0 = none)"}
        except (OSError, ValueError) as e:  # unreadable, not an image, over --max-image-pixels
            return {"file": str(f), "error": f"{type(e).__name__}: {e}"}
        decode = time.perf_counter() - t0
        deadline = None if self.max_latency_ms is None else t0 + self.max_latency_ms / 1000
        seed = self.cfg.seed + zlib.crc32(f.name.encode())  # the random policy: per file, whatever the order
        result = self.engine.run(image, self.policy, seed=seed, max_pixels_ratio=self.budget,
                                 decode_seconds=decode, deadline=deadline)
        late = deadline is not None and time.perf_counter() > deadline
        return {"file": str(f), **answer_record(result, self.detector.categories, policy=self.policy.name,
                                                max_pixels_ratio=self.budget, score_threshold=self.score_threshold,
                                                max_latency_ms=self.max_latency_ms, late=late)}


def _answer_shard(cfg_dict: dict, policy_name: str, options: tuple, files: list[str]) -> list[dict]:
    """A Ray task: the answers for ``files``, one torch thread."""
    import torch

    from zoomdet.config import from_dict

    torch.set_num_threads(1)
    answer = Answerer(from_dict(EvalConfig, cfg_dict), policy_name, *options)
    return [answer(Path(f)) for f in files]


def detect_files(cfg: EvalConfig, files: Sequence[Path], policy_name: str, out: str | Path, *,
                 max_pixels_ratio: Optional[float] = None, max_latency_ms: Optional[float] = None,
                 score_threshold: float = 0.05, render: bool = False, progress: bool = True, workers: int = 0,
                 ray_address: Optional[str] = None, shard_size: int = 4,
                 max_image_pixels: Optional[int] = None) -> DetectSummary:
    """Run ``policy_name`` on each of ``files`` and write ``<out>/detections.jsonl`` (see the module docstring).

    Args:
        cfg: the engine, detector and policy options (``configs/eval/*.yaml``); ``cfg.images`` is not used.
        files: image files (:func:`image_files`).
        policy_name: a policy that needs no ground truth (``greedy-entropy``, ``greedy`` with ``cfg.policies.rnet``,
            ``coarse``, ``fine``, ``sahi``, ``random``) or a trained agent ``.zip``.
        max_pixels_ratio: pixel budget per image, coarse pass included (default ``cfg.zoom.max_pixels_ratio``).
        max_latency_ms: deadline per image from the start of its decode, as the service's (default
            ``cfg.max_latency_ms``, none unless set).
        score_threshold: detections below it are left out of the answers (not of the merge).
        render: also draw each answer to ``<out>/images/<file stem>.png``.
        workers: 0 runs in this process; N > 0 runs shards of ``shard_size`` files as tasks of a local Ray
            instance of N CPUs, one torch thread each (their ``timing_ms`` is then one thread's).
        ray_address: run the tasks on this Ray cluster instead (``auto``, ``ray://head:10001``); every node must
            see the files, the checkpoint and the models at the same paths.
        max_image_pixels: the largest image (width * height) to decode, in place of PIL's decompression-bomb
            limit (``None``; about 179M pixels); 0 = no limit.

    A file that cannot be read as an image gets an ``error`` line and the run goes on; the summary lists it.
    Answers are written as they arrive, in the order the files or shards finish.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    budget = cfg.zoom.max_pixels_ratio if max_pixels_ratio is None else float(max_pixels_ratio)
    if max_latency_ms is None:
        max_latency_ms = cfg.max_latency_ms
    options = (budget, max_latency_ms, score_threshold, max_image_pixels)
    answerer = Answerer(cfg, policy_name, *options)  # also checks the policy and the models before any work
    header = {"format": DETECT_FORMAT, "policy": answerer.policy.name, "detector_id": answerer.detector.detector_id,
              "max_pixels_ratio": budget, "max_latency_ms": max_latency_ms, "score_threshold": score_threshold,
              "config": json.loads(json.dumps(_config_dict(cfg), default=str))}
    header["settings"] = hashlib.sha256(json.dumps([header, _model_digests(policy_name, cfg)], sort_keys=True,
                                                   default=str).encode()).hexdigest()[:16]

    path = out / "detections.jsonl"
    wanted = {str(f) for f in files}
    kept: dict[str, dict] = {}
    if path.is_file():
        try:
            old_header, old = read_answers(path)
        except (ValueError, json.JSONDecodeError):  # not ours, or cut mid-line: start over rather than guess
            old_header, old = {}, []
        if old_header.get("settings") == header["settings"]:
            kept = {a["file"]: a for a in old if "error" not in a and a.get("file") in wanted}
    rendered: set[str] = set()
    for a in kept.values():
        if render and not (a.get("rendered") and (out / a["rendered"]).is_file()):  # kept from a run without --render
            a["rendered"] = _render(a, out, rendered, max_image_pixels)
        elif a.get("rendered"):
            rendered.add(Path(a["rendered"]).stem)
    write_atomic(path, "".join(json.dumps(x) + "\n" for x in [header, *kept.values()]))

    summary = DetectSummary(out=out, resumed=len(kept))
    answers = list(kept.values())
    if kept:
        print(f"resuming: {len(kept)}/{len(files)} images already answered in {path}")
    todo = [f for f in files if str(f) not in kept]
    with path.open("a") as log, tqdm(total=len(todo), desc="detect", unit="img", disable=not progress) as bar:
        def record(a: dict) -> None:
            if "error" in a:
                summary.failed[a["file"]] = a["error"]
            else:
                if render:
                    a["rendered"] = _render(a, out, rendered, max_image_pixels)
                answers.append(a)
            log.write(json.dumps(a) + "\n")
            log.flush()
            bar.update(1)

        if workers == 0 and ray_address is None:
            for f in todo:
                record(answerer(f))
        elif todo:
            from zoomdet.config import to_dict
            from zoomdet.parallel import ray_session, run_tasks

            remote_cfg = to_dict(_absolute_paths(cfg))
            agent = "+".join(str(Path(p).resolve()) for p in policy_name.split("+")) if policy_name.endswith(".zip") \
                else policy_name
            shards = [[str(f) for f in todo[i:i + shard_size]] for i in range(0, len(todo), shard_size)]
            with ray_session(workers, ray_address) as ray:
                calls = [(remote_cfg, agent, options, shard) for shard in shards]
                for _, shard_answers in run_tasks(ray, _answer_shard, calls, num_gpus=1 if cfg.device == "cuda" else 0):
                    for a in shard_answers:
                        record(a)

    summary.images = len(answers)
    if answers:
        summary.detections = sum(len(a["detections"]) for a in answers)
        summary.pixels_ratio = sum(a["cost"]["pixels_ratio"] for a in answers) / len(answers)
        summary.total_ms = sum(a["timing_ms"]["total"] for a in answers) / len(answers)
        summary.regions_dropped = sum(a["regions_dropped"] for a in answers)
        summary.late = sum(bool(a["deadline_exceeded"]) for a in answers)
    return summary


def _absolute_paths(cfg: EvalConfig) -> EvalConfig:
    """``cfg`` with its checkpoint and R-net as absolute paths, for tasks that may not run in this folder."""
    import copy

    cfg = copy.deepcopy(cfg)
    if cfg.checkpoint:
        cfg.checkpoint = str(Path(cfg.checkpoint).resolve())
    if cfg.policies.rnet:
        cfg.policies.rnet = str(Path(cfg.policies.rnet).resolve())
    return cfg


def _config_dict(cfg: EvalConfig) -> dict:
    from zoomdet.config import to_dict

    return {k: v for k, v in to_dict(cfg).items() if k not in ("images", "budgets")}


def _model_digests(policy_name: str, cfg: EvalConfig) -> list[str]:
    """A trained agent or R-net is its file: retrained in place, the answers made with it are not kept."""
    from zoomdet.detector.detector import file_digest

    paths = [Path(p) for p in policy_name.split("+")] if policy_name.endswith(".zip") else []
    paths += [Path(cfg.policies.rnet)] if cfg.policies.rnet else []
    return [file_digest(p) for p in paths if p.is_file()]


def _render(answer: dict, out: Path, taken: set[str], max_image_pixels: Optional[int] = None) -> str:
    """Draw ``answer`` on its image to ``out/images/<stem>.png`` (``<stem>-2`` ... when two folders hold files of
    one name), the image read under the run's ``max_image_pixels``; returns the path relative to ``out``."""
    from zoomdet.viz import save_result_image

    f = Path(answer["file"])
    name, k = f.stem, 1
    while name in taken:
        k += 1
        name = f"{f.stem}-{k}"
    taken.add(name)
    image = read_image(f, keep_uint8=True, max_pixels=max_image_pixels).permute(1, 2, 0).numpy()  # uint8 [H, W, 3]
    save_result_image(image, answer["detections"], answer["regions"], out / "images" / f"{name}.png",
                      frames=answer.get("frames", []))
    return f"images/{name}.png"
