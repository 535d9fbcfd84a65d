"""
Panoptic post-processing: semantic map + instances -> detectron2's panoptic output.

:func:`combine_panoptic` is detectron2's ``combine_semantic_and_instance_outputs`` (same segment
ids, same ``segments_info``) computed without full-image work per instance or per stuff class:
masks are pasted (:class:`MaskPaster`) only for the instances the fusion visits and only around
their boxes, stuff areas come from label counts, and the panoptic map is painted in one pass.
"""

from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from torch.nn import functional as F

__all__ = [
    "combine_panoptic",
    "fold_thing_classes",
    "MaskPaster",
    "postprocess_boxes",
    "postprocess_instances",
    "PanopticOutputs",
]


class MaskPaster:
    """
    Pastes soft masks into the image, one instance at a time and only in the region around its
    box, with exactly the arithmetic of detectron2's ``paste_masks_in_image`` on the CPU (same
    region, same sampling grid, same ``grid_sample`` call per instance), so the masks are equal
    bit for bit. The grids' coordinates of all instances are computed together up front, which
    saves most of the per-instance overhead.

    ``paster(i) -> (bool mask of the region, (rows, cols))``, the mask as a numpy array (the
    fusion's per-instance work runs in numpy: single-threaded small operations, which stay fast
    when a busy machine makes every OpenMP parallel region slow); pixels outside the region are
    not in the mask.
    """

    def __init__(
        self,
        mask_probs: torch.Tensor,
        boxes: torch.Tensor,
        image_size: Tuple[int, int],
        threshold: float = 0.5,
    ):
        """
        Args:
            mask_probs (Tensor): (N, M, M) mask probabilities.
            boxes (Tensor): (N, 4) boxes (x0, y0, x1, y1) in output coordinates.
            image_size (tuple): (height, width) of the output.
            threshold (float): probability at or above which a pixel is in the mask.
        """
        if mask_probs.dim() != 3 or boxes.shape != (len(mask_probs), 4):
            raise ValueError(
                f"Expected (N, M, M) masks and (N, 4) boxes, got {tuple(mask_probs.shape)} and "
                f"{tuple(boxes.shape)}"
            )
        self.mask_probs = mask_probs if mask_probs.is_floating_point() else mask_probs.float()
        self.threshold = threshold
        height, width = (int(v) for v in image_size)
        # detectron2's _do_paste_mask region for one box: floor(x0) - 1 .. ceil(x1) + 1, clipped.
        start = torch.clamp(boxes[:, :2].floor() - 1, min=0).to(torch.int64)
        stop_x = torch.clamp(boxes[:, 2].ceil() + 1, max=width).to(torch.int64)
        stop_y = torch.clamp(boxes[:, 3].ceil() + 1, max=height).to(torch.int64)
        self.start_x, self.start_y = start[:, 0].tolist(), start[:, 1].tolist()
        self.stop_x, self.stop_y = stop_x.tolist(), stop_y.tolist()
        x0, y0, x1, y1 = torch.split(boxes, 1, dim=1)
        grid_x = self._coordinates(start[:, 0], stop_x, x0, x1).to(self.mask_probs.dtype)
        grid_y = self._coordinates(start[:, 1], stop_y, y0, y1).to(self.mask_probs.dtype)
        self.grid_x, self.grid_y = grid_x.cpu().numpy(), grid_y.cpu().numpy()

    @staticmethod
    def _coordinates(start, stop, low, high) -> torch.Tensor:
        """Each instance's normalized sampling coordinates, (N, longest region) padded."""
        length = int((stop - start).max()) if len(start) else 0
        pixel = start[:, None] + torch.arange(length, device=start.device)[None, :]
        pixel = pixel.to(torch.float32) + 0.5
        return (pixel - low) / (high - low) * 2 - 1  # the same float ops, in the same order

    def __call__(self, i: int) -> Tuple[np.ndarray, Tuple[slice, slice]]:
        rows = slice(self.start_y[i], self.stop_y[i])
        cols = slice(self.start_x[i], self.stop_x[i])
        h, w = rows.stop - rows.start, cols.stop - cols.start
        grid = np.empty((1, h, w, 2), dtype=self.grid_x.dtype)
        grid[0, :, :, 0] = self.grid_x[i, None, :w]
        grid[0, :, :, 1] = self.grid_y[i, :h, None]
        grid = torch.from_numpy(grid).to(self.mask_probs.device)
        pasted = F.grid_sample(self.mask_probs[i][None, None], grid, align_corners=False)
        return pasted[0, 0].cpu().numpy() >= self.threshold, (rows, cols)


def combine_panoptic(
    semantic: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    instance_mask: Callable[[int], Tuple[np.ndarray, Tuple[slice, slice]]],
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
    ``instance_score_threshold``; an instance whose mask is empty, or overlaps the segments
    already placed by more than ``overlap_threshold`` of its area, is skipped, otherwise its
    not-yet-covered pixels become a segment. Then every semantic label but 0 (the 'things'
    class) with at least ``stuff_area_threshold`` uncovered pixels becomes a segment, in
    increasing label order.

    Args:
        semantic (Tensor): (H, W) int64 or int32 semantic labels; 0 = things, 1..S = stuff.
        scores (Tensor): (N,) instance scores.
        classes (Tensor): (N,) instance classes.
        instance_mask (callable): ``instance_mask(i) -> (bool region mask, (rows, cols))``, the
            mask (numpy array or tensor) of instance i inside its region of the image (see
            :class:`MaskPaster`).
        overlap_threshold (float): see above (detectron2: 0.5).
        stuff_area_threshold (float): see above (detectron2: 4096).
        instance_score_threshold (float): see above (detectron2: 0.5).
        semantic_areas (Tensor): optional, the pixel count of each label in ``semantic`` (its
            bincount), when the caller has it already.

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
    # Per-instance work on small regions runs in numpy (single-threaded): see MaskPaster.
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
        semantic_areas = torch.bincount(semantic.flatten().long())
    areas = semantic_areas.cpu().numpy().astype(np.int64)
    free_areas = areas.copy()
    for region, mask, _ in placed:
        free_areas -= np.bincount(labels[region][mask], minlength=len(free_areas))
    segment_of_label = torch.zeros(len(free_areas), dtype=torch.int32)
    # Labels present anywhere, as detectron2's torch.unique(semantic).
    for label in np.flatnonzero(areas).tolist():
        area = int(free_areas[label])
        if label == 0 or area < stuff_area_threshold:
            continue
        segments_info.append(
            {"id": len(segments_info) + 1, "isthing": False, "category_id": label, "area": area}
        )
        segment_of_label[label] = len(segments_info)
    # Stuff masks are disjoint and the things cover theirs: paint all stuff, then the things.
    flat = torch.from_numpy(labels).flatten()
    panoptic_seg = segment_of_label.index_select(0, flat).view(labels.shape)
    painted = panoptic_seg.numpy()
    for region, mask, segment_id in placed:
        painted[region][mask] = segment_id
    return panoptic_seg.to(semantic.device), segments_info


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


def postprocess_instances(
    instances: Instances,
    output_size: Tuple[int, int],
    pred_masks: Optional[Callable[[], torch.Tensor]] = None,
) -> Instances:
    """
    :func:`detector_postprocess` (full-image masks) leaving the raw instances unchanged;
    ``pred_masks`` (callable): gives the (N, 1, M, M) masks to use instead of the instances'.
    """
    fields = dict(instances.get_fields())
    if pred_masks is not None:
        fields["pred_masks"] = pred_masks()
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
