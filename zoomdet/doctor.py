"""``zoomdet doctor``: check that the installation can actually run.

The classic failure here is a torchvision whose compiled ops (``nms``,
``roi_align``) do not load against the installed torch, e.g. a CPU-only torch
wheel paired with a torchvision built for another torch. Detection then
fails deep inside a forward pass; ``doctor`` fails first, with the fix.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import re
import sys
from pathlib import Path
from typing import Optional

__all__ = ["run_doctor", "CONSTRAINTS", "pinned_versions", "version_mismatches"]

CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"
"""The pins ``make venv`` installs with (a source checkout's root; absent from a wheel install)."""

FIX = (
    "torch and torchvision must come from matching builds. In the project's virtual "
    "environment run:\n    .venv/bin/pip install --force-reinstall torch torchvision\n"
    "(installing both in one pip call from the same index), or recreate it with `make clean venv`."
)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_versions(path: Path) -> dict[str, str]:
    """``{canonical name: version}`` of each ``name==version`` line of a pip constraints file (comments,
    blank lines and ``-e`` lines skipped). Raises ``ValueError`` on a line that pins nothing."""
    pins: dict[str, str] = {}
    for n, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-e"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)", line)
        if m is None:
            raise ValueError(f"{path}:{n}: expected name==version, got {raw!r}")
        pins[_canonical(m.group(1))] = m.group(3)
    return pins


def version_mismatches(pins: dict[str, str]) -> list[tuple[str, str, Optional[str]]]:
    """``(name, pinned, installed)`` for each of ``pins`` (:func:`pinned_versions`) the environment does not match,
    ``installed`` None for a pinned package that is not installed."""
    out = []
    for name, pinned in pins.items():
        try:
            installed: Optional[str] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != pinned:
            out.append((name, pinned, installed))
    return out


def run_doctor(verbose: bool = True, constraints: Optional[Path] = None) -> int:
    """Print versions and check the compiled ops; returns a process exit code.

    Installed versions that differ from ``constraints`` (default :data:`CONSTRAINTS`, when it exists) are a
    warning, not an error: the install runs, but the README's numbers were measured with the pins."""
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
    out(f"device        {device} (cuda available: {cuda}, cpu threads: {torch.get_num_threads()}, "
        f"cpu kernels: {torch.backends.cpu.get_cpu_capability()})")
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
    pins = CONSTRAINTS if constraints is None else Path(constraints)
    if pins.is_file():
        pinned = pinned_versions(pins)
        mismatches = version_mismatches(pinned)
        if mismatches:
            shown = ", ".join(f"{n} {i or 'missing'} (pinned {p})" for n, p, i in mismatches[:8])
            more = f" and {len(mismatches) - 8} more" if len(mismatches) > 8 else ""
            print(f"WARNING: {len(mismatches)} installed versions differ from {pins}: {shown}{more}. "
                  "The README's numbers were measured with the pins; `make clean venv` installs them.", file=sys.stderr)
        else:
            out(f"versions      all {len(pinned)} pins of {pins.name} installed")
    if problems:
        for p in problems:
            print(f"ERROR: {p}", file=sys.stderr)
        if any("torch" in p for p in problems):
            print(FIX, file=sys.stderr)
        return 1
    out("doctor: all checks passed")
    return 0
