"""panoptic_ext.engine: training, evaluation and prediction entry points."""

from .config_loading import default_setup, get_panoptic_cfg, setup_cfg
from .distributed import launch
from .hooks import ProgressHook
from .panoptic_visualization import (
    class_layout_for_cfg,
    collect_images,
    predict_images,
    record_to_panoptic,
    save_panoptic_prediction,
    visualization_metadata,
)
from .plot import plot_training_curves, read_metrics
from .solver import build_optimizer
from .train import main, parse_args
from .trainer import Trainer

__all__ = [
    "ProgressHook",
    "Trainer",
    "build_optimizer",
    "class_layout_for_cfg",
    "collect_images",
    "default_setup",
    "get_panoptic_cfg",
    "launch",
    "main",
    "parse_args",
    "plot_training_curves",
    "predict_images",
    "read_metrics",
    "record_to_panoptic",
    "save_panoptic_prediction",
    "setup_cfg",
    "visualization_metadata",
]
