"""``zoomdet doctor``: check that the installation can actually run.

The classic failure here is a torchvision whose compiled ops (``nms``,
``roi_align``) do not load against the installed torch, e.g. a CPU-only torch
wheel paired with a torchvision built for another torch. Detection then
fails deep inside a forward pass; ``doctor`` fails first, with the fix.
"""

from __future__ import annotations

import importlib
import platform
import sys

__all__ = ["run_doctor"]

FIX = (
    "torch and torchvision must come from matching builds. In the project's virtual "
    "environment run:\n    .venv/bin/pip install --force-reinstall torch torchvision\n"
    "(installing both in one pip call from the same index), or recreate it with `make clean venv`."
)


def run_doctor(verbose: bool = True) -> int:
    """Print versions and check the compiled ops; returns a process exit code."""
    out = print if verbose else (lambda *a, **k: None)
    problems: list[str] = []
    out(f"python        {sys.version.split()[0]} ({platform.platform()})")
    try:
        import torch
        import torchvision
    except Exception as e:  # pragma: no cover - depends on the install
        print(f"ERROR: cannot import torch/torchvision: {e}\n{FIX}", file=sys.stderr)
        return 1
    out(f"torch         {torch.__version__}")
    out(f"torchvision   {torchvision.__version__}")
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    out(f"device        {device} (cuda available: {cuda}, cpu threads: {torch.get_num_threads()})")
    try:
        from torchvision.ops import nms, roi_align

        boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]])
        keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
        if keep.tolist() != [0, 2]:
            problems.append(f"torchvision.ops.nms returned {keep.tolist()}, expected [0, 2]")
        pooled = roi_align(torch.ones(1, 1, 8, 8), [boxes[:1]], output_size=2)
        if tuple(pooled.shape) != (1, 1, 2, 2):
            problems.append(f"torchvision.ops.roi_align returned shape {tuple(pooled.shape)}")
        out("ops           torchvision.ops.nms and roi_align load and run")
    except Exception as e:
        problems.append(f"torchvision's compiled ops do not load: {type(e).__name__}: {e}")
    for name in ("pycocotools", "gymnasium", "stable_baselines3", "sb3_contrib", "ray", "fastapi", "pydantic",
                 "matplotlib", "yaml", "tqdm"):
        try:
            mod = importlib.import_module(name)
            out(f"{name:<13} {getattr(mod, '__version__', 'ok')}")
        except Exception as e:
            problems.append(f"cannot import {name}: {e}")
    from zoomdet.detector.detector import default_checkpoint

    ckpt = default_checkpoint()
    out(f"checkpoint    {ckpt} ({'present' if ckpt.is_file() else 'MISSING'})")
    if not ckpt.is_file():
        problems.append(f"embedded detector checkpoint missing: {ckpt}")
    if problems:
        for p in problems:
            print(f"ERROR: {p}", file=sys.stderr)
        if any("torch" in p for p in problems):
            print(FIX, file=sys.stderr)
        return 1
    out("doctor: all checks passed")
    return 0
