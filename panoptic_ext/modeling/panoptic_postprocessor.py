"""
The panoptic post-processor: semantic logits + detections -> detectron2's panoptic output.

Holds the registry (``MODEL.PANOPTIC_EXT.POSTPROCESS.NAME``), the fusion
(:func:`combine_panoptic`, detectron2's ``combine_semantic_and_instance_outputs`` computed
without full-image work per instance or per stuff class) and two implementations with the same
outputs: "fast" (default) and "detectron2" (detectron2's own functions, the reference).
"""

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from ..compat import autocast_enabled
from ..data.class_layout import PanopticClassLayout
from ..data.label_space import output_category_ids
from .mask_paster import MaskPaster
from .named_registry import NamedRegistry
from .semantic_argmax import upsampled_labels, upsampled_logits, upsampled_logits_and_labels

__all__ = [
    "PANOPTIC_POSTPROCESSOR_REGISTRY",
    "FastPanopticPostprocessor",
    "Detectron2PanopticPostprocessor",
    "build_panoptic_postprocessor",
    "combine_panoptic",
    "fold_thing_classes",
]

# detector_postprocess's default, which detectron2's PanopticFPN uses.
_MASK_THRESHOLD = 0.5

PANOPTIC_POSTPROCESSOR_REGISTRY = NamedRegistry("PANOPTIC_POSTPROCESSOR", "panoptic post-processor")
PANOPTIC_POSTPROCESSOR_REGISTRY.__doc__ = """
Registry for panoptic post-processors, selected by ``MODEL.PANOPTIC_EXT.POSTPROCESS.NAME`` and
built as ``cls(cfg)``. A post-processor is called once per image:

    postprocessor(sem_seg_logits, instances, *, stride, image_size, output_size) -> dict

* ``sem_seg_logits`` (Tensor): (C, h, w) semantic logits at 1/``stride`` of the padded input
  (the semantic head's ``layers()`` output);
* ``instances`` (Instances): the ROI heads' raw output (boxes in input coordinates,
  ``pred_masks`` (N, 1, M, M) probabilities); it is left unchanged;
* ``image_size``: (height, width) of the input before padding; ``output_size``: the requested
  (height, width).

It returns a dict: ``"panoptic_seg"``: (panoptic_seg, segments_info) as detectron2's
``combine_semantic_and_instance_outputs``, with the category ids that
``MODEL.PANOPTIC_EXT.POSTPROCESS.CATEGORY_IDS`` names (see :class:`PanopticPostprocessorBase`;
never dependent on when the test dataset was registered); and when enabled by
``POSTPROCESS.RETURN_SEM_SEG`` / ``RETURN_INSTANCES``: ``"sem_seg"`` (C, H, W) logits and
``"instances"`` (:func:`detector_postprocess` output, full-image masks).

For test-time augmentation (:class:`PanopticFPNWithTTA`) it also has
``fuse_upsampled(sem_seg, instances) -> dict``: the same outputs from (C, H, W) logits already at
the output size (:class:`PanopticPostprocessorBase` provides it).
"""


def fold_thing_classes(semantic: torch.Tensor, num_thing_classes: int) -> torch.Tensor:
    """Map "all" semantic labels (0..T-1 things, T..T+S-1 stuff) to detectron2's merged labels
    (0 = things, 1..S = stuff)."""
    return torch.where(semantic < num_thing_classes, 0, semantic - (num_thing_classes - 1))


