"""
Two memory-bound steps of detectron2's ResNet-FPN backbone made cheaper at CPU inference, with
the same values (applied by :func:`~panoptic_ext.modeling.optimize_for_cpu_inference` only):

* The ResNet stem's 3x3 / stride 2 max pooling (:class:`FastPoolStem`). On the CPU
  ``F.max_pool2d`` always computes the argmax indices too (an int64 tensor twice the size of
  its output) and reads each input pixel up to 9 times; on the stem's 64 x H/2 x W/2 map of an
  800x1216 image that is ~100 ms. A max pooling is separable: the maximum over rows, then over
  columns, computed with ``torch.maximum`` on strided views, gives the same values (a maximum
  is exact; NaNs propagate in both) in ~25 ms.
* The FPN top-down path (:class:`InplaceTopDownFPN`): detectron2 upsamples the coarser map 2x
  (nearest) into a new tensor and adds it to the lateral map into another; adding the coarse
  map to each 2x2 block of the lateral map in place (a broadcast view) performs the same
  additions, without the two fresh full-resolution tensors (~60 ms at 800x1216).
"""

from typing import Dict

import torch
from detectron2.modeling.backbone.fpn import FPN
from detectron2.modeling.backbone.resnet import BasicStem
from torch import nn
from torch.nn import functional as F

from .cpu_inference import cpu_fast_path_applies

__all__ = [
    "max_pool_3x3_s2",
    "FastPoolStem",
    "InplaceTopDownFPN",
    "use_fast_backbone",
]


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
        if not cpu_fast_path_applies(x):
            return super().forward(x)
        x = F.relu_(self.conv1(x))
        if x.requires_grad or x.shape[-1] < 2 or x.shape[-2] < 2:
            return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        return max_pool_3x3_s2(x)


class InplaceTopDownFPN(FPN):
    """
    detectron2's ``FPN`` (same layers, state dict and outputs) whose top-down path adds the
    coarser map to the lateral map in place when autograd is not involved and the fusion is
    "sum"; otherwise detectron2's ``forward``.
    """

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if (
            self._fuse_type != "sum"
            or not cpu_fast_path_applies(x)
            or (torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()))
        ):
            return super().forward(x)
        bottom_up_features = self.bottom_up(x)
        inputs = [bottom_up_features[f] for f in self.in_features[::-1]]  # coarse to fine
        prev = self.lateral_convs[0](inputs[0])
        results = [self.output_convs[0](prev)]
        for features, lateral_conv, output_conv in zip(
            inputs[1:], self.lateral_convs[1:], self.output_convs[1:]
        ):
            prev = _add_upsampled_(lateral_conv(features), prev)
            results.insert(0, output_conv(prev))
        if self.top_block is not None:
            name = self.top_block.in_feature
            if name in bottom_up_features:
                top_input = bottom_up_features[name]
            else:
                top_input = results[self._out_features.index(name)]
            results.extend(self.top_block(top_input))
        if len(results) != len(self._out_features):
            raise RuntimeError(f"FPN computed {len(results)} maps for {self._out_features}")
        return dict(zip(self._out_features, results))


def _add_upsampled_(lateral: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """``lateral + F.interpolate(coarse, scale_factor=2, mode="nearest")``, into ``lateral``
    (a fresh tensor) when its size is exactly twice ``coarse``'s."""
    n, c, h, w = coarse.shape
    if lateral.shape != (n, c, 2 * h, 2 * w) or not lateral.is_contiguous():
        return lateral + F.interpolate(coarse, scale_factor=2.0, mode="nearest")
    # the same sums (lateral + coarse pixel), per 2x2 block
    lateral.view(n, c, h, 2, w, 2).add_(coarse[:, :, :, None, :, None])
    return lateral


def use_fast_backbone(model: nn.Module) -> int:
    """
    Make, in place, every detectron2 ``BasicStem`` of ``model`` a :class:`FastPoolStem` and
    every ``FPN`` an :class:`InplaceTopDownFPN` (class changes: no new state; subclasses with
    their own ``forward`` are left alone). Returns how many modules changed.
    """
    swaps = {BasicStem: FastPoolStem, FPN: InplaceTopDownFPN}
    count = 0
    for module in model.modules():
        new_class = swaps.get(type(module))
        if new_class is not None:
            module.__class__ = new_class
            count += 1
    return count
