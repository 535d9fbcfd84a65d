"""
The exported network: a ``PanopticFPNExt`` from one image to its raw tensors (detections, mask
probabilities, semantic logits at 1/4 scale), as plain tensors that ``torch.jit.trace`` and
``torch.onnx.export`` record faithfully. The data-dependent panoptic fusion is left to the host
(:mod:`panoptic_ext.apps.export.runtime`).
"""

import copy
from typing import Optional, Tuple

import torch
from detectron2.modeling import StandardROIHeads
from detectron2.modeling.proposal_generator.rpn import RPN
from detectron2.modeling.roi_heads.cascade_rcnn import CascadeROIHeads
from detectron2.modeling.roi_heads.mask_head import BaseMaskRCNNHead
from torch import nn

from panoptic_ext.modeling import PanopticFPNExt
from panoptic_ext.modeling.panoptic_roi_heads import PanopticROIHeads

__all__ = ["ExportableNetwork", "OUTPUT_NAMES", "check_exportable"]

# Outputs of the exported graph, in order (see ExportableNetwork.forward).
OUTPUT_NAMES = ("boxes", "scores", "classes", "mask_rows", "masks", "sem_seg")


def check_exportable(model: nn.Module) -> None:
    """
    Raise ``ValueError`` naming the component (and its config key) that the exporter cannot
    export faithfully; return None for a supported model.
    """
    if not isinstance(model, PanopticFPNExt):
        raise ValueError(
            f"MODEL.META_ARCHITECTURE: the exporter handles PanopticFPNExt models only, not "
            f"{type(model).__name__} (PanopticFPNExt loads detectron2 PanopticFPN weights "
            "unchanged)"
        )
    if not isinstance(model.proposal_generator, RPN):
        raise ValueError(
            "MODEL.PROPOSAL_GENERATOR.NAME: the exporter handles detectron2's RPN only, not "
            f"{type(model.proposal_generator).__name__}"
        )
    heads = model.roi_heads
    if type(heads) not in (StandardROIHeads, PanopticROIHeads) or isinstance(
        heads, CascadeROIHeads
    ):
        raise ValueError(
            "MODEL.ROI_HEADS.NAME: the exporter handles StandardROIHeads and PanopticROIHeads "
            f"only, not {type(heads).__name__}"
        )
    if not heads.mask_on:
        raise ValueError("MODEL.MASK_ON: a panoptic export needs the mask head (MASK_ON True)")
    if heads.keypoint_on:
        raise ValueError("MODEL.KEYPOINT_ON: the exporter cannot export a keypoint head")
    head = heads.mask_head
    if (
        heads.mask_pooler is None
        or not isinstance(head, BaseMaskRCNNHead)
        or type(head).forward is not BaseMaskRCNNHead.forward
    ):
        raise ValueError(
            "MODEL.ROI_MASK_HEAD.NAME: the exporter needs a mask head with detectron2's "
            f"BaseMaskRCNNHead.forward (layers, then per-class selection); "
            f"{type(head).__name__} is not one"
        )
    if not callable(getattr(model.sem_seg_head, "layers", None)):
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.NAME: {type(model.sem_seg_head).__name__} has no layers() "
            "giving logits at 1/common_stride"
        )


class ExportableNetwork(nn.Module):
    """
    ``forward(image)`` for one (3, H, W) float32 image in ``INPUT.FORMAT`` (as detectron2's model
    inputs, before normalization and padding) returns, as the eager ``PanopticFPNExt`` computes
    them:

    * ``boxes`` (N, 4), ``scores`` (N,), ``classes`` (N,) int64: the ROI heads' detections in
      input coordinates, by decreasing score;
    * ``mask_rows`` (K,) int64 and ``masks`` (K, 1, M, M): the mask probabilities of the
      detections ``mask_rows`` (all detections, or with ``PanopticROIHeads``' mask score
      threshold only those scoring at least it; the others' masks are 0, as in eager);
    * ``sem_seg`` (1, C, h, w): the semantic head's logits at 1/``common_stride`` of the padded
      input.

    The model's modules are shared, not copied.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        check_exportable(model)
        self.model = model
        # The ROI heads without their mask branch: detectron2's mask_rcnn_inference splits the
        # masks per image with sizes a trace records as constants; the masks are computed below.
        self.box_heads = copy.copy(model.roi_heads)
        self.box_heads.mask_on = False
        self.mask_score_threshold: Optional[float] = getattr(
            model.roi_heads, "mask_score_threshold", None
        )

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        model = self.model
        images = model.preprocess_image([{"image": image}])
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        detections, _ = self.box_heads(images, features, proposals, None)
        instances = detections[0]
        boxes, scores, classes = instances.pred_boxes, instances.scores, instances.pred_classes
        if self.mask_score_threshold is None:
            rows = torch.arange(scores.shape[0], device=scores.device)
        else:  # the detections the panoptic fusion visits (as PanopticROIHeads in eager)
            rows = torch.nonzero(scores.to(torch.float64) >= self.mask_score_threshold)[:, 0]
        heads = model.roi_heads
        pooled = heads.mask_pooler([features[f] for f in heads.mask_in_features], [boxes[rows]])
        logits = heads.mask_head.layers(pooled)
        if logits.shape[1] == 1:  # class-agnostic masks
            masks = logits.sigmoid()
        else:  # mask_rcnn_inference's per-class selection
            index = torch.arange(logits.shape[0], device=logits.device)
            masks = logits[index, classes[rows]][:, None].sigmoid()
        sem_seg = model.sem_seg_head.layers(features)
        return boxes.tensor, scores, classes, rows, masks, sem_seg
