import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import HIT_UAV
from zoomdet.data.coco import CocoDataset, DatasetError, dataset_stats, read_image
from zoomdet.data.synth import SynthConfig, generate_dataset, generate_image


def test_synthetic_dataset_is_byte_identical_for_a_seed(tmp_path):
    a = generate_dataset(SynthConfig(images=2, width=256, height=192, seed=7), tmp_path / "a", progress=False)
    b = generate_dataset(SynthConfig(images=2, width=256, height=192, seed=7), tmp_path / "b", progress=False)
    c = generate_dataset(SynthConfig(images=2, width=256, height=192, seed=8), tmp_path / "c", progress=False)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
    assert digest(tmp_path / "a/images/000001.jpg") == digest(tmp_path / "b/images/000001.jpg")


def test_synthetic_objects_span_small_to_large_and_several_classes():
    sizes, cats = [], set()
    for i in range(3):
        _, anns = generate_image(SynthConfig(), i)
        sizes += [min(a["bbox"][2], a["bbox"][3]) for a in anns]
        cats |= {a["category_id"] for a in anns}
    sizes = np.array(sizes)
    assert cats == {1, 2, 3}
    assert (sizes < 12).mean() > 0.2  # many tiny objects
    assert sizes.max() > 40
    for _, anns in [generate_image(SynthConfig(width=512, height=384), 0)]:
        for a in anns:
            x, y, w, h = a["bbox"]
            assert x >= 0 and y >= 0 and x + w <= 512 and y + h <= 384


def _subset(tmp_path, n=3):
    d = json.loads((HIT_UAV / "test.json").read_text())
    ids = [im["id"] for im in d["images"][:n]]
    d["images"] = d["images"][:n]
    d["annotations"] = [a for a in d["annotations"] if a["image_id"] in ids]
    p = tmp_path / "hit.json"
    p.write_text(json.dumps(d))
    return p, d


@pytest.mark.skipif(not (HIT_UAV / "test.json").exists(), reason="HIT-UAV not beside the project")
def test_loads_real_hit_uav_images(tmp_path):
    p, d = _subset(tmp_path)
    ds = CocoDataset(p, image_root=HIT_UAV / "images")
    s = ds[0]
    assert s.image.shape == (3, 512, 640) and s.image.dtype == torch.float32
    assert 0 <= float(s.image.min()) and float(s.image.max()) <= 1
    assert s.boxes.shape[1] == 4 and (s.boxes[:, 2] > s.boxes[:, 0]).all()
    assert len(s.boxes) == sum(a["image_id"] == s.image_id for a in d["annotations"])
    stats = dataset_stats(ds)
    assert stats["images"] == 3 and sum(stats["size_histogram_px"].values()) == stats["annotations"]


def _write(tmp_path, images, anns, cats=None):
    (tmp_path / "images").mkdir(exist_ok=True)
    p = tmp_path / "ann.json"
    p.write_text(json.dumps({"images": images, "annotations": anns,
                             "categories": cats or [{"id": 1, "name": "a"}]}))
    return p


