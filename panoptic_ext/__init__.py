"""panoptic_ext: Panoptic FPN (Kirillov et al., 2019) as Detectron2 plugins.

``import panoptic_ext`` registers every plugin, so each YAML ``NAME`` resolves.
"""

from . import data, engine, evaluation, modeling  # noqa: F401  (registration)
from .config import add_panoptic_ext_config

__version__ = "0.1.0"

__all__ = ["add_panoptic_ext_config"]
