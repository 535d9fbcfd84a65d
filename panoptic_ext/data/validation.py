"""Checks of panoptic datasets, with errors that name the file and say how to fix it.

- :func:`check_dataset_paths`: a registered dataset's roots exist (cheap; the mapper runs it).
- :func:`validate_panoptic_dataset`: a COCO-panoptic dataset is consistent: categories, segment
  ids and categories in the JSON, and (``check_pngs=True``) every PNG's ids and every image's and
  PNG's size against the JSON.
"""

import logging
import os
from typing import Any, Dict, Iterable, List, Optional

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.utils.file_io import PathManager
from PIL import Image

from .exif import exif_note, image_size_as_read
from .panoptic_ids import rgb_to_id

__all__ = [
    "PanopticDatasetError",
    "preparation_hint",
    "check_dataset_paths",
    "category_problems",
    "annotation_problems",
    "png_problems",
    "duplicate_problems",
    "validate_panoptic_dataset",
    "raise_problems",
]

logger = logging.getLogger(__name__)

_CITYSCAPES_HINT = (
    "Cityscapes: download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
    "https://www.cityscapes-dataset.com into $DETECTRON2_DATASETS/cityscapes, then run "
    "`CITYSCAPES_DATASET=$DETECTRON2_DATASETS/cityscapes python -m "
    "cityscapesscripts.preparation.createTrainIdLabelImgs` and `python -m "
    "cityscapesscripts.preparation.createPanopticImgs --dataset-folder "
    "$DETECTRON2_DATASETS/cityscapes/gtFine --set-names train val`."
)
_COCO_HINT = (
    "COCO: download train2017.zip, val2017.zip and panoptic_annotations_trainval2017.zip from "
    "https://cocodataset.org into $DETECTRON2_DATASETS/coco and unzip "
    "annotations/panoptic_{train,val}2017.zip into coco/ (no other preparation is needed for the "
    "'standard' coco_2017_*_panoptic datasets; the *_separated ones also need detectron2's "
    "datasets/prepare_panoptic_fpn.py)."
)
_SYNTHETIC_HINT = (
    "The synthetic dataset is generated the first time panoptic_synthetic_train/val is loaded; "
    "delete its folder to generate it again."
)


class PanopticDatasetError(ValueError):
    """A panoptic dataset's files are inconsistent; the message lists the problems."""


def preparation_hint(name_or_path: str) -> str:
    """How to prepare the dataset a name or path belongs to."""
    s = str(name_or_path).lower()
    if "panoptic_synthetic" in s:
        return _SYNTHETIC_HINT
    if "cityscapes" in s:
        return _CITYSCAPES_HINT
    if "coco" in s:
        return _COCO_HINT
    root = os.getenv("DETECTRON2_DATASETS", "datasets")
    return (
        "Check the paths given to register_panoptic_dataset (or your own registration); "
        f"detectron2's builtin datasets are looked up under $DETECTRON2_DATASETS (now {root!r})."
    )


def check_dataset_paths(dataset_name: str) -> None:
    """
    Raise FileNotFoundError if a root or JSON of a registered dataset's metadata is missing
    (naming it and the step that makes it).

    Datasets generated on demand (``metadata.generated_on_demand``) are not checked.
    """
    meta = MetadataCatalog.get(dataset_name)
    if meta.get("generated_on_demand", False):
        return
    for key in ("image_root", "panoptic_root", "panoptic_json", "sem_seg_root", "json_file"):
        path = meta.get(key, None)
        if path and not PathManager.exists(path):
            root = os.getenv("DETECTRON2_DATASETS", "datasets")
            raise FileNotFoundError(
                f"dataset {dataset_name!r}: {key} {path} does not exist "
                f"($DETECTRON2_DATASETS is {root!r}). {preparation_hint(dataset_name)}"
            )


