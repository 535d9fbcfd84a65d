"""EXIF orientation of training images, handled as detectron2 handles it.

detectron2's ``read_image`` (used by the dataset mapper) and ``PanopticPredictor``'s reader apply
an image's EXIF orientation: a photo stored sideways with orientation 6 is read upright, with
width and height swapped. Its panoptic PNG must therefore be aligned with the image as displayed.
Dataset validation compares sizes the same way, and names the tag when the PNG matches the stored
pixels instead.
"""

from typing import Tuple

from detectron2.utils.file_io import PathManager
from PIL import Image

__all__ = ["image_size_as_read", "exif_note"]

_EXIF_ORIENTATION = 0x0112
_ORIENTATION_NAMES = {
    2: "mirrored",
    3: "rotated 180 degrees",
    4: "flipped upside down",
    5: "transposed",
    6: "rotated 90 degrees",
    7: "transversed",
    8: "rotated 270 degrees",
}


def image_size_as_read(image_file: str) -> Tuple[int, int, int]:
    """
    (width, height, EXIF orientation) of an image as training and inference read it: detectron2's
    ``read_image`` (and ``PanopticPredictor``'s reader) apply the EXIF orientation, so an image
    with orientation 5-8 is read with width and height swapped. Reads the header only.
    """
    with PathManager.open(image_file, "rb") as f:
        img = Image.open(f)
        width, height = img.size
        try:
            orientation = int(img.getexif().get(_EXIF_ORIENTATION, 1))
        except (TypeError, ValueError):  # a malformed tag: PIL's reader ignores it too
            orientation = 1
    if orientation not in _ORIENTATION_NAMES:
        orientation = 1
    if orientation >= 5:
        width, height = height, width
    return width, height, orientation


def exif_note(image_file: str, orientation: int) -> str:
    """What an EXIF orientation does to an image and to its annotation."""
    return (
        f"{image_file} has EXIF orientation {orientation} (displayed "
        f"{_ORIENTATION_NAMES[orientation]}); training reads it as displayed, as detectron2 does, "
        "so its panoptic PNG must be drawn on the displayed image (or save the image without the "
        "tag, e.g. with PIL's ImageOps.exif_transpose)"
    )
