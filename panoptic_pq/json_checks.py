"""Reading and checking the COCO panoptic JSON files of a PQ evaluation, before any PNG is read.

Every error names the file, the annotation (index and image id) and the key, and says what was
expected, instead of a bare KeyError / TypeError deep inside the evaluation.
"""

import json
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from .segment_matching import OFFSET, PanopticFormatError

__all__ = [
    "load_panoptic_json_file",
    "annotation_problems",
    "pair_annotations",
    "categories_by_id",
]

_MAX_LISTED = 20


def _raise(problems: List[str], source: str) -> None:
    if problems:
        listed = "\n  - ".join(problems[:_MAX_LISTED])
        more = (
            f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        )
        raise PanopticFormatError(f"{source}: {len(problems)} problem(s):\n  - {listed}{more}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _all_valid(segments: List[Any]) -> bool:
    """Fast path of :func:`_segment_problems` (``type(v) is int`` also refuses bools)."""
    try:
        ids = [seg["id"] for seg in segments]
        cats = [seg["category_id"] for seg in segments]
    except (KeyError, TypeError):
        return False
    return (
        all(type(v) is int and 0 < v < OFFSET for v in ids)
        and all(type(v) is int for v in cats)
        and len(set(ids)) == len(ids)
    )


def _segment_problems(segments: Any, where: str) -> List[str]:
    if not isinstance(segments, list):
        return [f"{where}: 'segments_info' is {type(segments).__name__}; expected a list"]
    if _all_valid(segments):
        return []
    problems, seen = [], set()
    for j, seg in enumerate(segments):
        at = f"{where}: segments_info[{j}]"
        if not isinstance(seg, dict):
            problems.append(f"{at} is {seg!r}; expected an object with 'id' and 'category_id'")
            continue
        for key in ("id", "category_id"):
            if key not in seg:
                problems.append(f"{at} has no {key!r}; expected an integer")
            elif not _is_int(seg[key]):
                problems.append(f"{at}: {key} is {seg[key]!r}; expected an integer")
        sid = seg.get("id")
        if _is_int(sid):
            if not 0 < sid < OFFSET:
                problems.append(f"{at}: id {sid} is outside [1, 2**24) (0 is VOID)")
            elif sid in seen:
                problems.append(f"{at}: id {sid} appears twice")
            seen.add(sid)
    return problems


def annotation_problems(annotations: Any, source: str) -> List[str]:
    """
    Problems of the ``annotations`` list of a COCO panoptic JSON for PQ: each must be an object
    with a hashable ``image_id`` (given once), a string ``file_name`` and a list
    ``segments_info`` of objects with integer ``id`` (in [1, 2**24), distinct) and
    ``category_id``.
    """
    if not isinstance(annotations, list):
        return [f"'annotations' is {type(annotations).__name__}; expected a list"]
    problems: List[str] = []
    first_of: Dict[Any, int] = {}
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            problems.append(f"annotations[{i}] is {type(ann).__name__}; expected an object")
            continue
        image_id = ann.get("image_id")
        where = f"annotations[{i}] (image {image_id!r})"
        missing = [k for k in ("image_id", "file_name", "segments_info") if k not in ann]
        if missing:
            problems.append(
                f"{where} has no {missing}; expected 'image_id', 'file_name' and " "'segments_info'"
            )
            continue
        if not isinstance(image_id, (int, str)) or isinstance(image_id, bool):
            problems.append(f"{where}: image_id is {image_id!r}; expected an integer or a string")
        elif image_id in first_of:
            problems.append(
                f"{where}: image {image_id!r} is annotated twice (also annotations"
                f"[{first_of[image_id]}]); it would be evaluated twice"
            )
        else:
            first_of[image_id] = i
        if not isinstance(ann["file_name"], str):
            problems.append(f"{where}: file_name is {ann['file_name']!r}; expected a PNG name")
        problems += _segment_problems(ann["segments_info"], where)
    return problems


def load_panoptic_json_file(path: str, what: str) -> Dict[str, Any]:
    """
    Read a COCO panoptic JSON of a PQ evaluation and check its ``annotations`` (and, for the
    ground truth, that it has ``categories``).

    Args:
        path (str): the file.
        what (str): "ground-truth" or "prediction" (for messages and the required keys).

    Raises:
        FileNotFoundError: ``path`` does not exist or is a folder.
        PanopticFormatError: invalid JSON, or the problems of :func:`annotation_problems`,
            naming ``path``.
    """
    source = f"{what} JSON file {path}"
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise FileNotFoundError(f"{source} does not exist (or is not a file)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PanopticFormatError(f"{source} is not valid JSON: {e}") from None
    required = ("annotations",) + (("categories",) if what == "ground-truth" else ())
    if not isinstance(data, dict):
        raise PanopticFormatError(
            f"{source} holds a {type(data).__name__}; expected an object with {list(required)}"
        )
    for key in required:
        if key not in data:
            raise PanopticFormatError(f"{source} has no {key!r} list")
    _raise(annotation_problems(data["annotations"], source), source)
    return data


def pair_annotations(
    gt_annotations: Sequence[Mapping[str, Any]],
    pred_annotations: Sequence[Mapping[str, Any]],
    source: str = "prediction",
    check: bool = True,
) -> List[Tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(gt, prediction) annotation pairs in the gt order, matched by ``image_id``; raises
    PanopticFormatError for an image annotated or predicted twice (and, with ``check``, the other
    problems of :func:`annotation_problems`), or without a prediction."""
    if check:
        problems = annotation_problems(list(gt_annotations), "ground truth")
        problems += annotation_problems(list(pred_annotations), source)
        _raise(problems, "panoptic annotations")
    by_id = {ann["image_id"]: ann for ann in pred_annotations}
    missing = [a["image_id"] for a in gt_annotations if a["image_id"] not in by_id]
    if missing:
        more = f" (and {len(missing) - 1} more: {missing[1:10]})" if len(missing) > 1 else ""
        raise PanopticFormatError(
            f"{source}: no prediction for the image with id {missing[0]!r}{more}"
        )
    return [(a, by_id[a["image_id"]]) for a in gt_annotations]


def categories_by_id(
    categories: List[Mapping[str, Any]], source: str = "categories"
) -> Dict[int, Mapping[str, Any]]:
    """
    The ``categories`` list of a COCO panoptic JSON as {id: category} (its order kept).

    Raises:
        PanopticFormatError: naming ``source`` and listing every category whose ``id`` is not a
            distinct integer or whose ``isthing`` is not 0 / 1 (a missing or "1" flag would
            otherwise count a thing category as stuff).
    """
    if not isinstance(categories, list) or not categories:
        raise PanopticFormatError(f"{source}: 'categories' must be a non-empty list")
    problems, by_id = [], {}
    for i, cat in enumerate(categories):
        where = f"categories[{i}]"
        if not isinstance(cat, Mapping):
            problems.append(f"{where} is {cat!r}; expected an object with 'id' and 'isthing'")
            continue
        where += f" ({cat.get('name', '?')!r})"
        cid = cat.get("id")
        if isinstance(cid, bool) or not isinstance(cid, (int, np.integer)):
            problems.append(f"{where}: 'id' is {cid!r}; expected an integer")
        elif int(cid) in by_id:
            problems.append(f"{where}: id {cid} is used twice")
        else:
            by_id[int(cid)] = cat
        if "isthing" not in cat or cat["isthing"] not in (0, 1) or isinstance(cat["isthing"], str):
            problems.append(
                f"{where}: 'isthing' is {repr(cat['isthing']) if 'isthing' in cat else 'missing'}"
                "; expected 1 (thing) or 0 (stuff)"
            )
    if problems:
        raise PanopticFormatError(
            f"{source}: {len(problems)} bad categories:\n  - " + "\n  - ".join(problems[:20])
        )
    return by_id
