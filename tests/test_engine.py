"""Engine utilities: optimizers, the progress hook, training curves, predictor outputs."""

import json
import logging
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from PIL import Image

from panoptic_ext.compat import detectron2_sgd_foreach
from panoptic_ext.data import PanopticClassLayout, metadata_from_categories, rgb_to_id
from panoptic_ext.apps.train import ProgressHook, build_optimizer, get_panoptic_cfg, plot_training_curves, read_metrics
from panoptic_ext.apps.predict import collect_images
from panoptic_ext.apps.predict.panoptic_visualization import (
    id_to_rgb,
    record_to_panoptic,
    visualization_metadata,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_CONFIG = os.path.join(
    ROOT, "configs/quick_schedules/panoptic_fpn_R_18_synthetic_instant_test.yaml"
)


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 1)
        self.norm = torch.nn.BatchNorm2d(3)


def _solver_cfg(optimizer="AdamW", clip_type=None):
    cfg = get_panoptic_cfg()
    cfg.SOLVER.OPTIMIZER = optimizer
    cfg.SOLVER.BASE_LR = 0.5
    cfg.SOLVER.WEIGHT_DECAY = 0.01
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.MOMENTUM = 0.0
    if clip_type:
        cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
        cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
        cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    return cfg


def test_adamw_param_groups():
    model = _Net()
    opt = build_optimizer(_solver_cfg("AdamW"), model)
    assert isinstance(opt, torch.optim.AdamW)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay[id(model.conv.weight)] == 0.01
    assert decay[id(model.norm.weight)] == 0.0  # SOLVER.WEIGHT_DECAY_NORM
    assert all(g["lr"] == 0.5 for g in opt.param_groups)


def _hyperparams(optimizer):
    """id(parameter) -> the hyper-parameters of its group (lr, weight_decay, ...)."""
    return {
        id(p): {k: v for k, v in g.items() if k != "params"}
        for g in optimizer.param_groups
        for p in g["params"]
    }


def test_sgd_is_detectron2s():
    from detectron2.solver import build_optimizer as build_d2_optimizer

    cfg = _solver_cfg("SGD")
    cfg.SOLVER.BIAS_LR_FACTOR = 2.0
    model = _Net()
    opt = build_optimizer(cfg, model)
    assert type(opt) is torch.optim.SGD
    reference = build_d2_optimizer(cfg, model)
    ours, theirs = _hyperparams(opt), _hyperparams(reference)
    assert set(ours) == set(theirs) == {id(p) for p in model.parameters()}
    for key in ours:
        assert ours[key] == theirs[key]
    assert ours[id(model.conv.bias)]["lr"] == 1.0  # BIAS_LR_FACTOR
    # detectron2 main asks for torch's multi-tensor SGD, v0.6 leaves torch's default
    assert opt.defaults["foreach"] is reference.defaults["foreach"] is detectron2_sgd_foreach()
    assert detectron2_sgd_foreach() in (True, None)


@pytest.mark.parametrize("optimizer", ["SGD", "AdamW"])
def test_learned_loss_weights_get_no_weight_decay(optimizer):
    from panoptic_ext.modeling.loss_weights import LearnedLossWeights

    model = _Net()
    model.loss_weight_schedule = LearnedLossWeights(instance=1.0, semantic=0.5)
    opt = build_optimizer(_solver_cfg(optimizer), model)
    decay = {k: v["weight_decay"] for k, v in _hyperparams(opt).items()}
    assert decay[id(model.loss_weight_schedule.log_variances)] == 0.0
    assert decay[id(model.conv.weight)] == 0.01  # the model's weights still decay
    # one step with zero gradients: decay alone would move the log-variances towards 0
    before = model.loss_weight_schedule.log_variances.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(model.loss_weight_schedule.log_variances.detach(), before)
    assert not torch.equal(model.conv.weight.detach(), model.conv.weight.detach() * 0)


def test_full_model_gradient_clipping():
    cfg = _solver_cfg("SGD", clip_type="full_model")
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    model = _Net()
    opt = build_optimizer(cfg, model)
    params = [p for g in opt.param_groups for p in g["params"]]
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.full_like(p, 3.0)
    joint_norm = 3.0 * sum(p.numel() for p in params) ** 0.5
    opt.step()
    for p, b in zip(params, before):
        # lr 0.5, gradient scaled to joint norm 1 (not per parameter)
        torch.testing.assert_close(p.detach(), b - 0.5 * 3.0 / joint_norm)


def test_unknown_optimizer():
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_optimizer(_solver_cfg("Adagrad"), _Net())


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


def test_progress_hook_line(caplog):
    hook = ProgressHook(period=0.0, bar_width=10)
    with EventStorage() as storage:
        hook.trainer = SimpleNamespace(iter=0, max_iter=10, storage=storage)
        hook.before_train()
        with caplog.at_level("INFO", logger="panoptic_ext.apps.train.hooks"):
            for it in range(3):
                hook.trainer.iter = storage.iter = it
                storage.put_scalar("total_loss", 2.0)
                hook.before_step()
                hook.after_step()
    line = caplog.records[-1].getMessage()
    assert re.match(r"\[###-------\] 3/10 \(30%\) [\d.]+ s/it, elapsed .*, ETA \d+:\d\d:\d\d", line)
    assert line.endswith("total_loss 2.000")


def test_training_curves(tmp_path):
    path = tmp_path / "metrics.json"
    rows = [
        {"iteration": 19, "total_loss": 3.0, "loss_mask": 1.0, "lr": 0.1},
        {"iteration": 19, "panoptic_seg/PQ": 10.0, "panoptic_seg/PQ_th": 5.0},
        {"iteration": 39, "total_loss": 2.0, "loss_mask": 0.5},
        # a resumed run writes iteration 39 again: its values win
        {"iteration": 39, "total_loss": 1.5, "panoptic_seg/PQ": 20.0, "sem_seg/mIoU": 40.0},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n" + '{"iteration": 4')
    metrics = read_metrics(str(path))
    assert list(metrics) == [19, 39]
    assert metrics[39] == {
        "total_loss": 1.5,
        "loss_mask": 0.5,
        "panoptic_seg/PQ": 20.0,
        "sem_seg/mIoU": 40.0,
    }
    assert metrics[19]["panoptic_seg/PQ_th"] == 5.0
    out = plot_training_curves(str(path), str(tmp_path / "plots" / "curves.png"))
    image = Image.open(out)
    assert image.format == "PNG" and image.size[0] > image.size[1] > 100


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


@pytest.mark.parametrize(
    "config",
    [
        "configs/Synthetic-PanopticSegmentation/panoptic_fpn_R_18_scratch_cpu.yaml",
        "configs/quick_schedules/panoptic_fpn_R_18_synthetic_instant_test.yaml",
    ],
)
def test_engine_configs_load(config):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = get_panoptic_cfg(os.path.join(root, config))
    assert cfg.MODEL.META_ARCHITECTURE == "PanopticFPNExt"
    assert cfg.MODEL.RESNETS.NORM == "BN" and cfg.MODEL.WEIGHTS == ""
    assert cfg.SOLVER.OPTIMIZER == "AdamW"


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
