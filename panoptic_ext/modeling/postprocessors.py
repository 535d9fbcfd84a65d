"""
The registry of panoptic post-processors: "fast" (default) and "detectron2" (the reference).
"""

import functools
from typing import Callable, Dict, Mapping, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
from detectron2.structures import Instances
from detectron2.utils.registry import Registry

from .postprocess import (
    MaskPaster,
    PanopticOutputs,
    combine_panoptic,
    fold_thing_classes,
    postprocess_boxes,
    postprocess_instances,
)
from .semantic_argmax import upsampled_labels, upsampled_logits

__all__ = [
    "PANOPTIC_POSTPROCESSOR_REGISTRY",
    "FastPanopticPostprocessor",
    "Detectron2PanopticPostprocessor",
    "build_panoptic_postprocessor",
]

# detector_postprocess's default, which detectron2's PanopticFPN uses.
_MASK_THRESHOLD = 0.5

PANOPTIC_POSTPROCESSOR_REGISTRY = Registry("PANOPTIC_POSTPROCESSOR")
PANOPTIC_POSTPROCESSOR_REGISTRY.__doc__ = """
Registry for panoptic post-processors, selected by ``MODEL.PANOPTIC_EXT.POSTPROCESS.NAME`` and
built as ``cls(cfg)``. A post-processor is called once per image:

    postprocessor(sem_seg_logits, instances, *, stride, image_size, output_size) -> Mapping

* ``sem_seg_logits`` (Tensor): (C, h, w) semantic logits at 1/``stride`` of the padded input
  (the semantic head's ``layers()`` output);
* ``instances`` (Instances): the ROI heads' raw output (boxes in input coordinates,
  ``pred_masks`` (N, 1, M, M) probabilities); it must be left unchanged;
* ``image_size``: (height, width) of the input before padding; ``output_size``: the requested
  (height, width).

It returns detectron2's PanopticFPN outputs for the image: ``"panoptic_seg"``: (panoptic_seg,
segments_info) as detectron2's ``combine_semantic_and_instance_outputs``, and when enabled by
``POSTPROCESS.RETURN_SEM_SEG`` / ``RETURN_INSTANCES``: ``"sem_seg"`` (C, H, W) logits and
``"instances"`` (:func:`detector_postprocess` output, full-image masks).

A post-processor may also define ``needed_instances(instances) -> Optional[Tensor]``: given an
image's detections without masks, the (N,) bool selection of those whose masks its panoptic
output reads (None: all). ``PanopticFPNExt`` then predicts those masks first and calls it with
``instances.pred_masks`` computed only in the selected rows (zeros elsewhere) and the keyword
``complete_masks``: a callable returning every detection's (N, 1, M, M) masks, computed when
first called (see :class:`~panoptic_ext.modeling.deferred_masks.DeferredMasks`).
"""

SEM_SEG_THINGS_CHOICES = ("merged", "all")


def _register_postprocessor(name: str):
    """Register under a short YAML name (fvcore's register() uses the class name)."""

    def deco(cls):
        PANOPTIC_POSTPROCESSOR_REGISTRY._do_register(name, cls)
        return cls

    return deco


