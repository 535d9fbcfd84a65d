"""Any image a user may feed the predictor -> the (H, W, 3) uint8 BGR array it expects.

detectron2's ``DefaultPredictor`` takes an (H, W, 3) BGR array and fails deep inside on a
grayscale (H, W) one; detectron2's ``read_image(path, "BGR")`` converts every file with PIL's
``convert("RGB")``, which saturates 16-bit images (every value above 255 becomes 255).
"""

import logging

import numpy as np
from PIL import Image, ImageOps

__all__ = ["as_bgr_uint8", "read_image_bgr"]

logger = logging.getLogger(__name__)

# PIL modes of one-channel images with more than 8 bits (16-bit PNG/TIFF load as "I" or "I;16*").
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def _to_uint8(image: np.ndarray, wide: bool = False) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    if np.issubdtype(image.dtype, np.floating):
        finite = np.nan_to_num(image.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0  # [0, 1] or [0, 255]
        return np.clip(np.rint(finite * scale), 0, 255).astype(np.uint8)
    if image.dtype == np.uint16 or wide:
        return np.clip(np.rint(image.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    if np.issubdtype(image.dtype, np.integer):
        return np.clip(image, 0, 255).astype(np.uint8)
    raise ValueError(f"unsupported image dtype {image.dtype}")


def as_bgr_uint8(image: np.ndarray, input_format: str = "BGR", wide: bool = False) -> np.ndarray:
    """
    Convert an image array to a contiguous (H, W, 3) uint8 array in BGR order.

    Args:
        image (np.ndarray): (H, W) grayscale, (H, W, 1), (H, W, 2) grayscale + alpha, (H, W, 3)
            or (H, W, 4) with alpha (dropped); uint8, uint16 (scaled by 1/257), bool, other
            integers (clipped to [0, 255]) or float ([0, 1] if its maximum is at most 1, else
            [0, 255]; NaN -> 0).
        input_format (str): channel order of 3/4-channel input, "BGR" or "RGB".
        wide (bool): integer values span 16 bits even if the dtype is wider (PIL's mode "I").

    Raises:
        ValueError: for other shapes or an empty image.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4) or 0 in image.shape[:2]:
        raise ValueError(
            f"expected an image of shape (H, W) or (H, W, C) with C in 1..4, got {image.shape}"
        )
    if image.shape[2] in (1, 2):  # gray (+ alpha)
        image = np.repeat(image[:, :, :1], 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
        if input_format == "RGB":
            image = image[:, :, ::-1]
    elif input_format == "RGB":
        image = image[:, :, ::-1]
    if input_format not in ("BGR", "RGB"):
        raise ValueError(f"input_format must be 'BGR' or 'RGB', got {input_format!r}")
    return np.ascontiguousarray(_to_uint8(image, wide))


def read_image_bgr(path: str) -> np.ndarray:
    """
    Read an image file as (H, W, 3) uint8 BGR, applying its EXIF orientation: any PIL mode
    (grayscale, palette, RGBA, CMYK, 16-bit grayscale scaled to 8 bits, 32-bit float).

    Raises:
        OSError: if the file is missing, truncated or not an image (naming the file).
    """
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in _WIDE_MODES:
                return as_bgr_uint8(np.asarray(img), wide=True)
            if img.mode == "F":
                return as_bgr_uint8(np.asarray(img))
            return as_bgr_uint8(np.asarray(img.convert("RGB")), input_format="RGB")
    except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for corrupt/truncated files
        raise OSError(f"cannot read image {path}: {e}") from e
