"""Synthetic generator throughput: images per second at a given size, one core.

    python benchmarks/synth_speed.py --images 20 --size 2048x1536 [--out results.json]

Draws and JPEG-encodes images in memory (as `zoomdet data synth` does, minus
the disk write) and prints images/s; pins numpy's BLAS to one thread.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from zoomdet.data.synth import SynthConfig, generate_image  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--size", default="2048x1536")
    p.add_argument("--out", help="write the figures as JSON here")
    a = p.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    cfg = SynthConfig(images=a.images, width=w, height=h, seed=0)
    objects = 0
    t = time.perf_counter()
    for i in range(a.images):
        img, anns = generate_image(cfg, i)
        img.save(io.BytesIO(), "JPEG", quality=cfg.jpeg_quality)
        objects += len(anns)
    dt = time.perf_counter() - t
    res = {"size": a.size, "images": a.images, "seconds": round(dt, 2), "images_per_s": round(a.images / dt, 2),
           "objects_per_image": round(objects / a.images, 1)}
    print(json.dumps(res))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
