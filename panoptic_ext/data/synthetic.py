"""A deterministic synthetic panoptic dataset in COCO panoptic format.

Each image shows textured stuff regions (sky with clouds, grainy ground, striped water) and a few
things (discs, squares, triangles) of varied colors, sizes (about 8% to 35% of the shorter image
side) and rotations, some overlapping (the later one occludes; every thing keeps at least half of
its area) or touching, some cut by the image border. About half the images have a void region
(unlabeled clutter: id 0, not in segments_info). In the *train* split about 5% of the images also
hold one crowd segment (a cluster of small discs, ``iscrowd=1``): crowd handling is exercised in
training, while the val split has no crowd so that its PQ is simple to read.

Everything is a function of ``(seed, split, image index)``. Layout under ``root``::

    train/000001.jpg ...             val/...               (images, RGB JPEG)
    panoptic_train/000001.png ...    panoptic_val/...      (RGB-encoded segment ids)
    annotations/panoptic_{train,val}.json                  (COCO panoptic)
    annotations/instances_{train,val}.json                 (COCO instances of the things, RLE)
    generator.json                                          (the parameters, to detect changes)
"""

import colorsys
import json
import logging
import os
import time
from typing import Any, Dict, List, NamedTuple, Tuple

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_util
from tqdm import tqdm

from .panoptic_ids import id_to_rgb

__all__ = [
    "SYNTHETIC_CATEGORIES",
    "SYNTHETIC_DEFAULTS",
    "GENERATOR_VERSION",
    "render_sample",
    "generate_synthetic_panoptic",
    "synthetic_split_paths",
]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
SYNTHETIC_CATEGORIES = [
    {"id": 1, "name": "disc", "isthing": 1, "color": [220, 20, 60], "supercategory": "shape"},
    {"id": 2, "name": "square", "isthing": 1, "color": [250, 170, 30], "supercategory": "shape"},
    {"id": 3, "name": "triangle", "isthing": 1, "color": [150, 60, 200], "supercategory": "shape"},
    {"id": 11, "name": "sky", "isthing": 0, "color": [70, 130, 180], "supercategory": "scene"},
    {"id": 12, "name": "ground", "isthing": 0, "color": [140, 110, 70], "supercategory": "scene"},
    {"id": 13, "name": "water", "isthing": 0, "color": [30, 90, 140], "supercategory": "scene"},
]
SYNTHETIC_DEFAULTS = {"num_train": 300, "num_val": 50, "height": 256, "width": 256, "seed": 0}
_DISC, _SQUARE, _TRIANGLE, _SKY, _GROUND, _WATER = 1, 2, 3, 11, 12, 13
_THING_HUES = {_DISC: 0.0, _SQUARE: 48.0, _TRIANGLE: 285.0}  # class color families (degrees)
_SPLITS = ("train", "val")


class _Placed(NamedTuple):
    size: float
    center: Tuple[float, float]
    area: int
    pid: int
    crowd: bool


