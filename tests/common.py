"""Helpers shared by the tests: configs on the CPU with random weights, tiny inputs."""

import torch
from detectron2 import model_zoo
from detectron2.config import CfgNode, get_cfg

from panoptic_ext import add_panoptic_ext_config

MODEL_ZOO_PANOPTIC_FPN = "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"


def get_model_zoo_cfg(config_path: str = MODEL_ZOO_PANOPTIC_FPN) -> CfgNode:
    """detectron2's own model-zoo config on the CPU, no pretrained weights."""
    cfg = get_cfg()
    add_panoptic_ext_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file(config_path))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


def random_image_batch(sizes, with_targets: bool = False, seed: int = 0):
    """A list of detectron2 input dicts with random uint8 images of the given (H, W) sizes."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for h, w in sizes:
        image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        batch.append({"image": image, "height": h, "width": w})
    return batch
