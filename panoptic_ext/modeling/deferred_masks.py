"""
Mask predictions computed in two parts: the masks a panoptic output needs at once, the others
when first read.

The panoptic fusion only reads the masks of detections scoring at least its threshold (about
40 of 100 for a COCO model), but detectron2's ROI heads run the mask head on every detection.
:class:`DeferredMasks` runs the ROI heads' mask pooler and mask head on the needed detections
first and on the others on demand, and turns the logits into probabilities with detectron2's
``mask_rcnn_inference``. The masks are the ones the full batch gives, bit for bit:

* each detection's logits depend only on its own box (ROIAlign and the mask head work per ROI),
  provided every batch run has at least :data:`MIN_BATCH` boxes (or all of them): torch computes
  1x1 convolutions of fewer than 16 images on one thread with another kernel, and oneDNN may
  treat a single image differently, with other last bits;
* the sigmoid is not: its vectorized and scalar code paths differ in the last bit, and which
  element takes which depends on its position in the tensor. So the logits of all detections
  are assembled in one (N, 1, M, M) tensor laid out as detectron2's, and the sigmoid always runs
  on all of it (the rows not computed yet hold zeros).
"""

import contextlib
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.modeling.roi_heads.mask_head import BaseMaskRCNNHead, mask_rcnn_inference
from detectron2.structures import Instances
from torch import nn

__all__ = ["DeferredMasks", "supports_deferred_masks", "MIN_BATCH"]

# Smallest mask-head batch run (unless there are fewer detections): torch's convolution
# dispatch picks the same kernels for every batch at least this large as for the full batch.
MIN_BATCH = 16


def supports_deferred_masks(roi_heads: nn.Module) -> bool:
    """
    Whether the masks of ``roi_heads`` can be deferred: detectron2's ``StandardROIHeads`` (its
    own ``forward``, whose inference is ``_forward_box`` then ``forward_with_given_boxes``) with
    a mask pooler and a mask head whose inference is ``layers`` then ``mask_rcnn_inference``
    (``BaseMaskRCNNHead.forward``), and no keypoints.
    """
    if not (
        isinstance(roi_heads, StandardROIHeads)
        and type(roi_heads).forward is StandardROIHeads.forward
        and bool(roi_heads.mask_on)
        and not bool(getattr(roi_heads, "keypoint_on", False))
    ):
        return False
    head = roi_heads.mask_head
    return (
        getattr(roi_heads, "mask_pooler", None) is not None
        and isinstance(head, BaseMaskRCNNHead)
        and type(head).forward is BaseMaskRCNNHead.forward
    )


