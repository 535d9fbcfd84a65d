"""Register a COCO-panoptic-format dataset (yours) for panoptic_ext, with complete metadata.

Usage::

    from panoptic_ext.data import register_panoptic_dataset
    register_panoptic_dataset(
        "my_train", image_root="data/images", panoptic_root="data/panoptic",
        panoptic_json="data/panoptic_train.json", instances_json="data/instances_train.json")
    # then: DATASETS.TRAIN ("my_train",); the mapper reads the PNGs on the fly.

The files are the COCO panoptic format (https://cocodataset.org/#format-data): a JSON with
``images`` (id, file_name, height, width), ``annotations`` (image_id, file_name of the PNG,
segments_info: id, category_id, iscrowd) and ``categories`` (id, name, isthing, optional color),
and one RGB PNG per image whose pixels hold ``id = R + 256 G + 256^2 B`` (0 = void).
"""

import json
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.colormap import colormap
from detectron2.utils.file_io import PathManager

from .validation import (
    annotation_problems,
    category_problems,
    duplicate_problems,
    preparation_hint,
    raise_problems,
    validate_panoptic_dataset,
)

__all__ = [
    "register_panoptic_dataset",
    "load_panoptic_json",
    "metadata_from_categories",
    "read_panoptic_json",
]

logger = logging.getLogger(__name__)


def read_panoptic_json(
    panoptic_json: str, image_root: Optional[str] = None, panoptic_root: Optional[str] = None
) -> Dict[str, Any]:
    """Read a panoptic JSON; FileNotFoundError/ValueError naming the missing or bad path."""
    for what, path in (("panoptic JSON", panoptic_json), ("image root", image_root)):
        if path is not None and not PathManager.exists(path):
            raise FileNotFoundError(f"{what} {path} does not exist. {preparation_hint(path)}")
    if panoptic_root is not None and not PathManager.isdir(panoptic_root):
        raise FileNotFoundError(
            f"panoptic root {panoptic_root} (the folder of the panoptic PNGs) does not exist. "
            + preparation_hint(panoptic_root)
        )
    try:
        with PathManager.open(panoptic_json) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"panoptic JSON {panoptic_json} is not valid JSON: {e}") from e
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise ValueError(
            f"panoptic JSON {panoptic_json} has no {missing}: it is not in COCO panoptic format "
            "(an instances JSON given as panoptic_json?)"
        )
    return data


def metadata_from_categories(categories: Sequence[Dict[str, Any]], source: str = "") -> Dict:
    """
    Detectron2 metadata of a panoptic dataset from its COCO ``categories``.

    Contiguous ids are disjoint over all categories (as detectron2's "coco_panoptic_standard"),
    things first in dataset-id order (``0..T-1``, the instance classes, as detectron2's
    ``COCOEvaluator`` requires), then stuff (``T..T+S-1``). ``stuff_classes``/``stuff_colors``
    list every category by contiguous id, and ``thing_classes``/``thing_colors`` are their first T
    entries, so both index by contiguous id (detectron2's ``Visualizer`` and ``COCOEvaluator``).
    """
    raise_problems(category_problems(list(categories), source or "categories"), "categories")
    things = sorted((c for c in categories if c["isthing"]), key=lambda c: c["id"])
    stuff = sorted((c for c in categories if not c["isthing"]), key=lambda c: c["id"])
    ordered = things + stuff
    palette = colormap(rgb=True, maximum=255)
    colors = [
        [int(v) for v in c.get("color") or palette[i % len(palette)]] for i, c in enumerate(ordered)
    ]
    names = [c["name"] for c in ordered]
    return {
        "thing_classes": names[: len(things)],
        "thing_colors": colors[: len(things)],
        "stuff_classes": names,
        "stuff_colors": colors,
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(things)},
        "stuff_dataset_id_to_contiguous_id": {
            c["id"]: len(things) + j for j, c in enumerate(stuff)
        },
        "categories": [dict(c) for c in ordered],
    }


