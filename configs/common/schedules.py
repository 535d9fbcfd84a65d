# LR multipliers as the YAML configs' SOLVER.LR_SCHEDULER_NAME, STEPS, WARMUP_* make them
# (iterations, not fractions: they follow train.max_iter).
from detectron2.config import LazyCall as L

from panoptic_ext.apps.train.solver import warmup_lr_multiplier


def multistep(steps, warmup_iters=1000, warmup_factor=0.001, gamma=0.1):
    return L(warmup_lr_multiplier)(
        max_iter="${train.max_iter}",
        name="WarmupMultiStepLR",
        steps=list(steps),
        gamma=gamma,
        warmup_iters=warmup_iters,
        warmup_factor=warmup_factor,
        warmup_method="linear",
    )


def cosine(warmup_iters=1000, warmup_factor=0.001):
    return L(warmup_lr_multiplier)(
        max_iter="${train.max_iter}",
        name="WarmupCosineLR",
        warmup_iters=warmup_iters,
        warmup_factor=warmup_factor,
        warmup_method="linear",
    )


lr_multiplier_1x = multistep([60000, 80000])
lr_multiplier_3x = multistep([210000, 250000])
