"""Panoptic predictions on image files: visualization, raw segment-id PNG and segments JSON."""

import glob
import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from panoptic_ext.data.class_layout import PanopticClassLayout
from panoptic_ext.data.panoptic_ids import id_to_rgb, rgb_to_id
from panoptic_ext.apps.predict.image_input import read_image_bgr
from panoptic_ext.apps.predict.predictor import PanopticPredictor

__all__ = [
    "IMAGE_EXTENSIONS",
    "class_layout_for_cfg",
    "collect_images",
    "id_to_rgb",
    "save_panoptic_prediction",
    "visualization_metadata",
    "predict_images",
    "record_to_panoptic",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


OUTPUT_SUFFIXES = ("_panoptic.png", "_panoptic_ids.png")  # written by save_panoptic_prediction


def _is_image(path: str) -> bool:
    return os.path.isfile(path) and path.lower().endswith(IMAGE_EXTENSIONS)


def collect_images(inputs: Sequence[str], output_dir: Optional[str] = None) -> List[str]:
    """
    Expand image files, directories and glob patterns (their image files by extension, sorted)
    into a list of image paths, in the given order.

    Args:
        inputs (list[str]): files, directories or glob patterns.
        output_dir (str): where predictions are written; the ``*_panoptic.png`` /
            ``*_panoptic_ids.png`` files there that a directory or pattern finds are earlier
            outputs, not inputs, and are left out (a file named explicitly is kept).

    Raises:
        FileNotFoundError: if an input matches no image, or no image at all is found.
    """
    out = os.path.realpath(output_dir) if output_dir else None

    def earlier_output(path: str) -> bool:
        return (
            out is not None
            and path.endswith(OUTPUT_SUFFIXES)
            and os.path.realpath(os.path.dirname(path)) == out
        )

    paths: List[str] = []
    for item in inputs:
        if os.path.isfile(item):
            paths.append(item)
            continue
        if os.path.isdir(item):
            found = [os.path.join(item, name) for name in os.listdir(item)]
        else:
            found = glob.glob(os.path.expanduser(item))
        images = sorted(p for p in found if _is_image(p))
        kept = [p for p in images if not earlier_output(p)]
        if len(kept) < len(images):
            logger.info(
                "--input %r: left out %d earlier outputs of this demo in %s",
                item,
                len(images) - len(kept),
                output_dir,
            )
        if not kept:
            what = "no such image file or directory" if not found else "matches no image file"
            raise FileNotFoundError(
                f"--input {item!r}: {what} (image extensions: {', '.join(IMAGE_EXTENSIONS)})"
            )
        paths.extend(kept)
    return paths


def class_layout_for_cfg(cfg: CfgNode) -> PanopticClassLayout:
    """
    The class layout of the model of ``cfg``: from the metadata of ``DATASETS.TEST[0]`` when it
    is a registered panoptic dataset, otherwise generic names ("thing0", "stuff0", ...) sized by
    ``ROI_HEADS.NUM_CLASSES`` and ``SEM_SEG_HEAD.NUM_CLASSES``, in detectron2's PanopticFPN output
    convention (instance class; merged stuff label), which the post-processor then uses.
    """
    sem_seg_things = cfg.MODEL.PANOPTIC_EXT.SEM_SEG_THINGS
    metadata = _panoptic_metadata(cfg)
    if metadata is not None:
        return PanopticClassLayout.from_metadata(metadata, sem_seg_things)
    num_things = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    num_stuff = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES - (
        1 if sem_seg_things == "merged" else num_things
    )
    return PanopticClassLayout(
        thing_record_ids=tuple(range(num_things)),
        stuff_record_ids=tuple(-(1 + j) for j in range(num_stuff)),  # not in any record
        thing_dataset_ids=tuple(range(num_things)),
        stuff_dataset_ids=tuple(range(num_things, num_things + num_stuff)),
        thing_names=tuple(f"thing{k}" for k in range(num_things)),
        stuff_names=tuple(f"stuff{j}" for j in range(num_stuff)),
        sem_seg_things=sem_seg_things,
    )


def _panoptic_metadata(cfg: CfgNode) -> Optional[Metadata]:
    if len(cfg.DATASETS.TEST) and cfg.DATASETS.TEST[0] in MetadataCatalog.list():
        metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        if hasattr(metadata, "thing_dataset_id_to_contiguous_id"):
            return metadata
    return None


def visualization_metadata(cfg: CfgNode) -> Metadata:
    """
    Metadata for detectron2's ``Visualizer`` on the outputs of the model of ``cfg``: the
    metadata of ``DATASETS.TEST[0]`` itself (the outputs speak its label space), or for a model
    without a registered test dataset, generic class names indexed as its outputs.
    """
    metadata = _panoptic_metadata(cfg)
    if metadata is not None:
        return metadata
    layout = class_layout_for_cfg(cfg)
    ret = Metadata(name="panoptic_ext_generic_classes")
    ret.thing_classes = list(layout.thing_names)
    ret.stuff_classes = ["things"] + list(layout.stuff_names)  # indexed by merged label
    return ret


def record_to_panoptic(
    record: Dict[str, Any], layout: PanopticClassLayout
) -> Tuple[torch.Tensor, List[Dict[str, Any]]]:
    """
    The ground truth of a standard panoptic record (``pan_seg_file_name`` + ``segments_info``)
    as a model output, e.g. to draw it with ``Visualizer.draw_panoptic_seg`` and the dataset's
    metadata: segments keep their record ids, with ``isthing``; crowd segments are left out
    (drawn as void).

    Returns:
        (Tensor, list[dict]): (H, W) int32 segment ids and their segments_info.
    """
    ids = rgb_to_id(np.asarray(Image.open(record["pan_seg_file_name"]).convert("RGB")))
    segments_info, keep = [], np.zeros(ids.shape, dtype=bool)
    for seg in record["segments_info"]:
        if seg.get("iscrowd", 0):
            continue
        isthing = layout.is_thing(seg["category_id"])
        category_id = seg["category_id"]
        segments_info.append({"id": seg["id"], "isthing": isthing, "category_id": category_id})
        keep |= ids == seg["id"]
    ids = np.where(keep, ids, 0)
    return torch.as_tensor(ids.astype(np.int32)), segments_info


def save_panoptic_prediction(
    image_rgb: np.ndarray,
    panoptic_seg: torch.Tensor,
    segments_info: List[Dict[str, Any]],
    output_prefix: str,
    layout: PanopticClassLayout,
    metadata: Metadata,
) -> Dict[str, str]:
    """
    Write ``<prefix>_panoptic.png`` (visualization), ``<prefix>_panoptic_ids.png`` (segment ids
    RGB-encoded as in COCO panoptic, 0 = void) and ``<prefix>_segments.json`` (one entry per
    segment: ``id``, ``isthing``, ``category_id`` (the metadata's contiguous id), the dataset's
    ``dataset_category_id``, ``category_name``, ``area`` and, for things, ``score``).

    Returns:
        dict[str, str]: "visualization", "ids", "segments" -> written paths.
    """
    panoptic_seg = panoptic_seg.to("cpu")
    ids = panoptic_seg.numpy().astype(np.int64)
    segments = []
    for info in segments_info:
        isthing = bool(info["isthing"])
        category_id = int(info["category_id"])
        entry = {
            "id": int(info["id"]),
            "isthing": isthing,
            "category_id": category_id,
            "dataset_category_id": int(layout.dataset_id(isthing, category_id)),
            "category_name": layout.category_name(isthing, category_id),
            "area": int((ids == info["id"]).sum()),
        }
        if "score" in info:
            entry["score"] = float(info["score"])
        segments.append(entry)

    visualizer = Visualizer(image_rgb, metadata)
    vis = visualizer.draw_panoptic_seg(panoptic_seg, segments_info).get_image()
    paths = {
        "visualization": output_prefix + "_panoptic.png",
        "ids": output_prefix + "_panoptic_ids.png",
        "segments": output_prefix + "_segments.json",
    }
    os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
    Image.fromarray(vis).save(paths["visualization"])
    Image.fromarray(id_to_rgb(ids)).save(paths["ids"])
    with open(paths["segments"], "w") as f:
        json.dump(
            {"height": ids.shape[0], "width": ids.shape[1], "segments_info": segments}, f, indent=1
        )
    return paths


def predict_images(
    cfg: CfgNode,
    inputs: Sequence[str],
    output_dir: str,
    predictor: Optional[Any] = None,
    failed: Optional[List[Tuple[str, str]]] = None,
) -> List[Dict[str, str]]:
    """
    Run a ``PanopticPredictor`` (weights from ``cfg.MODEL.WEIGHTS``) on images and save each
    prediction with :func:`save_panoptic_prediction` as ``output_dir/<image name>_*``.

    Args:
        cfg (CfgNode): the model's config.
        inputs (list[str]): image files, directories or glob patterns.
        output_dir (str): where the outputs go.
        predictor (callable): BGR image -> model outputs; defaults to ``PanopticPredictor(cfg)``
            (detectron2's ``DefaultPredictor`` with strict weight loading).
        failed (list): if given, gets (path, error) of each image that could not be read.
            Unreadable images are logged and skipped, so one corrupt file does not stop a batch.

    Returns:
        list[dict]: per image read, the written paths and "input".

    Raises:
        OSError: if no image at all could be read.
    """
    paths = collect_images(inputs, output_dir)
    failed = [] if failed is None else failed
    predictor = predictor or PanopticPredictor(cfg)
    layout = class_layout_for_cfg(cfg)
    metadata = visualization_metadata(cfg)
    results, used = [], set()
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        name, n = stem, 1
        while name in used:  # same file name in two input directories
            name, n = f"{stem}_{n}", n + 1
        used.add(name)
        try:
            image = read_image_bgr(path)  # also grayscale, RGBA, palette, 16-bit files
        except (OSError, ValueError) as e:
            logger.error("skipping %s: %s", path, e)
            failed.append((path, str(e)))
            continue
        outputs = predictor(image)
        if "panoptic_seg" not in outputs:
            raise ValueError(
                f"the model {cfg.MODEL.META_ARCHITECTURE} returned no 'panoptic_seg' output"
            )
        panoptic_seg, segments_info = outputs["panoptic_seg"]
        written = save_panoptic_prediction(
            image[:, :, ::-1],
            panoptic_seg,
            segments_info,
            os.path.join(output_dir, name),
            layout,
            metadata,
        )
        written["input"] = path
        logger.info("%s: %d segments -> %s", path, len(segments_info), written["visualization"])
        results.append(written)
    if failed:
        listed = "\n  ".join(f"{p}: {e}" for p, e in failed[:20])
        if not results:
            raise OSError(f"none of the {len(failed)} images could be read:\n  {listed}")
        logger.error("%d of %d images could not be read:\n  %s", len(failed), len(paths), listed)
    return results