def test_bad_inputs_name_file_and_id(tmp_path):
    Image.new("RGB", (50, 40)).save(tmp_path / "ok.jpg")
    img = [{"id": 7, "file_name": "ok.jpg", "width": 50, "height": 40}]
    (tmp_path / "images").mkdir()
    Image.new("RGB", (50, 40)).save(tmp_path / "images" / "ok.jpg")
    with pytest.raises(DatasetError, match=r"annotation id 3 in image ok.jpg \(id 7\).*unknown category_id 9"):
        CocoDataset(_write(tmp_path, img, [{"id": 3, "image_id": 7, "category_id": 9, "bbox": [1, 1, 5, 5], "iscrowd": 0, "area": 25}]))
    with pytest.raises(DatasetError, match=r"annotation id 4 in image ok.jpg \(id 7\).*outside the 50x40 image"):
        CocoDataset(_write(tmp_path, img, [{"id": 4, "image_id": 7, "category_id": 1, "bbox": [40, 1, 20, 5], "iscrowd": 0, "area": 100}]))
    ann = {"id": 3, "image_id": 7, "category_id": 1, "bbox": [1, 1, 5, 4]}
    for images, anns, said in [([{**img[0], "id": "7"}], [], "image id '7' is not an integer"),
                               (img + img, [], "image id 7 appears more than once"),
                               (img, [ann, ann], "annotation id 3 appears more than once"),
                               ([{"id": 7, "file_name": "ok.jpg"}], [], "image id 7 has no width, height"),
                               (img, [{**ann, "bbox": [1, 1]}], r"annotation id 3 has no \[x, y, w, h\] bbox")]:
        with pytest.raises(DatasetError, match=said):  # pycocotools would index these silently, or fail later
            CocoDataset(_write(tmp_path, images, anns))
    ds = CocoDataset(_write(tmp_path, img, [ann]))  # no area, no iscrowd: the box's area and 0, as COCOeval needs
    assert ds.coco.anns[3]["area"] == 20.0 and ds.coco.anns[3]["iscrowd"] == 0
    assert CocoDataset(_write(tmp_path, img, [ann], cats=[{"id": 1}])).categories == {1: "1"}  # named by its id
    missing = [{"id": 8, "file_name": "gone.jpg", "width": 50, "height": 40}]
    with pytest.raises(DatasetError, match=r"gone.jpg \(image id 8\) not found"):
        CocoDataset(_write(tmp_path, missing, []))
    with pytest.raises(DatasetError, match="annotation file not found"):
        CocoDataset(tmp_path / "nope.json")
    (tmp_path / "nocats.json").write_text(json.dumps({"images": [], "annotations": []}))  # valid JSON, no classes
    with pytest.raises(DatasetError, match=r"nocats.json: not a COCO detection file \(missing: categories\)"):
        CocoDataset(tmp_path / "nocats.json")
    (tmp_path / "empty.json").write_text("{}")
    with pytest.raises(DatasetError, match=r"missing: images, categories"):
        CocoDataset(tmp_path / "empty.json")
    unlabelled = {"images": img, "categories": [{"id": 1, "name": "a"}]}  # COCO's image_info files: no annotations
    (tmp_path / "unlabelled.json").write_text(json.dumps(unlabelled))
    assert CocoDataset(tmp_path / "unlabelled.json").targets(7)[0].shape == (0, 4)