def category_problems(categories: Any, source: str) -> List[str]:
    """Problems of a COCO panoptic ``categories`` list (ids, names, isthing flags)."""
    if not isinstance(categories, list) or not categories:
        return [f"{source}: 'categories' must be a non-empty list"]
    problems, seen = [], set()
    for i, cat in enumerate(categories):
        where = f"{source}: categories[{i}]"
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            problems.append(f"{where} needs 'id' and 'name'")
            continue
        if not isinstance(cat["id"], int) or isinstance(cat["id"], bool):
            problems.append(f"{where} ({cat['name']!r}): id {cat['id']!r} is not an integer")
        if cat["id"] in seen:
            problems.append(f"{where} ({cat['name']!r}): id {cat['id']} is used twice")
        seen.add(cat["id"])
        if cat.get("isthing") not in (0, 1):  # also True/False
            problems.append(
                f"{where} ({cat['name']!r}): 'isthing' must be 1 (countable things, which become "
                f"instances) or 0 (stuff), got {cat.get('isthing', '<missing>')!r}"
            )
    return problems


def annotation_problems(
    ann: Dict[str, Any], images: Dict[Any, Dict[str, Any]], category_ids: Iterable[int], source: str
) -> List[str]:
    """JSON-level problems of one panoptic annotation (image entry, segment ids, categories)."""
    name = ann.get("file_name", f"annotation of image {ann.get('image_id')!r}")
    problems = []
    if "file_name" not in ann or "segments_info" not in ann:
        return [
            f"{source}: {name}: annotation needs 'file_name' and 'segments_info' (is this a COCO "
            "instances JSON? give the panoptic one)"
        ]
    if ann.get("image_id") not in images:
        problems.append(f"{source}: {name}: image_id {ann.get('image_id')!r} is not in 'images'")
    category_ids, seen = set(category_ids), set()
    for seg in ann["segments_info"]:
        sid, cid = seg.get("id"), seg.get("category_id")
        if not isinstance(sid, int) or sid <= 0 or sid >= 256**3:
            problems.append(f"{name}: segment id {sid!r} is not an integer in [1, 2**24)")
        elif sid in seen:
            problems.append(f"{name}: segment id {sid} appears twice")
        seen.add(sid)
        if cid not in category_ids:
            problems.append(
                f"{name}: segment {sid} has category_id {cid!r}, which is not in the "
                f"categories of the dataset ({sorted(category_ids)[:20]})"
            )
        if seg.get("iscrowd", 0) not in (0, 1):
            problems.append(f"{name}: segment {sid} has iscrowd {seg.get('iscrowd')!r}, not 0/1")
    return problems


def _image_problems(image_file: str, png_file: str, w: int, h: int) -> List[str]:
    try:
        iw, ih, orientation = image_size_as_read(image_file)
    except (OSError, SyntaxError, ValueError) as e:
        return [f"{image_file}: cannot read the image ({e})"]
    if (ih, iw) != (h, w):
        note = ""
        if orientation >= 5 and (iw, ih) == (h, w):
            note = f": the PNG matches the stored pixels, but {exif_note(image_file, orientation)}"
        return [f"{image_file}: image is {iw}x{ih} but {png_file} is {w}x{h}{note}"]
    if orientation != 1:
        logger.warning(
            "%s; sizes cannot tell whether %s is; check it visually",
            exif_note(image_file, orientation),
            png_file,
        )
    return []


def duplicate_problems(data: Dict[str, Any], source: str) -> List[str]:
    """Images annotated twice (two annotations of one ``image_id``, or two ``images`` entries of
    one id or one file): they would be trained on and evaluated twice."""
    problems = []
    for what, items, key in (
        ("annotation", data.get("annotations", []), "image_id"),
        ("images entry", data.get("images", []), "id"),
        ("images entry", data.get("images", []), "file_name"),
    ):
        first: Dict[Any, int] = {}
        for i, item in enumerate(items):
            value = item.get(key) if isinstance(item, dict) else None
            if value is None:
                continue
            if value in first:
                problems.append(
                    f"{source}: {what}s {first[value]} and {i} have the same {key} {value!r} "
                    "(an image annotated twice would be trained on and evaluated twice)"
                )
            else:
                first[value] = i
    return problems


