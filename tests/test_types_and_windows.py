import numpy as np
import pytest
import torch

from zoomdet.types import Detections, Window
from zoomdet.zoom.windows import GainMap, WindowConfig, candidate_windows, refine_window


def test_window_maps_boxes_back_with_offset_and_scale():
    w = Window(100, 50, 300, 250, scale=0.5)  # 200x200 source -> 100x100 input
    assert w.input_size == (100, 100)
    assert w.source_pixels == 40000 and w.input_pixels == 10000
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    mapped = w.to_image(boxes)
    assert torch.allclose(mapped, torch.tensor([[120.0, 90.0, 160.0, 130.0]]))
    assert torch.equal(boxes, torch.tensor([[10.0, 20.0, 30.0, 40.0]]))  # input not mutated


@pytest.mark.parametrize("bad", [(5, 0, 5, 10), (0, 10, 10, 3)])
def test_empty_window_is_rejected(bad):
    with pytest.raises(ValueError, match="empty window"):
        Window(*bad)


def test_detections_shape_checks_and_empty():
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        Detections(torch.zeros(3, 5), torch.zeros(3), torch.zeros(3, dtype=torch.long))
    e = Detections.empty()
    assert len(e) == 0 and e.to_coco(1) == []


def test_paper_action_set_has_13_windows_covering_the_image():
    wins = candidate_windows(2048, 1536)
    assert len(wins) == 13
    assert all(0 <= w.x0 < w.x1 <= 2048 and 0 <= w.y0 < w.y1 <= 1536 for w in wins)
    cover = torch.zeros(1536, 2048, dtype=torch.bool)
    for w in wins[:4]:  # the 2x2 large grid alone covers everything
        cover[w.y0:w.y1, w.x0:w.x1] = True
    assert cover.all()
    cover[:] = False
    for w in wins[4:]:
        cover[w.y0:w.y1, w.x0:w.x1] = True
    assert cover.all()
    # hand-computed: large side 0.55*2048=1126.4 -> rounded up to 1152 (multiple of 32); last starts at 2048-1152
    assert wins[0].as_tuple()[:2] == (0, 0) and wins[0].width == 1152 and wins[3].x0 == 2048 - 1152


def test_window_config_rejects_grids_that_cannot_cover():
    with pytest.raises(ValueError, match="cannot cover"):
        WindowConfig(grids=[2], fractions=[0.3])


def test_gain_map_integral_matches_spread_gains():
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 5, 15, 25], [30, 30, 40, 40]])
    gains = torch.tensor([1.0, -0.5, 2.0])
    gm = GainMap(50, 40, boxes, gains, cell=1)
    assert gm.window_sum(Window(0, 0, 50, 40)) == pytest.approx(2.5)
    # half of box 0 (x 0..5), nothing else: 0.5
    assert gm.window_sum(Window(0, 0, 5, 5)) == pytest.approx(0.25)
    assert gm.window_sum(Window(0, 0, 5, 10)) == pytest.approx(0.5)
    # box 1 is 10x20=200 px with -0.5; window 5..15 x 5..15 covers 100 px of it and 25 px of box 0
    assert gm.window_sum(Window(5, 5, 15, 15)) == pytest.approx(-0.25 + 0.25)
    z = gm.zeroed(Window(25, 25, 50, 40))
    assert z.total() == pytest.approx(0.5) and gm.total() == pytest.approx(2.5)


