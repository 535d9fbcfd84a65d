"""COCO panoptic files in, PQ out: reading and checking the JSON and PNG files, and
``pq_compute``, panopticapi's entry point without panopticapi.

    from panoptic_ext.evaluation import pq_compute   # was: from panopticapi.evaluation import ...
    results = pq_compute("panoptic_val2017.json", "predictions.json",
                         gt_folder="panoptic_val2017", pred_folder="predictions")

The command line is :mod:`panoptic_ext.evaluation.pq_cli`.
"""

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from torchvision.io import decode_png

from ..data.panoptic_ids import ids_from_planes
from .hotcoco_engine import hotcoco_available, pq_stat_with_hotcoco
from .json_checks import categories_by_id, load_panoptic_json_file, pair_annotations
from .png_reader import decode_panoptic_png, fast_kernels, filter_error, inflate_png
from .segment_matching import (
    PanopticFormatError,
    PQStat,
    as_int32_ids,
    pq_image,
    pq_image_from_pairs,
)

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


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, IsADirectoryError):
        raise FileNotFoundError(f"panoptic PNG {path} does not exist") from None


def _decode_general(data: bytes, path: str) -> np.ndarray:
    """Ids of any other image (or without the fast kernels): torchvision's libpng decoder,
    then OpenCV's for other formats."""
    try:
        planes = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8)).numpy()
    except RuntimeError:
        planes = None
    if (
        planes is None
        or planes.dtype != np.uint8
        or planes.ndim != 3
        or planes.shape[0] not in (3, 4)
    ):
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] < 3:
            raise ValueError(
                f"panoptic PNG {path} must be an 8-bit RGB image, got "
                + ("an unreadable file" if image is None else f"{image.dtype} {image.shape}")
            )
        planes = image[..., 2::-1].transpose(2, 0, 1)  # BGR(A) -> RGB planes
    return ids_from_planes(planes[0], planes[1], planes[2])


def read_panoptic_png(path: str) -> np.ndarray:
    """
    Read a COCO panoptic PNG as an (H, W) int32 map of segment ids (R + 256 G + 256^2 B).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is truncated or corrupt, or not an 8-bit RGB(A) image.
    """
    data = _read_file(path)
    ids = decode_panoptic_png(data, path)  # 8-bit RGB(A) PNGs: libdeflate + compiled loops
    return ids if ids is not None else _decode_general(data, path)


_NO_DATA = np.zeros(0, np.uint8)
_NO_MAP = np.zeros((1, 1), np.int32)


def _source(path: str) -> Tuple[Tuple[int, int], int, np.ndarray, np.ndarray]:
    """(shape, bytes per pixel, scanlines, id map) of a PNG for ``pair_counts``: inflated
    scanlines (bpp 3 / 4) when the fast reader handles the file, else decoded ids (bpp 0)."""
    data = _read_file(path)
    inflated = inflate_png(data, path)
    if inflated is not None:
        header, bpp, scanlines = inflated
        return (header.height, header.width), bpp, scanlines, _NO_MAP
    ids = np.ascontiguousarray(_decode_general(data, path), dtype=np.int32)
    return ids.shape, 0, _NO_DATA, ids


def pq_image_of_files(
    gt_file: str,
    gt_segments: Sequence[Mapping[str, Any]],
    pred: Union[str, np.ndarray],
    pred_segments: Sequence[Mapping[str, Any]],
    category_ids: Sequence[int],
    image: str = "image",
) -> PQStat:
    """
    :func:`pq_image` of a gt PNG file and a predicted PNG file or id map. With the fast
    kernels, both PNGs are matched row by row straight from their scanlines (no id maps).

    Args:
        gt_file (str): the gt PNG.
        pred (str or ndarray): the predicted PNG, or an (H, W) integer id map.
        gt_segments, pred_segments, category_ids, image: as in :func:`pq_image`.
    """
    kernels = fast_kernels()
    p_map = None if kernels is None or isinstance(pred, str) else as_int32_ids(pred)
    if kernels is None or (p_map is None and not isinstance(pred, str)):
        pred_ids = read_panoptic_png(pred) if isinstance(pred, str) else pred
        return pq_image(
            read_panoptic_png(gt_file), gt_segments, pred_ids, pred_segments, category_ids, image
        )
    if p_map is None:
        p_shape, p_bpp, p_data, p_map = _source(pred)
    else:
        p_shape, p_bpp, p_data = p_map.shape, 0, _NO_DATA
    g_shape, g_bpp, g_data, g_map = _source(gt_file)
    if g_shape != p_shape:
        raise PanopticFormatError(f"{image}: prediction has size {p_shape}, ground truth {g_shape}")
    keys, counts, status, row = kernels.pair_counts(
        g_data, g_bpp, g_map, p_data, p_bpp, p_map, g_shape[0], g_shape[1]
    )
    if status == kernels.GT_FILTER_ERROR:
        raise filter_error(gt_file, g_data, g_shape[1], g_bpp, row)
    if status == kernels.PRED_FILTER_ERROR:
        raise filter_error(str(pred), p_data, g_shape[1], p_bpp, row)
    if status != kernels.OK:  # ids out of range: the id-map path reports them
        pred_ids = read_panoptic_png(pred) if isinstance(pred, str) else pred
        return pq_image(
            read_panoptic_png(gt_file), gt_segments, pred_ids, pred_segments, category_ids, image
        )
    return pq_image_from_pairs(keys, counts, gt_segments, pred_segments, category_ids, image)


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
        engine (str): "hotcoco" (:mod:`.hotcoco_engine`), "pure" (this package's reader and
            matcher) or "auto" (hotcoco when installed). hotcoco's errors are reported by the
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


def compile_fast_kernels() -> bool:
    """
    Compile (or load from numba's disk cache) the PNG / matching loops of the pure path by
    evaluating a tiny image pair, so that the first real evaluation does not pay the compilation
    (seconds to tens of seconds on a busy machine). ``make setup`` runs it once at install:
    ``python -m panoptic_ext.evaluation.panoptic_files``.

    Returns:
        bool: whether the fast kernels are available.
    """
    import tempfile

    from PIL import Image

    from ..data.panoptic_ids import id_to_rgb

    if fast_kernels() is None:
        return False
    ids = np.array([[0, 1, 1], [2, 2, 1]], np.int32)
    segments = [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 1}]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "ids.png")
        Image.fromarray(id_to_rgb(ids)).save(path)
        read_panoptic_png(path)
        pq_image_of_files(path, segments, path, segments, [1])
        pq_image_of_files(path, segments, ids, segments, [1])
    return True


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    start = time.perf_counter()
    available = compile_fast_kernels()
    logger.info(
        "PQ fast kernels %s in %.1f s",
        "compiled (or loaded from cache)" if available else "not available",
        time.perf_counter() - start,
    )