def test_image_modes_are_read_as_rgb_in_unit_range(tmp_path):
    Image.new("L", (20, 10), 128).save(tmp_path / "g.png")
    Image.new("RGBA", (20, 10), (255, 0, 0, 0)).save(tmp_path / "a.png")  # fully transparent red -> black
    Image.fromarray(np.full((10, 20), 65535, dtype=np.uint16)).save(tmp_path / "d16.png")
    g, a, d16 = (read_image(tmp_path / n) for n in ("g.png", "a.png", "d16.png"))
    assert g.shape == a.shape == d16.shape == (3, 10, 20)
    assert torch.allclose(g, torch.full_like(g, 128 / 255))
    assert float(a.max()) == 0.0
    assert torch.allclose(d16, torch.ones_like(d16))


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (30, 10), (0, 0, 0))
    img.putpixel((0, 0), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    img.save(tmp_path / "r.jpg", exif=exif, quality=100)
    t = read_image(tmp_path / "r.jpg")
    assert t.shape == (3, 30, 10)
    assert float(t[:, 0, -1].mean()) > 0.8  # the white corner moved to the top-right


def _tiny_coco(root, file_names):
    """A COCO file at ``root/ann.json`` over blank images written under ``root/images``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, name in enumerate(file_names, start=1):
        Image.new("RGB", (64, 48)).save(root / "images" / Path(name).name)
        images.append({"id": i, "file_name": name, "width": 64, "height": 48})
        anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": [4, 4, 10, 10], "area": 100, "iscrowd": 0})
    p = root / "ann.json"
    p.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}))
    return p


def test_image_root_is_found_whether_file_names_carry_the_folder_or_not(tmp_path):
    bare = _tiny_coco(tmp_path / "bare", ["a.jpg", "b.jpg"])
    assert CocoDataset(bare).image_root == tmp_path / "bare" / "images"
    prefixed = _tiny_coco(tmp_path / "prefixed", ["images/a.jpg", "images/b.jpg"])  # no images/images/a.jpg
    ds = CocoDataset(prefixed)
    assert ds.image_root == tmp_path / "prefixed" and ds.load_image(1).shape == (3, 48, 64)
    with pytest.raises(DatasetError, match="--image-root"):
        CocoDataset(bare, image_root=tmp_path)  # files are not there: the error says how to point at them
    with pytest.raises(DatasetError, match="not a folder"):
        CocoDataset(bare, image_root=tmp_path / "nowhere")


def test_subset_is_a_seeded_sample_not_the_first_ids(tmp_path):
    ds = CocoDataset(_tiny_coco(tmp_path, [f"{i:03d}.jpg" for i in range(40)]))
    a, b, c = ds.subset(10, seed=0), ds.subset(10, seed=0), ds.subset(10, seed=1)
    assert a == b and a != c and a == sorted(a) and len(set(a)) == 10
    assert a != ds.image_ids[:10]
    assert ds.subset(0) == ds.image_ids and ds.subset(99) == ds.image_ids
    rest = ds.subset(10, seed=0, exclude=a)  # drawn among the other 30
    assert len(rest) == 10 and not set(rest) & set(a) and rest == sorted(rest)
    assert ds.subset(0, exclude=a) == [i for i in ds.image_ids if i not in a]
    with pytest.raises(ValueError, match="nothing left"):
        ds.subset(0, exclude=ds.image_ids)


def test_stats_suggest_a_coarse_scale_from_object_sizes():
    from zoomdet.data.coco import suggest_settings

    big = suggest_settings(np.full(100, 88.0), [(2560, 2560)], 1)  # Airbus-like: ~22 px at 0.25
    assert big["coarse_scale"] == 0.25 and big["num_classes"] == 2 and big["scales"] == [1.0, 0.5, 0.25]
    assert big["budgets"][0] > 0.0625 and big["crop_size"] == 512
    small = suggest_settings(np.full(100, 20.0), [(640, 512)], 5)  # HIT-UAV-like: zoom is for them
    assert small["coarse_scale"] == 0.5 and small["scales"] == [1.0, 0.5] and small["crop_size"] == 512
    anchors = big["anchor_sizes"]
    assert len(anchors) == 5 and anchors == sorted(anchors) and anchors[0][0] <= 88 * 0.25 <= anchors[-1][0]
    assert suggest_settings(np.zeros(0), [], 1) == {}


@pytest.mark.parametrize("view", ["identity", "hflip", "vflip", "rot180", "transpose", "rot90", "rot270", "transverse"])
def test_every_view_maps_a_boxs_pixels_to_the_viewed_boxs_pixels(view):
    """A lit rectangle stays exactly inside its viewed box, for each of the 8 flips and rotations."""
    from zoomdet.data.augment import apply_view

    H, W = 12, 20
    image = torch.zeros(3, H, W, dtype=torch.uint8)
    boxes = torch.tensor([[3.0, 2.0, 9.0, 5.0], [15.0, 7.0, 20.0, 12.0]])
    for x0, y0, x1, y1 in boxes.int().tolist():
        image[:, y0:y1, x0:x1] = 255
    image[:, 2:5, 3:9] = 100  # tell the two boxes apart
    viewed, vboxes = apply_view(image, boxes, view)
    swapped = view in ("transpose", "rot90", "rot270", "transverse")
    assert viewed.shape == ((3, W, H) if swapped else (3, H, W))
    for (x0, y0, x1, y1), value in zip(vboxes.int().tolist(), (100, 255)):
        lit = (viewed[0] == value).nonzero()
        assert (lit[:, 1].min().item(), lit[:, 0].min().item(), lit[:, 1].max().item() + 1, lit[:, 0].max().item() + 1) \
            == (x0, y0, x1, y1)
        assert len(lit) == (x1 - x0) * (y1 - y0)


def test_view_ids_round_trip_and_bad_views_are_refused():
    from zoomdet.data.augment import VIEW_ID_STRIDE, VIEWS, check_views, source_view, view_id

    ids = {view_id(7, v) for v in VIEWS}
    assert len(ids) == 8 and view_id(7, "identity") == 7
    assert all(source_view(view_id(7, v)) == (7, v) for v in VIEWS)
    with pytest.raises(ValueError, match="outside"):
        view_id(VIEW_ID_STRIDE, "hflip")
    big = 3 * VIEW_ID_STRIDE + 5  # a COCO file's own large id is the image itself, not a view
    assert view_id(big, "identity") == big and source_view(big, {big}) == (big, "identity")
    assert source_view(big) == (5, "rot180")
    with pytest.raises(ValueError, match="no view"):
        source_view(8 * VIEW_ID_STRIDE)
    with pytest.raises(ValueError, match="unknown view"):
        check_views(["identity", "flip"])
    with pytest.raises(ValueError, match="repeat"):
        check_views(["hflip", "hflip"])
    with pytest.raises(ValueError, match="at least one"):
        check_views([])
