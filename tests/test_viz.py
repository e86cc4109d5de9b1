"""Episode records and pictures: boxes land where the trace says, in full-resolution pixels."""

import numpy as np
import pytest
import torch

from tests.conftest import StubDetector
from zoomdet.zoom.engine import GroundTruth, ZoomConfig, ZoomEngine
from zoomdet.zoom.episode import episode_record, load_episode, save_episode
from zoomdet.zoom.policies import OraclePolicy

W, H = 400, 300
BOXES = torch.tensor([[20.0, 20, 28, 28], [360, 260, 368, 268], [150, 100, 250, 200]])
LABELS = torch.tensor([1, 1, 2])


def episode(tmp_path):
    """An oracle episode on a stub detector: the two 8-px objects are only found by zooming."""
    eng = ZoomEngine(StubDetector(BOXES, LABELS, min_px=6), ZoomConfig())
    gt = GroundTruth(BOXES, LABELS, torch.zeros(3, dtype=torch.bool))
    img = torch.zeros(3, H, W)
    for x0, y0, x1, y1 in BOXES.long().tolist():
        img[:, y0:y1, x0:x1] = 1.0  # white objects on black: their pixels are known
    res = eng.run(img, OraclePolicy(), ground_truth=gt, max_pixels_ratio=1.0)
    doc = episode_record(res, eng.config, policy="oracle", image={"id": 1}, categories={1: "a", 2: "b"},
                         ground_truth=gt, lam=1.0, max_pixels_ratio=1.0)
    return img, doc, res


def test_episode_round_trip_and_steps_rebuild_the_final_result(tmp_path):
    from zoomdet.eval.coco_eval import episode_metrics
    from zoomdet.zoom.episode import merged_after

    img, doc, res = episode(tmp_path)
    assert doc["gain_map"] is None  # the oracle has no AG map
    path = save_episode(doc, tmp_path / "ep.json")
    back = load_episode(path)
    assert back == doc
    assert len(doc["steps"]) >= 2 and doc["steps"][-1]["pixels_ratio"] == pytest.approx(res.cost.pixels_ratio)
    # the coarse pass at 0.5 finds only the large object; its box is in full-resolution pixels
    assert [d["box_xyxy"] for d in doc["coarse"]] == [[150.0, 100.0, 250.0, 200.0]]
    key = lambda d: (tuple(d["box_xyxy"]), d["score"], d["class_id"])  # noqa: E731
    assert sorted(map(key, merged_after(doc, len(doc["steps"]) - 1))) == sorted(map(key, doc["final"]))
    assert sorted(d["box_xyxy"] for d in doc["final"]) == sorted(BOXES.tolist())
    # per-step AP on the episode's own ground truth: the coarse pass misses the two small objects, zooming finds them
    m = episode_metrics(doc)
    assert len(m) == len(doc["steps"]) + 1 and m[0]["pixels_ratio"] == pytest.approx(0.25)
    assert m[0]["ap50"] < 0.5 and m[-1]["ap50"] == pytest.approx(1.0)
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a ZoomDet episode"):
        load_episode(tmp_path / "bad.json")


def test_drawn_boxes_sit_on_the_objects_in_image_pixels(tmp_path):
    import matplotlib.pyplot as plt

    from zoomdet.viz import plot_result

    img, doc, _ = episode(tmp_path)
    fig = plt.figure(figsize=(W / 100, H / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    plot_result(img, doc["final"], ax=ax)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    assert rgba.shape[:2] == (H, W)  # one figure pixel per image pixel
    # detection outlines are drawn on the object edges: the ring just inside each box is coloured
    # (not the white of the object or the black background), the centre of the large box stays white
    for x0, y0, x1, y1 in BOXES.long().tolist():
        edge = rgba[y0, (x0 + x1) // 2]
        assert not (edge == 255).all() and not (edge == 0).all(), (x0, y0, edge)
    assert (rgba[150, 200] == 255).all()
    # the coarse factor is never applied twice: nothing is drawn at the half-scale positions of the objects
    assert (rgba[10, 12] == 0).all() and (rgba[50, 100] == 0).all()
    # zoom windows: red outlines exactly on the window edges the trace gives
    fig = plt.figure(figsize=(W / 100, H / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    windows = [s["window_xyxy"] for s in doc["steps"]]
    plot_result(torch.zeros(3, H, W), [], windows, ax=ax)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    for x0, y0, x1, y1 in windows:
        r, g, b = (int(v) for v in rgba[min(int(y1), H - 1), int((x0 + x1) / 2)])
        assert r > 150 and g < 80 and b < 80, (x0, y0, x1, y1, r, g, b)


def test_render_episode_writes_a_frame_per_step_and_a_gif(tmp_path):
    from PIL import Image

    from zoomdet.viz import render_episode

    _, doc, _ = episode(tmp_path)
    files = render_episode(doc, tmp_path / "ep")
    assert len(files) == len(doc["steps"]) + 2 and files[-1].suffix == ".gif"
    gif = Image.open(files[-1])
    assert gif.n_frames == len(doc["steps"]) + 1


def test_gain_map_overlay_lies_on_its_grid_cells(tmp_path):
    import matplotlib.pyplot as plt

    from zoomdet.viz import plot_result

    from zoomdet.zoom.policies import make_policy

    eng = ZoomEngine(StubDetector(BOXES, LABELS, min_px=6), ZoomConfig())
    res = eng.run(torch.zeros(3, H, W), make_policy("greedy-entropy"), max_pixels_ratio=1.0)
    doc = episode_record(res, eng.config, policy="greedy-entropy", image={"id": 1})
    gm = doc["gain_map"]
    assert gm is not None and (gm["rows"], gm["cols"]) == (-(-H // 32), -(-W // 32))
    values = np.asarray(gm["values"])
    j, i = np.unravel_index(np.abs(values).argmax(), values.shape)  # the cell with the most gain
    fig = plt.figure(figsize=(W / 100, H / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    plot_result(torch.zeros(3, H, W), [], ax=ax, gain_map=gm)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    plt.close(fig)
    cy, cx = int((j + 0.5) * H / gm["rows"]), int((i + 0.5) * W / gm["cols"])
    assert rgba[cy, cx].sum() > 60  # tinted over black where the gain is
    zero = np.argwhere(values == 0)
    if len(zero):
        zj, zi = zero[0]
        assert rgba[int((zj + 0.5) * H / gm["rows"]), int((zi + 0.5) * W / gm["cols"])].sum() == 0  # transparent
