"""
panoptic_ext.modeling: the semantic FPN head, loss-weight schedules, panoptic post-processors,
the ROI heads that predict only the masks a panoptic output reads, the ``PanopticFPNExt``
meta-architecture and its test-time augmentation (``PanopticFPNWithTTA``). Importing it registers
all of them. ``optimize_for_cpu_inference`` is the explicit pass of CPU-only inference speed-ups.
"""

from .cpu_inference import CPU_SPEEDUPS, bf16_autocast, optimize_for_cpu_inference
from .loss_weights import (
    LOSS_WEIGHT_SCHEDULE_REGISTRY,
    LossWeights,
    LossWeightSchedule,
    build_loss_weight_schedule,
)
from .meta_arch import PanopticFPNExt
from .panoptic_postprocessor import (
    PANOPTIC_POSTPROCESSOR_REGISTRY,
    Detectron2PanopticPostprocessor,
    FastPanopticPostprocessor,
    build_panoptic_postprocessor,
    combine_panoptic,
    fold_thing_classes,
)
from .panoptic_roi_heads import PanopticROIHeads
from .semantic_argmax import upsampled_argmax, upsampled_logits
from .semantic_fpn_head import SemanticFPNHead
from .test_time_augmentation import PanopticFPNWithTTA, check_test_aug

__all__ = [
    "CPU_SPEEDUPS",
    "LOSS_WEIGHT_SCHEDULE_REGISTRY",
    "PANOPTIC_POSTPROCESSOR_REGISTRY",
    "Detectron2PanopticPostprocessor",
    "FastPanopticPostprocessor",
    "LossWeights",
    "LossWeightSchedule",
    "PanopticFPNExt",
    "PanopticFPNWithTTA",
    "PanopticROIHeads",
    "SemanticFPNHead",
    "bf16_autocast",
    "build_loss_weight_schedule",
    "build_panoptic_postprocessor",
    "check_test_aug",
    "combine_panoptic",
    "fold_thing_classes",
    "optimize_for_cpu_inference",
    "upsampled_argmax",
    "upsampled_logits",
]
