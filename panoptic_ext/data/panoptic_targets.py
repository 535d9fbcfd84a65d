"""Panoptic annotations -> Panoptic FPN targets (pure functions, no detectron2 state).

A COCO panoptic PNG encodes a segment id per pixel as ``id = R + 256 * G + 256**2 * B``; id 0 is
void. The record's ``segments_info`` says which category each id has and whether it is a crowd.

The mapper first compacts the id map into a small *index map* (index 0 = void, index ``i`` = the
``i``-th segment), so that augmentations can resample it with nearest-neighbour interpolation (it
fits in uint8 for up to 255 segments), then builds the targets from the transformed index map.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from .class_layout import PanopticClassLayout

__all__ = [
    "PanopticTargets",
    "compact_panoptic_ids",
    "targets_from_index_map",
    "panoptic_targets",
    "masks_to_boxes",
]


@dataclass
class PanopticTargets:
    """
    Attributes:
        sem_seg (np.ndarray): (H, W) int64 semantic labels, ``layout.ignore_label`` on void.
        gt_classes (np.ndarray): (N,) int64 instance classes ``0..T-1`` of the non-crowd things.
        gt_masks (np.ndarray): (N, H, W) bool masks of those things.
        gt_boxes (np.ndarray): (N, 4) float32 tight XYXY boxes of the masks (x1, y1 exclusive).
        segment_ids (np.ndarray): (N,) int64 panoptic ids of those things (for tests/debugging).
    """

    sem_seg: np.ndarray
    gt_classes: np.ndarray
    gt_masks: np.ndarray
    gt_boxes: np.ndarray
    segment_ids: np.ndarray


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, 4) float32 XYXY boxes, as ``BitMasks.get_bounding_boxes``."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for i, mask in enumerate(masks):
        xs = np.flatnonzero(mask.any(axis=0))
        ys = np.flatnonzero(mask.any(axis=1))
        if len(xs):
            boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


def compact_panoptic_ids(
    pan_ids: np.ndarray, segments_info: Sequence[Dict[str, Any]], file_name: str = "<panoptic PNG>"
) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """
    Replace segment ids by small indices: 0 = void, ``i >= 1`` = ``segments[i - 1]``.

    Args:
        pan_ids (np.ndarray): (H, W) segment ids (from :func:`rgb_to_id`).
        segments_info (list[dict]): the record's segments, each with "id" and "category_id".
        file_name (str): the PNG's path, for error messages.

    Returns:
        index_map (np.ndarray): (H, W) uint8 if there are at most 255 segments, else float32
            (exact for these small integers; detectron2's resize handles only these two dtypes).
        segments (list[dict]): the segment info of each index 1.., in index order.

    Raises:
        ValueError: a non-zero id of the PNG is not in ``segments_info``, or ids repeat.
    """
    by_id: Dict[int, Dict[str, Any]] = {}
    for seg in segments_info:
        sid = int(seg["id"])
        if sid in by_id:
            raise ValueError(f"{file_name}: segment id {sid} appears twice in segments_info")
        by_id[sid] = seg
    uniq, inverse = np.unique(pan_ids, return_inverse=True)
    inverse = inverse.reshape(pan_ids.shape)
    if len(uniq) == 0 or uniq[0] != 0:  # reserve index 0 for void (also what padding produces)
        uniq = np.concatenate([[0], uniq])
        inverse = inverse + 1
    missing = [int(i) for i in uniq[1:] if int(i) not in by_id]
    if missing:
        raise ValueError(
            f"{file_name}: segment ids {missing[:10]} of the PNG are missing from the record's "
            f"segments_info (the panoptic JSON lists {sorted(by_id)[:10]}...). The PNG and the "
            "JSON do not belong together, or the PNG was not saved losslessly as RGB."
        )
    segments = [by_id[int(i)] for i in uniq[1:]]
    dtype = np.uint8 if len(uniq) <= 256 else np.float32
    return inverse.astype(dtype), segments


def targets_from_index_map(
    index_map: np.ndarray,
    segments: Sequence[Dict[str, Any]],
    layout: PanopticClassLayout,
    file_name: str = "<panoptic PNG>",
) -> PanopticTargets:
    """
    Semantic labels and thing instances from an index map (see :func:`compact_panoptic_ids`).

    Things with ``iscrowd=1`` get their semantic label but are not instances (as detectron2's
    mappers drop crowd annotations). Things whose mask is empty (e.g. cropped away) are dropped.

    Args:
        index_map (np.ndarray): (H, W) indices, possibly resized/cropped/flipped.
        segments (list[dict]): segment info of each index ``1..``, with record ``category_id``.
        layout (PanopticClassLayout): maps record category ids to model labels.
        file_name (str): the PNG's path, for error messages.
    """
    index_map = np.rint(index_map).astype(np.int64) if index_map.dtype.kind == "f" else index_map
    index_map = index_map.astype(np.int64, copy=False)
    num = len(segments) + 1
    if index_map.size and (index_map.min() < 0 or index_map.max() >= num):
        raise ValueError(f"{file_name}: index map has values outside [0, {num})")

    sem_lut = np.full(num, layout.ignore_label, dtype=np.int64)
    thing_indices: List[int] = []
    for i, seg in enumerate(segments, start=1):
        cid = int(seg["category_id"])
        try:
            sem_lut[i] = layout.sem_seg_label(cid)
        except KeyError as e:
            raise ValueError(f"{file_name}: segment {seg.get('id')}: {e.args[0]}") from None
        is_thing = layout.is_thing(cid)
        if "isthing" in seg and bool(seg["isthing"]) != is_thing:
            raise ValueError(
                f"{file_name}: segment {seg.get('id')} has isthing={seg['isthing']} but category "
                f"{cid} is a {'thing' if is_thing else 'stuff'} class in the dataset metadata"
            )
        if is_thing and not seg.get("iscrowd", 0):
            thing_indices.append(i)
    sem_seg = sem_lut[index_map]

    h, w = index_map.shape
    masks = np.zeros((len(thing_indices), h, w), dtype=bool)
    for k, i in enumerate(thing_indices):
        masks[k] = index_map == i
    keep = masks.reshape(len(masks), -1).any(axis=1) if len(masks) else np.zeros(0, dtype=bool)
    masks = masks[keep]
    kept = [segments[i - 1] for i, k in zip(thing_indices, keep) if k]
    classes = np.array([layout.instance_class(int(s["category_id"])) for s in kept], np.int64)
    return PanopticTargets(
        sem_seg=sem_seg,
        gt_classes=classes,
        gt_masks=masks,
        gt_boxes=masks_to_boxes(masks),
        segment_ids=np.array([int(s["id"]) for s in kept], dtype=np.int64),
    )


def panoptic_targets(
    pan_ids: np.ndarray,
    segments_info: Sequence[Dict[str, Any]],
    layout: PanopticClassLayout,
    file_name: str = "<panoptic PNG>",
) -> PanopticTargets:
    """
    Panoptic FPN targets of an un-augmented panoptic annotation.

    Args:
        pan_ids (np.ndarray): (H, W) segment ids, 0 = void.
        segments_info (list[dict]): "id", record "category_id", optional "iscrowd"/"isthing".
        layout (PanopticClassLayout): the dataset's class layout.
        file_name (str): the PNG's path, for error messages.
    """
    index_map, segments = compact_panoptic_ids(pan_ids, segments_info, file_name)
    return targets_from_index_map(index_map, segments, layout, file_name)
