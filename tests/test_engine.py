import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import load_benchmark, StubDetector
from zoomdet.detector.detector import batch_plan
from zoomdet.types import Detections, Window
from zoomdet.zoom.engine import Cost, GroundTruth, ZoomConfig, ZoomEngine
from zoomdet.zoom.policies import OraclePolicy, PolicyConfig, RandomPolicy, SahiConfig, get_slice_windows, make_policy

W, H = 400, 300
# two small objects (8 px: missed at scale 0.5 by a stub needing 6 px) and one large one
BOXES = torch.tensor([[20.0, 20, 28, 28], [360, 260, 368, 268], [150, 100, 250, 200]])
LABELS = torch.tensor([1, 1, 2])


def make_engine(**cfg):
    return ZoomEngine(StubDetector(BOXES, LABELS, min_px=6), ZoomConfig(**cfg))


def image():
    return torch.rand(3, H, W)


def test_coarse_and_fine_cost_accounting():
    eng = make_engine()
    c = eng.run(image(), make_policy("coarse"))
    assert c.cost.pixels_ratio == pytest.approx(0.25)
    assert c.cost.model_input_pixels == 200 * 150 and c.cost.pixels_source == W * H and c.cost.detector_calls == 1
    assert len(c.detections) == 1  # only the large object survives half resolution
    f = eng.run(image(), make_policy("fine"))
    assert f.cost.pixels_ratio == pytest.approx(1.0) and len(f.detections) == 3
    assert set(c.timing) >= {"decode", "coarse", "gain", "policy", "fine", "merge", "total"}
    assert c.timing["coarse"] > 0 and c.timing["fine"] == 0  # the coarse plan is booked as the coarse stage
    assert f.timing["fine"] > 0 and f.timing["coarse"] == 0


def test_sahi_counts_overlapping_slices_as_often_as_processed():
    cfg = SahiConfig(slice_width=200, slice_height=200, overlap_width_ratio=0.2, overlap_height_ratio=0.2,
                     perform_standard_pred=True)
    slices = get_slice_windows(W, H, cfg)
    # x: 0, 160 -> 200 (clipped back to end at 400); y: 0, 100 (clipped back to end at 300)
    assert [s.as_tuple() for s in slices] == [(0, 0, 200, 200), (160, 0, 360, 200), (200, 0, 400, 200),
                                               (0, 100, 200, 300), (160, 100, 360, 300), (200, 100, 400, 300)]
    eng = make_engine()
    r = eng.run(image(), make_policy("sahi", PolicyConfig(sahi=cfg)))
    # the whole-image pass runs at native scale, as SAHI's perform_standard_pred does
    assert r.cost.model_input_pixels == 6 * 200 * 200 + W * H
    assert r.cost.pixels_ratio == pytest.approx((6 * 40000 + W * H) / (W * H))
    half = PolicyConfig(sahi=SahiConfig(slice_width=200, slice_height=200, standard_pred_scale=0.5))
    assert eng.run(image(), make_policy("sahi", half)).cost.model_input_pixels == 6 * 200 * 200 + 200 * 150
    assert r.cost.pixels_ratio > 1
    assert len(r.detections) == 3


def test_random_policy_respects_pixel_budget_and_steps():
    eng = make_engine(max_pixels_ratio=0.5)
    wins = eng.candidates(W, H)
    r = eng.run(image(), RandomPolicy(k=10), seed=1)
    assert r.cost.pixels_ratio <= 0.5 + 1e-9
    expected = 0.25 + sum(reg.window.input_pixels for reg in r.regions) / (W * H)
    assert r.cost.pixels_ratio == pytest.approx(expected)
    assert len({reg.candidate for reg in r.regions}) == len(r.regions)  # no window twice
    r2 = eng.run(image(), RandomPolicy(k=10), seed=1, max_steps=1, max_pixels_ratio=10)
    assert len(r2.regions) == 1
    assert all(w.scale == 1.0 for w in wins)


def test_overlapping_windows_are_counted_twice():
    eng = make_engine(max_pixels_ratio=10)
    r = eng.run(image(), RandomPolicy(k=13), seed=0)
    assert len(r.regions) == 13
    total_window_px = sum(w.input_pixels for w in eng.candidates(W, H))
    assert total_window_px > W * H  # the candidates overlap...
    assert r.cost.model_input_pixels == W * H // 4 + total_window_px  # ...and every pass is paid for


def test_fine_crops_of_an_episode_are_batched():
    det = StubDetector(BOXES, LABELS, min_px=6, batch_size=8)
    eng = ZoomEngine(det, ZoomConfig(max_pixels_ratio=10))
    r = eng.run(image(), RandomPolicy(k=13), seed=0)
    # one coarse call, then 4 large + 9 small windows in batches of 8: 1 + 2 calls
    assert r.cost.detector_calls == 1 + 1 + 2
    assert len(det.calls) == 2 and len(det.calls[1]) == 13


def test_oracle_zooms_where_small_objects_are_and_matches_fine():
    eng = make_engine(max_pixels_ratio=1.0)
    gt = GroundTruth(BOXES, LABELS, torch.zeros(3, dtype=torch.bool))
    r = eng.run(image(), OraclePolicy(), ground_truth=gt)
    assert len(r.detections) == 3  # both small objects recovered
    assert r.cost.pixels_ratio < 1.0  # with less than the full-resolution cost
    assert "oracle_lookahead" in r.timing
    with pytest.raises(ValueError, match="needs ground truth"):
        eng.run(image(), OraclePolicy())


def test_engine_does_not_mutate_input_and_handles_empty_image():
    eng = ZoomEngine(StubDetector(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)), ZoomConfig())
    img = image()
    before = img.clone()
    for name in ("coarse", "fine", "sahi", "random"):
        r = eng.run(img, make_policy(name))
        assert len(r.detections) == 0
    assert torch.equal(img, before)


def test_bad_budget_and_unknown_policy():
    eng = make_engine()
    with pytest.raises(ValueError, match="max_pixels_ratio"):
        eng.run(image(), RandomPolicy(), max_pixels_ratio=0)
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("zoom-everything")


def test_only_oracles_see_ground_truth():
    seen = []

    class Peek(RandomPolicy):
        def select(self, state):
            seen.append((state.ground_truth, state.lookahead))
            return None

    gt = GroundTruth(BOXES, LABELS, torch.zeros(3, dtype=torch.bool))
    make_engine().run(image(), Peek(), ground_truth=gt)
    assert seen == [(None, None)]