def combine_panoptic(
    semantic: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    instance_mask: Callable[[int], Tuple[Any, Tuple[slice, slice]]],
    *,
    overlap_threshold: float,
    stuff_area_threshold: float,
    instance_score_threshold: float,
    semantic_areas: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, List[Dict[str, Any]]]:
    """
    detectron2's ``combine_semantic_and_instance_outputs``, with instance masks given per box
    region and computed only for the instances it looks at.

    Instances are visited by decreasing score until one scores below
    ``instance_score_threshold``; one whose mask is empty, or overlaps the segments already placed
    by more than ``overlap_threshold`` of its area, is skipped, otherwise its not-yet-covered
    pixels become a segment. Then every semantic label but 0 (the 'things' class) with at least
    ``stuff_area_threshold`` uncovered pixels becomes a segment, in increasing label order.

    Args:
        semantic (Tensor): (H, W) integer semantic labels; 0 = things, 1..S = stuff.
        scores, classes (Tensor): (N,) instance scores and classes.
        instance_mask (callable): ``instance_mask(i) -> (bool region mask, (rows, cols))``, the
            mask (numpy array or tensor) of instance i inside its region (see :class:`MaskPaster`).
        overlap_threshold, stuff_area_threshold, instance_score_threshold (float): see above
            (detectron2: 0.5, 4096, 0.5).
        semantic_areas (Tensor): optional, the bincount of ``semantic`` when the caller has it.

    Returns:
        panoptic_seg (Tensor): (H, W) int32 segment ids on ``semantic``'s device, 0 = void.
        segments_info (list[dict]): per segment, in id order: things ``{"id", "isthing": True,
        "score", "category_id": class, "instance_id"}``, stuff ``{"id", "isthing": False,
        "category_id": semantic label, "area"}``.
    """
    if semantic.dim() != 2:
        raise ValueError(f"semantic must be (H, W), got shape {tuple(semantic.shape)}")
    if scores.dim() != 1 or classes.shape != scores.shape:
        raise ValueError(
            f"scores and classes must be (N,) each, got {tuple(scores.shape)} and "
            f"{tuple(classes.shape)}"
        )
    # Per-instance work on small regions runs in numpy on the host (see MaskPaster).
    labels = semantic.cpu().numpy()
    occupied = np.zeros(labels.shape, dtype=bool)
    placed = []  # (region, mask, segment id) of the things, painted last
    segments_info: List[Dict[str, Any]] = []
    score_list, class_list = scores.tolist(), classes.tolist()
    # The same argsort call as detectron2, hence the same order among equal scores.
    for inst_id in torch.argsort(-scores).tolist():
        score = score_list[inst_id]
        if score < instance_score_threshold:
            break
        mask, region = instance_mask(inst_id)
        mask = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        mask_area = int(np.count_nonzero(mask))
        if mask_area == 0:
            continue
        taken = occupied[region]  # a view: updates go to `occupied`
        intersect_area = int(np.count_nonzero(mask & taken))
        if intersect_area * 1.0 / mask_area > overlap_threshold:
            continue
        if intersect_area > 0:
            mask = mask & ~taken
        taken |= mask
        placed.append((region, mask, len(segments_info) + 1))
        segments_info.append(
            {
                "id": len(segments_info) + 1,
                "isthing": True,
                "score": score,
                "category_id": class_list[inst_id],
                "instance_id": inst_id,
            }
        )

    # Stuff: uncovered area of each label = its area - its area under the things.
    if semantic_areas is None:
        semantic_areas = torch.bincount(torch.from_numpy(labels).flatten().long())
    areas = semantic_areas.cpu().numpy().astype(np.int64)
    free_areas = areas.copy()
    for region, mask, _ in placed:
        free_areas -= np.bincount(labels[region][mask], minlength=len(free_areas))
    segment_of_label = np.zeros(len(free_areas), dtype=np.int32)
    for label in np.flatnonzero(areas).tolist():  # labels present, as torch.unique(semantic)
        area = int(free_areas[label])
        if label == 0 or area < stuff_area_threshold:
            continue
        segments_info.append(
            {"id": len(segments_info) + 1, "isthing": False, "category_id": label, "area": area}
        )
        segment_of_label[label] = len(segments_info)
    # Stuff masks are disjoint and the things cover theirs: paint all stuff, then the things.
    painted = segment_of_label[labels]
    for region, mask, segment_id in placed:
        painted[region][mask] = segment_id
    return torch.from_numpy(painted).to(semantic.device), segments_info


