"""
The norm and activation of detectron2's ``Conv2d`` computed in place at inference.

On the CPU much of a memory-bound layer's time is not arithmetic but its fresh output tensor: a
large allocation is mapped and page-faulted anew at every call (a 62 MB frozen-BN output of an
R50 at 800x1216 costs ~10x the in-place normalization). Inside detectron2's ``Conv2d`` the
norm's input is the convolution's own fresh output, and the activation's input the norm's (or
the convolution's) fresh output, which nothing else references; so they can be computed in
place by the same ATen kernels (``native_batch_norm`` written to its input, ``relu_``): the
same values, bit for bit. Applied by :func:`~panoptic_ext.modeling.optimize_for_cpu_inference`
only; with autograd, autocast, tracing or a non-CPU tensor the layers run as detectron2's.
"""

import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn
from torch.nn import functional as F

from .cpu_inference import cpu_fast_path_applies

__all__ = ["InplaceFrozenBatchNorm2d", "InplaceReLU", "use_inplace_conv_layers"]


class InplaceFrozenBatchNorm2d(FrozenBatchNorm2d):
    """
    detectron2's ``FrozenBatchNorm2d`` (same buffers and state dict) that, when autograd is not
    involved, normalizes its input in place and returns it. Use it only where the input is not
    needed afterwards (see :func:`use_inplace_conv_layers`).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not cpu_fast_path_applies(x) or not x.is_contiguous() or x.dim() != 4:
            return super().forward(x)
        empty = x.new_empty(0)
        torch.ops.aten.native_batch_norm.out(
            x,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            False,  # training: use the running statistics, as F.batch_norm(training=False)
            0.0,
            self.eps,
            out=x,
            save_mean=empty,
            save_invstd=empty,
        )
        return x

    @classmethod
    def from_frozen(cls, norm: FrozenBatchNorm2d) -> "InplaceFrozenBatchNorm2d":
        """A copy of ``norm`` (its buffers shared)."""
        new = cls(norm.num_features, norm.eps)
        for name, buffer in norm.named_buffers(recurse=False):
            setattr(new, name, buffer)
        return new


class InplaceReLU(nn.Module):
    """ReLU applied in place on the CPU fast path (``relu_``), else out of place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu_(x) if cpu_fast_path_applies(x) else F.relu(x)


def _is_relu(activation) -> bool:
    return activation is F.relu or (
        type(activation) is nn.ReLU and not activation.inplace  # noqa: E721
    )


def use_inplace_conv_layers(model: nn.Module) -> int:
    """
    In every detectron2 ``Conv2d`` of ``model``, replace in place a ``FrozenBatchNorm2d`` norm
    by :class:`InplaceFrozenBatchNorm2d`, and a ReLU activation (``F.relu`` or ``nn.ReLU()``)
    following a norm by :class:`InplaceReLU`. (Measured on the CPU: after a bare convolution,
    e.g. the RPN head's, the in-place ReLU made the layers after it slower.) The state dict
    keeps its keys. Returns how many layers changed.
    """
    count = 0
    for module in model.modules():
        if not isinstance(module, Conv2d):
            continue
        norm = getattr(module, "norm", None)
        if type(norm) is FrozenBatchNorm2d:  # noqa: E721  (not subclasses)
            module.norm = InplaceFrozenBatchNorm2d.from_frozen(norm)
            count += 1
        if norm is not None and _is_relu(getattr(module, "activation", None)):
            module.activation = InplaceReLU()
            count += 1
    return count
