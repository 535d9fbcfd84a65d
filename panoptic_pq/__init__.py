"""panoptic_pq: panoptic quality (PQ, SQ, RQ) of COCO panoptic files, as panopticapi computes it,
with numpy, Pillow and hotcoco only: no torch, no detectron2.

It is the library behind the ``panoptic-pq`` command (:mod:`panoptic_pq.cli`), which therefore
starts in a fraction of a second, and behind panoptic_ext's evaluators
(:mod:`panoptic_ext.evaluation`), which re-export its API.
"""

from .panoptic_files import format_pq_table, pq_compute, read_panoptic_png
from .segment_matching import PanopticFormatError, PQStat, pq_image

__all__ = [
    "PQStat",
    "PanopticFormatError",
    "format_pq_table",
    "pq_compute",
    "pq_image",
    "read_panoptic_png",
]
