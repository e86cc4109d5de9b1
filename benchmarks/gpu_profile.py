"""Where the time goes on a GPU (a diagnostic: its output is docs/gpu_profile_h200.txt; it writes no results file).

    python benchmarks/gpu_profile.py [AIRBUS_TEST_JSON]   (default ../shared/data/airbus-aircraft/test.json)

With ``configs/eval/airbus.yaml``'s detector on CUDA, after three untimed engine runs on the first three test
images (warm-up):

1. ``greedy-entropy@0.15`` through the engine on images 4-6, with ``batch_size`` 4 and 16: windows, detector
   calls, window input sizes and the stage times (ms);
2. the detector's time per call on random crops of four sizes (320x256 to 2048x1536) in batches of 1, 4 and 16:
   is there a per-call floor?
3. torch.profiler's tables (CPU and CUDA time per op) over the three engine runs of 1.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoomdet.config import load_config  # noqa: E402
from zoomdet.data.coco import CocoDataset  # noqa: E402
from zoomdet.detector.detector import Detector  # noqa: E402
from zoomdet.eval.evaluator import EvalConfig  # noqa: E402
from zoomdet.zoom.engine import ZoomEngine  # noqa: E402
from zoomdet.zoom.policies import make_policy  # noqa: E402

BUDGET = 0.15


def per_call_ms(det: Detector, height: int, width: int, n: int, repeats: int = 10) -> float:
    """Milliseconds per ``detect_crops`` call on ``n`` random ``height`` x ``width`` crops, after 3 untimed calls."""
    crops = [torch.rand(3, height, width, device=det.device) for _ in range(n)]
    det.batch_size = n
    for _ in range(3):
        det.detect_crops(crops, features=False)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        det.detect_crops(crops, features=False)
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeats * 1000


def main(data: str) -> None:
    cfg = load_config(EvalConfig, "configs/eval/airbus.yaml", ["device=cuda"])
    det = Detector.from_checkpoint(cfg.checkpoint, device="cuda", batch_size=cfg.batch_size)
    ds = CocoDataset(data)
    engine = ZoomEngine(det, cfg.zoom)
    policy = make_policy("greedy-entropy", cfg.policies, cfg.zoom, det.detector_id)
    images = [ds.load_image(i, keep_uint8=True) for i in ds.image_ids[:6]]
    warm, timed = images[:3], images[3:]
    for image in warm:
        engine.run(image, policy, max_pixels_ratio=BUDGET)

    for batch in (4, 16):
        det.batch_size = batch
        for image in timed:
            r = engine.run(image, policy, max_pixels_ratio=BUDGET)
            sizes = sorted({x.window.input_size for x in r.regions})
            print("bs", batch, "windows", len(r.regions), "calls", r.cost.detector_calls, "sizes", sizes,
                  {k: round(1000 * v, 1) for k, v in r.timing.items()})

    for h, w in ((256, 320), (512, 640), (768, 1024), (1536, 2048)):
        for n in (1, 4, 16):
            ms = per_call_ms(det, h, w, n)
            print(f"crop {w}x{h} batch {n}: {ms:.1f} ms per call, {ms / n:.2f} ms per crop")
    det.batch_size = cfg.batch_size

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for image in timed:
            engine.run(image, policy, max_pixels_ratio=BUDGET)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/airbus-aircraft/test.json")