class DeferredMasks:
    """
    The mask predictions (``pred_masks``, (N, 1, M, M) probabilities) of a batch's detections:
    the logits of the ``needed`` detections computed at construction, those of the others on
    the first :meth:`complete` call. Holds references to the mask features until then.

    The model must keep its weights in between: :meth:`complete` raises a RuntimeError when the
    ROI heads' parameters were modified.
    """

    def __init__(
        self,
        roi_heads: StandardROIHeads,
        features: Dict[str, torch.Tensor],
        instances: Sequence[Instances],
        needed: Sequence[torch.Tensor],
        min_batch: int = MIN_BATCH,
    ):
        """
        Args:
            roi_heads (StandardROIHeads): see :func:`supports_deferred_masks`.
            features (dict[str, Tensor]): the backbone features (as given to the ROI heads).
            instances (list[Instances]): per image, the box head's detections ("pred_boxes",
                "pred_classes", ...); left unchanged.
            needed (list[Tensor]): per image, (N_i,) bool: the detections whose masks are
                needed now.
            min_batch (int): smallest batch run (see :data:`MIN_BATCH`).
        """
        if not supports_deferred_masks(roi_heads):
            raise ValueError(
                f"{type(roi_heads).__name__} does not support deferred masks: need detectron2's "
                "StandardROIHeads with MODEL.MASK_ON, a mask pooler and without keypoints"
            )
        if len(needed) != len(instances) or any(
            m.shape != (len(x),) or m.dtype != torch.bool for m, x in zip(needed, instances)
        ):
            raise ValueError("`needed` must hold one (N_i,) bool tensor per image's instances")
        self._roi_heads = roi_heads
        self._features = [features[f] for f in roi_heads.mask_in_features]
        self._boxes = [x.pred_boxes for x in instances]
        self._counts = [len(x) for x in instances]
        # mask_rcnn_inference's inputs: the classes, and one Instances per image for its split
        self._carriers = [Instances(x.image_size, pred_classes=x.pred_classes) for x in instances]
        self._classes = torch.cat([x.pred_classes for x in instances])
        self._modes = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        self._versions = self._parameter_versions()
        total = len(self._classes)
        self._min_batch = min(total, max(1, int(min_batch)))
        self._logits: Optional[torch.Tensor] = None  # (N, 1, M, M), rows of `_done` computed
        self._done = torch.zeros(total, dtype=torch.bool, device=self._classes.device)

        self._complete = False
        self._compute(torch.cat(list(needed)).to(self._done.device))
        self._probabilities: List[torch.Tensor] = self._sigmoid()
        if bool(self._done.all()):
            self._release()

    @property
    def is_complete(self) -> bool:
        """Whether every detection's mask is computed."""
        return self._complete

    def _parameter_versions(self) -> List[int]:
        return [p._version for p in self._roi_heads.parameters()]

    def _pad(self, rows: torch.Tensor) -> torch.Tensor:
        """Add rows, in order, to a non-empty selection of fewer than ``min_batch``."""
        count = int(rows.sum())
        if count == 0 or count >= self._min_batch:
            return rows
        rows = rows.clone()
        rows[torch.nonzero(~rows).flatten()[: self._min_batch - count]] = True
        return rows

    def _compute(self, rows: torch.Tensor) -> None:
        """Compute the logits of the selected rows (padded to a batch; nothing when empty,
        unless there are no detections at all); keeps the first result of a row."""
        rows = self._pad(rows)
        if not bool(rows.any()) and len(rows):
            return
        per_image = torch.split(rows, self._counts)
        boxes = [b[r] for b, r in zip(self._boxes, per_image)]
        with self._same_modes():
            logits = self._roi_heads.mask_head.layers(
                self._roi_heads.mask_pooler(self._features, boxes)
            )
            if logits.size(1) > 1:  # class-specific: the predicted class's, as detectron2
                index = torch.arange(len(logits), device=logits.device)
                logits = logits[index, self._classes[rows]][:, None]
            if self._logits is None:
                self._logits = logits.new_zeros((len(rows),) + tuple(logits.shape[1:]))
            new = rows & ~self._done
            self._logits[new] = logits[new[rows]]
            self._done |= rows

    @contextlib.contextmanager
    def _same_modes(self):
        """The grad and inference modes of the construction, the ROI heads in eval mode."""
        grad, inference = self._modes
        training = self._roi_heads.training
        if training:  # e.g. outputs read after model.train(): inference needs eval mode
            self._roi_heads.train(False)
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                yield
        finally:
            if training:
                self._roi_heads.train(True)

    def _sigmoid(self) -> List[torch.Tensor]:
        """Per image, (N_i, 1, M, M) probabilities of all rows (detectron2's layout)."""
        if self._logits is None:  # nothing computed: zeros of the usual size
            side = 2 * int(self._roi_heads.mask_pooler.output_size[0])
            return [
                torch.zeros((n, 1, side, side), device=self._classes.device) for n in self._counts
            ]
        with self._same_modes():
            mask_rcnn_inference(self._logits, self._carriers)
        probabilities = [x.pred_masks for x in self._carriers]
        for x in self._carriers:
            x.remove("pred_masks")
        return probabilities

    def _release(self) -> None:
        self._complete = True
        self._features, self._boxes, self._logits = [], [], None

    def partial(self, image: int) -> torch.Tensor:
        """(N, 1, M, M) mask probabilities of image ``image``: only the rows of its ``needed``
        detections (and any added to fill a batch) are computed, the others are placeholders."""
        return self._probabilities[image]

    def complete(self, image: int) -> torch.Tensor:
        """(N, 1, M, M) mask probabilities of every detection of image ``image``, equal to the
        full batch's; the first call computes the missing ones of every image."""
        if not self.is_complete:
            if self._parameter_versions() != self._versions:
                raise RuntimeError(
                    "The model's ROI heads were modified after inference; read the outputs "
                    "('instances') before changing the weights"
                )
            self._compute(~self._done)
            self._probabilities = self._sigmoid()
            self._release()
        return self._probabilities[image]
