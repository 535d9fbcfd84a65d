"""panoptic_ext: Panoptic FPN (Kirillov et al., 2019) as Detectron2 plugins.

``import panoptic_ext`` registers the plugins (meta-architecture ``PanopticFPNExt``, semantic
head, ROI heads, loss-weight schedules, panoptic post-processors, the dataset mapper, the
evaluators and the project's datasets) so that each config ``NAME`` resolves. It loads nothing
of training, prediction, export or ablation (those are :mod:`panoptic_ext.apps`) and changes
no attribute of detectron2.
"""

from panoptic_ext import data, evaluation, modeling  # noqa: F401  (registration)
from panoptic_ext.config import add_panoptic_ext_config

__version__ = "0.1.0"

__all__ = ["add_panoptic_ext_config"]
