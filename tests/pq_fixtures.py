"""Random COCO-format panoptic ground truth and predictions, for the PQ tests and
benchmarks/bench_pq.py (which adds the repository root to ``sys.path``).

The cases exercise every rule of PQ: VOID regions, crowd segments (sometimes two of a category),
gt ids missing from the JSON, tiny segments, predictions shifted around IoU 0.5, wrong
categories, false positives lying on VOID or crowd, unmatched gt segments.
"""

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image

from panoptic_ext.data import id_to_rgb

__all__ = ["DEFAULT_CATEGORIES", "random_panoptic_pair", "write_panoptic_files"]

# Non-contiguous ids on purpose, as in COCO and Cityscapes.
DEFAULT_CATEGORIES: List[Dict[str, Any]] = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 3, "name": "car", "isthing": 1},
    {"id": 4, "name": "bicycle", "isthing": 1},
    {"id": 8, "name": "dog", "isthing": 1},
    {"id": 21, "name": "road", "isthing": 0},
    {"id": 22, "name": "sky", "isthing": 0},
    {"id": 25, "name": "grass", "isthing": 0},
    {"id": 30, "name": "wall", "isthing": 0},
]

Segments = List[Dict[str, Any]]


def _draw(canvas: np.ndarray, shape: Tuple, value: int, dx: int = 0, dy: int = 0) -> None:
    kind = shape[0]
    if kind == "rect":
        _, x0, y0, x1, y1 = shape
        h, w = canvas.shape
        xa, xb = max(0, x0 + dx), min(w, x1 + dx)
        ya, yb = max(0, y0 + dy), min(h, y1 + dy)
        if xa < xb and ya < yb:
            canvas[ya:yb, xa:xb] = value
    else:
        _, cx, cy, ax, ay, angle = shape
        cv2.ellipse(canvas, (cx + dx, cy + dy), (ax, ay), angle, 0, 360, int(value), -1)


