"""
Loss-weight schedules: factors on lambda_i (instance losses) and lambda_s (semantic loss) per
iteration.

Panoptic FPN's loss is ``lambda_i * (L_cls + L_box + L_mask) + lambda_s * L_sem`` (+ the RPN
losses, scaled by lambda_i only when ``MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.SCALE_RPN`` is true).
lambda_i and lambda_s are detectron2's keys ``MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT`` and
``MODEL.SEM_SEG_HEAD.LOSS_WEIGHT`` (the paper and detectron2: 1.0 and 0.5). A schedule gives the
factors (f_i, f_s) that multiply them at each iteration: (1, 1) throughout for "constant", so that
detectron2's configs train detectron2's model; the others vary them over training or learn them.
"""

import math
from typing import Dict, List, NamedTuple, Sequence, Union

import torch
from detectron2.config import configurable
from torch import nn

from .named_registry import NamedRegistry

__all__ = [
    "LOSS_WEIGHT_SCHEDULE_REGISTRY",
    "LossWeights",
    "LossWeightSchedule",
    "ConstantLossWeights",
    "LinearWarmupLossWeights",
    "StepLossWeights",
    "CosineLossWeights",
    "LearnedLossWeights",
    "AlternatingLossWeights",
    "build_loss_weight_schedule",
]

LOSS_WEIGHT_SCHEDULE_REGISTRY = NamedRegistry("LOSS_WEIGHT_SCHEDULE", "loss-weight schedule")
LOSS_WEIGHT_SCHEDULE_REGISTRY.__doc__ = """
Registry for loss-weight schedules, selected by ``MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.NAME``.

A schedule is an ``nn.Module`` (a :class:`LossWeightSchedule`) built as ``cls(cfg)``:

* ``schedule(iteration: int) -> LossWeights(instance, semantic)``: the factors (f_i, f_s) on
  lambda_i and lambda_s for that training iteration (floats, or scalar tensors that carry
  gradients for learned weights);
* ``schedule.extra_losses() -> dict[str, Tensor]``: terms added to the loss dict (the learned
  schedule's regularizer), ``{}`` for the others.

Parameters of a schedule (only the learned one has some) are trained with the model and saved in
its checkpoints.
"""

Weight = Union[float, torch.Tensor]


class LossWeights(NamedTuple):
    """Factors on the loss weights: on lambda_i (instance losses) and on lambda_s (semantic)."""

    instance: Weight
    semantic: Weight


class LossWeightSchedule(nn.Module):
    """Base class: subclasses implement :meth:`forward`; no parameters unless learned."""

    @configurable
    def __init__(self):
        super().__init__()

    @classmethod
    def from_config(cls, cfg) -> dict:
        return {}

    def forward(self, iteration: int) -> LossWeights:
        raise NotImplementedError

    def extra_losses(self) -> Dict[str, torch.Tensor]:
        """Loss terms of the schedule itself (added to the model's loss dict)."""
        return {}


@LOSS_WEIGHT_SCHEDULE_REGISTRY.register_as("constant")
class ConstantLossWeights(LossWeightSchedule):
    """lambda_i and lambda_s as configured (factors 1.0, the paper and detectron2)."""

    def forward(self, iteration: int) -> LossWeights:
        return LossWeights(1.0, 1.0)


class _InterpolatedLossWeights(LossWeightSchedule):
    """
    Factors from (start_instance, start_semantic) at iteration 0 to (1, 1) at iteration
    ``num_iters`` along :meth:`curve`, constant afterwards.
    """

    def __init__(
        self,
        *,
        start_instance: float,
        start_semantic: float,
        num_iters: int,
    ):
        super().__init__()
        self.start = (float(start_instance), float(start_semantic))
        self.end = (1.0, 1.0)
        self.num_iters = int(num_iters)

    @staticmethod
    def weights_from_config(cfg) -> Dict[str, float]:
        """The start factors of ``cfg.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS``."""
        lw = cfg.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS
        return {"start_instance": lw.START_INSTANCE, "start_semantic": lw.START_SEMANTIC}

    def curve(self, progress: float) -> float:
        """How far from start to end (0..1) at ``progress`` (0..1) of the ``num_iters``."""
        raise NotImplementedError

    def forward(self, iteration: int) -> LossWeights:
        if iteration >= self.num_iters:
            return LossWeights(*self.end)
        t = self.curve(max(iteration, 0) / self.num_iters)
        return LossWeights(*(float(a + (b - a) * t) for a, b in zip(self.start, self.end)))


@LOSS_WEIGHT_SCHEDULE_REGISTRY.register_as("linear_warmup")
class LinearWarmupLossWeights(_InterpolatedLossWeights):
    """Factors linear from (start_instance, start_semantic) at iteration 0 to (1, 1) at
    ``warmup_iters``, constant afterwards."""

    @configurable
    def __init__(self, *, warmup_iters: int, **weights: float):
        """
        Args:
            warmup_iters (int): iterations of the ramp (0: factors 1 throughout).
            weights: start_instance, start_semantic (float): the factors at iteration 0.
        """
        if warmup_iters < 0:
            raise ValueError(
                f"MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.WARMUP_ITERS must be >= 0, got {warmup_iters}"
            )
        super().__init__(num_iters=warmup_iters, **weights)

    @classmethod
    def from_config(cls, cfg) -> dict:
        warmup_iters = cfg.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.WARMUP_ITERS
        return {"warmup_iters": warmup_iters, **cls.weights_from_config(cfg)}

    def curve(self, progress: float) -> float:
        return progress