class _PanopticPostprocessor:
    """Options shared by the registered post-processors (detectron2's defaults)."""

    @configurable
    def __init__(
        self,
        *,
        overlap_threshold: float = 0.5,
        stuff_area_threshold: float = 4096,
        instance_score_threshold: float = 0.5,
        sem_seg_things: str = "merged",
        num_thing_classes: int = 0,
        return_sem_seg: bool = True,
        return_instances: bool = True,
    ):
        """
        Args:
            overlap_threshold, stuff_area_threshold, instance_score_threshold (float): see
                :func:`combine_panoptic`.
            sem_seg_things (str): "merged" (label 0 = things) or "all" (labels 0..T-1 = thing
                classes, folded into 'things' for the fusion).
            num_thing_classes (int): T, needed for "all".
            return_sem_seg, return_instances (bool): include "sem_seg" / "instances".
        """
        if sem_seg_things not in SEM_SEG_THINGS_CHOICES:
            raise ValueError(
                f"MODEL.PANOPTIC_EXT.SEM_SEG_THINGS must be one of {SEM_SEG_THINGS_CHOICES}, "
                f"got {sem_seg_things!r}"
            )
        if sem_seg_things == "all" and num_thing_classes <= 0:
            raise ValueError("SEM_SEG_THINGS='all' needs the number of thing classes (> 0)")
        self.overlap_threshold = overlap_threshold
        self.stuff_area_threshold = stuff_area_threshold
        self.instance_score_threshold = instance_score_threshold
        self.sem_seg_things = sem_seg_things
        self.num_thing_classes = num_thing_classes
        self.return_sem_seg = return_sem_seg
        self.return_instances = return_instances

    @classmethod
    def from_config(cls, cfg) -> dict:
        things = cfg.MODEL.PANOPTIC_EXT.SEM_SEG_THINGS
        num_things = cfg.MODEL.ROI_HEADS.NUM_CLASSES
        if things == "all" and cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES <= num_things:
            raise ValueError(
                "With MODEL.PANOPTIC_EXT.SEM_SEG_THINGS='all', MODEL.SEM_SEG_HEAD.NUM_CLASSES "
                f"({cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES}) must count the "
                f"{num_things} thing classes (MODEL.ROI_HEADS.NUM_CLASSES) plus the stuff classes"
            )
        combine = cfg.MODEL.PANOPTIC_FPN.COMBINE
        return {
            "overlap_threshold": combine.OVERLAP_THRESH,
            "stuff_area_threshold": combine.STUFF_AREA_LIMIT,
            "instance_score_threshold": combine.INSTANCES_CONFIDENCE_THRESH,
            "sem_seg_things": things,
            "num_thing_classes": num_things,
            "return_sem_seg": cfg.MODEL.PANOPTIC_EXT.POSTPROCESS.RETURN_SEM_SEG,
            "return_instances": cfg.MODEL.PANOPTIC_EXT.POSTPROCESS.RETURN_INSTANCES,
        }

    def needed_instances(self, instances: Instances) -> Optional[torch.Tensor]:
        """The detections whose masks the panoptic output reads (None: all); see the registry."""
        return None

    def merged_labels(self, semantic: torch.Tensor) -> torch.Tensor:
        """Semantic labels in detectron2's merged layout (0 = things)."""
        if self.sem_seg_things == "all":
            return fold_thing_classes(semantic, self.num_thing_classes)
        return semantic

    @staticmethod
    def check_inputs(sem_seg_logits: torch.Tensor, instances: Instances, output_size) -> None:
        if sem_seg_logits.dim() != 3:
            raise ValueError(
                f"sem_seg_logits must be (C, h, w), got shape {tuple(sem_seg_logits.shape)}"
            )
        missing = [
            f
            for f in ("pred_boxes", "scores", "pred_classes", "pred_masks")
            if not instances.has(f)
        ]
        if missing:
            raise ValueError(f"instances lack the fields {missing} (is MODEL.MASK_ON true?)")
        if len(output_size) != 2 or min(int(v) for v in output_size) <= 0:
            raise ValueError(f"output_size must be a positive (height, width), got {output_size}")


