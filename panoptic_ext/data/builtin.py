"""Registers the project's datasets at import: ``panoptic_synthetic_train`` / ``_val`` and
``cityscapes_fine_panoptic_ext_train`` / ``_val`` (:mod:`panoptic_ext.data.cityscapes`: detectron2's
Cityscapes panoptic datasets with paths that may contain "."). detectron2's own are not changed.

The files live under ``$DETECTRON2_DATASETS/panoptic_synthetic`` (default ``./datasets``, read at
import as detectron2 does) and are generated the first time either split is loaded, e.g. by
``DatasetCatalog.get("panoptic_synthetic_train")`` or a training run. If the generator's
parameters or version changed, the folder is generated again.
"""

import json
import logging
import os
import shutil
import tempfile
from typing import Any, Dict, Optional

from detectron2.data import DatasetCatalog

from .cityscapes import register_cityscapes_panoptic
from .custom import register_panoptic_dataset
from .synthetic import (
    GENERATOR_VERSION,
    SYNTHETIC_CATEGORIES,
    SYNTHETIC_DEFAULTS,
    generate_synthetic_panoptic,
    synthetic_split_paths,
)

__all__ = ["register_synthetic_panoptic", "ensure_synthetic_panoptic", "SYNTHETIC_DATASET_NAMES"]

logger = logging.getLogger(__name__)

SYNTHETIC_DATASET_NAMES = ("panoptic_synthetic_train", "panoptic_synthetic_val")


def ensure_synthetic_panoptic(root: str, **params: Any) -> None:
    """
    Generate the synthetic dataset under ``root`` unless it is already there with ``params``.

    Safe when several processes (distributed training) call it at once: each generates into a
    temporary folder next to ``root`` and renames it; the first rename wins.
    """
    wanted = dict(SYNTHETIC_DEFAULTS, **params, version=GENERATOR_VERSION)
    marker = os.path.join(root, "generator.json")
    if os.path.isfile(marker):
        with open(marker) as f:
            if json.load(f) == wanted:
                return
        logger.warning(f"{root} was generated with other parameters than {wanted}: regenerating")
    elif os.path.exists(root) and os.listdir(root):
        raise FileExistsError(
            f"{root} exists but was not made by the synthetic dataset generator (no "
            "generator.json): move it away, or set $DETECTRON2_DATASETS to another folder"
        )
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".panoptic_synthetic-", dir=parent)
    try:
        generate_synthetic_panoptic(tmp, **{k: v for k, v in wanted.items() if k != "version"})
        if os.path.isfile(marker):  # stale version: replace it
            shutil.rmtree(root)
        elif os.path.isdir(root):
            os.rmdir(root)  # an empty folder
        os.rename(tmp, root)
    except OSError:
        if not os.path.isfile(marker):  # not a concurrent process that finished first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def register_synthetic_panoptic(
    prefix: str = "panoptic_synthetic", root: Optional[str] = None, **params: Any
) -> Dict[str, str]:
    """
    Register ``{prefix}_train`` and ``{prefix}_val``, generated under ``root`` on first use.

    Args:
        prefix (str): dataset name prefix.
        root (str): folder of the files; default ``$DETECTRON2_DATASETS/panoptic_synthetic``.
        params: generator arguments (num_train, num_val, height, width, seed), see
            :func:`generate_synthetic_panoptic`.

    Returns:
        dict: split -> registered name.
    """
    if root is None:
        root = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "panoptic_synthetic")
    unknown = set(params) - set(SYNTHETIC_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown generator parameters {sorted(unknown)}")
    names = {}
    for split in ("train", "val"):
        paths = synthetic_split_paths(root, split)
        name = f"{prefix}_{split}"
        register_panoptic_dataset(
            name,
            paths["image_root"],
            paths["panoptic_root"],
            paths["panoptic_json"],
            paths["instances_json"],
            categories=SYNTHETIC_CATEGORIES,
            prepare=lambda: ensure_synthetic_panoptic(root, **params),
            generated_on_demand=True,
        )
        names[split] = name
    return names


if SYNTHETIC_DATASET_NAMES[0] not in DatasetCatalog.list():
    register_synthetic_panoptic()
if "cityscapes_fine_panoptic_ext_train" not in DatasetCatalog.list():
    register_cityscapes_panoptic(os.getenv("DETECTRON2_DATASETS", "datasets"))
