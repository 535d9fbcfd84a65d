"""
Panoptic test-time augmentation (``PanopticFPNWithTTA``): one identity view equals plain
inference exactly (both semantic layouts, with and without the optional outputs), flip TTA of a
mirrored image gives the mirrored output, and images without detections, odd sizes, pre-resized
inputs, bad ``TEST.AUG`` values, ``train_net.py --eval-only`` and the predictor.
"""

import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.modeling import build_model

import panoptic_ext  # noqa: F401  (registers the plugins)
from panoptic_ext.apps.predict.predictor import PanopticPredictor
from panoptic_ext.apps.train import main, parse_args
from panoptic_ext.apps.train.config_check import ConfigError, check_config
from panoptic_ext.modeling import PanopticFPNWithTTA
from tests.common import (
    assert_same_outputs,
    detectron2_reference_cfg,
    make_detections_confident,
    random_image_batch,
)
from tests.reliability_common import register_tiny_synthetic, tiny_cfg, unregister

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_CONFIG = os.path.join(
    ROOT, "configs/quick_schedules/panoptic_fpn_R_18_synthetic_instant_test.yaml"
)
SIZES = [(96, 128), (95, 127)]


def _cfg(layout="merged", returns=True):
    cfg = tiny_cfg()
    cfg.MODEL.ROI_HEADS.NAME = "PanopticROIHeads"
    cfg.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 64  # small images
    cfg.MODEL.PANOPTIC_EXT.POSTPROCESS.RETURN_SEM_SEG = returns
    cfg.MODEL.PANOPTIC_EXT.POSTPROCESS.RETURN_INSTANCES = returns
    if layout == "all":
        cfg.MODEL.PANOPTIC_EXT.SEM_SEG_THINGS = "all"
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 6  # 3 things + 3 stuff
    return cfg


def _model(cfg):
    torch.manual_seed(0)
    model = build_model(cfg)
    make_detections_confident(model)
    return model.eval()


def _tta(cfg, model, min_sizes, max_size=1000, flip=False):
    cfg = cfg.clone()
    cfg.TEST.AUG.MIN_SIZES, cfg.TEST.AUG.MAX_SIZE, cfg.TEST.AUG.FLIP = min_sizes, max_size, flip
    return PanopticFPNWithTTA(cfg, model)


def _keys(returns):
    return (["sem_seg", "instances"] if returns else []) + ["panoptic_seg"]


@pytest.mark.parametrize("layout,returns", [("merged", True), ("all", False), ("all", True)])
def test_one_identity_view_equals_plain_inference(layout, returns):
    cfg = _cfg(layout, returns)
    model = _model(cfg)
    for h, w in SIZES:
        inputs = random_image_batch([(h, w)], seed=3)
        with torch.no_grad():
            plain = model(inputs)
            tta = _tta(cfg, model, (min(h, w),))(inputs)
        assert list(tta[0]) == list(plain[0]) == _keys(returns)
        assert_same_outputs(tta, plain, keys=_keys(returns))
        assert sum(s["isthing"] for s in plain[0]["panoptic_seg"][1]) >= 3


@pytest.mark.parametrize("layout", ["merged", "all"])
def test_flip_tta_of_a_mirrored_image_is_the_mirrored_output(layout):
    cfg = _cfg(layout)
    model = _model(cfg)
    tta = _tta(cfg, model, (95,), flip=True)
    image = random_image_batch([(95, 127)], seed=5)[0]
    mirrored = dict(image, image=image["image"].flip(-1))
    with torch.no_grad():
        out, out_mirrored = tta([image, mirrored])
        plain = model([image])[0]["panoptic_seg"]
    # the two views swap roles: averaged logits are mirrored exactly
    assert torch.equal(out["sem_seg"].flip(-1), out_mirrored["sem_seg"])
    (pan, segments), (pan_m, segments_m) = out["panoptic_seg"], out_mirrored["panoptic_seg"]
    # segment ids follow the scores and labels: equal up to ties in box / mask rounding
    assert (pan.flip(-1) == pan_m).float().mean() > 0.99
    assert [(s["category_id"], s["isthing"]) for s in segments] == [
        (s["category_id"], s["isthing"]) for s in segments_m
    ]
    assert sum(s["isthing"] for s in segments) >= 3
    assert not torch.equal(plain[0], pan)  # the flipped view changed the result


def _check_output(out, h, w, num_sem_seg_classes=4):
    panoptic_seg, segments_info = out["panoptic_seg"]
    assert tuple(panoptic_seg.shape) == (h, w)
    assert tuple(out["sem_seg"].shape) == (num_sem_seg_classes, h, w)
    assert out["instances"].image_size == (h, w)
    ids = {s["id"] for s in segments_info}
    assert set(torch.unique(panoptic_seg).tolist()) <= ids | {0}


