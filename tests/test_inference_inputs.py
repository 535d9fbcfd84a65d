"""Inference on unusual inputs: grayscale, RGBA, 16-bit, tiny (32x32) and very large (4000x6000)
images, zero detections, zero stuff. detectron2's DefaultPredictor with the project's model must
return a valid panoptic map of the input's size (all void when there is nothing) and the PQ
evaluator must score it."""

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import DefaultPredictor
from PIL import Image

from panoptic_ext.apps.predict.image_input import as_bgr_uint8, read_image_bgr
from panoptic_ext.apps.predict.predictor import PanopticPredictor
from panoptic_ext.apps.train.checkpoint import CheckpointError
from panoptic_ext.evaluation import PanopticQualityEvaluator
from tests.reliability_common import register_tiny_synthetic, tiny_cfg, unregister

NUM_THINGS, NUM_STUFF = 3, 3


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability_inference")
    names = register_tiny_synthetic(str(root), "reliability_inference", num_train=1, num_val=2)
    DatasetCatalog.get(names["val"])  # generates the files, which the evaluator reads
    yield names
    unregister(*names.values())


def _cfg(names, **overrides):
    cfg = tiny_cfg(train=(names["train"],), test=(names["val"],))
    cfg.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 16
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


@pytest.fixture(scope="module")
def predictor(names):
    torch.manual_seed(0)
    return DefaultPredictor(_cfg(names))


def _check_panoptic(outputs, height, width):
    """A valid panoptic output of an (height, width) image; returns its segments_info."""
    panoptic_seg, segments_info = outputs["panoptic_seg"]
    assert tuple(panoptic_seg.shape) == (height, width)
    assert panoptic_seg.dtype == torch.int32
    ids = [s["id"] for s in segments_info]
    assert len(ids) == len(set(ids)) and 0 not in ids
    present = set(torch.unique(panoptic_seg).tolist())
    assert present <= set(ids) | {0}, "pixels with ids not in segments_info"
    assert set(ids) <= present, "segments without pixels"
    for s in segments_info:  # the registered metadata's contiguous ids: things, then stuff
        if s["isthing"]:
            assert 0 <= s["category_id"] < NUM_THINGS and 0 <= s["score"] <= 1
        else:
            assert NUM_THINGS <= s["category_id"] < NUM_THINGS + NUM_STUFF
    return segments_info


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_image_files_of_every_kind(predictor, tmp_path):
    rgb = _rgb(48, 56)
    gray = rgb[:, :, 1]
    files = {
        "gray.png": Image.fromarray(gray, "L"),
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full((48, 56), 128, np.uint8)]), "RGBA"),
        "palette.png": Image.fromarray(rgb).convert("P"),
        "gray16.png": Image.fromarray(gray.astype(np.uint16) * 257),
        "rgb.jpg": Image.fromarray(rgb),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
    }
    predicted = ("gray.png", "rgba.png", "gray16.png", "cmyk.jpg")  # the others: conversion only
    for name, img in files.items():
        img.save(tmp_path / name)
        image = read_image_bgr(str(tmp_path / name))
        assert image.shape == (48, 56, 3) and image.dtype == np.uint8, name
        if name in predicted:
            _check_panoptic(predictor(image), 48, 56)
    # 16 bits are scaled to 8, not saturated (detectron2's read_image gives 255 almost everywhere)
    assert np.array_equal(read_image_bgr(str(tmp_path / "gray16.png"))[:, :, 0], gray)
    assert np.array_equal(read_image_bgr(str(tmp_path / "rgba.png")), rgb[:, :, ::-1])


def test_arrays_of_every_kind(predictor):
    rgb = _rgb(40, 30)
    arrays = {
        "gray": rgb[:, :, 0],
        "gray_hw1": rgb[:, :, :1],
        "gray_alpha": np.dstack([rgb[:, :, 0], rgb[:, :, 1]]),
        "rgba": np.dstack([rgb, rgb[:, :, 0]]),
        "uint16": rgb.astype(np.uint16) * 257,
        "float01": rgb / 255.0,
        "float_nan": np.where(rgb > 250, np.nan, rgb / 255.0),
        "bool": rgb[:, :, 0] > 128,
    }
    for name, array in arrays.items():
        image = as_bgr_uint8(array)
        assert image.shape == (40, 30, 3) and image.dtype == np.uint8, name
        if name in ("gray", "rgba", "uint16", "float_nan"):  # the others: conversion only
            _check_panoptic(predictor(image), 40, 30)
    assert np.array_equal(as_bgr_uint8(arrays["uint16"]), rgb)
    assert np.array_equal(as_bgr_uint8(rgb, input_format="RGB"), rgb[:, :, ::-1])
    for bad in (np.zeros((0, 5, 3)), np.zeros((4, 4, 5)), np.zeros(7)):
        with pytest.raises(ValueError, match="expected an image"):
            as_bgr_uint8(bad)