def synthetic_split_paths(root: str, split: str) -> Dict[str, str]:
    """image_root, panoptic_root, panoptic_json and instances_json of a split."""
    return {
        "image_root": os.path.join(root, split),
        "panoptic_root": os.path.join(root, f"panoptic_{split}"),
        "panoptic_json": os.path.join(root, "annotations", f"panoptic_{split}.json"),
        "instances_json": os.path.join(root, "annotations", f"instances_{split}.json"),
    }


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _stuff(rng: np.random.Generator, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    """Stuff id map (category ids) and its textured RGB float image."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    has_sky = rng.random() > 0.15
    level = h * rng.uniform(0.25, 0.55) if has_sky else -1.0
    wave = (
        h
        * rng.uniform(0, 0.06)
        * np.sin(2 * np.pi * xx / (w * rng.uniform(0.5, 2)) + rng.uniform(0, 6.3))
    )
    cats = np.where(yy < level + wave, _SKY, _GROUND)
    if rng.random() < 0.75:
        kind = rng.integers(3)
        top = max(level, 0.0)
        if kind == 0:  # lake
            cx, cy = w * rng.uniform(0.2, 0.8), rng.uniform(top + 0.15 * h, 0.85 * h)
            a, b = w * rng.uniform(0.15, 0.35), h * rng.uniform(0.06, 0.15)
            water = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1
        elif kind == 1:  # sea at the bottom
            line = h * rng.uniform(0.65, 0.85) + h * 0.02 * np.sin(xx / w * 9 + rng.uniform(0, 6.3))
            water = yy > line
        else:  # river
            yc = rng.uniform(top + 0.15 * h, 0.85 * h)
            path = yc + h * rng.uniform(0.02, 0.1) * np.sin(
                2 * np.pi * xx / (w * rng.uniform(0.6, 1.5))
            )
            water = np.abs(yy - path) < h * rng.uniform(0.025, 0.06)
        cats = np.where(water & (cats == _GROUND), _WATER, cats)

    img = np.zeros((h, w, 3), np.float32)
    t = (yy / max(h - 1, 1))[..., None]
    sky = (1 - t) * np.array([80, 130, 210]) + t * np.array([170, 200, 235])
    sky += 18 * np.clip(_smooth_noise(rng, h, w, 6), 0, None)[..., None]  # clouds
    ground_base = np.array([[125, 100, 60], [100, 115, 60]][rng.integers(2)], np.float32)
    ground = ground_base + rng.uniform(-15, 15, 3) + 22 * _smooth_noise(rng, h, w, 10)[..., None]
    ground += 14 * rng.standard_normal((h, w, 1))  # grain
    ripples = np.sin(2 * np.pi * yy / rng.uniform(4, 9) + 0.6 * np.sin(xx / 11.0))
    water_img = np.array([40, 95, 150], np.float32) + 16 * ripples[..., None]
    for cat, tex in ((_SKY, sky), (_GROUND, ground), (_WATER, water_img)):
        img[cats == cat] = tex[cats == cat]
    img += 4 * rng.standard_normal((h, w, 3))
    return cats.astype(np.int64), img


def _polygon_mask(h: int, w: int, pts: np.ndarray) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _shape_mask(rng, h: int, w: int, cat: int, center, size: float) -> np.ndarray:
    cx, cy = center
    if cat == _DISC:
        mask = np.zeros((h, w), np.uint8)
        c = (int(round(cx * 16)), int(round(cy * 16)))
        cv2.circle(mask, c, int(round(size / 2 * 16)), 1, -1, lineType=cv2.LINE_8, shift=4)
        return mask.astype(bool)
    n = 4 if cat == _SQUARE else 3
    radius = size / 2 * (np.sqrt(2) if n == 4 else 1.25)  # similar visual size across shapes
    angles = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(n) / n
    return _polygon_mask(
        h, w, np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1)
    )


def _crowd_mask(rng, h: int, w: int, center, size: float) -> np.ndarray:
    """A cluster of small discs: one crowd segment."""
    mask = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(5, 11))):
        dx, dy = rng.uniform(-size / 2, size / 2, 2)
        disc_size = rng.uniform(8, 14) * min(h, w) / 256.0
        mask |= _shape_mask(rng, h, w, _DISC, (center[0] + dx, center[1] + dy), disc_size)
    return mask


def _thing_color(rng, cat: int) -> np.ndarray:
    hue = _THING_HUES[cat] + rng.uniform(-20, 20)
    if rng.random() < 0.1:  # an odd color: the shape, not the color, tells the class
        hue = rng.uniform(0, 360)
    rgb = colorsys.hsv_to_rgb((hue % 360) / 360, rng.uniform(0.6, 0.95), rng.uniform(0.65, 1.0))
    return 255 * np.array(rgb, np.float32)


def render_sample(
    rng: np.random.Generator, height: int, width: int, allow_crowd: bool = False
) -> Tuple[np.ndarray, np.ndarray, List[Dict[str, Any]]]:
    """
    Render one image.

    Returns:
        image (np.ndarray): (H, W, 3) uint8 RGB.
        pan_ids (np.ndarray): (H, W) int64 segment ids (category * 1000 + k; 0 = void).
        segments_info (list[dict]): COCO panoptic segments (id, category_id, iscrowd, area, bbox).
    """
    h, w = height, width
    scale = min(h, w) / 256.0
    ids, img = _stuff(rng, h, w)
    ids = ids * 1000
    if rng.random() < 0.5:  # void clutter
        c, r = rng.uniform([0, 0], [w, h]), min(h, w) * rng.uniform(0.05, 0.12)
        ang = np.sort(rng.uniform(0, 2 * np.pi, 5))
        pts = c + r * rng.uniform(0.6, 1.4, (5, 1)) * np.stack([np.cos(ang), np.sin(ang)], 1)
        void = _polygon_mask(h, w, pts)
        blocks = cv2.resize(
            rng.uniform(60, 200, (h // 4 + 1, w // 4 + 1)).astype(np.float32),
            (w, h),
            interpolation=cv2.INTER_NEAREST,
        )
        img[void] = blocks[void][:, None] + 10 * rng.standard_normal((int(void.sum()), 3))
        ids[void] = 0

    min_area = 120 * scale**2
    placed: List[_Placed] = []
    num = 0 if rng.random() < 0.05 else int(rng.integers(1, 7))
    jobs = [(int(rng.choice([_DISC, _SQUARE, _TRIANGLE])), False) for _ in range(num)]
    if allow_crowd and rng.random() < 0.05:
        jobs.insert(int(rng.integers(len(jobs) + 1)), (_DISC, True))
    for k, (cat, crowd) in enumerate(jobs, start=1):
        for _ in range(20):  # placement attempts
            size = float(np.exp(rng.uniform(np.log(20), np.log(90)))) * scale
            center = (rng.uniform(0, w), rng.uniform(0, h))
            if placed and rng.random() < 0.3:  # touch or slightly overlap a placed thing
                other = placed[int(rng.integers(len(placed)))]
                theta = rng.uniform(0, 2 * np.pi)
                d = (size + other.size) / 2 * rng.uniform(0.85, 1.0)
                center = (other.center[0] + d * np.cos(theta), other.center[1] + d * np.sin(theta))
            if crowd:
                mask = _crowd_mask(rng, h, w, center, size)
            else:
                mask = _shape_mask(rng, h, w, cat, center, size)
            # every placed thing keeps at least half of its area visible
            if mask.sum() >= min_area and all(
                ((ids == p.pid) & ~mask).sum() >= max(0.5 * p.area, min_area) for p in placed
            ):
                break
        else:
            continue
        pid = cat * 1000 + k
        shade = 1 + 0.08 * _smooth_noise(rng, h, w, 3)[..., None]
        noise = 5 * rng.standard_normal((int(mask.sum()), 3))
        img[mask] = _thing_color(rng, cat) * shade[mask] + noise
        ids[mask] = pid
        placed.append(_Placed(size, center, int(mask.sum()), pid, crowd))

    crowd_ids = {p.pid for p in placed if p.crowd}
    segments = []
    for pid in np.unique(ids):
        if pid == 0:
            continue
        ys, xs = np.nonzero(ids == pid)
        segments.append(
            {
                "id": int(pid),
                "category_id": int(pid // 1000),
                "iscrowd": int(pid in crowd_ids),
                "area": int(len(xs)),
                "bbox": [
                    int(xs.min()),
                    int(ys.min()),
                    int(xs.max() - xs.min() + 1),
                    int(ys.max() - ys.min() + 1),
                ],
            }
        )
    return np.clip(img, 0, 255).astype(np.uint8), ids, segments


def _instance_annotations(pan_ids, segments, image_id: int, next_id: int) -> List[Dict[str, Any]]:
    """COCO instance annotations (RLE) of the thing segments of one image."""
    annos = []
    for seg in segments:
        if seg["category_id"] not in _THING_HUES:
            continue
        rle = mask_util.encode(np.asfortranarray(pan_ids == seg["id"]).astype(np.uint8))
        rle["counts"] = rle["counts"].decode("ascii")
        annos.append(
            {
                "id": next_id + len(annos),
                "image_id": image_id,
                "category_id": seg["category_id"],
                "segmentation": rle,
                "area": seg["area"],
                "bbox": seg["bbox"],
                "iscrowd": seg["iscrowd"],
            }
        )
    return annos


def _generate_split(root: str, split: str, num: int, height: int, width: int, seed: int) -> None:
    paths = synthetic_split_paths(root, split)
    for key in ("image_root", "panoptic_root"):
        os.makedirs(paths[key], exist_ok=True)
    images, pan_annos, inst_annos = [], [], []
    split_key = _SPLITS.index(split)
    for i in tqdm(range(num), desc=f"Generating panoptic_synthetic {split}", unit="img"):
        rng = np.random.default_rng([seed, split_key, i])
        image, pan_ids, segments = render_sample(rng, height, width, allow_crowd=split == "train")
        image_id, name = i + 1, f"{i + 1:06d}"
        Image.fromarray(image).save(os.path.join(paths["image_root"], name + ".jpg"), quality=95)
        Image.fromarray(id_to_rgb(pan_ids)).save(
            os.path.join(paths["panoptic_root"], name + ".png")
        )
        images.append(
            {"id": image_id, "file_name": name + ".jpg", "height": height, "width": width}
        )
        pan_annos.append(
            {"image_id": image_id, "file_name": name + ".png", "segments_info": segments}
        )
        inst_annos += _instance_annotations(pan_ids, segments, image_id, len(inst_annos) + 1)
    things = [c for c in SYNTHETIC_CATEGORIES if c["isthing"]]
    for key, annos, cats in (
        ("panoptic_json", pan_annos, SYNTHETIC_CATEGORIES),
        ("instances_json", inst_annos, things),
    ):
        os.makedirs(os.path.dirname(paths[key]), exist_ok=True)
        with open(paths[key], "w") as f:
            json.dump({"images": images, "annotations": annos, "categories": cats}, f)


def generate_synthetic_panoptic(
    root: str,
    *,
    num_train: int = SYNTHETIC_DEFAULTS["num_train"],
    num_val: int = SYNTHETIC_DEFAULTS["num_val"],
    height: int = SYNTHETIC_DEFAULTS["height"],
    width: int = SYNTHETIC_DEFAULTS["width"],
    seed: int = SYNTHETIC_DEFAULTS["seed"],
) -> Dict[str, Dict[str, str]]:
    """
    Write the synthetic dataset (both splits) under ``root`` (see the module docstring).

    Args:
        root (str): output folder (created; existing files are overwritten).
        num_train, num_val (int): number of images per split.
        height, width (int): image size; thing sizes scale with ``min(height, width) / 256``.
        seed (int): the dataset is a function of the seed and the other arguments.

    Returns:
        dict: ``{"train": paths, "val": paths}``, see :func:`synthetic_split_paths`.
    """
    params = {"num_train": num_train, "num_val": num_val, "height": height, "width": width}
    params.update(seed=seed, version=GENERATOR_VERSION)
    start = time.perf_counter()
    for split, num in zip(_SPLITS, (num_train, num_val)):
        _generate_split(root, split, num, height, width, seed)
    with open(os.path.join(root, "generator.json"), "w") as f:
        json.dump(params, f, indent=1)
    logger.info(
        f"Generated the synthetic panoptic dataset in {root} in {time.perf_counter() - start:.1f}s"
    )
    return {split: synthetic_split_paths(root, split) for split in _SPLITS}
