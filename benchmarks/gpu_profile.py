"""Where the time goes on a GPU (diagnostic; its output is docs/gpu_profile_h200.txt, no results file).

    python benchmarks/gpu_profile.py [AIRBUS_TEST_JSON]   (default ../shared/data/airbus-aircraft/test.json)

On images 4-6 of the Airbus test set: greedy-entropy@0.15 through the engine with batch_size 4 and 16; the
detector's time per call for random crops of four sizes in batches of 1, 4 and 16; then torch.profiler's
tables (CPU and CUDA time per op) over the three engine runs.
"""
import sys, time, torch
sys.path.insert(0, '.')
from zoomdet.config import load_config
from zoomdet.eval.evaluator import EvalConfig
from zoomdet.detector.detector import Detector
from zoomdet.data.coco import CocoDataset
from zoomdet.zoom.engine import ZoomEngine
from zoomdet.zoom.policies import make_policy
cfg = load_config(EvalConfig, 'configs/eval/airbus.yaml', ['device=cuda'])
det = Detector.from_checkpoint(cfg.checkpoint, device='cuda', batch_size=cfg.batch_size)
ds = CocoDataset(sys.argv[1] if len(sys.argv) > 1 else '../shared/data/airbus-aircraft/test.json')
eng = ZoomEngine(det, cfg.zoom)
pol = make_policy('greedy-entropy', cfg.policies, cfg.zoom, det.detector_id)
imgs = [ds.load_image(i, keep_uint8=True) for i in ds.image_ids[:6]]
for im in imgs[:3]:
    eng.run(im, pol, max_pixels_ratio=0.15)
for bs in (4, 16):
    det.batch_size = bs
    for im in imgs[3:]:
        r = eng.run(im, pol, max_pixels_ratio=0.15)
        print('bs', bs, 'windows', len(r.regions), 'calls', r.cost.detector_calls, 'sizes', sorted({(x.window.input_size) for x in r.regions}), {k: round(1000 * v, 1) for k, v in r.timing.items()})
det.batch_size = cfg.batch_size
# model time per crop against crop size and batch: is there a per-call floor?
for h, w in ((256, 320), (512, 640), (768, 1024), (1536, 2048)):
    for n in (1, 4, 16):
        crops = [torch.rand(3, h, w, device='cuda') for _ in range(n)]
        det.batch_size = n
        for _ in range(3):
            det.detect_crops(crops, features=False)
        torch.cuda.synchronize(); t = time.perf_counter()
        for _ in range(10):
            det.detect_crops(crops, features=False)
        torch.cuda.synchronize()
        ms = (time.perf_counter() - t) / 10 * 1000
        print(f'crop {w}x{h} batch {n}: {ms:.1f} ms per call, {ms / n:.2f} ms per crop')
det.batch_size = cfg.batch_size
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for im in imgs[3:]:
        eng.run(im, pol, max_pixels_ratio=0.15)
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))