def test_unreadable_image_file_names_it(tmp_path):
    path = tmp_path / "broken.png"
    Image.fromarray(_rgb(20, 20)).save(path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(OSError, match="broken.png"):
        read_image_bgr(str(path))
    with pytest.raises(OSError, match="missing.png"):
        read_image_bgr(str(tmp_path / "missing.png"))


def test_tiny_image(predictor):
    _check_panoptic(predictor(_rgb(32, 32)), 32, 32)
    _check_panoptic(predictor(_rgb(1, 7)), 1, 7)


def test_very_large_image(names):
    # DefaultPredictor resizes to INPUT.MIN/MAX_SIZE_TEST; the outputs come back at 4000x6000.
    # Few detections and no full-resolution semantic logits keep memory and time low.
    cfg = _cfg(
        names,
        **{
            "TEST.DETECTIONS_PER_IMAGE": 5,
            "MODEL.PANOPTIC_EXT.POSTPROCESS.RETURN_SEM_SEG": False,
        },
    )
    torch.manual_seed(0)
    image = np.zeros((4000, 6000, 3), np.uint8)
    image[:, :3000] = (40, 160, 90)
    outputs = DefaultPredictor(cfg)(image)
    _check_panoptic(outputs, 4000, 6000)


def _nothing_predictor(names, stuff: bool):
    """A predictor that detects nothing and, without ``stuff``, labels every pixel 'things'."""
    torch.manual_seed(0)
    predictor = DefaultPredictor(_cfg(names, **{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 1.01}))
    if not stuff:
        conv = predictor.model.sem_seg_head.predictor
        with torch.no_grad():
            conv.weight.zero_()
            conv.bias.copy_(torch.tensor([10.0] + [-10.0] * NUM_STUFF))
    return predictor


def _evaluate(names, predictor):
    evaluator = PanopticQualityEvaluator(names["val"], distributed=False)
    evaluator.reset()
    for record in DatasetCatalog.get(names["val"]):
        image = read_image_bgr(record["file_name"])
        outputs = predictor(image)
        _check_panoptic(outputs, record["height"], record["width"])
        evaluator.process([record], [outputs])
        yield outputs
    yield evaluator.evaluate()


def test_zero_detections_and_zero_stuff_give_all_void_and_are_scored(names):
    *outputs, results = _evaluate(names, _nothing_predictor(names, stuff=False))
    for o in outputs:
        panoptic_seg, segments_info = o["panoptic_seg"]
        assert segments_info == [] and not panoptic_seg.any()  # all void
        assert len(o["instances"]) == 0
    pq = results["panoptic_seg"]
    assert pq["PQ"] == 0.0 and pq["PQ_th"] == 0.0 and pq["PQ_st"] == 0.0


def test_zero_detections_with_stuff_is_scored(names):
    *outputs, results = _evaluate(names, _nothing_predictor(names, stuff=True))
    for o in outputs:
        assert all(not s["isthing"] for s in o["panoptic_seg"][1])
        assert len(o["instances"]) == 0
    pq = results["panoptic_seg"]
    assert pq["PQ_th"] == 0.0 and 0.0 <= pq["PQ"] <= 100.0 and np.isfinite(pq["PQ_st"])


def test_panoptic_predictor_takes_any_array_and_loads_strictly(names, predictor, tmp_path):
    gray = _rgb(40, 30)[:, :, 0]
    with pytest.raises(ValueError, match="axes don't match"):  # detectron2's DefaultPredictor
        predictor(gray)
    torch.save({"model": predictor.model.state_dict()}, tmp_path / "model.pth")
    strict = PanopticPredictor(_cfg(names, **{"MODEL.WEIGHTS": str(tmp_path / "model.pth")}))
    _check_panoptic(strict(gray), 40, 30)
    _check_panoptic(strict(_rgb(40, 30).astype(np.uint16) * 257), 40, 30)

    # weights for other class counts: an error listing the layers, not a warning
    other = _cfg(
        names, **{"MODEL.WEIGHTS": str(tmp_path / "model.pth"), "MODEL.ROI_HEADS.NUM_CLASSES": 5}
    )
    with pytest.raises(CheckpointError) as e:
        PanopticPredictor(other)
    msg = str(e.value)
    assert "roi_heads.box_predictor.cls_score.weight: (4, 64) in the checkpoint, (6, 64)" in msg
    assert "roi_heads.mask_head.predictor.weight: (3, 32, 1, 1) in the checkpoint" in msg
    (tmp_path / "notes.pth").write_text("not weights")
    with pytest.raises(CheckpointError, match="notes.pth"):
        PanopticPredictor(_cfg(names, **{"MODEL.WEIGHTS": str(tmp_path / "notes.pth")}))