def test_sahi_drops_predictions_under_its_confidence_threshold():
    from zoomdet.zoom.policies import PolicyConfig

    eng = make_engine()
    low = PolicyConfig(sahi=SahiConfig(slice_width=200, slice_height=200, confidence_threshold=0.95))
    assert len(eng.run(image(), make_policy("sahi", low)).detections) == 0  # the stub scores 0.9
    ok = PolicyConfig(sahi=SahiConfig(slice_width=200, slice_height=200, confidence_threshold=0.5))
    assert len(eng.run(image(), make_policy("sahi", ok)).detections) == 3


def test_passes_over_max_pass_pixels_run_as_tiles_that_are_paid_for_and_deduplicated():
    from zoomdet.zoom.windows import split_window

    cap = 150 * 150
    tiles = split_window(Window.full(W, H), cap, 0.1)
    assert len(tiles) > 2 and all(t.input_pixels <= cap for t in tiles)
    a, b = tiles[0], tiles[1]  # an object in the strip two tiles share, and one inside a single tile
    shared = torch.tensor([[b.x0 + 1.0, 40, a.x1 - 1.0, 60], [20, 20, 28, 28]])
    eng = ZoomEngine(StubDetector(shared, torch.tensor([1, 2]), min_px=6), ZoomConfig(max_pass_pixels=cap))
    whole = ZoomEngine(StubDetector(shared, torch.tensor([1, 2]), min_px=6), ZoomConfig())
    f, ref = eng.run(image(), make_policy("fine")), whole.run(image(), make_policy("fine"))
    # every tile, overlap included, is counted; tiles of one size share batched calls
    assert f.cost.model_input_pixels == sum(t.input_pixels for t in tiles) > W * H
    assert f.cost.detector_calls == len(batch_plan(tiles, eng.detector.batch_size)) > 1
    # the object seen by both tiles comes out once, as in the whole-image pass
    assert len(ref.detections) == 2 and sorted(f.detections.boxes.tolist()) == sorted(ref.detections.boxes.tolist())
    # the public detect_windows is that pass: one Detections per window, tiles merged, calls charged to a cost
    cost = Cost(image_pixels=W * H)
    (d,) = eng.detect_windows(image(), [Window.full(W, H)], cost)
    assert sorted(d.boxes.tolist()) == sorted(f.detections.boxes.tolist())
    assert (cost.model_input_pixels, cost.detector_calls) == (f.cost.model_input_pixels, f.cost.detector_calls)
    assert eng.detect_windows(image(), []) == []
    # the coarse pass (200x150 = 30000 px) is tiled too, and a budget is checked against what tiles cost
    c = eng.run(image(), make_policy("coarse"))
    assert c.cost.detector_calls >= 1 and c.cost.model_input_pixels > 200 * 150
    tiled = ZoomEngine(StubDetector(BOXES, LABELS, min_px=6), ZoomConfig(max_pass_pixels=100 * 100))
    r = tiled.run(image(), RandomPolicy(k=13), seed=0, max_pixels_ratio=0.6)
    assert r.cost.pixels_ratio <= 0.6 + 1e-9 and r.regions
    with pytest.raises(ValueError, match="max_pass_pixels"):
        ZoomConfig(max_pass_pixels=10)


@pytest.mark.parametrize("window,cap", [
    (Window(0, 0, 6000, 6000, 1.0), 2_000_000), (Window(0, 0, 6000, 6000, 0.5), 2_000_000),
    (Window(0, 0, 2048, 1536, 1.0), 2_000_000), (Window(37, 11, 40000, 1000, 1.0), 2_000_000),
    (Window(5, 5, 900, 650, 1.0), 4_000_000)])
def test_split_window_covers_the_window_with_bounded_overlapping_tiles(window, cap):
    from zoomdet.zoom.windows import split_window

    tiles = split_window(window, cap, overlap=0.1)
    assert all(t.input_pixels <= cap and t.scale == window.scale for t in tiles)
    assert all(window.x0 <= t.x0 and t.x1 <= window.x1 and window.y0 <= t.y0 and t.y1 <= window.y1 for t in tiles)
    covered = torch.zeros(window.height, window.width, dtype=torch.bool)
    for t in tiles:
        covered[t.y0 - window.y0:t.y1 - window.y0, t.x0 - window.x0:t.x1 - window.x0] = True
    assert bool(covered.all())
    if window.input_pixels <= cap:
        assert tiles == [window]
    else:  # neighbours share at least 10% of a tile's side; tiles are not long strips
        xs = sorted({t.x0 for t in tiles})
        if len(xs) > 1:
            assert xs[1] - xs[0] <= 0.9 * tiles[0].width + 1
        assert all(min(t.width, t.height) / max(t.width, t.height) >= 0.5 for t in tiles) or window.height < 1500
    with pytest.raises(ValueError):
        split_window(window, 100)


def test_window_scale_zooms_below_the_fine_reference():
    eng = make_engine(window_scale=0.5, max_pixels_ratio=10)
    assert all(w.scale == 0.5 for w in eng.candidates(W, H))
    assert eng.run(image(), make_policy("fine")).cost.pixels_ratio == pytest.approx(1.0)  # the reference stays full
    r = eng.run(image(), RandomPolicy(k=13), seed=0)
    assert r.regions and all(reg.window.scale == 0.5 for reg in r.regions)
    assert r.cost.model_input_pixels == 200 * 150 + sum(reg.window.input_pixels for reg in r.regions)
    with pytest.raises(ValueError, match="scales"):
        ZoomConfig(window_scale=0)


