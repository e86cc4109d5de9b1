"""Pictures of detections, zoom windows and episodes (matplotlib), over the episode format of
:mod:`zoomdet.zoom.episode` and the service's response.

All boxes are ``[x0, y0, x1, y1]`` in full-resolution image pixels and are
drawn on the full-resolution image as they are: the coarse pass's boxes were
already mapped back by the engine, so nothing here rescales them. Axes use
image pixels (``imshow`` extent ``[0, W] x [H, 0]``), so a box edge at ``x``
lies on pixel column boundary ``x``.

Colours: coarse-pass detections blue, fine (zoomed) detections orange, zoom
windows red (after refinement, solid, numbered by step) and grey (as
proposed, dashed); the AG map red where zooming is predicted to gain, blue
where it is predicted to lose.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from zoomdet.zoom.episode import merged_after

__all__ = ["load_image_array", "draw_boxes", "draw_windows", "draw_gain_map", "plot_result", "save_result_image", "render_episode",
           "plot_reports", "STAGE_COLORS"]

STAGE_COLORS = {"coarse": "tab:blue", "fine": "tab:orange"}


def _plt():
    """pyplot (matplotlib picks the headless Agg backend by itself where there is no display)."""
    import matplotlib.pyplot as plt

    return plt


def load_image_array(image) -> np.ndarray:
    """``uint8[H, W, 3]`` from a path, a PIL image, a ``Tensor[3, H, W]`` in [0, 1] or an array."""
    from PIL import Image

    from zoomdet.data.coco import image_to_tensor, read_image

    if isinstance(image, (str, Path)):
        image = read_image(image)  # as the dataset and the service read it (EXIF orientation applied)
    if isinstance(image, Image.Image):
        image = image_to_tensor(image)
    if hasattr(image, "detach"):
        return (image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    arr = np.asarray(image)
    return arr if arr.dtype == np.uint8 else (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)


def draw_boxes(ax, detections: Sequence[dict], color: Optional[str] = None, linewidth: float = 1.0,
               labels: bool = False) -> None:
    """Draw detections (dicts with ``box_xyxy`` and optionally ``stage``, ``label``, ``score``) on ``ax``."""
    from matplotlib.patches import Rectangle

    for d in detections:
        x0, y0, x1, y1 = d["box_xyxy"]
        c = color or STAGE_COLORS.get(d.get("stage", "coarse"), "tab:green")
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=c, linewidth=linewidth))
        if labels and "label" in d:
            ax.text(x0, y0 - 2, f"{d['label']} {d.get('score', 0):.2f}", color=c, fontsize=5)


def draw_windows(ax, windows: Sequence[Sequence[float]], proposed: Optional[Sequence[Sequence[float]]] = None,
                 start: int = 1) -> None:
    """Draw zoom windows (xyxy pixels), numbered from ``start``; ``proposed`` (before refinement) dashed grey."""
    from matplotlib.patches import Rectangle

    for x0, y0, x1, y1 in proposed or []:
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="0.6", linestyle="--", linewidth=1.0))
    for i, (x0, y0, x1, y1) in enumerate(windows):
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="red", linewidth=2.0))
        ax.text(x0 + 6, y0 + 6, str(start + i), color="white", fontsize=9, va="top", ha="left",
                bbox={"facecolor": "red", "edgecolor": "none", "pad": 1.5})


def draw_gain_map(ax, gain_map: dict, width: int, height: int, alpha: float = 0.5):
    """Overlay an episode's ``gain_map`` (``{"rows", "cols", "values"}``, gain per grid cell) on ``ax``:
    red where zooming is predicted to gain, blue where it is predicted to lose, transparent at 0.
    The grid spans the full image (``extent`` in image pixels); returns the image artist."""
    import matplotlib.colors as mcolors

    values = np.asarray(gain_map["values"], dtype=np.float32)
    nonzero = np.abs(values[values != 0])
    vmax = float(np.percentile(nonzero, 95)) if nonzero.size else 1.0  # a few hot cells must not wash out the rest
    cmap = _plt().get_cmap("RdBu_r")
    rgba = cmap(mcolors.Normalize(-vmax, vmax, clip=True)(values))
    rgba[..., 3] = alpha * np.clip(np.abs(values) / max(vmax, 1e-12), 0, 1)
    return ax.imshow(rgba, extent=(0, width, height, 0), interpolation="nearest")


def plot_result(image, detections: Sequence[dict], windows: Sequence[Sequence[float]] = (), ax=None,
                title: Optional[str] = None, proposed=None, gain_map: Optional[dict] = None):
    """The image with detections coloured by stage and the zoom windows (and, if given, the AG map
    of an episode overlaid); returns the axes."""
    plt = _plt()
    arr = load_image_array(image)
    h, w = arr.shape[:2]
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 10 * h / w))
    ax.imshow(arr, extent=(0, w, h, 0), interpolation="nearest")
    if gain_map:
        draw_gain_map(ax, gain_map, w, h)
    draw_boxes(ax, detections)
    draw_windows(ax, windows, proposed)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def save_result_image(image, detections: Sequence[dict], regions: Sequence[dict], out: str | Path,
                      frames: Sequence[Sequence[float]] = ()) -> Path:
    """Save the image with detections, the service's ``regions`` and, for a scene run as frames, the ``frames``
    (xyxy, dotted yellow) drawn (what ``zoomdet query --out`` and ``zoomdet detect --render`` write)."""
    from matplotlib.patches import Rectangle

    plt = _plt()
    ax = plot_result(image, detections, [r["box_xyxy"] for r in regions],
                     title=f"{len(detections)} detections (blue coarse, orange fine), {len(regions)} zoom regions"
                           + (f", {len(frames)} frames (yellow)" if frames else ""))
    for x0, y0, x1, y1 in frames:
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="yellow", linestyle=":",
                               linewidth=1.5))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ax.figure.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(ax.figure)
    return out


def _episode_image(doc: dict):
    path = doc.get("image", {}).get("path")
    if path and Path(path).is_file():
        return path
    w, h = doc["image"]["width"], doc["image"]["height"]  # no image at hand: draw on grey
    return np.full((h, w, 3), 96, dtype=np.uint8)


def render_episode(doc: dict, out_prefix: str | Path, dpi: int = 80) -> list[Path]:
    """Draw an episode: ``<prefix>_step<k>.png`` per step (k = 0: the coarse pass) and ``<prefix>.gif``.

    Returns the written files (PNG frames then the GIF)."""
    from PIL import Image

    plt = _plt()
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    image = load_image_array(_episode_image(doc))
    steps = doc["steps"]
    files, frames = [], []
    for k in range(-1, len(steps)):
        windows = [s["window_xyxy"] for s in steps[: k + 1]]
        proposed = [steps[k]["proposed_xyxy"]] if k >= 0 else None
        if k < 0:
            title = f"coarse pass: {len(doc['coarse'])} detections" + (", AG map (red: gain)" if doc.get("gain_map") else "")
        else:
            s = steps[k]
            gain = "" if s.get("true_gain") is None else f", true gain {s['true_gain']:+.2f}"
            title = (f"step {k + 1}: window {s['candidate']}, pixels {s['pixels_ratio']:.2f}, "
                     f"+{len(s['added'])}/-{len(s['removed'])} detections{gain}")
        ax = plot_result(image, merged_after(doc, k), windows, title=title, proposed=proposed,
                         gain_map=doc.get("gain_map") if k < 0 else None)
        path = out_prefix.with_name(f"{out_prefix.name}_step{k + 1}.png")
        ax.figure.savefig(path, dpi=dpi, bbox_inches="tight")
        buf = io.BytesIO()
        ax.figure.savefig(buf, dpi=dpi, format="png", bbox_inches="tight")
        plt.close(ax.figure)
        frames.append(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        files.append(path)
    gif = out_prefix.with_suffix(".gif")
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=900, loop=0)
    files.append(gif)
    return files


def plot_reports(reports: Sequence[str | Path | dict], out: Optional[str | Path] = None):
    """AP and AP_small against ``pixels_ratio`` from one or more ``report.json`` (``zoomdet evaluate``);
    policies of several reports are drawn together. Returns the matplotlib figure."""
    import json

    from zoomdet.eval.evaluator import pareto_figure

    loaded = [r if isinstance(r, dict) else json.loads(Path(r).read_text()) for r in reports]
    if not loaded:
        raise ValueError("plot_reports needs at least one report")
    merged = {**loaded[0], "policies": [p for r in loaded for p in r["policies"]]}
    _plt()
    fig = pareto_figure(merged)
    if out:
        fig.savefig(out, dpi=120, bbox_inches="tight")
    return fig
