"""Optimizers (``SOLVER.OPTIMIZER``): detectron2's SGD, AdamW, no weight decay on learned loss
weights, full-model gradient clipping; the CPU configs that use them."""

import os

import pytest
import torch

from panoptic_ext.apps.train import build_optimizer, get_panoptic_cfg
from panoptic_ext.compat import detectron2_sgd_foreach


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
    model.loss_weight_schedule = LearnedLossWeights()
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


@pytest.mark.parametrize(
    "config",
    [
        "configs/Synthetic-PanopticSegmentation/panoptic_fpn_R_18_scratch_cpu.yaml",
        "configs/quick_schedules/panoptic_fpn_R_18_synthetic_instant_test.yaml",
    ],
)
def test_cpu_configs_use_adamw(config):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = get_panoptic_cfg(os.path.join(root, config))
    assert cfg.MODEL.META_ARCHITECTURE == "PanopticFPNExt"
    assert cfg.MODEL.RESNETS.NORM == "BN" and cfg.MODEL.WEIGHTS == ""
    assert cfg.SOLVER.OPTIMIZER == "AdamW"