def test_image_ap_is_cocoeval_on_one_image():
    from pycocotools.coco import COCO

    from zoomdet.eval.coco_eval import ImageAP, coco_metrics

    gt_boxes, gt_labels = BOXES.numpy(), LABELS.numpy()
    scorer = ImageAP(gt_boxes, gt_labels, [0, 0, 0], W, H)
    dets = [[21.0, 20, 29, 28], [150, 100, 240, 200], [300, 10, 330, 40]]
    scores, labels = [0.9, 0.8, 0.7], [1, 2, 1]
    coco = COCO()
    coco.dataset = {"images": [{"id": 1, "width": W, "height": H}], "categories": [{"id": 1}, {"id": 2}],
                    "annotations": [{"id": i + 1, "image_id": 1, "category_id": int(c), "iscrowd": 0,
                                     "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)}
                                    for i, ((x0, y0, x1, y1), c) in enumerate(zip(gt_boxes.tolist(), gt_labels.tolist()))]}
    coco.createIndex()
    ref = coco_metrics(coco, [{"image_id": 1, "category_id": c, "score": s, "bbox": [x0, y0, x1 - x0, y1 - y0]}
                              for (x0, y0, x1, y1), s, c in zip(dets, scores, labels)], [1])["ap"]
    found = Detections(torch.tensor(dets), torch.tensor(scores), torch.tensor(labels))
    assert scorer(found) == pytest.approx(ref) and 0 < ref < 1
    assert scorer(Detections.empty()) == 0.0
    assert scorer(Detections(BOXES, torch.ones(3), LABELS)) == pytest.approx(1.0)
    assert np.isnan(ImageAP(np.zeros((0, 4)), [], [], W, H)(found))  # no object: AP undefined


def test_pool_ap_is_the_datasets_cocoeval_with_one_image_swapped():
    from zoomdet.eval.coco_eval import ImageAP, PoolAP, coco_metrics, ground_truth_coco

    crowd = [0, 0, 0]
    other = torch.tensor([[100.0, 100, 140, 140]])  # image 2: one object of class 1, found at score 0.5
    images = [(1, W, H, BOXES, LABELS, crowd), (2, W, H, other, [1], [0])]
    ref = {1: Detections(BOXES.clone(), torch.tensor([0.9, 0.8, 0.9]), LABELS.clone()),
           2: Detections(other.clone(), torch.tensor([0.5]), torch.tensor([1]))}
    pool = PoolAP(images, ref)
    coco = ground_truth_coco(images)

    def dataset_ap(first: Detections) -> float:
        return coco_metrics(coco, first.to_coco(1) + ref[2].to_coco(2), [1, 2])["ap"]

    assert pool.size == 2 and pool.reference_ap == pytest.approx(dataset_ap(ref[1])) == pytest.approx(1.0)
    # a false positive ranked below image 1's true positives but above image 2's: image 1's own AP does not
    # see it, the dataset's does
    fp = Detections(torch.cat([BOXES, torch.tensor([[300.0, 20, 330, 50]])]), torch.tensor([0.9, 0.8, 0.9, 0.6]),
                    torch.tensor([1, 1, 2, 1]))
    alone = ImageAP(BOXES, LABELS, crowd, W, H)
    assert alone(fp) == pytest.approx(alone(ref[1])) == pytest.approx(1.0)
    assert pool(1, fp) == pytest.approx(dataset_ap(fp))
    assert pool(1, fp) < pool.reference_ap - 0.02  # class 1 loses precision at image 2's object
    assert pool(2, ref[2]) == pytest.approx(pool.reference_ap)  # the swap was put back
    assert pool(1, Detections.empty()) == pytest.approx(dataset_ap(Detections.empty()))
    with pytest.raises(KeyError, match="not in the pool"):
        pool(3, fp)


def test_ap_oracle_zooms_where_ap_rises_and_stops_when_it_cannot():
    eng = make_engine(max_pixels_ratio=10)
    gt = GroundTruth(BOXES, LABELS, torch.zeros(3, dtype=torch.bool))
    pol = make_policy("oracle-ap", zoom=eng.config)
    r = eng.run(image(), pol, ground_truth=gt)
    fine = eng.run(image(), make_policy("fine"))
    assert 1 <= len(r.regions) <= 2  # the windows holding the two small objects, nothing more
    assert sorted(r.detections.boxes.tolist()) == sorted(fine.detections.boxes.tolist())
    with pytest.raises(ValueError, match="ground truth"):
        eng.run(image(), pol)
    empty = GroundTruth(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool))
    assert eng.run(image(), pol, ground_truth=empty).regions == []  # no object: nothing to gain


def test_pass_memo_runs_each_pass_once_and_charges_every_run_in_full():
    eng = make_engine(max_pixels_ratio=0.6)
    calls = []
    detect = eng.detector.detect
    eng.detector.detect = lambda img, wins, **k: (calls.append(list(wins)), detect(img, wins, **k))[1]
    img = image()
    alone = [eng.run(img, RandomPolicy(k=2), seed=s) for s in (1, 2)]
    n_alone = len(calls)
    calls.clear()
    memo: dict = {}
    shared = [eng.run(img, RandomPolicy(k=2), seed=s, pass_memo=memo) for s in (1, 2)]
    assert n_alone - len(calls) == 1  # the second run reused the coarse pass
    again = eng.run(img, RandomPolicy(k=2), seed=1, pass_memo=memo)  # same windows as the first run
    assert len(calls) == n_alone - 1 and again.cost.as_dict() == alone[0].cost.as_dict()
    assert again.timing["fine"] == shared[0].timing["fine"] > 0
    for a, b in zip(alone, shared):
        assert a.cost.as_dict() == b.cost.as_dict()  # same pixels and calls as a run on its own
        assert torch.equal(a.detections.boxes, b.detections.boxes)
    # the reused pass is charged its measured seconds, in the coarse stage and in the total
    assert shared[1].timing["coarse"] == shared[0].timing["coarse"] > 0
    assert shared[1].timing["total"] >= shared[1].timing["coarse"]


class ClockedStub(StubDetector):
    """A stub whose every call advances a fake clock by 1 microsecond per input pixel: time follows pixels exactly."""

    def __init__(self, clock: list, **kw):
        super().__init__(BOXES, LABELS, min_px=6, **kw)
        self.clock = clock

    def detect(self, image, windows, features: bool = True):
        self.clock[0] += 1e-6 * sum(w.input_pixels for w in windows)
        return super().detect(image, windows, features)


