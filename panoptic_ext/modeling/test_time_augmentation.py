"""
``PanopticFPNWithTTA``: test-time augmentation (scales and horizontal flips) for
``PanopticFPNExt``, configured by detectron2's ``TEST.AUG`` keys and built on its
``DatasetMapperTTA``.

detectron2's ``GeneralizedRCNNWithTTA`` cannot run a panoptic model (it calls ``inference`` with
arguments PanopticFPN does not take, and returns instances only). This wrapper merges the
detections as it does (boxes of every augmentation mapped back to the image, class-wise NMS, then
masks predicted on the merged boxes in every augmentation and averaged), averages the semantic
logits (each augmentation's resized to the output size, un-flipped), and runs the model's own
panoptic fusion once, at the output size (:meth:`PanopticPostprocessorBase.fuse_upsampled`).
"""

import contextlib
import copy
from typing import Dict, Iterator, List, NamedTuple, Sequence

import numpy as np
import torch
from detectron2.data.detection_utils import read_image
from detectron2.modeling import DatasetMapperTTA
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference_single_image
from detectron2.structures import Boxes, Instances
from fvcore.transforms import HFlipTransform, Transform
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .semantic_argmax import upsampled_logits

__all__ = ["PanopticFPNWithTTA", "check_test_aug"]

# detectron2's GeneralizedRCNNWithTTA keeps every merged box scoring above this.
_MERGE_SCORE_THRESH = 1e-8
_MODEL_PARTS = ("preprocess_image", "backbone", "proposal_generator", "roi_heads")


def check_test_aug(min_sizes: Sequence[int], max_size: int, flip: bool) -> None:
    """
    Check detectron2's ``TEST.AUG.MIN_SIZES / MAX_SIZE / FLIP`` values.

    Raises:
        ValueError: naming the key, its value and what is expected.
    """
    sizes = list(min_sizes) if isinstance(min_sizes, (list, tuple)) else None
    if not sizes:
        raise ValueError(
            f"TEST.AUG.MIN_SIZES = {min_sizes!r}: test-time augmentation needs at least one "
            "short-edge size, e.g. TEST.AUG.MIN_SIZES (256,)"
        )
    bad = [s for s in sizes if isinstance(s, bool) or not isinstance(s, int) or s <= 0]
    if bad:
        raise ValueError(
            f"TEST.AUG.MIN_SIZES = {tuple(sizes)}: sizes must be positive integers, got {bad}"
        )
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size <= 0:
        raise ValueError(f"TEST.AUG.MAX_SIZE = {max_size!r} must be a positive integer")
    too_large = sorted({s for s in sizes if s > max_size})
    if too_large:
        raise ValueError(
            f"TEST.AUG.MAX_SIZE = {max_size} is below TEST.AUG.MIN_SIZES {too_large}: every "
            f"image's long side would be cut to {max_size}, so those sizes are never reached. "
            f"Raise TEST.AUG.MAX_SIZE to at least {too_large[-1]} or drop those sizes."
        )
    if not isinstance(flip, bool):
        raise ValueError(f"TEST.AUG.FLIP = {flip!r} must be True or False")


class _Augmented(NamedTuple):
    """One augmented view of an image, with what its masks and logits need later."""

    transform: Transform  # original image -> this view
    flipped: bool
    image_size: tuple  # (height, width) of the view before padding
    features: Dict[str, torch.Tensor]


@contextlib.contextmanager
def _boxes_only(roi_heads: nn.Module) -> Iterator[None]:
    """ROI heads that predict boxes only (as detectron2's TTA: masks come after the merge)."""
    saved = {a: getattr(roi_heads, a) for a in ("mask_on", "keypoint_on") if hasattr(roi_heads, a)}
    for attr in saved:
        setattr(roi_heads, attr, False)
    try:
        yield
    finally:
        for attr, value in saved.items():
            setattr(roi_heads, attr, value)


