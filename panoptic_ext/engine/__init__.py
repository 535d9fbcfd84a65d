"""panoptic_ext.engine: training, evaluation and prediction entry points."""

from .hooks import ProgressHook
from .launch import launch
from .plot import plot_training_curves, read_metrics
from .predict import collect_images, predict_images, save_panoptic_prediction
from .setup import get_panoptic_cfg, setup_cfg
from .solver import build_optimizer

__all__ = [
    "ProgressHook",
    "build_optimizer",
    "collect_images",
    "get_panoptic_cfg",
    "launch",
    "plot_training_curves",
    "predict_images",
    "read_metrics",
    "save_panoptic_prediction",
    "setup_cfg",
]