@LOSS_WEIGHT_SCHEDULE_REGISTRY.register_as("cosine")
class CosineLossWeights(_InterpolatedLossWeights):
    """Factors along a half-cosine from (start_instance, start_semantic) at iteration 0 to (1, 1)
    at ``max_iter``, constant afterwards."""

    @configurable
    def __init__(self, *, max_iter: int, **weights: float):
        """
        Args:
            max_iter (int): iterations of the half-cosine (> 0).
            weights: start_instance, start_semantic (float): the factors at iteration 0.
        """
        if max_iter <= 0:
            raise ValueError(
                "MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.MAX_ITER (or SOLVER.MAX_ITER when it is 0) must "
                f"be > 0 for the cosine schedule, got {max_iter}"
            )
        super().__init__(num_iters=max_iter, **weights)

    @classmethod
    def from_config(cls, cfg) -> dict:
        max_iter = cfg.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.MAX_ITER or cfg.SOLVER.MAX_ITER
        return {"max_iter": max_iter, **cls.weights_from_config(cfg)}

    def curve(self, progress: float) -> float:
        return 0.5 * (1.0 - math.cos(math.pi * progress))


@LOSS_WEIGHT_SCHEDULE_REGISTRY.register_as("step")
class StepLossWeights(LossWeightSchedule):
    """Factors (1, 1), multiplied by ``factors[j]`` = [instance_factor, semantic_factor] from
    iteration ``steps[j]`` on (cumulatively, like the learning-rate steps)."""

    @configurable
    def __init__(
        self,
        *,
        steps: Sequence[int],
        factors: Sequence[Sequence[float]],
    ):
        super().__init__()
        if len(steps) != len(factors) or any(len(f) != 2 for f in factors):
            raise ValueError(
                "MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.FACTORS must hold one [instance_factor, "
                f"semantic_factor] pair per entry of STEPS; got STEPS={list(steps)}, "
                f"FACTORS={[list(f) for f in factors]}"
            )
        if list(steps) != sorted(steps):
            raise ValueError(f"MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.STEPS must increase, got {steps}")
        self.steps: List[int] = [int(s) for s in steps]
        self.factors = [(float(a), float(b)) for a, b in factors]

    @classmethod
    def from_config(cls, cfg) -> dict:
        lw = cfg.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS
        return {"steps": lw.STEPS, "factors": lw.FACTORS}

    def forward(self, iteration: int) -> LossWeights:
        instance, semantic = 1.0, 1.0
        for step, (fi, fs) in zip(self.steps, self.factors):
            if iteration >= step:
                instance, semantic = instance * fi, semantic * fs
        return LossWeights(instance, semantic)


@LOSS_WEIGHT_SCHEDULE_REGISTRY.register_as("alternating")
class AlternatingLossWeights(LossWeightSchedule):
    """
    One loss per minibatch (the paper's "alternate" training, Table 3c): factors (1, 0) on even
    iterations, (0, 1) on odd ones. With ``SCALE_RPN`` the RPN losses follow the instance
    losses; otherwise the RPN trains in every iteration.
    """

    def forward(self, iteration: int) -> LossWeights:
        if iteration % 2 == 0:
            return LossWeights(1.0, 0.0)
        return LossWeights(0.0, 1.0)


@LOSS_WEIGHT_SCHEDULE_REGISTRY.register_as("learned")
class LearnedLossWeights(LossWeightSchedule):
    """
    Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018): each task t has a
    learned log-variance s_t; its loss weight is multiplied by the factor exp(-s_t) and the
    regularizer ``loss_uncertainty = s_i + s_s`` keeps the factors from collapsing to 0. s_t
    starts at 0 (the configured lambda_i / lambda_s) and is trained with the model (it is a
    parameter, hence in checkpoints as ``loss_weight_schedule.log_variances``).
    """

    @configurable
    def __init__(self):
        super().__init__()
        self.log_variances = nn.Parameter(torch.zeros(2, dtype=torch.float32))

    def forward(self, iteration: int) -> LossWeights:
        weights = torch.exp(-self.log_variances)
        return LossWeights(weights[0], weights[1])

    def extra_losses(self) -> Dict[str, torch.Tensor]:
        return {"loss_uncertainty": self.log_variances.sum()}


def build_loss_weight_schedule(cfg) -> LossWeightSchedule:
    """Build the schedule named by ``cfg.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.NAME``."""
    name = cfg.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.NAME
    return LOSS_WEIGHT_SCHEDULE_REGISTRY.build("MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.NAME", name, cfg)