@_register_postprocessor("fast")
class FastPanopticPostprocessor(_PanopticPostprocessor):
    """
    The default: detectron2's panoptic output exactly, computing only what it needs (exact
    shortcut argmax of the semantic map, masks pasted only in the boxes of instances the fusion
    visits). "sem_seg" and "instances" are computed on first access (:class:`PanopticOutputs`).
    The fusion reads the masks of the detections scoring at least ``instance_score_threshold``
    only (``needed_instances``).
    """

    def needed_instances(self, instances: Instances) -> Optional[torch.Tensor]:
        # combine_panoptic visits instances until one scores below the threshold (compared as
        # Python floats: float64 here too; written as its test, so a NaN score is visited too)
        return ~(instances.scores.to(torch.float64) < self.instance_score_threshold)

    def __call__(
        self,
        sem_seg_logits,
        instances,
        *,
        stride,
        image_size,
        output_size,
        complete_masks: Optional[Callable[[], torch.Tensor]] = None,
    ) -> Mapping:
        """
        See ``PANOPTIC_POSTPROCESSOR_REGISTRY``; ``complete_masks``: when given,
        ``instances.pred_masks`` holds only the masks of the ``needed_instances`` and this
        returns all of them (for the "instances" output).
        """
        self.check_inputs(sem_seg_logits, instances, output_size)
        output_size = (int(output_size[0]), int(output_size[1]))
        kept = postprocess_boxes(instances, output_size)
        semantic, areas = upsampled_labels(sem_seg_logits, stride, image_size, output_size)
        if self.sem_seg_things == "all":
            merged_of_label = fold_thing_classes(
                torch.arange(len(areas), device=areas.device), self.num_thing_classes
            )
            areas = areas.new_zeros(int(merged_of_label.max()) + 1).index_add_(
                0, merged_of_label, areas
            )
            semantic = fold_thing_classes(semantic, self.num_thing_classes)
        masks = instances.pred_masks[kept.indices, 0]
        boxes = kept.pred_boxes.tensor

        panoptic = combine_panoptic(
            semantic,
            kept.scores,
            kept.pred_classes,
            MaskPaster(masks, boxes, output_size, _MASK_THRESHOLD),
            overlap_threshold=self.overlap_threshold,
            stuff_area_threshold=self.stuff_area_threshold,
            instance_score_threshold=self.instance_score_threshold,
            semantic_areas=areas,
        )
        lazy = {}
        if self.return_sem_seg:
            lazy["sem_seg"] = functools.partial(
                upsampled_logits, sem_seg_logits, stride, image_size, output_size
            )
        if self.return_instances:
            lazy["instances"] = functools.partial(
                postprocess_instances, instances, output_size, pred_masks=complete_masks
            )
        return PanopticOutputs({"panoptic_seg": panoptic}, lazy)


@_register_postprocessor("detectron2")
class Detectron2PanopticPostprocessor(_PanopticPostprocessor):
    """The reference: detectron2's own ``sem_seg_postprocess``, ``detector_postprocess`` and
    ``combine_semantic_and_instance_outputs``, every output computed eagerly."""

    def __call__(self, sem_seg_logits, instances, *, stride, image_size, output_size) -> Dict:
        self.check_inputs(sem_seg_logits, instances, output_size)
        sem_seg = upsampled_logits(sem_seg_logits, stride, image_size, output_size)
        detector_r = postprocess_instances(instances, output_size)
        panoptic = combine_semantic_and_instance_outputs(
            detector_r,
            self.merged_labels(sem_seg.argmax(dim=0)),
            self.overlap_threshold,
            self.stuff_area_threshold,
            self.instance_score_threshold,
        )
        outputs = {}
        if self.return_sem_seg:
            outputs["sem_seg"] = sem_seg
        if self.return_instances:
            outputs["instances"] = detector_r
        outputs["panoptic_seg"] = panoptic
        return outputs


def build_panoptic_postprocessor(cfg):
    """Build the post-processor named by ``cfg.MODEL.PANOPTIC_EXT.POSTPROCESS.NAME``."""
    name = cfg.MODEL.PANOPTIC_EXT.POSTPROCESS.NAME
    if name not in PANOPTIC_POSTPROCESSOR_REGISTRY:
        known = sorted(n for n, _ in PANOPTIC_POSTPROCESSOR_REGISTRY)
        raise ValueError(
            f"MODEL.PANOPTIC_EXT.POSTPROCESS.NAME={name!r} is not a registered panoptic "
            f"post-processor; known: {known}"
        )
    return PANOPTIC_POSTPROCESSOR_REGISTRY.get(name)(cfg)