def load_panoptic_json(
    panoptic_json: str,
    image_root: str,
    panoptic_root: str,
    metadata: Dict[str, Any],
    check_pngs: bool = False,
) -> List[Dict[str, Any]]:
    """
    Detectron2 "standard" panoptic records of a COCO-panoptic dataset, after validating it.

    Unlike detectron2's ``load_coco_panoptic_json``, image names come from the JSON's ``images``
    (any extension), records carry ``height``/``width``, and problems are reported by file.

    Args:
        panoptic_json, image_root, panoptic_root (str): the dataset's files.
        metadata (dict): from :func:`metadata_from_categories` (the id maps are used).
        check_pngs (bool): also open every PNG and image header (see
            :func:`validate_panoptic_dataset`); otherwise the JSON is checked and the mapper
            checks each PNG when it reads it.
    """
    if check_pngs:
        data = validate_panoptic_dataset(panoptic_json, image_root, panoptic_root)
    else:
        data = read_panoptic_json(panoptic_json, image_root, panoptic_root)
    thing_map = metadata["thing_dataset_id_to_contiguous_id"]
    stuff_map = metadata["stuff_dataset_id_to_contiguous_id"]
    images = {img.get("id"): img for img in data["images"]}
    problems = duplicate_problems(data, panoptic_json)
    for ann in data["annotations"]:
        problems += annotation_problems(ann, images, [*thing_map, *stuff_map], panoptic_json)
    raise_problems(problems, f"panoptic dataset {panoptic_json}")

    records = []
    for ann in data["annotations"]:
        image = images[ann["image_id"]]
        segments = []
        for seg in ann["segments_info"]:
            seg = dict(seg)
            isthing = seg["category_id"] in thing_map
            seg["category_id"] = (thing_map if isthing else stuff_map)[seg["category_id"]]
            seg["isthing"] = isthing
            seg.setdefault("iscrowd", 0)
            segments.append(seg)
        record = {
            "file_name": os.path.join(image_root, image["file_name"]),
            "image_id": ann["image_id"],
            "pan_seg_file_name": os.path.join(panoptic_root, ann["file_name"]),
            "segments_info": segments,
        }
        if "height" in image and "width" in image:
            record.update(height=int(image["height"]), width=int(image["width"]))
        records.append(record)
    if not records:
        raise ValueError(f"panoptic JSON {panoptic_json} has no annotations")
    for key, what in (("file_name", "image"), ("pan_seg_file_name", "panoptic PNG")):
        if not PathManager.isfile(records[0][key]):  # the mapper checks the others on the fly
            raise FileNotFoundError(
                f"{what} {records[0][key]} (of the first annotation of {panoptic_json}) does not "
                f"exist. {preparation_hint(records[0][key])}"
            )
    logger.info(f"Loaded {len(records)} panoptic records from {panoptic_json}")
    return records


def register_panoptic_dataset(
    name: str,
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    instances_json: Optional[str] = None,
    *,
    categories: Optional[Sequence[Dict[str, Any]]] = None,
    check_pngs: bool = False,
    prepare: Optional[Callable[[], None]] = None,
    **extra_metadata: Any,
) -> None:
    """
    Register a COCO-panoptic-format dataset with complete metadata for training and evaluation.

    The metadata holds ``thing_classes``, ``stuff_classes``, their colors,
    ``thing/stuff_dataset_id_to_contiguous_id`` (see :func:`metadata_from_categories`),
    ``evaluator_type="coco_panoptic_seg"``, ``ignore_label=255``, ``label_divisor=1000``,
    ``panoptic_root``, ``panoptic_json``, ``image_root`` and ``json_file`` (``instances_json``,
    for detectron2's COCOEvaluator box/mask AP, if given). The categories are validated now (ids,
    names, ``isthing`` flags); when the dataset is loaded, every segment's id and category is
    checked and problems are reported per file. Set the model to the dataset's classes:
    ``ROI_HEADS.NUM_CLASSES`` = #things, ``SEM_SEG_HEAD.NUM_CLASSES`` = #stuff + 1 ("merged")
    or #things + #stuff ("all"); the mapper raises a clear error otherwise.

    Args:
        name (str): dataset name, e.g. "my_dataset_train".
        image_root (str): folder of the images.
        panoptic_root (str): folder of the panoptic PNGs.
        panoptic_json (str): the COCO panoptic JSON.
        instances_json (str): optional COCO instances JSON of the same images (things).
        categories (list[dict]): the JSON's categories; give them to avoid reading a large JSON
            at registration (it is read when the dataset is loaded).
        check_pngs (bool): when loading, also open every PNG and image header (slow on COCO).
        prepare (callable): called before loading, e.g. to generate the files.
        extra_metadata: more metadata to set.
    """
    if name in DatasetCatalog.list():
        raise ValueError(
            f"dataset {name!r} is already registered; call DatasetCatalog.remove({name!r}) and "
            f"MetadataCatalog.remove({name!r}) first to register it again"
        )
    if categories is None:
        categories = read_panoptic_json(panoptic_json)["categories"]
    metadata = metadata_from_categories(categories, panoptic_json)

    def _load() -> List[Dict[str, Any]]:
        if prepare is not None:
            prepare()
        return load_panoptic_json(panoptic_json, image_root, panoptic_root, metadata, check_pngs)

    DatasetCatalog.register(name, _load)
    paths = {
        "panoptic_root": panoptic_root,
        "image_root": image_root,
        "panoptic_json": panoptic_json,
    }
    if instances_json is not None:
        paths["json_file"] = instances_json
    MetadataCatalog.get(name).set(
        evaluator_type="coco_panoptic_seg",
        ignore_label=255,
        label_divisor=1000,
        **paths,
        **metadata,
        **extra_metadata,
    )