def test_multi_scale_on_odd_sizes_and_pre_resized_inputs():
    cfg = _cfg()
    model = _model(cfg)
    with torch.no_grad():  # random masks average to < 0.5: make them confident
        model.roi_heads.mask_head.predictor.bias.fill_(5.0)
    tta = _tta(cfg, model, (61, 80, 97), max_size=160, flip=True)
    # a 95x127 image, and one given resized (as by the test mapper) with its original size
    inputs = random_image_batch([(95, 127), (64, 85)], seed=1)
    inputs[1]["height"], inputs[1]["width"] = 101, 133
    with torch.no_grad():
        outputs = tta(inputs)
    _check_output(outputs[0], 95, 127)
    _check_output(outputs[1], 101, 133)
    assert sum(s["isthing"] for s in outputs[0]["panoptic_seg"][1]) >= 3


def test_image_without_detections():
    cfg = _cfg()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 1.01
    model = _model(cfg)
    with torch.no_grad():
        out = _tta(cfg, model, (48, 95), flip=True)(random_image_batch([(95, 127)]))[0]
    _check_output(out, 95, 127)
    assert len(out["instances"]) == 0
    assert out["instances"].pred_masks.shape[0] == 0
    assert not any(s["isthing"] for s in out["panoptic_seg"][1])


@pytest.mark.parametrize(
    "aug,message",
    [
        ({"MIN_SIZES": ()}, r"TEST.AUG.MIN_SIZES = \(\): .* at least one"),
        ({"MIN_SIZES": (400, 800), "MAX_SIZE": 600}, r"TEST.AUG.MAX_SIZE = 600 is below .*\[800\]"),
        ({"MIN_SIZES": (0, 256)}, r"TEST.AUG.MIN_SIZES = \(0, 256\): .*positive"),
    ],
)
def test_bad_test_aug_config_names_the_key(aug, message):
    cfg = _cfg()
    cfg.TEST.AUG.ENABLED = True
    cfg.TEST.AUG.update(aug)
    with pytest.raises(ConfigError, match=message):
        check_config(cfg, datasets=False)
    with pytest.raises(ValueError, match=message):
        PanopticFPNWithTTA(cfg, _model(_cfg()))
    cfg.TEST.AUG.ENABLED = False  # not checked when TTA is off
    check_config(cfg, datasets=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("tta")
    names = register_tiny_synthetic(str(root), "test_tta", num_train=1, num_val=2, size=64)
    DatasetCatalog.get(names["val"])  # generates the files, which the evaluators read
    yield names
    unregister(*names.values())


@pytest.fixture(scope="module")
def weights(dataset, tmp_path_factory):
    cfg = tiny_cfg(test=(dataset["val"],))
    path = tmp_path_factory.mktemp("weights") / "model.pth"
    torch.manual_seed(0)
    torch.save({"model": _model(cfg).state_dict()}, path)
    return str(path)


def test_eval_only_reports_results_with_and_without_tta(dataset, weights, tmp_path):
    # one identity view (the 64x64 images at MIN_SIZE_TEST 64): both evaluations agree exactly
    args = parse_args(
        ["--config-file", QUICK_CONFIG, "--eval-only"]
        + ["DATASETS.TRAIN", f"('{dataset['train']}',)", "DATASETS.TEST", f"('{dataset['val']}',)"]
        + ["OUTPUT_DIR", str(tmp_path), "MODEL.WEIGHTS", weights, "TEST.AUG.ENABLED", "True"]
        + ["TEST.AUG.MIN_SIZES", "(64,)", "TEST.AUG.MAX_SIZE", "64", "TEST.AUG.FLIP", "False"]
        + ["TEST.EVAL_TASKS", "['panoptic_seg', 'sem_seg']"]
    )
    results = flatten_results_dict(main(args))
    plain = {k: v for k, v in results.items() if "_TTA/" not in k}
    assert {"panoptic_seg/PQ", "sem_seg/mIoU"} <= set(plain)
    for key, value in plain.items():
        tta_key = key.replace("/", "_TTA/", 1)
        assert value == results[tta_key] or (np.isnan(value) and np.isnan(results[tta_key]))
    assert os.path.isdir(tmp_path / "inference_TTA" / dataset["val"])


def test_predictor_with_tta(dataset, weights):
    cfg = tiny_cfg(test=(dataset["val"],))
    cfg.MODEL.WEIGHTS = weights
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    plain = PanopticPredictor(cfg)(image)
    cfg.TEST.AUG.ENABLED = True
    cfg.TEST.AUG.MIN_SIZES, cfg.TEST.AUG.MAX_SIZE, cfg.TEST.AUG.FLIP = (46,), 64, False
    predictor = PanopticPredictor(cfg)
    assert isinstance(predictor.model, PanopticFPNWithTTA)
    # one view: the image as resized to INPUT.MIN/MAX_SIZE_TEST (64), 46x64
    assert_same_outputs([predictor(image)], [plain])
    cfg.TEST.AUG.MIN_SIZES, cfg.TEST.AUG.MAX_SIZE, cfg.TEST.AUG.FLIP = (48, 64, 80), 100, True
    out = PanopticPredictor(cfg)(image)
    assert tuple(out["panoptic_seg"][0].shape) == (50, 70)


def test_other_models_are_refused_by_name():
    cfg = _cfg()
    theirs = build_model(
        detectron2_reference_cfg(cfg)
    )  # detectron2's PanopticFPN: no post-processor
    with pytest.raises(TypeError, match=r"PanopticFPN has no \['postprocessor'\]"):
        PanopticFPNWithTTA(cfg, theirs)
