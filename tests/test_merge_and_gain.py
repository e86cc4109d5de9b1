import pytest
import torch

from tests.conftest import load_benchmark
from zoomdet.types import Detections, Window
from zoomdet.zoom.gain import detection_gains
from zoomdet.zoom.merge import merge_zoom, sahi_postprocess


def dets(boxes, scores=None, labels=None):
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    n = len(b)
    s = torch.tensor(scores if scores is not None else [0.9] * n, dtype=torch.float32)
    l = torch.tensor(labels if labels is not None else [1] * n, dtype=torch.int64)
    return Detections(b, s, l)


def test_coarse_box_mostly_inside_window_is_replaced_by_fine():
    coarse = dets([[10, 10, 20, 20], [95, 10, 115, 20], [150, 150, 160, 160]], [0.5, 0.5, 0.5])
    win = Window(0, 0, 100, 100)
    fine = dets([[11, 11, 21, 21]], [0.95])
    out = merge_zoom(coarse, [fine], [win], 200, 200)
    got = {tuple(b) for b in out.detections.boxes.tolist()}
    # box 0 (IoS 1.0) replaced; box 1 has 5/20 = 25% inside -> kept; box 2 outside -> kept
    assert got == {(11.0, 11.0, 21.0, 21.0), (95.0, 10.0, 115.0, 20.0), (150.0, 150.0, 160.0, 160.0)}
    assert sorted(out.stage.tolist()) == [0, 0, 1]
    assert out.region[out.stage == 1].tolist() == [0]


def test_large_object_cut_by_window_border_keeps_the_whole_coarse_box():
    coarse = dets([[60, 20, 140, 80]], [0.8])  # 60% inside the window -> would be replaced
    win = Window(0, 0, 108, 100)  # interior right edge at x=108
    fragment = dets([[61, 21, 108, 79]], [0.7])  # what the fine pass sees: cut at the border
    out = merge_zoom(coarse, [fragment], [win], 200, 200)
    assert out.detections.boxes.tolist() == [[60.0, 20.0, 140.0, 80.0]]
    assert out.stage.tolist() == [0]


def test_two_overlapping_windows_seeing_one_object_give_one_box():
    coarse = dets([[45, 45, 55, 55]], [0.3])
    w1, w2 = Window(0, 0, 80, 80), Window(30, 30, 110, 110)
    f1, f2 = dets([[45, 45, 55, 55]], [0.9]), dets([[45.5, 45, 55.5, 55]], [0.85])
    out = merge_zoom(coarse, [f1, f2], [w1, w2], 200, 200)
    assert len(out.detections) == 1
    assert out.detections.scores.tolist() == [pytest.approx(0.9)]
    assert out.region.tolist() == [0]


def test_merge_with_no_windows_and_no_detections():
    out = merge_zoom(Detections.empty(), [], [], 100, 100)
    assert len(out.detections) == 0
    with pytest.raises(ValueError, match="fine results"):
        merge_zoom(Detections.empty(), [Detections.empty()], [], 100, 100)


def test_sahi_postprocess_kinds():
    d = dets([[0, 0, 10, 10], [0, 0, 10, 12], [50, 50, 60, 60]], [0.9, 0.8, 0.7])
    nms, idx = sahi_postprocess(d, "NMS", "IOU", 0.5)
    assert nms.boxes.tolist() == [[0, 0, 10, 10], [50, 50, 60, 60]] and idx.tolist() == [0, 2]
    g, _ = sahi_postprocess(d, "GREEDYNMM", "IOS", 0.5)
    assert g.boxes.tolist() == [[0, 0, 10, 12], [50, 50, 60, 60]]  # union box, best score
    assert g.scores.tolist() == [pytest.approx(0.9), pytest.approx(0.7)]
    # other classes never merge unless class_agnostic
    d2 = dets([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], [1, 2])
    assert len(sahi_postprocess(d2, "NMS", "IOU", 0.5)[0]) == 2
    assert len(sahi_postprocess(d2, "NMS", "IOU", 0.5, class_agnostic=True)[0]) == 1
    with pytest.raises(ValueError, match="postprocess type"):
        sahi_postprocess(d, "SOFTNMS")


