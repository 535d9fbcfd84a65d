"""Loss weights: detectron2's keys give lambda_i / lambda_s, schedules give factors on them, the
deprecated keys still give the model they gave, learned factors are trained and saved."""

import logging
import math
from types import SimpleNamespace

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from panoptic_ext.modeling import (
    LOSS_WEIGHT_SCHEDULE_REGISTRY,
    LossWeightSchedule,
    PanopticFPNExt,
    build_loss_weight_schedule,
)
from tests.common import get_model_zoo_cfg


def build(name, **keys):
    cfg = get_model_zoo_cfg()
    cfg.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.NAME = name
    for key, value in keys.items():
        cfg.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS[key] = value
    cfg.SOLVER.MAX_ITER = 1000
    return build_loss_weight_schedule(cfg)


def factors(schedule, iteration):
    w = schedule(iteration)
    return (
        pytest.approx(float(torch.as_tensor(w.instance).detach()), abs=1e-6),
        pytest.approx(float(torch.as_tensor(w.semantic).detach()), abs=1e-6),
    )


def test_registry_lists_the_config_names_and_rejects_unknown_ones():
    names = {name for name, _ in LOSS_WEIGHT_SCHEDULE_REGISTRY}
    assert names == {"constant", "linear_warmup", "step", "cosine", "learned", "alternating"}
    with pytest.raises(ValueError, match="LOSS_WEIGHTS.NAME='exponential'.*known"):
        build("exponential")


def test_constant_is_detectron2s_weights():
    schedule = build_loss_weight_schedule(get_model_zoo_cfg())
    assert isinstance(schedule, LossWeightSchedule)
    for it in (0, 12345):
        assert factors(schedule, it) == (1.0, 1.0)
    assert list(schedule.parameters()) == [] and schedule.state_dict() == {}
    assert schedule.extra_losses() == {}


def test_linear_warmup_ramps_the_factors_to_one():
    schedule = build("linear_warmup", START_INSTANCE=0.5, START_SEMANTIC=0.0, WARMUP_ITERS=100)
    assert factors(schedule, 0) == (0.5, 0.0)
    assert factors(schedule, 25) == (0.625, 0.25)
    assert factors(schedule, 100) == (1.0, 1.0)
    assert factors(schedule, 5000) == (1.0, 1.0)
    assert factors(build("linear_warmup", WARMUP_ITERS=0), 0) == (1.0, 1.0)
    with pytest.raises(ValueError, match="WARMUP_ITERS"):
        build("linear_warmup", WARMUP_ITERS=-1)


def test_alternating_trains_one_loss_per_minibatch():
    schedule = build("alternating")
    for it in (0, 2, 1000):
        assert factors(schedule, it) == (1.0, 0.0)
    for it in (1, 3, 1001):
        assert factors(schedule, it) == (0.0, 1.0)


def test_step_multiplies_cumulatively():
    schedule = build("step", STEPS=[10, 20], FACTORS=[[1.0, 0.5], [0.1, 2.0]])
    assert factors(schedule, 9) == (1.0, 1.0)
    assert factors(schedule, 10) == (1.0, 0.5)
    assert factors(schedule, 19) == (1.0, 0.5)
    assert factors(schedule, 20) == (0.1, 1.0)
    with pytest.raises(ValueError, match="FACTORS"):
        build("step", STEPS=[10, 20], FACTORS=[[1.0, 0.5]])
    with pytest.raises(ValueError, match="STEPS must increase"):
        build("step", STEPS=[20, 10], FACTORS=[[1.0, 0.5], [1.0, 0.5]])


def test_cosine_follows_a_half_cosine():
    schedule = build("cosine", START_SEMANTIC=0.0, MAX_ITER=200)
    assert factors(schedule, 0) == (1.0, 0.0)
    assert factors(schedule, 50) == (1.0, 0.5 - 0.5 * math.cos(math.pi / 4))
    assert factors(schedule, 100) == (1.0, 0.5)
    assert factors(schedule, 200) == (1.0, 1.0)
    assert factors(schedule, 300) == (1.0, 1.0)
    assert build("cosine").num_iters == 1000  # MAX_ITER 0: SOLVER.MAX_ITER


def test_learned_factors_start_at_one_and_get_gradients():
    schedule = build("learned")
    assert factors(schedule, 0) == (1.0, 1.0)
    with torch.no_grad():
        schedule.log_variances.copy_(torch.tensor([-math.log(2.0), -math.log(0.5)]))
    weights = schedule(7)
    reg = schedule.extra_losses()["loss_uncertainty"]
    assert float(reg.detach()) == pytest.approx(-math.log(2.0) - math.log(0.5), abs=1e-6)
    (weights.instance * 3.0 + weights.semantic * 4.0 + reg).backward()
    # d/ds_i of exp(-s_i) * 3 + s_i = -2 * 3 + 1; d/ds_s = -0.5 * 4 + 1
    assert torch.allclose(schedule.log_variances.grad, torch.tensor([-5.0, -1.0]))


