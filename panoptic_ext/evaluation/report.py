"""The evaluation report of a registered detectron2 dataset's saved predictions: the dataset's
ground truth, images and class colors go to :func:`panoptic_pq.report.write_panoptic_report`."""

import os
from typing import Any, Dict

from panoptic_pq.report import write_panoptic_report
from panoptic_pq.report_figures import colors_from_metadata

__all__ = ["write_report_for_dataset", "write_panoptic_report", "colors_from_metadata"]


def write_report_for_dataset(
    dataset_name: str,
    predictions_dir: str,
    output_dir: str,
    num_worst: int = 12,
) -> Dict[str, Any]:
    """
    The report of a registered panoptic dataset's predictions saved by the project's
    ``PanopticQualityEvaluator`` (``train_net.py --eval-only`` with ``TEST.SAVE_PANOPTIC_PNGS
    True``): ``predictions_dir/predictions.json`` and ``predictions_dir/predictions/*.png``;
    ground truth, images and colors from the dataset's metadata (``panoptic_json``,
    ``panoptic_root``, ``image_root``, ``thing_colors`` / ``stuff_colors``).

    Raises:
        FileNotFoundError: naming the missing file and how to get it.
    """
    from detectron2.data import MetadataCatalog

    metadata = MetadataCatalog.get(dataset_name)
    for key in ("panoptic_json", "panoptic_root"):
        if not hasattr(metadata, key):
            raise ValueError(
                f"dataset {dataset_name!r} is not a COCO-format panoptic dataset (its metadata "
                f"has no {key})"
            )
    pred_json = os.path.join(predictions_dir, "predictions.json")
    pred_folder = os.path.join(predictions_dir, "predictions")
    if not os.path.isfile(pred_json) or not os.path.isdir(pred_folder):
        raise FileNotFoundError(
            f"{pred_json} and the PNG folder {pred_folder} are needed for the report: evaluate "
            "with TEST.SAVE_PANOPTIC_PNGS True (train_net.py --eval-only ... "
            "TEST.SAVE_PANOPTIC_PNGS True)"
        )
    return write_panoptic_report(
        output_dir,
        metadata.panoptic_json,
        metadata.panoptic_root,
        getattr(metadata, "image_root", None),
        pred_json,
        pred_folder,
        colors=colors_from_metadata(metadata),
        num_worst=num_worst,
        title=f"Panoptic evaluation report: {dataset_name}",
    )