def test_nmm_merges_transitively_but_greedy_does_not():
    # a-b overlap, b-c overlap, a-c do not: NMM chains them into one group
    d = dets([[0, 0, 10, 10], [6, 0, 16, 10], [12, 0, 22, 10]], [0.9, 0.8, 0.7])
    assert len(sahi_postprocess(d, "NMM", "IOS", 0.3)[0]) == 1
    assert len(sahi_postprocess(d, "GREEDYNMM", "IOS", 0.3)[0]) == 2


GT_B = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]])
GT_L = torch.tensor([1, 1])


def test_gain_of_matched_pair_follows_eq1():
    coarse, fine = dets([[0, 0, 10, 10]], [0.4]), dets([[0, 0, 10, 10]], [0.9])
    g = detection_gains(coarse, fine, GT_B, GT_L)
    # g=1: |1-0.4| - |1-0.9| = 0.5
    assert g.kind.tolist() == [0] and g.gains.tolist() == [pytest.approx(0.5)]


def test_gain_of_unmatched_detections():
    # fine-only TP gains p_h; fine-only FP loses p_h; coarse-only TP lost by zooming: -p_l; coarse-only FP removed: +p_l
    fine = dets([[50, 50, 60, 60], [100, 100, 110, 110]], [0.8, 0.6])
    coarse = dets([[0, 0, 10, 10], [200, 200, 210, 210]], [0.7, 0.3])
    g = detection_gains(coarse, fine, GT_B, GT_L)
    assert g.kind.tolist() == [1, 1, 2, 2]
    assert g.gains.tolist() == pytest.approx([0.8, -0.6, -0.7, 0.3])


def test_gain_when_zooming_hurts_and_crowd_regions():
    coarse, fine = dets([[0, 0, 10, 10]], [0.9]), dets([[0, 0, 10, 10]], [0.2])
    assert detection_gains(coarse, fine, GT_B, GT_L).total() == pytest.approx(-0.7)
    crowd = torch.tensor([False, True])
    fp_in_crowd = dets([[50, 50, 60, 60]], [0.9], [2])
    assert detection_gains(Detections.empty(), fp_in_crowd, GT_B, GT_L, crowd).gains.tolist() == [0.0]


def test_coarse_min_px_keeps_large_objects_from_the_coarse_pass():
    from zoomdet.zoom.gain import window_gain_items
    from zoomdet.zoom.merge import MergeConfig

    w = Window(0, 0, 200, 200)
    coarse = Detections(torch.tensor([[10.0, 10, 20, 20], [50, 50, 150, 150]]), torch.tensor([0.4, 0.8]), torch.tensor([1, 1]))
    fine = Detections(torch.tensor([[10.0, 10, 21, 21], [52, 52, 148, 148], [160, 160, 170, 170]]),
                      torch.tensor([0.9, 0.6, 0.7]), torch.tensor([1, 1, 1]))
    plain = merge_zoom(coarse, [fine], [w], 400, 400, MergeConfig())
    assert plain.stage.tolist().count(0) == 0 and len(plain.detections) == 3  # every coarse box replaced
    split = merge_zoom(coarse, [fine], [w], 400, 400, MergeConfig(coarse_min_px=50))
    got = {tuple(b): s for b, s in zip(split.detections.boxes.tolist(), split.stage.tolist())}
    # the 100-px object comes from the coarse pass, its 96-px fine twin is dropped; small ones from the fine pass
    assert got == {(50.0, 50, 150, 150): 0, (10.0, 10, 21, 21): 1, (160.0, 160, 170, 170): 1}
    gt = torch.tensor([[10.0, 10, 20, 20], [50, 50, 150, 150]])
    idx, items = window_gain_items(coarse, fine, w, gt, torch.tensor([1, 1]), None, 0.5, coarse_min_px=50)
    assert idx.tolist() == [0] and len(items.gains) == 2  # the small pair and the fine-only false positive
    idx_all, items_all = window_gain_items(coarse, fine, w, gt, torch.tensor([1, 1]), None, 0.5)
    assert idx_all.tolist() == [0, 1] and len(items_all.gains) == 3