def weigh(schedule, *, scale_rpn=False, iteration=0, instance=1.0, head_weight=0.5, factor=1.0):
    """PanopticFPNExt.weigh_losses on a stand-in model whose head already applied lambda_s."""
    model = SimpleNamespace(
        loss_weight_schedule=schedule,
        scale_rpn_losses=scale_rpn,
        instance_loss_weight=instance,
        instance_loss_factor=1.0,
        semantic_loss_factor=factor,
        sem_seg_head=SimpleNamespace(loss_weight=head_weight),
    )
    one = torch.tensor(1.0)
    with EventStorage(iteration) as storage:
        losses = PanopticFPNExt.weigh_losses(
            model,
            {"loss_sem_seg": one * head_weight},
            {"loss_rpn_cls": one, "loss_rpn_loc": one},
            {"loss_cls": one, "loss_box_reg": one, "loss_mask": one},
        )
        logged = {k: v[0] for k, v in storage.latest().items()}
    return {k: float(v) for k, v in losses.items()}, logged


def test_weighed_losses_are_the_keys_times_the_factors():
    schedule = build("linear_warmup", START_INSTANCE=0.5, START_SEMANTIC=0.0, WARMUP_ITERS=10)
    losses, logged = weigh(schedule, iteration=5, instance=2.0, head_weight=0.5)
    assert logged == {"lambda_instance": 1.5, "lambda_semantic": 0.25}
    assert losses["loss_sem_seg"] == 0.25
    assert losses["loss_rpn_cls"] == 1.0  # detectron2 leaves the RPN unscaled
    assert losses["loss_mask"] == losses["loss_box_reg"] == 1.5
    # detectron2 scales only box regression and mask by INSTANCE_LOSS_WEIGHT; factors scale all
    assert losses["loss_cls"] == 0.75
    losses, _ = weigh(schedule, scale_rpn=True, iteration=5, instance=2.0)
    assert losses["loss_rpn_loc"] == 1.5


def test_learned_schedule_adds_its_regularizer():
    losses, logged = weigh(build("learned"))
    assert losses["loss_uncertainty"] == 0.0
    assert logged["lambda_semantic"] == pytest.approx(0.5)


def test_detectron2_keys_set_the_lambdas_of_the_built_model():
    cfg = get_model_zoo_cfg()
    cfg.MODEL.META_ARCHITECTURE = "PanopticFPNExt"
    cfg.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT = 0.7
    cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = 0.3
    model = build_model(cfg)
    assert model.instance_loss_weight == 0.7
    assert model.sem_seg_head.loss_weight == 0.3
    assert model.semantic_loss_factor == 1.0


def test_deprecated_loss_weight_keys_keep_the_model_they_gave(caplog):
    # before: lambda_s = LOSS_WEIGHTS.SEMANTIC * SEM_SEG_HEAD.LOSS_WEIGHT; lambda_i = INSTANCE
    cfg = get_model_zoo_cfg()
    cfg.MODEL.META_ARCHITECTURE = "PanopticFPNExt"
    cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = 1.0
    cfg.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.INSTANCE = 0.8
    cfg.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.SEMANTIC = 0.25
    with caplog.at_level(logging.WARNING):
        model = build_model(cfg)
    assert model.instance_loss_factor == 0.8 and model.instance_loss_weight == 1.0
    assert model.semantic_loss_factor * model.sem_seg_head.loss_weight == 0.25
    text = caplog.text
    assert "MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT" in text
    assert "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT" in text


def test_learned_factors_are_trained_and_checkpointed(tmp_path):
    cfg = get_model_zoo_cfg()
    cfg.MODEL.META_ARCHITECTURE = "PanopticFPNExt"
    cfg.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.NAME = "learned"
    model = build_model(cfg)
    params = dict(model.named_parameters())
    assert "loss_weight_schedule.log_variances" in params  # so the optimizer trains it
    with torch.no_grad():
        model.loss_weight_schedule.log_variances.copy_(torch.tensor([0.3, -0.7]))
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_final")
    fresh = build_model(cfg)
    DetectionCheckpointer(fresh).load(str(tmp_path / "model_final.pth"))
    assert torch.equal(fresh.loss_weight_schedule.log_variances, torch.tensor([0.3, -0.7]))
    assert float(fresh.loss_weight_schedule(0).semantic) == pytest.approx(math.exp(0.7), rel=1e-5)


def test_deprecated_loss_weight_keys_give_the_same_model_through_train_nets_config_loading(
    tmp_path,
):
    """train_net.py moves deprecated run keys to their new names; the loss weights stay for the
    model, so a YAML that sets them builds what a plain build_model builds."""
    from panoptic_ext.apps.train.config_check import merge_config

    yaml = tmp_path / "old.yaml"
    yaml.write_text(
        "MODEL:\n  META_ARCHITECTURE: PanopticFPNExt\n  SEM_SEG_HEAD:\n    LOSS_WEIGHT: 1.0\n"
        "  PANOPTIC_EXT:\n    LOSS_WEIGHTS:\n      INSTANCE: 0.8\n      SEMANTIC: 0.25\n"
    )
    cfg = merge_config(get_model_zoo_cfg(), str(yaml))
    model = build_model(cfg)
    assert (model.instance_loss_factor, model.instance_loss_weight) == (0.8, 1.0)
    assert model.semantic_loss_factor * model.sem_seg_head.loss_weight == 0.25