@pytest.mark.parametrize("size, cell", [((16.0, 16.0), 16), ((12.5, 9.75), 4), ((40.0, 30.0), 1)])
def test_a_grid_of_boxes_gives_the_map_its_boxes_give(size, cell):
    """``GainMap.from_grid`` is the constructor on the grid's boxes, cells past the image edge and gains of either
    sign included, with non-integer cell sides and integral cells that do not line up with the grid's."""
    rng = np.random.default_rng(0)
    h, w = 9, 11
    values = torch.from_numpy(rng.normal(size=(h, w)))
    width, height = 130, 77  # the grid overhangs the image on both axes in every case
    jj, ii = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    boxes = torch.from_numpy(np.stack([ii.ravel() * size[0], jj.ravel() * size[1], (ii.ravel() + 1) * size[0],
                                       (jj.ravel() + 1) * size[1]], 1))
    by_boxes = GainMap(width, height, boxes, values.flatten(), cell=cell)
    grid = GainMap.from_grid(width, height, values, size, cell=cell)
    assert grid.cells.shape == by_boxes.cells.shape and np.allclose(grid.cells, by_boxes.cells, atol=1e-12)
    assert np.allclose(grid.integral, by_boxes.integral, atol=1e-12) and grid.positive_total() > 0
    b = boxes.numpy()  # the part of a box outside the image is lost
    kept = ((np.minimum(b[:, 2], width) - b[:, 0]).clip(0) * (np.minimum(b[:, 3], height) - b[:, 1]).clip(0)
            / ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])))
    assert kept.min() < 1 and np.isclose(grid.integral[-1, -1], (values.numpy().ravel() * kept).sum())
    probe = np.array([[0, 0, 64, 40], [17.5, 3.25, 129, 77], [100, 50, 130, 77]])
    assert np.allclose(grid.window_sums(probe), by_boxes.window_sums(probe), atol=1e-12)


def test_refinement_shifts_toward_gain_and_stays_inside():
    gm = GainMap(100, 100, torch.tensor([[80.0, 40, 100, 60]]), torch.tensor([1.0]))
    w = Window(40, 30, 80, 70)  # touches the gain box only at its edge
    r = refine_window(w, gm, WindowConfig(refine_shift=0.5, refine_steps=2))
    assert (r.width, r.height) == (w.width, w.height)
    assert r.x0 > w.x0 and r.x1 <= 100
    assert gm.window_sum(r) == pytest.approx(1.0)
    # no gain anywhere: the window stays where it is
    flat = GainMap(100, 100, torch.zeros(0, 4), torch.zeros(0))
    assert refine_window(w, flat, WindowConfig(refine_shift=0.5)) == w


def test_in_place_zeroing_matches_a_fresh_integral():
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(40, 2, generator=gen) * torch.tensor([280.0, 180])
    wh = torch.rand(40, 2, generator=gen) * 30 + 2
    boxes = torch.cat([xy, xy + wh], 1)
    gains = torch.randn(40, generator=gen)
    gm = GainMap(320, 220, boxes.round(), gains, cell=1)
    ref = gm.cells.copy()
    for w in (Window(10, 20, 150, 120), Window(100, 60, 300, 200), Window(0, 0, 320, 5)):
        gm.zero_(w)
        ref[w.y0:w.y1, w.x0:w.x1] = 0.0
        for q in (Window(0, 0, 320, 220), Window(50, 50, 200, 210), Window(140, 10, 160, 215)):
            assert gm.window_sum(q) == pytest.approx(ref[q.y0:q.y1, q.x0:q.x1].sum(), abs=1e-4)
        assert gm.positive_total() == pytest.approx(ref.clip(min=0).sum(), abs=1e-4)


def test_coarse_cells_are_exact_on_cell_edges_and_close_elsewhere():
    gen = torch.Generator().manual_seed(1)
    xy = torch.rand(30, 2, generator=gen) * torch.tensor([280.0, 180])
    boxes = torch.cat([xy, xy + torch.rand(30, 2, generator=gen) * 30 + 2], 1)
    gains = torch.randn(30, generator=gen)
    fine, coarse = GainMap(320, 220, boxes, gains, cell=1), GainMap(320, 220, boxes, gains, cell=8)
    assert coarse.cells.shape == (28, 40)  # ceil(220 / 8) x ceil(320 / 8)
    assert coarse.total() == pytest.approx(float(gains.sum()), abs=1e-6)
    on_edges = Window(16, 8, 200, 160)
    assert coarse.window_sum(on_edges) == pytest.approx(fine.window_sum(on_edges), abs=1e-6)
    off = Window(13, 5, 203, 161)
    assert coarse.window_sum(off) == pytest.approx(fine.window_sum(off), abs=0.15)
    # zeroing removes exactly what the window held; a window on cell edges then sums to zero
    for w in (off, on_edges):
        before, held = coarse.total(), coarse.window_sum(w)
        coarse.zero_(w)
        assert coarse.total() == pytest.approx(before - held, abs=1e-9)
    assert coarse.window_sum(on_edges) == pytest.approx(0.0, abs=1e-9)


