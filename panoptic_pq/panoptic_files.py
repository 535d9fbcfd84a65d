"""COCO panoptic files in, PQ out: reading and checking the JSON and PNG files, and
``pq_compute``, panopticapi's entry point without panopticapi.

    from panoptic_ext.evaluation import pq_compute   # was: from panopticapi.evaluation import ...
    results = pq_compute("panoptic_val2017.json", "predictions.json",
                         gt_folder="panoptic_val2017", pred_folder="predictions")

PNGs are decoded with Pillow and matched with numpy (:mod:`.segment_matching`); hotcoco is the
default engine of ``pq_compute`` (:mod:`.hotcoco_engine`). This module and the command line
(:mod:`panoptic_pq.cli`) import neither torch nor detectron2.
"""

import io
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .hotcoco_engine import hotcoco_available, pq_stat_with_hotcoco
from .json_checks import categories_by_id, load_panoptic_json_file, pair_annotations
from .segment_matching import PanopticFormatError, PQStat, pq_image

__all__ = [
    "pq_compute",
    "pq_compute_annotations",
    "read_panoptic_png",
    "pq_image_of_files",
    "format_pq_table",
    "PQ_ENGINES",
]

logger = logging.getLogger(__name__)

PQ_ENGINES = ("auto", "hotcoco", "pure")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _rgb_png_bit_depth(data: bytes) -> Optional[int]:
    """The bit depth of an RGB / RGBA PNG (Pillow reads 16-bit ones as 8-bit), None for other
    files."""
    if data.startswith(_PNG_SIGNATURE) and data[12:16] == b"IHDR" and len(data) > 25:
        return data[24] if data[25] in (2, 6) else None  # color types RGB, RGBA
    return None


