"""Export-time graph simplification: detectron2's frozen batch norm folded into the convolution
before it (exact up to float rounding), so the exported graph holds one convolution where it held
a convolution, a multiplication and an addition."""

import logging

import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn

__all__ = ["fold_frozen_batchnorm"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def fold_frozen_batchnorm(model: nn.Module) -> int:
    """
    Fold every ``FrozenBatchNorm2d`` that is the ``norm`` of a detectron2 ``Conv2d`` into that
    convolution's weight and bias, in place: ``norm(conv(x)) == conv'(x)`` with
    ``w' = w * s``, ``b' = (b - mean) * s + beta``, ``s = gamma / sqrt(var + eps)``
    (detectron2's own formula). Trainable norms (BN, GN, SyncBN) are left alone.

    Args:
        model (nn.Module): a model for inference only (the frozen norms are removed).

    Returns:
        int: the number of convolutions changed.
    """
    folded = 0
    for module in model.modules():
        norm = getattr(module, "norm", None)
        if not isinstance(module, Conv2d) or not isinstance(norm, FrozenBatchNorm2d):
            continue
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        bias = module.bias if module.bias is not None else torch.zeros_like(norm.bias)
        weight = module.weight * scale.reshape(-1, 1, 1, 1)
        module.weight = nn.Parameter(weight, requires_grad=False)
        module.bias = nn.Parameter((bias - norm.running_mean) * scale + norm.bias, False)
        module.norm = None
        folded += 1
    logger.info("Folded %d frozen batch norms into their convolutions", folded)
    return folded
