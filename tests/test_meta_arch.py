"""PanopticFPNExt end to end: detectron2 equivalence (also from detectron2's own model-zoo YAML
with only META_ARCHITECTURE switched), training step, inference, every YAML."""

import glob
import os

import pytest
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from detectron2.utils.visualizer import Visualizer

import panoptic_ext  # noqa: F401  (registers the plugins)
from panoptic_ext.modeling import PanopticFPNExt
from tests.common import (
    CONFIGS,
    R50_1X,
    REPO,
    get_model_zoo_cfg,
    load_cfg,
    make_detections_confident,
    make_fast,
    random_image_batch,
    training_batch,
)


def _fast(cfg):
    make_fast(cfg)
    cfg.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 256  # tiny images
    return cfg


@pytest.fixture(scope="module")
def d2_and_ours():
    """detectron2's PanopticFPN (model-zoo config) and PanopticFPNExt (the project's config, with
    detectron2's category ids: the shipped config names another COCO dataset's label space)."""
    torch.manual_seed(0)
    ours = _fast(load_cfg(R50_1X))
    ours.MODEL.PANOPTIC_EXT.POSTPROCESS.CATEGORY_IDS = "detectron2"
    return build_model(_fast(get_model_zoo_cfg())), build_model(ours)


def _losses(model, batch):
    model.train()
    torch.manual_seed(1)  # same proposal sampling
    with EventStorage(0):
        return {k: v.item() for k, v in model(batch).items()}


def test_state_dict_keys_and_shapes_are_detectron2s(d2_and_ours):
    d2, ours = d2_and_ours
    assert type(d2).__name__ == "PanopticFPN" and isinstance(ours, PanopticFPNExt)
    theirs, mine = d2.state_dict(), ours.state_dict()
    assert list(mine) == list(theirs)
    assert all(mine[k].shape == v.shape for k, v in theirs.items())
    ours.load_state_dict(theirs, strict=True)


def test_same_losses_and_outputs_as_detectron2(d2_and_ours):
    d2, ours = d2_and_ours
    ours.load_state_dict(d2.state_dict())
    batch = training_batch([(96, 128)])
    theirs, mine = _losses(d2, batch), _losses(ours, batch)
    assert mine == theirs and len(mine) == 6

    make_detections_confident(d2)
    ours.load_state_dict(d2.state_dict())
    inputs = random_image_batch([(200, 250), (200, 249)], seed=5)
    inputs[1].update(height=150, width=187)  # a resized output too
    outputs = []
    for model in (d2, ours):
        model.eval()
        with torch.no_grad():
            outputs.append(model(inputs))
    for theirs, mine in zip(*outputs):
        (pan_t, info_t), (pan_o, info_o) = theirs["panoptic_seg"], mine["panoptic_seg"]
        assert torch.equal(pan_o, pan_t) and info_o == info_t
        assert sum(s["isthing"] for s in info_o) >= 5  # the fusion really ran
        assert sum(not s["isthing"] for s in info_o) >= 2
        assert torch.equal(mine["sem_seg"], theirs["sem_seg"])
        for field in ("pred_masks", "scores", "pred_classes"):
            assert torch.equal(mine["instances"].get(field), theirs["instances"].get(field))
    assert tuple(outputs[1][1]["panoptic_seg"][0].shape) == (150, 187)


@pytest.mark.parametrize(
    "keys",
    [{}, {"MODEL.SEM_SEG_HEAD.LOSS_WEIGHT": 0.25, "MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT": 0.6}],
)
def test_model_zoo_yaml_with_only_the_meta_architecture_switched_trains_detectron2s_model(keys):
    """detectron2's own Panoptic FPN YAML + META_ARCHITECTURE PanopticFPNExt: detectron2's loss
    weights, hence its losses (also with other values of detectron2's two weight keys)."""
    cfgs = [_fast(get_model_zoo_cfg()) for _ in range(2)]
    for cfg in cfgs:
        cfg.merge_from_list([x for kv in keys.items() for x in kv])
    cfgs[1].MODEL.META_ARCHITECTURE = "PanopticFPNExt"
    torch.manual_seed(0)
    d2, ours = build_model(cfgs[0]), build_model(cfgs[1])
    assert type(ours.sem_seg_head) is type(d2.sem_seg_head)  # detectron2's SemSegFPNHead
    ours.load_state_dict(d2.state_dict())
    batch = training_batch([(96, 128)], seed=3)
    theirs, mine = _losses(d2, batch), _losses(ours, batch)
    assert mine == theirs
    expected_s = keys.get("MODEL.SEM_SEG_HEAD.LOSS_WEIGHT", 0.5)
    ours.train()
    with EventStorage(0) as storage:
        ours(batch)
        assert storage.latest()["lambda_semantic"][0] == pytest.approx(expected_s)
        expected_i = keys.get("MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT", 1.0)
        assert storage.latest()["lambda_instance"][0] == pytest.approx(expected_i)


