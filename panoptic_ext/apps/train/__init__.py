"""panoptic_ext.apps.train: ``train_net.py`` (one entry for YAML and Python configs), the two
trainers, run management (output folder, checkpoints, resume) and distributed launch."""

from panoptic_ext.apps.train.config_loading import default_setup, get_panoptic_cfg, setup_cfg
from panoptic_ext.apps.train.distributed import launch
from panoptic_ext.apps.train.lazy_config import load_lazy_config
from panoptic_ext.apps.train.plot import plot_training_curves, read_metrics
from panoptic_ext.apps.train.solver import build_optimizer
from panoptic_ext.apps.train.train import main, parse_args
from panoptic_ext.apps.train.trainer import LazyTrainer, Trainer

__all__ = [
    "LazyTrainer",
    "Trainer",
    "build_optimizer",
    "default_setup",
    "get_panoptic_cfg",
    "launch",
    "load_lazy_config",
    "main",
    "parse_args",
    "plot_training_curves",
    "read_metrics",
    "setup_cfg",
]
