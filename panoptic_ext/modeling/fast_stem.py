"""
ResNet stem with a faster exact 3x3 / stride 2 max pooling.

On the CPU ``F.max_pool2d`` always computes the argmax indices too (an int64 tensor twice the
size of its output) and reads each input pixel up to 9 times; on the stem's 64 x H/2 x W/2
map of an 800x1216 image that is ~100 ms. A max pooling is separable: the maximum over rows,
then over columns, computed with ``torch.maximum`` on strided views, gives the same values
(a maximum is exact; NaNs propagate in both) in ~25 ms.
"""

import torch
from detectron2.modeling.backbone.resnet import BasicStem
from torch import nn
from torch.nn import functional as F

__all__ = ["max_pool_3x3_s2", "FastPoolStem", "use_fast_pool_stem"]


def _max_pool_axis(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Max over windows of 3 with stride 2 and padding 1 along ``dim`` (-2 or -1)."""
    size = x.shape[dim]
    out_size = (size + 1) // 2  # floor((size + 2 - 3) / 2) + 1

    def rows(start: int, stop: int) -> torch.Tensor:
        index = [slice(None)] * x.dim()
        index[dim] = slice(start, stop, 2)
        return x[tuple(index)]

    def part(t: torch.Tensor, start: int, stop=None) -> torch.Tensor:
        index = [slice(None)] * t.dim()
        index[dim] = slice(start, stop)
        return t[tuple(index)]

    out = rows(0, size).clone()  # window centres 2i
    after = rows(1, size)  # 2i + 1, for i < size // 2
    torch.maximum(part(out, 0, size // 2), after, out=part(out, 0, size // 2))
    before = rows(1, 2 * out_size - 2)  # 2i - 1, for i >= 1
    torch.maximum(part(out, 1), before, out=part(out, 1))
    return out


def max_pool_3x3_s2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, kernel_size=3, stride=2, padding=1)`` of a (N, C, H, W) tensor, the
    same values (the sign of a zero aside), without the indices."""
    if x.dim() != 4:
        raise ValueError(f"Expected a (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    return _max_pool_axis(_max_pool_axis(x, -2), -1)


class FastPoolStem(BasicStem):
    """detectron2's ``BasicStem`` (same layers and state dict) pooling with
    :func:`max_pool_3x3_s2` when autograd is not involved."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        if x.requires_grad or x.shape[-1] < 2 or x.shape[-2] < 2:
            return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        return max_pool_3x3_s2(x)


def use_fast_pool_stem(model: nn.Module) -> int:
    """Make, in place, every detectron2 ``BasicStem`` of ``model`` a :class:`FastPoolStem`
    (a class change: no new state). Returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is BasicStem:  # noqa: E721  (not subclasses with their own forward)
            module.__class__ = FastPoolStem
            count += 1
    return count