def read_panoptic_png(path: str) -> np.ndarray:
    """
    Read a COCO panoptic PNG as an (H, W) int32 map of segment ids (R + 256 G + 256^2 B).

    8-bit RGB, RGBA (alpha ignored) and palette images are accepted (as panopticapi, which reads
    them with Pillow); the image is decoded with Pillow.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is truncated or corrupt, or not an 8-bit RGB(A) image; the message
            names the file.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise FileNotFoundError(f"panoptic PNG {path} does not exist") from None
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decodes now: truncated / corrupt data raises here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        what = "is empty" if not data else "cannot be decoded: it is truncated or corrupt"
        raise ValueError(f"panoptic PNG {path} {what} ({e})") from None
    depth = _rgb_png_bit_depth(data)
    if image.mode in ("P", "PA"):
        image = image.convert("RGB")
    if image.mode not in ("RGB", "RGBA") or depth not in (None, 8):
        raise ValueError(
            f"panoptic PNG {path} must be an 8-bit RGB image, got Pillow mode {image.mode}"
            + (f" with {depth}-bit samples" if depth not in (None, 8) else "")
        )
    width, height = image.size
    # R, G, B, X (or A) bytes read as little-endian int32 = R + 256 G + 256^2 B + 256^3 X.
    raw = image.tobytes("raw", "RGBX" if image.mode == "RGB" else "RGBA")
    pixels = np.frombuffer(raw, dtype="<i4").reshape(height, width)
    return np.bitwise_and(pixels, 0xFFFFFF, dtype=np.int32)


def pq_image_of_files(
    gt_file: str,
    gt_segments: Sequence[Mapping[str, Any]],
    pred: Union[str, np.ndarray],
    pred_segments: Sequence[Mapping[str, Any]],
    category_ids: Sequence[int],
    image: str = "image",
) -> PQStat:
    """
    :func:`pq_image` of a gt PNG file and a predicted PNG file or id map.

    Args:
        gt_file (str): the gt PNG.
        pred (str or ndarray): the predicted PNG, or an (H, W) integer id map.
        gt_segments, pred_segments, category_ids, image: as in :func:`pq_image`.
    """
    pred_ids = read_panoptic_png(pred) if isinstance(pred, str) else np.asarray(pred)
    return pq_image(
        read_panoptic_png(gt_file), gt_segments, pred_ids, pred_segments, category_ids, image
    )


def _default_folder(json_file: str) -> str:
    # panopticapi: the folder of PNG files is the JSON path without ".json".
    return json_file[: -len(".json")] if json_file.endswith(".json") else json_file


def _evaluate_pair(
    gt_ann: Mapping[str, Any],
    pred_ann: Mapping[str, Any],
    gt_folder: str,
    pred_folder: str,
    category_ids: Sequence[int],
) -> PQStat:
    gt_file = os.path.join(gt_folder, gt_ann["file_name"])
    pred_file = os.path.join(pred_folder, pred_ann["file_name"])
    image = f"image {gt_ann['image_id']!r} (gt {gt_file}, prediction {pred_file})"
    if not os.path.isfile(pred_file):
        raise FileNotFoundError(f"{image}: the predicted PNG {pred_file} does not exist")
    return pq_image_of_files(
        gt_file,
        gt_ann["segments_info"],
        pred_file,
        pred_ann["segments_info"],
        category_ids,
        image=image,
    )


def pq_compute_annotations(
    gt_annotations: Sequence[Mapping[str, Any]],
    pred_annotations: Sequence[Mapping[str, Any]],
    categories: Mapping[int, Mapping[str, Any]],
    gt_folder: str,
    pred_folder: str,
    num_workers: Optional[int] = None,
    engine: str = "auto",
    _checked: bool = False,
) -> PQStat:
    """
    PQ statistics of COCO panoptic annotation lists whose PNG files are in two folders.

    Args:
        gt_annotations (list[dict]): the gt JSON's "annotations" (every image is evaluated).
        pred_annotations (list[dict]): the predicted "annotations", matched by ``image_id``.
        categories (dict): category id -> category (with ``isthing``).
        gt_folder, pred_folder (str): folders of the PNG files.
        num_workers (int): threads decoding and matching images; None = number of CPUs (pure
            path only).
        engine (str): "hotcoco" (:mod:`.hotcoco_engine`), "pure" (Pillow + this package's
            numpy matcher) or "auto" (hotcoco when installed). hotcoco's errors are reported by the
            pure path, which names the image and its files.

    Returns:
        PQStat: statistics summed over the images (in the gt order, so the result does not
        depend on ``num_workers``).
    """
    if engine not in PQ_ENGINES:
        raise ValueError(f"engine must be one of {PQ_ENGINES}, got {engine!r}")
    pairs = pair_annotations(gt_annotations, pred_annotations, check=not _checked)
    if engine == "hotcoco" or (engine == "auto" and hotcoco_available()):
        try:
            return pq_stat_with_hotcoco(pairs, categories, gt_folder, pred_folder)
        except (OSError, ValueError) as e:
            # The pure path names the image and files of the problem (or reads a PNG that
            # hotcoco cannot, e.g. 16-bit or palette), so it has the last word.
            logger.info("hotcoco failed (%s); evaluating with the pure path", e)
    category_ids = list(categories)

    def run(pair):
        return _evaluate_pair(pair[0], pair[1], gt_folder, pred_folder, category_ids)

    num_workers = num_workers or os.cpu_count() or 1
    stat = PQStat(category_ids)
    if num_workers <= 1 or len(pairs) <= 1:
        for pair in pairs:
            stat += run(pair)
    else:
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            for image_stat in pool.map(run, pairs):
                stat += image_stat
    return stat


def pq_compute(
    gt_json_file: str,
    pred_json_file: str,
    gt_folder: Optional[str] = None,
    pred_folder: Optional[str] = None,
    *,
    num_workers: Optional[int] = None,
    engine: str = "auto",
) -> Dict[str, Any]:
    """
    Drop-in replacement of ``panopticapi.evaluation.pq_compute``: same arguments, same return
    value, same numbers; logs the table instead of printing it. Both JSON files are checked
    first (errors name the file, the image and the key).

    Args:
        gt_json_file (str): COCO panoptic gt JSON (with "categories" and "annotations").
        pred_json_file (str): COCO panoptic prediction JSON ("annotations").
        gt_folder, pred_folder (str): folders of the PNG files; default to each JSON path
            without ".json", as panopticapi does.
        num_workers (int): threads of the pure path; None = number of CPUs.
        engine (str): "auto" (hotcoco when installed, else "pure"), "hotcoco" or "pure"; see
            :func:`pq_compute_annotations`.

    Returns:
        dict: {"All", "Things", "Stuff": {"pq", "sq", "rq", "n"}, "per_class": {category id:
        {"pq", "sq", "rq"}}}, scores as fractions. Unlike panopticapi, a group without any
        category (e.g. no stuff) gets zeros instead of a ZeroDivisionError.
    """
    return _pq_compute_files(
        gt_json_file, pred_json_file, gt_folder, pred_folder, num_workers, engine
    )[0]


def _pq_compute_files(
    gt_json_file: str,
    pred_json_file: str,
    gt_folder: Optional[str],
    pred_folder: Optional[str],
    num_workers: Optional[int],
    engine: str = "auto",
) -> Tuple[Dict[str, Any], Dict[int, Mapping[str, Any]]]:
    """pq_compute, also returning the categories (for tables)."""
    start = time.perf_counter()
    gt_json = load_panoptic_json_file(gt_json_file, "ground-truth")
    pred_json = load_panoptic_json_file(pred_json_file, "prediction")
    categories = categories_by_id(gt_json["categories"], f"ground-truth JSON file {gt_json_file}")
    if not any(ann["segments_info"] for ann in gt_json["annotations"]):
        raise PanopticFormatError(
            f"ground-truth JSON file {gt_json_file}: none of its {len(gt_json['annotations'])} "
            "annotations has a segment, so every PQ would be 0 whatever the prediction; is it "
            "the right ground truth (e.g. not a prediction or an empty export)?"
        )
    gt_folder = gt_folder or _default_folder(gt_json_file)
    pred_folder = pred_folder or _default_folder(pred_json_file)
    for folder, what in ((gt_folder, "ground truth"), (pred_folder, "predicted")):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"folder {folder} with {what} segmentations doesn't exist")
    stat = pq_compute_annotations(
        gt_json["annotations"],
        pred_json["annotations"],
        categories,
        gt_folder,
        pred_folder,
        num_workers=num_workers,
        engine=engine,
        _checked=True,  # by load_panoptic_json_file
    )
    results = stat.results(categories)
    logger.info(
        "Panoptic quality of %s against %s (%d images, %.2f s):\n%s",
        pred_json_file,
        gt_json_file,
        len(gt_json["annotations"]),
        time.perf_counter() - start,
        format_pq_table(results, categories),
    )
    return results, categories


def format_pq_table(
    results: Mapping[str, Any],
    categories: Optional[Mapping[int, Mapping[str, Any]]] = None,
    per_class: bool = False,
) -> str:
    """panopticapi's text table (scores in %): optionally one row per category, then
    All / Things / Stuff with the number of categories."""
    lines = []
    if per_class:
        lines.append("{:20s}| {:>5s}  {:>5s}  {:>5s}".format("Category", "PQ", "SQ", "RQ"))
        for label in sorted(results["per_class"]):
            name = str((categories or {}).get(label, {}).get("name", label))
            r = results["per_class"][label]
            lines.append(
                "{:20s}| {:5.1f}  {:5.1f}  {:5.1f}".format(
                    name[:20], 100 * r["pq"], 100 * r["sq"], 100 * r["rq"]
                )
            )
        lines.append("-" * 47)
    lines.append("{:20s}| {:>5s}  {:>5s}  {:>5s} {:>5s}".format("", "PQ", "SQ", "RQ", "N"))
    for name in ("All", "Things", "Stuff"):
        r = results[name]
        lines.append(
            "{:20s}| {:5.1f}  {:5.1f}  {:5.1f} {:5d}".format(
                name, 100 * r["pq"], 100 * r["sq"], 100 * r["rq"], r["n"]
            )
        )
    return "\n".join(lines)