def test_a_deadline_leaves_out_the_last_chosen_windows_and_charges_only_what_ran(monkeypatch):
    from types import SimpleNamespace

    import zoomdet.zoom.engine as engine_module

    clock = [100.0]  # the engine's clock only (its module's `time`), not the process's
    monkeypatch.setattr(engine_module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    eng = ZoomEngine(ClockedStub(clock, batch_size=1), ZoomConfig(max_pixels_ratio=10))
    img = image()
    full = eng.run(img, RandomPolicy(k=13), seed=0)
    assert len(full.regions) == 13 and full.dropped == 0
    # time for the coarse pass and the first three windows, one call each (batch_size 1): exactly those run
    px = [r.window.input_pixels for r in full.regions]
    start = clock[0]
    cut = eng.run(img, RandomPolicy(k=13), seed=0, deadline=start + 1e-6 * (200 * 150 + sum(px[:3])) + 1e-9)
    assert [r.window for r in cut.regions] == [r.window for r in full.regions[:3]] and cut.dropped == 10
    assert cut.cost.model_input_pixels == 200 * 150 + sum(px[:3]) and cut.cost.detector_calls == 4
    assert cut.timing["fine"] == pytest.approx(1e-6 * sum(px[:3]))
    assert set(cut.region.tolist()) <= {-1, 0, 1, 2}  # only the windows that ran are merged
    # a deadline already past: the coarse pass alone, as the coarse policy answers
    late = eng.run(img, RandomPolicy(k=13), seed=0, deadline=clock[0] - 1)
    coarse = eng.run(img, make_policy("coarse"))
    assert late.regions == [] and late.dropped == 13 and late.cost.as_dict() == coarse.cost.as_dict()
    assert torch.equal(late.detections.boxes, coarse.detections.boxes)
    # a deadline far away changes nothing; plan policies ignore deadlines
    far = eng.run(img, RandomPolicy(k=13), seed=0, deadline=clock[0] + 1e9)
    assert [r.window for r in far.regions] == [r.window for r in full.regions] and far.dropped == 0
    assert far.cost.model_input_pixels == full.cost.model_input_pixels and torch.equal(far.detections.boxes, full.detections.boxes)
    assert eng.run(img, make_policy("fine"), deadline=clock[0] - 1).cost.pixels_ratio == pytest.approx(1.0)
    with pytest.raises(ValueError, match="deadline and pass_memo"):
        eng.run(img, RandomPolicy(k=2), deadline=clock[0] + 1, pass_memo={})


def _bootstrap_world(n: int = 12):
    """``n`` 200x200 images, one 20-px object each (class 1 on even images, 2 on odd), found exactly by
    ``good`` at 0.9 and by ``poor`` on every other image only (the rest shifted by half a box, at 0.8)."""
    from zoomdet.eval.coco_eval import ground_truth_coco

    images, good, poor = [], [], []
    for i in range(1, n + 1):
        box = [10.0 * i, 20.0, 10.0 * i + 20, 40.0]
        images.append((i, 200, 200, [box], [1 + i % 2], [0]))
        good.append({"image_id": i, "category_id": 1 + i % 2, "bbox": [box[0], 20.0, 20.0, 20.0], "score": 0.9})
        shift = 0.0 if i % 2 else 10.0
        poor.append({"image_id": i, "category_id": 1 + i % 2, "bbox": [box[0] + shift, 20.0, 20.0, 20.0], "score": 0.8})
    return ground_truth_coco(images), good, poor


def test_bootstrap_ap_resamples_images_and_pairs_the_draws():
    from zoomdet.eval.coco_eval import BootstrapAP, coco_metrics, paired_bootstrap

    gt, good, poor = _bootstrap_world()
    ids = list(range(12, 0, -1))  # any order: resamples index the sorted ids
    g, p = BootstrapAP(gt, good, ids), BootstrapAP(gt, poor, ids)
    assert g.image_ids == sorted(ids) and g.categories == ["1", "2"]
    assert g.ap == pytest.approx(coco_metrics(gt, good, ids)["ap"]) == pytest.approx(1.0)
    assert p.ap == pytest.approx(coco_metrics(gt, poor, ids)["ap"]) and p.ap < 0.7
    # every image twice scores as the images once; one odd image alone is all class 2, found exactly
    assert p(np.repeat(np.arange(12), 2))[0] == pytest.approx(p.ap)
    ap, per_class = p(np.array([0, 0, 0]))  # image 1 (odd: exact) three times
    assert ap == pytest.approx(1.0) and np.isnan(per_class[0]) and per_class[1] == pytest.approx(1.0)
    r = paired_bootstrap([g], p, resamples=200, seed=1)
    assert r["diff"] == pytest.approx(100 * (g.ap - p.ap)) and r["ci_low"] > 0 and r["p_better"] == 1.0
    assert r["per_class"]["2"] == pytest.approx(0.0) and r["per_class"]["1"] > 0
    same = paired_bootstrap([p], p, resamples=50)
    assert same["diff"] == same["ci_low"] == same["ci_high"] == 0 and same["p_better"] == 0
    two = paired_bootstrap([g, p], p, resamples=50)  # the mean of two "seeds"
    assert two["diff"] == pytest.approx(50 * (g.ap - p.ap))
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap([BootstrapAP(gt, good, ids[:6])], p)


def test_bootstrap_ap_scores_one_size_range():
    from zoomdet.eval.coco_eval import BootstrapAP, coco_metrics, ground_truth_coco, paired_bootstrap

    # image 1: a small object (20 px) found exactly; image 2: a medium one (60 px) found half a box off
    gt = ground_truth_coco([(1, 200, 200, [[10.0, 10.0, 30.0, 30.0]], [1], [0]),
                            (2, 200, 200, [[50.0, 50.0, 110.0, 110.0]], [1], [0])])
    res = [{"image_id": 1, "category_id": 1, "bbox": [10.0, 10.0, 20.0, 20.0], "score": 0.9},
           {"image_id": 2, "category_id": 1, "bbox": [80.0, 50.0, 60.0, 60.0], "score": 0.9}]
    whole, small = BootstrapAP(gt, res, [1, 2]), BootstrapAP(gt, res, [1, 2], area="small")
    metrics = coco_metrics(gt, res, [1, 2])
    assert small.area == "small" and small.ap == pytest.approx(metrics["ap_small"]) == pytest.approx(1.0)
    assert whole.ap == pytest.approx(metrics["ap"]) and whole.ap < 0.6
    assert np.isnan(small(np.array([1, 1]))[0])  # image 2 alone has no small object
    with pytest.raises(ValueError, match="area range"):
        paired_bootstrap([small], whole)
    with pytest.raises(ValueError, match="not one of"):
        BootstrapAP(gt, res, [1, 2], area="huge")


def blob_scene(width: int, height: int, n: int, seed: int, sides=(4, 30)) -> torch.Tensor:
    """``Tensor[3, height, width]``: ``n`` non-touching bright squares of random sides and brightness on black."""
    rng = np.random.default_rng(seed)
    img, taken = torch.zeros(3, height, width), torch.zeros(height, width, dtype=torch.bool)
    while n:
        s = int(rng.integers(*sides))
        x, y = int(rng.integers(0, width - s)), int(rng.integers(0, height - s))
        if taken[max(0, y - 2):y + s + 2, max(0, x - 2):x + s + 2].any():
            continue
        img[:, y:y + s, x:x + s] = float(rng.uniform(0.55, 1.0))
        taken[y:y + s, x:x + s] = True
        n -= 1
    return img


@pytest.mark.parametrize("width,height,size,overlap", [(400, 320, 200, 0), (1000, 700, 256, 48), (300, 2000, 512, 64),
                                                       (256, 256, 256, 32)])
def test_scene_frames_cover_the_scene_and_their_cores_split_it_without_gaps(width, height, size, overlap):
    from zoomdet.zoom.windows import frame_cores, scene_frames

    frames = scene_frames(width, height, size, overlap)
    assert all(f.width <= size and f.height <= size and f.x1 <= width and f.y1 <= height for f in frames)
    covered = torch.zeros(height, width, dtype=torch.int64)
    for f in frames:
        covered[f.y0:f.y1, f.x0:f.x1] += 1
    assert covered.min() >= 1
    xs = sorted({(f.x0, f.x1) for f in frames})
    assert all(a[1] - b[0] >= overlap for a, b in zip(xs, xs[1:]))  # neighbours share at least the overlap
    assert len(frames) == (1 if max(width, height) <= size else len(frames))
    cores = frame_cores(frames)
    pts = np.random.default_rng(0).uniform([0, 0], [width, height], size=(2000, 2))
    pts = np.vstack([pts, [[0, 0], [width, height], [width, 0]]])  # the scene's corners and far edges too
    inside = ((pts[:, None, 0] >= cores[None, :, 0]) & (pts[:, None, 0] < cores[None, :, 2])
              & (pts[:, None, 1] >= cores[None, :, 1]) & (pts[:, None, 1] < cores[None, :, 3]))
    assert (inside.sum(1) == 1).all()  # every point in exactly one core
    boxes = np.array([f.as_tuple() for f in frames], dtype=float)
    owner = inside.argmax(1)[:2000]
    margin = np.minimum.reduce([pts[:2000, 0] - boxes[owner, 0], boxes[owner, 2] - pts[:2000, 0],
                                pts[:2000, 1] - boxes[owner, 1], boxes[owner, 3] - pts[:2000, 1]])
    edge = (pts[:2000, 0] < overlap / 2) | (pts[:2000, 0] > width - overlap / 2) | \
        (pts[:2000, 1] < overlap / 2) | (pts[:2000, 1] > height - overlap / 2)
    assert (margin[~edge] >= overlap / 2 - 1).all()  # a core point is at least half the overlap inside its frame
    with pytest.raises(ValueError, match="frame_size"):
        scene_frames(width, height, size, size)
    with pytest.raises(ValueError, match="frame_size"):
        ZoomConfig(frame_size=100, frame_overlap=80)


def test_a_scene_of_tiled_images_runs_as_one_episode_per_image():
    from tests.conftest import BlobDetector

    one = blob_scene(200, 160, 12, seed=1)
    scene = one.repeat(1, 2, 2)  # 2x2 copies: with no overlap, the frames are the copies
    eng = ZoomEngine(BlobDetector(), ZoomConfig(max_pixels_ratio=0.55, frame_size=200, frame_overlap=0))
    pol = make_policy("greedy-entropy", PolicyConfig(greedy_stop=0.0), zoom=eng.config)
    alone = eng.run(one, pol)
    r = eng.run(scene, pol)
    assert len(alone.regions) >= 1 and len(alone.detections) >= 8
    assert r.cost.model_input_pixels == 4 * alone.cost.model_input_pixels
    assert r.cost.detector_calls == 4 * alone.cost.detector_calls
    assert r.cost.pixels_ratio == pytest.approx(alone.cost.pixels_ratio) and r.cost.pixels_ratio <= 0.55
    shifts = [(0, 0), (200, 0), (0, 160), (200, 160)]
    want = sorted(b for dx, dy in shifts for b in alone.detections.shifted(dx, dy).boxes.tolist())
    assert sorted(r.detections.boxes.tolist()) == want
    assert [g.window for g in r.regions] == [g.window.shifted(dx, dy) for dx, dy in shifts for g in alone.regions]
    assert [g.id for g in r.regions] == list(range(len(r.regions)))
    assert ((r.region >= -1) & (r.region < len(r.regions))).all()
    stage_fine = r.stage == r.stage.max()  # the zoomed boxes point at a region holding them
    for box, k in zip(r.detections.boxes[stage_fine].tolist(), r.region[stage_fine].tolist()):
        win = r.regions[k].window
        assert win.x0 <= box[0] and box[2] <= win.x1 and win.y0 <= box[1] and box[3] <= win.y1
    assert r.timing["total"] >= r.timing["coarse"] + r.timing["fine"]


def test_a_scene_in_overlapping_frames_finds_each_object_once_and_stays_in_budget():
    from tests.conftest import BlobDetector

    scene = blob_scene(700, 500, 60, seed=2, sides=(6, 20))  # objects narrower than the overlap
    eng = ZoomEngine(BlobDetector(), ZoomConfig(max_pixels_ratio=20, max_steps=100, frame_size=256, frame_overlap=32))
    everything = RandomPolicy(k=100)  # zooms every candidate window of every frame: each frame's fine answer
    r = eng.run(scene, everything)
    fine = eng.run(scene, make_policy("fine"))  # plan policies run the scene whole
    assert len(fine.detections) == 60
    from torchvision.ops import box_iou

    match = box_iou(fine.detections.boxes, r.detections.boxes) >= 0.7  # a zoom window may cut a blob's edge
    assert len(r.detections) == 60 and (match.sum(1) == 1).all() and (match.sum(0) == 1).all()  # none twice, none lost
    budget = ZoomEngine(BlobDetector(), ZoomConfig(max_pixels_ratio=0.8, frame_size=256, frame_overlap=32))
    cheap = budget.run(scene, RandomPolicy(k=100), seed=3)
    assert 0.6 < cheap.cost.pixels_ratio <= 0.8  # the frames' coarse passes overlap, yet the scene's budget holds
    assert len(cheap.regions) > 0


def test_frames_share_the_scene_budget_where_their_gain_maps_point():
    from tests.conftest import BlobDetector

    left = blob_scene(200, 200, 14, seed=4, sides=(8, 24))
    scene = torch.cat([left, torch.zeros(3, 200, 200)], dim=2)  # objects in the left frame only
    eng = ZoomEngine(BlobDetector(), ZoomConfig(max_pixels_ratio=0.45, frame_size=200, frame_overlap=0))
    pol = make_policy("greedy-entropy", PolicyConfig(greedy_stop=0.0), zoom=eng.config)
    r = eng.run(scene, pol)
    alone = eng.run(left, pol)  # the left frame on its own budget: what an equal share would give it
    assert r.cost.pixels_ratio <= 0.45 and all(g.window.x1 <= 200 for g in r.regions)  # nothing to gain on the right
    assert r.cost.model_input_pixels - 2 * 100 * 100 > alone.cost.model_input_pixels - 100 * 100  # it got the right's share
    assert len(r.regions) > len(alone.regions)
    timed = eng.run(scene, pol, deadline=time.perf_counter() + 60)  # with a deadline: equal shares
    assert timed.cost.model_input_pixels - 2 * 100 * 100 == alone.cost.model_input_pixels - 100 * 100


def test_a_frame_passes_the_share_it_cannot_spend_to_the_frames_with_more_gain():
    from tests.conftest import BlobDetector

    left = blob_scene(200, 200, 14, seed=4, sides=(8, 24))
    right = blob_scene(200, 200, 1, seed=5, sides=(14, 24))  # a little gain: a share too small for a window
    scene = torch.cat([left, right], dim=2)
    runs = {}
    for carry in (False, True):
        eng = ZoomEngine(BlobDetector(), ZoomConfig(max_pixels_ratio=0.6, frame_size=200, frame_overlap=0,
                                                    frame_carry=carry))
        runs[carry] = eng.run(scene, make_policy("greedy-entropy", PolicyConfig(greedy_stop=0.0), zoom=eng.config))
    for r in runs.values():
        assert r.cost.pixels_ratio <= 0.6 and all(g.window.x1 <= 200 for g in r.regions)  # the right frame never zooms
    assert len(runs[True].regions) == len(runs[False].regions) + 1  # its share bought the left frame one more window
    assert runs[True].cost.model_input_pixels > runs[False].cost.model_input_pixels
    first = [g.window.as_tuple() for g in runs[False].regions]
    assert [g.window.as_tuple() for g in runs[True].regions][:len(first)] == first  # the same choices, then one more


def test_greedy_entropy_with_a_side_cap_zooms_only_where_small_objects_are():
    from tests.conftest import BlobDetector
    from zoomdet.rnet.model import EntropyGain

    img = torch.zeros(3, 400, 400)
    img[:, 20:100, 20:100] = 0.6  # one large uncertain object, top left
    for x, y in ((300, 300), (330, 320), (310, 350)):  # three small ones, bottom right
        img[:, y:y + 14, x:x + 14] = 0.6
    eng = ZoomEngine(BlobDetector(), ZoomConfig(max_pixels_ratio=0.6))
    runs = {side: eng.run(img, make_policy("greedy-entropy", PolicyConfig(greedy_stop=0.0, entropy_max_side=side),
                                           zoom=eng.config)) for side in (None, 40)}
    assert len(runs[None].coarse) == 4
    gains = EntropyGain(40).predict(runs[None].coarse)
    assert gains[0] == 0 and (gains[1:] == EntropyGain().predict(runs[None].coarse)[1:]).all() and (gains[1:] > 0.9).all()
    covers = lambda w, x, y: w.x0 <= x < w.x1 and w.y0 <= y < w.y1  # noqa: E731
    assert any(covers(g.window, 60, 60) for g in runs[None].regions)  # the plain rule zooms the large one too
    assert runs[40].regions and not any(covers(g.window, 60, 60) for g in runs[40].regions)
    assert all(covers(g.window, 320, 330) for g in runs[40].regions)
    assert runs[40].cost.pixels_ratio < runs[None].cost.pixels_ratio
    with pytest.raises(ValueError, match="max_side"):
        PolicyConfig(entropy_max_side=0)
    with pytest.raises(ValueError, match="max_side"):
        EntropyGain(-5)


def test_scenes_benchmark_pools_files_leaves_out_training_images_and_pastes_boxes_with_their_pixels(tmp_path):
    import json

    from PIL import Image

    mod = load_benchmark("scenes")

    root = tmp_path / "images"
    root.mkdir()
    cats = [{"id": 1, "name": "blob"}]

    def coco(name: str, ids: list[int]) -> Path:
        images, anns = [], []
        for i in ids:  # one bright square per image, at a place and of a brightness that name the image
            img = np.zeros((24, 32, 3), np.uint8)
            img[4 + i % 5:12 + i % 5, 6 + i % 7:14 + i % 7] = 20 * i
            Image.fromarray(img).save(root / f"{name}{i}.png")
            images.append({"id": i, "file_name": f"{name}{i}.png", "width": 32, "height": 24})
            anns.append({"id": 100 + i, "image_id": i, "category_id": 1, "bbox": [6 + i % 7, 4 + i % 5, 8, 8],
                         "area": 64, "iscrowd": 0})
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
        return p

    a, b = coco("a", [3, 1, 2]), coco("b", [5, 4, 6, 7, 8, 9])
    det_yaml = tmp_path / "det.yaml"
    det_yaml.write_text(f"train:\n  data: {b}\n  image_root: {root}\n  images: 2\n  seed: 0\n")
    pooled = mod.pool_coco([a, b], [str(det_yaml)])
    from zoomdet.config import load_config
    from zoomdet.detector.train import DetectorTrainConfig, training_image_ids

    seen = set(training_image_ids(load_config(DetectorTrainConfig, det_yaml).train))
    kept = [f"a{i}.png" for i in (1, 2, 3)] + [f"b{i}.png" for i in range(4, 10) if i not in seen]
    assert len(seen) == 2 and [im["file_name"] for im in pooled["images"]] == kept  # file by file, each in id order
    assert [im["id"] for im in pooled["images"]] == list(range(1, 8))
    scenes_json, images_json = mod.build_scenes(pooled, 2, tmp_path / "work", root)
    scenes = json.loads(scenes_json.read_text())
    assert [(s["width"], s["height"]) for s in scenes["images"]] == [(64, 48)]  # 7 images: one 2x2 scene, 3 unused
    assert [im["file_name"] for im in json.loads(images_json.read_text())["images"]] == kept[:4]
    canvas = np.asarray(Image.open(tmp_path / "work" / "images" / scenes["images"][0]["file_name"]))
    for ann, name in zip(scenes["annotations"], kept[:4]):  # each box is moved with its image's pixels
        x, y, w, h = map(int, ann["bbox"])
        src = np.asarray(Image.open(root / name))
        assert (canvas[y:y + h, x:x + w] == src[src.any(axis=2)].reshape(h, w, 3)).all() and canvas[y, x].any()
    one, orig = mod.pool_coco([a]), json.loads(a.read_text())  # one file keeps its ids
    assert [im["id"] for im in one["images"]] == [1, 2, 3]
    assert sorted(one["annotations"], key=lambda x: x["id"]) == sorted(orig["annotations"], key=lambda x: x["id"])
    with pytest.raises(SystemExit, match="none of --data"):
        mod.pool_coco([a], [str(det_yaml)])
    with pytest.raises(SystemExit, match="fewer than"):
        mod.build_scenes(mod.pool_coco([a]), 2, tmp_path / "small", root)


def test_scenes_benchmark_runs_a_framed_variant_beside_the_default(tmp_path, synth_small, tiny_checkpoint, monkeypatch):
    import json

    import zoomdet.eval.results as results

    mod = load_benchmark("scenes")
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path / "results")
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"checkpoint: {tiny_checkpoint}\ndevice: cpu\nbatch_size: 2\nzoom:\n  frame_overlap: 64\n")
    common = ["--config", str(cfg), "--data", str(synth_small), "--dataset", "toy", "--k", "2", "--frame-size", "400",
              "--policy", "fine", "--policy", "greedy-entropy", "--budget", "0.6", "--work", str(tmp_path / "work")]
    assert mod.main(common + ["--runs", "images", "frames"]) == 0
    assert mod.main(common + ["--runs", "frames", "--frames-set", "zoom.frame_carry=true", "--frames-tag", "carry"]) == 0
    rows = json.loads((tmp_path / "results" / "scenes.json").read_text())
    by = {(r["dataset"], r["policy"]): r for r in rows}
    assert {d for d, _ in by} == {"toy-k2-images", "toy-k2-frames", "toy-k2-frames-carry"}  # no whole-scene run
    assert by["toy-k2-images", "fine"]["scene_side"] == 320 and by["toy-k2-frames", "fine"]["scene_side"] == 640
    assert by["toy-k2-frames", "greedy-entropy"]["frame_carry"] is False
    assert by["toy-k2-frames-carry", "greedy-entropy"]["frame_carry"] is True
    assert by["toy-k2-frames-carry", "greedy-entropy"]["frame_size"] == 400
    assert (tmp_path / "work" / "eval-frames-carry" / "report.json").is_file()
    for d in ("toy-k2-frames", "toy-k2-frames-carry"):
        assert by[d, "greedy-entropy"]["pixels_ratio"] <= 0.6 + 1e-9


