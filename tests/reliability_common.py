"""Helpers of the reliability tests: a tiny Panoptic FPN config and tiny registered datasets."""

import os
from typing import Optional, Sequence

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from panoptic_ext.data import register_synthetic_panoptic
from tests.common import get_model_zoo_cfg


def tiny_cfg(
    train: Sequence[str] = (),
    test: Sequence[str] = (),
    output_dir: str = "",
    num_things: int = 3,
    num_stuff: int = 3,
) -> CfgNode:
    """
    The project's Panoptic FPN (PanopticFPNExt) with a ResNet-18-sized backbone, narrow heads and
    64-pixel inputs, trained from scratch on the CPU: a training iteration takes ~0.1-0.3 s.
    """
    cfg = get_model_zoo_cfg()
    cfg.MODEL.META_ARCHITECTURE = "PanopticFPNExt"
    cfg.MODEL.SEM_SEG_HEAD.NAME = "SemanticFPNHead"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32], [64], [128]]
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 100
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_things
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 32
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 1
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_stuff + 1
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 64
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 64
    cfg.DATASETS.TRAIN = tuple(train)
    cfg.DATASETS.TEST = tuple(test)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 0.001
    cfg.SOLVER.WARMUP_ITERS = 2
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.MAX_ITER = 4
    cfg.SOLVER.CHECKPOINT_PERIOD = 2
    cfg.SOLVER.OPTIMIZER = "AdamW"
    cfg.TEST.EVAL_PERIOD = 0
    cfg.SEED = 7
    cfg.OUTPUT_DIR = output_dir
    return cfg


def register_tiny_synthetic(
    root: str, prefix: str, num_train: int = 6, num_val: int = 2, size: int = 64
) -> dict:
    """Register (again) ``{prefix}_train`` and ``{prefix}_val``: a tiny synthetic split."""
    for split in ("train", "val"):
        name = f"{prefix}_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    return register_synthetic_panoptic(
        prefix,
        root=os.path.join(root, prefix),
        num_train=num_train,
        num_val=num_val,
        height=size,
        width=size,
        seed=0,
    )


def unregister(*names: Optional[str]) -> None:
    for name in names:
        if name and name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
