"""hotcoco (a Rust COCO / panoptic evaluator, on PyPI) as the engine of ``pq_compute``.

hotcoco's ``PanopticEval`` reads and matches the PNG files several times faster than Python can,
needs no compilation at first use, and gives panopticapi's numbers (the tests cross-check it
against panopticapi's own code and against the pure path of this package). It is given the
annotations that :mod:`.json_checks` already checked (integer ids, isthing flags, one annotation
per image), renumbered to the integer image ids it requires (Cityscapes' ids are strings); its
per-category sums become a :class:`PQStat`, so that the results are computed exactly as on the
pure path.
"""

import logging
from typing import Any, Mapping, Sequence, Tuple

from .segment_matching import PQStat

__all__ = ["hotcoco_available", "pq_stat_with_hotcoco"]

logger = logging.getLogger(__name__)


def hotcoco_available() -> bool:
    """Whether ``hotcoco.panoptic`` can be imported."""
    try:
        import hotcoco.panoptic  # noqa: F401
    except ImportError:
        return False
    return True


def pq_stat_with_hotcoco(
    pairs: Sequence[Tuple[Mapping[str, Any], Mapping[str, Any]]],
    categories: Mapping[int, Mapping[str, Any]],
    gt_folder: str,
    pred_folder: str,
) -> PQStat:
    """
    PQ statistics of checked (gt, prediction) annotation pairs, computed by hotcoco.

    Args:
        pairs (list[(dict, dict)]): from :func:`.json_checks.pair_annotations`.
        categories (dict): category id -> category, from :func:`.categories_by_id`.
        gt_folder, pred_folder (str): the PNG folders.

    Raises:
        ValueError, OSError: hotcoco's errors (bad or missing PNGs, inconsistent segments).
    """
    from hotcoco.panoptic import PanopticEval

    gt_anns, pred_anns = [], []
    for k, (gt_ann, pred_ann) in enumerate(pairs):
        for ann, out in ((gt_ann, gt_anns), (pred_ann, pred_anns)):
            out.append(
                {
                    "image_id": k,
                    "file_name": ann["file_name"],
                    "segments_info": ann["segments_info"],
                }
            )
    gt = {"annotations": gt_anns, "categories": [dict(c) for c in categories.values()]}
    evaluation = PanopticEval(
        gt, {"annotations": pred_anns}, gt_folder=gt_folder, pred_folder=pred_folder
    )
    evaluation.evaluate()
    per_class = evaluation.results()["per_class"]
    stat = PQStat(list(categories))
    for i, category_id in enumerate(stat.category_ids):
        sums = per_class.get(category_id)
        if sums is not None:
            stat.iou[i] = sums["iou"]
            stat.tp[i], stat.fp[i], stat.fn[i] = sums["tp"], sums["fp"], sums["fn"]
    return stat
