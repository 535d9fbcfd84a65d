"""Dataset files that used to give silently wrong training or unclear errors: images with an
EXIF orientation, an image annotated twice, a stuff-only dataset, every record bad with
ON_BAD_RECORD "skip"."""

import itertools
import json
import logging
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, build_detection_train_loader
from PIL import Image

from panoptic_ext.apps.train.config_check import ConfigError, check_config_against_datasets
from panoptic_ext.apps.train.resume import prepare_train_loader
from panoptic_ext.data import (
    PanopticDatasetError,
    PanopticFPNDatasetMapper,
    register_panoptic_dataset,
    validate_panoptic_dataset,
)
from tests.reliability_common import tiny_cfg, unregister

CATEGORIES = [
    {"id": 1, "name": "a", "isthing": 1},
    {"id": 10, "name": "s1", "isthing": 0},
]


def _write(root, sizes, exif=None, categories=CATEGORIES, duplicate=False):
    """Images (JPEG, optionally with EXIF orientations) and panoptic PNGs drawn on the images as
    training reads them (rotated by their orientation)."""
    images, annotations = [], []
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "panoptic"), exist_ok=True)
    for k, (h, w) in enumerate(sizes):
        orientation = (exif or {}).get(k, 1)
        stored = (w, h) if orientation >= 5 else (h, w)  # (H, W) of the stored pixels
        pixels = np.full(stored + (3,), 40 * k, np.uint8)
        img = Image.fromarray(pixels)
        name = f"{k}.jpg"
        if orientation != 1:
            tags = Image.Exif()
            tags[0x0112] = orientation
            img.save(os.path.join(root, "images", name), exif=tags.tobytes())
        else:
            img.save(os.path.join(root, "images", name))
        ids = np.full((h, w), 10, np.int64)
        ids[: h // 2, : w // 3] = 5
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        Image.fromarray(rgb).save(os.path.join(root, "panoptic", f"{k}.png"))
        cats = [c["id"] for c in categories]
        segments = [{"id": 10, "category_id": cats[-1], "iscrowd": 0}]
        if 1 in cats:
            segments.insert(0, {"id": 5, "category_id": 1, "iscrowd": 0})
        else:
            segments.insert(0, {"id": 5, "category_id": cats[0], "iscrowd": 0})
        images.append({"id": k, "file_name": name, "height": h, "width": w})
        annotations.append({"image_id": k, "file_name": f"{k}.png", "segments_info": segments})
    if duplicate:
        annotations.append(dict(annotations[0]))
    path = os.path.join(root, "panoptic.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path, os.path.join(root, "images"), os.path.join(root, "panoptic")


def test_exif_rotated_images_are_validated_as_training_reads_them(tmp_path, caplog):
    # 0: portrait stored sideways (orientation 6), PNG drawn on the displayed image: valid.
    # 1: square with orientation 3: valid sizes, but a warning names it.
    json_file, images, panoptic = _write(str(tmp_path), [(30, 20), (24, 24)], exif={0: 6, 1: 3})
    with caplog.at_level(logging.WARNING):
        validate_panoptic_dataset(json_file, images, panoptic)
    assert "1.jpg has EXIF orientation 3 (displayed rotated 180 degrees)" in caplog.text
    # Training reads image 0 upright (as validated): same size as its PNG, no error.
    name = "exif_valid"
    register_panoptic_dataset(name, images, panoptic, json_file)
    try:
        mapper = PanopticFPNDatasetMapper(
            tiny_cfg((name,), num_things=1, num_stuff=1), True, augmentations=[]
        )
        with caplog.at_level(logging.WARNING, logger="panoptic_ext.data.mapper"):
            out = [mapper(r) for r in DatasetCatalog.get(name)]
        assert out[0]["image"].shape[1:] == out[0]["sem_seg"].shape == (30, 20)
        assert "0.jpg has EXIF orientation 6" in caplog.text
    finally:
        unregister(name)


def test_png_matching_the_stored_pixels_of_a_rotated_image_is_an_error(tmp_path):
    # The PNG is 20x30 (WxH) as the stored pixels, but training reads the image as 30x20.
    json_file, images, panoptic = _write(str(tmp_path), [(30, 20)], exif={0: 8})
    img = Image.open(os.path.join(images, "0.jpg"))
    tags = img.getexif()
    Image.fromarray(np.asarray(img).transpose(1, 0, 2)).save(
        os.path.join(images, "0.jpg"), exif=tags.tobytes()
    )
    message = "image is 30x20 but .*0.png is 20x30: the PNG matches the stored pixels"
    with pytest.raises(PanopticDatasetError, match=message + ".*EXIF orientation 8"):
        validate_panoptic_dataset(json_file, images, panoptic)
    name = "exif_invalid"
    register_panoptic_dataset(name, images, panoptic, json_file)
    try:
        mapper = PanopticFPNDatasetMapper(
            tiny_cfg((name,), num_things=1, num_stuff=1), True, augmentations=[]
        )
        with pytest.raises(ValueError, match="matches the stored pixels, but .*EXIF orientation 8"):
            mapper(DatasetCatalog.get(name)[0])
    finally:
        unregister(name)


def test_image_annotated_twice_is_an_error(tmp_path):
    json_file, images, panoptic = _write(str(tmp_path), [(20, 24), (20, 24)], duplicate=True)
    message = "annotations 0 and 2 have the same image_id 0"
    with pytest.raises(PanopticDatasetError, match=message):
        validate_panoptic_dataset(json_file, images, panoptic)
    name = "annotated_twice"
    register_panoptic_dataset(name, images, panoptic, json_file)
    try:
        with pytest.raises(PanopticDatasetError, match=message):  # training and evaluation
            DatasetCatalog.get(name)
    finally:
        unregister(name)


def test_stuff_only_dataset_fails_the_config_check(tmp_path):
    stuff_only = [{"id": 10, "name": "s1", "isthing": 0}, {"id": 11, "name": "s2", "isthing": 0}]
    json_file, images, panoptic = _write(str(tmp_path), [(20, 24)], categories=stuff_only)
    name = "stuff_only"
    register_panoptic_dataset(name, images, panoptic, json_file)
    try:
        cfg = tiny_cfg((name,), num_things=1, num_stuff=1)
        cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 0, 3
        with pytest.raises(ConfigError, match="'stuff_only' has no thing classes .*SemanticSeg"):
            check_config_against_datasets(cfg)
    finally:
        unregister(name)


def test_every_record_bad_with_skip_names_the_problem(tmp_path, caplog):
    json_file, images, panoptic = _write(str(tmp_path), [(20, 24), (20, 24)])
    for k in range(2):
        with open(os.path.join(panoptic, f"{k}.png"), "wb") as f:
            f.write(b"not a png")
    name = "all_bad"
    register_panoptic_dataset(name, images, panoptic, json_file)
    try:
        cfg = tiny_cfg((name,), num_things=1, num_stuff=1)
        cfg.DATALOADER.ON_BAD_RECORD = "skip"
        cfg.DATALOADER.NUM_WORKERS = 0
        loader = build_detection_train_loader(cfg, mapper=PanopticFPNDatasetMapper(cfg, True))
        loader = prepare_train_loader(loader)
        with (
            caplog.at_level(logging.WARNING),
            pytest.raises(
                RuntimeError, match="every record of the training set was skipped as bad"
            ),
        ):
            list(itertools.islice(loader, 2))
        assert "0.png" in caplog.text and "1.png" in caplog.text
    finally:
        unregister(name)
