"""Cityscapes panoptic: a fake Cityscapes tree prepared by cityscapesscripts' own scripts, read
through the project's registration (detectron2's files and metadata, paths with ".") and our
mapper, and a few training iterations; detectron2's own registration is left as it is."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detectron2.data.datasets import cityscapes_panoptic
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from PIL import Image

from panoptic_ext.data import PanopticFPNDatasetMapper
from panoptic_ext.data.cityscapes import register_cityscapes_panoptic
from tests.common import get_model_zoo_cfg, write_cityscapes_instance_ids

cs_labels = pytest.importorskip("cityscapesscripts.helpers.labels")
from cityscapesscripts.preparation import createTrainIdLabelImgs  # noqa: E402
from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic  # noqa: E402

CONFIG = Path(__file__).parents[1] / "configs/Cityscapes-PanopticSegmentation"
NAMES = ("cityscapes_fine_panoptic_ext_train", "cityscapes_fine_panoptic_ext_val")
H, W = 128, 256


def _rect(label, x0, y0, x1, y1):
    return {"label": label, "polygon": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]}


def _objects(shift):
    """Polygons in Cityscapes' drawing order (later ones on top)."""
    return [
        _rect("sky", 0, 0, W, 40),
        _rect("building", 0, 40, 120, 70),
        _rect("vegetation", 121, 40, W, 70),
        _rect("road", 0, 71, W, H),
        _rect("car", 20 + shift, 80, 70 + shift, 110),
        _rect("car", 150, 75, 200, 100),
        _rect("person", 100, 60, 112, 100),
        _rect("cargroup", 210, 90, 250, 115),  # a crowd: no instance id
        _rect("ego vehicle", 0, 118, W, H),  # ignored in evaluation: void
    ]


def _write_fake_cityscapes(root: Path) -> None:
    """Polygons + images, then the preparation that real Cityscapes users run."""
    name2label = cs_labels.name2label
    for split, frames in (("train", 3), ("val", 1)):
        for i in range(frames):
            stem = f"testcity_000000_{i:06d}"
            gt = root / "gtFine" / split / "testcity" / f"{stem}_gtFine_polygons.json"
            gt.parent.mkdir(parents=True, exist_ok=True)
            gt.write_text(json.dumps({"imgHeight": H, "imgWidth": W, "objects": _objects(10 * i)}))
            # official downloads ship *_instanceIds.png, made from the polygons by this script
            ids = np.asarray(Image.open(write_cityscapes_instance_ids(str(gt))))
            sem = np.where(ids >= 1000, ids // 1000, ids)
            image = np.zeros((H, W, 3), np.uint8)
            for label_id in np.unique(sem):
                image[sem == label_id] = cs_labels.id2label[int(label_id)].color
            img = root / "leftImg8bit" / split / "testcity" / f"{stem}_leftImg8bit.png"
            img.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(img)
    assert name2label["car"].trainId == 13


def _register_under(datasets_root):
    for name in NAMES:
        for catalog in (DatasetCatalog, MetadataCatalog):
            if name in catalog.list():
                catalog.remove(name)
    register_cityscapes_panoptic(str(datasets_root))


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory):
    datasets = tmp_path_factory.mktemp("datasets")
    root = datasets / "cityscapes"
    _write_fake_cityscapes(root)
    mp = pytest.MonkeyPatch()
    mp.setenv("CITYSCAPES_DATASET", str(root))
    createTrainIdLabelImgs.main()
    convert2panoptic(str(root / "gtFine"), setNames=["train", "val"])
    mp.undo()

    _register_under(datasets)  # detectron2's own builtin registration, under our root
    yield root
    _register_under(os.getenv("DETECTRON2_DATASETS", "datasets"))


def _cfg():
    cfg = get_model_zoo_cfg()
    cfg.merge_from_file(str(CONFIG / "panoptic_fpn_R_50_cityscapes.yaml"))
    cfg.MODEL.WEIGHTS = ""
    return cfg


def test_config_is_the_papers_setting():
    cfg = _cfg()
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER) == (32, 0.01, 65000)
    assert tuple(cfg.SOLVER.STEPS) == (40000, 55000)
    assert cfg.INPUT.CROP.ENABLED and cfg.INPUT.CROP.TYPE == "absolute"
    assert tuple(cfg.INPUT.CROP.SIZE) == (512, 1024)
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == tuple(range(512, 2049, 32))
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (1024, 2048)
    assert (cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES) == (8, 19)
    assert cfg.MODEL.PANOPTIC_EXT.SEM_SEG_THINGS == "all"
    assert cfg.MODEL.META_ARCHITECTURE == "PanopticFPNExt"
    assert tuple(cfg.DATASETS.TRAIN) == NAMES[:1] and tuple(cfg.DATASETS.TEST) == NAMES[1:]


