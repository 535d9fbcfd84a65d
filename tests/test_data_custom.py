"""register_panoptic_dataset: metadata, validation, clear errors; the mapper's from_config."""

import json
import os
import uuid

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from PIL import Image

from panoptic_ext import add_panoptic_ext_config
from panoptic_ext.data import (
    PanopticClassLayout,
    PanopticDatasetError,
    PanopticFPNDatasetMapper,
    register_panoptic_dataset,
    validate_panoptic_dataset,
)
from tests.common import write_coco_panoptic

# stuff and thing ids interleaved on purpose
CATEGORIES = [
    {"id": 1, "name": "road", "isthing": 0, "color": [128, 64, 128]},
    {"id": 2, "name": "car", "isthing": 1, "color": [0, 0, 142]},
    {"id": 5, "name": "person", "isthing": 1},
    {"id": 7, "name": "sky", "isthing": 0},
]


def _sample(h=5, w=6):
    pan = np.full((h, w), 10)
    pan[: h // 2] = 70
    pan[1:3, 1:3] = 21
    pan[3:, w - 2 :] = 51
    pan[0, 0] = 0
    segments = [
        {"id": 10, "category_id": 1, "iscrowd": 0},
        {"id": 70, "category_id": 7, "iscrowd": 0},
        {"id": 21, "category_id": 2, "iscrowd": 0},
        {"id": 51, "category_id": 5, "iscrowd": 1},
    ]
    return np.zeros((h, w, 3), np.uint8), pan, segments


@pytest.fixture
def dataset(tmp_path):
    paths = write_coco_panoptic(tmp_path, [_sample(), _sample(7, 4)], CATEGORIES)
    name = f"test_custom_{uuid.uuid4().hex[:8]}"
    yield name, paths
    for catalog in (DatasetCatalog, MetadataCatalog):
        if name in catalog.list():
            catalog.remove(name)


def _register(name, paths, **kwargs):
    register_panoptic_dataset(
        name, paths["image_root"], paths["panoptic_root"], paths["panoptic_json"], **kwargs
    )


def _edit_json(paths, fn):
    with open(paths["panoptic_json"]) as f:
        data = json.load(f)
    fn(data)
    with open(paths["panoptic_json"], "w") as f:
        json.dump(data, f)


def test_metadata_and_records(dataset):
    name, paths = dataset
    _register(name, paths, instances_json="inst.json")
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["car", "person"]
    assert meta.stuff_classes == ["car", "person", "road", "sky"]  # indexed by contiguous id
    assert meta.thing_dataset_id_to_contiguous_id == {2: 0, 5: 1}
    assert meta.stuff_dataset_id_to_contiguous_id == {1: 2, 7: 3}
    assert meta.thing_colors[0] == [0, 0, 142] and len(meta.stuff_colors) == 4
    assert (meta.evaluator_type, meta.ignore_label, meta.json_file) == (
        "coco_panoptic_seg",
        255,
        "inst.json",
    )
    assert meta.panoptic_json == paths["panoptic_json"]
    layout = PanopticClassLayout.from_metadata(meta, "merged")
    assert layout.thing_names == ("car", "person") and layout.stuff_names == ("road", "sky")
    assert layout.stuff_dataset_ids == (1, 7) and layout.num_sem_seg_classes == 3

    records = DatasetCatalog.get(name)
    assert len(records) == 2 and (records[1]["height"], records[1]["width"]) == (7, 4)
    segs = {s["id"]: (s["category_id"], s["isthing"]) for s in records[0]["segments_info"]}
    assert segs == {10: (2, False), 70: (3, False), 21: (0, True), 51: (1, True)}
    with pytest.raises(ValueError, match="already registered"):
        _register(name, paths)


def test_mapper_on_registered_dataset(dataset):
    name, paths = dataset
    _register(name, paths)
    cfg = get_cfg()
    add_panoptic_ext_config(cfg)
    cfg.DATASETS.TRAIN = (name,)
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.CROP.ENABLED = True
    with pytest.raises(ValueError, match="MODEL.ROI_HEADS.NUM_CLASSES 2 MODEL.SEM_SEG_HEAD.NUM"):
        PanopticFPNDatasetMapper(cfg, True)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 2, 3
    mapper = PanopticFPNDatasetMapper(cfg, True)
    augs = mapper.augmentations.augs
    assert isinstance(augs[0], T.ResizeShortestEdge) and isinstance(augs[1], T.RandomCrop)
    mapper = PanopticFPNDatasetMapper(cfg, True, augmentations=[], layout=mapper.layout)
    out = mapper(DatasetCatalog.get(name)[0])
    sem = out["sem_seg"].numpy()
    assert sem[0, 0] == 255 and sem[4, 0] == 1 and sem[0, 3] == 2 and sem[1, 1] == 0
    assert out["instances"].gt_classes.tolist() == [0]  # the crowd person is not an instance

    cfg.MODEL.PANOPTIC_EXT.SEM_SEG_THINGS = "all"
    with pytest.raises(ValueError, match="MODEL.SEM_SEG_HEAD.NUM_CLASSES 4"):
        PanopticFPNDatasetMapper(cfg, True)
    cfg.DATASETS.TRAIN = ("no_such_dataset",)
    with pytest.raises(KeyError, match="not registered"):
        PanopticFPNDatasetMapper(cfg, True)
    cfg.DATASETS.TEST = ("no_such_dataset",)
    assert PanopticFPNDatasetMapper(cfg, False).layout is None  # inference needs no classes


def test_missing_root_is_reported_with_how_to_prepare(dataset, tmp_path):
    name, paths = dataset
    missing = str(tmp_path / "nowhere" / "panoptic.json")
    register_panoptic_dataset(
        name, paths["image_root"], paths["panoptic_root"], missing, categories=CATEGORIES
    )
    with pytest.raises(FileNotFoundError, match="nowhere.*does not exist.*register_panoptic"):
        DatasetCatalog.get(name)
    cfg = get_cfg()
    add_panoptic_ext_config(cfg)
    cfg.DATASETS.TRAIN = (name,)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 2, 3
    with pytest.raises(FileNotFoundError, match=f"{name}.*panoptic_json.*nowhere"):
        PanopticFPNDatasetMapper(cfg, True)


@pytest.mark.parametrize(
    "name, classes, hint",
    [
        ("coco_2017_train_panoptic", (80, 54), "panoptic_annotations_trainval2017.zip"),
        ("cityscapes_fine_panoptic_train", (8, 12), "createPanopticImgs"),
    ],
)
def test_builtin_dataset_without_data_says_how_to_prepare(name, classes, hint):
    cfg = get_cfg()
    add_panoptic_ext_config(cfg)
    cfg.DATASETS.TRAIN = (name,)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = classes
    if os.path.exists(MetadataCatalog.get(name).image_root):
        pytest.skip(f"{name} is installed here")
    with pytest.raises(FileNotFoundError, match=f"{name}.*does not exist.*{hint}"):
        PanopticFPNDatasetMapper(cfg, True)


def test_missing_image_file(dataset):
    name, paths = dataset
    os.remove(os.path.join(paths["image_root"], "0001.png"))
    _register(name, paths)
    with pytest.raises(FileNotFoundError, match="0001.png"):
        DatasetCatalog.get(name)


@pytest.mark.parametrize(
    "edit, text",
    [
        (lambda d: d["categories"][1].pop("isthing"), "'car'.*'isthing' must be 1"),
        (lambda d: d["categories"][2].update(id=2), "id 2 is used twice"),
        (lambda d: d["categories"][3].update(isthing="yes"), "'sky'.*isthing"),
    ],
)
def test_bad_categories(dataset, edit, text):
    name, paths = dataset
    _edit_json(paths, edit)
    with pytest.raises(PanopticDatasetError, match=text):
        _register(name, paths)


@pytest.mark.parametrize(
    "edit, text",
    [
        (lambda d: d["annotations"][1]["segments_info"][0].update(category_id=3), "0002.png.*3"),
        (lambda d: d["annotations"][0]["segments_info"][1].update(id=10), "0001.png.*twice"),
        (lambda d: d["annotations"][0].update(image_id=99), "0001.png.*image_id 99"),
        (lambda d: [a.pop("segments_info") for a in d["annotations"]], "instances JSON"),
    ],
)
def test_bad_annotations_are_reported_by_file(dataset, edit, text):
    name, paths = dataset
    _register(name, paths)
    _edit_json(paths, edit)
    with pytest.raises(PanopticDatasetError, match=text):
        DatasetCatalog.get(name)


def test_png_checks(dataset):
    name, paths = dataset
    args = (paths["panoptic_json"], paths["image_root"], paths["panoptic_root"])
    validate_panoptic_dataset(*args)  # a consistent dataset passes
    _edit_json(paths, lambda d: d["annotations"][0]["segments_info"].pop(2))  # id 21
    png2 = os.path.join(paths["panoptic_root"], "0002.png")
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(png2)
    with pytest.raises(PanopticDatasetError) as e:
        validate_panoptic_dataset(*args)
    msg = str(e.value)
    assert "0001.png: segment ids [21] are in the PNG but not in the JSON" in msg
    assert "0002.png: PNG is 3x3 (WxH) but the JSON says the image is 4x7" in msg
    assert "0002.png: image is 4x7 but" in msg
    assert "0002.png: segment ids [10, 21, 51, 70] are in the JSON's segments_info but not" in msg
    _register(name, paths, check_pngs=True)
    with pytest.raises(PanopticDatasetError, match="0001.png"):
        DatasetCatalog.get(name)


@pytest.mark.parametrize("name", ["coco_2017_val_panoptic", "coco_2017_val_panoptic_separated"])
def test_evaluating_a_builtin_dataset_without_data_names_the_missing_file(name):
    """The evaluators of the shipped COCO config (and of detectron2's "separated" records, whose
    instances JSON pycocotools would open) name the missing file and how to make it."""
    from panoptic_ext.evaluation import build_panoptic_evaluators
    from tests.common import R50_1X, load_cfg

    cfg = load_cfg(R50_1X)
    assert name == "coco_2017_val_panoptic_separated" or cfg.DATASETS.TEST[0] == name
    if os.path.exists(MetadataCatalog.get(name).image_root):
        pytest.skip(f"{name} is installed here")
    with pytest.raises(FileNotFoundError, match=f"{name}.*does not exist.*panoptic_annotations"):
        build_panoptic_evaluators(cfg, name)
