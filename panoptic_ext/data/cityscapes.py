"""The project's Cityscapes panoptic datasets, ``cityscapes_fine_panoptic_ext_{train,val}``:
detectron2's ``cityscapes_fine_panoptic_{train,val}`` (same files, records and metadata) loaded
with file paths that survive a "." in a folder name. detectron2's own datasets stay as they are.

detectron2's ``load_cityscapes_panoptic`` (v0.6 and main) derives each record's labelTrainIds
path with ``image_file.split(".")[0]``, so under a root such as ``/home/first.last/data`` or a
temporary folder ``tmp.x1`` it looks for ``/home/first`` + "_labelTrainIds.png" and fails with
"Please generate labelTrainIds.png", although the files are there. :func:`load_cityscapes_panoptic`
builds the same records from the same public file listing (``get_cityscapes_panoptic_files``),
cutting only the file name's extension, and reports missing files by name with how to make them.
"""

import json
import os
from typing import Any, Dict, List

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import cityscapes_panoptic
from detectron2.utils.file_io import PathManager

from .validation import preparation_hint

__all__ = ["CITYSCAPES_PANOPTIC_SPLITS", "load_cityscapes_panoptic", "register_cityscapes_panoptic"]

_IMAGE_SUFFIX = "_leftImg8bit"


def _label_train_ids_file(image_file: str) -> str:
    """<root>/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png ->
    <root>/gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png."""
    city_dir, name = os.path.split(image_file)
    split_dir = os.path.dirname(city_dir)
    root = os.path.dirname(os.path.dirname(split_dir))
    stem = os.path.splitext(name)[0]
    if stem.endswith(_IMAGE_SUFFIX):
        stem = stem[: -len(_IMAGE_SUFFIX)]
    return os.path.join(
        root,
        "gtFine",
        os.path.basename(split_dir),
        os.path.basename(city_dir),
        stem + "_gtFine_labelTrainIds.png",
    )


def _dataset_id(segment: Dict[str, Any], meta: Dict[str, Any]) -> Dict[str, Any]:
    segment = dict(segment)
    things = meta["thing_dataset_id_to_contiguous_id"]
    stuff = meta["stuff_dataset_id_to_contiguous_id"]
    segment["category_id"] = (things if segment["category_id"] in things else stuff)[
        segment["category_id"]
    ]
    return segment


def load_cityscapes_panoptic(
    image_dir: str, gt_dir: str, gt_json: str, meta: Dict[str, Any]
) -> List[Dict[str, Any]]:
    """
    detectron2's ``load_cityscapes_panoptic`` (same arguments, same records), with paths that may
    contain "." and errors that name the missing file.

    Args:
        image_dir (str): e.g. "cityscapes/leftImg8bit/train".
        gt_dir (str): e.g. "cityscapes/gtFine/cityscapes_panoptic_train".
        gt_json (str): e.g. "cityscapes/gtFine/cityscapes_panoptic_train.json".
        meta (dict): with "thing_dataset_id_to_contiguous_id" and
            "stuff_dataset_id_to_contiguous_id".
    """
    for path, what in ((gt_json, "panoptic JSON"), (image_dir, "image folder")):
        if not PathManager.exists(path):
            raise FileNotFoundError(
                f"Cityscapes {what} {path} does not exist. {preparation_hint('cityscapes')}"
            )
    with PathManager.open(gt_json) as f:
        json_info = json.load(f)
    files = cityscapes_panoptic.get_cityscapes_panoptic_files(image_dir, gt_dir, json_info)
    records = []
    for image_file, label_file, segments_info in files:
        stem = os.path.splitext(os.path.basename(image_file))[0]
        records.append(
            {
                "file_name": image_file,
                "image_id": "_".join(stem.split("_")[:3]),
                "sem_seg_file_name": _label_train_ids_file(image_file),
                "pan_seg_file_name": label_file,
                "segments_info": [_dataset_id(s, meta) for s in segments_info],
            }
        )
    for key, script in (
        ("sem_seg_file_name", "createTrainIdLabelImgs"),
        ("pan_seg_file_name", "createPanopticImgs"),
    ):
        if records and not PathManager.isfile(records[0][key]):  # as detectron2: the first one
            raise FileNotFoundError(
                f"{records[0][key]} (of {records[0]['file_name']}) does not exist: run "
                f"cityscapesscripts' {script}. {preparation_hint('cityscapes')}"
            )
    return records


# Split -> (image folder, panoptic PNG folder, panoptic JSON) under the datasets root, as
# detectron2's builtin registration lays them out.
CITYSCAPES_PANOPTIC_SPLITS = {
    "train": (
        "cityscapes/leftImg8bit/train",
        "cityscapes/gtFine/cityscapes_panoptic_train",
        "cityscapes/gtFine/cityscapes_panoptic_train.json",
    ),
    "val": (
        "cityscapes/leftImg8bit/val",
        "cityscapes/gtFine/cityscapes_panoptic_val",
        "cityscapes/gtFine/cityscapes_panoptic_val.json",
    ),
}


def register_cityscapes_panoptic(
    root: str, prefix: str = "cityscapes_fine_panoptic_ext"
) -> Dict[str, str]:
    """
    Register ``{prefix}_train`` and ``{prefix}_val``: Cityscapes panoptic under ``root`` (the
    datasets folder, as ``$DETECTRON2_DATASETS``), loaded by :func:`load_cityscapes_panoptic`,
    with the metadata of detectron2's ``cityscapes_fine_panoptic_*`` (classes, colors, id maps,
    ``evaluator_type`` "cityscapes_panoptic_seg") and this root's paths.

    Returns:
        dict: split -> registered name.
    """
    names = {}
    for split, (image_dir, gt_dir, gt_json) in CITYSCAPES_PANOPTIC_SPLITS.items():
        image_dir, gt_dir, gt_json = (os.path.join(root, p) for p in (image_dir, gt_dir, gt_json))
        meta = MetadataCatalog.get(f"cityscapes_fine_panoptic_{split}").as_dict()
        for key in ("name", "panoptic_root", "image_root", "panoptic_json", "gt_dir"):
            meta.pop(key, None)
        name = f"{prefix}_{split}"
        DatasetCatalog.register(
            name,
            lambda x=image_dir, y=gt_dir, z=gt_json, m=dict(meta): load_cityscapes_panoptic(
                x, y, z, m
            ),
        )
        MetadataCatalog.get(name).set(
            panoptic_root=gt_dir,
            image_root=image_dir,
            panoptic_json=gt_json,
            gt_dir=os.path.join(os.path.dirname(gt_dir), split),
            **meta,
        )
        names[split] = name
    return names