def _random_shape(rng: np.random.Generator, h: int, w: int, scale: float) -> Tuple:
    size = max(1, int(scale * min(h, w)))
    if rng.random() < 0.5:
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        return (
            "rect",
            x0,
            y0,
            x0 + int(rng.integers(1, size + 1)),
            y0 + int(rng.integers(1, size + 1)),
        )
    return (
        "ellipse",
        int(rng.integers(0, w)),
        int(rng.integers(0, h)),
        int(rng.integers(1, size // 2 + 2)),
        int(rng.integers(1, size // 2 + 2)),
        int(rng.integers(0, 180)),
    )


def _segments_of(id_map: np.ndarray, info: Dict[int, Dict[str, Any]]) -> Segments:
    """segments_info of the ids still visible in ``id_map`` (with their pixel areas)."""
    ids, counts = np.unique(id_map, return_counts=True)
    segments = []
    for i, n in zip(ids.tolist(), counts.tolist()):
        if i in info:
            segments.append(dict(info[i], id=i, area=n))
    return segments


def random_panoptic_pair(
    rng: np.random.Generator,
    height: int,
    width: int,
    categories: Sequence[Dict[str, Any]] = DEFAULT_CATEGORIES,
    num_things: int = 8,
    small_ids: bool = False,
    void_speckle: float = 0.0,
) -> Tuple[np.ndarray, Segments, np.ndarray, Segments]:
    """
    One random image: (gt id map, gt segments_info, predicted id map, predicted segments_info).

    Args:
        rng (Generator): numpy random generator.
        height, width (int): image size.
        categories (list[dict]): COCO panoptic categories (``id``, ``isthing``).
        num_things (int): about how many thing segments the gt has.
        small_ids (bool): ids 1, 2, ... (as models produce) instead of random 24-bit ids.
        void_speckle (float): fraction of pixels set to VOID at random in both maps (as
            annotation tools leave on borders; many short runs).
    """
    things = [c["id"] for c in categories if c["isthing"]]
    stuff = [c["id"] for c in categories if not c["isthing"]]
    used = set()

    def new_id() -> int:
        while True:
            i = len(used) + 1 if small_ids else int(rng.integers(1, 1 << 24))
            if i not in used:
                used.add(i)
                return i

    gt = np.zeros((height, width), np.int32)
    pred = np.zeros((height, width), np.int32)
    gt_info: Dict[int, Dict[str, Any]] = {}
    pred_info: Dict[int, Dict[str, Any]] = {}

    # Stuff: horizontal bands; the prediction moves the borders and sometimes the category.
    cuts = np.sort(rng.integers(0, height, size=max(1, len(stuff) - 1)))
    bounds = [0] + cuts.tolist() + [height]
    for k in range(len(bounds) - 1):
        cat = int(rng.choice(stuff))
        gid = new_id()
        gt[bounds[k] : bounds[k + 1]] = gid
        gt_info[gid] = {"category_id": cat, "iscrowd": 0}
        jitter = int(rng.integers(-height // 8, height // 8 + 1))
        a, b = max(0, bounds[k] + jitter), max(0, bounds[k + 1] + jitter)
        pid = new_id()
        pred[a:b] = pid
        pred_info[pid] = {"category_id": cat if rng.random() < 0.8 else int(rng.choice(stuff))}
    if rng.random() < 0.5:  # leave part of the prediction VOID
        pred[:, : int(rng.integers(1, max(2, width // 4)))] = 0

    # Things: shapes, some crowd, some tiny; predictions shifted copies (IoU around 0.5).
    for _ in range(int(rng.integers(num_things // 2, num_things + 2))):
        tiny = rng.random() < 0.15
        shape = _random_shape(rng, height, width, 0.02 if tiny else 0.35)
        cat = int(rng.choice(things))
        gid = new_id()
        _draw(gt, shape, gid)
        gt_info[gid] = {"category_id": cat, "iscrowd": int(rng.random() < 0.15)}
        if rng.random() < 0.8:
            extent = (
                max(shape[3] - shape[1], shape[4] - shape[2])
                if shape[0] == "rect"
                else 2 * max(shape[3], shape[4])
            )
            span = max(1, int(0.4 * extent * rng.random()))
            dx, dy = (int(v) for v in rng.integers(-span, span + 1, size=2))
            pid = new_id()
            _draw(pred, shape, pid, dx, dy)
            keep = rng.random() < 0.85
            pred_info[pid] = {"category_id": cat if keep else int(rng.choice(things))}
    for _ in range(int(rng.integers(0, 4))):  # false positives
        pid = new_id()
        _draw(pred, _random_shape(rng, height, width, 0.2), pid)
        pred_info[pid] = {"category_id": int(rng.choice(things + stuff))}

    # VOID in the gt, sometimes under a prediction; a gt id missing from the JSON.
    for _ in range(int(rng.integers(0, 3))):
        shape = _random_shape(rng, height, width, 0.3)
        _draw(gt, shape, 0)
        if rng.random() < 0.5:
            pid = new_id()
            _draw(pred, shape, pid, 1, 1)
            pred_info[pid] = {"category_id": int(rng.choice(things + stuff))}
    if rng.random() < 0.2:
        _draw(gt, _random_shape(rng, height, width, 0.2), new_id())

    if void_speckle > 0:
        for id_map in (gt, pred):
            id_map[rng.random(id_map.shape) < void_speckle] = 0
    gt_segments = _segments_of(gt, gt_info)
    pred_segments = [
        {k: v for k, v in s.items() if k != "area"} for s in _segments_of(pred, pred_info)
    ]
    listed = {s["id"] for s in pred_segments} | {0}
    pred[~np.isin(pred, list(listed))] = 0  # segments painted over entirely
    return gt, gt_segments, pred, pred_segments


def write_panoptic_files(
    root: str,
    cases: Sequence[Tuple[np.ndarray, Segments, np.ndarray, Segments]],
    categories: Sequence[Dict[str, Any]] = DEFAULT_CATEGORIES,
    image_ids: Optional[Sequence[Any]] = None,
) -> Tuple[str, str, str, str]:
    """
    Write cases from :func:`random_panoptic_pair` as COCO panoptic files under ``root``.

    Returns:
        (gt_json, gt_folder, pred_json, pred_folder)
    """
    gt_folder, pred_folder = os.path.join(root, "gt"), os.path.join(root, "pred")
    os.makedirs(gt_folder, exist_ok=True)
    os.makedirs(pred_folder, exist_ok=True)
    images, gt_anns, pred_anns = [], [], []
    for k, (gt, gt_segments, pred, pred_segments) in enumerate(cases):
        image_id = image_ids[k] if image_ids is not None else k
        name = f"{k:06d}.png"
        Image.fromarray(id_to_rgb(gt)).save(os.path.join(gt_folder, name))
        Image.fromarray(id_to_rgb(pred)).save(os.path.join(pred_folder, name))
        h, w = gt.shape
        images.append({"id": image_id, "file_name": f"{k:06d}.jpg", "height": h, "width": w})
        gt_anns.append({"image_id": image_id, "file_name": name, "segments_info": gt_segments})
        pred_anns.append({"image_id": image_id, "file_name": name, "segments_info": pred_segments})
    gt_json, pred_json = os.path.join(root, "gt.json"), os.path.join(root, "pred.json")
    with open(gt_json, "w") as f:
        json.dump({"images": images, "annotations": gt_anns, "categories": list(categories)}, f)
    with open(pred_json, "w") as f:
        json.dump({"annotations": pred_anns}, f)
    return gt_json, gt_folder, pred_json, pred_folder