@pytest.mark.parametrize("mode", ["all", "merged"])
def test_targets_match_cityscapesscripts_outputs(cityscapes_root, mode):
    records = DatasetCatalog.get(NAMES[0])
    assert len(records) == 3
    cfg = get_model_zoo_cfg()
    cfg.DATASETS.TRAIN = NAMES[:1]
    cfg.MODEL.PANOPTIC_EXT.SEM_SEG_THINGS = mode
    cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 8, (
        19 if mode == "all" else 12
    )
    mapper = PanopticFPNDatasetMapper(cfg, True, augmentations=[])
    for record in records:
        out = mapper(record)
        # semantic targets agree with createTrainIdLabelImgs' *_labelTrainIds.png
        train_ids = np.asarray(Image.open(record["sem_seg_file_name"])).astype(np.int64)
        if mode == "all":  # things 11..18 -> 0..7, stuff 0..10 -> 8..18
            expected = np.where(train_ids >= 11, train_ids - 11, train_ids + 8)
        else:  # things -> 0, stuff -> 1..11
            expected = np.where(train_ids >= 11, 0, train_ids + 1)
        expected[train_ids == 255] = 255
        assert np.array_equal(out["sem_seg"].numpy(), expected)
        assert (out["sem_seg"].numpy() == 255).any()  # the ego vehicle is void
        # instances are the thing segments of *_instanceIds.png, without the crowd cargroup
        instance_png = record["sem_seg_file_name"].replace("_labelTrainIds", "_instanceIds")
        inst_ids = np.asarray(Image.open(instance_png))
        things = [i for i in np.unique(inst_ids) if i >= 1000]
        assert out["instances"].gt_classes.tolist() == [0, 2, 2]  # person, car, car
        masks = out["instances"].gt_masks.tensor.numpy()
        assert np.array_equal(masks, np.stack([inst_ids == i for i in things]))


def test_few_training_iterations(cityscapes_root):
    cfg = _cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (64, 96, 128, 192, 256)  # 0.5x-2x of the fake 128x256 images
    cfg.INPUT.MAX_SIZE_TRAIN = 512
    cfg.INPUT.CROP.SIZE = (64, 128)
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR = 2, 0.001
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN, cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 100, 64
    # a small backbone with trainable BN: random weights with FrozenBN (R50's default) diverge
    cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 18, 64
    cfg.MODEL.RESNETS.NORM, cfg.MODEL.FPN.OUT_CHANNELS = "BN", 64
    mapper = PanopticFPNDatasetMapper(cfg, True)
    loader = iter(build_detection_train_loader(cfg, mapper=mapper))
    torch.manual_seed(0)
    model = build_model(cfg)
    assert type(model).__name__ == "PanopticFPNExt"
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.SOLVER.BASE_LR, momentum=0.9)
    with EventStorage():
        for _ in range(3):
            batch = next(loader)
            for x in batch:
                assert x["image"].shape[1:] == x["sem_seg"].shape == (64, 128)
                assert x["sem_seg"].max() < 19 or x["sem_seg"].max() == 255
            losses = model(batch)
            assert {"loss_sem_seg", "loss_mask", "loss_cls"} <= set(losses)
            total = sum(losses.values())
            assert torch.isfinite(total)
            optimizer.zero_grad()
            total.backward()
            optimizer.step()


def test_metadata_is_detectron2s_and_detectron2s_loader_is_untouched(cityscapes_root):
    for split, name in zip(("train", "val"), NAMES):
        ours, theirs = MetadataCatalog.get(name), MetadataCatalog.get(
            f"cityscapes_fine_panoptic_{split}"
        )
        for key in (
            "thing_classes",
            "stuff_classes",
            "thing_dataset_id_to_contiguous_id",
            "stuff_dataset_id_to_contiguous_id",
            "evaluator_type",
            "label_divisor",
            "ignore_label",
            "thing_colors",
        ):
            assert ours.get(key) == theirs.get(key), key
    assert ours.gt_dir == str(cityscapes_root / "gtFine" / "val")
    # importing panoptic_ext changes none of detectron2's functions
    assert cityscapes_panoptic.load_cityscapes_panoptic.__module__ == cityscapes_panoptic.__name__


def test_dataset_root_with_dots_loads(cityscapes_root, tmp_path):
    """detectron2's loader cuts paths at the first "." ("Please generate labelTrainIds.png");
    the project's datasets under a root such as first.last/tmp.x1 load the same records."""
    import shutil

    expected = DatasetCatalog.get(NAMES[0])
    dotted = tmp_path / "first.last" / "tmp.x1"
    shutil.copytree(cityscapes_root, dotted / "cityscapes")
    try:
        _register_under(dotted)
        records = DatasetCatalog.get(NAMES[0])
        assert len(records) == len(expected) == 3
        for got, want in zip(records, expected):
            for key in ("file_name", "sem_seg_file_name", "pan_seg_file_name"):
                assert got[key] == want[key].replace(
                    str(cityscapes_root), str(dotted / "cityscapes")
                )
                assert os.path.isfile(got[key])
            assert got["image_id"] == want["image_id"]
            assert got["segments_info"] == want["segments_info"]
        # A missing labelTrainIds file is named, with how to make it.
        os.remove(records[0]["sem_seg_file_name"])
        with pytest.raises(FileNotFoundError, match="labelTrainIds.png .*createTrainIdLabelImgs"):
            DatasetCatalog.get(NAMES[0])
    finally:
        _register_under(cityscapes_root.parent)