def test_fuse_boxes_averages_a_cluster_by_score_and_keeps_its_top_score():
    from zoomdet.zoom.merge import fuse_boxes

    d = dets([[0, 0, 10, 10], [2, 0, 12, 10], [0, 0, 10, 10], [50, 50, 60, 60]], [0.6, 0.2, 0.9, 0.5], [1, 1, 2, 1])
    fused, head = fuse_boxes(d, iou=0.55)
    got = {(round(b[0], 3), round(s, 3), lab) for b, s, lab in zip(fused.boxes.tolist(), fused.scores.tolist(),
                                                                 fused.labels.tolist())}
    # boxes 0 and 1 (IoU 0.67, class 1) fuse: x0 = (0 * 0.6 + 2 * 0.2) / 0.8 = 0.5; box 2 is another class
    assert got == {(0.5, 0.6, 1), (0.0, 0.9, 2), (50.0, 0.5, 1)}
    assert sorted(head.tolist()) == [0, 2, 3]
    assert fused.scores.tolist() == sorted(fused.scores.tolist(), reverse=True)
    empty, h = fuse_boxes(Detections.empty())
    assert len(empty) == 0 and len(h) == 0


def test_fuse_merge_fuses_the_scales_inside_a_window_and_keeps_the_coarse_pass_outside():
    from zoomdet.zoom.merge import MergeConfig

    coarse = dets([[10, 10, 30, 30], [150, 150, 160, 160]], [0.5, 0.7])
    win = Window(0, 0, 100, 100)
    fine = dets([[12, 10, 32, 30], [60, 60, 70, 70]], [0.5, 0.8])
    out = merge_zoom(coarse, [fine], [win], 200, 200, MergeConfig(method="fuse"))
    got = sorted(zip(out.detections.boxes.tolist(), out.stage.tolist(), out.region.tolist()))
    assert got == [([11.0, 10.0, 31.0, 30.0], 0, -1),  # the object seen at both scales: the mean, its head coarse
                   ([60.0, 60.0, 70.0, 70.0], 1, 0),  # seen only by the window
                   ([150.0, 150.0, 160.0, 160.0], 0, -1)]  # outside the window: the coarse box as it was
    replaced = merge_zoom(coarse, [fine], [win], 200, 200)
    assert [12.0, 10.0, 32.0, 30.0] in replaced.detections.boxes.tolist()  # the paper's rule keeps the fine box
    with pytest.raises(ValueError, match="replace or fuse"):
        MergeConfig(method="vote")  # refused when the config is built, before any image is read
    for bad in ({"nms_iou": 3.0}, {"drop_ios": 0.0}, {"fuse_iou": -0.1}):
        with pytest.raises(ValueError, match="overlaps are fractions in"):
            MergeConfig(**bad)
    with pytest.raises(ValueError, match="border_px must be >= 0 and coarse_min_px > 0"):
        MergeConfig(coarse_min_px=0.0)


