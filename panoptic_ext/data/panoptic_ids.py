"""
The one codec of COCO panoptic segment ids and their RGB colors: ``id = R + 256 G + 256^2 B``
(0 = void), as panopticapi's ``rgb2id`` / ``id2rgb``.
"""

import sys

import cv2
import numpy as np

__all__ = ["MAX_SEGMENT_ID", "id_to_rgb", "ids_from_planes", "rgb_to_id"]

# Ids are stored in 24 bits.
MAX_SEGMENT_ID = 256**3 - 1


def ids_from_planes(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Three (H, W) color planes -> (H, W) int32 ids ``R + 256 G + 256^2 B``."""
    if sys.byteorder == "little" and r.dtype == g.dtype == b.dtype == np.uint8:
        # Interleaving RGB0 bytes with OpenCV and reading them as int32 is ~2x faster than
        # shifting and or-ing three int32 planes.
        rgb0 = cv2.merge([r, g, b, np.zeros_like(r)])
        return rgb0.view(np.int32).reshape(r.shape)
    return r.astype(np.int32) | (g.astype(np.int32) << 8) | (b.astype(np.int32) << 16)


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) COCO panoptic colors (uint8; extra channels ignored) -> (H, W) int32 ids."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    planes = [np.ascontiguousarray(rgb[..., c]) for c in range(3)]
    return ids_from_planes(*planes)


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) integer segment ids in [0, 2**24) -> (H, W, 3) uint8 COCO panoptic colors."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() > MAX_SEGMENT_ID):
        raise ValueError("panoptic segment ids must be in [0, 2**24) to be stored as RGB")
    ids = ids.astype(np.uint32, copy=False)
    return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)
