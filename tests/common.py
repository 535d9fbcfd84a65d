"""Helpers shared by the tests: configs on the CPU with random weights, tiny inputs."""

import os

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.structures import BitMasks, Boxes, Instances

from panoptic_ext import add_panoptic_ext_config
from panoptic_ext.compat import model_zoo_config_file

MODEL_ZOO_PANOPTIC_FPN = "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
R50_1X = os.path.join(CONFIGS, "COCO-PanopticSegmentation", "panoptic_fpn_R_50_1x.yaml")
QUICK_CONFIG = os.path.join(
    CONFIGS, "quick_schedules", "panoptic_fpn_R_18_synthetic_instant_test.yaml"
)


def load_cfg(path: str) -> CfgNode:
    """One of the project's YAML configs on the CPU, no weights."""
    cfg = get_cfg()
    add_panoptic_ext_config(cfg)
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


def detectron2_reference_cfg(cfg: CfgNode) -> CfgNode:
    """
    ``cfg`` (a PanopticFPNExt config with constant loss weights) for detectron2's own
    ``PanopticFPN`` and ``SemSegFPNHead``, the same network and losses (both read detectron2's
    loss-weight keys): for the R50 config this is
    detectron2's model-zoo config (see test_coco_configs_match_detectron2_model_zoo).
    """
    weights = cfg.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS
    assert weights.NAME == "constant" and not weights.SCALE_RPN, "detectron2 has no such schedule"
    ref = cfg.clone()
    ref.MODEL.META_ARCHITECTURE = "PanopticFPN"
    ref.MODEL.SEM_SEG_HEAD.NAME = "SemSegFPNHead"
    ref.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    assert weights.get("INSTANCE") is None and weights.get("SEMANTIC") is None, "deprecated"
    return ref


def make_fast(cfg: CfgNode) -> CfgNode:
    """Fewer proposals, sampled ROIs and detections: the same code paths, a faster test."""
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 200
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.TEST.DETECTIONS_PER_IMAGE = 40
    return cfg


def make_detections_confident(model: torch.nn.Module) -> None:
    """Random weights give degenerate boxes and scores: make proposals the anchors, boxes the
    proposals, and scores peak on foreground classes, so many confident detections exist."""
    with torch.no_grad():
        model.proposal_generator.rpn_head.anchor_deltas.weight.zero_()
        model.proposal_generator.rpn_head.anchor_deltas.bias.zero_()
        model.roi_heads.box_predictor.bbox_pred.weight.zero_()
        model.roi_heads.box_predictor.bbox_pred.bias.zero_()
        model.roi_heads.box_predictor.cls_score.bias[-1] = -1e4  # never background


def get_model_zoo_cfg(config_path: str = MODEL_ZOO_PANOPTIC_FPN) -> CfgNode:
    """detectron2's own model-zoo config on the CPU, no pretrained weights."""
    cfg = get_cfg()
    add_panoptic_ext_config(cfg)
    cfg.merge_from_file(model_zoo_config_file(config_path))
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


def training_batch(sizes, seed=0, empty=(), num_classes=80, num_sem_classes=54):
    """Random images with random boxes, masks and semantic labels (images in `empty`: none)."""
    batch = random_image_batch(sizes, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    for i, x in enumerate(batch):
        h, w = x["image"].shape[1:]
        n = 0 if i in empty else 3
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w / 2, h / 2])
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 60 + 20], 1))
        instances.gt_classes = torch.randint(0, num_classes, (n,), generator=g)
        instances.gt_masks = BitMasks(torch.rand(n, h, w, generator=g) > 0.5)
        x["instances"] = instances
        x["sem_seg"] = torch.randint(0, num_sem_classes, (h, w), generator=g)
        x["sem_seg"][:10] = 255
    return batch


def write_coco_panoptic(root, samples, categories, split: str = "train") -> dict:
    """
    Write a tiny COCO-panoptic dataset (lossless PNG images) under ``root`` (DATA helper).

    Args:
        samples: list of ``(image (H, W, 3) uint8 RGB, pan_ids (H, W) int, segments_info)``,
            segments_info with dataset category ids.
        categories: COCO panoptic categories (id, name, isthing).

    Returns:
        dict with image_root, panoptic_root, panoptic_json.
    """
    import json
    import os

    import numpy as np
    from PIL import Image

    image_root = os.path.join(root, split)
    panoptic_root = os.path.join(root, f"panoptic_{split}")
    os.makedirs(image_root, exist_ok=True)
    os.makedirs(panoptic_root, exist_ok=True)
    images, annotations = [], []
    for i, (image, pan_ids, segments_info) in enumerate(samples, start=1):
        ids = np.asarray(pan_ids, dtype=np.int64)
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(f"{image_root}/{i:04d}.png")
        Image.fromarray(rgb).save(f"{panoptic_root}/{i:04d}.png")
        h, w = ids.shape
        images.append({"id": i, "file_name": f"{i:04d}.png", "height": h, "width": w})
        annotations.append(
            {"image_id": i, "file_name": f"{i:04d}.png", "segments_info": segments_info}
        )
    panoptic_json = os.path.join(root, f"panoptic_{split}.json")
    with open(panoptic_json, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return {
        "image_root": image_root,
        "panoptic_root": panoptic_root,
        "panoptic_json": panoptic_json,
    }


def assert_same_outputs(ours, theirs, keys=("panoptic_seg", "sem_seg", "instances")) -> None:
    """Per image, the outputs ``keys`` of two models are identical."""
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if "panoptic_seg" in keys:
            assert torch.equal(a["panoptic_seg"][0], b["panoptic_seg"][0]), f"image {i}"
            assert a["panoptic_seg"][1] == b["panoptic_seg"][1], f"image {i}"
        if "sem_seg" in keys:
            assert torch.equal(a["sem_seg"], b["sem_seg"]), f"image {i}: sem_seg"
        if "instances" in keys:
            for field in ("pred_boxes", "scores", "pred_classes", "pred_masks"):
                x, y = a["instances"].get(field), b["instances"].get(field)
                x, y = getattr(x, "tensor", x), getattr(y, "tensor", y)
                assert torch.equal(x, y), f"image {i}: instances.{field}"


def write_cityscapes_instance_ids(polygons_json: str) -> str:
    """
    cityscapesscripts' ``json2instanceImg(polygons_json, ..., "ids")``, saved as the 16-bit PNG
    that official Cityscapes downloads ship: json2instanceImg itself saves a mode-"I" PNG, which
    Pillow >= 13 refuses. Returns the ``*_instanceIds.png`` path.
    """
    import numpy as np
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
    from PIL import Image

    annotation = Annotation()
    annotation.fromJsonFile(polygons_json)
    ids = np.asarray(createInstanceImage(annotation, "ids"))
    assert ids.min() >= 0 and ids.max() < 2**16, "Cityscapes instance ids fit in 16 bits"
    out = polygons_json.replace("_polygons.json", "_instanceIds.png")
    Image.fromarray(ids.astype(np.uint16)).save(out)
    return out


def resnet18_fpn_backbone(seed: int = 0) -> torch.nn.Module:
    """detectron2's ResNet-18 FPN backbone of the model-zoo config, random weights, eval mode."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone

    cfg = get_model_zoo_cfg()
    cfg.merge_from_list(["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64])
    torch.manual_seed(seed)
    return build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3)).eval()