def _postprocess_instances(instances: Instances, output_size, with_masks: bool) -> Instances:
    """:func:`detector_postprocess` of a copy (the raw instances are left unchanged); without
    masks, the result's ``indices`` field gives each kept detection's index in the input."""
    fields = dict(instances.get_fields())
    if not with_masks:
        fields.pop("pred_masks", None)
        fields["indices"] = torch.arange(len(instances), device=instances.pred_boxes.device)
    fields["pred_boxes"] = Boxes(instances.pred_boxes.tensor.clone())  # scaled in place
    return detector_postprocess(Instances(instances.image_size, **fields), *output_size)


def _with_masks(raw: Instances, kept: Instances, masks: torch.Tensor) -> Instances:
    """:func:`detector_postprocess`'s result from the mask-less one (``kept``) and the pasted
    full-image masks, with the fields in the raw instances' order."""
    fields = kept.get_fields()
    result = Instances(kept.image_size)
    for name in raw.get_fields():
        result.set(name, masks if name == "pred_masks" else fields[name])
    return result


class PanopticPostprocessorBase:
    """
    Options shared by the registered post-processors (detectron2's defaults), and the output
    label space: with ``thing_ids`` / ``stuff_ids`` given, a thing segment's ``category_id`` is
    ``thing_ids[instance class]`` and a stuff segment's is ``stuff_ids[merged label]``: the
    contiguous ids of the dataset's metadata, which detectron2's ``Visualizer`` and
    ``COCOPanopticEvaluator`` read (``CATEGORY_IDS "dataset"``, the default; building fails
    if ``DATASETS.TEST[0]`` is not registered yet). Without them, detectron2's PanopticFPN
    convention (instance class; merged label, as "separated" metadata has): ``CATEGORY_IDS
    "detectron2"``, or ``DATASETS.TEST`` empty. The "instances" output keeps
    detectron2's instance classes ``0..T-1`` in ``pred_classes``, which its ``COCOEvaluator``
    requires.
    """

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
        thing_ids: Optional[Sequence[int]] = None,
        stuff_ids: Optional[Sequence[int]] = None,
    ):
        """
        Args:
            overlap_threshold, stuff_area_threshold, instance_score_threshold (float): see
                :func:`combine_panoptic`.
            sem_seg_things (str): "merged" (label 0 = things) or "all" (labels 0..T-1 = thing
                classes, folded into 'things' for the fusion).
            num_thing_classes (int): T, needed for "all".
            return_sem_seg, return_instances (bool): include "sem_seg" / "instances".
            thing_ids (list[int]): output category id of each instance class (None: identity).
            stuff_ids (list[int]): output category id of each merged stuff label, index 0 unused
                (None: identity).
        """
        PanopticClassLayout.check_sem_seg_things(sem_seg_things, num_thing_classes)
        self.overlap_threshold = overlap_threshold
        self.stuff_area_threshold = stuff_area_threshold
        self.instance_score_threshold = instance_score_threshold
        self.sem_seg_things = sem_seg_things
        self.num_thing_classes = num_thing_classes
        self.return_sem_seg = return_sem_seg
        self.return_instances = return_instances
        self.thing_ids = None if thing_ids is None else [int(v) for v in thing_ids]
        self.stuff_ids = None if stuff_ids is None else [int(v) for v in stuff_ids]

    @classmethod
    def from_config(cls, cfg) -> dict:
        combine = cfg.MODEL.PANOPTIC_EXT.POSTPROCESS
        thresholds = cfg.MODEL.PANOPTIC_FPN.COMBINE
        PanopticClassLayout.check_sem_seg_things(
            cfg.MODEL.PANOPTIC_EXT.SEM_SEG_THINGS,
            cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        )
        test_name = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else None
        sem_seg_things = cfg.MODEL.PANOPTIC_EXT.SEM_SEG_THINGS
        thing_ids, stuff_ids = output_category_ids(test_name, sem_seg_things, combine.CATEGORY_IDS)
        return {
            "overlap_threshold": thresholds.OVERLAP_THRESH,
            "stuff_area_threshold": thresholds.STUFF_AREA_LIMIT,
            "instance_score_threshold": thresholds.INSTANCES_CONFIDENCE_THRESH,
            "sem_seg_things": cfg.MODEL.PANOPTIC_EXT.SEM_SEG_THINGS,
            "num_thing_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "return_sem_seg": combine.RETURN_SEM_SEG,
            "return_instances": combine.RETURN_INSTANCES,
            "thing_ids": thing_ids,
            "stuff_ids": stuff_ids,
        }

    def merged_labels(self, semantic: torch.Tensor) -> torch.Tensor:
        """Semantic labels in detectron2's merged layout (0 = things)."""
        if self.sem_seg_things == "all":
            return fold_thing_classes(semantic, self.num_thing_classes)
        return semantic

    def in_dataset_labels(self, outputs: Dict[str, Any]) -> Dict[str, Any]:
        """Convert the segments' category ids to the output label space, in place."""
        for seg in outputs["panoptic_seg"][1]:
            ids = self.thing_ids if seg["isthing"] else self.stuff_ids
            if ids is not None:
                seg["category_id"] = ids[seg["category_id"]]
        return outputs

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

    def reference_outputs(self, sem_seg_logits, instances, stride, image_size, output_size):
        """detectron2's own ``sem_seg_postprocess``, ``detector_postprocess`` and
        ``combine_semantic_and_instance_outputs``, as its PanopticFPN.inference calls them."""
        sem_seg = upsampled_logits(sem_seg_logits, stride, image_size, output_size)
        return self.reference_fusion(sem_seg, instances, output_size)

    def reference_fusion(self, sem_seg: torch.Tensor, instances: Instances, output_size) -> Dict:
        """:meth:`reference_outputs` from semantic logits already at ``output_size``."""
        detector_r = _postprocess_instances(instances, output_size, with_masks=True)
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

    def fuse_upsampled(self, sem_seg: torch.Tensor, instances: Instances) -> Dict:
        """
        The post-processor's outputs from semantic logits that are already at the output size,
        e.g. averaged over test-time augmentations (same fusion, same output dict).

        Args:
            sem_seg (Tensor): (C, H, W) semantic logits at the output size (H, W).
            instances (Instances): raw detections as for ``__call__`` (boxes in
                ``instances.image_size`` coordinates, ``pred_masks`` (N, 1, M, M) probabilities);
                left unchanged.
        """
        self.check_inputs(sem_seg, instances, tuple(sem_seg.shape[1:]))
        output_size = (int(sem_seg.shape[1]), int(sem_seg.shape[2]))
        return self.in_dataset_labels(self.reference_fusion(sem_seg, instances, output_size))