class PanopticFPNWithTTA(nn.Module):
    """
    A ``PanopticFPNExt`` with test-time augmentation: the same inputs and outputs as the model's
    inference (a dict per image with "panoptic_seg", and "sem_seg" / "instances" as the model's
    post-processor is configured, in the test dataset's label space).

    Per image, every view of ``DatasetMapperTTA`` (each ``TEST.AUG.MIN_SIZES`` short edge, capped
    at ``TEST.AUG.MAX_SIZE``, and its mirror image if ``TEST.AUG.FLIP``) runs the backbone once;
    its features are kept until the merged boxes' masks are predicted (about 80 MB per view for
    an R50-FPN at 800x1216).
    """

    def __init__(self, cfg, model: nn.Module, tta_mapper=None):
        """
        Args:
            cfg (CfgNode): reads ``TEST.AUG``, ``MODEL.ROI_HEADS.NUM_CLASSES / NMS_THRESH_TEST``
                and ``TEST.DETECTIONS_PER_IMAGE``.
            model (nn.Module): a ``PanopticFPNExt`` (or a DDP-wrapped one).
            tta_mapper (callable): dataset dict -> list of augmented dicts, each with a
                "transforms" ``TransformList``; default ``DatasetMapperTTA(cfg)``.
        """
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        missing = [
            a for a in _MODEL_PARTS + ("sem_seg_head", "postprocessor") if not hasattr(model, a)
        ]
        if missing:
            raise TypeError(
                f"PanopticFPNWithTTA needs a PanopticFPNExt-like model; {type(model).__name__} "
                f"has no {missing}"
            )
        if not hasattr(model.postprocessor, "fuse_upsampled"):
            raise TypeError(
                f"PanopticFPNWithTTA needs a post-processor with fuse_upsampled(sem_seg, "
                f"instances) (see PanopticPostprocessorBase); {type(model.postprocessor).__name__}"
                " has none"
            )
        if cfg.MODEL.KEYPOINT_ON or cfg.MODEL.LOAD_PROPOSALS:
            raise ValueError(
                "PanopticFPNWithTTA supports neither MODEL.KEYPOINT_ON nor MODEL.LOAD_PROPOSALS"
            )
        if tta_mapper is None:
            check_test_aug(cfg.TEST.AUG.MIN_SIZES, cfg.TEST.AUG.MAX_SIZE, cfg.TEST.AUG.FLIP)
            tta_mapper = DatasetMapperTTA(cfg)
        self.model = model
        self.tta_mapper = tta_mapper
        self.num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
        self.nms_thresh = cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST
        self.detections_per_image = cfg.TEST.DETECTIONS_PER_IMAGE

    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        """
        Args:
            batched_inputs (list[dict]): detectron2 model inputs ("image" CHW tensor, or
                "file_name"; optional "height" / "width": the output size).

        Returns:
            list[dict]: the model's outputs per image, from all augmentations.
        """
        return [self.inference_one_image(self._with_image(x)) for x in batched_inputs]

    def _with_image(self, inputs: Dict) -> Dict:
        ret = copy.copy(inputs)
        if "image" not in ret:
            image = read_image(ret["file_name"], self.model.input_format)
            ret["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        ret.setdefault("height", ret["image"].shape[1])
        ret.setdefault("width", ret["image"].shape[2])
        return ret

    def inference_one_image(self, inputs: Dict) -> Dict:
        """
        Args:
            inputs (dict): one model input with "image", "height" and "width".

        Returns:
            dict: the model's output dict for the image, at (height, width).
        """
        output_size = (int(inputs["height"]), int(inputs["width"]))
        views, sem_seg, detections = [], None, []
        for augmented in self.tta_mapper(inputs):
            view, logits, instances = self._run_view(augmented, output_size)
            views.append(view)
            sem_seg = logits if sem_seg is None else sem_seg.add_(logits)
            detections.append(instances)
        sem_seg /= len(views)
        merged = self.merge_detections(detections, output_size)
        if self.model.roi_heads.mask_on:
            merged.pred_masks = self._average_masks(views, merged)
        return self.model.postprocessor.fuse_upsampled(sem_seg, merged)

    def _run_view(self, augmented: Dict, output_size):
        """Backbone, semantic logits (at the output size, un-flipped) and boxes (in original
        image coordinates) of one view."""
        model = self.model
        transform = augmented.pop("transforms")
        flipped = any(isinstance(t, HFlipTransform) for t in transform.transforms)
        images = model.preprocess_image([augmented])
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        with _boxes_only(model.roi_heads):
            instances = model.roi_heads(images, features, proposals, None)[0][0]
        image_size = tuple(images.image_sizes[0])
        logits = model.sem_seg_head.layers(features)[0]
        stride = model.sem_seg_head.common_stride
        logits = upsampled_logits(logits, stride, image_size, output_size)
        if flipped:
            logits = logits.flip(dims=[2])
        boxes = instances.pred_boxes.tensor
        original = transform.inverse().apply_box(boxes.detach().cpu().numpy())
        instances.pred_boxes = Boxes(torch.as_tensor(original, device=boxes.device))
        return _Augmented(transform, flipped, image_size, features), logits, instances

    def merge_detections(self, detections: List[Instances], output_size) -> Instances:
        """
        detectron2's merge of the augmentations' detections: all boxes (in original image
        coordinates), class-wise NMS (``MODEL.ROI_HEADS.NMS_THRESH_TEST``), the best
        ``TEST.DETECTIONS_PER_IMAGE`` kept.

        Returns:
            Instances: of size ``output_size``, "pred_boxes", "scores", "pred_classes".
        """
        boxes = torch.cat([d.pred_boxes.tensor for d in detections])
        scores = torch.cat([d.scores for d in detections])
        classes = torch.cat([d.pred_classes for d in detections])
        # (N, K + 1) scores, as fast_rcnn_inference expects; the last column is background
        scores_2d = scores.new_zeros((len(scores), self.num_classes + 1))
        scores_2d[torch.arange(len(scores), device=scores.device), classes] = scores
        merged, _ = fast_rcnn_inference_single_image(
            boxes,
            scores_2d,
            output_size,
            _MERGE_SCORE_THRESH,
            self.nms_thresh,
            self.detections_per_image,
        )
        return merged

    def _average_masks(self, views: List[_Augmented], merged: Instances) -> torch.Tensor:
        """Masks of the merged boxes predicted in every view (un-flipped) and averaged."""
        total = None
        boxes = merged.pred_boxes.tensor.detach().cpu().numpy()
        for view in views:
            in_view = torch.as_tensor(view.transform.apply_box(boxes), device=merged.scores.device)
            instances = Instances(
                view.image_size,
                pred_boxes=Boxes(in_view),
                pred_classes=merged.pred_classes,
                scores=merged.scores,
            )
            masks = self.model.roi_heads.forward_with_given_boxes(view.features, [instances])
            masks = masks[0].pred_masks
            if view.flipped:
                masks = masks.flip(dims=[3])
            total = masks if total is None else total.add_(masks)
        return total / len(views)
