"""The semantic FPN branch of Panoptic FPN, registered as ``SemanticFPNHead``."""

from typing import Callable, Dict, Optional, Union

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead
from torch.nn import functional as F

__all__ = ["SemanticFPNHead", "LOSS_ON_CHOICES"]

LOSS_ON_CHOICES = ("upsampled", "downsampled")


@SEM_SEG_HEADS_REGISTRY.register()
class SemanticFPNHead(SemSegFPNHead):
    """
    The semantic segmentation branch of :paper:`PanopticFPN`: for each FPN level, repeated
    (3x3 conv + GroupNorm + ReLU + 2x bilinear upsampling) until 1/``common_stride`` scale, with
    ``conv_dims`` (128) channels; the levels are summed, a 1x1 conv predicts the classes, and the
    logits are upsampled ``common_stride`` times. Trained with per-pixel cross-entropy that skips
    ``ignore_value``.

    It is detectron2's :class:`SemSegFPNHead` (same layers, same parameter names, so checkpoints
    load unchanged) with a choice of where the loss is computed:

    * ``"upsampled"``: on the logits upsampled to the input resolution (detectron2);
    * ``"downsampled"``: on targets downsampled (nearest) to the logits' 1/``common_stride``
      resolution, ``common_stride**2`` times fewer pixels (mmdetection's choice).

    The classes are whatever ``num_classes`` says: detectron2's "stuff + one 'things' class"
    (54 on COCO) or "stuff + every thing class" (``MODEL.PANOPTIC_EXT.SEM_SEG_THINGS``).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        conv_dims: int,
        common_stride: int,
        loss_weight: float = 1.0,
        norm: Optional[Union[str, Callable]] = None,
        ignore_value: int = -1,
        loss_on: str = "upsampled",
    ):
        """
        Args:
            input_shape (dict[str, ShapeSpec]): the FPN levels to use, with channels and stride.
            num_classes (int): number of semantic classes predicted.
            conv_dims (int): channels of the intermediate convolutions.
            common_stride (int): stride the levels are brought to before summing.
            loss_weight (float): lambda_s, multiplies the loss (detectron2's SemSegFPNHead; the
                meta-architecture's loss-weight schedule multiplies it by a factor).
            norm (str or callable): normalization of the convolutions ("GN" in the paper).
            ignore_value (int): target label that the loss skips.
            loss_on (str): "upsampled" or "downsampled", see the class docstring.
        """
        if loss_on not in LOSS_ON_CHOICES:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.LOSS_ON must be one of {LOSS_ON_CHOICES}, got {loss_on!r}"
            )
        super().__init__(
            input_shape,
            num_classes=num_classes,
            conv_dims=conv_dims,
            common_stride=common_stride,
            loss_weight=loss_weight,
            norm=norm,
            ignore_value=ignore_value,
        )
        self.loss_on = loss_on

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> dict:
        missing = [f for f in cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES names {missing}, which the backbone does not "
                f"produce (it has {sorted(input_shape)})"
            )
        ret = super().from_config(cfg, input_shape)
        ret["loss_on"] = cfg.MODEL.SEM_SEG_HEAD.LOSS_ON
        return ret

    def losses(self, predictions: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            predictions (Tensor): (N, C, H/stride, W/stride) logits from :meth:`layers`.
            targets (Tensor): (N, H, W) int64 labels, ``ignore_value`` where unlabeled.

        Returns:
            dict: {"loss_sem_seg": scalar}; 0 (with gradient) if every pixel is ignored, where
            plain cross-entropy would give NaN.
        """
        predictions = predictions.float()  # https://github.com/pytorch/pytorch/issues/48163
        if self.loss_on == "upsampled":
            predictions = F.interpolate(
                predictions, scale_factor=self.common_stride, mode="bilinear", align_corners=False
            )
        else:
            targets = self._downsample_targets(targets, predictions.shape[-2:])
        loss = F.cross_entropy(
            predictions, targets, reduction="mean", ignore_index=self.ignore_value
        )
        # The mean over no labelled pixel is 0/0 = NaN. Checking the scalar costs nothing, unlike
        # a scan of the targets every step; a NaN with labelled pixels is left for the NaN guard.
        if bool(loss.isnan()) and bool((targets == self.ignore_value).all()):
            return {"loss_sem_seg": predictions.sum() * 0.0}
        if self.loss_weight != 1.0:  # x * 1.0 == x: skip the op
            loss = loss * self.loss_weight
        return {"loss_sem_seg": loss}

    def _downsample_targets(self, targets: torch.Tensor, size: torch.Size) -> torch.Tensor:
        """Nearest-neighbour labels at the logits' ``size``: every ``common_stride``-th pixel
        (a strided view, no copy) when the sizes divide, else ``F.interpolate``'s nearest."""
        stride = self.common_stride
        if targets.shape[-2] == size[0] * stride and targets.shape[-1] == size[1] * stride:
            # What F.interpolate(mode="nearest") picks for an exact integer scale.
            return targets[:, ::stride, ::stride]
        return F.interpolate(targets[:, None].float(), size=size, mode="nearest")[:, 0].long()
