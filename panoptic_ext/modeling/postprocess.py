"""
Panoptic post-processing: semantic map + instances -> detectron2's panoptic output.

:func:`combine_panoptic` is detectron2's ``combine_semantic_and_instance_outputs`` (same segment
ids, same ``segments_info``) computed without full-image work per instance: masks are pasted only
for instances that pass the score threshold, and only inside their boxes.
"""

from typing import Any, Callable, Dict, List, Mapping, Tuple

import torch
from detectron2.layers.mask_ops import _do_paste_mask
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

__all__ = [
    "combine_panoptic",
    "fold_thing_classes",
    "paste_mask_in_box",
    "postprocess_boxes",
    "postprocess_instances",
    "PanopticOutputs",
]


def paste_mask_in_box(
    mask_probs: torch.Tensor, box: torch.Tensor, image_size: Tuple[int, int], threshold: float
) -> Tuple[torch.Tensor, Tuple[slice, slice]]:
    """
    Paste one soft mask into its box region, exactly as detectron2's ``paste_masks_in_image``
    pastes it on the CPU (one mask at a time, only in the box's region).

    Args:
        mask_probs (Tensor): (M, M) mask probabilities.
        box (Tensor): (4,) box (x0, y0, x1, y1) in output coordinates.
        image_size (tuple): (height, width) of the output.
        threshold (float): probability at or above which a pixel is in the mask.

    Returns:
        (Tensor, (slice, slice)): the bool mask of the region and the region's (rows, columns)
        in the image; pixels outside the region are not in the mask.
    """
    pasted, (rows, cols) = _do_paste_mask(
        mask_probs[None, None], box[None], image_size[0], image_size[1], skip_empty=True
    )
    region = (slice(int(rows.start), int(rows.stop)), slice(int(cols.start), int(cols.stop)))
    return pasted[0] >= threshold, region


def combine_panoptic(
    semantic: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    instance_mask: Callable[[int], Tuple[torch.Tensor, Tuple[slice, slice]]],
    *,
    overlap_threshold: float,
    stuff_area_threshold: float,
    instance_score_threshold: float,
) -> Tuple[torch.Tensor, List[Dict[str, Any]]]:
    """
    detectron2's ``combine_semantic_and_instance_outputs``, with instance masks given per box
    region and computed only for the instances it looks at.

    Instances are visited by decreasing score until one scores below
    ``instance_score_threshold``; an instance whose mask is empty, or overlaps the segments
    already placed by more than ``overlap_threshold`` of its area, is skipped, otherwise its
    not-yet-covered pixels become a segment. Then every semantic label but 0 (the 'things'
    class) with at least ``stuff_area_threshold`` uncovered pixels becomes a segment, in
    increasing label order.

    Args:
        semantic (Tensor): (H, W) int64 semantic labels; 0 = things, 1..S = stuff classes.
        scores (Tensor): (N,) instance scores.
        classes (Tensor): (N,) instance classes.
        instance_mask (callable): ``instance_mask(i) -> (bool region mask, (rows, cols))``, the
            mask of instance i inside its region of the image (see :func:`paste_mask_in_box`).
        overlap_threshold (float): see above (detectron2: 0.5).
        stuff_area_threshold (float): see above (detectron2: 4096).
        instance_score_threshold (float): see above (detectron2: 0.5).

    Returns:
        panoptic_seg (Tensor): (H, W) int32 segment ids, 0 = void.
        segments_info (list[dict]): per segment, in id order: things ``{"id", "isthing": True,
        "score", "category_id": class, "instance_id": index in the inputs}``, stuff ``{"id",
        "isthing": False, "category_id": semantic label, "area"}``.
    """
    if semantic.dim() != 2:
        raise ValueError(f"semantic must be (H, W), got shape {tuple(semantic.shape)}")
    if scores.dim() != 1 or classes.shape != scores.shape:
        raise ValueError(
            f"scores and classes must be (N,) each, got {tuple(scores.shape)} and "
            f"{tuple(classes.shape)}"
        )
    panoptic_seg = torch.zeros(semantic.shape, dtype=torch.int32, device=semantic.device)
    segments_info: List[Dict[str, Any]] = []
    current_id = 0
    for inst_id in torch.argsort(-scores):  # the same call as detectron2: same order on ties
        score = scores[inst_id].item()
        if score < instance_score_threshold:
            break
        mask, region = instance_mask(int(inst_id))
        mask_area = mask.sum().item()
        if mask_area == 0:
            continue
        placed = panoptic_seg[region]  # a view: writes go to panoptic_seg
        occupied = placed > 0
        intersect_area = (mask & occupied).sum().item()
        if intersect_area * 1.0 / mask_area > overlap_threshold:
            continue
        if intersect_area > 0:
            mask = mask & ~occupied
        current_id += 1
        placed[mask] = current_id
        segments_info.append(
            {
                "id": current_id,
                "isthing": True,
                "score": score,
                "category_id": classes[inst_id].item(),
                "instance_id": inst_id.item(),
            }
        )

    # Stuff: all labels at once. Stuff masks are disjoint, so painting them together equals
    # painting them one by one.
    num_labels = int(semantic.max()) + 1 if semantic.numel() else 1
    free = panoptic_seg == 0
    # Covered pixels are counted in an extra bin, dropped (cheaper than selecting free pixels).
    free_labels = torch.where(free, semantic, num_labels).flatten()
    areas = torch.bincount(free_labels, minlength=num_labels + 1)[:num_labels].tolist()
    if stuff_area_threshold > 0:
        present = [label for label, area in enumerate(areas) if area > 0]
    else:  # labels hidden under things still count (with area 0) when the limit allows it
        present = torch.unique(semantic).tolist()
    segment_of_label = torch.zeros(num_labels, dtype=torch.int32, device=semantic.device)
    for label in present:
        if label == 0 or areas[label] < stuff_area_threshold:
            continue
        current_id += 1
        segment_of_label[label] = current_id
        segments_info.append(
            {"id": current_id, "isthing": False, "category_id": label, "area": areas[label]}
        )
    panoptic_seg = torch.where(free, segment_of_label[semantic], panoptic_seg)
    return panoptic_seg, segments_info


