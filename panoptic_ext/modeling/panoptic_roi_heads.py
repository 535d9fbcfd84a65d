"""``PanopticROIHeads``: detectron2's ``StandardROIHeads`` that can predict masks only for the
detections a panoptic output reads."""

from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads.mask_head import BaseMaskRCNNHead, mask_rcnn_inference
from detectron2.structures import Instances

__all__ = ["PanopticROIHeads"]

# Smallest batch of ROIs run through the mask head (unless there are fewer detections): on the
# CPU torch picks other convolution kernels for batches of fewer than 16 images, whose last bits
# differ; a batch at least this large gives every ROI the logits of the full batch.
_MIN_MASK_BATCH = 16


@ROI_HEADS_REGISTRY.register()
class PanopticROIHeads(StandardROIHeads):
    """
    ``StandardROIHeads`` (same modules, state dict, training and box inference) whose mask
    inference, with ``mask_score_threshold`` set, runs the mask head only on the detections
    scoring at least that threshold, the ones the panoptic fusion visits (about 40 of 100 for a
    COCO model). Their masks are bit for bit those of ``StandardROIHeads``; the other
    detections get empty masks (probability 0). ``from_config`` sets the threshold to
    ``MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH`` only when the model does not
    return "instances" (``MODEL.PANOPTIC_EXT.POSTPROCESS.RETURN_INSTANCES False``), so the masks
    a user sees are always complete.

    Under tracing or scripting, with keypoints, without a mask pooler, or with a mask head whose
    ``forward`` is not ``BaseMaskRCNNHead``'s (``layers`` then ``mask_rcnn_inference``), every
    detection's mask is predicted, as ``StandardROIHeads``.
    """

    @configurable
    def __init__(self, *, mask_score_threshold: Optional[float] = None, **kwargs):
        """
        Args:
            mask_score_threshold (float): predict masks only for detections scoring at least
                this; None: for all.
            kwargs: the arguments of :class:`StandardROIHeads`.
        """
        super().__init__(**kwargs)
        self.mask_score_threshold = mask_score_threshold

    @classmethod
    def from_config(cls, cfg, input_shape) -> dict:
        ret = super().from_config(cfg, input_shape)
        threshold = cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH
        returns_instances = cfg.MODEL.PANOPTIC_EXT.POSTPROCESS.RETURN_INSTANCES
        ret["mask_score_threshold"] = None if returns_instances else threshold
        return ret

    def _masks_for_confident_only(self) -> bool:
        head = self.mask_head if self.mask_on else None
        return (
            self.mask_score_threshold is not None
            and head is not None
            and self.mask_pooler is not None
            and not self.keypoint_on
            and isinstance(head, BaseMaskRCNNHead)
            and type(head).forward is BaseMaskRCNNHead.forward
            and not torch.jit.is_tracing()
            and not torch.jit.is_scripting()
        )

    def forward_with_given_boxes(
        self, features: Dict[str, torch.Tensor], instances: List[Instances]
    ) -> List[Instances]:
        if self.training or not self._masks_for_confident_only():
            return super().forward_with_given_boxes(features, instances)
        scores = torch.cat([x.scores for x in instances])
        # the fusion's stop test, in float64 as Python floats (a NaN score is visited too)
        needed = ~(scores.to(torch.float64) < self.mask_score_threshold)
        rows = self._batch_rows(needed)
        if not bool(rows.any()):  # no confident detection: empty masks, no mask head run
            logits = None
        else:
            per_image = torch.split(rows, [len(x) for x in instances])
            boxes = [x.pred_boxes[r] for x, r in zip(instances, per_image)]
            pooled = self.mask_pooler([features[f] for f in self.mask_in_features], boxes)
            computed = self.mask_head.layers(pooled)
            # All rows in one tensor laid out as StandardROIHeads': mask_rcnn_inference's
            # sigmoid takes per element the code path (vectorized or not) of its position.
            logits = computed.new_full((len(rows),) + tuple(computed.shape[1:]), -float("inf"))
            logits[rows] = computed
        if logits is None:
            side = 2 * int(self.mask_pooler.output_size[0])
            for x in instances:
                x.pred_masks = scores.new_zeros((len(x), 1, side, side))
            return instances
        mask_rcnn_inference(logits, instances)
        return instances

    @staticmethod
    def _batch_rows(needed: torch.Tensor) -> torch.Tensor:
        """The needed rows, plus the first others up to a batch of ``_MIN_MASK_BATCH``."""
        count = int(needed.sum())
        batch = min(len(needed), _MIN_MASK_BATCH)
        if count == 0 or count >= batch:
            return needed
        rows = needed.clone()
        rows[torch.nonzero(~needed).flatten()[: batch - count]] = True
        return rows