def png_problems(
    png_file: str, image_file: Optional[str], ann: Dict[str, Any], image: Dict
) -> List[str]:
    """Problems of one PNG against its JSON entry: readability, size (against the image as
    training reads it, EXIF orientation applied), segment ids both ways."""
    try:
        with PathManager.open(png_file, "rb") as f:
            pan = np.asarray(Image.open(f).convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:
        return [f"{png_file}: cannot read the panoptic PNG ({e})"]
    problems = []
    h, w = pan.shape[:2]
    if (image.get("height"), image.get("width")) != (h, w):
        problems.append(
            f"{png_file}: PNG is {w}x{h} (WxH) but the JSON says the image is "
            f"{image.get('width')}x{image.get('height')}"
        )
    if image_file is not None:
        problems += _image_problems(image_file, png_file, w, h)
    png_ids = set(np.unique(rgb_to_id(pan)).tolist()) - {0}
    json_ids = {seg.get("id") for seg in ann["segments_info"]}
    if png_ids - json_ids:
        problems.append(
            f"{png_file}: segment ids {sorted(png_ids - json_ids)[:10]} are in the PNG but not in "
            "the JSON's segments_info"
        )
    if json_ids - png_ids:
        problems.append(
            f"{png_file}: segment ids {sorted(json_ids - png_ids)[:10]} are in the JSON's "
            "segments_info but not in the PNG"
        )
    return problems


def raise_problems(problems: List[str], what: str, max_listed: int = 20) -> None:
    """Raise one PanopticDatasetError listing the first problems, if there are any."""
    if not problems:
        return
    listed = "\n  - ".join(problems[:max_listed])
    more = f"\n  ... and {len(problems) - max_listed} more" if len(problems) > max_listed else ""
    raise PanopticDatasetError(f"{what}: {len(problems)} problem(s):\n  - {listed}{more}")


def validate_panoptic_dataset(
    panoptic_json: str, image_root: str, panoptic_root: str, *, check_pngs: bool = True
) -> Dict[str, Any]:
    """
    Check a COCO-panoptic dataset; raise :class:`PanopticDatasetError` listing every problem.

    Args:
        panoptic_json (str): the panoptic JSON (images, annotations, categories).
        image_root (str): folder of the images (``images[i]["file_name"]`` is relative to it).
        panoptic_root (str): folder of the PNGs (``annotations[i]["file_name"]``).
        check_pngs (bool): also open every PNG (segment ids, sizes) and image header.

    Returns:
        dict: the loaded JSON.
    """
    from .custom import read_panoptic_json  # custom imports this module

    data = read_panoptic_json(panoptic_json, image_root, panoptic_root)
    problems = category_problems(data["categories"], panoptic_json)
    problems += duplicate_problems(data, panoptic_json)
    images = {img.get("id"): img for img in data["images"]}
    cat_ids = [c.get("id") for c in data["categories"] if isinstance(c, dict)]
    todo = []
    for ann in data["annotations"]:
        problems += annotation_problems(ann, images, cat_ids, panoptic_json)
        if "file_name" in ann and ann.get("image_id") in images:
            todo.append(ann)
    if check_pngs:
        from tqdm import tqdm

        for ann in tqdm(todo, desc=f"validating {os.path.basename(panoptic_json)}", leave=False):
            image = images[ann["image_id"]]
            png = os.path.join(panoptic_root, ann["file_name"])
            img = os.path.join(image_root, image["file_name"]) if "file_name" in image else None
            problems += png_problems(png, img, ann, image)
    raise_problems(problems, f"panoptic dataset {panoptic_json}")
    return data