def test_pooled_grid_sums_to_the_map_and_places_gain():
    gm = GainMap(256, 128, torch.tensor([[192.0, 0, 256, 64]]), torch.tensor([2.0]))
    grid = gm.pooled(2, 4)
    assert grid.shape == (2, 4) and grid.dtype == np.float32
    assert grid.sum() == pytest.approx(2.0, abs=1e-5)
    assert grid[0, 3] == pytest.approx(2.0, abs=1e-5)  # the box fills the top-right grid cell
    assert np.abs(grid).sum() == pytest.approx(2.0, abs=1e-5)


def test_a_config_file_starts_from_its_base_and_refuses_bad_bases(tmp_path):
    from zoomdet.config import ConfigError, load_config
    from zoomdet.eval.evaluator import EvalConfig

    (tmp_path / "parent.yaml").write_text("checkpoint: a.pt\nbudgets: [0.3, 0.4]\nzoom:\n  coarse_scale: 0.25\n"
                                          "  windows:\n    grids: [2, 3]\n    fractions: [0.5, 0.3]\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\ncheckpoint: b.pt\nzoom:\n  windows:\n    grids: [2, 4]\n")
    cfg = load_config(EvalConfig, tmp_path / "child.yaml", ["budgets=[0.5]"])
    assert cfg.checkpoint == "b.pt" and cfg.budgets == [0.5]  # the child's key, then the override
    assert cfg.zoom.coarse_scale == 0.25 and cfg.zoom.windows.fractions == [0.5, 0.3]  # kept from the base
    assert cfg.zoom.windows.grids == [2, 4]  # a list is replaced whole
    (tmp_path / "loop.yaml").write_text("base: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="leads back to itself"):
        load_config(EvalConfig, tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="the base of"):
        load_config(EvalConfig, tmp_path / "orphan.yaml")
    (tmp_path / "odd.yaml").write_text("base: [parent.yaml]\n")
    with pytest.raises(ConfigError, match="base must be a file path"):
        load_config(EvalConfig, tmp_path / "odd.yaml")


def test_zoomed_windows_leave_exactly_no_gain_so_greedy_stops_instead_of_chasing_rounding_residue(monkeypatch):
    """Zeroing windows updates the integral incrementally; the sums of windows that hold no gain any more must
    read 0, not +-1e-16 (a greedy rule that spends its budget took such windows, how many depending on the order
    of float operations, e.g. torch's thread count). Exact map (cell 1), integer windows."""
    import numpy as np

    import zoomdet.zoom.windows as windows
    from zoomdet.rnet.policies import greedy_choice
    from zoomdet.zoom.windows import WindowConfig, candidate_windows, window_boxes

    W, H = 640, 480
    cands = candidate_windows(W, H, WindowConfig(grids=[3, 4], fractions=[0.4, 0.3]))
    cb, px = window_boxes(cands), np.array([w.source_pixels for w in cands], dtype=np.float64)

    def greedy_until_it_stops(boxes, gains, residue: float) -> tuple[int, np.ndarray]:
        monkeypatch.setattr(windows, "RESIDUE", residue)
        gm = GainMap(W, H, boxes, gains, cell=1)
        available = np.ones(len(cands), dtype=bool)  # as in the engine, a window is zoomed once
        for steps in range(len(cands) + 1):
            k = greedy_choice(gm, cb, px, available)
            if k is None:
                return steps, gm.window_sums(cb)
            gm.zero_(cands[k])
            available[k] = False
            assert abs(gm.window_sum(cands[k])) <= 1e-12  # the zoomed window holds nothing
        raise AssertionError("greedy never stopped")

    chased = 0
    for seed in range(12):
        gen = torch.Generator().manual_seed(seed)
        xy = torch.rand(25, 2, generator=gen) * torch.tensor([560.0, 400])
        boxes = torch.cat([xy, xy + 10 + torch.rand(25, 2, generator=gen) * 60], 1)
        gains = torch.rand(25, generator=gen)
        raw_steps, raw = greedy_until_it_stops(boxes, gains, 0.0)  # the bare arithmetic
        steps, snapped = greedy_until_it_stops(boxes, gains, 1e-12)
        assert np.all(snapped == 0.0) and np.abs(raw).max() < 1e-12  # what is left is residue, read as nothing
        assert raw_steps >= steps
        chased += raw_steps > steps  # without the snap, greedy took windows for their residue
    assert chased >= 6  # (11 of the 12 maps here)
