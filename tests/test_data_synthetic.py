"""The synthetic panoptic dataset: deterministic, valid COCO panoptic, registered lazily."""

import filecmp
import json
import os
import time
import uuid

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_panoptic
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.mask import decode

from panoptic_ext.data import (
    SYNTHETIC_CATEGORIES,
    SYNTHETIC_DATASET_NAMES,
    PanopticFPNDatasetMapper,
    generate_synthetic_panoptic,
    metadata_from_categories,
    register_panoptic_dataset,
    register_synthetic_panoptic,
    rgb_to_id,
    validate_panoptic_dataset,
)
from panoptic_ext.data.class_layout import PanopticClassLayout

SMALL = {"num_train": 24, "num_val": 6, "height": 96, "width": 128}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    return root, generate_synthetic_panoptic(root, seed=3, **SMALL)


@pytest.fixture
def names():
    created = []
    yield created
    for name in created:
        for catalog in (DatasetCatalog, MetadataCatalog):
            if name in catalog.list():
                catalog.remove(name)


def _load(path):
    with open(path) as f:
        return json.load(f)


def test_deterministic_from_seed(generated, tmp_path):
    root, paths = generated
    again = generate_synthetic_panoptic(str(tmp_path / "a"), seed=3, **SMALL)
    other = generate_synthetic_panoptic(str(tmp_path / "b"), seed=4, **SMALL)
    for split in ("train", "val"):
        for key in ("panoptic_json", "instances_json"):
            assert filecmp.cmp(paths[split][key], again[split][key], shallow=False)
        for name in os.listdir(paths[split]["panoptic_root"]):
            a = os.path.join(paths[split]["panoptic_root"], name)
            assert filecmp.cmp(a, os.path.join(again[split]["panoptic_root"], name), shallow=False)
    assert _load(paths["train"]["panoptic_json"]) != _load(other["train"]["panoptic_json"])


@pytest.mark.parametrize("split", ["train", "val"])
def test_valid_coco_panoptic(generated, split):
    """Checked independently of the package's validator, then with it."""
    _, paths = generated
    p = paths[split]
    data = _load(p["panoptic_json"])
    cats = {c["id"]: c for c in data["categories"]}
    assert {c["name"] for c in cats.values()} == {c["name"] for c in SYNTHETIC_CATEGORIES}
    assert all(c["isthing"] in (0, 1) and len(c["color"]) == 3 for c in cats.values())
    images = {img["id"]: img for img in data["images"]}
    assert len(images) == SMALL[f"num_{split}"] == len(data["annotations"])
    seen_cats, void_images, crowd = set(), 0, 0
    for ann in data["annotations"]:
        img = images[ann["image_id"]]
        with Image.open(os.path.join(p["image_root"], img["file_name"])) as im:
            assert im.size == (img["width"], img["height"]) == (128, 96) and im.mode == "RGB"
        pan = rgb_to_id(np.asarray(Image.open(os.path.join(p["panoptic_root"], ann["file_name"]))))
        ids = [s["id"] for s in ann["segments_info"]]
        assert len(ids) == len(set(ids)) and 0 not in ids
        assert set(np.unique(pan)) - {0} == set(ids)
        void_images += bool((pan == 0).any())
        for s in ann["segments_info"]:
            mask = pan == s["id"]
            ys, xs = np.nonzero(mask)
            assert s["area"] == mask.sum()
            assert s["bbox"] == [
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            ]
            assert s["category_id"] in cats and s["iscrowd"] in (0, 1)
            assert not s["iscrowd"] or cats[s["category_id"]]["isthing"]
            seen_cats.add(s["category_id"])
            crowd += s["iscrowd"]
    assert seen_cats == set(cats) and void_images > 0
    if split == "val":
        assert crowd == 0
    validate_panoptic_dataset(p["panoptic_json"], p["image_root"], p["panoptic_root"])

    # the instances JSON holds the same thing masks (for detectron2's COCOEvaluator)
    coco = COCO(p["instances_json"])
    assert sorted(coco.getCatIds()) == sorted(c for c in cats if cats[c]["isthing"])
    ann = data["annotations"][0]
    pan = rgb_to_id(np.asarray(Image.open(os.path.join(p["panoptic_root"], ann["file_name"]))))
    things = [s for s in ann["segments_info"] if cats[s["category_id"]]["isthing"]]
    insts = coco.loadAnns(coco.getAnnIds(imgIds=[ann["image_id"]]))
    assert len(insts) == len(things)
    for s, inst in zip(things, insts):
        assert np.array_equal(decode(inst["segmentation"]).astype(bool), pan == s["id"])
        assert inst["iscrowd"] == s["iscrowd"] and inst["category_id"] == s["category_id"]


