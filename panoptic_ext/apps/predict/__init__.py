"""panoptic_ext.apps.predict: ``PanopticPredictor`` (detectron2's ``DefaultPredictor`` for any
image array, strict weights) and the demo's helpers (inputs, pictures, panoptic PNG + JSON)."""

from panoptic_ext.apps.predict.panoptic_visualization import (
    class_layout_for_cfg,
    collect_images,
    predict_images,
    record_to_panoptic,
    save_panoptic_prediction,
    visualization_metadata,
)
from panoptic_ext.apps.predict.predictor import PanopticPredictor

__all__ = [
    "PanopticPredictor",
    "class_layout_for_cfg",
    "collect_images",
    "predict_images",
    "record_to_panoptic",
    "save_panoptic_prediction",
    "visualization_metadata",
]
