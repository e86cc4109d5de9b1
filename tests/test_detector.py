import pytest
import torch

from tests.conftest import load_benchmark, tiny_model_config
from torchvision.ops import MultiScaleRoIAlign

from zoomdet.detector.detector import (MIN_PROPOSALS, Detector, crop_window, load_checkpoint, postprocess_with_index,
                                       save_checkpoint)
from zoomdet.detector.models import MODEL_NAMES, ModelConfig, PinnedScaleTransform, ThreadedRoIAlign, build_model
from zoomdet.types import Window


def test_forward_backward_on_cpu():
    torch.manual_seed(0)
    model = build_model(tiny_model_config()).train()
    images = [torch.rand(3, 128, 160), torch.rand(3, 128, 160)]
    targets = [{"boxes": torch.tensor([[10.0, 10, 30, 40]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]  # an empty image
    losses = model(images, targets)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_input_scale_is_pinned(tiny_detector):
    """The model sees exactly window.input_size pixels: torchvision's resize is off."""
    seen = []
    hook = tiny_detector.model.backbone.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
    image = torch.rand(3, 256, 320)
    tiny_detector.detect(image, [Window.full(320, 256, 0.5), Window(0, 0, 128, 96, 1.0)])
    hook.remove()
    assert isinstance(tiny_detector.model.transform, PinnedScaleTransform)
    # 160x128 and 128x96 inputs, padded only to a multiple of 32 (no resize to min_size=800)
    assert sorted(seen) == [(96, 128), (128, 160)]


def test_detect_returns_image_frame_boxes_and_features(tiny_detector):
    image = torch.rand(3, 200, 300)
    before = image.clone()
    win = Window(100, 50, 300, 200, 0.5)
    (d,) = tiny_detector.detect(image, [win])
    assert torch.equal(image, before)
    assert d.features is not None and d.features.shape == (len(d), tiny_detector.feature_dim)
    if len(d):
        assert (d.boxes[:, 0] >= 100 - 1e-3).all() and (d.boxes[:, 2] <= 300 + 1e-3).all()
        assert set(d.labels.tolist()) <= {1, 2}


def test_features_are_optional_and_uint8_crops_match_float_crops(tiny_detector):
    u8 = (torch.rand(3, 96, 128) * 255).to(torch.uint8)
    f32 = u8.float() / 255
    full = Window.full(128, 96)
    (a,), (b,) = tiny_detector.detect(f32, [full]), tiny_detector.detect(f32, [full], features=False)
    assert a.features is not None and b.features is None
    assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores)
    (c,) = tiny_detector.detect_crops([u8], features=False)  # what the service sends for a scale-1 crop
    assert torch.equal(c.boxes, b.boxes) and torch.equal(c.scores, b.scores)


def test_detect_on_blank_image_and_bad_shape(tiny_detector):
    res = tiny_detector.detect(torch.zeros(3, 64, 64), [Window.full(64, 64)])
    assert len(res) == 1 and res[0].boxes.shape[1] == 4
    with pytest.raises(ValueError, match=r"Tensor\[3, H, W\]"):
        tiny_detector.detect(torch.zeros(64, 64), [Window.full(64, 64)])
    with pytest.raises(ValueError, match="leaves"):
        crop_window(torch.zeros(3, 64, 64), Window(0, 0, 65, 64))


def test_checkpoint_round_trip(tmp_path, tiny_detector):
    path = tmp_path / "m.pt"
    save_checkpoint(path, tiny_detector.model, tiny_detector.config, tiny_detector.categories, {"note": "x"})
    payload = torch.load(path, weights_only=True)  # loadable without unpickling code
    assert payload["extra"] == {"note": "x"}
    det2 = Detector.from_checkpoint(path)
    image = torch.rand(3, 96, 128)
    a = tiny_detector.detect(image, [Window.full(128, 96)])[0]
    b = det2.detect(image, [Window.full(128, 96)])[0]
    assert torch.allclose(a.boxes, b.boxes) and torch.allclose(a.scores, b.scores)
    assert det2.categories == {1: "person", 2: "car"} and len(det2.checkpoint_id) == 12


def test_devices_are_checked_before_a_model_moves():
    import torch

    from zoomdet.detector.detector import checked_device

    assert checked_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="'tpu' is not a torch device"):
        checked_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available on this machine"):
            checked_device("cuda:0")


def test_bad_checkpoint_and_model_name(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"state_dict": {}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a ZoomDet detector checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")  # not a torch file at all, and one cut short
    with pytest.raises(ValueError, match=r"text.pt is not a ZoomDet detector checkpoint \(torch.load failed"):
        load_checkpoint(tmp_path / "text.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "bad.pt").read_bytes()[:100])
    with pytest.raises(ValueError, match="cut.pt is not a ZoomDet detector checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(ValueError, match="unknown model name"):
        build_model(ModelConfig(name="yolo"))


@pytest.mark.parametrize("name", MODEL_NAMES[1:])
def test_torchvision_zoo_models_build_with_pinned_transform(name):
    model = build_model(ModelConfig(name=name, num_classes=3))
    assert isinstance(model.transform, PinnedScaleTransform)


def test_training_checkpoints_and_resumes(tmp_path, synth_small, capsys):
    import json

    from zoomdet.detector.train import DetectorTrainConfig, TrainConfig, train_detector

    model = tiny_model_config(num_classes=0)  # 0: derived from the data (3 categories + background)
    train = TrainConfig(data=str(synth_small), val_data=str(synth_small), out=str(tmp_path / "run"), crop_size=96,
                        batch_size=2, max_iters=2, checkpoint_every=1, val_images=1, warmup_iters=1)
    train_detector(DetectorTrainConfig(model, train), progress=False)
    first = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert first["extra"]["iteration"] == 2 and first["model_config"]["num_classes"] == 4
    # "interrupted" at 2 of 3 iterations: the same command with a higher limit continues from there
    train.max_iters = 3
    train_detector(DetectorTrainConfig(model, train), progress=False)
    assert "resuming" in capsys.readouterr().out
    final = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert final["extra"]["iteration"] == 3
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert set(report["scales"]) == {"1.0", "0.5"} and "ap50_small" in report["scales"]["1.0"]


def test_training_on_a_seeded_sample_of_images(tmp_path, synth_small, monkeypatch):
    from zoomdet.data.coco import CocoDataset
    from zoomdet.detector.train import DetectorTrainConfig, TrainConfig, train_detector

    loaded = []
    real = CocoDataset.load_image
    monkeypatch.setattr(CocoDataset, "load_image", lambda self, iid, **kw: loaded.append(iid) or real(self, iid, **kw))
    model = tiny_model_config(num_classes=0)
    train = TrainConfig(data=str(synth_small), val_data=None, out=str(tmp_path / "run"), crop_size=96, batch_size=4,
                        max_iters=6, warmup_iters=1, images=2, seed=5)
    train_detector(DetectorTrainConfig(model, train), progress=False)
    sample = CocoDataset(str(synth_small)).subset(2, 5)
    assert set(loaded) == set(sample) and len(sample) == 2  # the images of the sample, and no others
    train.images = -1
    with pytest.raises(ValueError, match="train.images must be >= 0"):
        train_detector(DetectorTrainConfig(model, train), resume=False, progress=False)
    import json

    from zoomdet.data.coco import DatasetError

    empty = json.loads(synth_small.read_text())  # the same images with no object boxed: nothing to learn
    empty["annotations"] = []
    (tmp_path / "empty.json").write_text(json.dumps(empty))
    train.data, train.images, train.out = str(tmp_path / "empty.json"), 0, str(tmp_path / "nothing")
    train.image_root = str(CocoDataset(str(synth_small)).image_root)
    with pytest.raises(DatasetError, match="hold no object"):
        train_detector(DetectorTrainConfig(model, train), resume=False, progress=False)
    assert not (tmp_path / "nothing").exists()  # refused before any output folder is made


def test_fine_tuning_starts_from_a_checkpoint_draws_one_crop_size_per_batch_and_refuses_another_model(
        tmp_path, synth_small, monkeypatch):
    from dataclasses import replace

    import zoomdet.detector.train as train_mod
    from zoomdet.detector.detector import load_checkpoint, save_checkpoint
    from zoomdet.detector.train import DetectorTrainConfig, TrainConfig, train_detector

    model = tiny_model_config(num_classes=4)
    base = TrainConfig(data=str(synth_small), val_data=None, out=str(tmp_path / "base"), crop_size=96, batch_size=2,
                       max_iters=2, warmup_iters=1)
    init = train_detector(DetectorTrainConfig(model, base), progress=False)
    sizes = []
    real = train_mod._sample_crop
    monkeypatch.setattr(train_mod, "_sample_crop", lambda rng, image, boxes, cfg, crop_size: (
        sizes.append(crop_size) or real(rng, image, boxes, cfg, crop_size)))
    # a learning rate of 1e-9: the fine-tuned weights are the initial ones to within 1e-9 per step
    tuned = replace(base, out=str(tmp_path / "tuned"), init=str(init), crop_sizes=[64, 80], lr=1e-9, max_iters=6,
                    batch_size=4)
    train_detector(DetectorTrainConfig(model, tuned), progress=False)

    def weights(path):  # parameters only: batch norm's running statistics follow the crops whatever the rate
        return {k: v.detach() for k, v in load_checkpoint(path)[0].named_parameters()}

    start, after = weights(init), weights(tmp_path / "tuned" / "model.pt")
    assert all(torch.allclose(start[k].float(), after[k].float(), atol=1e-6) for k in start)
    assert set(sizes) == {64, 80} and len(sizes) == 24
    assert all(len(set(sizes[i:i + 4])) == 1 for i in range(0, 24, 4))  # 2 images x 2 crops a batch, one side
    scratch = replace(tuned, out=str(tmp_path / "scratch"), init=None)  # without init: the seed's random weights
    train_detector(DetectorTrainConfig(model, scratch), progress=False)
    fresh = weights(tmp_path / "scratch" / "model.pt")
    assert any(not torch.allclose(start[k].float(), fresh[k].float(), atol=1e-6) for k in start)

    other = replace(model, widths=[8, 16, 24, 32])
    with pytest.raises(ValueError, match="another model: widths"):
        train_detector(DetectorTrainConfig(other, replace(tuned, out=str(tmp_path / "x"))), progress=False)
    loaded, cfg, cats, _ = load_checkpoint(init)
    save_checkpoint(tmp_path / "renamed.pt", loaded, cfg, {k: v + "!" for k, v in cats.items()})
    for name, init_file, error, match in (("y", "renamed.pt", ValueError, "categories"),
                                          ("z", "no.pt", FileNotFoundError, "not found")):
        with pytest.raises(error, match=match):
            run = replace(tuned, out=str(tmp_path / name), init=str(tmp_path / init_file))
            train_detector(DetectorTrainConfig(model, run), progress=False)
    assert not any((tmp_path / d).exists() for d in ("x", "y", "z"))  # refused before any output folder is made
    for bad in ([16], [96.5], [0]):
        with pytest.raises(ValueError, match="crop_sizes"):
            TrainConfig(crop_sizes=bad)


def test_a_time_budget_decays_the_learning_rate_fully():
    from zoomdet.detector.train import TrainConfig, learning_rate

    tc = TrainConfig(lr=1e-3, warmup_iters=10, max_iters=10_000, max_minutes=10)
    assert learning_rate(tc, 0, 0) == pytest.approx(1e-4)  # warm-up
    assert learning_rate(tc, 20, 1) == pytest.approx(1e-3, rel=1e-3)
    # at iteration 300 of 10,000 but 9 of 10 minutes in, the schedule follows the clock
    assert learning_rate(tc, 300, 540) < 0.1e-3
    assert learning_rate(tc, 300, 600) == pytest.approx(0.05e-3)
    untimed = TrainConfig(lr=1e-3, warmup_iters=10, max_iters=10_000, max_minutes=0)
    assert learning_rate(untimed, 300, 10_000) > 0.9e-3  # no time budget: iterations only


def test_proposal_density_scales_rpn_work_with_input_area_and_leaves_the_model_alone():
    torch.manual_seed(0)
    cfg = tiny_model_config(num_classes=3)
    model = build_model(cfg)
    fixed = Detector(model, cfg, {1: "a", 2: "b"})
    scaled = Detector(model, cfg, {1: "a", 2: "b"}, proposal_density=2500)
    assert fixed.proposals_for(640 * 512) is None
    assert scaled.proposals_for(640 * 512) == 820 and scaled.proposals_for(64 * 64) == MIN_PROPOSALS
    floored = Detector(model, cfg, {1: "a", 2: "b"}, proposal_density=2500, proposal_min=400)
    assert floored.proposals_for(64 * 64) == 400 and floored.proposals_for(640 * 512) == 820
    with pytest.raises(ValueError, match="proposal_min"):
        Detector(model, cfg, {1: "a", 2: "b"}, proposal_density=2500, proposal_min=0)
    assert scaled.proposals_for(4000 * 4000) == 1000  # never above the model's own count
    seen = []
    hook = model.roi_heads.box_roi_pool.register_forward_hook(lambda m, a, out: seen.append(out.shape[0]))
    image = torch.rand(3, 256, 320)
    scaled.detect(image, [Window.full(320, 256, 1.0)])
    fixed.detect(image, [Window.full(320, 256, 1.0)])
    hook.remove()
    # each call pools once, for the box head over its proposals (the detections' features come from that pass)
    assert len(seen) == 2 and seen[0] <= scaled.proposals_for(320 * 256) == 205 < seen[1] <= 1000
    assert model.rpn._post_nms_top_n["testing"] == 1000
    with pytest.raises(ValueError, match="proposal_density"):
        Detector(model, cfg, {1: "a", 2: "b"}, proposal_density=-1)


def test_detector_scale_rows_are_relative_to_scale_one_and_refuse_a_missing_reference():
    """benchmarks/detector_scales.py and airbus.py rows: pixels = scale², AP and time relative to scale 1.0."""
    from zoomdet.eval.results import detector_scale_rows

    m = lambda ap, sec: {"ap": ap, "ap50": 2 * ap, "ap_small": ap, "ap_medium": ap, "ap_large": ap,  # noqa: E731
                         "seconds_per_image": sec}
    doc = {"images": 7, "scales": {"1.0": m(0.4, 2.0), "0.5": m(0.3, 0.5)}}
    rows = {r["policy"]: r for r in detector_scale_rows(doc, "toy", "cmd", "2026-12-02")}
    assert rows["detector@0.5"]["pixels_ratio"] == pytest.approx(0.25)
    assert rows["detector@0.5"]["rel_ap"] == pytest.approx(0.75) and rows["detector@0.5"]["rel_time"] == pytest.approx(0.25)
    assert rows["detector@1.0"]["rel_ap"] == 1.0 and rows["detector@1.0"]["images"] == 7
    with pytest.raises(ValueError, match="scale 1.0"):
        detector_scale_rows({"images": 7, "scales": {"0.5": m(0.3, 0.5)}}, "toy", "cmd", "2026-12-02")


def test_threaded_roi_align_is_bit_identical_to_torchvisions_and_used_by_every_rcnn():
    """The RoIs of an inference call are split over the intra-op threads; the pooled features must not change."""
    torch.manual_seed(0)
    feats = {k: torch.randn(2, 8, 64 // 2 ** i, 80 // 2 ** i) for i, k in enumerate("0123")}
    boxes = []
    for n in (300, 77):  # two images, chunks of unequal length
        xy = torch.rand(n, 2) * 250
        boxes.append(torch.cat([xy, xy + 4 + torch.rand(n, 2) * 60], 1))
    sizes = [(256, 320), (256, 320)]
    ref = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)(feats, boxes, sizes)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        pool = ThreadedRoIAlign(["0", "1", "2", "3"], 7, 2).eval()
        with torch.inference_mode():
            out = pool(feats, boxes, sizes)
            small = pool(feats, [b[:10] for b in boxes], sizes)  # too few RoIs to split
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(out, ref)
    assert torch.equal(small, MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)(feats, [b[:10] for b in boxes], sizes))
    for name in ("tiny_frcnn", "fasterrcnn_mobilenet_v3_large_fpn"):
        model = build_model(tiny_model_config() if name == "tiny_frcnn" else ModelConfig(name=name, num_classes=3))
        assert type(model.roi_heads.box_roi_pool) is ThreadedRoIAlign


def test_detection_features_are_their_proposals_box_head_vectors():
    """postprocess_with_index keeps torchvision's detections and names the proposal each came from."""
    torch.manual_seed(0)
    cfg = tiny_model_config(score_thresh=0.0)
    det = Detector(build_model(cfg), cfg, {1: "a", 2: "b"})
    m, rh = det.model, det.model.roi_heads
    crops = [torch.rand(3, 96, 128), torch.rand(3, 96, 128)]
    with torch.inference_mode():
        images, _ = m.transform(crops)
        feats = m.backbone(images.tensors)
        proposals, _ = m.rpn(images, feats)
        head = rh.box_head(rh.box_roi_pool(feats, proposals, images.image_sizes))
        logits, regression = rh.box_predictor(head)
        ours = postprocess_with_index(rh, logits, regression, proposals, images.image_sizes)
        boxes, scores, labels = rh.postprocess_detections(logits, regression, proposals, images.image_sizes)
        got = det.detect_crops(crops)
    all_proposals = torch.cat(proposals)
    for i, (o, b, s, lab, d) in enumerate(zip(ours, boxes, scores, labels, got)):
        assert len(b) > 0
        assert torch.equal(o["boxes"], b) and torch.equal(o["scores"], s) and torch.equal(o["labels"], lab)
        # the feature of a detection is the box head's vector of its proposal, pooled at the proposal's box
        with torch.inference_mode():
            at = [all_proposals[o["index"]][:5] if j == i else torch.zeros(0, 4) for j in range(2)]
            again = rh.box_head(rh.box_roi_pool(feats, at, images.image_sizes))
        assert torch.allclose(d.features[:5], again, atol=1e-5)
        assert torch.equal(d.features, head[o["index"]])


def test_uint8_crops_are_resized_in_uint8_within_one_level_of_the_float_path():
    torch.manual_seed(0)
    u8 = (torch.rand(3, 150, 200) * 255).to(torch.uint8)
    f32 = u8.float() / 255
    for win in (Window(10, 20, 190, 140, 0.5), Window.full(200, 150, 0.37), Window(0, 0, 64, 48, 2.0)):
        a, b = crop_window(u8, win), crop_window(f32, win)
        assert a.dtype == torch.float32 and a.shape == b.shape == (3, *win.input_size)
        assert (a - b).abs().max() <= 1 / 255 + 1e-6  # fixed-point weights: within one 8-bit level
        assert 0 <= a.min() and a.max() <= 1
    same = Window(5, 5, 105, 85, 1.0)
    assert torch.equal(crop_window(u8, same), crop_window(f32, same))


def test_rpn_inference_settings_come_from_the_model_config_and_old_checkpoints_take_the_defaults(tmp_path):
    torch.manual_seed(0)
    rpn = build_model(tiny_model_config()).rpn
    # torchvision's own test-time counts for its FPN R-CNNs, and the objectness floor of its 320 px mobile model
    assert (rpn._pre_nms_top_n["testing"], rpn._post_nms_top_n["testing"], rpn.score_thresh) == (1000, 1000, 0.05)
    assert (rpn._pre_nms_top_n["training"], rpn._post_nms_top_n["training"]) == (2000, 1000)  # training unchanged
    cfg = tiny_model_config(rpn_pre_nms_top_n=120, rpn_post_nms_top_n=40, rpn_score_thresh=0.0)
    model = build_model(cfg)
    assert (model.rpn._pre_nms_top_n["testing"], model.rpn._post_nms_top_n["testing"], model.rpn.score_thresh) == (120, 40, 0.0)
    seen = []
    model.roi_heads.box_roi_pool.register_forward_hook(lambda m, a, out: seen.append(out.shape[0]))
    Detector(model, cfg, {1: "a", 2: "b"}).detect(torch.rand(3, 128, 160), [Window.full(160, 128, 1.0)])
    assert seen == [40]  # an untrained RPN scores every anchor near 0.5: exactly the cap reaches the box head
    # a checkpoint written before these fields existed loads with the defaults
    path = tmp_path / "old.pt"
    save_checkpoint(path, model, cfg, {1: "a", 2: "b"})
    payload = torch.load(path, weights_only=True)
    for k in ("rpn_pre_nms_top_n", "rpn_post_nms_top_n", "rpn_score_thresh"):
        del payload["model_config"][k]
    torch.save(payload, path)
    old, old_cfg, _, _ = load_checkpoint(path)
    assert old_cfg.rpn_post_nms_top_n == 1000 and old.rpn._pre_nms_top_n["testing"] == 1000
    for bad in (dict(rpn_pre_nms_top_n=0), dict(rpn_post_nms_top_n=-5), dict(rpn_score_thresh=1.0),
                dict(rpn_score_thresh=-0.1)):
        with pytest.raises(ValueError, match="rpn_"):
            build_model(tiny_model_config(**bad))


def test_box_head_rank_is_the_truncated_svd_of_the_trained_layer_and_keeps_older_detector_ids(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_model_config()
    model = build_model(cfg).eval()
    path = tmp_path / "det.pt"
    save_checkpoint(path, model, cfg, {1: "a", 2: "b"})
    full, _, _, _ = load_checkpoint(path)
    fc6 = full.roi_heads.box_head.fc6
    x = torch.randn(50, fc6.in_features)
    d = min(fc6.in_features, fc6.out_features)
    errors = []
    for rank in (4, d // 2, d):
        low, low_cfg, _, _ = load_checkpoint(path, {"box_head_rank": rank})
        assert low_cfg.box_head_rank == rank
        with torch.no_grad():
            errors.append(float((low.roi_heads.box_head.fc6(x) - fc6(x)).norm() / fc6(x).norm()))
    # the error falls as the rank grows, and the full rank is the layer itself (up to float round-off)
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-5
    low, _, _, _ = load_checkpoint(path, {"box_head_rank": 4})
    first, second = low.roi_heads.box_head.fc6
    assert first.weight.shape == (4, fc6.in_features) and second.weight.shape == (fc6.out_features, 4)
    assert torch.equal(second.bias, fc6.bias)
    # the same weights with the default settings keep the id they had before these fields existed
    plain = Detector.from_checkpoint(path)
    assert Detector.from_checkpoint(path, settings={"box_head_rank": 0, "roi_sampling_ratio": 2}).detector_id == plain.detector_id
    assert Detector.from_checkpoint(path, settings={"box_head_rank": 4}).detector_id != plain.detector_id
    assert Detector.from_checkpoint(path, settings={"roi_sampling_ratio": 1}).detector_id != plain.detector_id
    with pytest.raises(ValueError, match="box_head_rank"):
        load_checkpoint(path, {"box_head_rank": -1})


def test_roi_sampling_ratio_reaches_the_pool_and_bad_values_are_refused():
    model = build_model(tiny_model_config(roi_sampling_ratio=1))
    assert model.roi_heads.box_roi_pool.sampling_ratio == 1
    assert build_model(tiny_model_config()).roi_heads.box_roi_pool.sampling_ratio == 2  # as the models were trained
    with pytest.raises(ValueError, match="roi_sampling_ratio"):
        build_model(tiny_model_config(roi_sampling_ratio=-1))
    with pytest.raises(ValueError, match="two-layer MLP box head"):
        from zoomdet.detector.models import factorize_box_head
        factorize_box_head(torch.nn.Linear(2, 2), 1)


def test_latency_benchmark_parses_detector_setting_groups_and_refuses_malformed_ones(capsys):
    import argparse

    mod = load_benchmark("latency")
    ap = argparse.ArgumentParser()
    assert mod.parse_detector_set(ap, "-") == {}
    assert mod.parse_detector_set(ap, "roi_sampling_ratio=1,box_head_rank=64") == {"roi_sampling_ratio": "1",
                                                                                   "box_head_rank": "64"}
    for bad in ("roi_sampling_ratio", "roi_sampling_ratio=", "=1", "a=1,,b=2"):
        with pytest.raises(SystemExit):
            mod.parse_detector_set(ap, bad)
    assert "FIELD=VALUE" in capsys.readouterr().err


def test_latency_benchmark_times_afresh_unless_asked_to_resume(tmp_path):
    mod = load_benchmark("latency")
    out = tmp_path / "synth-uint8-d0-m100"
    out.mkdir()
    (out / "partial.json").write_text("{}")
    mod.fresh_out(out, resume=True)
    assert (out / "partial.json").exists()
    mod.fresh_out(out, resume=False)
    assert not out.exists() and tmp_path.exists()
    mod.fresh_out(out, resume=False)  # nothing there: nothing to do


def test_call_cost_benchmark_fits_fixed_and_per_pixel_cost_and_refuses_bad_input(tmp_path, capsys):
    mod = load_benchmark("call_cost")
    fixed, per = mod.fit_line([0.1, 0.2, 0.4], [25.0, 30.0, 40.0])
    assert fixed == pytest.approx(20.0) and per == pytest.approx(50.0)
    with pytest.raises(ValueError, match="two different input sizes"):
        mod.fit_line([0.1, 0.1], [1.0, 2.0])
    for bad in (["--images", "0"], ["--window-sides", "1.5"], ["--scales", "0"]):
        with pytest.raises(SystemExit):
            mod.main(["--checkpoint", "x.pt", "--data", "x.json", "--dataset", "d"] + bad)
    assert "must be" in capsys.readouterr().err



def test_tiny_fcos_trains_detects_through_the_detector_and_round_trips(tmp_path):
    """The one-stage model: the same backbone and FPN as tiny_frcnn, FCOS's head, no RoI features."""
    torch.manual_seed(0)
    cfg = tiny_model_config(name="tiny_fcos", head_convs=1, fpn_channels=32)
    model = build_model(cfg).train()
    assert not hasattr(model, "rpn") and not hasattr(model, "roi_heads")
    images = [torch.rand(3, 128, 160), torch.rand(3, 128, 160)]
    targets = [{"boxes": torch.tensor([[10.0, 10, 30, 40], [60, 50, 140, 120]]), "labels": torch.tensor([1, 2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model(images, targets)
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())
    # more head layers, more weights; the level sizes are the strides 4..64
    assert sum(p.numel() for p in build_model(tiny_model_config(name="tiny_fcos", head_convs=2, fpn_channels=32)).parameters()) > \
        sum(p.numel() for p in model.parameters())
    assert [s[0] for s in model.anchor_generator.sizes] == [4, 8, 16, 32, 64]

    model.eval()
    model.score_thresh = 0.0  # an untrained head scores everything near its prior: keep some boxes
    det = Detector(model, cfg, {1: "person", 2: "car"})
    assert det.feature_dim is None
    image = torch.rand(3, 200, 300)
    (d,) = det.detect(image, [Window(100, 50, 300, 200, 0.5)])
    assert len(d) > 0 and d.features is None
    assert (d.boxes[:, 0] >= 100 - 1e-3).all() and (d.boxes[:, 2] <= 300 + 1e-3).all()
    assert set(d.labels.tolist()) <= {1, 2}

    path = tmp_path / "fcos.pt"
    save_checkpoint(path, model, cfg, {1: "person", 2: "car"})
    again = Detector.from_checkpoint(path)
    assert again.config.name == "tiny_fcos" and again.config.head_convs == 1
    with pytest.raises(ValueError, match="head_convs"):
        build_model(tiny_model_config(name="tiny_fcos", head_convs=-1, fpn_channels=32))
    with pytest.raises(ValueError, match="divisible by 32"):
        build_model(tiny_model_config(name="tiny_fcos"))  # 16 FPN channels
    # head_convs joined the model config after detector ids were issued: at its default it leaves them unchanged
    # (the embedded detector's id, as its rollout caches and R-nets recorded it before the field existed)
    from zoomdet.detector.detector import default_checkpoint

    assert Detector.from_checkpoint(default_checkpoint()).detector_id.endswith("-b19438e7")