def test_things_overlap_and_touch(generated):
    """Some thing segments share a border (occlusion or contact), as the issue asks."""
    _, paths = generated
    p = paths["train"]
    data = _load(p["panoptic_json"])
    thing_ids = {c["id"] for c in SYNTHETIC_CATEGORIES if c["isthing"]}
    touching = 0
    for ann in data["annotations"]:
        pan = rgb_to_id(np.asarray(Image.open(os.path.join(p["panoptic_root"], ann["file_name"]))))
        thing = np.isin(pan // 1000, list(thing_ids)) & (pan > 0)
        right = thing[:, 1:] & thing[:, :-1] & (pan[:, 1:] != pan[:, :-1])
        down = thing[1:] & thing[:-1] & (pan[1:] != pan[:-1])
        touching += bool(right.any() or down.any())
    assert touching >= 2


def test_detectron2_loader_and_ours_give_the_same_targets(generated, names):
    """detectron2's own register_coco_panoptic reads the generated files too."""
    _, paths = generated
    p = paths["val"]
    meta = metadata_from_categories(SYNTHETIC_CATEGORIES)
    ours, theirs = f"syn_ours_{uuid.uuid4().hex[:6]}", f"syn_d2_{uuid.uuid4().hex[:6]}"
    names += [ours, theirs]
    register_panoptic_dataset(ours, p["image_root"], p["panoptic_root"], p["panoptic_json"])
    register_coco_panoptic(theirs, meta, p["image_root"], p["panoptic_root"], p["panoptic_json"])
    layout = PanopticClassLayout.from_metadata(MetadataCatalog.get(theirs), "all")
    assert layout == PanopticClassLayout.from_metadata(MetadataCatalog.get(ours), "all")
    mapper = PanopticFPNDatasetMapper(True, augmentations=[], image_format="BGR", layout=layout)
    for a, b in zip(DatasetCatalog.get(ours)[:3], DatasetCatalog.get(theirs)[:3]):
        out_a, out_b = mapper(a), mapper(b)
        assert out_a["sem_seg"].equal(out_b["sem_seg"]) and out_a["image"].equal(out_b["image"])
        assert out_a["instances"].gt_classes.equal(out_b["instances"].gt_classes)
        assert out_a["instances"].gt_masks.tensor.equal(out_b["instances"].gt_masks.tensor)


def test_lazy_registration(tmp_path, names):
    root = str(tmp_path / "datasets" / "panoptic_synthetic")
    prefix = f"syn_lazy_{uuid.uuid4().hex[:6]}"
    params = {"num_train": 3, "num_val": 2, "height": 64, "width": 80, "seed": 1}
    registered = register_synthetic_panoptic(prefix, root, **params)
    names += list(registered.values())
    assert not os.path.exists(root)  # nothing is written at registration
    meta = MetadataCatalog.get(registered["val"])
    assert meta.evaluator_type == "coco_panoptic_seg" and meta.ignore_label == 255
    assert meta.thing_classes == ["disc", "square", "triangle"]
    records = DatasetCatalog.get(registered["train"])
    assert len(records) == 3 and os.path.isfile(meta.json_file)
    stamp = os.path.getmtime(os.path.join(root, "generator.json"))
    assert len(DatasetCatalog.get(registered["val"])) == 2
    assert os.path.getmtime(os.path.join(root, "generator.json")) == stamp  # not regenerated
    assert [f for f in os.listdir(tmp_path / "datasets") if f != "panoptic_synthetic"] == []

    # other parameters under the same root: regenerated
    prefix2 = f"syn_lazy2_{uuid.uuid4().hex[:6]}"
    names += list(register_synthetic_panoptic(prefix2, root, **dict(params, num_train=4)).values())
    assert len(DatasetCatalog.get(f"{prefix2}_train")) == 4


def test_builtin_names_registered():
    for name in SYNTHETIC_DATASET_NAMES:
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "coco_panoptic_seg" and meta.generated_on_demand
        root = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "panoptic_synthetic")
        assert meta.panoptic_json.startswith(root)


@pytest.mark.slow
def test_default_size_generates_in_under_a_minute(tmp_path):
    start = time.perf_counter()
    generate_synthetic_panoptic(str(tmp_path))
    assert time.perf_counter() - start < 60