def test_greedy_entropy_plus_miss_reads_the_coarse_views_features_and_ranks_missed_objects_in(tiny_detector, tmp_path,
                                                                                                monkeypatch):
    """``greedy-entropy+miss``: the detector's feature maps of the coarse view, the policy built from a miss map
    checkpoint (and refused for the wrong one), and live episodes where the map moves the picks."""
    from types import SimpleNamespace

    from tests.conftest import BlobDetector
    from zoomdet.rnet.miss import EntropyMissPolicy, MissHead, level_stack

    # the feature maps: the backbone's levels as the detection pass computes them, cut to the view
    img = torch.rand(3, 240, 320)
    view = Window.full(320, 240, 0.5)
    maps, cell = tiny_detector.feature_maps(img, view)
    m = tiny_detector.model
    with torch.inference_mode():
        images, _ = m.transform([torch.nn.functional.interpolate(img[None], size=(120, 160), mode="bilinear",
                                                                 antialias=True, align_corners=False)[0]])
        full = m.backbone(images.tensors)
    c, h, w = maps["0"].shape
    assert (w - 1) * cell[0] < 320 <= w * cell[0] and (h - 1) * cell[1] < 240 <= h * cell[1]
    assert torch.allclose(maps["0"], full["0"][0, :, :h, :w], atol=1e-4)
    assert maps["1"].shape == (c, -(-h // 2), -(-w // 2))
    stack = level_stack(maps)
    assert stack.shape == (2 * c, h, w) and torch.equal(stack[c:, 3, 5], maps["1"][:, 1, 2])
    with pytest.raises(ValueError, match="R-CNN"):
        type(tiny_detector).feature_maps(SimpleNamespace(model=torch.nn.Linear(1, 1), device=torch.device("cpu")),
                                         img, view)

    # the policy from a checkpoint: checked against the detector and the coarse scale
    def save(name: str, **change) -> str:
        head = MissHead(2 * c)
        ckpt = {"kind": "zoomdet-miss-map", "state_dict": head.state_dict(), "in_channels": 2 * c, "hidden": 32,
                "detector_id": "blob", "coarse_scale": 0.5, **change}
        torch.save(ckpt, tmp_path / name)
        return str(tmp_path / name)

    good = save("miss.pt")
    zoom = ZoomConfig(coarse_scale=0.5, max_pixels_ratio=0.6)
    policy = make_policy("greedy-entropy+miss", PolicyConfig(miss_map=good, miss_beta=1e6, greedy_stop=0.0), zoom,
                         "blob")
    assert isinstance(policy, EntropyMissPolicy) and policy.name == "greedy-entropy+miss-b1e+06"
    for cfg, did, err, message in (
            (PolicyConfig(), "blob", ValueError, "needs a miss map"),
            (PolicyConfig(miss_map=good), "other", ValueError, "trained on detector blob"),
            (PolicyConfig(miss_map=save("scale.pt", coarse_scale=0.25)), "blob", ValueError, "coarse view at 0.25"),
            (PolicyConfig(miss_map=save("rnet.pt", kind="rnet")), "blob", ValueError, "not a miss map"),
            (PolicyConfig(miss_map=str(tmp_path / "none.pt")), "blob", FileNotFoundError, "not found")):
        with pytest.raises(err, match=message):
            make_policy("greedy-entropy+miss", cfg, zoom, did)
    with pytest.raises(ValueError, match="miss_beta"):
        PolicyConfig(miss_beta=0)

    # live: blobs the coarse pass sees top left and bottom right; the miss map puts its mass bottom left
    class FeatureBlobs(BlobDetector):
        calls = 0

        def feature_maps(self, image, window):
            FeatureBlobs.calls += 1
            time.sleep(0.05)
            return maps, (image.shape[-1] / w, image.shape[-2] / h)

    scene = torch.zeros(3, 240, 320)
    scene[:, 10:60, 10:60] = 0.6
    for x, y in ((250, 180), (270, 200)):
        scene[:, y:y + 12, x:x + 12] = 0.6
    spot = torch.full((h, w), 0.01)
    sx, sy = int(30 / (320 / w)), int(200 / (240 / h))  # the cell holding (30, 200): nothing detected there
    spot[sy, sx] = 1.0
    whole = ZoomConfig(coarse_scale=0.5, max_pixels_ratio=1.0)  # room for both windows that hold the spot
    eng = ZoomEngine(FeatureBlobs(), whole)
    rule = eng.run(scene, make_policy("greedy-entropy", PolicyConfig(greedy_stop=0.0), whole))
    runs = {}
    for beta in (1e-9, 1e6):
        pol = EntropyMissPolicy(policy.miss, beta, stop_gain=0.0)
        monkeypatch.setattr(pol.miss, "probs", lambda maps: spot)
        FeatureBlobs.calls = 0
        runs[beta] = eng.run(scene, pol)
        assert FeatureBlobs.calls == 1 and runs[beta].timing["gain"] >= 0.05  # once per episode, timed as gain
        assert runs[beta].cost.model_input_pixels == rule.cost.model_input_pixels - sum(
            r.window.input_pixels for r in rule.regions) + sum(r.window.input_pixels for r in runs[beta].regions)
    holds = lambda r: r.window.x0 <= 30 < r.window.x1 and r.window.y0 <= 200 < r.window.y1  # noqa: E731
    # a weightless map plays the rule's picks (then goes on where only the map holds mass), a heavy one zooms the
    # spot first, and only once: zooming zeroes it
    assert rule.regions and not any(holds(r) for r in rule.regions)
    assert [r.window for r in runs[1e-9].regions][:len(rule.regions)] == [r.window for r in rule.regions]
    assert sum(holds(SimpleNamespace(window=w)) for w in eng.candidates(320, 240)) == 2  # a second window holds it, and is not taken
    assert holds(runs[1e6].regions[0]) and not any(holds(r) for r in runs[1e6].regions[1:])
    assert len(runs[1e6].regions) > 1 and runs[1e6].cost.pixels_ratio <= 1.0


def test_the_coarse_pass_hands_its_own_backbone_maps_to_a_policy_that_reads_them(tiny_detector, tmp_path, monkeypatch):
    """``Detector.detect_with_maps`` is ``detect`` plus ``feature_maps`` from one forward pass, and the engine uses
    it for the coarse pass of a policy with ``reads_coarse_features``: the backbone runs once per detector call,
    a memoised pass hands the same maps again, and a tiled coarse view falls back to ``feature_maps``."""
    from types import SimpleNamespace

    from zoomdet.rnet.miss import EntropyMissPolicy, MissHead, MissMap

    img = torch.rand(3, 240, 320)
    view = Window.full(320, 240, 0.5)
    det, maps, cell = tiny_detector.detect_with_maps(img, view)
    (alone,) = tiny_detector.detect(img, [view])
    assert torch.equal(det.boxes, alone.boxes) and torch.equal(det.scores, alone.scores)
    assert torch.equal(det.features, alone.features)
    maps2, cell2 = tiny_detector.feature_maps(img, view)
    assert cell == cell2 and maps.keys() == maps2.keys()
    assert all(torch.allclose(maps[k], maps2[k], atol=1e-5) for k in maps)
    with pytest.raises(ValueError, match=r"Tensor\[3, H, W\]"):
        tiny_detector.detect_with_maps(img[0], view)
    with pytest.raises(ValueError, match="R-CNN"):
        type(tiny_detector).detect_with_maps(SimpleNamespace(model=torch.nn.Linear(1, 1)), img, view)

    c = maps["0"].shape[0]
    torch.save({"kind": "zoomdet-miss-map", "state_dict": MissHead(2 * c).state_dict(), "in_channels": 2 * c,
                "hidden": 32, "detector_id": tiny_detector.detector_id, "coarse_scale": 0.5}, tmp_path / "miss.pt")
    policy = EntropyMissPolicy(MissMap(tmp_path / "miss.pt", tiny_detector.detector_id, 0.5), 1.0, stop_gain=0.0)
    seen = []
    read = policy.miss.gain_map
    monkeypatch.setattr(policy.miss, "gain_map", lambda m, *a, **k: (seen.append(m), read(m, *a, **k))[1])
    backbone = tiny_detector.model.backbone
    calls = [0]
    forward = backbone.forward

    def counted(x):
        calls[0] += 1
        return forward(x)

    monkeypatch.setattr(backbone, "forward", counted)
    fetched = [0]
    original = type(tiny_detector).feature_maps
    monkeypatch.setattr(tiny_detector, "feature_maps",
                        lambda *a: (fetched.__setitem__(0, fetched[0] + 1), original(tiny_detector, *a))[1])
    zoom = ZoomConfig(coarse_scale=0.5, max_pixels_ratio=0.6)
    eng = ZoomEngine(tiny_detector, zoom)
    memo: dict = {}
    for run in range(2):
        calls[0] = 0
        res = eng.run(img, policy, pass_memo=memo)
        # one backbone pass per detector call, none over the coarse view again; the memo replays every pass
        assert res.cost.detector_calls >= 2 and calls[0] == (res.cost.detector_calls if run == 0 else 0)
        assert all(torch.allclose(seen[-1][k], maps[k], atol=1e-5) for k in maps)
    assert fetched[0] == 0 and len(seen) == 2

    tiled = ZoomEngine(tiny_detector, ZoomConfig(coarse_scale=0.5, max_pixels_ratio=0.6, max_pass_pixels=10_000))
    calls[0] = 0
    res = tiled.run(img, policy)
    assert fetched[0] == 1 and res.cost.detector_calls > 1
    assert all(torch.allclose(seen[-1][k], maps[k], atol=1e-5) for k in maps)