def test_fuse_score_mean_ranks_what_both_scales_saw_above_what_one_saw():
    from zoomdet.zoom.merge import STAGE_COARSE, STAGE_FINE, MergeConfig, fuse_boxes

    # one object seen by the coarse pass (0.6) and by two overlapping windows (0.8, 0.7); one only by a window (0.9)
    d = dets([[0, 0, 10, 10], [1, 0, 11, 10], [0, 1, 10, 11], [50, 50, 60, 60]], [0.6, 0.8, 0.7, 0.9])
    src = torch.tensor([STAGE_COARSE, STAGE_FINE, STAGE_FINE, STAGE_FINE])
    top, _ = fuse_boxes(d, 0.55, src, "max")
    mean, head = fuse_boxes(d, 0.55, src, "mean")
    assert top.scores.tolist() == pytest.approx([0.9, 0.8])  # max: the window-only box ranks first
    assert torch.equal(top.boxes, mean.boxes) and head.tolist() == [3, 1]  # same clusters, same fused boxes
    assert mean.scores.tolist() == pytest.approx([0.45, 0.7])  # (0 + 0.9) / 2 and (0.6 + 0.8) / 2: the order flips
    with pytest.raises(ValueError, match="needs each box's source pass"):
        fuse_boxes(d, 0.55, None, "mean")
    with pytest.raises(ValueError, match="fuse score must be one of max, mean"):
        fuse_boxes(d, 0.55, src, "avg")

    # through the merge: inside the window the two passes' mean, outside it the coarse pass's own score
    coarse = dets([[10, 10, 30, 30], [150, 150, 160, 160]], [0.5, 0.7])
    fine = dets([[12, 10, 32, 30], [60, 60, 70, 70]], [0.9, 0.8])
    out = merge_zoom(coarse, [fine], [Window(0, 0, 100, 100)], 200, 200, MergeConfig(method="fuse", fuse_score="mean"))
    got = sorted((b[0], round(s, 3)) for b, s in zip(out.detections.boxes.tolist(), out.detections.scores.tolist()))
    assert got == [(pytest.approx((10 * 0.5 + 12 * 0.9) / 1.4), 0.7), (60.0, 0.4), (150.0, 0.7)]
    # edge cases: no coarse boxes (window boxes alone, halved), no window boxes (the coarse pass as it was)
    mean_cfg = MergeConfig(method="fuse", fuse_score="mean")
    alone = merge_zoom(Detections.empty(), [fine], [Window(0, 0, 100, 100)], 200, 200, mean_cfg)
    assert sorted(alone.detections.scores.tolist()) == pytest.approx([0.4, 0.45]) and alone.stage.tolist() == [1, 1]
    outside_only = dets([[150, 150, 160, 160]], [0.7])
    none = merge_zoom(outside_only, [Detections.empty()], [Window(0, 0, 100, 100)], 200, 200, mean_cfg)
    assert none.detections.scores.tolist() == pytest.approx([0.7]) and none.region.tolist() == [-1]
    with pytest.raises(ValueError, match="fuse_score must be one of"):
        MergeConfig(fuse_score="avg")


def test_window_recall_counts_objects_well_inside_windows_and_what_each_pass_finds(tmp_path, synth_small, tiny_checkpoint,
                                                                                    monkeypatch, capsys):
    import json

    mod = load_benchmark("window_recall")
    gt = torch.tensor([[10.0, 10, 30, 30], [90, 10, 110, 30], [200, 200, 220, 220]])
    labels = torch.tensor([1, 1, 2])
    wins = [Window(0, 0, 100, 100), Window(150, 150, 250, 250)]
    # the second box crosses the first window's edge; with a margin of 8 px the first is inside, the third too
    assert mod.inside_windows(gt, wins, 8.0).tolist() == [True, False, True]
    assert mod.inside_windows(gt, wins[:1], 12.0).tolist() == [False, False, False]  # 10 px from the edge < 12
    det = dets([[11, 10, 31, 30], [200, 200, 220, 220], [90, 10, 110, 30]], [0.9, 0.9, 0.1], [1, 1, 1])
    # a box of the right class at IoU >= 0.5 with a score >= 0.3 finds the object; the wrong class or a low score not
    assert mod.found(det, gt, labels, 0.3, 0.5).tolist() == [True, False, False]
    assert mod.found(det, gt, labels, 0.0, 0.5).tolist() == [True, True, False]

    monkeypatch.setattr("zoomdet.eval.results.RESULTS_DIR", tmp_path / "results")
    args = ["--config", "configs/eval/synth.yaml", "--data", str(synth_small), "--dataset", "toy", "--policy", "random",
            "--budget", "0.8", "--margin", "0", "--score", "0", "--set", f"checkpoint={tiny_checkpoint}"]
    assert mod.main(args) == 0
    rows = {r["class"]: r for r in json.loads((tmp_path / "results" / "window_recall.json").read_text())}
    assert "all" in rows and len(rows) >= 2 and rows["all"]["images"] == 4
    assert rows["all"]["objects"] == sum(r["objects"] for c, r in rows.items() if c != "all") > 0
    for r in rows.values():
        for src in mod.SOURCES:
            assert 0.0 <= r[f"recall_{src}"] <= 1.0
    assert "frame_at_window_scale" in capsys.readouterr().out
    for bad in (["--budget", "0"], ["--iou", "0"], ["--margin", "-1"]):
        with pytest.raises(SystemExit):
            mod.main(args + bad)


