"""Optimizers: detectron2's SGD, or AdamW, picked by ``MODEL.PANOPTIC_EXT.SOLVER.OPTIMIZER``."""

import logging
from typing import Any, Callable, Dict, List, Type

import torch
from detectron2.config import CfgNode
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

from ..compat import detectron2_sgd_foreach
from ..modeling.loss_weights import LossWeightSchedule

__all__ = ["OPTIMIZERS", "build_optimizer", "add_full_model_gradient_clipping"]

logger = logging.getLogger(__name__)

# ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE`` value that clips the norm of all gradients together
# (detectron2's "norm" clips each parameter on its own).
FULL_MODEL_CLIP_TYPE = "full_model"


def _no_weight_decay_overrides(model: torch.nn.Module) -> Dict[str, Dict[str, float]]:
    """
    Weight decay 0 for the parameters of loss-weight schedules (the learned schedule's
    log-variances): decay would pull every lambda towards 1 instead of where the uncertainty
    terms put it. Keys are parameter names inside their module, as detectron2's ``overrides``
    take them (so another module's parameter of the same name gets no decay either).
    """
    return {
        name: {"weight_decay": 0.0}
        for module in model.modules()
        if isinstance(module, LossWeightSchedule)
        for name, _ in module.named_parameters(recurse=False)
    }


def _param_groups(cfg: CfgNode, model: torch.nn.Module) -> List[Dict[str, Any]]:
    return get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        overrides=_no_weight_decay_overrides(model),
    )


def add_full_model_gradient_clipping(
    optimizer_type: Type[torch.optim.Optimizer], max_norm: float, norm_type: float = 2.0
) -> Type[torch.optim.Optimizer]:
    """
    A subclass of ``optimizer_type`` whose ``step`` first scales all gradients together so that
    their joint norm is at most ``max_norm``.

    Args:
        optimizer_type (type): a ``torch.optim.Optimizer`` subclass.
        max_norm (float): largest joint gradient norm.
        norm_type (float): the p of the p-norm.
    """

    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
        return super(clipped, self).step(closure)

    clipped = type(optimizer_type.__name__ + "WithFullModelGradientClip", (optimizer_type,), {})
    clipped.step = step
    return clipped


def _with_clipping(cfg: CfgNode, optimizer_type: Type[torch.optim.Optimizer]):
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == FULL_MODEL_CLIP_TYPE:
        return add_full_model_gradient_clipping(optimizer_type, clip.CLIP_VALUE, clip.NORM_TYPE)
    return maybe_add_gradient_clipping(cfg, optimizer_type)


def _build_sgd(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    # detectron2's build_optimizer (same hyper-parameters, and foreach=True on detectron2 main),
    # plus the schedules' overrides.
    return _with_clipping(cfg, torch.optim.SGD)(
        _param_groups(cfg, model),
        lr=cfg.SOLVER.BASE_LR,
        momentum=cfg.SOLVER.MOMENTUM,
        nesterov=cfg.SOLVER.NESTEROV,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        foreach=detectron2_sgd_foreach(),
    )


def _build_adamw(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    return _with_clipping(cfg, torch.optim.AdamW)(
        _param_groups(cfg, model),
        lr=cfg.SOLVER.BASE_LR,
        betas=tuple(cfg.MODEL.PANOPTIC_EXT.SOLVER.BETAS),
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )


# Name (MODEL.PANOPTIC_EXT.SOLVER.OPTIMIZER) -> builder(cfg, model).
OPTIMIZERS: Dict[str, Callable[[CfgNode, torch.nn.Module], torch.optim.Optimizer]] = {
    "SGD": _build_sgd,
    "AdamW": _build_adamw,
}


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """
    Build the optimizer named by ``cfg.MODEL.PANOPTIC_EXT.SOLVER.OPTIMIZER`` over the model's
    trainable parameters, with detectron2's per-parameter hyper-parameters (SOLVER.BASE_LR,
    WEIGHT_DECAY, WEIGHT_DECAY_NORM, BIAS_LR_FACTOR, WEIGHT_DECAY_BIAS) and gradient clipping
    (SOLVER.CLIP_GRADIENTS, whose CLIP_TYPE may also be "full_model"). The parameters of
    loss-weight schedules (learned log-variances) get no weight decay.
    """
    name = cfg.MODEL.PANOPTIC_EXT.SOLVER.OPTIMIZER
    if name not in OPTIMIZERS:
        raise ValueError(
            f"MODEL.PANOPTIC_EXT.SOLVER.OPTIMIZER must be one of {sorted(OPTIMIZERS)}, got {name!r}"
        )
    optimizer = OPTIMIZERS[name](cfg, model)
    logger.info("Optimizer: %s", type(optimizer).__name__)
    return optimizer