@PANOPTIC_POSTPROCESSOR_REGISTRY.register_as("fast")
class FastPanopticPostprocessor(PanopticPostprocessorBase):
    """
    The default: detectron2's outputs exactly, computing only what they need. On the CPU with
    float32 logits (no autocast, no tracing): the exact shortcut argmax of the semantic map
    (:func:`upsampled_labels`, unless "sem_seg" is returned anyway) and masks pasted only in the
    boxes of the detections the fusion visits (:class:`MaskPaster`). Elsewhere (GPU, autocast,
    tracing) it computes as the "detectron2" post-processor.
    """

    @staticmethod
    def _fast_path_applies(sem_seg_logits: torch.Tensor) -> bool:
        return (
            sem_seg_logits.device.type == "cpu"
            and sem_seg_logits.dtype == torch.float32
            and not autocast_enabled("cpu")
            and not torch.jit.is_tracing()
        )

    def __call__(self, sem_seg_logits, instances, *, stride, image_size, output_size) -> Dict:
        self.check_inputs(sem_seg_logits, instances, output_size)
        output_size = (int(output_size[0]), int(output_size[1]))
        if not self._fast_path_applies(sem_seg_logits):
            outputs = self.reference_outputs(
                sem_seg_logits, instances, stride, image_size, output_size
            )
            return self.in_dataset_labels(outputs)
        # each full-resolution map computed once, shared by the outputs and the fusion
        if self.return_sem_seg:
            sem_seg, semantic, areas = upsampled_logits_and_labels(
                sem_seg_logits, stride, image_size, output_size
            )
            return self._fuse({"sem_seg": sem_seg}, semantic, areas, instances, output_size)
        semantic, areas = upsampled_labels(sem_seg_logits, stride, image_size, output_size)
        return self._fuse({}, semantic, areas, instances, output_size)

    def fuse_upsampled(self, sem_seg: torch.Tensor, instances: Instances) -> Dict:
        if not self._fast_path_applies(sem_seg):
            return super().fuse_upsampled(sem_seg, instances)
        self.check_inputs(sem_seg, instances, tuple(sem_seg.shape[1:]))
        output_size = (int(sem_seg.shape[1]), int(sem_seg.shape[2]))
        semantic = sem_seg.argmax(dim=0)
        areas = torch.bincount(semantic.flatten(), minlength=len(sem_seg))
        outputs = {"sem_seg": sem_seg} if self.return_sem_seg else {}
        return self._fuse(outputs, semantic, areas, instances, output_size)

    def _fuse(self, outputs: Dict, semantic, areas, instances, output_size) -> Dict:
        """The fusion from full-resolution semantic labels and their areas, into ``outputs``."""
        if self.sem_seg_things == "all":
            merged_of_label = fold_thing_classes(torch.arange(len(areas)), self.num_thing_classes)
            areas = areas.new_zeros(int(merged_of_label.max()) + 1).index_add_(
                0, merged_of_label, areas
            )
            semantic = fold_thing_classes(semantic, self.num_thing_classes)
        kept = _postprocess_instances(instances, output_size, with_masks=False)
        paster = MaskPaster(
            instances.pred_masks[kept.indices, 0],
            kept.pred_boxes.tensor,
            output_size,
            _MASK_THRESHOLD,
        )
        instance_mask = paster
        if self.return_instances and len(kept) == 0:
            outputs["instances"] = _postprocess_instances(instances, output_size, with_masks=True)
        elif self.return_instances:
            # every full-image mask pasted once: returned, and read by the fusion in its region
            masks = paster.paste_all()
            outputs["instances"] = _with_masks(instances, kept, masks)
            shared = masks.numpy() if paster.use_numpy else masks

            def instance_mask(i):
                rows, cols = paster.region(i)
                return shared[i, rows, cols], (rows, cols)

        outputs["panoptic_seg"] = combine_panoptic(
            semantic,
            kept.scores,
            kept.pred_classes,
            instance_mask,
            overlap_threshold=self.overlap_threshold,
            stuff_area_threshold=self.stuff_area_threshold,
            instance_score_threshold=self.instance_score_threshold,
            semantic_areas=areas,
        )
        return self.in_dataset_labels(outputs)


@PANOPTIC_POSTPROCESSOR_REGISTRY.register_as("detectron2")
class Detectron2PanopticPostprocessor(PanopticPostprocessorBase):
    """The reference: detectron2's own functions, every output computed as its PanopticFPN."""

    def __call__(self, sem_seg_logits, instances, *, stride, image_size, output_size) -> Dict:
        self.check_inputs(sem_seg_logits, instances, output_size)
        outputs = self.reference_outputs(sem_seg_logits, instances, stride, image_size, output_size)
        return self.in_dataset_labels(outputs)


def build_panoptic_postprocessor(cfg):
    """Build the post-processor named by ``cfg.MODEL.PANOPTIC_EXT.POSTPROCESS.NAME``."""
    name = cfg.MODEL.PANOPTIC_EXT.POSTPROCESS.NAME
    return PANOPTIC_POSTPROCESSOR_REGISTRY.build("MODEL.PANOPTIC_EXT.POSTPROCESS.NAME", name, cfg)