def test_scale_fusion_benchmark_refuses_a_bad_pair():
    import argparse

    mod = load_benchmark("scale_fusion")
    assert mod.parse_pair("0.25+0.5") == (0.25, 0.5)
    for bad in ("0.5", "0.5+0.5", "0+1", "a+b", "0.25+0.5+1"):
        with pytest.raises(argparse.ArgumentTypeError):
            mod.parse_pair(bad)
    with pytest.raises(SystemExit):
        mod.main(["--checkpoint", "x.pt", "--data", "x.json", "--dataset", "x", "--pair", "1+1"])


def test_policies_benchmark_refuses_a_run_without_fine_and_a_bad_results_name(capsys):
    mod = load_benchmark("policies")
    base = ["--config", "configs/eval/hituav.yaml", "--data", "x.json", "--dataset", "x"]
    with pytest.raises(SystemExit):
        mod.main(base + ["--policy", "coarse", "--results", "r"])
    assert "--policy fine is needed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mod.main(base + ["--policy", "fine", "--results", "../elsewhere"])
    assert "--results is a file name" in capsys.readouterr().err


def test_latency_stage_table_labels_proposal_settings_and_one_stage_models(capsys):
    mod = load_benchmark("tables")
    timing = {k: 1.0 for k in mod.STAGES}
    base = dict(policy="coarse", budget=None, ap=0.1, ap_small=0.1, pixels_ratio=0.25, rel_time=0.3, rel_pixels=0.25,
                overhead_share=0.0, timing_ms=timing, image_dtype="uint8")
    mod.stage_table([dict(base, proposal_density=0), dict(base, proposal_density=3500, proposal_min=300),
                     dict(base, proposal_density=0, model="tiny_fcos"), dict(base, proposal_density=0, model="tiny_frcnn")])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| uint8")]
    assert [ln.split(" | ")[1] for ln in lines] == ["fixed 1000", "3500/Mpx, ≥ 300", "none (tiny_fcos)", "fixed 1000"]


def test_object_fine_gains_is_the_best_fine_score_over_the_best_coarse_score():
    from zoomdet.zoom.gain import object_fine_gains

    gt = torch.tensor([[0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110], [150, 150, 160, 160]], dtype=torch.float32)
    labels = torch.tensor([1, 1, 1, 2])
    coarse = dets([[0, 0, 10, 10], [50, 50, 60, 60], [150, 150, 160, 160]], [0.3, 0.8, 0.9], [1, 1, 1])
    # object 0: fine finds it at 0.9 in the second window (0.5 in the first); object 1: the coarse pass was better;
    # object 2: only a box at IoU 0.25 (no match); object 3: the coarse box has the wrong class, the fine one the right
    fine_a = dets([[0, 0, 10, 10], [100, 100, 105, 105]], [0.5, 0.99], [1, 1])
    fine_b = dets([[1, 0, 11, 10], [50, 50, 60, 60], [150, 150, 160, 160]], [0.9, 0.6, 0.7], [1, 1, 2])
    g = object_fine_gains(coarse, [fine_a, fine_b], gt, labels)
    assert g.shape == (4,) and g.dtype == torch.float32
    torch.testing.assert_close(g, torch.tensor([0.6, 0.0, 0.0, 0.7]))
    assert object_fine_gains(coarse, [], gt, labels).tolist() == [0.0] * 4
    assert len(object_fine_gains(coarse, [fine_a], torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))) == 0
