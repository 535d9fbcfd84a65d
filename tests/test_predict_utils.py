"""The predictor's and demo's helpers: the weights load logged once, image collection, panoptic ids
as colours, visualization metadata and ground-truth records drawn as predictions."""

import logging
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image

from panoptic_ext.apps.predict import collect_images
from panoptic_ext.apps.predict.panoptic_visualization import (
    id_to_rgb,
    record_to_panoptic,
    visualization_metadata,
)
from panoptic_ext.apps.train import get_panoptic_cfg
from panoptic_ext.data import PanopticClassLayout, metadata_from_categories, rgb_to_id

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_CONFIG = os.path.join(
    ROOT, "configs/quick_schedules/panoptic_fpn_R_18_synthetic_instant_test.yaml"
)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_predictor_logs_only_the_real_weights_load(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer

    from panoptic_ext.apps.predict.predictor import PanopticPredictor

    cfg = get_panoptic_cfg(QUICK_CONFIG)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("model")
    cfg.MODEL.WEIGHTS = str(tmp_path / "model.pth")
    logger = logging.getLogger("fvcore.common.checkpoint")  # detectron2's checkpointer logs here
    records, level = _Records(), logger.level
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    try:
        PanopticPredictor(cfg)
        assert not any(m.startswith("No checkpoint found") for m in records.messages)
        assert any(cfg.MODEL.WEIGHTS in m for m in records.messages)  # the real load
        records.messages.clear()
        cfg.MODEL.WEIGHTS = ""  # no weights at all: the line is right, and still there
        PanopticPredictor(cfg)
        assert sum(m.startswith("No checkpoint found") for m in records.messages) == 1
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    assert not logger.filters


def test_collect_images(tmp_path):
    for name in ("b.jpg", "a.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.JPG").write_bytes(b"x")
    a, b, c = (str(tmp_path / n) for n in ("a.png", "b.jpg", "sub/c.JPG"))
    assert collect_images([str(tmp_path)]) == [a, b]
    assert collect_images([c, str(tmp_path / "*.jpg")]) == [c, b]
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        collect_images([a, str(tmp_path / "missing.jpg")])


def test_id2rgb_round_trip():
    ids = np.array([[0, 1, 255], [256, 70000, 16777215]])
    rgb = id_to_rgb(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    np.testing.assert_array_equal(rgb_to_id(rgb), ids)


def test_visualization_metadata_without_a_registered_dataset():
    cfg = get_panoptic_cfg(QUICK_CONFIG)
    cfg.DATASETS.TEST = ("not_registered_anywhere",)
    vis = visualization_metadata(cfg)
    # detectron2's PanopticFPN convention: instance class, merged stuff label (0 = things)
    assert vis.thing_classes == ["thing0", "thing1", "thing2"]
    assert vis.stuff_classes == ["things", "stuff0", "stuff1", "stuff2"]


def test_record_to_panoptic(tmp_path):
    categories = [
        {"id": 1, "name": "disc", "isthing": 1},
        {"id": 2, "name": "square", "isthing": 1},
        {"id": 11, "name": "sky", "isthing": 0},
        {"id": 12, "name": "ground", "isthing": 0},
    ]
    metadata = SimpleNamespace(**metadata_from_categories(categories))  # contiguous 0..3
    layout = PanopticClassLayout.from_metadata(metadata, "all")  # drawn "merged" anyway
    ids = np.array([[5, 5, 7, 0], [9, 9, 7, 300], [9, 9, 300, 300]])
    Image.fromarray(id_to_rgb(ids)).save(tmp_path / "pan.png")
    record = {
        "pan_seg_file_name": str(tmp_path / "pan.png"),
        "segments_info": [
            {"id": 5, "category_id": 1, "iscrowd": 0},
            {"id": 7, "category_id": 0, "iscrowd": 1},
            {"id": 9, "category_id": 3, "iscrowd": 0},
            {"id": 300, "category_id": 2, "iscrowd": 0},
        ],
    }
    seg, info = record_to_panoptic(record, layout)
    assert seg.dtype == torch.int32
    np.testing.assert_array_equal(seg.numpy(), np.where(ids == 7, 0, ids))  # crowd -> void
    assert info == [  # record ids: the metadata's contiguous ids, as the model outputs
        {"id": 5, "isthing": True, "category_id": 1},  # "square"
        {"id": 9, "isthing": False, "category_id": 3},  # "ground"
        {"id": 300, "isthing": False, "category_id": 2},  # "sky"
    ]


def test_collect_images_filters_globs_and_leaves_out_earlier_outputs(tmp_path):
    for name in ("b.jpg", "a.png", "notes.txt", "b_panoptic.png", "b_panoptic_ids.png"):
        (tmp_path / name).write_bytes(b"x")
    a, b, notes = (str(tmp_path / n) for n in ("a.png", "b.jpg", "notes.txt"))
    assert collect_images([str(tmp_path / "*")]) == [a, b] + [
        str(tmp_path / n) for n in ("b_panoptic.png", "b_panoptic_ids.png")
    ]
    # with --output the same folder, a second run does not take its outputs as inputs
    assert collect_images([str(tmp_path)], output_dir=str(tmp_path)) == [a, b]
    assert collect_images([str(tmp_path / "*")], output_dir=str(tmp_path)) == [a, b]
    with pytest.raises(FileNotFoundError, match=r"\*.txt'?: matches no image file"):
        collect_images([str(tmp_path / "*.txt")])
    assert collect_images([notes]) == [notes]  # a file named explicitly is taken as given


def test_predictor_bf16_is_opt_in_and_refused_clearly_without_cpu_support(tmp_path):
    from panoptic_ext.apps.predict.predictor import PanopticPredictor
    from panoptic_ext.modeling.cpu_inference import cpu_supports_bf16

    cfg = get_panoptic_cfg(QUICK_CONFIG)
    image = np.zeros((40, 50, 3), np.uint8)
    assert cfg.TEST.CPU_BF16 is False  # never the default
    fp32 = PanopticPredictor(cfg)(image)
    assert fp32["panoptic_seg"][0].shape == (40, 50)
    cfg.TEST.CPU_BF16 = True
    if cpu_supports_bf16():
        out = PanopticPredictor(cfg)(image)
        assert out["panoptic_seg"][0].shape == (40, 50)
    else:  # refused when built, not at the first image
        with pytest.raises(RuntimeError, match="TEST.CPU_BF16"):
            PanopticPredictor(cfg)
