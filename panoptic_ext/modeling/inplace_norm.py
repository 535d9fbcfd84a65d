"""
Frozen batch norm computed in place at inference.

On the CPU most of a ResNet's frozen-BN time is not arithmetic but the fresh output tensor: a
large allocation is mapped and page-faulted anew at every call. Inside detectron2's ``Conv2d``
the norm's input is the convolution's own fresh output, which nothing else references, so it
can be normalized in place, by the same ATen kernel (``native_batch_norm``, written to its
input): the same values, bit for bit.
"""

import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn

__all__ = ["InplaceFrozenBatchNorm2d", "use_inplace_frozen_batchnorm"]


class InplaceFrozenBatchNorm2d(FrozenBatchNorm2d):
    """
    detectron2's ``FrozenBatchNorm2d`` (same buffers and state dict) that, when autograd is not
    involved, normalizes its input in place and returns it. Use it only where the input is not
    needed afterwards (see :func:`use_inplace_frozen_batchnorm`).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad or not x.is_contiguous() or x.dim() != 4 or x.is_cuda:
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


def use_inplace_frozen_batchnorm(model: nn.Module) -> int:
    """
    Replace, in place, the ``FrozenBatchNorm2d`` norms of detectron2 ``Conv2d`` layers in
    ``model`` (applied to the convolution's output, which nothing else holds) by
    :class:`InplaceFrozenBatchNorm2d`; the state dict keeps its keys. Returns how many.
    """
    count = 0
    for module in model.modules():
        norm = getattr(module, "norm", None)
        if isinstance(module, Conv2d) and type(norm) is FrozenBatchNorm2d:
            module.norm = InplaceFrozenBatchNorm2d.from_frozen(norm)
            count += 1
    return count
