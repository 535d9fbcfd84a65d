"""panoptic_ext.evaluation: panoptic quality without panopticapi, and the evaluators of
panoptic datasets (PQ, semantic mIoU and instance AP).

Two layers:

- PQ of COCO panoptic files (``pq_compute``, ``pq_image``, ``PQStat``, the ``panoptic-pq``
  command): modules ``json_checks``, ``segment_matching``, ``hotcoco_engine``,
  ``panoptic_files`` and ``pq_cli``, which import numpy and Pillow only (no torch, no
  detectron2), so that the command starts in a fraction of a second;
- detectron2's ``DatasetEvaluator`` s (``PanopticQualityEvaluator``, ``PanopticSemSegEvaluator``,
  ``PanopticInstanceEvaluator``, ``build_panoptic_evaluators``), imported on first use of their
  names here (``from panoptic_ext.evaluation import build_panoptic_evaluators`` works as usual).
"""

import importlib
from typing import Any

from panoptic_pq.panoptic_files import format_pq_table, pq_compute, read_panoptic_png
from panoptic_pq.segment_matching import PanopticFormatError, PQStat, pq_image

# Names of the modules that import detectron2 (or panoptic_ext.data, which does), loaded when
# one of their names is first used.
_LAZY = {
    "EVAL_TASKS": ".build",
    "build_panoptic_evaluators": ".build",
    "panoptic_evaluators": ".build",
    "PanopticInstanceEvaluator": ".instance_evaluation",
    "panoptic_to_coco_instances": ".instance_evaluation",
    "PanopticQualityEvaluator": ".panoptic_evaluation",
    "PanopticSemSegEvaluator": ".sem_seg_evaluation",
    "panoptic_to_semantic": ".sem_seg_evaluation",
    "id_to_rgb": "panoptic_ext.data.panoptic_ids",
    "rgb_to_id": "panoptic_ext.data.panoptic_ids",
}

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
    "id_to_rgb",
    "panoptic_to_coco_instances",
    "panoptic_to_semantic",
    "pq_compute",
    "pq_image",
    "read_panoptic_png",
    "rgb_to_id",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
