"""panoptic_ext.evaluation: panoptic quality without panopticapi, and the evaluators of
panoptic datasets (PQ, semantic mIoU and instance AP)."""

from ..data.panoptic_ids import id_to_rgb, rgb_to_id
from .build import EVAL_TASKS, build_panoptic_evaluators
from .instance_evaluation import PanopticInstanceEvaluator, panoptic_to_coco_instances
from .panoptic_evaluation import PanopticQualityEvaluator
from .panoptic_files import format_pq_table, pq_compute, read_panoptic_png
from .segment_matching import PanopticFormatError, PQStat, pq_image
from .sem_seg_evaluation import PanopticSemSegEvaluator, panoptic_to_semantic

__all__ = [
    "EVAL_TASKS",
    "PQStat",
    "PanopticFormatError",
    "PanopticInstanceEvaluator",
    "PanopticQualityEvaluator",
    "PanopticSemSegEvaluator",
    "build_panoptic_evaluators",
    "format_pq_table",
    "id_to_rgb",
    "panoptic_to_coco_instances",
    "panoptic_to_semantic",
    "pq_compute",
    "pq_image",
    "read_panoptic_png",
    "rgb_to_id",
]