def fold_thing_classes(semantic: torch.Tensor, num_thing_classes: int) -> torch.Tensor:
    """
    Map "all" semantic labels (0..T-1 things, T..T+S-1 stuff) to detectron2's merged labels
    (0 = things, 1..S = stuff).
    """
    return torch.where(semantic < num_thing_classes, 0, semantic - (num_thing_classes - 1))


def postprocess_boxes(instances: Instances, output_size: Tuple[int, int]) -> Instances:
    """
    detectron2's :func:`detector_postprocess` without the masks: boxes rescaled to the output
    size and clipped, empty boxes dropped. The raw instances are left unchanged; the result's
    ``indices`` field gives each kept instance's index in them.
    """
    fields = {k: v for k, v in instances.get_fields().items() if k != "pred_masks"}
    fields["pred_boxes"] = Boxes(instances.pred_boxes.tensor.clone())  # scaled in place
    fields["indices"] = torch.arange(len(instances), device=instances.pred_boxes.device)
    return detector_postprocess(Instances(instances.image_size, **fields), *output_size)


def postprocess_instances(instances: Instances, output_size: Tuple[int, int]) -> Instances:
    """:func:`detector_postprocess` (full-image masks) leaving the raw instances unchanged."""
    fields = dict(instances.get_fields())
    fields["pred_boxes"] = Boxes(instances.pred_boxes.tensor.clone())
    return detector_postprocess(Instances(instances.image_size, **fields), *output_size)


class PanopticOutputs(Mapping):
    """
    A read-only mapping of one image's outputs whose costly entries are computed on first
    access: ``outputs["instances"]`` pastes every mask at full resolution and
    ``outputs["sem_seg"]`` upsamples every class only when an evaluator or a user reads them.
    """

    _ORDER = ("sem_seg", "instances", "panoptic_seg")

    def __init__(self, values: Dict[str, Any], lazy: Dict[str, Callable[[], Any]]):
        self._values = dict(values)
        self._lazy = dict(lazy)

    def __getitem__(self, key: str) -> Any:
        if key not in self._values:
            if key not in self._lazy:
                raise KeyError(key)
            self._values[key] = self._lazy.pop(key)()
        return self._values[key]

    def _keys(self) -> List[str]:
        keys = set(self._values) | set(self._lazy)
        return [k for k in self._ORDER if k in keys] + sorted(keys - set(self._ORDER))

    def __iter__(self):
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def __contains__(self, key: object) -> bool:
        return key in self._values or key in self._lazy

    def __repr__(self) -> str:
        return f"PanopticOutputs(computed={sorted(self._values)}, lazy={sorted(self._lazy)})"
