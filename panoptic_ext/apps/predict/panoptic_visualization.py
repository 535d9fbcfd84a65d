"""Panoptic predictions on image files: visualization, raw segment-id PNG and segments JSON."""

import glob
import json
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from panoptic_ext.apps.predict.image_input import read_image_bgr
from panoptic_ext.apps.predict.predictor import LazyPanopticPredictor, PanopticPredictor
from panoptic_ext.data.class_layout import PanopticClassLayout
from panoptic_ext.data.panoptic_ids import id_to_rgb, rgb_to_id

__all__ = [
    "IMAGE_EXTENSIONS",
    "class_layout_for_cfg",
    "collect_images",
    "describe_failure",
    "draw_panoptic",
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


def _model_classes(cfg: Any) -> Tuple[Optional[str], str, int, int]:
    """(test dataset name or None, sem_seg_things, thing classes, semantic classes) of the model
    of a yacs config (``CfgNode``) or a Python config (LazyConfig ``DictConfig``)."""
    if isinstance(cfg, CfgNode):
        test = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else None
        return (
            test,
            cfg.MODEL.PANOPTIC_EXT.SEM_SEG_THINGS,
            cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        )
    from omegaconf import OmegaConf

    names = OmegaConf.select(cfg, "dataloader.test.dataset.names", default=None)
    names = [names] if isinstance(names, str) else list(names or [])
    return (
        names[0] if names else None,
        OmegaConf.select(cfg, "model.postprocessor.sem_seg_things", default="merged"),
        int(cfg.model.roi_heads.num_classes),
        int(cfg.model.sem_seg_head.num_classes),
    )


def class_layout_for_cfg(cfg: Any) -> PanopticClassLayout:
    """
    The class layout of the model of ``cfg`` (a yacs ``CfgNode`` or a Python config): from the
    metadata of its test dataset (``DATASETS.TEST[0]`` / ``dataloader.test.dataset.names``) when
    it is a registered panoptic dataset, otherwise generic names ("thing0", "stuff0", ...) sized
    by the model's thing and semantic class counts, in detectron2's PanopticFPN output
    convention (instance class; merged stuff label), which the post-processor then uses.
    """
    _, sem_seg_things, num_things, num_sem_seg = _model_classes(cfg)
    metadata = _panoptic_metadata(cfg)
    if metadata is not None:
        return PanopticClassLayout.from_metadata(metadata, sem_seg_things)
    num_stuff = num_sem_seg - (1 if sem_seg_things == "merged" else num_things)
    return PanopticClassLayout(
        thing_record_ids=tuple(range(num_things)),
        stuff_record_ids=tuple(-(1 + j) for j in range(num_stuff)),  # not in any record
        thing_dataset_ids=tuple(range(num_things)),
        stuff_dataset_ids=tuple(range(num_things, num_things + num_stuff)),
        thing_names=tuple(f"thing{k}" for k in range(num_things)),
        stuff_names=tuple(f"stuff{j}" for j in range(num_stuff)),
        sem_seg_things=sem_seg_things,
    )


def _panoptic_metadata(cfg: Any) -> Optional[Metadata]:
    test = _model_classes(cfg)[0]
    if test is not None and test in MetadataCatalog.list():
        metadata = MetadataCatalog.get(test)
        if hasattr(metadata, "thing_dataset_id_to_contiguous_id"):
            return metadata
    return None


def visualization_metadata(cfg: Any) -> Metadata:
    """
    Metadata for detectron2's ``Visualizer`` on the outputs of the model of ``cfg`` (a yacs
    ``CfgNode`` or a Python config): the metadata of its test dataset itself (the outputs speak
    its label space), or for a model without a registered test dataset, generic class names
    indexed as its outputs.
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


def draw_panoptic(
    image_rgb: np.ndarray,
    panoptic_seg: torch.Tensor,
    segments_info: List[Dict[str, Any]],
    metadata: Metadata,
) -> np.ndarray:
    """The (H, W, 3) uint8 RGB picture of a panoptic prediction, drawn by detectron2's
    ``Visualizer.draw_panoptic_seg`` with ``metadata``'s class names and colors."""
    visualizer = Visualizer(image_rgb, metadata)
    return visualizer.draw_panoptic_seg(panoptic_seg.to("cpu"), segments_info).get_image()


def describe_failure(path: str, image: np.ndarray, error: Exception) -> str:
    """What went wrong predicting on the image ``path``, naming it and its size."""
    h, w = image.shape[:2]
    message = f"{path} ({h}x{w} pixels) could not be predicted: {type(error).__name__}: {error}"
    if "must be > 0" in str(error):
        message += (
            f" (an image this thin, aspect ratio 1:{max(h, w) / max(min(h, w), 1):.0f}, has a "
            "side below one pixel once resized to the model's input size)"
        )
    return message


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

    vis = draw_panoptic(image_rgb, panoptic_seg, segments_info, metadata)
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
    cfg: Any,
    inputs: Sequence[str],
    output_dir: Optional[str],
    predictor: Optional[Any] = None,
    failed: Optional[List[Tuple[str, str]]] = None,
    show: Optional[Callable[[str, np.ndarray], bool]] = None,
) -> List[Dict[str, str]]:
    """
    Run a predictor on images and save each prediction with :func:`save_panoptic_prediction` as
    ``output_dir/<image name>_*`` (or show it).

    Args:
        cfg (CfgNode or DictConfig): the model's config (yacs, or a Python config).
        inputs (list[str]): image files, directories or glob patterns.
        output_dir (str): where the outputs go; None: nothing is written, ``show`` gets each
            picture.
        predictor (callable): BGR image -> model outputs; defaults to ``PanopticPredictor(cfg)``
            (detectron2's ``DefaultPredictor`` with strict weight loading) or
            ``LazyPanopticPredictor(cfg)`` for a Python config.
        failed (list): if given, gets (path, error) of each image that could not be read or
            predicted (e.g. too thin to be resized). Such images are logged and skipped, so one
            bad image does not stop a batch.
        show (callable): ``show(path, picture_bgr)`` after each image; returning False stops.

    Returns:
        list[dict]: per image predicted, the written paths (none without ``output_dir``) and
        "input".

    Raises:
        OSError: if no image at all could be read and predicted.
    """
    paths = collect_images(inputs, output_dir)
    failed = [] if failed is None else failed
    if predictor is None:
        predictor = (
            PanopticPredictor(cfg) if isinstance(cfg, CfgNode) else LazyPanopticPredictor(cfg)
        )
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
        try:
            outputs = predictor(image)
        except Exception as e:  # this image only (e.g. 1x1000 pixels): the batch goes on
            message = describe_failure(path, image, e)
            logger.error("skipping %s", message)
            failed.append((path, message))
            continue
        if "panoptic_seg" not in outputs:
            raise ValueError(
                f"{type(predictor).__name__} returned no 'panoptic_seg' output for {path} "
                f"(outputs: {sorted(outputs)}); the demo needs a panoptic model"
            )
        panoptic_seg, segments_info = outputs["panoptic_seg"]
        if output_dir is None:
            written = {"input": path}
        else:
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
        if show is not None:
            picture = draw_panoptic(image[:, :, ::-1], panoptic_seg, segments_info, metadata)
            if show(path, np.ascontiguousarray(picture[:, :, ::-1])) is False:
                break
    if failed:
        listed = "\n  ".join(f"{p}: {e}" for p, e in failed[:20])
        if not results:
            raise OSError(f"none of the {len(failed)} images could be predicted:\n  {listed}")
        logger.error(
            "%d of %d images could not be read or predicted:\n  %s", len(failed), len(paths), listed
        )
    return results
