"""panoptic_ext.data: panoptic records -> Panoptic FPN targets, dataset registration, checks.

Importing it registers ``panoptic_synthetic_train`` and ``panoptic_synthetic_val``.
"""

from . import builtin as _builtin  # noqa: F401  (registration)
from .builtin import SYNTHETIC_DATASET_NAMES, ensure_synthetic_panoptic, register_synthetic_panoptic
from .class_layout import SEM_SEG_THINGS_MODES, PanopticClassLayout
from .custom import load_panoptic_json, metadata_from_categories, register_panoptic_dataset
from .mapper import PanopticFPNDatasetMapper
from .panoptic_ids import id_to_rgb, rgb_to_id
from .panoptic_targets import PanopticTargets, panoptic_targets
from .synthetic import SYNTHETIC_CATEGORIES, generate_synthetic_panoptic
from .validation import PanopticDatasetError, check_dataset_paths, validate_panoptic_dataset

__all__ = [
    "PanopticClassLayout",
    "SEM_SEG_THINGS_MODES",
    "PanopticFPNDatasetMapper",
    "PanopticTargets",
    "panoptic_targets",
    "rgb_to_id",
    "id_to_rgb",
    "register_panoptic_dataset",
    "load_panoptic_json",
    "metadata_from_categories",
    "validate_panoptic_dataset",
    "check_dataset_paths",
    "PanopticDatasetError",
    "generate_synthetic_panoptic",
    "SYNTHETIC_CATEGORIES",
    "SYNTHETIC_DATASET_NAMES",
    "register_synthetic_panoptic",
    "ensure_synthetic_panoptic",
]
