"""panoptic_ext.evaluation: panoptic quality without panopticapi, and the evaluators of
panoptic datasets (PQ, semantic mIoU and instance AP)."""

from .build import EVAL_TASKS, build_panoptic_evaluators, panoptic_evaluators
from .instance_evaluation import PanopticInstanceEvaluator, panoptic_to_coco_instances
from .panoptic_evaluation import PanopticQualityEvaluator
from .pq_core import PanopticFormatError, PQStat, id2rgb, pq_image, rgb2id
from .pq_io import format_pq_table, pq_compute, read_panoptic_png
from .sem_seg_evaluation import PanopticSemSegEvaluator, panoptic_to_semantic

__all__ = [
    "EVAL_TASKS",
    "PQStat",
    "PanopticFormatError",
    "PanopticInstanceEvaluator",
    "PanopticQualityEvaluator",
    "PanopticSemSegEvaluator",
    "build_panoptic_evaluators",
    "panoptic_evaluators",
    "format_pq_table",
    "id2rgb",
    "panoptic_to_coco_instances",
    "panoptic_to_semantic",
    "pq_compute",
    "pq_image",
    "read_panoptic_png",
    "rgb2id",
]
