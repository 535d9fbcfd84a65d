"""
panoptic_ext.modeling: the semantic FPN head, loss-weight schedules, panoptic post-processors and
the ``PanopticFPNExt`` meta-architecture. Importing it registers all of them.
"""

from .loss_weights import (
    LOSS_WEIGHT_SCHEDULE_REGISTRY,
    LossWeights,
    LossWeightSchedule,
    build_loss_weight_schedule,
)
from .meta_arch import PanopticFPNExt
from .postprocess import PanopticOutputs, combine_panoptic, fold_thing_classes
from .postprocessors import (
    PANOPTIC_POSTPROCESSOR_REGISTRY,
    Detectron2PanopticPostprocessor,
    FastPanopticPostprocessor,
    build_panoptic_postprocessor,
)
from .semantic_argmax import upsampled_argmax, upsampled_logits
from .semantic_fpn_head import SemanticFPNHead

__all__ = [
    "LOSS_WEIGHT_SCHEDULE_REGISTRY",
    "PANOPTIC_POSTPROCESSOR_REGISTRY",
    "Detectron2PanopticPostprocessor",
    "FastPanopticPostprocessor",
    "LossWeights",
    "LossWeightSchedule",
    "PanopticFPNExt",
    "PanopticOutputs",
    "SemanticFPNHead",
    "build_loss_weight_schedule",
    "build_panoptic_postprocessor",
    "combine_panoptic",
    "fold_thing_classes",
    "upsampled_argmax",
    "upsampled_logits",
]
