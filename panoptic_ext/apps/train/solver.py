"""Optimizers: detectron2's SGD, or AdamW, picked by ``SOLVER.OPTIMIZER``."""

import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Type

import torch
from detectron2.config import CfgNode
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from fvcore.common.param_scheduler import (
    CosineParamScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
)

from panoptic_ext.compat import detectron2_sgd_foreach
from panoptic_ext.modeling.loss_weights import LossWeightSchedule

__all__ = [
    "OPTIMIZERS",
    "add_full_model_gradient_clipping",
    "build_optimizer",
    "panoptic_optimizer",
    "panoptic_param_groups",
    "warmup_lr_multiplier",
]

logger = logging.getLogger(__name__)

# ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE`` value that clips the norm of all gradients together
# (detectron2's "norm" clips each parameter on its own).
FULL_MODEL_CLIP_TYPE = "full_model"
# detectron2's SOLVER.CLIP_GRADIENTS defaults, in lower case.
_CLIP_DEFAULTS = {"enabled": False, "clip_type": "value", "clip_value": 1.0, "norm_type": 2.0}


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


def panoptic_param_groups(
    model: torch.nn.Module,
    base_lr: Optional[float] = None,
    weight_decay: Optional[float] = None,
    weight_decay_norm: Optional[float] = None,
    bias_lr_factor: float = 1.0,
    weight_decay_bias: Optional[float] = None,
) -> List[Dict[str, Any]]:
    """
    detectron2's ``get_default_optimizer_params`` (one group per parameter, with the norm and
    bias hyper-parameters) where the parameters of loss-weight schedules get no weight decay.
    In Python configs: ``params=L(panoptic_param_groups)(...)``, ``params.model`` set to the
    model before instantiating the optimizer.
    """
    return get_default_optimizer_params(
        model,
        base_lr=base_lr,
        weight_decay=weight_decay,
        weight_decay_norm=weight_decay_norm,
        bias_lr_factor=bias_lr_factor,
        weight_decay_bias=weight_decay_bias,
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


def _with_clipping(clip: Mapping[str, Any], optimizer_type: Type[torch.optim.Optimizer]):
    """``optimizer_type`` with SOLVER.CLIP_GRADIENTS-style clipping; ``clip`` has the keys
    enabled, clip_type ("value", "norm" or "full_model"), clip_value and norm_type."""
    unknown = set(clip) - set(_CLIP_DEFAULTS)
    if unknown:
        raise ValueError(
            f"clip_gradients has unknown keys {sorted(unknown)}; expected {sorted(_CLIP_DEFAULTS)}"
        )
    clip = {**_CLIP_DEFAULTS, **clip}
    if clip["enabled"] and clip["clip_type"] == FULL_MODEL_CLIP_TYPE:
        return add_full_model_gradient_clipping(
            optimizer_type, clip["clip_value"], clip["norm_type"]
        )
    # detectron2's clipping of each parameter ("value" / "norm") reads a config node.
    solver = CfgNode({"CLIP_GRADIENTS": {k.upper(): v for k, v in clip.items()}})
    return maybe_add_gradient_clipping(CfgNode({"SOLVER": solver}), optimizer_type)


def panoptic_optimizer(
    params: List[Dict[str, Any]],
    *,
    name: str = "SGD",
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    betas: Sequence[float] = (0.9, 0.999),
    clip_gradients: Optional[Mapping[str, Any]] = None,
) -> torch.optim.Optimizer:
    """
    The optimizer ``name`` ("SGD": detectron2's; "AdamW") over ``params`` (e.g.
    :func:`panoptic_param_groups`), with gradient clipping: what ``build_optimizer`` builds from
    a yacs config, from keyword arguments.

    Args:
        params (list[dict]): parameter groups.
        name (str): one of :data:`OPTIMIZERS` (SOLVER.OPTIMIZER).
        lr, weight_decay (float): SOLVER.BASE_LR, SOLVER.WEIGHT_DECAY.
        momentum (float), nesterov (bool): SGD's (SOLVER.MOMENTUM, SOLVER.NESTEROV).
        betas (tuple[float]): AdamW's (SOLVER.BETAS).
        clip_gradients (dict): SOLVER.CLIP_GRADIENTS in lower case: enabled, clip_type
            ("value", "norm", "full_model"), clip_value, norm_type.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer name must be one of {sorted(OPTIMIZERS)}, got {name!r}")
    optimizer_type = _with_clipping(dict(clip_gradients or {}), OPTIMIZERS[name])
    if name == "SGD":
        # detectron2's build_optimizer: the same hyper-parameters, and foreach=True on main
        return optimizer_type(
            params,
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            foreach=detectron2_sgd_foreach(),
        )
    return optimizer_type(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


# Name (SOLVER.OPTIMIZER) -> optimizer class.
OPTIMIZERS: Dict[str, Type[torch.optim.Optimizer]] = {
    "SGD": torch.optim.SGD,
    "AdamW": torch.optim.AdamW,
}


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """
    Build the optimizer named by ``cfg.SOLVER.OPTIMIZER`` over the model's
    trainable parameters, with detectron2's per-parameter hyper-parameters (SOLVER.BASE_LR,
    WEIGHT_DECAY, WEIGHT_DECAY_NORM, BIAS_LR_FACTOR, WEIGHT_DECAY_BIAS) and gradient clipping
    (SOLVER.CLIP_GRADIENTS, whose CLIP_TYPE may also be "full_model"). The parameters of
    loss-weight schedules (learned log-variances) get no weight decay.
    """
    solver = cfg.SOLVER
    if solver.OPTIMIZER not in OPTIMIZERS:
        raise ValueError(
            f"SOLVER.OPTIMIZER must be one of {sorted(OPTIMIZERS)}, got {solver.OPTIMIZER!r}"
        )
    params = panoptic_param_groups(
        model,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        bias_lr_factor=solver.BIAS_LR_FACTOR,
        weight_decay_bias=solver.WEIGHT_DECAY_BIAS,
    )
    optimizer = panoptic_optimizer(
        params,
        name=solver.OPTIMIZER,
        lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        momentum=solver.MOMENTUM,
        nesterov=solver.NESTEROV,
        betas=solver.BETAS,
        clip_gradients={k.lower(): v for k, v in solver.CLIP_GRADIENTS.items()},
    )
    logger.info("Optimizer: %s", type(optimizer).__name__)
    return optimizer


def warmup_lr_multiplier(
    *,
    max_iter: int,
    name: str = "WarmupMultiStepLR",
    steps: Sequence[int] = (),
    gamma: float = 0.1,
    warmup_iters: int = 1000,
    warmup_factor: float = 0.001,
    warmup_method: str = "linear",
) -> ParamScheduler:
    """
    The LR multiplier that detectron2's ``build_lr_scheduler`` makes from SOLVER.* (steps and
    warm-up in iterations), from keyword arguments: a Python config's ``lr_multiplier``.

    Args:
        max_iter (int): SOLVER.MAX_ITER (``"${train.max_iter}"`` in a Python config).
        name (str): "WarmupMultiStepLR" or "WarmupCosineLR" (SOLVER.LR_SCHEDULER_NAME).
        steps (list[int]), gamma (float): SOLVER.STEPS and SOLVER.GAMMA (multi-step only).
        warmup_iters (int), warmup_factor (float), warmup_method (str): SOLVER.WARMUP_*.
    """
    if name == "WarmupMultiStepLR":
        kept = [x for x in steps if x <= max_iter]
        if len(kept) != len(steps):
            logger.warning("LR steps %s beyond max_iter %d are ignored", list(steps), max_iter)
        schedule = MultiStepParamScheduler(
            values=[gamma**k for k in range(len(kept) + 1)], milestones=kept, num_updates=max_iter
        )
    elif name == "WarmupCosineLR":
        schedule = CosineParamScheduler(1, 0)
    else:
        raise ValueError(f"LR scheduler name must be WarmupMultiStepLR or WarmupCosineLR: {name!r}")
    return WarmupParamScheduler(
        schedule, warmup_factor, min(warmup_iters / max_iter, 1.0), warmup_method
    )
