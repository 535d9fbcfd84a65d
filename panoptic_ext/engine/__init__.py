"""panoptic_ext.engine: training, evaluation and prediction entry points."""

from .hooks import ProgressHook
from .launch import launch
from .plot import plot_training_curves, read_metrics
from .predict import collect_images, predict_images, save_panoptic_prediction
from .setup import default_setup, get_panoptic_cfg, setup_cfg
from .solver import build_optimizer
from .train import main, parse_args
from .trainer import Trainer

__all__ = [
    "ProgressHook",
    "Trainer",
    "build_optimizer",
    "collect_images",
    "default_setup",
    "get_panoptic_cfg",
    "launch",
    "main",
    "parse_args",
    "plot_training_curves",
    "predict_images",
    "read_metrics",
    "save_panoptic_prediction",
    "setup_cfg",
]