@pytest.fixture(scope="module")
def learned_model():
    cfg = _fast(load_cfg(R50_1X))
    cfg.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.NAME = "learned"
    torch.manual_seed(0)
    return build_model(cfg)


def test_training_step_on_odd_sizes_and_an_image_without_annotations(learned_model):
    model = learned_model.train()
    with EventStorage(3) as storage:
        losses = model(training_batch([(200, 250), (200, 249)], empty=(1,)))
        sum(losses.values()).backward()
        logged = storage.latest()
    assert set(losses) == {
        "loss_sem_seg",
        "loss_rpn_cls",
        "loss_rpn_loc",
        "loss_cls",
        "loss_box_reg",
        "loss_mask",
        "loss_uncertainty",
    }
    assert all(torch.isfinite(v) for v in losses.values())
    assert logged["lambda_semantic"][0] == pytest.approx(0.5)
    assert logged["lambda_instance"][0] == pytest.approx(1.0)
    assert model.loss_weight_schedule.log_variances.grad is not None
    assert model.sem_seg_head.predictor.weight.grad is not None
    model.zero_grad()


def test_inference_outputs_and_detectron2_visualizer(learned_model):
    model = learned_model.eval()
    inputs = random_image_batch([(200, 250), (200, 249)], seed=2)
    with torch.no_grad():
        outputs = model(inputs)
        raw_instances, raw_sem_seg = model.inference(inputs, do_postprocess=False)
    assert len(outputs) == 2
    assert list(outputs[0]) == ["sem_seg", "instances", "panoptic_seg"]
    assert tuple(outputs[1]["sem_seg"].shape) == (54, 200, 249)
    assert outputs[1]["instances"].image_size == (200, 249)
    assert len(raw_instances) == 2 and tuple(raw_sem_seg.shape) == (2, 54, 224, 256)
    panoptic_seg, segments_info = outputs[0]["panoptic_seg"]
    assert panoptic_seg.dtype == torch.int32
    # segments_info ids are the contiguous ids of DATASETS.TEST[0] (CATEGORY_IDS "dataset")
    metadata = MetadataCatalog.get(load_cfg(R50_1X).DATASETS.TEST[0])
    image = inputs[0]["image"].permute(1, 2, 0).numpy()
    vis = Visualizer(image, metadata).draw_panoptic_seg(panoptic_seg, segments_info)
    assert vis.get_image().shape == (200, 250, 3)
    for s in segments_info:  # each id names a class of that dataset, of the right kind
        assert s["category_id"] in (
            metadata.thing_dataset_id_to_contiguous_id.values()
            if s["isthing"]
            else metadata.stuff_dataset_id_to_contiguous_id.values()
        )


def test_training_needs_a_semantic_label_map(learned_model):
    batch = training_batch([(64, 64)])
    del batch[0]["sem_seg"]
    learned_model.train()
    with EventStorage(0), pytest.raises(ValueError, match="sem_seg"):
        learned_model(batch)


def _yaml_files():
    return sorted(glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True))


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: os.path.relpath(p, REPO))
def test_every_yaml_loads_and_builds(path):
    cfg = load_cfg(path)
    raw = CfgNode.load_yaml_with_base(path, allow_unsafe=True)
    if "META_ARCHITECTURE" not in (raw.get("MODEL") or {}):
        pytest.skip("a fragment meant to be included by others")
    assert isinstance(build_model(cfg), torch.nn.Module)


def _flatten(cfg, prefix=""):
    flat = {}
    for key, value in cfg.items():
        if hasattr(value, "items"):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


@pytest.mark.parametrize(
    "name", ["panoptic_fpn_R_50_1x", "panoptic_fpn_R_50_3x", "panoptic_fpn_R_101_3x"]
)
def test_coco_configs_match_detectron2_model_zoo(name):
    """Schedules, input sizes, loss weights and thresholds as in detectron2's model zoo: only the
    meta-architecture and the two heads that replace detectron2's differ."""
    intended = {
        "MODEL.META_ARCHITECTURE",
        "MODEL.SEM_SEG_HEAD.NAME",
        "MODEL.ROI_HEADS.NAME",  # PanopticROIHeads: StandardROIHeads + masks on demand
        "DATASETS.TRAIN",  # the standard panoptic records: no prepare_panoptic_fpn.py
        "DATASETS.TEST",
    }
    ours = _flatten(load_cfg(os.path.join(CONFIGS, "COCO-PanopticSegmentation", f"{name}.yaml")))
    theirs = _flatten(get_model_zoo_cfg(f"COCO-PanopticSegmentation/{name}.yaml"))
    theirs["MODEL.WEIGHTS"] = ours["MODEL.WEIGHTS"] = None  # cleared by the helpers
    assert {k for k in theirs if ours[k] != theirs[k]} == intended
    assert ours["MODEL.SEM_SEG_HEAD.LOSS_WEIGHT"] == 0.5
    assert ours["MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT"] == 1.0
